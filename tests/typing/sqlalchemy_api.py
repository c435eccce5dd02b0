"""Checked by mypy --strict (not run): GeventPool the way SQLAlchemy users write it."""

from __future__ import annotations

import sqlalchemy
import sqlalchemy.exc

from geventconnpool import ConnectionPool, PoolStats, PoolTimeout
from geventconnpool.contrib.sqlalchemy import GeventPool, GeventPoolTimeout, patch_psycopg2

patch_psycopg2()
engine = sqlalchemy.create_engine(
    "postgresql+psycopg2://app@db/app",
    poolclass=GeventPool,
    pool_size=5,
    max_overflow=5,
    pool_timeout=5,
    geventconnpool_options={"fail_fast": True},
)
pool = GeventPool(lambda: None, max_size=4, fail_fast=True, name="reports")
other = sqlalchemy.create_engine("postgresql+psycopg2://", pool=pool)
underneath: ConnectionPool[object] = pool.pool
stats: PoolStats = pool.stats()
name: str = pool.name
line: str = pool.status()
again: GeventPool = pool.recreate()
try:
    with engine.connect():
        pass
except sqlalchemy.exc.TimeoutError as exc:
    ours: bool = isinstance(exc, (PoolTimeout, GeventPoolTimeout))
