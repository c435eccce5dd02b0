"""ThriftPool: a pool of thriftpy2 clients, and a proxy that borrows one per call.

Self-contained: serves a small service (IDL below) from gevent greenlets on 127.0.0.1, the way
a service's client would talk to it. Needs: the ``thrift`` extra (thriftpy2); no server. Run it
from the repository root::

    pip install -e '.[thrift]'
    python examples/integrations/thrift_pool.py
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/_needs.py
import _needs

_needs.package("thriftpy2", "pip install -e '.[thrift]'  (the thrift extra)")
import thriftpy2  # noqa: E402
from thriftpy2.protocol import TBinaryProtocol  # noqa: E402
from thriftpy2.thrift import TProcessor  # noqa: E402
from thriftpy2.transport import TBufferedTransport, TSocket, TTransportException  # noqa: E402

from geventconnpool.contrib.thrift import ThriftPool  # noqa: E402

IDL = """
exception NotFound { 1: string key }
service Stats {
    string ping(),
    i64 add(1: i64 a, 2: i64 b),
    string lookup(1: string key) throws (1: NotFound missing),
    string slow(1: double seconds),
    oneway void report(1: string event),
    i64 reported(),
}
"""
stats_thrift = thriftpy2.load_fp(io.StringIO(IDL), module_name="stats_thrift")


class Handler:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.arrived = gevent.event.Event()

    def ping(self) -> str:
        return "pong"

    def add(self, a: int, b: int) -> int:
        return a + b

    def lookup(self, key: str) -> str:
        raise stats_thrift.NotFound(key=key)

    def slow(self, seconds: float) -> str:
        gevent.sleep(seconds)
        return "late"

    def report(self, event: str) -> None:
        self.events.append(event)
        if len(self.events) == 100:
            self.arrived.set()

    def reported(self) -> int:
        return len(self.events)


def serve(handler: Handler) -> gevent.server.StreamServer:
    processor = TProcessor(stats_thrift.Stats, handler)

    def connection(sock: Any, _address: Any) -> None:
        proto = TBinaryProtocol(TBufferedTransport(TSocket(sock=sock)))
        try:
            while True:
                processor.process(proto, proto)
        except (TTransportException, OSError):
            sock.close()

    server = gevent.server.StreamServer(("127.0.0.1", 0), connection)
    server.start()
    return server


def main() -> None:
    handler = Handler()
    server = serve(handler)
    with ThriftPool(
        stats_thrift.Stats, "127.0.0.1", server.server_port, size=4, ping="ping"
    ) as pool:
        print(f"pool {pool.name!r}")
        with pool.get() as client:  # one client for several calls
            print(f"ping -> {client.ping()}, add(40, 2) -> {client.add(40, 2)}")

        stats = pool.proxy(retries=2)  # each call checks a client out and back in
        jobs = [gevent.spawn(stats.add, i, 1) for i in range(200)]
        gevent.joinall(jobs, raise_error=True)
        print(f"200 proxied calls from 200 greenlets over {pool.stats().created} connections")

        for i in range(100):
            stats.report(f"request {i}")  # oneway: returns without waiting for the server
        handler.arrived.wait(5)
        print(f"100 oneway reports, the server has {stats.reported()}")

        try:
            stats.lookup("nobody")
        except stats_thrift.NotFound as exc:
            print(f"a declared exception keeps the connection: NotFound(key={exc.key!r})")
        try:
            stats.add("not a number", 1)  # fails half-way through writing the request
        except Exception as exc:
            discarded = pool.stats().discarded.release
            print(
                f"a half-written request ({type(exc).__name__}): {discarded} connection discarded"
            )
        with pool.get() as client:
            try:
                with gevent.Timeout(0.05):  # caught inside the block: the reply is still due
                    client.slow(0.3)
            except gevent.Timeout:
                pass
            try:
                client.ping()  # would read "late" as its answer
            except TTransportException:
                print("after an interrupted call the client refuses more calls")
        print(f"the next holder gets its own reply: ping -> {stats.ping()}")
        s = pool.stats()
        print(f"stats: open={s.open} created={s.created} acquired={s.acquired}")
    server.stop()


if __name__ == "__main__":
    main()
