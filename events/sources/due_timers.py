"""The ``timers`` role: fire due deadlines of the timer wheel.

The loop subscribes to the wheel's wake-up channel first, then fires what is
due and sleeps until the earliest remaining deadline -- or until a schedule
announces an earlier one.  Firing is one atomic script (see
:mod:`events.timer_wheel`), so any number of these loops can run side by side and
each deadline still fires once.  The sleep is capped (``MAX_SLEEP_S``) so a
wake-up lost to a clock jump is made up for; a lost connection fails the loop,
which :func:`events.loops.guarded` restarts, re-subscribing and firing again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from events import metrics, wiring
from events.grants import missing_redis_rights, wait_until_granted
from events.loops import HEARTBEATS, spawn
from events.settings import Settings
from events.subscriber import subscriber
from events.timer_wheel import TimerWheel

log = logging.getLogger(__name__)

LOOP_NAME = "timers"
MAX_SLEEP_S = 30.0
"""Longest sleep between two looks at the wheel, whatever the earliest deadline."""
MIN_SLEEP_S = 0.001


async def run_timers(settings: Settings, redis: Any, stop: asyncio.Event) -> None:
    """Role ``timers``: fire deadlines until ``stop`` is set."""
    wheel = wiring.timer_wheel(settings, redis)
    if not await wait_until_granted(lambda: missing_redis_rights(redis, settings.keys),
                                    role="timers", stop=stop):
        return
    task = spawn(LOOP_NAME, lambda: timer_loop(redis, wheel, stop, url=settings.redis_url),
                 stall_after_s=MAX_SLEEP_S * 3, stop=stop)
    await stop.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=MAX_SLEEP_S / 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def timer_loop(redis: Any, wheel: TimerWheel, stop: asyncio.Event, *,
                     url: str | None = None) -> None:
    """Fire due deadlines, then sleep until the next one or a wake-up, until ``stop``
    (on a cluster the wake-ups are heard through the node ``url`` names)."""
    async with subscriber(redis, url) as node:
        pubsub = node.pubsub()
        await pubsub.subscribe(wheel.wake_channel)
        try:
            while not stop.is_set():
                HEARTBEATS.beat(LOOP_NAME)
                next_due = await fire_all_due(wheel)
                sleep = MAX_SLEEP_S if next_due is None else next_due - time.time()
                sleep = min(MAX_SLEEP_S, max(MIN_SLEEP_S, sleep))
                await _wait_for_wake(pubsub, stop, sleep)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def fire_all_due(wheel: TimerWheel) -> float | None:
    """Fire every deadline due now (in batches); returns the earliest remaining one."""
    while True:
        result = await wheel.fire_due()
        metrics.TIMERS_SCHEDULED.set(result.scheduled)
        metrics.NEXT_DEADLINE.set(result.next_due or 0)
        if result.fired:
            metrics.SOURCE_LAST_EVENT.labels("timers").set(time.time())
            log.debug("fired %d deadlines", result.fired, extra={"stream": "deadlines"})
        if result.unreadable:
            metrics.INVALID_INPUTS.labels("timers", "unreadable_deadline").inc(result.unreadable)
            log.warning("dropped %d deadlines whose payload could not be read",
                        result.unreadable, extra={"stream": "deadlines"})
        if result.next_due is None or result.next_due > time.time():
            return result.next_due


async def _wait_for_wake(pubsub: Any, stop: asyncio.Event, timeout: float) -> None:
    """Return after ``timeout``, on a wake-up message, or when ``stop`` is set."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        # Short slices keep the loop responsive to ``stop`` without cancelling a read.
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(left, 0.5))
        if message is not None:
            return
