"""Django on geventconnpool: the database backend ``geventconnpool.contrib.django.postgresql``.

::

    DATABASES = {
        "default": {
            "ENGINE": "geventconnpool.contrib.django.postgresql",
            "NAME": "app",
            "OPTIONS": {"pool": {"max_size": 10, "timeout": 5}},
        }
    }

Django opens a connection on first use and closes it at the end of each request; with this
backend that takes a connection out of one pool per database alias (per process) and gives it
back, rolled back and reset. docs/guides/django.rst is the guide: settings, sizing, limits.
Needs the ``django`` extra: ``pip install "geventconnpool[django] @ git+https://github.com/geventconnpool/geventconnpool"``.
"""

__all__: list[str] = []
