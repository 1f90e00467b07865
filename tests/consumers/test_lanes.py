"""The bulk lane against a real Redis and a real folder: a live change is handled while a
bulk backlog drains; groups, gauges, gaps and projections know the lane."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from redis.asyncio import Redis

from consumers.consumers_role import _options
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer, running_groups
from events.contract import ActionRecorded
from events.ids import new_event_id
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from events.sources.folder import run_watcher
from ops.group_metrics import GroupCollector
from projections.fold import id_tuple
from projections.models import model as model_named
from projections.runner import read_after
from tests.consumers.test_runtime import Running
from tests.support import eventually, request

BACKLOG = 50_000
STILL_UNREAD = 10_000
"""The live key must be handled while at least this many bulk entries are not yet handled."""


def laned(keys: KeySpace) -> GroupOptions:
    live, bulk = keys.lanes("conversations")
    return GroupOptions(group="lanes", streams=(live, bulk), bulk_streams=(bulk,),
                        deadletter_stream=keys.deadletter_stream, concurrency=16,
                        read_count=500, bulk_max_buffered=1000)


async def test_live_change_is_handled_while_a_bulk_backlog_drains(
        redis: Redis, keys: KeySpace) -> None:
    publisher = Publisher(redis, keys)
    await publisher.publish_many([request(f"bulk-{n}") for n in range(BACKLOG)], lane="bulk",
                                 batch_size=5000)
    assert await redis.xlen(keys.bulk_stream("conversations")) == BACKLOG
    handled: set[str] = set()
    bulk_done_when_live: list[int] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        await asyncio.sleep(0.001)  # a handler that takes real time
        if key == "live-1":
            bulk_done_when_live.append(len(handled))
        handled.add(key)

    async with Running(GroupConsumer(redis, laned(keys), handler)):
        await eventually(lambda: _at_least(handled, 1000), message="the backlog to start draining")
        await publisher.publish(request("live-1"))
        await eventually(lambda: _at_least(bulk_done_when_live, 1), message="the live change")
        assert BACKLOG - bulk_done_when_live[0] > STILL_UNREAD, bulk_done_when_live
        await eventually(lambda: _at_least(handled, BACKLOG + 1), timeout=300,
                         message="the whole backlog to be handled")
    assert handled == {f"bulk-{n}" for n in range(BACKLOG)} | {"live-1"}


async def test_while_a_live_key_is_handled_only_a_few_bulk_keys_start_and_the_lane_moves(
        redis: Redis, keys: KeySpace) -> None:
    publisher = Publisher(redis, keys)
    await publisher.publish_many([request(f"bulk-{n}") for n in range(20_000)], lane="bulk",
                                 batch_size=5000)
    options = replace(laned(keys), bulk_while_live=2)
    bulk_running: set[str] = set()
    during_live: list[str] = []
    """Bulk keys whose handling started while the live key's ran."""
    most_at_once, live_running, live_done = 0, False, asyncio.Event()

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        nonlocal most_at_once, live_running
        if key == "live-1":
            live_running = True
            # stay in the handler until the bulk lane has shown that it still moves
            await eventually(lambda: _at_least(during_live, 6), message="bulk keys to start")
            live_running = False
            live_done.set()
            return
        bulk_running.add(key)
        if live_running:
            during_live.append(key)
            most_at_once = max(most_at_once, len(bulk_running.intersection(during_live)))
        await asyncio.sleep(0.002)
        bulk_running.discard(key)

    async with Running(GroupConsumer(redis, options, handler)):
        await eventually(lambda: _at_least(bulk_running, 10), message="bulk keys in handlers")
        await publisher.publish(request("live-1"))
        await asyncio.wait_for(live_done.wait(), timeout=60)
    assert 1 <= most_at_once <= options.bulk_while_live, most_at_once


async def test_a_live_file_change_goes_ahead_of_the_folder_snapshot(
        redis: Redis, keys: KeySpace, settings: Settings) -> None:
    files = 20_000
    for n in range(files):
        (settings.sessions_dir / f"whatsapp_55{n:06d}_1.json").write_text('{"flowId": "f"}')
    handled: set[str] = set()
    bulk_done_when_live: list[int] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        await asyncio.sleep(0.001)
        if key == "5599:1":
            bulk_done_when_live.append(len(handled))
        handled.add(key)

    stop = asyncio.Event()
    watcher = asyncio.create_task(run_watcher(settings, redis, stop))
    try:
        await eventually(lambda: _snapshot_published(redis, keys), message="the folder snapshot")
        assert await redis.xlen(keys.conversations_stream) == 0  # all of it on the bulk lane
        async with Running(GroupConsumer(redis, laned(keys), handler)):
            await eventually(lambda: _at_least(handled, 1000), message="the snapshot draining")
            (settings.sessions_dir / "whatsapp_5599_1.json").write_text('{"flowId": "live"}')
            await eventually(lambda: _at_least(bulk_done_when_live, 1), message="the live file")
            assert files - bulk_done_when_live[0] > 5000, bulk_done_when_live
            await eventually(lambda: _at_least(handled, files + 1), timeout=300,
                             message="the whole snapshot to be handled")
    finally:
        stop.set()
        await asyncio.wait_for(watcher, 30)


async def _snapshot_published(redis: Redis, keys: KeySpace) -> bool:
    last = await redis.xrevrange(keys.bulk_stream("conversations"), count=1)
    return bool(last) and b"snapshot_finished" in last[0][1].get(b"type", b"")


async def test_bulk_lane_is_read_when_live_streams_are_idle_and_everywhere_known(
        redis: Redis, keys: KeySpace, settings: Settings) -> None:
    publisher = Publisher(redis, keys)
    await publisher.publish(request("a"), lane="bulk")
    audit = ActionRecorded(id=new_event_id(), occurred_at=request("x").occurred_at,
                           source="reconciler", key="a", action="close", target="a",
                           outcome="done")
    await publisher.publish(audit, lane="bulk")  # a stream without a bulk lane: its own
    assert await redis.xlen(keys.audit_stream) == 1
    seen: list[str] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        seen.append(deliveries[0].stream)

    options = _options(settings, "conversations")
    assert options.streams == keys.lanes("conversations")
    async with Running(GroupConsumer(redis, options, handler)):
        await eventually(lambda: _at_least(seen, 1), message="the bulk entry")
        assert running_groups()["conversations"] == keys.lanes("conversations")
        states = {(s.stream, s.group) for s in await GroupCollector(redis, keys).collect()}
        assert ("conversations:bulk", "conversations") in states
    assert seen == [keys.bulk_stream("conversations")]


async def test_entries_trimmed_from_the_bulk_lane_are_reported_as_a_gap(
        redis: Redis, keys: KeySpace) -> None:
    publisher, gaps = Publisher(redis, keys), []
    options = replace(laned(keys), gaps_key=keys.stream_gaps)
    handled: list[str] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        handled.append(key)

    await publisher.publish_many([request(f"a{n}") for n in range(10)], lane="bulk")
    async with Running(GroupConsumer(redis, options, handler, on_gap=gaps.append)):
        await eventually(lambda: _at_least(handled, 10), message="the first entries")
    await publisher.publish_many([request(f"b{n}") for n in range(10)], lane="bulk")
    await redis.xtrim(keys.bulk_stream("conversations"), maxlen=0)  # by other hands, unread
    async with Running(GroupConsumer(redis, options, handler, on_gap=gaps.append)):
        await eventually(lambda: _at_least(gaps, 1), message="the gap on the bulk lane")
    assert gaps[0].startswith("conversations:bulk: entries before"), gaps


async def test_projection_reads_both_lanes_in_entry_id_order(redis: Redis, keys: KeySpace) -> None:
    publisher = Publisher(redis, keys)
    ids = []
    for n in range(7):  # alternate lanes, so each read of 2 per stream must be cut and merged
        ids.append(await publisher.publish(request(f"k{n}"), lane="bulk" if n % 3 else "live"))
    model = model_named("conversations")
    positions: dict[str, str] = {}
    order: list[str] = []
    while entries := await read_after(redis, keys, model, positions, count=2):
        for stream, entry_id, _ in entries:
            positions[stream] = entry_id.decode()
            order.append(entry_id.decode())
    # entry-id order across the lanes (two entries of one millisecond on different lanes
    # tie: their order is the read's, as it is for any two streams)
    assert [id_tuple(i) for i in order] == sorted(id_tuple(i) for i in ids)
    assert sorted(order) == sorted(ids)


async def _at_least(items: set[str] | list[int] | list[str], n: int) -> bool:
    return len(items) >= n
