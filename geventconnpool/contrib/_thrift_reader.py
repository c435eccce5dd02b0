"""Reads one Thrift binary-protocol reply from a socket, within limits, before anyone parses it.

thriftpy2's parser trusts the sizes it reads: a string length of 2 GB is allocated at once and a
container count of two billion is looped over. This reader walks the reply's structure as the
bytes arrive, checks every length and count against :class:`ThriftLimits` *before* reading what
it claims, and returns the whole message as bytes, which thriftpy2 then parses from memory. The
whole reply has one deadline, not one per ``recv()``: a server trickling a byte at a time cannot
hold a caller longer than ``deadline`` seconds.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any

from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.transport import TTransportException

__all__ = ["ThriftLimits", "read_message"]

_MiB = 1024 * 1024

# Binary-protocol type ids (thriftpy2 writes BINARY (18) as STRING (11); both are accepted).
_STOP, _BOOL, _BYTE, _DOUBLE, _I16, _I32, _I64 = 0, 2, 3, 4, 6, 8, 10
_STRING, _STRUCT, _MAP, _SET, _LIST, _UUID, _BINARY = 11, 12, 13, 14, 15, 16, 18
_FIXED = {_BOOL: 1, _BYTE: 1, _DOUBLE: 8, _I16: 2, _I32: 4, _I64: 8, _UUID: 16}
#: The fewest bytes a value of each type takes on the wire: how a container's count is checked
#: against the bytes the message may still have, before any element is read.
_MIN_SIZE = {**_FIXED, _STRING: 4, _BINARY: 4, _STRUCT: 1, _MAP: 6, _SET: 5, _LIST: 5}
_VERSION_MASK = 0xFFFF0000
_VERSION_1 = 0x80010000
_REPLY, _EXCEPTION = 2, 3
_I32_STRUCT = struct.Struct("!i")
_RECV_SIZE = 65536
_MAX_RECV = 1024 * 1024  # one recv() never allocates more, whatever a string claims


@dataclass(frozen=True)
class ThriftLimits:
    """What a Thrift reply may claim before the connection is dropped with a protocol error.

    The defaults are far above what RPC replies need and far below what hurts a process:
    ``max_message_size`` (16 MiB, Apache Thrift's default frame size limit) bounds the memory a
    reply can take, and is the largest frame of the framed transport; ``string_length_limit``
    bounds one string or binary field; ``container_length_limit`` (one million) bounds the
    elements of one list, set or map, whose Python objects take far more memory than their
    bytes; ``max_depth`` (64, thriftpy2's own) bounds the nesting of structs and containers.
    """

    max_message_size: int = 16 * _MiB
    string_length_limit: int = 16 * _MiB
    container_length_limit: int = 1_000_000
    max_depth: int = 64

    def __post_init__(self) -> None:
        for name in ("max_message_size", "string_length_limit", "container_length_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if isinstance(self.max_depth, bool) or not isinstance(self.max_depth, int):
            raise TypeError(f"max_depth must be an int, not {type(self.max_depth).__name__}")
        if not 1 <= self.max_depth <= 64:
            raise ValueError(f"max_depth must be in 1..64, got {self.max_depth!r}")


def _protocol_error(kind: int, message: str) -> TProtocolException:
    error: TProtocolException = TProtocolException(kind, message)  # type: ignore[no-untyped-call]
    return error


def _limit_error(message: str) -> TProtocolException:
    return _protocol_error(TProtocolException.SIZE_LIMIT, message)


def _invalid(message: str) -> TProtocolException:
    return _protocol_error(TProtocolException.INVALID_DATA, message)


class _Source:
    """Bytes of one message, received on demand from ``sock`` under one deadline."""

    __slots__ = ("buf", "deadline", "limit", "pos", "sock")

    def __init__(self, sock: Any, limit: int, deadline: float | None, buf: bytearray) -> None:
        self.sock = sock
        self.limit = limit  # the message may not extend past this offset
        self.deadline = deadline  # time.monotonic() value, or None
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> int:
        """Make ``n`` more bytes available at ``pos``; returns the old ``pos`` and advances it."""
        start = self.pos
        end = start + n
        if end > self.limit:
            raise _limit_error(
                f"thrift reply larger than max_message_size ({self.limit} bytes)"
                if self.limit
                else "empty thrift frame"
            )
        while len(self.buf) < end:
            want = min(max(end - len(self.buf), _RECV_SIZE), _MAX_RECV)
            self._recv(min(want, self.limit - len(self.buf)))
        self.pos = end
        return start

    def i32(self) -> int:
        start = self.take(4)
        value: int = _I32_STRUCT.unpack_from(self.buf, start)[0]
        return value

    def byte(self) -> int:
        return self.buf[self.take(1)]

    def _recv(self, size: int) -> None:
        if self.deadline is not None:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TTransportException(TTransportException.TIMED_OUT, "thrift reply timed out")
            self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(size)
        except TimeoutError:
            raise TTransportException(TTransportException.TIMED_OUT, "thrift reply timed out")
        if not chunk:
            raise TTransportException(
                TTransportException.END_OF_FILE, "thrift connection closed mid-reply"
            )
        self.buf += chunk


def _skip(src: _Source, ttype: int, limits: ThriftLimits, depth: int) -> None:
    width = _FIXED.get(ttype)
    if width is not None:
        src.take(width)
    elif ttype in (_STRING, _BINARY):
        _skip_strings(src, 1, limits)
    elif ttype == _STRUCT:
        _nest(depth, limits)
        while True:
            ftype = src.byte()
            if ftype == _STOP:
                return
            src.take(2)  # field id
            _skip(src, ftype, limits, depth + 1)
    elif ttype in (_LIST, _SET):
        _nest(depth, limits)
        etype = src.byte()
        count = _count(src, limits, (etype,))
        _skip_elements(src, (etype,), count, limits, depth + 1)
    elif ttype == _MAP:
        _nest(depth, limits)
        ktype, vtype = src.byte(), src.byte()
        count = _count(src, limits, (ktype, vtype))
        _skip_elements(src, (ktype, vtype), count, limits, depth + 1)
    else:
        raise _invalid(f"unknown thrift type id {ttype}")


def _skip_strings(src: _Source, count: int, limits: ThriftLimits) -> None:
    """Skip ``count`` strings in a row (a tight loop: lists of strings are common)."""
    unpack = _I32_STRUCT.unpack_from
    take = src.take
    limit = limits.string_length_limit
    for _ in range(count):
        size: int = unpack(src.buf, take(4))[0]
        if not 0 <= size <= limit:
            if size < 0:
                raise _protocol_error(TProtocolException.NEGATIVE_SIZE, f"string size {size}")
            raise _limit_error(
                f"thrift string of {size} bytes exceeds string_length_limit ({limit})"
            )
        take(size)


def _nest(depth: int, limits: ThriftLimits) -> None:
    if depth >= limits.max_depth:
        raise _limit_error(f"thrift reply nested deeper than max_depth ({limits.max_depth})")


def _count(src: _Source, limits: ThriftLimits, types: tuple[int, ...]) -> int:
    """A container's element count, checked against the limit and the bytes left."""
    count = src.i32()
    if count < 0:
        raise _protocol_error(TProtocolException.NEGATIVE_SIZE, f"container size {count}")
    if count > limits.container_length_limit:
        raise _limit_error(
            f"thrift container of {count} elements exceeds container_length_limit "
            f"({limits.container_length_limit})"
        )
    for ttype in types:
        if ttype not in _MIN_SIZE:
            raise _invalid(f"unknown thrift type id {ttype}")
    if count * sum(_MIN_SIZE[t] for t in types) > src.limit - src.pos:
        raise _limit_error(
            f"thrift container of {count} elements cannot fit in max_message_size ({src.limit})"
        )
    return count


def _skip_elements(
    src: _Source, types: tuple[int, ...], count: int, limits: ThriftLimits, depth: int
) -> None:
    widths = [_FIXED.get(t) for t in types]
    if all(w is not None for w in widths):  # fixed-width elements: one step
        src.take(count * sum(w for w in widths if w is not None))
        return
    if len(types) == 1 and types[0] in (_STRING, _BINARY):
        _skip_strings(src, count, limits)
        return
    for _ in range(count):
        for ttype in types:
            _skip(src, ttype, limits, depth)


def read_message(
    sock: Any,
    limits: ThriftLimits,
    *,
    framed: bool,
    deadline: float | None,
    expect: str,
    pending: bytearray,
) -> bytes:
    """Receive one reply to a call of ``expect`` from ``sock`` and return its bytes.

    ``pending`` holds bytes received earlier and not yet used (the buffer is reused; bytes past
    this message stay in it). Raises ``TProtocolException`` when the reply breaks a limit or is
    not a reply to ``expect``, ``TTransportException`` on EOF or when ``deadline`` passes.
    """
    if framed:
        header = _Source(sock, 4, deadline, pending)
        size = header.i32()
        if size <= 0 or size > limits.max_message_size:
            raise _limit_error(
                f"thrift frame of {size} bytes is outside 1..max_message_size "
                f"({limits.max_message_size})"
            )
        del pending[:4]
        src = _Source(sock, size, deadline, pending)
    else:
        src = _Source(sock, limits.max_message_size, deadline, pending)
    _check_header(src, limits, expect)
    _skip(src, _STRUCT, limits, 0)
    if framed:
        src.take(src.limit - src.pos)  # the rest of the frame belongs to this message
    message = bytes(pending[: src.pos])
    del pending[: src.pos]
    return message


def _check_header(src: _Source, limits: ThriftLimits, expect: str) -> None:
    """The strict message header: version, a REPLY or EXCEPTION to ``expect``, seqid."""
    word = src.i32()
    if word >= 0 or (word & _VERSION_MASK) != _VERSION_1:
        raise _protocol_error(TProtocolException.BAD_VERSION, "bad thrift message header")
    mtype = word & 0xFF
    if mtype not in (_REPLY, _EXCEPTION):
        raise _invalid(f"expected a thrift reply, got message type {mtype}")
    size = src.i32()
    if not 0 <= size <= min(limits.string_length_limit, 65536):
        raise _limit_error(f"thrift method name of {size} bytes")
    start = src.take(size)
    name = bytes(src.buf[start : start + size])
    if name != expect.encode():
        raise _invalid(f"thrift reply is for {name!r}, not {expect!r}: the stream is out of step")
    src.take(4)  # seqid
