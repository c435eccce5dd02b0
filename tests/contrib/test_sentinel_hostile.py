"""SentinelRedisPool against fake and hostile sentinels on loopback (issue 19, defect 4).

A sentinel's bad answer is that sentinel's failure: discovery skips it and asks the next, and
raises MasterNotFoundError only when every sentinel failed. ``sentinel_timeout`` bounds a whole
question. A watcher never dies on bad input: it keeps ``watching`` at its count and hears the
next real ``+switch-master``. No real cluster here (tests/contrib/test_sentinel.py has one).
"""

from __future__ import annotations

import logging
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from hypothesis import given
from hypothesis import strategies as st

from geventconnpool.contrib import sentinel as sentinel_module
from geventconnpool.contrib.sentinel import MasterNotFoundError, SentinelRedisPool
from tests.servers import LOOPBACK, wait_until

from ._fakes import (
    FakeSentinel,
    array,
    bulk,
    close_after,
    master_answer,
    switch_message,
    trickle,
)
from ._fuzz import fuzz, fuzz_timeout

GOOD = master_answer(b"10.1.2.3", b"6380")
GOOD_ADDRESS = ("10.1.2.3", 6380)

MALFORMED = {
    "two integers": b"*2\r\n:1\r\n:2\r\n",
    "two nils": b"*2\r\n$-1\r\n$-1\r\n",
    "non-UTF-8 host": master_answer(b"\xff\xfe\xfd", b"6379"),
    "non-numeric port": master_answer(b"127.0.0.1", b"http"),
    "port 0": master_answer(b"127.0.0.1", b"0"),
    "port too big": master_answer(b"127.0.0.1", b"65536"),
    "huge port": master_answer(b"127.0.0.1", b"9" * 5000),
    "signed port": master_answer(b"127.0.0.1", b"-6379"),
    "unicode digit port": master_answer(b"127.0.0.1", "٣".encode()),
    "empty host": master_answer(b"", b"6379"),
    "host with spaces": master_answer(b"a b", b"6379"),
    "nested arrays": b"*2\r\n*1\r\n:1\r\n*0\r\n",
    "three elements": array(bulk(b"h"), bulk(b"1"), bulk(b"2")),
    "empty array": b"*0\r\n",
    "an integer": b":42\r\n",
    "a simple string": b"+OK\r\n",
    "an error reply": b"-ERR no such master\r\n",
    "not RESP": b"hello there\r\n",
    "huge bulk length": b"*2\r\n$99999999999999\r\n",
    "huge integer": b":" + b"1" * 5000 + b"\r\n",
    "closed mid-reply": close_after(b"*2\r\n$8\r\n10.1"),
    "closed at once": close_after(b""),
}


@pytest.fixture
def sentinels() -> Iterator[list[FakeSentinel]]:
    made: list[FakeSentinel] = []
    yield made
    for server in made:
        server.stop()


def sentinel(made: list[FakeSentinel], answer: Any) -> FakeSentinel:
    server = FakeSentinel(answer)
    made.append(server)
    return server


def make_pool(servers: list[FakeSentinel], closing: list[Any], **options: Any) -> SentinelRedisPool:
    options = {"max_size": 1, "min_size": 0, "watch": False, "sentinel_timeout": 0.5, **options}
    pool = SentinelRedisPool([(LOOPBACK, s.port) for s in servers], "mymaster", **options)
    closing.append(pool)
    return pool


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_answer_is_that_sentinels_failure_and_the_next_is_asked(
    answer: Any, sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    bad, good = sentinel(sentinels, answer), sentinel(sentinels, GOOD)
    pool = make_pool([bad, good], closing)
    assert pool.discover_master() == GOOD_ADDRESS
    assert bad.asked == 1 and good.asked == 1
    assert pool.sentinels[0] == (LOOPBACK, good.port)  # the one that answered is asked first


@pytest.mark.parametrize("answer", list(MALFORMED.values()), ids=list(MALFORMED))
def test_master_not_found_only_when_every_sentinel_failed(
    answer: Any, sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    first, second = sentinel(sentinels, answer), sentinel(sentinels, b"*-1\r\n")
    pool = make_pool([first, second], closing)
    with pytest.raises(MasterNotFoundError) as info:
        pool.discover_master()
    assert f"{LOOPBACK}:{first.port}" in str(info.value)
    assert f"{LOOPBACK}:{second.port}" in str(info.value)
    assert first.asked == 1 and second.asked == 1


def test_sentinel_timeout_bounds_the_whole_question_not_each_read(
    sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    # A byte every 0.2 s: each read is quick, the answer takes ~5 s. With sentinel_timeout=0.5
    # the trickler is given up after 0.5 s and the healthy sentinel answers.
    slow = sentinel(sentinels, trickle(GOOD, 0.2))
    good = sentinel(sentinels, master_answer(b"10.9.9.9", b"6379"))
    pool = make_pool([slow, good], closing, sentinel_timeout=0.5)
    started = time.monotonic()
    assert pool.discover_master() == ("10.9.9.9", 6379)
    assert time.monotonic() - started < 0.5 + 1.0  # the trickler alone would take ~5 s
    assert good.asked == 1


def test_a_trickling_only_sentinel_is_a_master_not_found_within_the_timeout(
    sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    slow = sentinel(sentinels, trickle(GOOD, 0.2))
    pool = make_pool([slow], closing, sentinel_timeout=0.4)
    started = time.monotonic()
    with pytest.raises(MasterNotFoundError, match=r"sentinel_timeout=0\.4"):
        pool.discover_master()
    assert time.monotonic() - started < 0.4 + 1.0


# -- the watcher ---------------------------------------------------------------------------------

BAD_MESSAGES = [
    switch_message(b"mymaster a b c d"),
    switch_message(b"mymaster 10.0.0.1 x 10.0.0.2 y"),
    switch_message(b"mymaster 10.0.0.1 6379 10.0.0.2 99999"),
    switch_message(b"mymaster 10.0.0.1 6379 10.0.0.2"),
    switch_message(b"\xff\xfe mymaster"),
    switch_message(b""),
    switch_message(b"mymaster 10.0.0.1 6379 10.0.0.2 6380 extra"),
    array(bulk(b"message"), bulk(b"+switch-master"), b":5\r\n"),
    array(bulk(b"message"), bulk(b"+switch-master"), b"*-1\r\n"),
    array(bulk(b"message"), bulk(b"+switch-master"), array(bulk(b"x"))),
    array(bulk(b"message"), bulk(b"+switch-master")),
    array(bulk(b"message"), bulk(b"other-channel"), bulk(b"mymaster a 1 b 2")),
    array(b":1\r\n", b":2\r\n", b":3\r\n"),
    b"*-1\r\n",
    b":7\r\n",
    b"+hello\r\n",
    b"-ERR nope\r\n",
]


def test_malformed_switch_messages_never_kill_the_watcher(
    sentinels: list[FakeSentinel], closing: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    server = sentinel(sentinels, GOOD)
    pool = make_pool([server], closing, watch=True)
    wait_until(lambda: server.subscribers and server.asked, 5, "the watcher subscribed")
    connections = server.accepted
    for raw in BAD_MESSAGES:
        server.push(raw)
    server.push(switch_message(b"mymaster 10.1.2.3 6380 10.0.0.2 6381"))
    wait_until(lambda: pool.switches == 1, 5, "the real switch heard")
    assert pool.watching == 1
    assert server.accepted == connections  # well-formed RESP: not even a reconnect
    assert pool.master_address == ("10.0.0.2", 6381)
    assert "malformed +switch-master" in caplog.text


HOSTILE_STREAMS = {
    "garbage": b"this is not RESP at all\r\n",
    "huge bulk length": b"*3\r\n$7\r\nmessage\r\n$99999999999\r\n",
    "huge array": b"*99999999999\r\n",
    "deep nesting": b"*1\r\n" * 100,
    "closed mid-message": None,
}


@pytest.mark.parametrize("raw", list(HOSTILE_STREAMS.values()), ids=list(HOSTILE_STREAMS))
def test_a_hostile_subscription_stream_costs_a_reconnect_not_the_watcher(
    raw: bytes | None, sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    server = sentinel(sentinels, GOOD)
    pool = make_pool([server], closing, watch=True)
    wait_until(lambda: server.subscribers, 5, "the watcher subscribed")
    first = server.accepted
    if raw is None:
        server.push(switch_message(b"mymaster 10.1.2.3 6380 10.0.0.2 6381")[:20])
        server.push(None)  # type: ignore[arg-type]  # close after the partial message
    else:
        server.push(raw)
    wait_until(lambda: server.accepted > first and server.subscribers, 5, "resubscribed")
    assert pool.watching == 1

    def heard() -> bool:
        server.push(switch_message(b"mymaster 10.1.2.3 6380 10.0.0.2 6381"))
        return pool.switches >= 1

    wait_until(heard, 5, "the real switch heard after the reconnect", poll=0.05)
    assert pool.watching == 1 and pool.master_address == ("10.0.0.2", 6381)


def test_a_trickled_message_is_given_up_and_the_watcher_goes_on(
    sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    server = sentinel(sentinels, GOOD)
    pool = make_pool([server], closing, watch=True, sentinel_timeout=0.3)
    wait_until(lambda: server.subscribers, 5, "the watcher subscribed")
    first = server.accepted
    slow = switch_message(b"mymaster 10.1.2.3 6380 10.0.0.7 6390")
    for i in range(len(slow)):  # far slower than sentinel_timeout for the whole message
        server.push(slow[i : i + 1])
        if server.accepted > first:
            break
        gevent.sleep(0.05)
    wait_until(lambda: server.accepted > first, 5, "the watcher gave up and reconnected")
    assert pool.watching == 1


# -- the parsers, fuzzed ---------------------------------------------------------------------------

VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.integers(),
        st.binary(max_size=40),
        st.text(max_size=40),
        st.sampled_from([b"127.0.0.1", b"6379", b"0", b"65535", b"65536", "::1", b"\xff"]),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=8,
)


@fuzz_timeout
@given(VALUES)
@fuzz(200)
def test_any_master_answer_is_an_address_or_a_value_error(reply: Any) -> None:
    try:
        host, port = sentinel_module.parse_master_address(reply)
    except ValueError:
        return
    assert isinstance(host, str) and host and 0 < port < 65536


@fuzz_timeout
@given(st.one_of(VALUES, st.binary(max_size=80)))
@fuzz(200)
def test_any_switch_message_is_a_switch_or_none(message: Any) -> None:
    switch = sentinel_module.parse_switch_master(message)
    if switch is not None:
        service, old, new = switch
        assert isinstance(service, str) and 0 < old[1] < 65536 and 0 < new[1] < 65536


@fuzz_timeout
@given(st.one_of(VALUES, st.binary(max_size=80)))
@fuzz(100)
def test_any_watched_message_is_handled_without_raising(message: Any) -> None:
    pool = SentinelRedisPool([(LOOPBACK, 1)], "mymaster", max_size=1, min_size=0, watch=False)
    try:
        logging.getLogger("geventconnpool").disabled = True
        pool._on_watch_message(message)
        pool._on_watch_message([b"message", b"+switch-master", message])
    finally:
        logging.getLogger("geventconnpool").disabled = False
        pool.close()


def test_a_flood_of_bad_messages_logs_once_a_minute_in_flat_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A hostile sentinel sending malformed messages by the ten thousand: one WARNING per kind
    # (rate-limited, the rest counted), and the rate-limited log state does not grow.
    pool = SentinelRedisPool([(LOOPBACK, 1)], "mymaster", max_size=1, min_size=0, watch=False)
    bad = [
        [b"message", b"+switch-master", b"mymaster a b c d %d" % i] if i % 2 else [b"message", i]
        for i in range(200)
    ]
    try:
        with caplog.at_level(logging.WARNING, logger="geventconnpool"):
            for message in bad:  # warm up: the state exists
                pool._on_watch_message(message)
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                for i in range(20_000):
                    pool._on_watch_message(bad[i % len(bad)])
                grown = tracemalloc.get_traced_memory()[0] - base
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
    finally:
        pool.close()
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one per kind
    assert grown < 8 * 1024 and peak < 64 * 1024, (grown, peak)


def test_an_outer_timeout_comes_out_as_the_same_object(
    sentinels: list[FakeSentinel], closing: list[Any]
) -> None:
    # sentinel_timeout is ours: only our own deadline becomes an error; a caller's Timeout (or a
    # kill) passes through untouched, and the sentinel connection is closed.
    slow = sentinel(sentinels, trickle(GOOD, 0.2))
    pool = make_pool([slow], closing, sentinel_timeout=30)
    outer = gevent.Timeout(0.3)
    with pytest.raises(gevent.Timeout) as info:
        with outer:
            pool.discover_master()
    assert info.value is outer
    slow.wait_for(lambda: not slow.open)  # the question's connection was closed
