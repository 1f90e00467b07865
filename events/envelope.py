"""Making an event: the one place its envelope (id and time) is filled in.

Every event this project originates gets a fresh time-ordered id
(:func:`events.ids.new_event_id`) and the time it happened, by default now.
Events taken from a durable origin (an outbox row) get a derived id instead, so
publishing them twice gives one event; the relay makes those itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from events.contract import EventBase
from events.ids import new_event_id

E = TypeVar("E", bound=EventBase)


def new_event(kind: type[E], /, *, at: datetime | None = None, **fields: Any) -> E:
    """An event of ``kind`` with a new id, that happens ``at`` (default: now).

    The id is ordered by the later of ``at`` and now: a deadline scheduled on
    the timer wheel is ordered as if made when it falls due, while an event
    dated in the past (a file's modification time) is still ordered by when it
    was seen, so ids never run behind publication.
    """
    now = datetime.now(UTC)
    if at is None:
        at = now
    return kind(id=new_event_id(max(at, now)), occurred_at=at, **fields)
