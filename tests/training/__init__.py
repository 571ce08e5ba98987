"""Training jobs and their admin: requests, dry runs, queueing, the job's lifecycle, deployment, the CLI."""
