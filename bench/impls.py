"""One adapter per implementation under test, each built from a :class:`Spec` and used as
``with impl.hold() as conn:``. Redis clients also have ``client`` (a ``redis.Redis``).

Adapters run only in their own child process (see :mod:`bench.child`), so two versions of
``geventconnpool`` never meet. Third-party packages are imported in the constructor: a missing
one raises :class:`ImportError`, reported as "not installed"; :class:`NotApplicable` says that
an implementation cannot express a workload (shown as n/a).
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import operator
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gevent
from gevent.hub import Waiter, get_hub
from gevent.queue import LifoQueue

from bench.common import Counter, Factory, close_quietly

#: Where ``python -m bench.prepare`` installs geventconnpool 0.2.1 (never on sys.path by default).
GCP021_DIR = Path(__file__).resolve().parent / ".cache" / "gcp021"


class NotApplicable(Exception):
    """The implementation cannot run this workload (the message says why), or any workload."""

    def __init__(self, why: str, anywhere: bool = False) -> None:
        super().__init__(why)
        self.anywhere = anywhere


@dataclass
class Spec:
    """What a workload asks of a pool: its sizes, and how to make one connection."""

    min_size: int
    max_size: int
    factory: Factory
    counter: Counter
    host: str
    port: int
    fake: bool
    connect_delay: float = 0.0


class Impl:
    """Base adapter. ``hold`` is set to the pool's own context-manager factory where it has one,
    so the bench adds no frame between the workload and the pool."""

    hold: Callable[[], contextlib.AbstractContextManager[Any]]
    client: Any = None
    dist: ClassVar[str | None] = None  # distribution whose version is reported
    elastic: ClassVar[bool] = True  # can grow from min_size to max_size (for ``spike``)

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def start(self) -> None:
        """Return once ``min_size`` connections are open (default: check that many out at once)."""
        with contextlib.ExitStack() as stack:
            for _ in range(self.spec.min_size):
                stack.enter_context(self.hold())

    def close(self) -> None:
        """Close what the pool holds."""

    def version(self) -> str:
        """Version of what is measured."""
        return (
            importlib.metadata.version(self.dist) if self.dist else f"gevent {gevent.__version__}"
        )


class Borrow:
    """``with`` over a ``get``/``put`` pair, as a user would write it (a plain class: cheap);
    ``unwrap`` turns the pool's item into the raw connection."""

    __slots__ = ("conn", "get", "put", "unwrap")

    def __init__(
        self,
        get: Callable[[], Any],
        put: Callable[[Any], Any],
        unwrap: Callable[[Any], Any] | None = None,
    ) -> None:
        self.get, self.put, self.unwrap = get, put, unwrap

    def __enter__(self) -> Any:
        conn = self.conn = self.get()
        return conn if self.unwrap is None else self.unwrap(conn)

    def __exit__(self, *exc: object) -> None:
        self.put(self.conn)


SOCK, CLOSE = operator.attrgetter("sock"), operator.methodcaller("close")


class Bare(Impl):
    """The floor: a ``gevent.queue.LifoQueue`` of pre-opened connections (barging, unfair)."""

    elastic = False
    queue_class: Callable[[], Any] = LifoQueue

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        self.queue = self.queue_class()
        self.hold = functools.partial(Borrow, self.queue.get, self.queue.put)

    def start(self) -> None:
        for _ in range(self.spec.max_size):
            self.queue.put(self.spec.factory())


class FifoQueue:
    """The least a first-come-first-served pool does: a returned connection goes to the oldest
    waiter (through the hub, as gevent requires), never back to a greenlet that did not wait."""

    def __init__(self) -> None:
        self.idle: list[Any] = []
        self.waiters: collections.deque[Waiter[Any]] = collections.deque()
        self.hub = get_hub()

    def get(self) -> Any:
        """An idle connection, or wait in line for one."""
        if self.idle and not self.waiters:
            return self.idle.pop()
        waiter: Waiter[Any] = Waiter()
        self.waiters.append(waiter)
        try:
            return waiter.get()
        except BaseException:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)
            raise

    def put(self, conn: Any) -> None:
        """Hand ``conn`` to the oldest waiter, or keep it idle."""
        if self.waiters:
            self.hub.loop.run_callback(self.waiters.popleft().switch, conn)
        else:
            self.idle.append(conn)


class Fifo(Bare):
    """A 30-line FIFO hand-off (:class:`FifoQueue`): what strict fairness alone costs."""

    queue_class = FifoQueue


def load_gcp021() -> Any:
    """Import geventconnpool 0.2.1 from :data:`GCP021_DIR` with the shims Python 3 needs
    (``gevent.coros`` = ``gevent.lock``, builtin ``xrange``, its dir on ``sys.path`` for its
    implicit relative import), in this child process only; its files are never edited."""
    if not (GCP021_DIR / "geventconnpool" / "pool.py").is_file():
        raise ModuleNotFoundError("run `python -m bench.prepare`", name="geventconnpool 0.2.1")
    import gevent.lock

    sys.modules.setdefault("gevent.coros", gevent.lock)
    builtins.xrange = range  # type: ignore[attr-defined]
    sys.path[:0] = [str(GCP021_DIR), str(GCP021_DIR / "geventconnpool")]
    old = importlib.import_module("geventconnpool")
    if not str(old.__file__).startswith(str(GCP021_DIR)):
        raise RuntimeError(f"imported the wrong geventconnpool: {old.__file__}")
    return old


class Gcp021(Impl):
    """geventconnpool 0.2.1: a BoundedSemaphore plus a deque, fixed size; SPAWN_FREQUENCY=0
    so that large pools fill at once."""

    elastic = False

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        factory = spec.factory

        class Pool(load_gcp021().ConnectionPool):  # type: ignore[misc]
            SPAWN_FREQUENCY = 0

            def _new_connection(self) -> Any:
                return factory()

        self.pool = Pool(spec.max_size)
        self.hold = self.pool.get

    def start(self) -> None:
        deadline = time.monotonic() + 60
        while len(self.pool.conn) < self.spec.max_size and time.monotonic() < deadline:
            gevent.sleep(0.001)

    def version(self) -> str:
        return "0.2.1"


class GsocketConnection:
    """A gsocketpool ``Connection`` over our factory."""

    def __init__(self, factory: Factory) -> None:
        self.sock = factory()

    def get(self) -> Any:
        return self.sock

    def open(self) -> None: ...
    def close(self) -> None:
        close_quietly(self.sock)

    def is_connected(self) -> bool:
        return True

    def is_expired(self) -> bool:
        return False


class Gsocketpool(Impl):
    """gsocketpool: waiters poll every 0.1 s and give up after 10 tries."""

    dist = "gsocketpool"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import gsocketpool

        self.pool = gsocketpool.Pool(
            lambda: GsocketConnection(spec.factory),
            initial_connections=spec.min_size,
            max_connections=spec.max_size,
        )
        self.hold = functools.partial(Borrow, self.pool.acquire, self.pool.release, SOCK)


class Socketpool(Impl):
    """socketpool (benoitc), gevent backend: never waits (opens a connection when none is idle;
    ``max_size`` caps idle connections only); checks each socket with poll() on checkout."""

    dist = "socketpool"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        from socketpool import ConnectionPool
        from socketpool.conn import Connector
        from socketpool.util import is_connected

        class Conn(Connector):  # type: ignore[misc]
            def __init__(self, factory: Factory, backend_mod: Any, pool: Any = None) -> None:
                self.sock, self.life = factory(), time.time()

            def matches(self, **options: Any) -> bool:
                return True

            def is_connected(self) -> bool:
                return spec.fake or bool(is_connected(self.sock))

            def get_lifetime(self) -> float:
                return self.life

            def invalidate(self) -> None:
                close_quietly(self.sock)

        self.pool = ConnectionPool(
            factory=Conn,
            backend="gevent",
            max_size=spec.max_size,
            options={"factory": spec.factory},
        )
        self.hold = functools.partial(Borrow, self.pool.get, self.pool.release_connection, SOCK)


class GenericConnectionPool(Impl):
    """generic-connection-pool's threading pool, cooperative under ``monkey.patch_all()``;
    checks each socket (MSG_PEEK) on checkout."""

    dist = "generic-connection-pool"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        from generic_connection_pool.contrib.socket import SocketAlivenessCheckingMixin
        from generic_connection_pool.threading import BaseConnectionManager, ConnectionPool

        class Manager(BaseConnectionManager[Any, Any]):
            def create(self, endpoint: Any, timeout: float | None = None) -> Any:
                return spec.factory()

            def dispose(self, endpoint: Any, conn: Any, timeout: float | None = None) -> None:
                close_quietly(conn)

        class Checked(SocketAlivenessCheckingMixin[Any], Manager):
            pass

        self.pool = ConnectionPool(
            Manager() if spec.fake else Checked(),
            min_idle=spec.min_size,
            max_size=spec.max_size,
            total_max_size=spec.max_size,
        )
        self.hold = functools.partial(self.pool.connection, "bench")

    def close(self) -> None:
        self.pool.close(timeout=1.0)


class FakeRedisConnection:
    """Enough of ``redis.Connection`` for the pool's checkout/release path, with no socket."""

    def __init__(self, factory: Factory, **_: Any) -> None:
        self.pid, self.factory, self.conn = os.getpid(), factory, None

    def connect(self) -> None:
        self.conn = self.conn or self.factory()

    def can_read(self, timeout: float = 0) -> bool:
        return False

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self.conn = None

    def should_reconnect(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def redis_kwargs(spec: Spec) -> dict[str, Any]:
    """redis-py connection arguments: fake connections, or the server without CLIENT SETINFO."""
    redis: Any = importlib.import_module("redis")
    if spec.fake:
        return {"connection_class": FakeRedisConnection, "factory": spec.factory}
    params = inspect.signature(redis.connection.Connection).parameters
    quiet: dict[str, Any] = {}
    if "driver_info" in params:
        quiet = {"driver_info": None}
    elif "lib_name" in params:
        quiet = {"lib_name": None, "lib_version": None}
    return {"host": spec.host, "port": spec.port, **quiet}


class RedisPy(Impl):
    """redis-py's ``BlockingConnectionPool``; ``ping`` runs through the full client (RESP)."""

    dist = "redis"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        redis: Any = importlib.import_module("redis")  # Any: its hints are partial

        self.pool = redis.BlockingConnectionPool(
            max_connections=spec.max_size, timeout=None, **redis_kwargs(spec)
        )
        self.client = redis.Redis(connection_pool=self.pool)
        # redis-py < 5.3 wants a command name; newer versions take none.
        params = inspect.signature(self.pool.get_connection).parameters.values()
        required = [p for p in params if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
        args = ("PING",) if required else ()
        get = functools.partial(self.pool.get_connection, *args)
        self.hold = functools.partial(Borrow, get, self.pool.release)

    def close(self) -> None:
        self.pool.disconnect()


class OursRedisPy(Impl):
    """This repository's redis-py adapter, ``geventconnpool.contrib.redispy``."""

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import redis

        from geventconnpool.contrib.redispy import RedisPyConnectionPool

        if spec.fake:
            raise NotApplicable("makes its own redis connections")

        self.pool = RedisPyConnectionPool(host=spec.host, port=spec.port, max_size=spec.max_size)
        self.client = redis.Redis(connection_pool=self.pool)

    def start(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.pool.close()

    def version(self) -> str:
        return our_version()


class Sqlalchemy(Impl):
    """SQLAlchemy's ``QueuePool`` with a plain creator (``pool_size=min``,
    ``max_overflow=max-min``, ``reset_on_return=None``)."""

    dist = "sqlalchemy"

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        from sqlalchemy.pool import QueuePool

        self.pool = QueuePool(
            spec.factory,
            pool_size=spec.min_size,
            max_overflow=spec.max_size - spec.min_size,
            timeout=3600,
            reset_on_return=None,
        )
        unwrap = operator.attrgetter("dbapi_connection")
        self.hold = functools.partial(Borrow, self.pool.connect, CLOSE, unwrap)

    def close(self) -> None:
        self.pool.dispose()


class Ours(Impl):
    """This repository's ``ConnectionPool``, default options except ``SPAWN_FREQUENCY=0``
    (fill at once, as for 0.2.1) and ``reconnect_delay=0.1``."""

    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, spec: Spec) -> None:
        super().__init__(spec)
        import geventconnpool

        class Pool(geventconnpool.ConnectionPool[Any]):
            SPAWN_FREQUENCY = 0.0

            def _new_connection(self) -> Any:
                return spec.factory()

        kwargs: dict[str, Any] = {"min_size": spec.min_size, "max_size": spec.max_size}
        kwargs["reconnect_delay"] = 0.1
        try:
            self.pool = Pool(**kwargs, **self.options)
        except TypeError as exc:
            if any(name in str(exc) for name in self.options):
                why = f"this pool has no {', '.join(self.options)} option"
                raise NotApplicable(why, anywhere=True) from exc
            raise
        self.hold = self.pool.get

    def start(self) -> None:
        self.pool.wait_ready(60)

    def close(self) -> None:
        self.pool.close()

    def version(self) -> str:
        return our_version()


def our_version() -> str:
    """This repository's version."""
    import geventconnpool

    return str(geventconnpool.__version__)


class OursFifo(Ours):
    """``fair_after=0``: strict FIFO, each returned connection to the oldest waiter."""

    options: ClassVar[dict[str, Any]] = {"fair_after": 0}


class OursFixed(Ours):
    """The fixed 30 ms bound of the release before the adaptive one (``fair_floor=fair_after``)."""

    options: ClassVar[dict[str, Any]] = {"fair_after": 0.03, "fair_floor": 0.03}


#: Every adapter by key (the parent's ``bench.run.LABELS`` has the same keys, in table order).
ADAPTERS: dict[str, type[Impl]] = {
    "bare": Bare,
    "fifo": Fifo,
    "gcp021": Gcp021,
    "gsocketpool": Gsocketpool,
    "socketpool": Socketpool,
    "gcpool": GenericConnectionPool,
    "redispy": RedisPy,
    "sqlalchemy": Sqlalchemy,
    "ours": Ours,
    "ours_fixed": OursFixed,
    "ours_fifo": OursFifo,
    "ours_redispy": OursRedisPy,
}
