"""The sessions source against real Redis: expired leases and discovered queues."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from events import codec
from events.contract import Event, QueueObserved, SessionExpired, SourceResynced
from events.gateway import GatewaySessions
from events.keys import KeySpace
from events.settings import Settings
from events.sources import gateway_leases as sessions_module
from events.sources.gateway_leases import SessionsSource, merged_flags, run_sessions_source
from ops.embedded import start_redis
from tests.support import eventually, lane_entries


async def session_events(redis: Any, keys: KeySpace) -> list[Event]:
    return [codec.decode(fields) for _, fields in await lane_entries(redis, keys, "sessions")]


def of_type(events: list[Event], kind: type[Any], key: str | None = None) -> list[Any]:
    return [e for e in events if isinstance(e, kind) and (key is None or e.key == key)]


@contextlib.asynccontextmanager
async def running(source: SessionsSource | Settings, redis: Any = None
                  ) -> AsyncIterator[asyncio.Event]:
    """Run one source until the block ends; given settings, run the whole (guarded) role."""
    stop = asyncio.Event()
    task = asyncio.create_task(source.run(stop) if isinstance(source, SessionsSource)
                               else run_sessions_source(source, redis, stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def wait_for(redis: Any, keys: KeySpace, kind: type[Any], key: str | None = None,
                   count: int = 1) -> list[Any]:
    found: list[Any] = []

    async def check() -> bool:
        found[:] = of_type(await session_events(redis, keys), kind, key)
        return len(found) >= count

    await eventually(check, message=f"{count} x {kind.__name__} for {key}")
    return found


async def test_a_lease_left_to_expire_gives_a_session_expired_event(
    redis: Any, keys: KeySpace, settings: Settings
) -> None:
    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced)
        await GatewaySessions(redis, keys, ttl_s=1).start("940740243")
        expired = await wait_for(redis, keys, SessionExpired, "940740243")
    assert expired[0].source == "gateway"
    assert await redis.exists(keys.lease("940740243")) == 0


async def test_a_lapsed_lease_is_reported_among_many_keys_that_carry_a_ttl(
    redis: Any, keys: KeySpace, settings: Settings, key_prefix: str
) -> None:
    """Redis's own expiry cycle samples about 20 keys with a TTL per tenth of a second: among
    100,000 of them (an application's cache, our own first-seen keys) it would find the lapsed
    lease after about four minutes on average; the source reads it at its deadline instead."""
    for start in range(0, 100_000, 5_000):
        pipe = redis.pipeline(transaction=False)
        for n in range(start, start + 5_000):
            pipe.set(f"{key_prefix}cache:{n}", b"x", ex=86_400)
        await pipe.execute()
    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced)
        await GatewaySessions(redis, keys, ttl_s=1).start("940740243")  # after the scan
        await GatewaySessions(redis, keys, ttl_s=60).start("alive")
        expired = await wait_for(redis, keys, SessionExpired, "940740243")
    assert [e.key for e in expired] == ["940740243"]
    assert await redis.exists(keys.lease("alive")) == 1


async def test_a_lease_that_expired_while_the_source_was_down_is_reported_on_start(
    redis: Any, keys: KeySpace, settings: Settings
) -> None:
    await GatewaySessions(redis, keys, ttl_s=60).start("alive")
    await GatewaySessions(redis, keys, ttl_s=60).start("crashed")
    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced)
    await redis.delete(keys.lease("crashed"))  # ran out while nobody watched

    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced, count=2)
    events = await session_events(redis, keys)
    assert [e.key for e in of_type(events, SessionExpired)] == ["crashed"]


async def test_a_push_to_the_queue_of_an_unknown_session_gives_a_queue_event(
    redis: Any, keys: KeySpace, settings: Settings
) -> None:
    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced)
        await redis.rpush(keys.queue("ghost"), b"hello")
        observed = await wait_for(redis, keys, QueueObserved, "ghost")
    assert (observed[0].queue, observed[0].length) == (keys.queue("ghost"), 1)


async def test_queues_existing_before_start_are_found_by_the_scan(
    redis: Any, keys: KeySpace, settings: Settings
) -> None:
    for name, count in (("a", 1), ("b", 3)):
        await redis.rpush(keys.queue(name), *[b"m"] * count)
    await redis.set(keys.queue("not-a-list"), b"x")  # not a list: not a queue
    await redis.rpush(keys.queue("drained"), b"m")
    await redis.lpop(keys.queue("drained"))  # empty lists do not exist

    async with running(SessionsSource(settings, redis)):
        events = await wait_for(redis, keys, SourceResynced)
    events = await session_events(redis, keys)
    marker = next(i for i, e in enumerate(events) if isinstance(e, SourceResynced))
    found = {e.key: e.length for e in of_type(events[:marker], QueueObserved)}
    assert found == {"a": 1, "b": 3}, "the scan comes before the resync marker"


async def test_a_burst_of_pushes_is_coalesced(
    redis: Any, keys: KeySpace, settings: Settings
) -> None:
    async with running(SessionsSource(settings, redis)):
        await wait_for(redis, keys, SourceResynced)
        pipe = redis.pipeline(transaction=False)
        for i in range(10_000):
            pipe.rpush(keys.queue("busy"), str(i).encode())
        await pipe.execute()

        async def last_length_is_full() -> bool:
            seen = of_type(await session_events(redis, keys), QueueObserved, "busy")
            return bool(seen) and seen[-1].length == 10_000

        await eventually(last_length_is_full, message="an event with the whole queue")
    observed = of_type(await session_events(redis, keys), QueueObserved, "busy")
    assert len(observed) < 500, f"{len(observed)} events for 10,000 pushes"


def test_the_notification_flags_are_added_to_what_is_already_set() -> None:
    assert merged_flags("") == "Kgxl"
    assert merged_flags("Ex") == "ExKgl"
    assert merged_flags("AKE") == "AKE"
    assert merged_flags("xlK") == "xlKg"


@pytest.fixture
async def config_disabled_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    server = start_redis(tmp_path / "redis", extra=["--rename-command", "CONFIG", ""])
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def test_without_config_it_warns_once_and_relies_on_the_scans(
    config_disabled_redis: Any, keys: KeySpace, settings: Settings,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    redis = config_disabled_redis
    monkeypatch.setattr(sessions_module, "_warned", set())
    await redis.rpush(keys.queue("before"), b"m")
    source = SessionsSource(replace(settings, rescan_interval_s=0.5), redis)
    with caplog.at_level(logging.WARNING, logger="events.sources.gateway_leases"):
        async with running(source):
            await wait_for(redis, keys, QueueObserved, "before")
            await redis.rpush(keys.queue("later"), b"m")
            await wait_for(redis, keys, QueueObserved, "later")  # found by the rescan
        async with running(source):  # a restart does not say it again
            await wait_for(redis, keys, SourceResynced, count=2)
    warnings = [r for r in caplog.records if "notify-keyspace-events" in r.getMessage()]
    assert len(warnings) == 1
    assert "rescan every 0.5s" in warnings[0].getMessage()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[Redis]:
    server = start_redis(tmp_path / "redis")
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def test_after_a_reconnect_it_resyncs_and_keeps_watching(
    private_redis: Any, keys: KeySpace, settings: Settings
) -> None:
    redis = private_redis
    async with running(settings, redis):
        await wait_for(redis, keys, SourceResynced)
        await redis.rpush(keys.queue("while-down"), b"m")  # seen by the resync at the latest
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        markers = await wait_for(redis, keys, SourceResynced, count=2)
        await GatewaySessions(redis, keys, ttl_s=1).start("after")
        await wait_for(redis, keys, SessionExpired, "after")
    assert markers[1].reason in ("reconnect", "restart")
    assert of_type(await session_events(redis, keys), QueueObserved, "while-down")


async def test_a_lease_under_the_name_of_an_earlier_release_is_reported_once(
    redis: Any, keys: KeySpace, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await redis.set(f"{keys.prefix}lease:old-gateway", "gw", ex=60)
    source = SessionsSource(settings, redis)
    with caplog.at_level(logging.WARNING, logger="events.sources.gateway_leases"):
        await source.scan()
        await source.scan()
    warnings = [r.getMessage() for r in caplog.records if "earlier release" in r.getMessage()]
    assert len(warnings) == 1
    assert "session old-gateway counts as not live" in warnings[0]
    assert keys.lease("old-gateway") in warnings[0]
