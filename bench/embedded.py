"""``python -m bench.embedded PORT``: the embedded PING server, alone in its own process.

Used when redis-server is missing or not wanted (``--server embedded``); runs until terminated.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import gevent  # noqa: E402

from geventconnpool.testing import PingServer  # noqa: E402

if __name__ == "__main__":
    PingServer("127.0.0.1", int(sys.argv[1])).start()
    gevent.wait()
