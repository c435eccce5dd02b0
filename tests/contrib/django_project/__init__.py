"""A tiny Django project for the backend's tests: settings from the environment, one app.

``GCP_PG_PORT`` (the test PostgreSQL), ``GCP_DJANGO_DRIVER`` (``psycopg`` or ``psycopg2``: with
``psycopg2`` the settings hide psycopg 3 so that Django falls back to psycopg2), ``GCP_POOL``
(JSON of ``OPTIONS["pool"]``), ``GCP_CONN_MAX_AGE``.
"""
