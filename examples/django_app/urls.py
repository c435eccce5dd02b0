"""``GET /``: one query through this worker's pool; JSON says which worker and its pool's state."""

from __future__ import annotations

import os

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path


def index(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), now()")
        backend, now = cur.fetchone()
    pool = connection.gevent_pool  # this alias's pool in this process
    stats = pool.stats()
    return JsonResponse(
        {
            "worker": os.getpid(),
            "backend": backend,
            "now": now.isoformat(),
            "pool": stats.name,
            "open": stats.open,
            "created": stats.created,
        }
    )


urlpatterns = [path("", index)]
