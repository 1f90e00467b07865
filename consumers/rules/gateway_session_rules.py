"""The rule for a gateway session, as one pure function: :func:`judge` (and :func:`decide`).

From what was observed about one session -- is its lease live, how long is
its queue, what is parked and since when -- to the verdict:

* ``parked_not_restored``: the session is live and messages are parked: put
  them back at the head of its queue, in their original order;
* ``orphan_queue``: a non-empty queue of a session that is not live: park,
  drop or report it, by the ``RECONCILER_ORPHAN_QUEUE_POLICY``;
* parked batches past their retention are dropped, and a deadline is kept for
  the oldest batch still parked (housekeeping, not an inconsistency).
"""

from __future__ import annotations

from dataclasses import dataclass

from consumers.stores.parked_queues import ParkedBatch, SessionState
from events.settings import OrphanQueuePolicy, Settings

KINDS: tuple[str, ...] = ("orphan_queue", "parked_not_restored")

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


@dataclass(frozen=True, slots=True)
class Verdict:
    kinds: tuple[str, ...]
    actions: tuple[Action, ...]


def judge(o: Observed) -> Verdict:
    """The inconsistencies of session ``o`` (by kind) and the actions that end them."""
    actions = decide(o)
    kinds = []
    if any(isinstance(a, ParkQueue | DropQueue | ReportOrphanQueue) for a in actions):
        kinds.append("orphan_queue")
    if any(isinstance(a, RestoreParked) for a in actions):
        kinds.append("parked_not_restored")
    return Verdict(tuple(kinds), tuple(actions))


def observed(state: SessionState, settings: Settings, *, now: float) -> Observed:
    """The rule's input from what the stores hold for one session and the settings."""
    return Observed(session=state.session, live=state.live, queue_length=state.queue_length,
                    parked_length=state.parked_length, batches=state.batches, now=now,
                    policy=settings.orphan_queue_policy, retention_s=settings.parked_retention_s)
