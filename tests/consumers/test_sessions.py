"""The sessions group against a real Redis: park, restore, drop, report, dry run, retention.

Each test sets up the stores directly (a lease key with a TTL, messages pushed
to the queue), publishes the events that would wake the handler -- every one
of them twice, as an at-least-once stream may -- and watches what a user
would see: the queue, the parked list, and the audit stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from consumers.actions import SETTLED, Actions
from consumers.gateway_session_group import SessionsHandler, Timers, retention_member
from consumers.options import GroupOptions
from consumers.runtime import GroupConsumer
from consumers.stores.parked_queues import ParkedQueues
from events.contract import (
    ActionRecorded,
    EventBase,
    ParkedRetentionDue,
    QueueObserved,
    ReconcileRequested,
    SessionExpired,
    SessionStarted,
    SessionStopped,
    SourceResynced,
)
from events.gateway import GatewaySessions
from events.ids import new_event_id
from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from tests.support import eventually, group_caught_up, one_line_per_action, recorded

SESSION = "940740243"


def event(kind: type[EventBase], key: str, **fields: Any) -> EventBase:
    return kind(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway", key=key,
                **fields)


def queue_observed(keys: KeySpace, session: str) -> EventBase:
    return event(QueueObserved, session, queue=keys.queue(session))


async def publish_twice(redis: Redis, keys: KeySpace, *events: EventBase) -> None:
    """Publish the events, let the group handle them, then publish them again (a replay)."""
    for _ in range(2):
        await Publisher(redis, keys).publish_many(events)
        await drained(redis, keys)


class RecordingTimers:
    """Remembers the deadlines the handler keeps (the wheel itself is tested elsewhere)."""

    def __init__(self) -> None:
        self.due: dict[str, float] = {}

    async def schedule(self, member: str, due_unix: float, event: ParkedRetentionDue) -> None:
        assert event.deadline.timestamp() == due_unix
        self.due[member] = due_unix

    async def cancel(self, member: str, key: str) -> None:
        self.due.pop(member, None)


@contextlib.asynccontextmanager
async def sessions_group(redis: Redis, settings: Settings,
                         timers: Timers | None = None) -> AsyncIterator[None]:
    keys = settings.keys
    handler = SessionsHandler(settings=settings, redis=redis,
                              actions=Actions.for_settings(redis, settings), timers=timers)
    options = GroupOptions(group="sessions", streams=(keys.sessions_stream,),
                           deadletter_stream=keys.deadletter_stream, read_count=100,
                           block_ms=100, concurrency=4, shutdown_deadline_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(GroupConsumer(redis, options, handler).run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def drained(redis: Redis, keys: KeySpace) -> None:
    """Wait until the group has read and acked every entry of the sessions stream."""
    await eventually(lambda: group_caught_up(redis, keys.sessions_stream, "sessions"),
                     message="the sessions group to ack everything")


async def audits(redis: Redis, keys: KeySpace, action: str | None = None) -> list[ActionRecorded]:
    found = one_line_per_action(await recorded(redis, keys))
    return [e for e in found if action is None or e.action == action]


async def test_nine_orphaned_messages_are_parked_and_return_in_order_ahead_of_newer(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    queue = keys.queue(SESSION)
    messages = [f'{{"to":"5215500000{n}","text":"message {n}"}}'.encode() for n in range(9)]
    await redis.rpush(queue, *messages)
    store = ParkedQueues(redis, keys)
    async with sessions_group(redis, settings):
        expired = event(SessionExpired, SESSION)
        await publish_twice(redis, keys, expired, queue_observed(keys, SESSION))

        async def parked() -> bool:
            return await store.parked(SESSION) == messages and not await redis.exists(queue)
        await eventually(parked, message="the nine messages to be parked")

        await redis.set(keys.lease(SESSION), "gateway-1", ex=60)
        await redis.rpush(queue, b"pushed meanwhile")
        await publish_twice(redis, keys, event(SessionStarted, SESSION))

        async def restored() -> bool:
            return bool(await redis.lrange(queue, 0, -1) == [*messages, b"pushed meanwhile"])
        await eventually(restored, message="the nine messages back ahead of the newer one")
        await drained(redis, keys)

    assert not await redis.exists(keys.parked(SESSION), keys.parked_meta(SESSION))
    (park,) = await audits(redis, keys, "park_queue")
    assert (park.outcome, park.target, park.key) == ("done", queue, SESSION)
    assert park.before == {"queue": 9, "parked": 0} and park.after == {"queue": 0, "parked": 9}
    (restore,) = await audits(redis, keys, "restore_parked")
    assert restore.before == {"queue": 1, "parked": 9}
    assert restore.after == {"queue": 10, "parked": 0}


async def test_live_session_queue_is_left_alone(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    await redis.set(keys.lease(SESSION), "gateway-1", ex=60)
    await redis.rpush(keys.queue(SESSION), b"a", b"b")
    async with sessions_group(redis, settings):
        await publish_twice(redis, keys, queue_observed(keys, SESSION))
        await drained(redis, keys)
    assert await redis.lrange(keys.queue(SESSION), 0, -1) == [b"a", b"b"]
    assert await audits(redis, keys) == []


async def test_drop_policy_audits_every_message_content(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    messages = [b"hola", "cita confirmada \u2713".encode(), b"\xff\xfe"]
    await redis.rpush(keys.queue(SESSION), *messages)
    async with sessions_group(redis, replace(settings, orphan_queue_policy="drop")):
        await publish_twice(redis, keys, event(SessionStopped, SESSION))
        await drained(redis, keys)
    assert not await redis.exists(keys.queue(SESSION), keys.parked(SESSION))
    (drop,) = await audits(redis, keys, "drop_queue")
    assert drop.outcome == "done" and drop.target == keys.queue(SESSION)
    assert drop.before == {"queue": 3, "parked": 0, "dropped": 3, "messages": [
        "hola", "cita confirmada \u2713", {"base64": "//4="}]}
    assert drop.after == {"queue": 0}


async def test_report_policy_touches_nothing_and_reports_once(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    await redis.rpush(keys.queue(SESSION), b"a", b"b")
    async with sessions_group(redis, replace(settings, orphan_queue_policy="report")):
        await publish_twice(redis, keys, event(SessionExpired, SESSION),
                            queue_observed(keys, SESSION))
        await drained(redis, keys)
    assert await redis.lrange(keys.queue(SESSION), 0, -1) == [b"a", b"b"]
    assert not await redis.exists(keys.parked(SESSION))
    (report,) = await audits(redis, keys, "report_orphan_queue")
    assert report.outcome == "skipped" and "report" in report.reason
    assert report.before == {"queue": 2, "parked": 0}


async def test_dry_run_changes_nothing_and_audits_planned(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    await redis.rpush(keys.queue("returning"), b"old")
    await store.park("returning", now=time.time(), cause="earlier")
    await redis.set(keys.lease("returning"), "gateway-1", ex=60)
    await redis.rpush(keys.queue(SESSION), *[b"m"] * 9)
    timers = RecordingTimers()
    async with sessions_group(redis, replace(settings, dry_run=True), timers):
        await publish_twice(redis, keys, event(SessionExpired, SESSION),
                            event(SessionStarted, "returning"))
        await drained(redis, keys)
    assert await redis.llen(keys.queue(SESSION)) == 9
    assert not await redis.exists(keys.parked(SESSION))
    assert await store.parked("returning") == [b"old"]
    assert not await redis.exists(keys.queue("returning"))
    assert timers.due == {}
    planned = {(a.action, a.key, a.outcome, a.dry_run) for a in await audits(redis, keys)}
    assert planned == {("park_queue", SESSION, "planned", True),
                       ("restore_parked", "returning", "planned", True)}
    assert len(await audits(redis, keys)) == 2


async def test_parked_retention_drops_old_messages_audited(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    queue = keys.queue(SESSION)
    now = time.time()
    await redis.rpush(queue, b"old 1", b"old 2")
    await store.park(SESSION, now=now - 7200, cause="long ago")
    await redis.rpush(queue, b"young")
    await store.park(SESSION, now=now - 60, cause="recently")
    timers = RecordingTimers()
    deadline = datetime.now(UTC)
    due = event(ParkedRetentionDue, SESSION, deadline=deadline)
    async with sessions_group(redis, replace(settings, parked_retention_s=3600), timers):
        await publish_twice(redis, keys, due)
        await drained(redis, keys)
    assert await store.parked(SESSION) == [b"young"]
    (drop,) = await audits(redis, keys, "drop_parked")
    assert drop.before == {"queue": 0, "parked": 3, "dropped": 2, "messages": ["old 1", "old 2"]}
    assert drop.after == {"parked": 1} and drop.cause_id == due.id
    young_at = (await store.observe(SESSION)).batches[0].at
    assert abs(timers.due[retention_member(SESSION)] - (young_at + 3600)) < 0.01


async def test_parking_schedules_retention_and_restoring_cancels_it(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    timers = RecordingTimers()
    await redis.rpush(keys.queue(SESSION), b"m")
    request = ReconcileRequested(id=new_event_id(), occurred_at=datetime.now(UTC),
                                 source="operator", key=SESSION, scope="sessions")
    async with sessions_group(redis, settings, timers):
        await publish_twice(redis, keys, request)
        await drained(redis, keys)
        assert timers.due[retention_member(SESSION)] > time.time() + settings.parked_retention_s - 60
        await redis.set(keys.lease(SESSION), "gateway-1", ex=60)
        await publish_twice(redis, keys, event(SessionStarted, SESSION))
        await drained(redis, keys)
    assert timers.due == {}
    assert await redis.lrange(keys.queue(SESSION), 0, -1) == [b"m"]


async def test_an_invalid_session_name_is_dead_lettered(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    bad = QueueObserved(id=new_event_id(), occurred_at=datetime.now(UTC), source="queues",
                        key="no/slashes", queue="queue:no/slashes")
    async with sessions_group(redis, settings):
        await Publisher(redis, keys).publish(bad)

        async def dead() -> bool:
            return bool(await redis.xlen(keys.deadletter_stream))
        await eventually(dead, message="the bad entry in the dead-letter stream")


async def test_source_markers_are_not_taken_for_a_session(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    await redis.rpush(keys.queue("sessions"), b"m")
    marker = SourceResynced(id=new_event_id(), occurred_at=datetime.now(UTC), source="gateway",
                            key="sessions", reason="start", scope="sessions")
    async with sessions_group(redis, settings):
        await publish_twice(redis, keys, marker)
    assert await redis.lrange(keys.queue("sessions"), 0, -1) == [b"m"]
    assert await audits(redis, keys) == []


async def test_a_gateway_that_dies_between_its_restore_and_the_outcome_is_settled(
    redis: Redis, settings: Settings, keys: KeySpace
) -> None:
    """The handshake ran (the messages are back, the lease taken), then the gateway died
    before writing the outcome: its intent stays open until the sessions group, handling
    the session when its lease runs out, settles it from the stores (nothing is parked
    any more: done), once."""
    settings = replace(settings, claim_min_idle_s=0.5)  # how old an intent must be to settle
    messages = [f'{{"n":{n}}}'.encode() for n in range(9)]
    await redis.rpush(keys.queue(SESSION), *messages)
    assert await ParkedQueues(redis, keys).park(SESSION, now=time.time(), cause="c1") == 9
    gateway = GatewaySessions(redis, keys, gateway="gw-1", ttl_s=30)

    async def dies(_outcome: ActionRecorded) -> bool:
        raise ConnectionError("the gateway's process died here")

    gateway._outcomes.write = dies  # type: ignore[method-assign]  # the crash point
    with pytest.raises(ConnectionError):
        await gateway.start(SESSION)
    assert await redis.lrange(keys.queue(SESSION), 0, -1) == messages
    assert await redis.hlen(keys.open_actions(SESSION)) == 1
    async with sessions_group(redis, settings):
        await redis.delete(keys.lease(SESSION))  # its lease runs out
        await Publisher(redis, keys).publish(event(SessionExpired, SESSION))

        async def settled() -> bool:
            return await redis.hlen(keys.open_actions(SESSION)) == 0
        await eventually(settled, message="the gateway's intent settled")
        await drained(redis, keys)
    (restore,) = await audits(redis, keys, "restore_parked")  # one intent, one outcome
    assert (restore.outcome, restore.target) == ("done", keys.queue(SESSION))
    assert restore.reason.startswith(SETTLED) and restore.cause_type == "session.started"
