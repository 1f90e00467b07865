"""The polling baseline: a loop that queries a store every period and then acts.

What the reaction benches compare against is how such systems are usually
built today: a scheduler that runs a query every ``period_s`` seconds and acts
on what it finds.  :func:`run_polled` drives it live: ``changes`` changes are
made at random moments spread over ``span_s`` seconds while the poller runs,
and for each change it records the time from just before the change is
made until the poller has acted on it (the same measure the event-driven
variants report), split into the wait for the next poll and the poll's work.

The two sides are callables so the database and queue benches share the
timing: ``change(n)`` makes change ``n`` and returns the token the poller will
report when it acts on it (a file name, a session); ``poll()`` runs one query
and its actions and returns ``[(token, acted_at), ...]`` with
``time.perf_counter()`` times.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

Change = Callable[[int], Awaitable[str]]
Poll = Callable[[], Awaitable[list[tuple[str, float]]]]


async def run_polled(*, period_s: float, changes: int, span_s: float, change: Change,
                     poll: Poll, seed: int = 7) -> dict[str, list[float]]:
    """Run the poller and the changes together; latencies in ms per change.

    Returns ``{"latency_ms": [...], "wait_ms": [...], "work_ms": [...]}`` in
    change order.  Gives up (TimeoutError) when a change is not acted on
    within ``span_s`` plus three periods plus 30 s.
    """
    rng = random.Random(seed)
    # one change at a random moment in each equal slice of the span (stratified),
    # so even a small sample covers the polling period evenly
    offsets = [(n + rng.random()) * span_s / changes for n in range(changes)]
    made: dict[str, float] = {}
    acted: dict[str, tuple[float, float]] = {}  # token -> (poll started, acted at)
    all_made = asyncio.Event()
    started = time.perf_counter()

    async def poller() -> None:
        period = 0
        while not (all_made.is_set() and made.keys() <= acted.keys()):
            await _sleep_until(started + period * period_s)
            poll_started = time.perf_counter()
            for token, at in await poll():
                acted.setdefault(token, (poll_started, at))
            period += 1

    async def changer() -> None:
        for n, offset in enumerate(offsets):
            await _sleep_until(started + offset)
            before = time.perf_counter()
            made[await change(n)] = before
        all_made.set()

    limit = span_s + 3 * period_s + 30
    await asyncio.wait_for(asyncio.gather(poller(), changer()), timeout=limit)
    return _latencies(made, acted)


def _latencies(made: dict[str, float], acted: dict[str, tuple[float, float]],
               ) -> dict[str, list[float]]:
    """Per change, in the order made: the whole latency, the wait for the poll, the poll's work."""
    out: dict[str, list[float]] = {"latency_ms": [], "wait_ms": [], "work_ms": []}
    for token, at in sorted(made.items(), key=lambda item: item[1]):
        poll_started, done = acted[token]
        out["latency_ms"].append(max(0.0, (done - at) * 1000))
        out["wait_ms"].append(max(0.0, (poll_started - at) * 1000))
        out["work_ms"].append(max(0.0, (done - max(poll_started, at)) * 1000))
    return out


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


def summary(samples: dict[str, list[float]], percentiles: Callable[..., dict[str, float]]) -> dict[str, Any]:
    """p50/p99/max of the latency, and p50 of its wait and work parts (ms)."""
    latency = percentiles(samples["latency_ms"])
    return {"p50_ms": round(latency["p50"], 3), "p99_ms": round(latency["p99"], 3),
            "max_ms": round(latency["max"], 3), "mean_ms": round(latency["mean"], 3),
            "count": int(latency["count"]),
            "wait_for_poll_p50_ms": round(percentiles(samples["wait_ms"])["p50"], 3),
            "poll_work_p50_ms": round(percentiles(samples["work_ms"])["p50"], 3)}
