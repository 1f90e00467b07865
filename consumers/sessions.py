"""Reactions for gateway sessions (consumer group ``sessions``): orphaned queues.

The handler is level-triggered.  Whatever event woke it (a session started,
stopped or expired, a push observed on its queue, a parked-retention
deadline, an operator's request) it reads the current state of the session --
does its lease exist, how long is its queue, what is parked and since when --
and :func:`decide` turns that into actions, as the rule of DESIGN.md reads:

* a session that is live gets its parked messages back at the head of its
  queue, in their original order (a live session's queue is the gateway's to
  drain: nothing else is done to it);
* a non-empty queue of a session that is not live is parked, dropped (with
  every message's content in the audit entry) or reported, by
  ``settings.orphan_queue_policy``;
* parked messages older than ``settings.parked_retention_s`` are dropped,
  with their content audited, and a ``ParkedRetentionDue`` deadline is kept
  for the oldest batch still parked.

Duplicates and replays are harmless: after an action the state no longer
calls for it.  Reports and dry-run plans change no state, so the last one is
remembered (``keys.session_noted``) and not repeated for the same state.

Race with a returning session.  The lease shares the queue's hash tag, so
the park script checks it itself: a session that is live when the script
runs keeps its queue.  A returning gateway's start handshake restores its
parked messages atomically with taking the lease (:mod:`events.gateway`);
the restore here runs on *every* event for a session whose lease exists
while something is parked, as a backup (after the handshake it finds
nothing parked and does nothing).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from redis.asyncio import Redis

from consumers.audit import Auditor
from consumers.errors import PermanentError, TemporaryError
from consumers.keyqueue import Delivery
from consumers.stores.parked_queues import (
    ParkedBatch,
    ParkedQueues,
    SessionState,
    describe_messages,
)
from consumers.stores.pauses import PauseStore
from events.contract import (
    ActionOutcome,
    EventBase,
    ParkedRetentionDue,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
from events.ids import new_event_id
from events.keys import checked_session
from events.settings import OrphanQueuePolicy, Settings

log = logging.getLogger(__name__)

NOTED_TTL_S = 86_400
"""A report (or dry-run plan) of an unchanged state is repeated after this long."""

MARKERS = (SnapshotStarted, SnapshotFinished, SourceResynced)
"""Events on the sessions stream that mark a source's progress, not a session's change."""

AUDIT_CONTENT_BYTES = 128 * 1024
"""Message content per audit entry; a larger drop is audited in several parts."""


class Timers(Protocol):
    """The part of the timer wheel this handler uses."""

    async def schedule(self, member: str, due_unix: float, event: ParkedRetentionDue) -> object: ...

    async def cancel(self, member: str) -> object: ...


# -- the rule --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observed:
    session: str
    live: bool
    queue_length: int
    parked_length: int
    batches: tuple[ParkedBatch, ...]
    now: float
    policy: OrphanQueuePolicy
    retention_s: float


@dataclass(frozen=True, slots=True)
class ParkQueue:
    count: int


@dataclass(frozen=True, slots=True)
class DropQueue:
    count: int


@dataclass(frozen=True, slots=True)
class ReportOrphanQueue:
    count: int


@dataclass(frozen=True, slots=True)
class RestoreParked:
    count: int


@dataclass(frozen=True, slots=True)
class DropParked:
    count: int
    cutoff: float
    """Batches parked at or before this Unix time are dropped."""


@dataclass(frozen=True, slots=True)
class ScheduleRetention:
    due: float


@dataclass(frozen=True, slots=True)
class CancelRetention:
    pass


Action = (ParkQueue | DropQueue | ReportOrphanQueue | RestoreParked | DropParked
          | ScheduleRetention | CancelRetention)


def decide(o: Observed) -> list[Action]:
    """The actions for one session, from its observed state alone."""
    actions: list[Action] = []
    cutoff = o.now - o.retention_s
    expired = 0
    while expired < len(o.batches) and o.batches[expired].at <= cutoff:
        expired += 1
    remaining = list(o.batches[expired:])
    if expired:
        actions.append(DropParked(count=sum(b.count for b in o.batches[:expired]), cutoff=cutoff))
    parked_left = o.parked_length - sum(b.count for b in o.batches[:expired])
    if o.live:
        if parked_left > 0:
            actions.append(RestoreParked(count=parked_left))
        remaining = []
    elif o.queue_length > 0:
        if o.policy == "park":
            actions.append(ParkQueue(count=o.queue_length))
            remaining.append(ParkedBatch(at=o.now, count=o.queue_length))
        elif o.policy == "drop":
            actions.append(DropQueue(count=o.queue_length))
        else:
            actions.append(ReportOrphanQueue(count=o.queue_length))
    if remaining:
        actions.append(ScheduleRetention(due=remaining[0].at + o.retention_s))
    elif o.batches or o.parked_length:
        actions.append(CancelRetention())
    return actions


# -- the handler -----------------------------------------------------------------


CHANGE_VERBS: dict[type, str] = {ParkQueue: "park_queue", RestoreParked: "restore_parked",
                                 DropQueue: "drop_queue", DropParked: "drop_parked"}
"""Actions that change a store, by the name they are audited under (skipped while paused)."""


class SessionsHandler:
    """``async (key, deliveries)`` for the ``sessions`` group."""

    def __init__(self, *, settings: Settings, redis: Redis, auditor: Auditor,
                 timers: Timers | None = None) -> None:
        self._settings = settings
        self._keys = settings.keys
        self._store = ParkedQueues(redis, self._keys)
        self._auditor = auditor
        self._timers = timers
        self._pauses = PauseStore(redis, self._keys)

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        try:
            checked_session(key)
        except ValueError as e:
            raise PermanentError(str(e)) from e
        events = [d.event for d in deliveries if not isinstance(d.event, MARKERS)]
        if not events:  # a source's snapshot or resync marker: its key is not a session
            return
        cause = events[-1]
        state, observed = await self.observe(key)
        actions = decide(observed)
        if await self._already_noted(state, actions):
            return
        for action in actions:
            await self._apply(action, state, cause)

    async def observe(self, key: str) -> tuple[SessionState, Observed]:
        """What the stores say about session ``key`` now, as :func:`decide` reads it."""
        state = await self._store.observe(key)
        return state, Observed(
            session=key, live=state.live, queue_length=state.queue_length,
            parked_length=state.parked_length, batches=state.batches, now=time.time(),
            policy=self._settings.orphan_queue_policy,
            retention_s=self._settings.parked_retention_s)

    async def _already_noted(self, state: SessionState, actions: list[Action]) -> bool:
        """Reports and dry-run plans change nothing: say them once per state."""
        says = [a for a in actions if not isinstance(a, ScheduleRetention | CancelRetention)]
        if says and (self._auditor.dry_run or all(isinstance(a, ReportOrphanQueue) for a in says)):
            signature = f"{says}|queue={state.queue_length}|parked={state.parked_length}"
            if signature == state.noted:
                return True
            await self._store.note(state.session, signature, ttl_s=NOTED_TTL_S)
        elif state.noted is not None:  # the episode is over: a later one is said again
            await self._store.note(state.session, None, ttl_s=NOTED_TTL_S)
        return False

    async def _apply(self, action: Action, state: SessionState, cause: EventBase) -> None:
        verb = CHANGE_VERBS.get(type(action))
        if verb and not self._auditor.dry_run and (reason := await self._pauses.gate(state.session)):
            before = {"queue": state.queue_length, "parked": state.parked_length}
            await self._audit(verb, state, cause, before=before, after=before, outcome="skipped",
                              reason=reason)
            return
        match action:
            case ParkQueue():
                await self._park(state, cause)
            case RestoreParked():
                await self._restore(state, cause)
            case DropQueue():
                await self._drop_queue(state, cause)
            case DropParked(cutoff=cutoff):
                await self._drop_parked(state, cutoff, cause)
            case ReportOrphanQueue(count=count):
                await self._audit("report_orphan_queue", state, cause, outcome="skipped",
                                  reason="session not live; policy report leaves the queue as it is",
                                  before={"queue": count}, after={"queue": count})
            case ScheduleRetention(due=due):
                await self._schedule(state.session, due, cause)
            case CancelRetention():
                if self._timers is not None and not self._auditor.dry_run:
                    await self._timers.cancel(retention_member(state.session))

    async def _park(self, state: SessionState, cause: EventBase) -> None:
        before = {"queue": state.queue_length, "parked": state.parked_length}
        if self._auditor.dry_run:
            await self._audit("park_queue", state, cause, before=before,
                              after={"queue": 0, "parked": state.parked_length + state.queue_length})
            return
        # The lease is in another slot than the queue, so the script cannot check it:
        # check it here, just before.  A session that returns after this check gets
        # its messages back from the restore that runs on its SessionStarted event.
        if await self._store.lease_exists(state.session):
            return
        moved = await self._store.park(state.session, now=time.time(), cause=cause.id)
        if moved == 0:
            return
        await self._audit("park_queue", state, cause, before=before,
                          after={"queue": 0, "parked": state.parked_length + moved},
                          reason=f"session not live; parked {moved} messages")

    async def _restore(self, state: SessionState, cause: EventBase) -> None:
        before = {"queue": state.queue_length, "parked": state.parked_length}
        if self._auditor.dry_run:
            await self._audit("restore_parked", state, cause, before=before,
                              after={"queue": state.queue_length + state.parked_length, "parked": 0})
            return
        moved = await self._store.restore(state.session)
        if moved == 0:
            return
        await self._audit("restore_parked", state, cause, before=before,
                          after={"queue": state.queue_length + moved, "parked": 0},
                          reason=f"session live; {moved} parked messages back at the head")

    async def _drop_queue(self, state: SessionState, cause: EventBase) -> None:
        if self._auditor.dry_run:
            items = await self._store.queued(state.session)
            await self._audit_content("drop_queue", state, cause, items, counts={"queue": len(items)})
            return
        items = await self._store.take_queue(state.session)
        if not items:
            return
        try:
            await self._audit_content("drop_queue", state, cause, items,
                                      counts={"queue": len(items)})
        except Exception as e:
            # Not audited means not dropped: the messages go back, in order.
            await self._store.put_back_queue(state.session, items)
            raise TemporaryError(f"could not audit a queue drop: {e}") from e

    async def _drop_parked(self, state: SessionState, cutoff: float, cause: EventBase) -> None:
        if self._auditor.dry_run:
            count = sum(b.count for b in state.batches if b.at <= cutoff)
            items = await self._store.parked(state.session, count)
            await self._audit_content("drop_parked", state, cause, items,
                                      counts={"parked": state.parked_length})
            return
        batches, items = await self._store.take_expired(state.session, cutoff=cutoff)
        if not items:
            return
        try:
            await self._audit_content("drop_parked", state, cause, items,
                                      counts={"parked": state.parked_length})
        except Exception as e:
            await self._store.put_back_parked(state.session, batches, items)
            raise TemporaryError(f"could not audit a parked drop: {e}") from e

    async def _audit_content(self, action: str, state: SessionState, cause: EventBase,
                             items: list[bytes], *, counts: dict[str, int]) -> None:
        """One audit entry per part of at most ``AUDIT_CONTENT_BYTES`` of content."""
        parts = split_by_size(items, AUDIT_CONTENT_BYTES)
        (what, count), = counts.items()
        for n, part in enumerate(parts, start=1):
            before: dict[str, Any] = {what: count, "messages": describe_messages(part)}
            if len(parts) > 1:
                before["part"] = f"{n}/{len(parts)}"
            await self._audit(action, state, cause, before=before,
                              after={what: count - len(items)},
                              reason=f"{len(items)} messages dropped, content in 'before'")

    async def _audit(self, action: str, state: SessionState, cause: EventBase, *,
                     before: dict[str, Any], after: dict[str, Any], outcome: ActionOutcome = "done",
                     reason: str = "") -> None:
        await self._auditor.record(
            action=action, target=self._keys.queue(state.session), key=state.session,
            outcome=outcome, cause=cause, reason=reason, before=before, after=after)

    async def _schedule(self, session: str, due: float, cause: EventBase) -> None:
        if self._timers is None or self._auditor.dry_run:
            return
        deadline = datetime.fromtimestamp(due, UTC)
        event = ParkedRetentionDue(id=new_event_id(deadline), occurred_at=deadline, source="timers",
                                   key=session, cause_id=cause.id, deadline=deadline)
        await self._timers.schedule(retention_member(session), due, event)


def retention_member(session: str) -> str:
    """The timer-wheel member of a session's parked-retention deadline."""
    return f"parked:{session}"


def split_by_size(items: list[bytes], limit: int) -> list[list[bytes]]:
    parts: list[list[bytes]] = [[]]
    size = 0
    for item in items:
        if parts[-1] and size + len(item) > limit:
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += len(item)
    return parts
