"""redis-py's client on geventconnpool: RedisPyConnectionPool behind redis.Redis.

Needs: a Redis server (``make servers-up`` starts one on 127.0.0.1:6379) and redis-py (the
``redis`` extra: ``pip install -e '.[redis]'``). Run it from the repository root::

    make servers-up                                              # once; make servers-down
    python examples/integrations/redispy_pool.py                 # 127.0.0.1:6379
    python examples/integrations/redispy_pool.py --port 6380
"""

from gevent import monkey

monkey.patch_all()  # redis-py's sockets become cooperative, as in any gevent app

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs  # noqa: E402

_needs.package("redis", "pip install -e '.[redis]'  (the redis extra: redis-py)")
import redis  # noqa: E402

from geventconnpool import retry  # noqa: E402
from geventconnpool.contrib.redispy import RedisPyConnectionPool  # noqa: E402


def main(args: argparse.Namespace) -> None:
    _needs.server((args.host, args.port), "Redis server")
    # Pool options are keyword arguments; redis-py's connection arguments go in connection_kwargs.
    pool = RedisPyConnectionPool(
        args.host,
        args.port,
        db=args.db,
        max_size=10,
        timeout=5,
        keepalive=30,
        connection_kwargs={"socket_timeout": 5, "client_name": "example"},
    )
    r = redis.Redis(connection_pool=pool)

    @retry(exc_classes=pool.exc_classes, max_failures=3, interval=0.05)
    def incr(key: str) -> int:
        value: int = r.incr(key)
        return value

    with pool:
        r.delete("example:counter")
        gevent.joinall([gevent.spawn(incr, "example:counter") for _ in range(1000)])
        print(f"1000 INCRs from 1000 greenlets: counter = {int(r.get('example:counter') or 0)}")
        before = pool.stats().acquired
        with r.pipeline() as pipe:
            pipe.set("example:greeting", "hello").get("example:greeting").delete("example:counter")
            print(f"pipeline: {pipe.execute()} in {pool.stats().acquired - before} checkout")
        pubsub = r.pubsub()
        pubsub.subscribe("example:news")
        r.publish("example:news", "hi")
        messages = [pubsub.get_message(timeout=5) for _ in range(2)]
        pubsub.close()  # its dedicated connection is discarded, never reused subscribed
        print(f"pub/sub got {messages[1]['data'] if messages[1] else None!r}")
        r.delete("example:greeting")
        s = pool.stats()
        print(f"stats: open={s.open} created={s.created} discarded={s.discarded.release}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--db", type=int, default=0)
    main(parser.parse_args())
