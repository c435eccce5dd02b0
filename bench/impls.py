"""One adapter per implementation under test, all with the same small interface.

Each adapter runs only inside its own child process (see :mod:`bench.worker`), so two versions of
``geventconnpool`` never meet. Third-party packages are imported lazily, in the adapter's
constructor: a missing one raises :class:`ImportError`, which the worker reports as "skipped".
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import functools
import importlib
import importlib.metadata
import inspect
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gevent
from gevent.hub import Waiter, get_hub
from gevent.queue import LifoQueue

from bench.conn import Counter, Factory, FakeConnection, close_quietly, fake_factory, ping

#: Where ``python -m bench.prepare`` installs geventconnpool 0.2.1 (never on sys.path by default).
GCP021_DIR = Path(__file__).resolve().parent / ".cache" / "gcp021"

Snapshot = dict[str, int]


@dataclass
class PoolSpec:
    """What a workload asks of a pool: its sizes and how to make one connection."""

    min_size: int
    max_size: int
    factory: Factory
    counter: Counter
    host: str = "127.0.0.1"
    port: int = 0
    fake: bool = False
    connect_delay: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


Hold = Callable[[], contextlib.AbstractContextManager[Any]]


class Borrow:
    """``with``-block over an adapter's ``acquire``/``release`` pair, as a user would write it.

    A plain class (not ``@contextmanager``) so that the bench adds as little as possible to the
    pools whose API is a get/put pair; a connection error inside the block calls ``discard``.
    """

    __slots__ = ("conn", "impl")

    def __init__(self, impl: Impl) -> None:
        self.impl = impl

    def __enter__(self) -> Any:
        self.conn = self.impl.acquire()
        return self.impl.raw(self.conn)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and isinstance(exc, self.impl.exc_classes):
            self.impl.discard(self.conn)
        self.impl.release(self.conn)


class QueueHold:
    """The bare queue's ``with`` block: ``get()`` on enter, ``put()`` on exit, nothing else."""

    __slots__ = ("conn", "queue")

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def __enter__(self) -> Any:
        self.conn = self.queue.get()
        return self.conn

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.queue.put(self.conn)


class Impl:
    """Base adapter: a pool built from a :class:`PoolSpec`, used through :attr:`hold`.

    ``hold()`` returns a context manager that checks out one raw connection; it is an attribute
    (set by the subclass) so the pool's own ``get()`` is called with no adapter frame between.
    """

    hold: Hold

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    #: Distribution whose version is reported (None: this repository).
    dist: ClassVar[str | None] = None
    #: Can it have min_size < max_size and grow on demand (needed by ``spike``)?
    elastic: ClassVar[bool] = True
    #: Can it replace dead connections (needed by ``recovery``)?
    recovers: ClassVar[bool] = True
    exc_classes: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec

    def start(self, timeout: float) -> None:
        """Block until ``min_size`` connections are open (the default prefills by holding them)."""
        self.prefill(self.spec.min_size)

    def prefill(self, count: int) -> None:
        """Check out ``count`` connections at once and give them back, so they exist."""
        with contextlib.ExitStack() as stack:
            for _ in range(count):
                stack.enter_context(self.hold())

    def borrow(self) -> Borrow:
        """A :class:`Borrow` over :meth:`acquire`/:meth:`release` (for get/put APIs)."""
        return Borrow(self)

    def acquire(self) -> Any:
        """Check out one pool item (for :class:`Borrow`)."""
        raise NotImplementedError

    def release(self, item: Any) -> None:
        """Give an item back (for :class:`Borrow`)."""
        raise NotImplementedError

    def discard(self, item: Any) -> None:
        """Tell the pool an item's connection broke (for :class:`Borrow`); default: nothing."""

    def raw(self, item: Any) -> Any:
        """The raw connection inside a pool item (for :class:`Borrow`); default: the item."""
        return item

    def request(self) -> None:
        """One PING round trip through the pool."""
        with self.hold() as sock:
            ping(sock)

    def retrying(
        self, fn: Callable[[], None], max_failures: int, interval: float
    ) -> Callable[[], None]:
        """``fn`` retried on connection errors, like 0.2.1's ``@retry`` (peers have none)."""

        def call() -> None:
            failures = 0
            while True:
                try:
                    return fn()
                except self.exc_classes:
                    failures += 1
                    if failures > max_failures:
                        raise
                    gevent.sleep(interval)

        return call

    def snapshot(self) -> Snapshot | None:
        """The pool's own view of its state (open/idle/in_use/waiting/connecting), if it has one."""
        return None

    def close(self) -> None:
        """Release everything the pool holds."""

    @classmethod
    def version(cls) -> str:
        """Version of the package under test (call after it was imported)."""
        if cls.dist is None:
            return "this repository"
        try:
            return importlib.metadata.version(cls.dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"


class BareQueue(Impl):
    """The floor: a ``gevent.queue.LifoQueue`` of pre-opened connections."""

    key = "bare"
    label = "bare LifoQueue"
    elastic = False
    recovers = False

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self.queue: LifoQueue[Any] = LifoQueue()
        self.hold = functools.partial(QueueHold, self.queue)

    def start(self, timeout: float) -> None:
        for _ in range(self.spec.max_size):
            self.queue.put(self.spec.factory())

    def close(self) -> None:
        while not self.queue.empty():
            close_quietly(self.queue.get())

    @classmethod
    def version(cls) -> str:
        return f"gevent {gevent.__version__}"


class FifoHandoff:
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
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            raise

    def put(self, conn: Any) -> None:
        """Hand ``conn`` to the oldest waiter, or keep it idle."""
        if self.waiters:
            self.hub.loop.run_callback(self.waiters.popleft().switch, conn)
        else:
            self.idle.append(conn)


class FairFloor(Impl):
    """A 30-line FIFO-handoff queue: what strict fairness costs, without any pool features."""

    key = "fair"
    label = "FIFO handoff (reference)"
    elastic = False
    recovers = False

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self.queue = FifoHandoff()
        self.hold = functools.partial(QueueHold, self.queue)

    def start(self, timeout: float) -> None:
        for _ in range(self.spec.max_size):
            self.queue.put(self.spec.factory())

    def close(self) -> None:
        for conn in self.queue.idle:
            close_quietly(conn)

    @classmethod
    def version(cls) -> str:
        return f"gevent {gevent.__version__}"


class NewConnection(Impl):
    """No pool: connect, use, close for every request."""

    key = "newconn"
    label = "new connection per request"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self.hold = self.borrow

    def start(self, timeout: float) -> None:
        pass

    def acquire(self) -> Any:
        return self.spec.factory()

    def release(self, item: Any) -> None:
        close_quietly(item)

    @classmethod
    def version(cls) -> str:
        return f"gevent {gevent.__version__}"


def load_gcp021() -> Any:
    """Import geventconnpool 0.2.1 from :data:`GCP021_DIR` with the Python 3 shims it needs.

    The shims live in this process only: ``gevent.coros`` is aliased to ``gevent.lock`` in
    ``sys.modules``, ``xrange`` is made a builtin, and the package's own directory goes on
    ``sys.path`` for its Python 2 implicit relative import (``from pool import ...``).
    Its files are never edited.
    """
    if not (GCP021_DIR / "geventconnpool" / "pool.py").is_file():
        raise ImportError("geventconnpool 0.2.1 not installed: run `python -m bench.prepare`")
    loaded = sys.modules.get("geventconnpool")
    if loaded is not None:
        if not str(loaded.__file__).startswith(str(GCP021_DIR)):
            raise RuntimeError("this repository's geventconnpool is already imported here")
        return loaded
    import gevent.lock

    sys.modules.setdefault("gevent.coros", gevent.lock)
    builtins.xrange = range  # type: ignore[attr-defined]
    sys.path.insert(0, str(GCP021_DIR / "geventconnpool"))
    sys.path.insert(0, str(GCP021_DIR))
    import geventconnpool as old

    if not str(old.__file__).startswith(str(GCP021_DIR)):
        raise RuntimeError(f"imported the wrong geventconnpool: {old.__file__}")
    return old


class Gcp021(Impl):
    """geventconnpool 0.2.1 from PyPI: a BoundedSemaphore plus a deque, fixed size."""

    key = "gcp021"
    label = "geventconnpool 0.2.1"
    elastic = False

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        self.mod = load_gcp021()
        factory = spec.factory

        class Pool(self.mod.ConnectionPool):  # type: ignore[misc,name-defined]
            SPAWN_FREQUENCY = 0

            def _new_connection(self) -> Any:
                try:
                    return factory()
                except OSError:
                    return None  # 0.2.1's contract: a falsy result means "retry later"

        self.pool_class = Pool

    def start(self, timeout: float) -> None:
        self.pool = self.pool_class(self.spec.max_size)
        deadline = time.monotonic() + timeout
        while len(self.pool.conn) < self.spec.max_size and time.monotonic() < deadline:
            gevent.sleep(0.001)
        self.hold = self.pool.get

    def retrying(
        self, fn: Callable[[], None], max_failures: int, interval: float
    ) -> Callable[[], None]:
        return self.mod.retry(fn, max_failures=max_failures, interval=interval)  # type: ignore[no-any-return]

    @classmethod
    def version(cls) -> str:
        return "0.2.1"


class GsocketpoolConnection:
    """A gsocketpool ``Connection`` whose ``open()`` makes a fresh socket (its own cannot)."""

    def __init__(self, factory: Factory) -> None:
        self.factory = factory
        self.sock: Any = None

    def open(self) -> None:
        self.sock = self.factory()

    def close(self) -> None:
        if self.sock is not None:
            close_quietly(self.sock)
            self.sock = None

    def get(self) -> Any:
        return self.sock

    def is_connected(self) -> bool:
        return self.sock is not None

    def is_expired(self) -> bool:
        return False


class Gsocketpool(Impl):
    """gsocketpool: deques of idle and in-use connections; waiters poll every 100 ms."""

    key = "gsocketpool"
    label = "gsocketpool"
    dist = "gsocketpool"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        import gsocketpool

        factory = spec.factory
        self.pool = gsocketpool.Pool(
            lambda: GsocketpoolConnection(factory),
            initial_connections=spec.min_size,
            max_connections=spec.max_size,
        )
        self.hold = self._hold

    def start(self, timeout: float) -> None:
        pass  # initial_connections were opened by the constructor

    @contextlib.contextmanager
    def _hold(self) -> Iterator[Any]:
        """Its own ``connection()`` context, reopening a connection closed after an error."""
        with self.pool.connection() as conn:
            if not conn.is_connected():
                conn.open()
            try:
                yield conn.get()
            except self.exc_classes:
                conn.close()
                raise


class Socketpool(Impl):
    """socketpool (benoitc) with its gevent backend: never waits, caps idle connections only."""

    key = "socketpool"
    label = "socketpool"
    dist = "socketpool"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        from socketpool import ConnectionPool
        from socketpool.conn import Connector
        from socketpool.util import is_connected

        fake = spec.fake

        class BenchConnector(Connector):  # type: ignore[misc]
            def __init__(self, factory: Factory, backend_mod: Any, pool: Any = None) -> None:
                self.sock = factory()
                self.connected = True
                self.life = time.time()

            def matches(self, **options: Any) -> bool:
                return True

            def is_connected(self) -> bool:
                return self.connected and (fake or bool(is_connected(self.sock)))

            def handle_exception(self, exception: BaseException) -> None:
                pass

            def get_lifetime(self) -> float:
                return self.life

            def invalidate(self) -> None:
                close_quietly(self.sock)
                self.connected = False
                self.life = -1

        self.pool = ConnectionPool(
            factory=BenchConnector,
            backend="gevent",
            max_size=spec.max_size,
            options={"factory": spec.factory},
        )
        self.hold = self.borrow

    def acquire(self) -> Any:
        return self.pool.get()

    def release(self, item: Any) -> None:
        self.pool.release_connection(item)

    def discard(self, item: Any) -> None:
        item.invalidate()

    def raw(self, item: Any) -> Any:
        return item.sock


class GenericConnectionPool(Impl):
    """generic-connection-pool's threading pool, made cooperative by ``monkey.patch_all()``."""

    key = "gcpool"
    label = "generic-connection-pool"
    dist = "generic-connection-pool"
    endpoint = "bench"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        from generic_connection_pool.contrib.socket import SocketAlivenessCheckingMixin
        from generic_connection_pool.threading import BaseConnectionManager, ConnectionPool

        factory = spec.factory

        class Manager(BaseConnectionManager[Any, Any]):
            def create(self, endpoint: Any, timeout: float | None = None) -> Any:
                return factory()

            def dispose(self, endpoint: Any, conn: Any, timeout: float | None = None) -> None:
                close_quietly(conn)

        class SocketManager(SocketAlivenessCheckingMixin[Any], Manager):
            pass

        manager = Manager() if spec.fake else SocketManager()
        self.pool = ConnectionPool(
            manager,
            min_idle=spec.min_size,
            max_size=spec.max_size,
            total_max_size=spec.max_size,
        )
        # Its own context manager; a broken socket goes back and fails the next aliveness check.
        self.hold = functools.partial(self.pool.connection, self.endpoint)

    def close(self) -> None:
        self.pool.close(timeout=1.0)


class FakeRedisConnection:
    """Enough of ``redis.Connection`` for the pool's checkout/release path, without a socket."""

    def __init__(self, counter: Counter, delay: float = 0.0, **_: Any) -> None:
        self.pid = os.getpid()
        self.factory = fake_factory(counter, delay)
        self.conn: FakeConnection | None = None

    def connect(self) -> None:
        if self.conn is None:
            self.conn = self.factory()

    def can_read(self, timeout: float = 0) -> bool:
        return False

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def should_reconnect(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def redis_driver_kwargs(connection_class: type) -> dict[str, Any]:
    """Keyword arguments that stop redis-py from sending CLIENT SETINFO on connect."""
    params = inspect.signature(connection_class).parameters
    if "driver_info" in params:
        return {"driver_info": None}
    if "lib_name" in params:
        return {"lib_name": None, "lib_version": None}
    return {}


def redis_get_args(get_connection: Callable[..., Any]) -> tuple[str, ...]:
    """``()`` for redis-py >= 5.3 (no arguments), ``("PING",)`` where a command name is required."""
    params = list(inspect.signature(get_connection).parameters.values())
    required = params and params[0].default is inspect.Parameter.empty
    return ("PING",) if required and params[0].kind is not params[0].VAR_POSITIONAL else ()


class RedisPy(Impl):
    """redis-py's ``BlockingConnectionPool``; ``ping`` goes through the full client."""

    key = "redispy"
    label = "redis-py BlockingConnectionPool"
    dist = "redis"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        redis: Any = importlib.import_module("redis")  # Any: its partial hints are not strict
        BlockingConnectionPool = redis.connection.BlockingConnectionPool
        Connection = redis.connection.Connection

        self.exc_classes = (
            OSError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
        )
        counter = spec.counter
        kwargs: dict[str, Any]
        if spec.fake:
            kwargs = {
                "connection_class": FakeRedisConnection,
                "counter": counter,
                "delay": spec.connect_delay,
            }
        else:

            class CountingConnection(Connection):  # type: ignore[misc,valid-type]
                def _connect(self) -> Any:
                    counter.connecting += 1
                    try:
                        sock = super()._connect()
                    except BaseException:
                        counter.failed += 1
                        raise
                    finally:
                        counter.connecting -= 1
                    counter.created += 1
                    return sock

            kwargs = {
                "connection_class": CountingConnection,
                "host": spec.host,
                "port": spec.port,
                **redis_driver_kwargs(Connection),
            }
        self.pool = BlockingConnectionPool(max_connections=spec.max_size, timeout=None, **kwargs)
        self.client = redis.Redis(connection_pool=self.pool)
        self.get_args = redis_get_args(self.pool.get_connection)
        self.hold = self.borrow

    def acquire(self) -> Any:
        return self.pool.get_connection(*self.get_args)

    def release(self, item: Any) -> None:
        self.pool.release(item)

    def discard(self, item: Any) -> None:
        item.disconnect()

    def request(self) -> None:
        self.client.ping()

    def close(self) -> None:
        self.pool.disconnect()


class SqlalchemyQueuePool(Impl):
    """SQLAlchemy's ``QueuePool`` with a plain creator: the generic pool many gevent apps use."""

    key = "sqlalchemy"
    label = "SQLAlchemy QueuePool"
    dist = "sqlalchemy"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        from sqlalchemy.pool import QueuePool

        self.pool = QueuePool(
            spec.factory,
            pool_size=spec.min_size,
            max_overflow=spec.max_size - spec.min_size,
            timeout=3600,
            reset_on_return=None,
        )
        self.hold = self.borrow

    def acquire(self) -> Any:
        return self.pool.connect()

    def release(self, item: Any) -> None:
        if item.is_valid:
            item.close()

    def discard(self, item: Any) -> None:
        item.invalidate()  # also returns it to the pool, which reconnects lazily

    def raw(self, item: Any) -> Any:
        return item.dbapi_connection

    def close(self) -> None:
        self.pool.dispose()


class Ours(Impl):
    """This repository's ``geventconnpool.ConnectionPool`` (see ``NOTES`` for its options)."""

    key = "ours"
    label = "geventconnpool (this)"

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__(spec)
        import geventconnpool

        factory = spec.factory
        options = dict(spec.extra)
        fill_at_once = options.pop("fill_at_once", True)

        class BenchPool(geventconnpool.ConnectionPool[Any]):
            if fill_at_once:
                SPAWN_FREQUENCY = 0.0

            def _new_connection(self) -> Any:
                return factory()

        if fill_at_once:
            options.setdefault("reconnect_delay", 0.1)  # its default: SPAWN_FREQUENCY's value
        self.mod = geventconnpool
        self.pool = BenchPool(min_size=spec.min_size, max_size=spec.max_size, **options)
        self.hold = self.pool.get

    def start(self, timeout: float) -> None:
        self.pool.wait_ready(timeout)

    def retrying(
        self, fn: Callable[[], None], max_failures: int, interval: float
    ) -> Callable[[], None]:
        decorate = self.mod.retry(max_failures=max_failures, interval=interval)
        return decorate(fn)

    def snapshot(self) -> Snapshot | None:
        s = self.pool.stats()
        return {
            "open": s.open,
            "idle": s.idle,
            "in_use": s.in_use,
            "connecting": s.connecting,
            "waiting": s.waiting,
            "created": s.created,
        }

    def close(self) -> None:
        self.pool.close()

    @classmethod
    def version(cls) -> str:
        import geventconnpool

        return str(getattr(geventconnpool, "__version__", "this repository"))


IMPLS: dict[str, type[Impl]] = {
    cls.key: cls
    for cls in (
        BareQueue,
        FairFloor,
        NewConnection,
        Gcp021,
        Gsocketpool,
        Socketpool,
        GenericConnectionPool,
        RedisPy,
        SqlalchemyQueuePool,
        Ours,
    )
}
