"""Commands packed by hiredis on redis-py's asyncio connections.

redis-py's synchronous connections pack commands into the Redis protocol with
hiredis when it is installed; its asyncio connections still pack them in
Python, argument by argument (redis/redis-py#4176).  In the relay's pipelines
of XADDs that packing was a fifth of the process's time.  :func:`pack_with_hiredis`
gives a client's connections the synchronous client's packer
(``redis.connection.HiredisRespSerializer``): the same bytes on the wire
(the arguments are bytes, text, integers and floats here).
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from redis.asyncio import Redis, RedisCluster
from redis.connection import HiredisRespSerializer

Client = TypeVar("Client", Redis, RedisCluster)

_SERIALIZER = HiredisRespSerializer()
"""The synchronous client's packer (it needs hiredis, which the redis[hiredis] extra brings)."""


class HiredisPacking:
    """Mixed in before a redis-py asyncio connection class."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _SERIALIZER.pack(*args)  # type: ignore[no-any-return]


@functools.cache
def _packing(connection_class: type) -> type:
    if issubclass(connection_class, HiredisPacking):
        return connection_class
    return type(f"Hiredis{connection_class.__name__}", (HiredisPacking, connection_class), {})


def pack_with_hiredis(client: Client) -> Client:
    """``client``, its connections (those not made yet) packing commands with hiredis."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs  # every node made from now on
        kwargs["connection_class"] = _packing(kwargs["connection_class"])
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = _packing(node.connection_class)
    else:
        pool = client.connection_pool
        pool.connection_class = _packing(pool.connection_class)
    return client
