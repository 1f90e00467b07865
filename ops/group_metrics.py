"""Consumer-group gauges, read from Redis rather than guessed.

Every ``interval_s`` :class:`GroupCollector` asks Redis about each event
stream: XINFO GROUPS gives every group's lag, pending count and consumers;
XPENDING (summary form) gives the smallest pending id, whose millisecond
part is when that entry was published, so its age is ``now - id``.  XLEN of
the dead-letter stream gives the dead letters waiting.

Reading Redis (not in-process counters) makes the gauges true across
processes and restarts: every process reports the same values, and alert
rules take ``max`` over instances.  Groups that disappear lose their series.
Gauges of the stores (parked messages, quarantined files) are not here: they
cost a pass over many keys, so :mod:`ops.store_gauges` counts them off the
health path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from consumers.deadletter import dead_letter_count
from events import metrics
from events.contract import AUDIT, BULK_SUFFIX, CONVERSATIONS, LANED, NOTIFICATIONS, SESSIONS
from events.keys import KeySpace
from events.loops import HEARTBEATS, sleep_unless_stopped
from events.replies import text

log = logging.getLogger(__name__)

LOOP_NAME = "ops:group-metrics"
COLLECT_INTERVAL_S = 5.0
LAG_COUNT_LIMIT = 100_000
"""When Redis cannot tell the lag (after XDEL / trimming), count at most this many entries."""

STREAMS = (CONVERSATIONS, SESSIONS, *(f"{name}{BULK_SUFFIX}" for name in LANED), AUDIT,
           NOTIFICATIONS)
"""Logical streams with gauges; a bulk lane is labelled ``conversations:bulk``."""


@dataclass(frozen=True, slots=True)
class GroupState:
    stream: str
    group: str
    lag: int
    pending: int
    oldest_pending_age_s: float
    consumers: int



def _id_ms(entry_id: Any) -> int:
    return int(text(entry_id).partition("-")[0])


class GroupCollector:
    """Sets the group gauges of the streams under one key space."""

    def __init__(self, redis: Any, keys: KeySpace, streams: Sequence[str] = STREAMS) -> None:
        self.redis = redis
        self.keys = keys
        self.streams = tuple(streams)
        self._seen: set[tuple[str, str]] = set()

    async def collect(self) -> list[GroupState]:
        """Read every group's state once and set the gauges; returns what was read."""
        states: list[GroupState] = []
        for name in self.streams:
            states += await self._stream_groups(name)
        seen = {(s.stream, s.group) for s in states}
        for state in states:
            labels = (state.stream, state.group)
            metrics.GROUP_LAG.labels(*labels).set(state.lag)
            metrics.GROUP_PENDING.labels(*labels).set(state.pending)
            metrics.GROUP_OLDEST_PENDING_AGE.labels(*labels).set(state.oldest_pending_age_s)
            metrics.GROUP_CONSUMERS.labels(*labels).set(state.consumers)
        for labels in self._seen - seen:
            for gauge in (metrics.GROUP_LAG, metrics.GROUP_PENDING,
                          metrics.GROUP_OLDEST_PENDING_AGE, metrics.GROUP_CONSUMERS):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)
        self._seen = seen
        metrics.DEADLETTER_ENTRIES.set(
            await dead_letter_count(self.redis, self.keys.deadletter_streams))
        metrics.PAUSED_KEYS.set(await self.redis.hlen(self.keys.pauses))
        return states

    async def _stream_groups(self, name: str) -> list[GroupState]:
        """The groups of a logical stream; with partitions, each group's figures summed over
        them (its oldest pending entry and most consumers taken as they are)."""
        base = name.removesuffix(BULK_SUFFIX)
        lane = 0 if base == name else 1
        streams = ([self.keys.partition_lanes(base, p)[lane] for p in range(self.keys.partitions)]
                   if base in LANED else [self.keys.stream(name)])
        states: dict[str, GroupState] = {}
        for stream in streams:
            for s in await self._groups_of(stream, name):
                was = states.get(s.group)
                states[s.group] = s if was is None else GroupState(
                    stream=name, group=s.group, lag=was.lag + s.lag, pending=was.pending + s.pending,
                    oldest_pending_age_s=max(was.oldest_pending_age_s, s.oldest_pending_age_s),
                    consumers=max(was.consumers, s.consumers))
        return list(states.values())

    async def _groups_of(self, stream: str, name: str) -> list[GroupState]:
        try:
            groups = await self.redis.xinfo_groups(stream)
        except ResponseError as e:
            if "no such key" in str(e).lower():
                return []
            raise
        states = []
        for info in groups:
            group = text(info["name"])
            lag = info.get("lag")
            if lag is None:  # Redis cannot tell (entries deleted): count them, bounded
                lag = await self._count_after(stream, info["last-delivered-id"])
            states.append(GroupState(
                stream=name, group=group, lag=int(lag), pending=int(info["pending"]),
                oldest_pending_age_s=await self._oldest_age(stream, group, int(info["pending"])),
                consumers=int(info["consumers"]),
            ))
        return states

    async def _oldest_age(self, stream: str, group: str, pending: int) -> float:
        if not pending:
            return 0.0
        summary = await self.redis.xpending(stream, group)
        oldest = summary.get("min") if isinstance(summary, dict) else None
        if not oldest:
            return 0.0
        return max(0.0, time.time() - _id_ms(oldest) / 1000)

    async def _count_after(self, stream: str, last_id: Any) -> int:
        entries = await self.redis.xrange(stream, f"({text(last_id)}", "+", count=LAG_COUNT_LIMIT)
        return len(entries)

    async def run(self, stop: asyncio.Event, interval_s: float = COLLECT_INTERVAL_S) -> None:
        """Collect every ``interval_s`` until ``stop`` is set (run it under ``guarded``)."""
        while not stop.is_set():
            await self.collect()
            HEARTBEATS.beat(LOOP_NAME)
            await sleep_unless_stopped(stop, interval_s)
