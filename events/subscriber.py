"""The clients a role subscribes with, on one Redis node or on a Redis Cluster.

redis-py's asyncio ``RedisCluster`` has no pub/sub, so a role subscribes
through plain clients of the nodes themselves:

* a classic PUBLISH reaches every node of a cluster, so one client of the
  node ``REDIS_URL`` names hears every message published on any of them (the
  timer wheel's wake-ups): :func:`subscriber`;
* keyspace notifications are each node's own, so the sessions source
  subscribes on every primary (:func:`primaries`) and reads their pubsubs as
  one (:class:`MergedPubSub`); :class:`PrimariesWatch` tells it when the
  cluster's primaries changed (a node added, a slot moved to it, a failover),
  to subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url

from events.resp_packing import pack_with_hiredis

READ_SLICE_S = 1.0
"""How long one read of a node's pubsub waits before it reads again."""

TOPOLOGY_CHECK_S = 5.0
"""How often a subscriber asks the cluster which primaries serve its slots."""


def is_cluster(redis: Any) -> bool:
    return isinstance(redis, RedisCluster)


def _node_client(url: str, host: str | None = None, port: int | None = None) -> Redis:
    """A plain client of ``url`` (its user, password and TLS), at another node's address."""
    options: dict[str, Any] = dict(parse_url(url))
    if host is not None:
        options.update(host=host, port=port)
    return pack_with_hiredis(Redis(**options, decode_responses=False, health_check_interval=30,
                                   socket_keepalive=True))


@contextlib.asynccontextmanager
async def subscriber(redis: Any, url: str | None) -> AsyncIterator[Any]:
    """``redis`` itself, or on a cluster a client of the node ``url`` names (closed after)."""
    async with _node_clients(redis, url, [(None, None)]) as (node,):
        yield node


def primary_addresses(redis: Any) -> frozenset[tuple[str, int]]:
    """The primaries that serve slots in a cluster client's slot map (empty on one node).

    Read from the slot map, not from the nodes' ``server_type``: redis-py 7.4 keeps
    a known node's old type when a refresh finds it promoted, so a replica elected
    in place of a dead primary stays "replica" there (as in redis/redis-py#2433).
    """
    if not is_cluster(redis):
        return frozenset()
    owners = {id(nodes[0]): nodes[0] for nodes in redis.nodes_manager.slots_cache.values()}
    return frozenset((n.host, int(n.port)) for n in owners.values())


async def reported_primaries(node: Any) -> frozenset[tuple[str, int]]:
    """The primaries serving slots as the cluster node ``node`` (a plain client) reports them."""
    ranges = await node.execute_command("CLUSTER SLOTS")
    own_host = node.connection_pool.connection_kwargs.get("host", "")
    found = set()
    for entry in ranges:
        host, port = entry[2][0], entry[2][1]
        host = host.decode() if isinstance(host, bytes) else str(host)
        found.add((host or own_host, int(port)))  # a one-node cluster reports no host
    return frozenset(found)


class PrimariesWatch:
    """Tells when a cluster's primaries are no longer those a subscriber subscribed on.

    The cluster client learns of a new primary only when a command of its own is
    MOVED there, and a subscriber's own commands may never touch the moved slots;
    so every :data:`TOPOLOGY_CHECK_S` the client's map is compared, then the node
    ``node`` is asked, and on a change the client's map is refreshed (which
    reconnects its connections: done only then) so that subscribing again finds
    every primary. Checked at that interval only, since the watch asks after
    every message it reads.
    """

    def __init__(self, redis: Any, node: Any, interval_s: float = TOPOLOGY_CHECK_S) -> None:
        self._redis, self._node, self._interval_s = redis, node, interval_s
        self.subscribed = primary_addresses(redis)
        self._next_check = time.monotonic() + interval_s

    async def changed(self) -> bool:
        if not is_cluster(self._redis) or time.monotonic() < self._next_check:
            return False
        self._next_check = time.monotonic() + self._interval_s
        if primary_addresses(self._redis) != self.subscribed:  # the client learned (MOVED)
            return True
        if await reported_primaries(self._node) == self.subscribed:
            return False
        await refresh_topology(self._redis)
        return True


async def refresh_topology(redis: Any) -> None:
    """Have a cluster client read the slot map again (its connections reconnect, so only on
    a change, or after a failure that may be a dead primary: its map still names it until
    then); nothing on one node."""
    if is_cluster(redis):
        await redis.nodes_manager.initialize()


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
