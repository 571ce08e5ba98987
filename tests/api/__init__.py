"""The REST API: its endpoints, auth, errors and schema."""
