"""A minimal Django project on geventconnpool's backend, served by ``gunicorn -k gevent --preload``.

Settings (``settings.py``: ``ENGINE: "geventconnpool.contrib.django.postgresql"`` and
``OPTIONS["pool"]``), one view (``urls.py``), ``wsgi.py`` (gevent's monkey-patching first). Run it
from the repository root against a PostgreSQL server::

    DJANGO_DB_PORT=5432 gunicorn -k gevent --preload -w 2 examples.django_app.wsgi:application
    curl http://127.0.0.1:8000/

or let ``run.py`` start gunicorn, send requests and count the server's sessions::

    python -m examples.django_app.run --port 5432

Environment: ``DJANGO_DB_HOST`` (127.0.0.1), ``DJANGO_DB_PORT`` (5432), ``DJANGO_DB_NAME``
(postgres), ``DJANGO_DB_USER`` (postgres), ``DJANGO_DB_PASSWORD``, ``DJANGO_POOL_SIZE`` (connections
per worker, 4). Needs::

    pip install "geventconnpool[django] @ git+https://github.com/geventconnpool/geventconnpool" \
        gunicorn
"""
