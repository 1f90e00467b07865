"""The table listing against real PostgreSQL and Redis: markers, keys, period, one lister."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from events import codec
from events.contract import EventBase, ReconcileRequested, SnapshotFinished, SnapshotStarted
from events.publisher import Publisher
from events.settings import Settings
from events.sources.table_listing import serve_listing
from tests.support import create_conversations_table, eventually, lane_entries


async def published(redis: Redis, settings: Settings) -> list[EventBase]:
    return [codec.decode(f) for _, f in await lane_entries(redis, settings.keys, "conversations")]


async def stage(pg: Any, settings: Settings) -> None:
    await create_conversations_table(pg, settings.table)
    await pg.executemany(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id)"
        " VALUES ($1, 'c', $2, $3, $4)",
        [("1", "closed", None, None), ("2", "closed", "bot", "f"), ("2", "active", "bot", "f"),
         ("3", "active", "agent-1", None), ("4", "closed", None, None)])


async def test_listing_publishes_the_keys_that_can_matter_between_markers_on_a_period(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await stage(pg, settings)
    settings = replace(settings, db_listing_interval_s=0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_listing(settings, redis, Publisher(redis, settings.keys), stop))
    try:
        async def listed_twice() -> bool:
            return sum(isinstance(e, SnapshotFinished) for e in await published(redis, settings)) >= 2
        await eventually(listed_twice, message="a first listing and a periodic one")
    finally:
        stop.set()
        await task
    events = await published(redis, settings)
    first = events[: next(i for i, e in enumerate(events) if isinstance(e, SnapshotFinished)) + 1]
    assert isinstance(first[0], SnapshotStarted)
    keys = sorted(e.key for e in first if isinstance(e, ReconcileRequested))
    assert keys == ["2:c", "3:c"], "clean closed rows are not listed; a key once per page"
    finished = first[-1]
    assert isinstance(finished, SnapshotFinished) and finished.items == 2


async def test_two_listers_at_once_list_the_table_once(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await stage(pg, settings)
    stop = asyncio.Event()
    publisher = Publisher(redis, settings.keys)
    tasks = [asyncio.create_task(serve_listing(settings, redis, publisher, stop)) for _ in range(2)]
    try:
        async def listed() -> bool:
            return any(isinstance(e, SnapshotFinished) for e in await published(redis, settings))
        await eventually(listed, message="the first start's listing")
        state = settings.keys.source_state(f"listing:{settings.table}")
        assert await redis.hget(state, "listed_at") is not None
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    starts = [e for e in await published(redis, settings) if isinstance(e, SnapshotStarted)]
    assert len(starts) == 1
