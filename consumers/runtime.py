"""The consumer-group runtime every group uses.

One :class:`GroupConsumer` reads several streams with XREADGROUP (BLOCK,
COUNT; one reader per hash slot, since one XREADGROUP reads one slot's streams:
the partitions of a partitioned stream are read side by side), hands events
to a bounded pool of workers through a :class:`KeyQueue`
(one key never handled twice at once; events for a busy key coalesced), and
acks in batches after the handler's effects.

The fate of an entry is decided by what the handler raised (see
:mod:`consumers.errors`); the delivery count always comes from Redis
(XPENDING), never from memory, so it survives restarts and crosses processes.
Pending entries of dead consumers are reclaimed by :mod:`consumers.reclaim`;
those a live one holds are kept fresh by :mod:`consumers.keepalive`.

Shutdown: stop reading, let the workers finish what was read, and when the
deadline comes hand anything unfinished back to the group (XCLAIM to a
``released`` consumer with its idle time set, so live consumers claim it at
once).  Nothing is left pending under this consumer's name.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from consumers.acks import AckBatcher
from consumers.deadletter import Failed, dead_letter
from consumers.errors import PermanentError, TemporaryError
from consumers.gaps import GapWatch, OnGap
from consumers.keepalive import Keepalive
from consumers.keyqueue import Delivery, KeyQueue
from consumers.options import GroupOptions
from consumers.reclaim import Reclaimer
from consumers.release import release_pending
from consumers.rights_gate import RightsGate, is_refusal
from consumers.tallies import OutcomeTally
from events import codec, metrics
from events.contract import tag_of
from events.errors import MalformedEntry
from events.keys import by_slot, label_of
from events.loops import HEARTBEATS, backoff_delay, spawn
from events.replies import is_nogroup, is_unblocked, text

log = logging.getLogger(__name__)

Handler = Callable[[str, Sequence[Delivery]], Awaitable[None]]
"""``handler(key, deliveries)``: reconcile one key; the deliveries are the events that woke it."""

SHUTDOWN_GRACE_S = 2.0
"""How long cancelled workers and stopping helpers get at the end of a shutdown."""

_RUNNING: list[GroupOptions] = []


def running_groups() -> dict[str, tuple[str, ...]]:
    """The groups this process consumes right now, each with its streams (for readiness)."""
    return {options.group: options.streams for options in _RUNNING}


class GroupConsumer:
    """Reads a consumer group's streams and runs a handler per key."""

    def __init__(self, redis: Redis, options: GroupOptions, handler: Handler,
                 on_gap: OnGap | None = None, rights: RightsGate | None = None) -> None:
        self.redis = redis
        self._rights = rights
        self.options = options
        self.gaps = GapWatch(redis, group=options.group, gaps_key=options.gaps_key, on_gap=on_gap)
        self._handler = handler
        self._queue = KeyQueue(bulk_max=max(1, options.concurrency - 1),
                               bulk_while_live=options.bulk_while_live)
        self._tracked: set[tuple[str, str]] = set()
        self._in_handler: dict[str, Sequence[Delivery]] = {}  # by key; the keepalive skips them
        self._acks = AckBatcher(redis, group=options.group, batch_size=options.read_count,
                                interval_s=options.ack_interval_s)
        self._retrying: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._stopping = False
        self.stopped = asyncio.Event()
        """Set when shutdown begins; helper loops return when they see it."""
        self._tally = OutcomeTally(options.group)
        self._loop_prefix = f"consumer:{options.group}"

    # -- groups --------------------------------------------------------------

    async def ensure_groups(self) -> None:
        """Create the group on every stream if missing (MKSTREAM)."""
        for stream in self.options.streams:
            try:
                await self.redis.xgroup_create(stream, self.options.group, id="0", mkstream=True)
                log.info("created group %s on %s", self.options.group, stream,
                         extra={"stream": stream, "group": self.options.group})
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

    async def _recreate_groups(self) -> None:
        log.warning("group %s is gone (Redis restarted or was flushed); recreating it",
                    self.options.group, extra={"group": self.options.group})
        metrics.GROUPS_RECREATED.labels(self.options.group).inc()
        await self.ensure_groups()
        for stream in self.options.streams:
            self.gaps.lost(stream, "the group had to be recreated")

    # -- run -----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then shut down within the deadline."""
        await self.ensure_groups()
        _RUNNING.append(self.options)
        try:
            await self._run(stop)
        finally:
            _RUNNING.remove(self.options)

    async def _run(self, stop: asyncio.Event) -> None:
        prefix = self._loop_prefix
        readers = [spawn(name, functools.partial(self._read_loop, name, streams), stall_after_s=60)
                   for name, streams in self._readers().items()]
        workers = [
            asyncio.create_task(self._work_loop(), name=f"{prefix}:worker-{n}")
            for n in range(self.options.concurrency)
        ]
        acker = spawn(f"{prefix}:acker", self._ack_loop, stall_after_s=60)
        reclaimer = spawn(f"{prefix}:reclaim", Reclaimer(self).run, stall_after_s=300)
        keepalive = spawn(f"{prefix}:keepalive", Keepalive(
            self.redis, self.options, self._waiting, self.stopped).run, stall_after_s=300)
        await stop.wait()
        await self._shutdown(readers, workers, [acker, reclaimer, keepalive])

    def _readers(self) -> dict[str, tuple[str, ...]]:
        """The group's streams by reader: one per hash slot (``{events}``, or a partition's
        ``{events-N}``), named ``...:reader`` when there is one, ``...:reader@N`` else."""
        slots, name = by_slot(self.options.streams), f"{self._loop_prefix}:reader"
        if len(slots) == 1:
            return {name: tuple(self.options.streams)}
        return {f"{name}{label_of(streams[0]) or '@' + str(tag)}": streams
                for tag, streams in slots.items()}

    async def _shutdown(
        self,
        readers: list[asyncio.Task[None]],
        workers: list[asyncio.Task[None]],
        helpers: list[asyncio.Task[None]],
    ) -> None:
        # Loops that talk to Redis are never cancelled mid-command (redis-py may
        # not give the connection back); they see ``stopped`` and return by
        # themselves.  Only idle workers, and workers past the deadline, are cancelled.
        self._stopping = True
        self.stopped.set()
        deadline = time.monotonic() + self.options.shutdown_deadline_s
        await asyncio.wait(readers, timeout=self.options.block_ms / 1000 + 1)
        try:
            await asyncio.wait_for(self._queue.join(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("shutdown deadline reached with %d entries unfinished", len(self._queue),
                        extra={"group": self.options.group})
        stragglers = [*workers, *self._retrying.values()]
        for task in stragglers:
            task.cancel()
        await asyncio.wait(stragglers, timeout=SHUTDOWN_GRACE_S)
        await asyncio.wait(helpers, timeout=SHUTDOWN_GRACE_S + self.options.claim_interval_s)
        for task in (*readers, *helpers):
            task.cancel()
        self._tally.flush()
        await self._acks.flush()
        await self._release_own_pending()

    # -- reading -------------------------------------------------------------

    async def _read_loop(self, name: str, streams: tuple[str, ...]) -> None:
        await self.ensure_groups()  # again after every restart of this loop
        opts = self.options
        live = {s: ">" for s in streams if s not in opts.bulk_streams}
        bulk = {s: ">" for s in streams if s in opts.bulk_streams}
        names = {s.encode(): s for s in streams}
        while not self._stopping:
            HEARTBEATS.beat(name)
            await self.gate_open(name)
            await self._queue.wait_for_space(opts.max_buffered)
            try:
                reply = await self._read_lanes(live, bulk)
            except ResponseError as e:
                if not (is_nogroup(e) or is_unblocked(e)):
                    raise
                await self._recreate_groups()
                continue
            for raw_stream, entries in reply or ():
                stream = names.get(raw_stream) or text(raw_stream)
                await self.accept(stream, entries)

    async def _read_lanes(self, live: dict[str, str], bulk: dict[str, str]) -> Any:
        """One read: the live streams without blocking, then the bulk lane with what count
        and buffer room are left; only when both were empty does it block (on the bulk lane
        too while it has room, else briefly on the live streams alone).  Without a bulk
        lane: one blocking XREADGROUP."""
        opts, read = self.options, self.gaps.read
        if not bulk:
            return await read(opts.consumer, live, count=opts.read_count, block_ms=opts.block_ms)
        room = len(self._queue) < opts.bulk_max_buffered
        reply = list(await read(opts.consumer, live, count=opts.read_count, block_ms=None) or ())
        got = sum(len(entries) for _, entries in reply)
        if got < opts.read_count and room:
            reply += await read(opts.consumer, bulk, count=opts.read_count - got,
                                block_ms=None) or ()
        if reply:
            return reply
        if room:
            return await read(opts.consumer, {**live, **bulk}, count=opts.read_count,
                              block_ms=opts.block_ms)
        return await read(opts.consumer, live, count=opts.read_count,
                          block_ms=min(opts.block_ms, opts.bulk_poll_ms))

    async def accept(
        self, stream: str, entries: Sequence[tuple[bytes, Mapping[bytes, bytes] | None]]
    ) -> None:
        """Decode entries and queue them by key; dead-letter what does not decode."""
        bad: dict[str, list[Failed]] = defaultdict(list)
        tracked, decode, max_bytes = self._tracked, codec.decode, self.options.max_entry_bytes
        accepted: list[Delivery] = []
        for raw_id, fields in entries:
            entry_id = raw_id.decode() if type(raw_id) is bytes else text(raw_id)
            if fields is None:  # deleted from the stream while pending: its key is unknown
                self._acks.add(stream, entry_id)
                self.gaps.lost(stream, f"pending entry {entry_id} was deleted")
                continue
            marker = (stream, entry_id)
            if marker in tracked:
                continue
            try:
                event = decode(fields, max_bytes=max_bytes)
            except MalformedEntry as e:
                bad[f"{e.reason}: {e}"].append(Failed(stream, entry_id, fields))
                continue
            tracked.add(marker)
            accepted.append(Delivery(stream, entry_id, event, fields))
        self._queue.add_many(accepted, live=stream not in self.options.bulk_streams)
        for error, failed in bad.items():
            log.warning("dead-lettering %d malformed entries from %s: %s", len(failed), stream,
                        error, extra={"stream": stream, "group": self.options.group})
            await self.dead_letter_entries(failed, reason="malformed", error=error)

    # -- handling ------------------------------------------------------------

    async def _work_loop(self) -> None:
        group = self.options.group
        duration = metrics.HANDLER_DURATION.labels(group)
        queue, clock = self._queue, time.perf_counter
        while True:
            try:
                key, batch = queue.get_nowait()
            except IndexError:
                key, batch = await queue.get()
            started = clock()
            self._in_handler[key] = batch
            try:
                await self._handler(key, batch)
            except asyncio.CancelledError:
                raise  # shutdown: the batch is released by _release_own_pending
            except Exception as e:
                try:
                    await self._failed(key, batch, e)
                except Exception:  # Redis went away too: never lose the worker over it
                    log.warning("could not dead-letter or retry key %s; its entries stay pending "
                                "for a reclaimer", key, exc_info=True, extra={"group": group})
                    self._untrack(batch)  # the keepalive lets them age, so they are reclaimed
            else:
                self._handled(batch)
            finally:
                del self._in_handler[key]
                duration.observe(clock() - started)
                queue.done(key)

    async def _failed(self, key: str, batch: Sequence[Delivery], e: Exception) -> None:
        """A handler raised: dead-letter the batch now (permanent) or retry it later."""
        extra = {"group": self.options.group, "key": key, "stream": batch[-1].stream,
                 "message_id": batch[-1].entry_id, "event_type": tag_of(type(batch[-1].event))}
        if isinstance(e, PermanentError):
            self._tally.add(batch, "dead_lettered")
            log.error("permanent error for key %s: %s", key, e, extra=extra)
            await self.dead_letter_entries([Failed(d.stream, d.entry_id, d.fields) for d in batch],
                                           reason="permanent", error=f"{type(e).__name__}: {e}")
            self._untrack(batch)
            return
        if is_refusal(e) and self._rights is not None:
            self._rights.refused(e)
        log.warning("handler failed for key %s; will retry", key, exc_info=not is_refusal(e),
                    extra=extra)
        self._tally.add(batch, "retried")
        await self._retry_later(batch, e)

    def _handled(self, batch: Sequence[Delivery]) -> None:
        """Count, ack and untrack a batch whose handler returned: one pass, no awaits."""
        acks, tracked, tallies = self._acks.waiting, self._tracked, self._tally.counts
        for d in batch:
            acks[d.stream].append(d.entry_id)
            tracked.discard((d.stream, d.entry_id))
            label = (type(d.event), "handled")
            tallies[label] = tallies.get(label, 0) + 1
        self._acks.added(len(batch))

    def _waiting(self) -> set[tuple[str, str]]:
        """The entries held and not in a handler: buffered, or waiting for a retry."""
        handling = {(d.stream, d.entry_id) for batch in self._in_handler.values() for d in batch}
        return self._tracked - handling

    async def gate_open(self, loop: str | None = None) -> None:
        """Wait while a store refuses the role (:mod:`consumers.rights_gate`)."""
        if self._rights is not None:
            await self._rights.wait(lambda: HEARTBEATS.beat(loop) if loop else None)

    def _untrack(self, batch: Sequence[Delivery]) -> None:
        for d in batch:
            self._tracked.discard((d.stream, d.entry_id))

    async def delivery_counts(self, stream: str, entry_ids: Sequence[str]) -> dict[str, int]:
        """How often Redis has delivered each entry (XPENDING)."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(stream, self.options.group, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows:
                counts[text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _retry_later(self, batch: Sequence[Delivery], error: Exception) -> None:
        delay_hint = error.delay if isinstance(error, TemporaryError) else None
        by_stream: dict[str, list[Delivery]] = defaultdict(list)
        for d in batch:
            by_stream[d.stream].append(d)
        for stream, deliveries in by_stream.items():
            counts = await self.delivery_counts(stream, [d.entry_id for d in deliveries])
            exhausted = []
            for d in deliveries:
                count = counts.get(d.entry_id)
                if count is None:  # no longer pending: acked elsewhere or trimmed
                    self._untrack([d])
                elif count >= self.options.max_deliveries and not is_refusal(error):
                    exhausted.append(Failed(d.stream, d.entry_id, d.fields, count))
                    self._untrack([d])
                else:
                    delay = delay_hint if delay_hint is not None else backoff_delay(
                        self.options.retry_backoff_s, self.options.retry_backoff_max_s, count - 1)
                    self._schedule_retry(d, min(delay, self.options.retry_backoff_max_s))
            await self.dead_letter_entries(
                exhausted, reason="max_deliveries", error=f"{type(error).__name__}: {error}")

    def _schedule_retry(self, delivery: Delivery, delay: float) -> None:
        marker = (delivery.stream, delivery.entry_id)
        self._retrying[marker] = asyncio.create_task(self._retry(delivery, delay))

    async def _retry(self, delivery: Delivery, delay: float) -> None:
        marker = (delivery.stream, delivery.entry_id)
        try:
            await asyncio.sleep(delay)
            await self.gate_open()
            # XCLAIM to ourselves counts the new delivery in Redis.
            claimed = await self.redis.xclaim(
                delivery.stream, self.options.group, self.options.consumer, 0, [delivery.entry_id]
            )
            self._tracked.discard(marker)
            if claimed and not self._stopping:
                await self.accept(delivery.stream, claimed)
        except ResponseError as e:
            if not is_nogroup(e):
                raise
            self._tracked.discard(marker)
        finally:
            self._retrying.pop(marker, None)

    async def dead_letter_entries(self, failed: Sequence[Failed], *, reason: str, error: str) -> None:
        opts = self.options
        await dead_letter(self.redis, deadletter_stream=opts.deadletter_stream, group=opts.group,
                          failed=failed, reason=reason, error=error, max_len=opts.deadletter_max_len)

    # -- acks and release ----------------------------------------------------

    async def _ack_loop(self) -> None:
        name = f"{self._loop_prefix}:acker"
        await self._acks.run(lambda: self._stopping, lambda: HEARTBEATS.beat(name), self._tally.flush)

    async def _release_own_pending(self) -> None:
        """Hand every entry still pending under our name to the group, then leave it."""
        await release_pending(self.redis, self.options)
        self._queue.clear()
        self._tracked.clear()
