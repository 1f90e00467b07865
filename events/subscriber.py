"""The clients a role subscribes with, on one Redis node or on a Redis Cluster.

redis-py's asyncio ``RedisCluster`` has no pub/sub, so a role subscribes
through plain clients of the nodes themselves:

* a classic PUBLISH reaches every node of a cluster, so one client of the
  node ``REDIS_URL`` names hears every message published on any of them (the
  timer wheel's wake-ups): :func:`subscriber`;
* keyspace notifications are each node's own, so the sessions source
  subscribes on every primary (:func:`primaries`) and reads their pubsubs as
  one (:class:`MergedPubSub`); :func:`primary_addresses` tells it when the
  cluster's primaries changed, to subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url

READ_SLICE_S = 1.0
"""How long one read of a node's pubsub waits before it reads again."""


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def _node_client(url: str, host: str | None = None, port: int | None = None) -> Redis:
    """A plain client of ``url`` (its user, password and TLS), at another node's address."""
    options: dict[str, Any] = dict(parse_url(url))
    if host is not None:
        options.update(host=host, port=port)
    return Redis(**options, decode_responses=False, health_check_interval=30,
                 socket_keepalive=True)


@contextlib.asynccontextmanager
async def subscriber(redis: Any, url: str | None) -> AsyncIterator[Any]:
    """``redis`` itself, or on a cluster a client of the node ``url`` names (closed after)."""
    async with _node_clients(redis, url, [(None, None)]) as (node,):
        yield node


def primary_addresses(redis: Any) -> frozenset[tuple[str, int]]:
    """The cluster's primaries as its client knows them (empty on one node)."""
    if not is_cluster(redis):
        return frozenset()
    return frozenset((n.host, int(n.port)) for n in redis.get_nodes() if n.server_type == "primary")


@contextlib.asynccontextmanager
async def primaries(redis: Any, url: str | None) -> AsyncIterator[list[Any]]:
    """``[redis]``, or on a cluster one client per primary (closed after)."""
    async with _node_clients(redis, url, sorted(primary_addresses(redis))) as nodes:
        yield nodes


@contextlib.asynccontextmanager
async def _node_clients(redis: Any, url: str | None,
                        addresses: Sequence[tuple[str | None, int | None]]
                        ) -> AsyncIterator[list[Any]]:
    """``[redis]`` on one node; on a cluster a plain client of ``url`` at each address
    (``(None, None)``: the node ``url`` names), closed after."""
    if not is_cluster(redis):
        yield [redis]
        return
    if url is None:
        raise ValueError("a cluster client needs the URL of a node to subscribe through")
    nodes = [_node_client(url, host, port) for host, port in addresses]
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.aclose()


class MergedPubSub:
    """Several nodes' pubsubs read as one: one reader task per pubsub feeds a queue, and
    :meth:`get_message` returns the next message of any; a reader's error is raised there."""

    def __init__(self, pubsubs: Sequence[Any]) -> None:
        self.pubsubs = list(pubsubs)
        self._queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self._readers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start reading (after the subscriptions were confirmed on each pubsub)."""
        self._readers = [asyncio.create_task(self._read(p)) for p in self.pubsubs]

    async def _read(self, pubsub: Any) -> None:
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=READ_SLICE_S)
                if message is not None:
                    self._queue.put_nowait(message)
        except Exception as e:  # the connection is gone: the watcher raises it
            self._queue.put_nowait(e)

    async def get_message(self, *, timeout: float) -> dict[str, Any] | None:
        """The next message, or ``None`` after ``timeout`` seconds."""
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(timeout, 0.001))
            except TimeoutError:
                return None
        if isinstance(item, Exception):
            raise item
        return item

    async def aclose(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        for pubsub in self.pubsubs:
            await pubsub.aclose()
