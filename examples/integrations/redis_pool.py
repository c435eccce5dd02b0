"""RedisPool: a pool of raw RESP connections to Redis, no client library needed.

Needs: a Redis server (``make servers-up`` starts one on 127.0.0.1:6379); no extra. Run it from
the repository root::

    make servers-up                                               # once; make servers-down
    python examples/integrations/redis_pool.py                    # 127.0.0.1:6379
    python examples/integrations/redis_pool.py --port 6380
    python examples/integrations/redis_pool.py --unix /run/redis/redis.sock
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import gevent

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs

from geventconnpool import retry
from geventconnpool.contrib.redis import RedisPool, ResponseError


def main(args: argparse.Namespace) -> None:
    if not args.unix:
        _needs.server((args.host, args.port), "Redis server")
    where: dict[str, Any] = (
        {"unix_socket_path": args.unix} if args.unix else {"host": args.host, "port": args.port}
    )
    # 10 connections; each idle one is PINGed every 30 s, and checked (PING) on checkout after
    # 1 s idle, so a connection the server or a NAT dropped is replaced before anyone gets it.
    pool = RedisPool(**where, db=args.db, client_name="example", size=10, keepalive=30)

    @retry(max_failures=3, interval=0.05)  # a lost connection is replaced and the call re-run
    def incr(key: str) -> int:
        with pool.get(timeout=5) as conn:
            value: int = conn.execute("INCR", key)
            return value

    with pool:
        pool.wait_ready(timeout=5)
        with pool.get() as conn:
            conn.execute("DEL", "example:counter")
        gevent.joinall([gevent.spawn(incr, "example:counter") for _ in range(1000)])
        with pool.get() as conn:
            total = conn.execute("GET", "example:counter")
            print(f"1000 INCRs from 1000 greenlets over 10 connections: counter = {int(total)}")
            replies = conn.pipeline(
                ("SET", "example:greeting", "hello"),
                ("GET", "example:greeting"),
                ("DEL", "example:counter", "example:greeting"),
            )
            print(f"one pipelined round trip: {replies}")
            try:
                conn.execute("INCR", "example:greeting:nope", "extra")
            except ResponseError as exc:
                print(f"an error reply keeps the connection: {exc}")
            print(f"PING -> {conn.execute('PING')}")
        s = pool.stats()
        print(f"stats: open={s.open} created={s.created} acquired={s.acquired}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--unix", help="path of Redis's unix socket (instead of host/port)")
    parser.add_argument("--db", type=int, default=0)
    main(parser.parse_args())
