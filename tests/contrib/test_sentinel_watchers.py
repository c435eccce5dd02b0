"""Sentinel watchers are background loops: a turn that raises, or a sentinel that answers
garbage, costs a backoff and a log line, never the watcher (issue 18 item 5, issue 19 "a
background loop never dies on bad input"). Against an in-process fake sentinel, no cluster."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from geventconnpool.contrib.sentinel import SentinelRedisPool
from tests.conftest import wait_until
from tests.servers import LoopbackServer

MASTER = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6000\r\n"
SUBSCRIBED = b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"
PONG = b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"


def pushed(payload: bytes) -> bytes:
    """A ``+switch-master`` message as a sentinel pushes it."""
    return b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$%d\r\n%s\r\n" % (
        len(payload),
        payload,
    )


class FakeSentinel(LoopbackServer):
    """Answers ``get-master-addr-by-name`` with 127.0.0.1:6000 and ``SUBSCRIBE`` with the ack
    (or ``garbage`` when set); remembers the subscribed sockets for :meth:`push`."""

    def __init__(self, garbage: bytes | None = None) -> None:
        self.garbage = garbage
        self.subscribers: list[Any] = []
        self.asked = 0  # get-master-addr-by-name questions answered
        self.subscribed_at: list[float] = []
        super().__init__()

    def serve(self, sock: Any) -> None:
        while data := sock.recv(65536):
            if b"get-master-addr-by-name" in data:
                sock.sendall(MASTER)
                self.asked += 1
            elif b"SUBSCRIBE" in data:
                self.subscribed_at.append(time.monotonic())
                if self.garbage is not None:
                    sock.sendall(self.garbage)
                    continue
                self.subscribers.append(sock)
                sock.sendall(SUBSCRIBED)
                self._notify()
            elif b"PING" in data:
                sock.sendall(PONG)

    def push(self, payload: bytes) -> None:
        """Send a message on the latest subscription."""
        self.subscribers[-1].sendall(pushed(payload))


@pytest.fixture
def pools() -> Iterator[list[SentinelRedisPool]]:
    made: list[SentinelRedisPool] = []
    yield made
    for pool in made:
        pool.close()


def watched(sentinel: FakeSentinel, pools: list[SentinelRedisPool]) -> SentinelRedisPool:
    pool = SentinelRedisPool([("127.0.0.1", sentinel.port)], "mymaster", size=1, open=False)
    pools.append(pool)
    return pool


def test_a_watcher_whose_turn_raises_goes_on_and_hears_the_next_switch(
    pools: list[SentinelRedisPool],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real = SentinelRedisPool._switched
    bugs = [1]

    def buggy(self: SentinelRedisPool, message: Any) -> None:
        if bugs[0]:
            bugs[0] -= 1
            raise RuntimeError("a bug in handling one message")
        real(self, message)

    monkeypatch.setattr(SentinelRedisPool, "_switched", buggy)
    sentinel = FakeSentinel()
    try:
        with caplog.at_level(logging.ERROR, logger="geventconnpool"):
            pool = watched(sentinel, pools)
            # the watcher asks for the master once it read the subscription's ack: a message
            # pushed earlier could arrive with the ack (a case for the message handling)
            wait_until(lambda: sentinel.asked == 1, what="the watcher subscribed")
            sentinel.push(b"mymaster 127.0.0.1 6000 127.0.0.1 6001")
            wait_until(lambda: sentinel.asked == 2, what="resubscribed after the bug")
            assert pool.watching == 1 and pool.switches == 0
            sentinel.push(b"mymaster 127.0.0.1 6000 127.0.0.1 6001")
            wait_until(lambda: pool.switches == 1, what="the next switch heard")
        assert pool.master_address == ("127.0.0.1", 6001) and pool.watching == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "watcher" in errors[0].getMessage()
    finally:
        sentinel.stop()


def test_a_sentinel_answering_garbage_is_retried_with_backoff_not_in_a_tight_loop(
    pools: list[SentinelRedisPool],
) -> None:
    sentinel = FakeSentinel(garbage=b"\x00\xffnot RESP at all\r\n")
    try:
        pool = watched(sentinel, pools)
        wait_until(lambda: len(sentinel.subscribed_at) >= 4, what="four tries")
        assert pool.watching == 1
        gaps = [b - a for a, b in itertools.pairwise(sentinel.subscribed_at)]
        for i, gap in enumerate(gaps[:3]):  # 0.1 s doubling, jitter takes at most half off
            assert gap >= 0.5 * 0.1 * 2**i * 0.9, gaps
        pool.close()
        wait_until(lambda: pool.watching == 0, what="the watcher stopped on close")
    finally:
        sentinel.stop()
