"""Partitioned streams on a real three-node Redis Cluster.

With ``partitions=3`` the conversation and session streams are split by the
key's CRC-32; each partition has its own hash tag (``{events-N}``), and the
test shows the three partitions served by three different nodes.  The real
code runs on them with ``redis.asyncio.cluster.RedisCluster``: the publisher,
a consumer group reading every partition (one XREADGROUP per slot, with the
gap check in front), dead letters written beside their partition and retried
from the CLI's listing, the timer wheel firing each partition's deadlines into
that partition, the gateway's start handshake publishing into the session's
partition, a parked queue restored, and a projection replayed from all
partitions.  A key outside its slot would fail with CROSSSLOT.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence

from redis.asyncio.cluster import RedisCluster

from consumers.deadletter import retry_dead_letter
from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from consumers.stores.parked_queues import ParkedQueues
from events.contract import CONVERSATIONS, SESSIONS
from events.gateway import GatewaySessions
from events.keys import KeySpace, label_of
from events.publisher import Publisher
from events.timer_wheel import TimerWheel
from ops.commands.dlq import find, listing
from projections import queries
from projections.rebuild import replay
from tests.redis_cluster import client, cluster, keyslot
from tests.support import eventually, request, session_started

__all__ = ["client", "cluster"]  # the fixtures

PARTITIONS = 3
KEYS = KeySpace(prefix="parts:", partitions=PARTITIONS)
CONVERSATION_KEYS = [f"5511999{n:04d}:940740243" for n in range(60)]


def node_of(redis: RedisCluster, key: str) -> str:
    node = redis.get_node_from_key(key)
    return f"{node.host}:{node.port}"


async def test_the_partitions_are_served_by_different_nodes(client: RedisCluster) -> None:
    streams = KEYS.live_streams(CONVERSATIONS)
    assert len({node_of(client, s) for s in streams}) == PARTITIONS
    for p in range(PARTITIONS):  # what is written with a partition's entries shares its slot
        live, bulk = KEYS.partition_lanes(SESSIONS, p)
        slots = {keyslot(k) for k in (*KEYS.partition_lanes(CONVERSATIONS, p), live, bulk,
                                      KEYS.deadlines(p), KEYS.deadline_payloads(p),
                                      KEYS.deadletter_streams[p + 1])}
        assert slots == {keyslot(streams[p])}
    assert len({KEYS.partition_of(k) for k in CONVERSATION_KEYS}) == PARTITIONS


async def test_a_group_reads_every_partition_in_per_key_order(client: RedisCluster) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    seen_live: dict[str, list[str]] = defaultdict(list)
    live_streams = set(KEYS.live_streams(CONVERSATIONS))
    streams_of: dict[str, set[str]] = defaultdict(set)

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if key.startswith("poison"):
            raise PermanentError("this key cannot be handled")
        for d in deliveries:
            seen[key].append(d.event.id)
            streams_of[key].add(d.stream)
            if d.stream in live_streams:
                seen_live[key].append(d.event.id)

    options = GroupOptions(group="parts-test", streams=KEYS.lanes(CONVERSATIONS),
                           bulk_streams=KEYS.bulk_streams(CONVERSATIONS),
                           deadletter_stream=KEYS.deadletter_stream, gaps_key=KEYS.stream_gaps,
                           concurrency=4, claim_interval_s=0.5, shutdown_deadline_s=5)
    publisher = Publisher(client, KEYS)
    events = [request(k) for _ in range(3) for k in CONVERSATION_KEYS]
    poison = [f"poison{n}:1" for n in range(12)]
    consumer = GroupConsumer(client, options, handler)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await publisher.publish_many(events[:60], lane="bulk")
        await publisher.publish_many([*events[60:], *(request(k) for k in poison)])

        async def all_handled() -> bool:
            letters = sum([await client.xlen(s) for s in KEYS.deadletter_streams])
            return sum(map(len, seen.values())) == len(events) and letters == len(poison)

        await eventually(all_handled, timeout=90, message="every event handled, poison dead")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    for key in CONVERSATION_KEYS:  # one partition per key, its live events in publish order
        assert streams_of[key] == set(KEYS.partition_lanes(CONVERSATIONS, KEYS.partition_of(key)))
        assert seen_live[key] == [e.id for e in events[60:] if e.key == key]
    for stream in KEYS.lanes(CONVERSATIONS):
        assert int((await client.xpending(stream, "parts-test"))["pending"]) == 0
    # each dead letter is beside its partition, and the CLI's listing names and retries it
    letters = await listing(client, KEYS, 100)
    assert len(letters) == len(poison)
    for row in letters:
        stream, entry_id, fields = await find(client, KEYS, row["entry_id"])
        partition = KEYS.partition_of(fields["key"])
        assert label_of(stream) == f"@{partition}" and row["entry_id"].endswith(f"@{partition}")
        assert fields["dl_stream"] == KEYS.stream_for(CONVERSATIONS, fields["key"])
    stream, entry_id, fields = await find(client, KEYS, letters[0]["entry_id"])
    new_id = await retry_dead_letter(client, stream, entry_id)
    assert (await client.xrange(fields["dl_stream"], new_id, new_id))[0][1][b"key"] == \
        fields["key"].encode()
    assert await client.xlen(stream) == sum(r["entry_id"].endswith(label_of(stream))
                                            for r in letters) - 1


async def test_deadlines_fire_into_their_partition_once(client: RedisCluster) -> None:
    wheel = TimerWheel(client, KEYS)
    keys = CONVERSATION_KEYS[:9]
    before = {s: await client.xlen(s) for s in KEYS.live_streams(CONVERSATIONS)}
    for key in keys:
        await wheel.schedule(f"parts:{key}", time.time() - 1, request(key))
    await wheel.schedule("parts:later", time.time() + 3600, request(keys[0]))
    assert await wheel.cancel("parts:later", keys[0])
    assert await wheel.count() == len(keys)
    fired = await wheel.fire_due()
    assert (fired.fired, fired.scheduled) == (len(keys), 0)
    assert (await wheel.fire_due()).fired == 0  # exactly once
    for stream in KEYS.live_streams(CONVERSATIONS):
        added = await client.xrange(stream, "-", "+")
        got = {e[1][b"key"].decode() for e in added[before[stream]:]}
        assert got == {k for k in keys if KEYS.stream_for(CONVERSATIONS, k) == stream}


async def test_sessions_start_restore_and_replay_across_partitions(client: RedisCluster) -> None:
    names = [f"gw{n}" for n in range(9)]
    assert len({KEYS.partition_of(n) for n in names}) == PARTITIONS
    await client.rpush(KEYS.queue(names[0]), b"m1", b"m2")
    assert await ParkedQueues(client, KEYS).park(names[0], now=time.time(), cause="test") == 2
    gateway = GatewaySessions(client, KEYS, ttl_s=30)  # type: ignore[arg-type]
    started = [await gateway.start(name) for name in names]
    assert started[0].restored == 2
    assert await client.lrange(KEYS.queue(names[0]), 0, -1) == [b"m1", b"m2"]
    for stream in KEYS.live_streams(SESSIONS):  # each start went to its name's partition
        started_here = {e[1][b"key"].decode() for e in await client.xrange(stream)
                        if e[1][b"type"] == b"session.started"}
        assert started_here == {n for n in names if KEYS.stream_for(SESSIONS, n) == stream}
    await Publisher(client, KEYS).publish_many([session_started("late")], lane="bulk")
    result = await replay(client, KEYS, "sessions")  # type: ignore[arg-type]
    assert set(result.positions) >= set(KEYS.live_streams(SESSIONS))
    views = await queries.sessions(client, KEYS)  # type: ignore[arg-type]
    assert {n: views[n].state for n in [*names, "late"]} == dict.fromkeys([*names, "late"], "live")
