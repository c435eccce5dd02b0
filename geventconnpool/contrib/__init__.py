"""Ready-made pools: TCP/TLS sockets, Redis (RESP), DB-API 2 drivers, Thrift clients.

Each integration is its own module, imported on demand, so that the core keeps depending on
gevent and greenlet only: ``geventconnpool.contrib.tcp``, ``.redis``, ``.dbapi``, ``.thrift``.
"""

__all__: list[str] = []
