"""The sessions source follows a Redis Cluster whose primaries change.

Keyspace notifications are each node's own, so the source subscribes on every
primary. Here the primaries change after it has subscribed, on a real cluster
of three primaries and a fourth server: the fourth joins and takes the slot of
one session's queue and lease, or it replicates that slot's primary and takes
over when the primary dies. The gateway then works on the fourth server: a
push to the queue and a lease left to expire must both be reported, from its
notifications (the rescan is ten minutes away).
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from events import codec, metrics
from events.contract import QueueObserved, SessionExpired, SourceResynced
from events.gateway import GatewaySessions
from events.keys import KeySpace
from events.settings import Settings
from events.sources.gateway_leases import LOOP, run_sessions_source
from events.subscriber import primary_addresses, refresh_topology
from tests.redis_cluster import (
    answers,
    form_cluster,
    keyslot,
    node,
    servers,
    stop_server,
    wait_for,
)
from tests.support import eventually, lane_entries

SESSION = "5215512345678"
NODE_TIMEOUT_MS = 1000
"""Short, so that a replica takes over a dead primary in seconds (15 s by default)."""


def node_id(port: int) -> str:
    with node(port) as client:
        reply = client.execute_command("CLUSTER MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def slot_owner(port: int, slot: int) -> str:
    """The id of the node that the node at ``port`` says serves ``slot``."""
    with node(port) as client:
        for first, last, primary, *_ in client.execute_command("CLUSTER SLOTS"):
            if int(first) <= slot <= int(last):
                found = primary[2]
                return found.decode() if isinstance(found, bytes) else str(found)
    return ""


def replica_ports(port: int) -> set[int]:
    """The replicas that the node at ``port`` lists in its CLUSTER SLOTS reply."""
    with node(port) as client:
        return {int(replica[1]) for _, _, _, *replicas in client.execute_command("CLUSTER SLOTS")
                for replica in replicas}


def owner_port(ports: list[int], slot: int) -> int:
    return next(p for p in ports if slot_owner(p, slot) == node_id(p))


def meet(ports: list[int], new: int) -> str:
    """``new`` joins the cluster of ``ports``; its id once every node knows it."""
    with node(new) as client:
        client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
    new_id = node_id(new)
    for port in ports:
        def knows(p: int = port) -> bool:
            with node(p) as client:
                return new_id in str(client.execute_command("CLUSTER NODES"))
        wait_for(knows, f"node {port} to know the new node")
    return new_id


def take_slot(ports: list[int], new: int, slot: int) -> None:
    """The (empty) ``slot`` moves to the joined ``new`` the way ``redis-cli --cluster
    reshard`` moves one: importing, migrating, then assigned on every node."""
    new_id, owner = node_id(new), owner_port(ports, slot)
    with node(new) as client:
        client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", node_id(owner))
    with node(owner) as client:
        client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", new_id)
    for port in [new, owner, *(p for p in ports if p != owner)]:
        with node(port) as client:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", new_id)
    wait_until_served_by([*ports, new], slot, new_id)


def wait_until_served_by(ports: list[int], slot: int, owner_id: str) -> None:
    for port in ports:
        wait_for(lambda p=port: answers(p, "cluster") and slot_owner(p, slot) == owner_id,
                 f"node {port} to see slot {slot} served by {owner_id}")


def replicate(ports: list[int], replica: int, primary: int) -> None:
    meet(ports, replica)
    with node(replica) as client:
        client.execute_command("CLUSTER REPLICATE", node_id(primary))

    def in_sync() -> bool:
        with node(replica) as client:
            return bool(client.info("replication").get("master_link_status") == "up")
    wait_for(in_sync, f"the replica on {replica} to sync")


@pytest.fixture
def four(tmp_path: Path) -> Iterator[dict[int, subprocess.Popen[bytes]]]:
    """Four servers, the first three a cluster (the slots split evenly)."""
    def folder(port: int) -> Path:
        (tmp_path / str(port)).mkdir()
        return tmp_path / str(port)

    with servers(4, folder, "--cluster-node-timeout", str(NODE_TIMEOUT_MS)) as started:
        form_cluster(list(started)[:3])
        yield started


@contextlib.asynccontextmanager
async def sessions_role(settings: Settings, port: int) -> AsyncIterator[RedisCluster]:
    """The sessions role on a cluster client, ``REDIS_URL`` naming the node at ``port``,
    after its first listing; yields its client."""
    redis = RedisCluster(host="127.0.0.1", port=port, decode_responses=False)
    await redis.initialize()
    settings = replace(settings, redis_url=f"redis://127.0.0.1:{port}/0", redis_cluster=True,
                       rescan_interval_s=600.0)
    stop = asyncio.Event()
    source = asyncio.create_task(run_sessions_source(settings, redis, stop))
    try:
        await resynced(redis, settings.keys, 1)
        yield redis
    finally:
        stop.set()
        await asyncio.wait_for(source, timeout=30)
        await redis.aclose()


def failures_of_the_source() -> float:
    return float(metrics.LOOP_FAILURES.labels(LOOP)._value.get())


async def events_of(redis: Any, keys: KeySpace, kind: type[Any]) -> list[Any]:
    decoded = [codec.decode(fields) for _, fields in await lane_entries(redis, keys, "sessions")]
    return [e for e in decoded if isinstance(e, kind)]


async def resynced(redis: Any, keys: KeySpace, times: int) -> None:
    async def listed() -> bool:
        return len(await events_of(redis, keys, SourceResynced)) >= times
    await eventually(listed, timeout=60, message=f"listing number {times} of the source")


async def gateway_reported_from(redis: RedisCluster, keys: KeySpace, port: int) -> None:
    """A push and a lapsed lease of ``SESSION``, on the node at ``port``, are both reported."""
    async def reported(kind: type[Any]) -> bool:
        return any(e.key == SESSION for e in await events_of(redis, keys, kind))
    await redis.rpush(keys.queue(SESSION), b"m1")
    assert redis.get_node_from_key(keys.queue(SESSION)).port == port
    await eventually(lambda: reported(QueueObserved), timeout=60,
                     message=f"the push on the node at {port} reported")
    await GatewaySessions(redis, keys, ttl_s=1).start(SESSION)  # type: ignore[arg-type]
    await eventually(lambda: reported(SessionExpired), timeout=60,
                     message=f"the lease that lapsed on the node at {port} reported")


async def test_a_node_that_joins_and_takes_a_slot_is_subscribed_on(
    four: dict[int, subprocess.Popen[bytes]], settings: Settings, keys: KeySpace,
) -> None:
    *first, new = four
    slot = keyslot(keys.queue(SESSION))
    assert keyslot(keys.lease(SESSION)) == slot
    async with sessions_role(settings, first[1]) as redis:
        failures = failures_of_the_source()
        # The source's own commands never touch the slot: only asking the cluster tells it.
        await asyncio.to_thread(meet, first, new)
        await asyncio.to_thread(take_slot, first, new, slot)
        await resynced(redis, keys, 2)
        await gateway_reported_from(redis, keys, new)
        # Subscribing again is no failure, so it never waits out a growing backoff.
        assert failures_of_the_source() == failures


async def test_a_replica_that_takes_over_a_dead_primary_is_subscribed_on(
    four: dict[int, subprocess.Popen[bytes]], settings: Settings, keys: KeySpace,
) -> None:
    *first, replica = four
    slot = keyslot(keys.queue(SESSION))
    primary = await asyncio.to_thread(owner_port, first, slot)
    await asyncio.to_thread(replicate, first, replica, primary)
    survivor = next(p for p in first if p != primary)
    async with sessions_role(settings, survivor) as redis:
        # The primary dies; its replica is elected in its place.
        await asyncio.to_thread(stop_server, four[primary])
        await asyncio.to_thread(wait_until_served_by, [p for p in four if p != primary], slot,
                                await asyncio.to_thread(node_id, replica))
        await resynced(redis, keys, 2)
        await gateway_reported_from(redis, keys, replica)


async def test_a_refreshed_map_names_the_elected_replica_a_primary(
    four: dict[int, subprocess.Popen[bytes]], keys: KeySpace,
) -> None:
    """The client's nodes keep the type they were first seen with (the replica stays
    "replica" after the refresh); the slot map is what names the primaries."""
    *first, replica = four
    primary = await asyncio.to_thread(owner_port, first, keyslot(keys.queue(SESSION)))
    await asyncio.to_thread(replicate, first, replica, primary)
    survivor = next(p for p in first if p != primary)
    await asyncio.to_thread(wait_for, lambda: replica in replica_ports(survivor),
                            f"node {survivor} to list the replica")
    redis = RedisCluster(host="127.0.0.1", port=survivor, decode_responses=False)
    try:
        await redis.initialize()
        assert [n.port for n in redis.get_nodes() if n.server_type == "replica"] == [replica]
        assert {port for _, port in primary_addresses(redis)} == set(first)
        await asyncio.to_thread(stop_server, four[primary])
        await asyncio.to_thread(wait_until_served_by, [p for p in four if p != primary],
                                keyslot(keys.queue(SESSION)),
                                await asyncio.to_thread(node_id, replica))
        await refresh_topology(redis)
        expected = {p for p in four if p != primary}
        assert {port for _, port in primary_addresses(redis)} == expected
    finally:
        await redis.aclose()
