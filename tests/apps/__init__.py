"""Helper programs for tests that need more than one process (fork, gunicorn)."""
