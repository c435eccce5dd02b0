"""``python -m bench.embedded``: the embedded PING server, alone in its own process.

Used when redis-server is missing (or not wanted). Prints ``READY <port>``, then obeys one
command per stdin line: ``stop`` (close the listener and every connection; the port is kept)
answers ``STOPPED``, ``start`` (listen again on the same port) answers ``STARTED``. Exits at EOF.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402

from gevent.fileobject import FileObjectPosix  # noqa: E402

from geventconnpool.testing import PingServer  # noqa: E402


def serve(host: str) -> int:
    """Run the server until stdin closes."""
    server = PingServer(host, 0).start()
    print(f"READY {server.address[1]}", flush=True)
    commands = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    try:
        for raw in commands:
            command = raw.decode().strip()
            if command == "stop":
                server.stop()
                print("STOPPED", flush=True)
            elif command == "start":
                server.start()
                print("STARTED", flush=True)
    finally:
        server.stop()
    return 0


def main() -> int:
    """Parse ``--host`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    return serve(parser.parse_args().host)


if __name__ == "__main__":
    raise SystemExit(main())
