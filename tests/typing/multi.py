"""Checked by mypy --strict (not run): PoolMap and BalancedPool keep the connection type."""

from __future__ import annotations

from geventconnpool import BalancedPool, PoolMap, PoolStats
from geventconnpool.contrib.redis import RedisConnection, RedisPool


def per_tenant(tenant: str) -> RedisPool:
    return RedisPool("127.0.0.1", 6379, max_size=4, min_size=0, name=f"tenant-{tenant}")


def per_endpoint(endpoint: tuple[str, int]) -> RedisPool:
    return RedisPool(*endpoint, max_size=10, min_size=1, fail_fast=True)


tenants: PoolMap[str, RedisConnection] = PoolMap(per_tenant, max_total=100, max_pools=1000)
with tenants.get("acme", timeout=2) as conn:
    reply: object = conn.execute("PING")  # a RedisConnection, not Any
one: PoolStats = tenants.stats("acme")
every: PoolStats = tenants.stats()

replicas: BalancedPool[RedisConnection] = BalancedPool(
    [("127.0.0.1", 6379), ("127.0.0.1", 6380)], per_endpoint
)
with replicas.get() as rconn:
    same: RedisConnection = rconn
by_endpoint: PoolStats = replicas.stats(("127.0.0.1", 6379))
