"""The live projections role against a real Redis: what an operator reads back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis

from events import metrics
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from projections import queries
from projections.conversation_view import ConversationsModel, fold
from projections.fold import Folder
from projections.runner import flatten, run_projections
from projections.store import Conflict, ProjectionStore
from tests.projections import factory as f
from tests.support import eventually

KEY = "5511999:940740243"


@pytest.fixture
async def running(settings: Settings, redis: Redis) -> AsyncIterator[None]:
    stop = asyncio.Event()
    role = asyncio.create_task(run_projections(settings, redis, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(role, timeout=30)


async def test_a_conversation_story_is_folded_live(
    running: None, redis: Redis, keys: KeySpace,
) -> None:
    publisher = Publisher(redis, keys)
    cleared = f.db(KEY, 1, flow=None)
    await publisher.publish_many([f.db(KEY, 0), f.file_written(KEY, 0.5), cleared])

    async def flow_missing() -> bool:
        view = await queries.conversation(redis, keys, KEY)
        return view is not None and view.kinds == ("flow_missing",)

    await eventually(flow_missing, message="the cleared flow to show as flow_missing")
    view = await queries.conversation(redis, keys, KEY)
    assert view is not None and view.inconsistent_since == f.at(1)
    assert view.file_flow_id == "flow-a" and view.row is not None and view.row.bot_flow_id is None

    await publisher.publish_many([f.action(KEY, 2, "backfill_flow", cause=cleared.id),
                                  f.db(KEY, 2.5)])

    async def healed() -> bool:
        view = await queries.conversation(redis, keys, KEY)
        return view is not None and view.consistent and len(view.actions) == 1

    await eventually(healed, message="the backfill to make the conversation consistent")
    view = await queries.conversation(redis, keys, KEY)
    assert view is not None and view.inconsistent_since is None
    assert (view.actions[0].action, view.actions[0].cause_id) == ("backfill_flow", cleared.id)


async def test_gauges_count_inconsistencies_by_kind(
    running: None, redis: Redis, keys: KeySpace,
) -> None:
    others = [f"55110{i}:940740243" for i in range(3)]
    await Publisher(redis, keys).publish_many(
        [f.file_written(k, 0) for k in others] + [f.db(KEY, 0, status="closed")]
        + [f.rejudge(k, 31) for k in others])  # the files' settle window is over

    async def counted() -> bool:
        orphans = metrics.INCONSISTENCIES.labels("orphan_file")._value.get()
        closed = metrics.INCONSISTENCIES.labels("bot_fields_on_closed")._value.get()
        return bool(orphans == 3 and closed == 1)

    await eventually(counted, message="the inconsistency gauges")
    assert metrics.OLDEST_INCONSISTENCY_AGE.labels("orphan_file")._value.get() > 0


async def test_sessions_live_queues_and_parked(running: None, redis: Redis, keys: KeySpace) -> None:
    queue = keys.queue("940740243")
    await Publisher(redis, keys).publish_many([
        f.started("940740243", 0), f.expired("940740243", 30), f.queue_seen("940740243", 31, 9, queue),
        f.action("940740243", 32, "park_queue", after={"count": 9}), f.started("default", 33),
    ])

    async def parked() -> bool:
        views = await queries.sessions(redis, keys)
        return "default" in views and views["940740243"].parked == 9

    await eventually(parked, message="nine parked messages")
    views = await queries.sessions(redis, keys)
    lost = views["940740243"]
    assert (lost.state, lost.queue_length, lost.queue) == ("expired", 9, queue)
    assert views["default"].state == "live"


async def test_an_entry_is_applied_once_even_by_two_writers(redis: Redis, keys: KeySpace) -> None:
    model = ConversationsModel()
    await Publisher(redis, keys).publish_many(
        [f.db(KEY, 0), f.file_written(KEY, 1, flow="flow-b"), f.action(KEY, 2, "noted")])
    store = ProjectionStore(redis, keys, model.name)
    version = await store.ensure_version()
    first, second = Folder(store, model, version), Folder(store, model, version)
    await first.load()
    await second.load()
    entries = flatten(await redis.xread({keys.conversations_stream: "0-0", keys.audit_stream: "0-0"}))

    assert await first.apply(entries) == 3
    assert await first.apply(entries) == 0  # at or before the stored position: skipped
    with pytest.raises(Conflict):
        await second.apply(entries)  # a stale writer writes nothing
    assert await second.apply(entries) == 0  # reloaded: already applied

    view = await queries.conversation(redis, keys, KEY)
    assert view is not None and view.kinds == ("flow_mismatch",) and len(view.actions) == 1


async def test_an_item_stored_as_json_by_an_earlier_release_is_read_and_folded_on(
    running: None, redis: Redis, keys: KeySpace,
) -> None:
    store = ProjectionStore(redis, keys, "conversations")
    version = await store.ensure_version()
    older = msgspec.json.encode(fold(None, f.db(KEY, 0, status="closed")))
    await redis.hset(store.key(version, "items"), KEY, older)
    assert (await queries.conversation(redis, keys, KEY)) == fold(None, f.db(KEY, 0, status="closed"))

    await Publisher(redis, keys).publish(f.file_written(KEY, 1))

    async def folded_on() -> bool:
        view = await queries.conversation(redis, keys, KEY)
        return view is not None and view.file_present

    await eventually(folded_on, message="the file to be folded onto the JSON item")
    view = await queries.conversation(redis, keys, KEY)
    assert view is not None and view.kinds == ("bot_fields_on_closed",) and view.row is not None
    assert view.inconsistent_since == f.at(0)  # carried over from the JSON item
