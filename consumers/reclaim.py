"""Reclaiming the pending entries of dead consumers, and tidying the group.

Every ``claim_interval_s`` the reclaimer XAUTOCLAIMs entries that have been
pending for longer than ``claim_min_idle_s`` under any consumer (a crashed
one, or a stopped one's ``released`` entries; a live consumer keeps its own
fresh, :mod:`consumers.keepalive`), reads their
delivery count from XPENDING, and either queues them again or, past
``max_deliveries``, dead-letters them.

A consumer idle for ``consumer_gone_after_s`` is removed from the group only
once it has no pending entries left: its entries are claimed first, on an
earlier pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import ResponseError

from consumers.deadletter import Failed
from consumers.gaps import GapWatch
from consumers.options import GroupOptions
from events import metrics
from events.loops import HEARTBEATS, sleep_unless_stopped
from events.replies import is_nogroup, text

log = logging.getLogger(__name__)

MAX_PAGES_PER_PASS = 20
"""Bound on XAUTOCLAIM pages per stream per pass, so one pass never runs away."""


class ClaimingConsumer(Protocol):
    """What the reclaimer needs of the consumer it claims for (a GroupConsumer)."""

    redis: Any
    options: GroupOptions
    stopped: asyncio.Event
    gaps: GapWatch

    async def ensure_groups(self) -> None: ...

    async def delivery_counts(self, stream: str, ids: Sequence[str]) -> dict[str, int]: ...

    async def accept(self, stream: str, entries: Sequence[tuple[bytes, dict[bytes, bytes]]]) -> None: ...

    async def dead_letter_entries(self, failures: Sequence[Failed], *, reason: str, error: str) -> None: ...

    async def gate_open(self, loop: str | None = None) -> None: ...


class Reclaimer:
    def __init__(self, consumer: ClaimingConsumer) -> None:
        self._consumer = consumer
        self._options = consumer.options
        self._name = f"consumer:{self._options.group}:reclaim"

    async def run(self) -> None:
        stopped = self._consumer.stopped
        while not stopped.is_set():
            HEARTBEATS.beat(self._name)
            if await sleep_unless_stopped(stopped, self._options.claim_interval_s):
                return
            await self._consumer.gate_open(self._name)  # a claimed entry would only be refused
            for stream in self._options.streams:
                try:
                    await self.reclaim(stream)
                    await self.remove_gone_consumers(stream)
                except ResponseError as e:
                    if not is_nogroup(e):
                        raise
                    await self._consumer.ensure_groups()

    async def reclaim(self, stream: str) -> int:
        """Claim stale pending entries of ``stream``; returns how many were claimed."""
        opts = self._options
        redis = self._consumer.redis
        start: bytes | str = "0-0"
        total = 0
        for _ in range(MAX_PAGES_PER_PASS):
            reply = await redis.xautoclaim(
                stream, opts.group, opts.consumer, int(opts.claim_min_idle_s * 1000),
                start_id=start, count=opts.read_count,
            )
            start, claimed = reply[0], reply[1]
            if len(reply) > 2 and reply[2]:  # Redis 7: pending entries deleted from the stream
                self._consumer.gaps.lost(stream, f"{len(reply[2])} pending entries were deleted")
            if claimed:
                total += len(claimed)
                await self._requeue(stream, claimed)
            if text(start) == "0-0":
                break
        if total:
            metrics.RECLAIMED.labels(opts.group).inc(total)
            log.info("reclaimed %d stale entries from %s", total, stream,
                     extra={"stream": stream, "group": opts.group})
        return total

    async def _requeue(self, stream: str, claimed: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        counts = await self._consumer.delivery_counts(stream, [text(i) for i, _ in claimed])
        fresh, exhausted = [], []
        for raw_id, fields in claimed:
            count = counts.get(text(raw_id), 1)
            if count > self._options.max_deliveries and fields is not None:
                exhausted.append(Failed(stream, text(raw_id), fields, count))
            else:
                fresh.append((raw_id, fields))
        await self._consumer.accept(stream, fresh)
        if exhausted:
            await self._consumer.dead_letter_entries(
                exhausted, reason="max_deliveries",
                error="delivered too often without being acked (consumers died or stalled)")

    async def remove_gone_consumers(self, stream: str) -> list[str]:
        """Remove consumers idle for long that hold nothing; returns their names."""
        opts = self._options
        redis = self._consumer.redis
        gone_ms = int(opts.consumer_gone_after_s * 1000)
        removed = []
        for info in await redis.xinfo_consumers(stream, opts.group):
            name = text(info["name"])
            if name != opts.consumer and int(info["pending"]) == 0 and int(info["idle"]) > gone_ms:
                await redis.xgroup_delconsumer(stream, opts.group, name)
                removed.append(name)
        if removed:
            log.info("removed idle consumers %s from %s", removed, opts.group,
                     extra={"stream": stream, "group": opts.group})
        return removed
