"""redis-py on RedisPyConnectionPool under ``gevent.monkey.patch_all()``, as a gevent app runs it.

``python -m tests.contrib.redispy_run`` starts its own redis-server, runs 200 greenlets of INCRs
through ``@retry`` while the server is killed and restarted, and prints one JSON line.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import tempfile  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import redis  # noqa: E402

from geventconnpool import PoolTimeout, retry  # noqa: E402
from geventconnpool.contrib.redispy import RedisPyConnectionPool  # noqa: E402
from tests.servers import RedisServer, redis_binary  # noqa: E402


def main() -> None:
    binary = redis_binary()
    assert binary is not None
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(binary, workdir)
        server.start()
        try:
            print(json.dumps(run(server)))
        finally:
            server.stop()


def run(server: RedisServer) -> dict[str, object]:
    # fail_fast=False: the callers wait through the restart (with fail_fast, on by default in
    # the adapter, they would get PoolUnavailableError at once, as redis-py's own pool does)
    pool = RedisPyConnectionPool("127.0.0.1", server.port, max_size=10, timeout=10, fail_fast=False)
    r = redis.Redis(connection_pool=pool)
    halfway, restarted = gevent.event.Event(), gevent.event.Event()
    done, peak = [0], [0]

    @retry(exc_classes=(*pool.exc_classes, PoolTimeout), max_failures=50, interval=0.02)
    def incr() -> None:
        r.incr("rp:counter")
        peak[0] = max(peak[0], pool.stats().in_use)

    def worker() -> None:
        for i in range(10):
            incr()
            done[0] += 1
            if done[0] == 1000:
                halfway.set()
            if i == 5:
                restarted.wait()

    workers = [gevent.spawn(worker) for _ in range(200)]
    halfway.wait(timeout=30)
    server.restart()
    restarted.set()
    gevent.joinall(workers, timeout=40)
    stats = pool.stats()
    result = {
        "ok": sum(w.successful() for w in workers),
        "done": done[0],
        "counter": int(r.get("rp:counter") or 0),
        "peak_in_use": peak[0],
        "open": stats.open,
        "discarded": stats.discarded.release + stats.discarded.check + stats.discarded.error,
    }
    pool.close()
    return result


if __name__ == "__main__":
    main()
