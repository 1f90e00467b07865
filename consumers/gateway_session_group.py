"""Reactions for gateway sessions (consumer group ``sessions``): orphaned queues.

The handler is level-triggered.  Whatever event woke it (a session started,
stopped or expired, a push observed on its queue, a parked-retention
deadline, an operator's request) it reads the current state of the session --
does its lease exist, how long is its queue, what is parked and since when --
and :func:`consumers.rules.gateway_session_rules.decide` turns that into actions, as the rule
of DESIGN.md reads:

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
calls for it.  The changes are carried out by :mod:`consumers.queue_acts`
through the action executor (intent first; planned in a dry run, once per
state).  Reports change no state, so the last one is remembered
(``keys.session_noted``) and not repeated for the same state.

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
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis

from consumers.actions import Actions
from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.queue_acts import QueueActs
from consumers.rules.gateway_session_rules import (
    Action,
    CancelRetention,
    DropParked,
    DropQueue,
    Observed,
    ParkQueue,
    ReportOrphanQueue,
    RestoreParked,
    ScheduleRetention,
    decide,
    observed,
)
from consumers.stores.parked_queues import ParkedQueues, SessionState
from events.contract import (
    EventBase,
    ParkedRetentionDue,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
from events.envelope import new_event
from events.keys import checked_session
from events.settings import Settings

log = logging.getLogger(__name__)

NOTED_TTL_S = 86_400
"""A report (or dry-run plan) of an unchanged state is repeated after this long."""

MARKERS = (SnapshotStarted, SnapshotFinished, SourceResynced)
"""Events on the sessions stream that mark a source's progress, not a session's change."""



class Timers(Protocol):
    """The part of the timer wheel this handler uses."""

    async def schedule(self, member: str, due_unix: float, event: ParkedRetentionDue) -> object: ...

    async def cancel(self, member: str, key: str) -> object: ...


# -- the handler -----------------------------------------------------------------


class SessionsHandler:
    """``async (key, deliveries)`` for the ``sessions`` group."""

    def __init__(self, *, settings: Settings, redis: Redis, actions: Actions,
                 timers: Timers | None = None) -> None:
        self._settings = settings
        self._keys = settings.keys
        self._store = ParkedQueues(redis, self._keys)
        self._actions = actions
        self._acts = QueueActs(store=self._store, keys=self._keys, actions=actions)
        self._timers = timers

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        try:
            checked_session(key)
        except ValueError as e:
            raise PermanentError(str(e)) from e
        events = [d.event for d in deliveries if not isinstance(d.event, MARKERS)]
        if not events:  # a source's snapshot or resync marker: its key is not a session
            return
        cause = events[-1]
        left = await self._actions.settle(key, self._acts.check)
        state, observed = await self.observe(key)
        actions = decide(observed)
        if not await self._already_noted(state, actions):
            planned = False
            for action in actions:
                if isinstance(action, ScheduleRetention | CancelRetention) and planned:
                    continue  # the deadline would follow a change only planned (a dry run)
                planned = await self._apply(action, state, cause, now=observed.now) or planned
        await self._actions.close_left(key, left)

    async def observe(self, key: str) -> tuple[SessionState, Observed]:
        """What the stores say about session ``key`` now, as :func:`decide` reads it."""
        state = await self._store.observe(key)
        return state, observed(state, self._settings, now=time.time())

    async def _already_noted(self, state: SessionState, actions: list[Action]) -> bool:
        """Reports change nothing: say them once per state."""
        says = [a for a in actions if not isinstance(a, ScheduleRetention | CancelRetention)]
        if says and all(isinstance(a, ReportOrphanQueue) for a in says):
            signature = f"{says}|queue={state.queue_length}|parked={state.parked_length}"
            if signature == state.noted:
                return True
            await self._store.note(state.session, signature, ttl_s=NOTED_TTL_S)
        elif state.noted is not None:  # the episode is over: a later one is said again
            await self._store.note(state.session, None, ttl_s=NOTED_TTL_S)
        return False

    async def _apply(self, action: Action, state: SessionState, cause: EventBase, *,
                     now: float) -> bool:
        """Carry out one action; ``True`` if it was a change only planned."""
        result = None
        match action:
            case ParkQueue():
                result = await self._acts.park(state, cause, now=now)
            case RestoreParked():
                result = await self._acts.restore(state, cause)
            case DropQueue():
                result = await self._acts.drop_queue(state, cause)
            case DropParked(cutoff=cutoff):
                result = await self._acts.drop_parked(state, cutoff, cause)
            case ReportOrphanQueue():
                await self._acts.report(state, cause)
            case ScheduleRetention(due=due):
                await self._schedule(state.session, due, cause)
            case CancelRetention():
                if self._timers is not None:
                    await self._timers.cancel(retention_member(state.session), state.session)
        return result is not None and result.outcome == "planned"

    async def _schedule(self, session: str, due: float, cause: EventBase) -> None:
        if self._timers is None:
            return
        deadline = datetime.fromtimestamp(due, UTC)
        event = new_event(ParkedRetentionDue, at=deadline, source="timers", key=session,
                          cause_id=cause.id, deadline=deadline)
        await self._timers.schedule(retention_member(session), due, event)


def retention_member(session: str) -> str:
    """The timer-wheel member of a session's parked-retention deadline."""
    return f"parked:{session}"
