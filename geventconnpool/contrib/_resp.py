"""RESP2 for :mod:`geventconnpool.contrib.redis`: the errors, the encoder and a bounded reader.

The reader never trusts the server: every length is checked against a limit *before* anything
is allocated or read, the nesting depth is bounded (the parser is iterative, so no
``RecursionError``), a line without CRLF is scanned once (never from the start again on each
``recv``), and one deadline covers the whole reply.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from time import monotonic
from typing import Any

__all__ = [
    "BusyLoadingError",
    "Limits",
    "ProtocolError",
    "ReadOnlyError",
    "RedisConnectionError",
    "RedisError",
    "RedisTimeoutError",
    "RespReader",
    "ResponseError",
    "encode_command",
]

Arg = bytes | str | int | float
_CRLF = b"\r\n"
_RECV = 65536
_ARRAY, _BULK, _SIMPLE, _ERROR, _INT = b"*$+-:"
_INT_DIGITS = 19  # digits of the largest signed 64-bit integer (RESP integers are int64)


class RedisError(Exception):
    """Base class of this module's errors."""


class ResponseError(RedisError):
    """The server answered with an error reply (``WRONGTYPE``, ``ERR ...``); the connection is
    fine and stays in the pool."""


class RedisConnectionError(RedisError, ConnectionError):
    """The connection is lost or unusable (an ``OSError``: the pool discards it and ``@retry``
    retries)."""


class ProtocolError(RedisConnectionError):
    """The server sent something that is not RESP, or that exceeds a limit: the stream cannot be
    trusted any more."""


class RedisTimeoutError(RedisConnectionError, TimeoutError):
    """No full reply within ``socket_timeout``: the late reply would desynchronise the stream."""


class BusyLoadingError(RedisConnectionError):
    """``-LOADING``: the server is loading its dataset; the connection is discarded and
    ``@retry`` retries (as redis-py's ``BusyLoadingError``)."""


class ReadOnlyError(RedisConnectionError):
    """``-READONLY``: the connection reached a replica (after a failover); the connection is
    discarded and ``@retry`` retries, reconnecting to whatever the address now points at."""


def error_reply(message: str) -> RedisError:
    """The exception object for an error reply: LOADING and READONLY mean "not usable"."""
    if message.startswith("LOADING"):
        return BusyLoadingError(message)
    if message.startswith("READONLY"):
        return ReadOnlyError(message)
    return ResponseError(message)


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings."""
    if not args:
        raise ValueError("a command needs at least its name")
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Limits:
    """What one reply may claim; exceeding any is a :class:`ProtocolError` raised at once."""

    __slots__ = ("max_bulk_length", "max_depth", "max_elements", "max_line_length")

    def __init__(
        self, max_bulk_length: int, max_elements: int, max_depth: int, max_line_length: int
    ) -> None:
        self.max_bulk_length = max_bulk_length
        self.max_elements = max_elements
        self.max_depth = max_depth
        self.max_line_length = max_line_length


def _length(rest: bytes, limit: int, what: str, option: str) -> int:
    """A RESP length: a decimal >= 0 up to ``limit``, or -1 (null). Anything else is hostile."""
    if rest == b"-1":
        return -1
    if not rest.isdigit() or len(rest) > 19:  # isdigit: ASCII only, no sign, no '_'
        raise ProtocolError(f"invalid {what} length {rest[:32]!r}")
    n = int(rest)  # at most 19 ASCII digits: int() cannot fail
    if n > limit:
        raise ProtocolError(
            f"{what} of length {n} exceeds {option}={limit}; raise {option} if the server is right"
        )
    return n


def _simple(kind: int, line: bytes) -> Any:
    """A reply that fits on its line: simple string, error, integer."""
    if kind == _SIMPLE:
        return line[1:].decode(errors="replace")
    if kind == _ERROR:
        return error_reply(line[1:].decode(errors="replace"))
    if kind == _INT:
        # A RESP integer is a signed 64-bit number: at most 19 digits. Checked before int(), so
        # a hostile reply of thousands of digits is a ProtocolError, never int()'s ValueError
        # (the 4,300-digit limit) nor a quadratic conversion.
        digits = line[2:] if line[1:2] == b"-" else line[1:]
        if not digits.isdigit() or len(digits) > _INT_DIGITS:
            raise ProtocolError(f"invalid integer reply {line[:64]!r}")
        return int(line[1:])
    if not line:
        raise ProtocolError("empty line where a reply was expected")
    raise ProtocolError(f"unknown reply type: {line[:64]!r}")


class RespReader:
    """Reads RESP2 replies from a socket into Python values, within :class:`Limits`.

    Replies: simple strings as ``str``, bulk strings as ``bytes`` (``None`` for nil), integers as
    ``int``, arrays as ``list``, error replies as :class:`RedisError` instances (returned, not
    raised). ``received`` and ``consumed`` count bytes, so a caller can tell whether an
    interrupted read changed anything.
    """

    __slots__ = ("_buf", "_pos", "_scanned", "consumed", "limits", "received", "sock", "timeout")

    def __init__(self, sock: socket.socket, limits: Limits, timeout: float | None) -> None:
        self.sock = sock
        self.limits = limits
        self.timeout = timeout  # the deadline of one whole reply, or None
        self._buf = bytearray()
        self._pos = 0  # start of the unread part of _buf
        self._scanned = 0  # _buf[_pos:_scanned] holds no CRLF (so it is never scanned again)
        self.received = 0
        self.consumed = 0

    def buffered(self) -> int:
        """Bytes received and not yet parsed."""
        return len(self._buf) - self._pos

    def read(self) -> Any:
        """One whole reply, within one deadline of ``timeout`` seconds."""
        deadline = None if self.timeout is None else monotonic() + self.timeout
        try:
            return self._parse(deadline)
        finally:
            if deadline is not None:
                self.sock.settimeout(self.timeout)

    def _parse(self, deadline: float | None) -> Any:
        stack: list[tuple[list[Any], int]] = []  # open arrays: (items so far, items expected)
        while True:
            line = self._line(deadline)
            kind = line[0] if line else 0
            value: Any
            if kind == _ARRAY:
                n = _length(line[1:], self.limits.max_elements, "array", "max_elements")
                if n > 0:
                    if len(stack) >= self.limits.max_depth:
                        raise ProtocolError(
                            f"reply nested deeper than max_depth={self.limits.max_depth} "
                            "arrays; raise max_depth if the server is right"
                        )
                    stack.append(([], n))
                    continue
                value = None if n < 0 else []
            elif kind == _BULK:
                n = _length(line[1:], self.limits.max_bulk_length, "bulk string", "max_bulk_length")
                value = None if n < 0 else self._exactly(n, deadline)
            else:
                value = _simple(kind, line)
            while stack:
                items, n = stack[-1]
                items.append(value)
                if len(items) < n:
                    break
                stack.pop()
                value = items
            else:
                return value

    def _line(self, deadline: float | None) -> bytes:
        buf = self._buf
        while True:
            pos = self._pos
            end = buf.find(_CRLF, self._scanned - 1 if self._scanned > pos else pos)
            if end >= 0:
                if end - pos > self.limits.max_line_length:
                    raise ProtocolError(f"reply line longer than {self.limits.max_line_length}")
                line = bytes(buf[pos:end])
                self.consumed += end + 2 - pos
                self._pos = self._scanned = end + 2
                return line
            self._scanned = len(buf)
            if self._scanned - pos > self.limits.max_line_length:
                raise ProtocolError(
                    f"no CRLF within {self.limits.max_line_length} bytes: not a RESP reply "
                    "line (max_line_length)"
                )
            self._fill(deadline)

    def _exactly(self, n: int, deadline: float | None) -> bytes:
        while len(self._buf) - self._pos < n + 2:
            self._fill(deadline)
        pos = self._pos
        end = pos + n
        if self._buf[end : end + 2] != _CRLF:
            raise ProtocolError("bulk string not terminated by CRLF")
        data = bytes(self._buf[pos:end])
        self.consumed += n + 2
        self._pos = self._scanned = end + 2
        return data

    def _fill(self, deadline: float | None) -> None:
        if self._pos:  # drop what was parsed before the buffer grows (amortised O(1))
            del self._buf[: self._pos]
            self._scanned = max(0, self._scanned - self._pos)
            self._pos = 0
        if deadline is not None:
            remaining = deadline - monotonic()
            if remaining <= 0:
                raise RedisTimeoutError(f"no full reply within socket_timeout={self.timeout}s")
            self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(_RECV)
        except TimeoutError as exc:  # socket.timeout
            raise RedisTimeoutError(f"no full reply within socket_timeout={self.timeout}s") from exc
        if not data:
            raise RedisConnectionError("connection closed by the server")
        self.received += len(data)
        self._buf += data
