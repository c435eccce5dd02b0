"""The WSGI entry point: ``gunicorn -k gevent --preload examples.django_app.wsgi:application``.

gevent's monkey-patching comes first, before Django or psycopg is imported: psycopg 3 picks its
way of waiting when it is imported, and only cooperates with gevent if ``select`` is patched by
then (under ``--preload`` this module is imported by the master, before gunicorn patches the
workers). No connection is opened here: the master holds none, each worker opens its own pool on
its first request.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

from django.core.wsgi import get_wsgi_application  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_wsgi_application()
