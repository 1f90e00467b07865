"""The audit trail: every action, with its target, before/after and cause.

Every module that changes something records it here, in a dry run as
``planned``, and each entry is also one log line (so ``reconciler run``'s
output shows every action as it happens).  The entry is an :class:`events.contract.ActionRecorded` on the
audit stream, so the same codec, tools and projections read it.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from events import metrics
from events.contract import ActionOutcome, ActionRecorded, EventBase, Source, tag_of
from events.ids import new_event_id
from events.publisher import Publisher

log = logging.getLogger(__name__)


def log_action(entry: ActionRecorded) -> None:
    """One readable line per action: what, outcome, target, why, and the event that caused it."""
    why = f": {entry.reason}" if entry.reason else ""
    cause = f" (cause {entry.cause_type} {entry.cause_id})" if entry.cause_id else ""
    log.info("%s %s %s%s%s", entry.action, entry.outcome, entry.target, why, cause,
             extra={"key": entry.key, "action": entry.action, "outcome": entry.outcome,
                    "cause_id": entry.cause_id})


class Auditor:
    """Appends :class:`ActionRecorded` events to the audit stream."""

    def __init__(self, publisher: Publisher, *, dry_run: bool, source: Source = "reconciler") -> None:
        self._publisher = publisher
        self.dry_run = dry_run
        self._source = source

    async def record(
        self,
        *,
        action: str,
        target: str,
        key: str,
        outcome: ActionOutcome,
        cause: EventBase | None,
        reason: str = "",
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> ActionRecorded:
        """Record one action; ``outcome`` becomes ``planned`` in a dry run."""
        if self.dry_run and outcome == "done":
            outcome = "planned"
        entry = ActionRecorded(
            id=new_event_id(),
            occurred_at=datetime.now(UTC),
            source=self._source,
            key=key,
            cause_id=cause.id if cause is not None else None,
            cause_type=tag_of(type(cause)) if cause is not None else None,
            action=action,
            target=target[:512],
            outcome=outcome,
            dry_run=self.dry_run,
            reason=reason[:512],
            before=before,
            after=after,
        )
        await self._publisher.publish(entry)
        log_action(entry)
        metrics.ACTIONS.labels(action, outcome).inc()
        if cause is not None and outcome == "done":
            metrics.REACTION_LATENCY.labels(action).observe(
                max(0.0, time.time() - cause.occurred_at.timestamp()))
        return entry
