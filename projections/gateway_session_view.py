"""The sessions read model: per gateway session, is it live, its queue, its parked messages.

Lifecycle (``session.started|stopped|expired``) and queue observations come
from the sessions stream; parked counts from the audit stream, where the
session handler records ``park_queue``, ``restore_parked`` and
``drop_parked``.  The parked count is taken from the action's ``after``
image: ``after["parked"]`` (messages parked for the session afterwards) when
given, else ``after["count"]`` (or the length of ``after["messages"]``)
moved by the action.  Indexes: ``live`` (score: since when) and ``parked``
(score: how many), so the CLI lists them without reading every item.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from events.contract import (
    ActionRecorded,
    Event,
    QueueObserved,
    SessionExpired,
    SessionStarted,
    SessionStopped,
)
from events.keys import SESSION_NAME
from projections.conversation_view import ActionSeen, with_action
from projections.encoding import ItemCodec

NAME = "sessions"
PARK_ACTIONS = frozenset({"park_queue", "restore_parked", "drop_parked"})

State = Literal["unknown", "live", "stopped", "expired"]


class SessionView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    key: str
    state: State = "unknown"
    since: datetime | None = None
    gateway: str | None = None
    queue: str | None = None
    queue_length: int | None = None
    queue_seen_at: datetime | None = None
    parked: int = 0
    actions: tuple[ActionSeen, ...] = ()


_codec = ItemCodec(SessionView)


def _replace(view: SessionView, **changes: Any) -> SessionView:
    return msgspec.structs.replace(view, **changes)


def _moved(after: dict[str, Any]) -> int:
    count = after.get("count")
    if isinstance(count, int):
        return count
    messages = after.get("messages")
    return len(messages) if isinstance(messages, list) else 0


def parked_after(parked: int, event: ActionRecorded) -> int:
    """The parked count after a park/restore/drop action (unchanged unless it was done)."""
    if event.outcome != "done" or event.dry_run:
        return parked
    after = event.after or {}
    total = after.get("parked")
    if isinstance(total, int):
        return max(0, total)
    if event.action == "park_queue":
        return parked + _moved(after)
    if event.action == "restore_parked":
        return 0
    return max(0, parked - _moved(after)) if "count" in after or "messages" in after else 0


def fold(view: SessionView | None, event: Event) -> SessionView | None:
    """The view after ``event``."""
    current = view or SessionView(key=event.key)
    if isinstance(event, SessionStarted):
        return _replace(current, state="live", since=event.occurred_at, gateway=event.gateway)
    if isinstance(event, SessionStopped):
        return _replace(current, state="stopped", since=event.occurred_at)
    if isinstance(event, SessionExpired):
        return _replace(current, state="expired", since=event.occurred_at)
    if isinstance(event, QueueObserved):
        return _replace(current, queue=event.queue, queue_length=event.length,
                        queue_seen_at=event.occurred_at)
    if isinstance(event, ActionRecorded):
        parked = parked_after(current.parked, event) if event.action in PARK_ACTIONS else current.parked
        return _replace(current, parked=parked, actions=with_action(current.actions, event))
    return view


class SessionsModel:
    """The sessions projection (see :class:`projections.fold.Model`)."""

    name: str = NAME
    streams: tuple[str, ...] = ("sessions", "audit")

    def item_key(self, event: Event) -> str | None:
        if isinstance(event, ActionRecorded) and not SESSION_NAME.fullmatch(event.key):
            return None
        return event.key

    def apply(self, item: SessionView | None, event: Event) -> SessionView | None:
        return fold(item, event)

    def encode(self, item: SessionView) -> bytes:
        return _codec.encode(item)

    def decode(self, raw: bytes) -> SessionView:
        return _codec.decode(raw)

    def indexes(self, item: SessionView) -> dict[str, float]:
        out: dict[str, float] = {}
        if item.state == "live" and item.since is not None:
            out["live"] = item.since.timestamp()
        if item.parked:
            out["parked"] = float(item.parked)
        return out
