"""The audit trail: audit entries, built, counted and logged.

An entry is an :class:`events.contract.ActionRecorded` on the audit stream, so
the same codec, tools and projections read it.  Entries are made by
:mod:`consumers.actions` (one ``intent`` and one outcome per action, or one
``planned`` in a dry run; the gateway's start handshake in
:mod:`events.gateway` writes its restore the same way).  This module builds
them and counts them in the metrics, and each outcome is one log line (so
``reconciler run``'s output shows every action as it happens).  The readers
fold an intent and its outcome into one line per action
(``ops.commands.inspect.one_per_action``, ``projections.conversation_view.with_action``).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from events import metrics
from events.contract import ActionOutcome, ActionRecorded, Source
from events.envelope import new_event

log = logging.getLogger(__name__)


def entry(*, source: Source, key: str, cause_id: str | None, cause_type: str | None,
          action: str, target: str, outcome: ActionOutcome, action_id: str,
          dry_run: bool = False, reason: str = "", before: dict[str, Any] | None = None,
          after: dict[str, Any] | None = None) -> ActionRecorded:
    """One audit entry (text fields cut to what the contract allows)."""
    return new_event(
        ActionRecorded, source=source, key=key,
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
