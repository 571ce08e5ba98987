"""Real processes: the demo, the Procfile, qcluster, gunicorn, PostgreSQL and Redis, restarts and load."""
