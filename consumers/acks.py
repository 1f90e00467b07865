"""Acknowledging handled entries in batches.

An entry is acked after its handler's effects (at-least-once).  Acks are
collected and sent together, one XACK per stream in one pipeline, when
``batch_size`` wait or every ``interval_s``, whichever comes first: an XACK
per entry would cost a round trip each.  A flush that fails keeps its ids for
the next one, so an ack is delayed, never lost (a lost ack would only mean a
redelivery, which handlers take, but it would show as pending).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any


class AckBatcher:
    """Ids waiting to be acked, per stream, for one group."""

    def __init__(self, redis: Any, *, group: str, batch_size: int, interval_s: float) -> None:
        self._redis = redis
        self._group = group
        self._batch_size = batch_size
        self._interval_s = interval_s
        self.waiting: dict[str, list[str]] = defaultdict(list)
        """Appended to by the workers' hot path directly; call :meth:`added` after."""
        self._count = 0
        self._now = asyncio.Event()

    def add(self, stream: str, entry_id: str) -> None:
        self.waiting[stream].append(entry_id)
        self.added(1)

    def added(self, n: int) -> None:
        """``n`` ids were appended to :attr:`waiting`; flush soon if a batch is full."""
        self._count += n
        if self._count >= self._batch_size:
            self._now.set()

    async def run(self, stopping: Callable[[], bool], beat: Callable[[], None],
                  before_flush: Callable[[], None]) -> None:
        """Flush every ``interval_s`` or when a batch is full, until ``stopping()``."""
        while not stopping():
            beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), timeout=self._interval_s)
            self._now.clear()
            before_flush()
            await self.flush()

    async def flush(self) -> None:
        if not self._count:
            return
        acks, self.waiting, self._count = self.waiting, defaultdict(list), 0
        pipe = self._redis.pipeline(transaction=False)
        for stream, ids in acks.items():
            pipe.xack(stream, self._group, *ids)
        try:
            await pipe.execute(raise_on_error=False)
        except Exception:
            for stream, ids in acks.items():  # keep them for the next flush
                self.waiting[stream].extend(ids)
                self._count += len(ids)
            raise
