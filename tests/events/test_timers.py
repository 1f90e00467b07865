"""The timer wheel against real Redis: idempotent schedules, exactly-once firing, early wake-up."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from events import codec
from events.contract import OrphanGraceElapsed
from events.ids import new_event_id
from events.keys import KeySpace
from events.settings import Settings
from events.sources.due_timers import run_timers
from events.timer_wheel import TimerWheel
from tests.support import eventually

RECONCILER = Path(sys.executable).with_name("reconciler")


def start_role(role: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(RECONCILER), "run", "--role", role], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def grace_event(key: str) -> OrphanGraceElapsed:
    return OrphanGraceElapsed(id=new_event_id(), occurred_at=datetime.now(UTC), source="timers",
                              key=key, deadline=datetime.now(UTC))


async def stream_events(redis: Redis, keys: KeySpace) -> list[OrphanGraceElapsed]:
    entries = await redis.xrange(keys.conversations_stream)
    return [codec.decode(fields) for _, fields in entries]  # type: ignore[misc]


async def test_schedule_is_idempotent_per_member_and_cancel_forgets(
    redis: Redis, keys: KeySpace
) -> None:
    wheel = TimerWheel(redis, keys)
    due = time.time() + 3600
    await wheel.schedule("orphan:1:2", due, grace_event("1:2"))
    await wheel.schedule("orphan:1:2", due, grace_event("1:2"))
    await wheel.schedule("orphan:3:4", due + 5, grace_event("3:4"))
    assert await wheel.count() == 2
    assert abs((await wheel.next_due() or 0) - due) < 0.01
    assert await wheel.cancel("orphan:1:2", "1:2")
    assert not await wheel.cancel("orphan:1:2", "1:2")
    fired = await wheel.fire_due(now=due + 10)
    assert (fired.fired, fired.scheduled) == (1, 0)
    assert [e.key for e in await stream_events(redis, keys)] == ["3:4"]


async def test_only_due_deadlines_fire(redis: Redis, keys: KeySpace) -> None:
    wheel = TimerWheel(redis, keys)
    now = time.time()
    event = grace_event("5:6")
    await wheel.schedule("a", now - 1, event)
    await wheel.schedule("b", now + 3600, grace_event("7:8"))
    result = await wheel.fire_due(now=now)
    assert result.fired == 1 and result.scheduled == 1
    assert await stream_events(redis, keys) == [event]
    assert (await wheel.fire_due(now=now)).fired == 0


async def test_a_sleeping_loop_wakes_for_an_earlier_deadline(
    redis: Redis, keys: KeySpace, settings: Settings
) -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(run_timers(settings, redis, stop))
    try:
        async def listening() -> bool:  # subscribed, then it finds nothing and sleeps 30 s
            [(_, subscribers)] = await redis.pubsub_numsub(keys.deadlines_wake)
            return int(subscribers) >= 1
        await eventually(listening, message="the timer loop to listen for wake-ups")
        await TimerWheel(redis, keys).schedule("soon", time.time() + 0.2, grace_event("1:1"))

        async def fired() -> bool:
            return len(await stream_events(redis, keys)) == 1

        await eventually(fired, timeout=15, message="the deadline to fire before the 30 s sleep ends")
    finally:
        stop.set()
        await loop


async def test_a_deadline_fires_exactly_once_with_three_timer_processes(
    redis: Redis, keys: KeySpace, settings: Settings, redis_url: str, key_prefix: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": settings.database_url or "",
           "RECONCILER_KEY_PREFIX": key_prefix, "RECONCILER_QUEUE_PATTERN": keys.queue_pattern,
           "RECONCILER_LOG_LEVEL": "WARNING", "RECONCILER_METRICS_ADDR": "127.0.0.1:0"}
    loops = [start_role("timers", env) for _ in range(3)]
    try:
        wheel = TimerWheel(redis, keys)
        start = time.time() + 2
        events = [grace_event(f"{n}:1") for n in range(300)]
        for n, event in enumerate(events):
            await wheel.schedule(f"m{n}", start + (n % 30) * 0.05, event)

        async def all_fired() -> bool:
            return await wheel.count() == 0 and await redis.xlen(keys.conversations_stream) >= 300

        await eventually(all_fired, timeout=60, message="300 deadlines to fire")
        await asyncio.sleep(1.0)  # a quiet second: a duplicate would show up in it (absence needs a wait)
        published = await stream_events(redis, keys)
        assert sorted(e.id for e in published) == sorted(e.id for e in events)
        assert all(loop.poll() is None for loop in loops)
    finally:
        for loop in loops:
            loop.send_signal(signal.SIGTERM)
        for loop in loops:
            loop.wait(timeout=30)
