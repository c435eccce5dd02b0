"""Settings of the test project (see the package docstring for the environment it reads)."""

from __future__ import annotations

import json
import os
import sys

if os.environ.get("GCP_DJANGO_DRIVER") == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django then loads psycopg2

SECRET_KEY = "test-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = os.environ.get("GCP_TIME_ZONE", "Asia/Tokyo")
INSTALLED_APPS = ["tests.contrib.django_project.shop"]
ROOT_URLCONF = "tests.contrib.django_project.urls"
ALLOWED_HOSTS = ["*"]
MIDDLEWARE: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_PORT = int(os.environ.get("GCP_PG_PORT", "5432"))
_DB = os.environ.get("GCP_PG_DB", "postgres")
_POOL = json.loads(os.environ.get("GCP_POOL", '{"max_size": 10, "timeout": 5}'))
_TIME_ZONE = os.environ.get("GCP_DB_TIME_ZONE") or None

DATABASES = {
    "default": {
        "ENGINE": "geventconnpool.contrib.django.postgresql",
        "NAME": _DB,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": _PORT,
        "TIME_ZONE": _TIME_ZONE,
        "CONN_MAX_AGE": int(os.environ.get("GCP_CONN_MAX_AGE", "0")),
        "OPTIONS": {"pool": _POOL, "application_name": "gcp-django"},
        "TEST": {"NAME": os.environ.get("GCP_TEST_DB", "test_gcp_django")},
    },
    # Django's own backend on the same server: what "behaves as Django's own" is compared with.
    "plain": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _DB,
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": _PORT,
        "TIME_ZONE": _TIME_ZONE,
        "OPTIONS": {"application_name": "gcp-plain"},
        "TEST": {"MIRROR": "default"},
    },
}
