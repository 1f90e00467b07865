"""Store gauges: parked messages and sessions, quarantined files -- off the health path.

Counting parked messages means SCANning every parked list and reading its
length: with 100,000 parked sessions that is 100,000 keys.  Doing it in every
process, one LLEN round trip per key, inside the loop that ``/healthz``
watches, made a pass take minutes and the liveness probe answer 503.  So:

* **one process counts** per interval, whichever takes the lock
  ``{prefix}gauges:parked:lock`` (``SET NX EX interval``, left to expire, so
  across any number of processes the count runs about once per interval).
  It SCANs the parked lists ``COUNT`` keys a page and reads each page's
  lengths in one pipeline, then writes the totals and the time to the hash
  ``{prefix}gauges:parked``;
* **every process reads** that hash (one HGETALL) and sets
  ``reconciler_parked_messages``, ``reconciler_parked_sessions`` and
  ``reconciler_parked_counted_timestamp_seconds`` -- so every instance shows
  the same values and alert rules keep taking ``max``; a count that stopped
  shows as an old timestamp;
* quarantined files are counted by each process that has the folder, in a
  worker thread.

The loop is guarded like every loop but beats its own registry
(:data:`GAUGE_HEARTBEATS`), not :data:`events.loops.HEARTBEATS`: however
long a count takes, ``/healthz`` does not depend on it.

The counts are computed from the stores, never kept alongside them, so
every script that changes a parked list (park, restore, the gateway's start
handshake, drop, retention) is reflected by the next count without having
to maintain a counter, and a count cannot drift.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events import metrics
from events.keys import KeySpace
from events.loops import Heartbeats, guarded, sleep_unless_stopped
from events.replies import text

log = logging.getLogger(__name__)

LOOP_NAME = "ops:store-gauges"
COUNT_INTERVAL_S = 15.0
SCAN_COUNT = 1000

GAUGE_HEARTBEATS = Heartbeats()
"""The registry of the store-gauge loop: visible in logs and metrics, not in ``/healthz``."""


@dataclass(frozen=True, slots=True)
class ParkedCount:
    messages: int
    sessions: int
    counted_at: float
    """Unix time of the count; 0 when nobody has counted yet."""


def quarantined_files(folder: Path) -> int:
    """Files waiting in quarantine (each has a ``~record.json`` beside it, not counted)."""
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.endswith("~record.json"))


async def count_parked(redis: Any, keys: KeySpace) -> ParkedCount:
    """Messages and non-empty lists over every parked list: a page of keys per round trip."""
    messages = sessions = 0
    page: list[Any] = []
    async for key in redis.scan_iter(match=keys.parked_glob, count=SCAN_COUNT):
        page.append(key)
        if len(page) >= SCAN_COUNT:
            m, s = await _lengths(redis, page)
            messages, sessions, page = messages + m, sessions + s, []
    if page:
        m, s = await _lengths(redis, page)
        messages, sessions = messages + m, sessions + s
    return ParkedCount(messages=messages, sessions=sessions, counted_at=time.time())


async def _lengths(redis: Any, page: list[Any]) -> tuple[int, int]:
    pipe = redis.pipeline(transaction=False)
    for key in page:
        pipe.llen(key)
    lengths = [int(n) for n in await pipe.execute()]
    return sum(lengths), sum(1 for n in lengths if n)


class StoreGauges:
    """Sets the parked and quarantine gauges; counts parked lists when it holds the lock."""

    def __init__(self, redis: Any, keys: KeySpace, *, quarantine_dir: Path | None = None,
                 interval_s: float = COUNT_INTERVAL_S) -> None:
        self.redis = redis
        self.keys = keys
        self.quarantine_dir = quarantine_dir
        self.interval_s = interval_s
        self._me = f"{socket.gethostname()}-{os.getpid()}"

    @property
    def _stored(self) -> str:
        return f"{self.keys.prefix}gauges:parked"

    @property
    def _lock(self) -> str:
        return f"{self.keys.prefix}gauges:parked:lock"

    async def collect(self, *, force: bool = False) -> ParkedCount:
        """Count if it is this process's turn (or ``force``), then set the gauges from the store."""
        lock_s = max(1, int(self.interval_s))
        if force or await self.redis.set(self._lock, self._me, nx=True, ex=lock_s):
            counted = await count_parked(self.redis, self.keys)
            await self.redis.hset(self._stored, mapping={
                "messages": counted.messages, "sessions": counted.sessions,
                "counted_at": counted.counted_at})
        stored = await self.read()
        metrics.PARKED_MESSAGES.set(stored.messages)
        metrics.PARKED_SESSIONS.set(stored.sessions)
        metrics.PARKED_COUNTED_AT.set(stored.counted_at)
        if self.quarantine_dir is not None:
            metrics.QUARANTINED_FILES.set(
                await asyncio.to_thread(quarantined_files, self.quarantine_dir))
        return stored

    async def read(self) -> ParkedCount:
        """The last count any process stored."""
        raw = {text(k): v
               for k, v in (await self.redis.hgetall(self._stored)).items()}
        return ParkedCount(messages=int(raw.get("messages", 0)),
                           sessions=int(raw.get("sessions", 0)),
                           counted_at=float(raw.get("counted_at", 0)))

    async def run(self, stop: asyncio.Event) -> None:
        """Collect every ``interval_s`` until ``stop`` is set."""
        while not stop.is_set():
            await self.collect()
            GAUGE_HEARTBEATS.beat(LOOP_NAME)
            await sleep_unless_stopped(stop, self.interval_s)

    def spawn(self, stop: asyncio.Event) -> asyncio.Task[None]:
        """The guarded loop, beating :data:`GAUGE_HEARTBEATS` (never ``/healthz``)."""
        return asyncio.create_task(
            guarded(LOOP_NAME, lambda: self.run(stop), heartbeats=GAUGE_HEARTBEATS, stop=stop,
                    stall_after_s=max(60.0, 4 * self.interval_s)),
            name=LOOP_NAME)
