"""geventconnpool: a connection pool for gevent applications.

Subclass :class:`ConnectionPool`, implement ``_new_connection()``, and use
``with pool.get() as conn:``; wrap network functions in :func:`retry`.
"""

import logging

from ._multi import combine_stats
from .balanced import BalancedPool
from .budget import RetryBudget
from .errors import (
    DEFAULT_EXC_CLASSES,
    PoolClosed,
    PoolError,
    PoolExhausted,
    PoolTimeout,
    PoolUnavailable,
    PoolWarning,
)
from .keyed import PoolMap
from .pool import ConnectionPool
from .retry import retry
from .stats import ConnectionInfo, Discarded, PoolDump, PoolStats, WaiterInfo

__version__ = "1.0.0.dev0"

__all__ = [
    "DEFAULT_EXC_CLASSES",
    "BalancedPool",
    "ConnectionInfo",
    "ConnectionPool",
    "Discarded",
    "PoolClosed",
    "PoolDump",
    "PoolError",
    "PoolExhausted",
    "PoolMap",
    "PoolStats",
    "PoolTimeout",
    "PoolUnavailable",
    "PoolWarning",
    "RetryBudget",
    "WaiterInfo",
    "__version__",
    "combine_stats",
    "retry",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
