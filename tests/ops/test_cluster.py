"""The hash tags, proven on a real three-node Redis Cluster.

The test starts a three-node cluster (:mod:`tests.redis_cluster`) and runs
the real code with ``redis.asyncio.cluster.RedisCluster``:
publishing, a consumer group reading several streams in one XREADGROUP, a
dead letter written and acked in one MULTI, the parked-queue Lua scripts
(queue and parked list in one slot) and the timer script (deadlines and
streams in one slot).  A key outside its slot would fail with CROSSSLOT.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Sequence

import pytest
from redis.asyncio.cluster import RedisCluster

from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from events.keys import KeySpace
from events.publisher import Publisher
from events.resp_packing import HiredisPacking
from ops.group_metrics import GroupCollector
from tests.redis_cluster import client, cluster, keyslot
from tests.support import eventually, request

__all__ = ["client", "cluster"]  # the fixtures

KEYS = KeySpace(prefix="cluster:", queue_pattern="queue:{session}")


async def test_the_streams_share_a_slot_and_other_keys_are_spread() -> None:
    tagged = {keyslot(KEYS.stream(n)) for n in ("conversations", "sessions", "audit", "deadletter")}
    tagged |= {keyslot(KEYS.deadlines()), keyslot(KEYS.deadline_payloads())}
    assert len(tagged) == 1
    assert keyslot(KEYS.queue("940740243")) == keyslot(KEYS.parked("940740243"))
    assert keyslot(KEYS.queue("940740243")) == keyslot(KEYS.lease("940740243"))
    assert keyslot(KEYS.queue("940740243")) == keyslot(KEYS.parked_meta("940740243"))
    assert len({keyslot(KEYS.queue(f"s{n}")) for n in range(20)}) > 1


async def test_every_node_of_the_roles_client_packs_with_hiredis(client: RedisCluster) -> None:
    nodes = client.get_nodes()
    assert len(nodes) >= 3
    assert all(issubclass(node.connection_class, HiredisPacking) for node in nodes)
    await client.set("packed:{a}", "José")
    assert await client.get("packed:{a}") == "José".encode()
    await client.delete("packed:{a}")


async def test_a_consumer_group_runs_on_the_cluster(client: RedisCluster) -> None:
    handled: set[str] = set()

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if key == "poison":
            raise PermanentError("this key cannot be handled")
        handled.add(key)

    options = GroupOptions(group="cluster-test", streams=(KEYS.conversations_stream, KEYS.sessions_stream),
                           deadletter_stream=KEYS.deadletter_stream, concurrency=4,
                           claim_interval_s=0.5, shutdown_deadline_s=5)
    consumer = GroupConsumer(client, options, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        keys = [f"k{n}" for n in range(50)]
        await Publisher(client, KEYS).publish_many([request(k) for k in [*keys, "poison"]])
        await Publisher(client, KEYS).publish_many([request("s1", scope="sessions")])

        async def all_done() -> bool:
            return handled >= {*keys, "s1"} and await client.xlen(KEYS.deadletter_stream) == 1

        await eventually(all_done, timeout=60, message="every key handled and one dead letter")
        letter = (await client.xrange(KEYS.deadletter_stream))[0][1]
        assert letter[b"key"] == b"poison" and letter[b"dl_reason"] == b"permanent"

        async def nothing_pending() -> bool:
            summary = await client.xpending(KEYS.conversations_stream, "cluster-test")
            return int(summary["pending"]) == 0

        await eventually(nothing_pending, timeout=30, message="every entry acked")
        states = {s.stream: s for s in await GroupCollector(client, KEYS).collect()}
        assert states["conversations"].lag == 0 and states["conversations"].pending == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


@pytest.mark.skipif(importlib.util.find_spec("consumers.stores.parked_queues") is None,
                    reason="the parked-queue store is not in this tree")
async def test_parking_and_restoring_a_queue_on_the_cluster(client: RedisCluster) -> None:
    from consumers.stores.parked_queues import ParkedQueues

    queue = KEYS.queue("940740243")
    await client.delete(queue, KEYS.parked("940740243"), KEYS.parked_meta("940740243"))
    await client.rpush(queue, b"m1", b"m2", b"m3")
    parked = ParkedQueues(client, KEYS)
    assert await parked.park("940740243", now=time.time(), cause="cluster-test") == 3
    assert await client.llen(queue) == 0
    assert await parked.parked("940740243") == [b"m1", b"m2", b"m3"]
    await client.rpush(queue, b"m4")
    assert await parked.restore("940740243") == 3
    assert await client.lrange(queue, 0, -1) == [b"m1", b"m2", b"m3", b"m4"]


async def test_the_gateway_start_handshake_runs_in_one_slot_on_the_cluster(
    client: RedisCluster,
) -> None:
    from consumers.stores.parked_queues import ParkedQueues
    from events.gateway import GatewaySessions

    session = "returning"
    queue = KEYS.queue(session)
    await client.delete(queue, KEYS.parked(session), KEYS.parked_meta(session), KEYS.lease(session))
    await client.rpush(queue, b"p1", b"p2")
    assert await ParkedQueues(client, KEYS).park(session, now=time.time(), cause="cluster") == 2
    await client.rpush(queue, b"newer")
    started = await GatewaySessions(client, KEYS, ttl_s=30).start(session)  # type: ignore[arg-type]
    assert started.restored == 2
    assert await client.lrange(queue, 0, -1) == [b"p1", b"p2", b"newer"]
    assert await client.exists(KEYS.lease(session)) == 1
    await client.rpush(queue, b"while-live")
    assert await ParkedQueues(client, KEYS).park(session, now=time.time(), cause="late") == 0


@pytest.mark.skipif(importlib.util.find_spec("events.timer_wheel") is None,
                    reason="the timer wheel is not in this tree")
async def test_a_due_timer_fires_into_its_stream_on_the_cluster(client: RedisCluster) -> None:
    from events.timer_wheel import TimerWheel

    wheel = TimerWheel(client, KEYS)
    before = await client.xlen(KEYS.conversations_stream)
    event = request("timer-key")
    await wheel.schedule("cluster-test:timer-key", time.time() - 1, event)
    fired = await wheel.fire_due()
    assert fired.fired == 1
    last = (await client.xrevrange(KEYS.conversations_stream, count=1))[0][1]
    assert last[b"key"] == b"timer-key"
    assert await client.xlen(KEYS.conversations_stream) == before + 1
    assert (await wheel.fire_due()).fired == 0  # exactly once

