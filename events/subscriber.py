"""The client a role subscribes with, on one Redis node or on a Redis Cluster.

redis-py's asyncio ``RedisCluster`` has no pub/sub.  On a cluster a classic
PUBLISH reaches every node, so a plain client of the node ``REDIS_URL`` names
hears every message published on any of them (the timer wheel's wake-ups).
Keyspace notifications are each node's own instead, so the sessions source does
not watch them on a cluster (:mod:`events.sources.gateway_leases`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


@contextlib.asynccontextmanager
async def subscriber(redis: Any, url: str | None) -> AsyncIterator[Any]:
    """``redis`` itself, or on a cluster a client of the node ``url`` names (closed after)."""
    if not is_cluster(redis):
        yield redis
        return
    if url is None:
        raise ValueError("a cluster client needs the URL of a node to subscribe through")
    node = Redis.from_url(url, decode_responses=False, health_check_interval=30,
                          socket_keepalive=True)
    try:
        yield node
    finally:
        await node.aclose()
