"""Parked and quarantine gauges: counted from the stores by one process, off the health path."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from consumers.stores.parked_queues import ParkedQueues
from events.gateway import GatewaySessions
from events.keys import KeySpace
from events.loops import HEARTBEATS
from events.settings import Settings
from ops.health import operations
from ops.store_gauges import GAUGE_HEARTBEATS, LOOP_NAME, StoreGauges
from tests.ops.test_health import get
from tests.support import eventually

PARKED_SESSIONS = 100_000


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_parked_and_quarantined_gauges_follow_the_stores(
    redis: Redis, keys: KeySpace, tmp_path: Path
) -> None:
    await redis.rpush(keys.parked("940740243"), *[f"m{n}" for n in range(9)])
    await redis.rpush(keys.parked("default"), "m")
    (tmp_path / "whatsapp_1_2.json.0001").write_text("{}")
    (tmp_path / "whatsapp_1_2.json.0001~record.json").write_text("{}")
    gauges = StoreGauges(redis, keys, quarantine_dir=tmp_path)
    await gauges.collect()
    assert (gauge("reconciler_parked_messages"), gauge("reconciler_parked_sessions")) == (10, 2)
    assert gauge("reconciler_quarantined_files") == 1
    assert abs(gauge("reconciler_parked_counted_timestamp_seconds") - time.time()) < 60  # type: ignore[operator]
    await redis.delete(keys.parked("940740243"))
    await gauges.collect(force=True)
    assert (gauge("reconciler_parked_messages"), gauge("reconciler_parked_sessions")) == (1, 1)


async def test_the_gauges_are_right_after_park_handshake_restore_and_retention(
    redis: Redis, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    gauges = StoreGauges(redis, keys)

    async def parked() -> tuple[int, int]:
        counted = await gauges.collect(force=True)
        assert (gauge("reconciler_parked_messages"), gauge("reconciler_parked_sessions")) == (
            counted.messages, counted.sessions)
        return counted.messages, counted.sessions

    now = time.time()
    await redis.rpush(keys.queue("old"), "o1", "o2", "o3")
    await store.park("old", now=now - 3600, cause="park")
    await redis.rpush(keys.queue("back"), "b1", "b2")
    await store.park("back", now=now, cause="park")
    assert await parked() == (5, 2)
    await GatewaySessions(redis, keys, ttl_s=30).start("back")  # the start handshake restores
    assert await parked() == (3, 1)
    await redis.rpush(keys.queue("later"), "l1")
    await store.park("later", now=now, cause="park")
    assert await parked() == (4, 2)
    batches, items = await store.take_expired("old", cutoff=now - 60)  # retention drops
    assert await parked() == (1, 1)
    await store.put_back_parked("old", batches, items)  # a drop undone (its audit failed)
    assert await parked() == (4, 2)
    await store.take_expired("old", cutoff=now - 60)
    await store.restore("later")  # the sessions group's restore
    assert await parked() == (0, 0)


async def test_one_process_counts_per_interval_and_every_process_shows_its_count(
    redis: Redis, keys: KeySpace
) -> None:
    await redis.rpush(keys.parked("a"), "m1", "m2")
    first, second = StoreGauges(redis, keys, interval_s=600), StoreGauges(redis, keys, interval_s=600)
    assert (await first.collect()).messages == 2
    await redis.rpush(keys.parked("b"), "m3")
    shown = await second.collect()  # the lock is held: it shows the stored count, counts nothing
    assert (shown.messages, shown.sessions) == (2, 1)
    assert gauge("reconciler_parked_messages") == 2


async def build_parked_sessions(redis: Redis, keys: KeySpace, count: int) -> None:
    for start in range(0, count, 10_000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, min(start + 10_000, count)):
            pipe.rpush(keys.parked(f"s{n}"), b"message")
        await pipe.execute()


async def test_healthz_answers_at_once_while_100000_parked_sessions_are_counted(
    redis: Redis, keys: KeySpace, settings: Settings
) -> None:
    await build_parked_sessions(redis, keys, PARKED_SESSIONS)
    latencies: list[float] = []
    async with operations(replace(settings, metrics_addr="127.0.0.1:0"), redis) as server:
        address = f"{server.host}:{server.port}"

        async def counted() -> bool:
            started = time.monotonic()
            status, _, body = await asyncio.wait_for(get(address, "/healthz"), timeout=10.0)
            latencies.append(time.monotonic() - started)
            assert status == 200, body
            return gauge("reconciler_parked_sessions") == PARKED_SESSIONS

        await eventually(counted, timeout=300, message="the 100,000 parked sessions counted")
        assert LOOP_NAME in GAUGE_HEARTBEATS.report()
        assert LOOP_NAME not in HEARTBEATS.report(), "the count is not on the /healthz path"
    assert gauge("reconciler_parked_messages") == PARKED_SESSIONS
    print(f"/healthz probes: {len(latencies)}, slowest {max(latencies) * 1000:.1f} ms")
