"""The zero-round-trip probe of an idle socket, shared by the core and the ready-made pools.

An idle connection that is readable has been closed (EOF) or reset by its peer, or holds bytes
nobody asked for: either way it must not be handed out. The probe asks the kernel with the real
(unpatched) ``poll``/``select`` and a zero timeout, so it never switches greenlets, even under
``monkey.patch_all()``, and reads nothing from a healthy socket.
"""

from __future__ import annotations

import select

from gevent.monkey import get_original

__all__ = ["FdProbe", "readable_now", "socket_is_quiet"]

_HAS_POLL = hasattr(select, "poll")
_poll = get_original("select", "poll") if _HAS_POLL else None
_select = get_original("select", "select")
_POLL_MASK = (
    select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL
    if _HAS_POLL
    else 0
)


def readable_now(fd: int) -> bool:
    """True if descriptor ``fd`` is readable, in error or hung up right now; never waits."""
    if not isinstance(fd, int) or fd < 0:
        return True
    if _poll is not None:
        poller = _poll()
        poller.register(fd, _POLL_MASK)
        return bool(poller.poll(0))
    readable, _, errored = _select([fd], [], [fd], 0)  # Windows: no poll()
    return bool(readable or errored)


def socket_is_quiet(fd: int) -> bool:
    """True if descriptor ``fd`` has nothing to read and no error: an idle, healthy socket."""
    return not readable_now(fd)


class FdProbe:
    """The same probe for one descriptor, reusable: one poll object, then one ``poll(0)`` each.

    For a connection probed at every hand-out (RedisPool); the descriptor must stay the same.
    """

    __slots__ = ("_fd", "_poller")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._poller = None
        if _poll is not None and isinstance(fd, int) and fd >= 0:
            self._poller = _poll()
            self._poller.register(fd, _POLL_MASK)

    def readable(self) -> bool:
        """True if the descriptor is readable, in error or hung up right now; never waits."""
        if self._poller is None:
            return readable_now(self._fd)
        return bool(self._poller.poll(0))
