"""The audit trail: audit entries, written and read.

An entry is an :class:`events.contract.ActionRecorded` on the audit stream, so
the same codec, tools and projections read it.  Entries are made only by
:mod:`consumers.actions` (one ``intent`` and one outcome per action, or one
``planned`` in a dry run); this module builds them, counts them in the metrics,
and folds them back into one line per action for the readers (``inspect``,
the projections, the chaos test).  Each entry written is also one log line
(so ``reconciler run``'s output shows every action as it happens).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events import metrics
from events.contract import ActionOutcome, ActionRecorded, Source
from events.ids import new_event_id

log = logging.getLogger(__name__)

OUTCOMES: tuple[ActionOutcome, ...] = ("done", "skipped", "failed", "reverted", "planned")
"""What an action ended as; ``intent`` is not among them."""


def entry(*, source: Source, key: str, cause_id: str | None, cause_type: str | None,
          action: str, target: str, outcome: ActionOutcome, action_id: str,
          dry_run: bool = False, reason: str = "", before: dict[str, Any] | None = None,
          after: dict[str, Any] | None = None) -> ActionRecorded:
    """One audit entry (text fields cut to what the contract allows)."""
    return ActionRecorded(
        id=new_event_id(), occurred_at=datetime.now(UTC), source=source, key=key,
        cause_id=cause_id, cause_type=cause_type, action=action, target=target[:512],
        outcome=outcome, action_id=action_id, dry_run=dry_run, reason=reason[:512],
        before=before, after=after)


def log_action(entry: ActionRecorded) -> None:
    """One readable line per entry: what, outcome, target, why, and the event that caused it."""
    why = f": {entry.reason}" if entry.reason else ""
    cause = f" (cause {entry.cause_type} {entry.cause_id})" if entry.cause_id else ""
    log.info("%s %s %s%s%s", entry.action, entry.outcome, entry.target, why, cause,
             extra={"key": entry.key, "action": entry.action, "outcome": entry.outcome,
                    "cause_id": entry.cause_id, "action_id": entry.action_id})


def count(recorded: ActionRecorded, *, cause_at: datetime | None) -> None:
    """An entry was written: actions by outcome, reaction latency of ``done``, and one log
    line per action (its outcome or plan; an intent is not a line of its own)."""
    if recorded.outcome != "intent":
        log_action(recorded)
    metrics.ACTIONS.labels(recorded.action, recorded.outcome).inc()
    if cause_at is not None and recorded.outcome == "done":
        metrics.REACTION_LATENCY.labels(recorded.action).observe(
            max(0.0, time.time() - cause_at.timestamp()))


@dataclass(frozen=True, slots=True)
class Folded:
    """One action as a reader shows it: its intent and its outcome, one line."""

    action_id: str
    intent: ActionRecorded | None
    outcome: ActionRecorded | None

    @property
    def last(self) -> ActionRecorded:
        entry = self.outcome or self.intent
        assert entry is not None
        return entry

    @property
    def state(self) -> str:
        """The outcome, or ``open`` for an intent not settled yet."""
        return self.outcome.outcome if self.outcome is not None else "open"


def fold(entries: Iterable[ActionRecorded]) -> list[Folded]:
    """Entries folded per action id, in the order the actions began.

    An entry without an action id (written before action ids existed) is an
    action of its own.
    """
    intents: dict[str, ActionRecorded] = {}
    outcomes: dict[str, ActionRecorded] = {}
    order: list[str] = []
    for e in entries:
        aid = e.action_id or f"entry:{e.id}"
        if aid not in intents and aid not in outcomes:
            order.append(aid)
        if e.outcome == "intent":
            intents.setdefault(aid, e)
        else:
            outcomes.setdefault(aid, e)
    return [Folded(aid, intents.get(aid), outcomes.get(aid)) for aid in order]
