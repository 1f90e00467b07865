"""A paused key is observed and reported but never acted on; its pause ends by itself.

The consumers and timers roles run in this process against real PostgreSQL,
Redis and a real folder; pauses are made with the CLI, as an operator does.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from consumers.stores.pauses import PauseStore
from events.contract import ActionRecorded, QueueObserved
from events.ids import new_event_id
from events.publisher import Publisher
from events.settings import Settings
from tests.consumers.test_conversations import (
    CHANNEL,
    audit,
    closed_event,
    reacting,
    write_file,
)
from tests.ops.cli_support import cli
from tests.support import create_conversations_table, eventually, recorded, request

SESSION = "940740243"


def outcomes(entries: list[ActionRecorded], key: str) -> list[tuple[str, str, str]]:
    """(action, outcome, reason) of ``key``'s entries, intents left out."""
    return [(a.action, a.outcome, a.reason) for a in entries
            if a.key == key and a.outcome != "intent"]


async def closed_with_stale_file(pg: Any, settings: Settings, phone: str,
                                 ) -> tuple[Settings, str, Any]:
    """A new table where ``phone``'s conversation is closed and its file was left behind
    long ago; the settings (no grace), the conversation's key and the file's path."""
    settings = replace(settings, grace_s=0.0)
    await create_conversations_table(pg, settings.table)
    await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to)"
                     " VALUES ($1, $2, 'closed', NULL)", phone, CHANNEL)
    path = write_file(settings, phone, "flow-a")
    left = time.time() - 3600  # left behind long ago: outside the settle window
    os.utime(path, (left, left))
    return settings, f"{phone}:{CHANNEL}", path


async def test_a_paused_conversation_is_reported_not_touched_until_the_pause_ends(
        redis: Redis, pg: Any, settings: Settings) -> None:
    phone = "5215550301"
    settings, key, path = await closed_with_stale_file(pg, settings, phone)
    code, _, err = await cli(settings, "pause", key, "--until", "4s", "--reason", "looking")
    assert code == 0, err
    async with reacting(settings, redis):
        await Publisher(redis, settings.keys).publish(closed_event(key, phone))

        async def skipped() -> bool:  # another action may be between intent and outcome
            return ("quarantine_file", "skipped", "paused") in outcomes(
                await audit(redis, settings, allow_open=True), key)

        await eventually(skipped, timeout=60, message="the quarantine skipped as paused")
        assert path.exists()

        async def quarantined_after_the_pause() -> bool:  # the outcome, not the file: it is last
            return ("quarantine_file", "done", "closed") in outcomes(
                await audit(redis, settings, allow_open=True), key)

        await eventually(quarantined_after_the_pause, timeout=60,
                         message="the file quarantined once the pause ended")
        assert not path.exists()
    assert ("pause", "done", "looking") in outcomes(await audit(redis, settings), key)
    done = await outcomes_in_stream_order(redis, settings, key)
    assert done.index(("quarantine_file", "skipped", "paused")) < done.index(
        ("pause_expired", "done", "looking")) < done.index(("quarantine_file", "done", "closed"))
    assert await PauseStore(redis, settings.keys).all() == []


async def outcomes_in_stream_order(redis: Redis, settings: Settings, key: str,
                                   ) -> list[tuple[str, str, str]]:
    """``key``'s outcomes in the order they were written, as ``inspect`` shows them.

    Not :func:`audit`'s order (by intent): the end of a pause recorded by the gate of
    the action it held back is written between that action's intent and its outcome.
    """
    return outcomes(await recorded(redis, settings.keys), key)


async def test_a_pause_past_its_end_is_recorded_ended_before_the_action_it_held_back(
        redis: Redis, pg: Any, settings: Settings) -> None:
    # The timer event that ends a pause can come late (a busy timers role): the next
    # action on the key finds the pause past its end, and its gate records the end first.
    phone = "5215550303"
    settings, key, path = await closed_with_stale_file(pg, settings, phone)
    until = time.time() + 0.5  # no timer scheduled: only the gate can end it
    await PauseStore(redis, settings.keys).pause(key, reason="looking", by="test", until=until)

    async def ended() -> bool:
        return time.time() > until

    await eventually(ended, timeout=10, message="the pause past its end")
    async with reacting(settings, redis):
        await Publisher(redis, settings.keys).publish(closed_event(key, phone))

        async def quarantined() -> bool:
            return ("quarantine_file", "done", "closed") in outcomes(
                await audit(redis, settings, allow_open=True), key)

        await eventually(quarantined, timeout=60, message="the file quarantined")
    assert not path.exists()
    assert await outcomes_in_stream_order(redis, settings, key) == [
        ("pause_expired", "done", "looking"), ("quarantine_file", "done", "closed")]
    assert await PauseStore(redis, settings.keys).all() == []


async def test_a_pause_is_kept_across_a_restart_and_resume_acts_at_once(
        redis: Redis, pg: Any, settings: Settings) -> None:
    phone = "5215550302"
    settings, key, path = await closed_with_stale_file(pg, settings, phone)
    code, _, err = await cli(settings, "pause", key)
    assert code == 0, err
    for _ in range(2):  # a restart of every role in between
        async with reacting(settings, redis):
            cause = request(key)
            await Publisher(redis, settings.keys).publish(cause)

            async def skipped_for(cause_id: str = cause.id) -> bool:
                return any(a.key == key and a.outcome == "skipped" and a.cause_id == cause_id
                           for a in await audit(redis, settings, allow_open=True))

            await eventually(skipped_for, timeout=60, message="the action skipped while paused")
        assert path.exists()
    async with reacting(settings, redis):
        code, _, err = await cli(settings, "resume", key)
        assert code == 0, err

        async def moved() -> bool:
            return not path.exists()

        await eventually(moved, timeout=60, message="the file quarantined after resume")


async def test_a_paused_session_keeps_its_queue(
        redis: Redis, pg: Any, settings: Settings) -> None:
    await create_conversations_table(pg, settings.table)
    keys = settings.keys
    await redis.rpush(keys.queue(SESSION), b"m1", b"m2")
    code, _, err = await cli(settings, "pause", SESSION, "--reason", "gateway upgrade")
    assert code == 0, err
    observed = QueueObserved(id=new_event_id(), occurred_at=_now(), source="queues", key=SESSION,
                             queue=keys.queue(SESSION), length=2)
    async with reacting(settings, redis):
        await Publisher(redis, keys).publish(observed)

        async def skipped() -> bool:
            return ("park_queue", "skipped", "paused") in outcomes(
                await audit(redis, settings, allow_open=True), SESSION)

        await eventually(skipped, timeout=60, message="the park skipped as paused")
        assert await redis.lrange(keys.queue(SESSION), 0, -1) == [b"m1", b"m2"]
        code, _, err = await cli(settings, "resume", SESSION)
        assert code == 0, err

        async def parked() -> bool:
            return not await redis.exists(keys.queue(SESSION))

        await eventually(parked, timeout=60, message="the queue parked after resume")
    assert await redis.lrange(keys.parked(SESSION), 0, -1) == [b"m1", b"m2"]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time(), UTC)
