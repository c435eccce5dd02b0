"""Settings of the example: the backend, its pool, nothing else."""

from __future__ import annotations

import os

SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "examples.django_app.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"

DATABASES = {
    "default": {
        "ENGINE": "geventconnpool.contrib.django.postgresql",
        "NAME": os.environ.get("DJANGO_DB_NAME", "postgres"),
        "USER": os.environ.get("DJANGO_DB_USER", "postgres"),
        "PASSWORD": os.environ.get("DJANGO_DB_PASSWORD", ""),
        "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        "PORT": int(os.environ.get("DJANGO_DB_PORT", "5432")),
        "OPTIONS": {
            # One pool per worker process: max_size connections at most, a request waits at
            # most `timeout` seconds for one (then django.db.OperationalError).
            "pool": {"max_size": int(os.environ.get("DJANGO_POOL_SIZE", "4")), "timeout": 5},
            "application_name": "django-example",
        },
    }
}
