"""A work queue keyed by conversation or session, as client-go's workqueue works.

* A key is never handed to two workers at once.
* Events for a key that is waiting are coalesced into one batch.
* Events for a key that is being handled wait, coalesced, and the key is
  handed out again once the running handler is done.
* Keys woken by a live event are handed out before keys woken only by the
  bulk lane (snapshots, listings, re-listings: see :mod:`consumers.runtime`),
  so a live change does not wait behind a backlog already read; a key waiting
  for the bulk lane that a live event wakes moves to the live line.
* Bulk keys are handled by at most ``bulk_max`` workers at once (one fewer
  than there are, so a live key finds a worker free), and while a live key
  waits or is handled, new bulk handlings start only while fewer than
  ``bulk_while_live`` run: a live handling shares the loop, the pools and the
  stores with only those (the bulk handlings under way end without new ones
  taking their place).  The bulk lane keeps moving meanwhile, so a steady
  live load slows a backlog down but never stops it.

Handlers are level-triggered (they read the current state of the key), so
handling a key once for several events is both correct and cheaper.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping, Sequence

import msgspec

from events.contract import Event


class Delivery(msgspec.Struct, frozen=True, gc=False):
    """One stream entry handed to a handler.

    A frozen msgspec Struct rather than a frozen dataclass: one is built per
    entry read, and a Struct is built about ten times faster.  It holds no
    reference cycles, so it need not be tracked by the garbage collector.
    """

    stream: str
    entry_id: str
    event: Event
    fields: Mapping[bytes, bytes]
    """The entry's raw fields, kept for the dead-letter stream."""


class KeyQueue:
    def __init__(self, *, bulk_max: int = 15, bulk_while_live: int = 2) -> None:
        self._bulk_max = bulk_max
        self._bulk_while_live = bulk_while_live
        self._waiting: dict[str, list[Delivery]] = {}
        self._ready: deque[str] = deque()
        self._live: deque[str] = deque()
        self._in_ready: set[str] = set()
        """The keys in ``_ready``, to find one a live event wakes."""
        self._urgent: set[str] = set()
        """Keys with a live delivery waiting: they go to ``_live`` when they are ready."""
        self._processing: dict[str, list[Delivery]] = {}
        self._live_handled: set[str] = set()
        """Keys handed out from ``_live`` and not done yet (the rest of ``_processing`` are
        bulk keys)."""
        self._has_ready = asyncio.Event()
        self._has_space = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._count = 0

    def __len__(self) -> int:
        """Entries waiting or being handled."""
        return self._count

    def add_many(self, deliveries: Sequence[Delivery], *, live: bool = True) -> None:
        """Queue deliveries in order (one read's worth at a time, to keep the per-entry cost low).

        ``live=False`` (the bulk lane): their keys are handed out after every live key.
        A key already waiting keeps its place, except that a live delivery moves a key
        waiting for the bulk lane to the live line.
        """
        if not deliveries:
            return
        waiting, processing = self._waiting, self._processing
        for delivery in deliveries:
            key = delivery.event.key
            batch = waiting.get(key)
            if batch is None:
                waiting[key] = [delivery]
                if key in processing:
                    if live:
                        self._urgent.add(key)
                elif live:
                    self._live.append(key)
                else:
                    self._ready.append(key)
                    self._in_ready.add(key)
            else:
                if live and key in self._in_ready:
                    self._ready.remove(key)  # rare: a live change of a key a backlog woke
                    self._in_ready.discard(key)
                    self._live.append(key)
                elif live and key in processing:
                    self._urgent.add(key)
                batch.append(delivery)
        self._count += len(deliveries)
        self._idle.clear()
        if self._live or self._ready:
            self._has_ready.set()

    async def get(self) -> tuple[str, list[Delivery]]:
        """The next ready key and every event waiting for it."""
        while not self._live and not (self._ready and self._bulk_may_start()):
            self._has_ready.clear()
            await self._has_ready.wait()
        return self.get_nowait()

    def get_nowait(self) -> tuple[str, list[Delivery]]:
        """Like :meth:`get` when a key is ready; raises ``IndexError`` when none is."""
        if self._live:
            key = self._live.popleft()
            self._live_handled.add(key)
        elif self._ready and self._bulk_may_start():
            key = self._ready.popleft()
            self._in_ready.discard(key)
        else:
            raise IndexError("no key may be handed out now")
        batch = self._waiting.pop(key)
        self._processing[key] = batch
        return key, batch

    def _bulk_may_start(self) -> bool:
        bulk_handled = len(self._processing) - len(self._live_handled)
        live = self._live or self._live_handled
        return bulk_handled < (self._bulk_while_live if live else self._bulk_max)

    def done(self, key: str) -> None:
        """The handler for ``key`` finished (whatever its outcome)."""
        batch = self._processing.pop(key)
        self._count -= len(batch)
        self._live_handled.discard(key)
        if key in self._waiting:
            if key in self._urgent:
                self._urgent.discard(key)
                self._live.append(key)
            else:
                self._ready.append(key)
                self._in_ready.add(key)
        if self._live or self._ready:  # a bulk key may start now that this one ended
            self._has_ready.set()
        if self._count == 0:
            self._idle.set()
        self._has_space.set()

    async def wait_for_space(self, limit: int) -> None:
        while self._count >= limit:
            self._has_space.clear()
            await self._has_space.wait()

    async def join(self) -> None:
        """Wait until nothing is waiting or being handled."""
        await self._idle.wait()

    def clear(self) -> None:
        """Forget everything waiting or being handled (at shutdown, once it was handed back)."""
        self._waiting.clear()
        self._processing.clear()
        self._ready.clear()
        self._in_ready.clear()
        self._live.clear()
        self._urgent.clear()
        self._live_handled.clear()
        self._count = 0
        self._idle.set()
