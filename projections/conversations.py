"""The conversations read model: per conversation key, the story so far.

Each item says what the database says (the last ``conversation.*`` row
image), what the file says (``session_file.*`` events), which rules of the
rule table the two break (:func:`projections.rules.broken_rules`), since when
the conversation has been inconsistent, and the last actions taken on it,
with their causes (``audit.action`` events).

Times come from the events (``occurred_at``), never from the clock, so a
replay folds exactly the state the live runner folded.  Indexes:
``inconsistent:{kind}`` (score: since when), one per kind, for the gauges and
for listing the oldest problems first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from events.contract import (
    ROW_CHANGES,
    ActionRecorded,
    BotRunTimedOut,
    ConversationRow,
    Event,
    SessionFileRemoved,
    SessionFileWritten,
)
from events.keys import split_conversation_key
from projections.encoding import ItemCodec
from projections.rules import FileView, broken_rules

NAME = "conversations"
RECENT_ACTIONS = 5
"""Actions kept per conversation (the audit stream has them all)."""


# Views are immutable and hold no cycles, so the collector need not track them
# (``gc=False``): a replay caches one per conversation, and tracking them made
# full collections take half its time.
class ActionSeen(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    id: str
    at: datetime
    action: str
    outcome: str
    cause_id: str | None = None
    target: str = ""
    dry_run: bool = False
    action_id: str = ""


def with_action(actions: tuple[ActionSeen, ...], event: ActionRecorded) -> tuple[ActionSeen, ...]:
    """The recent actions after ``event``: one line per action, its outcome replacing its
    intent (an intent still alone shows as ``intent``)."""
    seen = ActionSeen(id=event.id, at=event.occurred_at, action=event.action,
                      outcome=event.outcome, cause_id=event.cause_id, target=event.target,
                      dry_run=event.dry_run, action_id=event.action_id)
    if event.action_id:
        for n, earlier in enumerate(actions):
            if earlier.action_id == event.action_id:
                if event.outcome == "intent":
                    return actions
                return (*actions[:n], seen, *actions[n + 1:])
    return (*actions, seen)[-RECENT_ACTIONS:]


class ConversationView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    key: str
    row: ConversationRow | None = None
    row_deleted: bool = False
    file_present: bool = False
    file_name: str | None = None
    file_flow_id: str | None = None
    timeout_fired_for: datetime | None = None
    """``bot_started_at`` of a run whose timeout fired (cleared when the run changes)."""
    kinds: tuple[str, ...] = ()
    inconsistent_since: datetime | None = None
    changed_at: datetime | None = None
    actions: tuple[ActionSeen, ...] = ()

    @property
    def consistent(self) -> bool:
        return not self.kinds


_codec = ItemCodec(ConversationView)


def _replace(view: ConversationView, **changes: Any) -> ConversationView:
    return msgspec.structs.replace(view, **changes)


def _with_rules(view: ConversationView, at: datetime) -> ConversationView:
    """Recompute the broken rules and when the inconsistency began."""
    fired = view.timeout_fired_for
    if view.row is None or view.row.bot_started_at != fired:
        fired = None
    kinds = broken_rules(view.row, FileView(view.file_present, view.file_flow_id),
                         timeout_fired_for=fired)
    since = view.inconsistent_since if view.kinds and kinds else (at if kinds else None)
    return _replace(view, kinds=kinds, inconsistent_since=since, changed_at=at,
                    timeout_fired_for=fired)


def fold(view: ConversationView | None, event: Event) -> ConversationView | None:
    """The view after ``event`` (``view`` is ``None`` for a key never seen)."""
    current = view or ConversationView(key=event.key)
    if isinstance(event, ROW_CHANGES):
        current = _replace(current, row=event.row, row_deleted=event.row is None)
    elif isinstance(event, SessionFileWritten):
        current = _replace(current, file_present=True, file_name=event.name,
                           file_flow_id=event.flow_id)
    elif isinstance(event, SessionFileRemoved):
        current = _replace(current, file_present=False, file_flow_id=None)
    elif isinstance(event, BotRunTimedOut):
        current = _replace(current, timeout_fired_for=event.started_at)
    elif isinstance(event, ActionRecorded):
        return _replace(current, actions=with_action(current.actions, event))
    else:
        return view
    return _with_rules(current, event.occurred_at)


def _is_conversation_key(key: str) -> bool:
    try:
        split_conversation_key(key)
    except ValueError:
        return False
    return True


class ConversationsModel:
    """The conversations projection (see :class:`projections.fold.Model`)."""

    name: str = NAME
    streams: tuple[str, ...] = ("conversations", "audit")

    def item_key(self, event: Event) -> str | None:
        if isinstance(event, ActionRecorded):
            return event.key if _is_conversation_key(event.key) else None
        return event.key

    def apply(self, item: ConversationView | None, event: Event) -> ConversationView | None:
        return fold(item, event)

    def encode(self, item: ConversationView) -> bytes:
        return _codec.encode(item)

    def decode(self, raw: bytes) -> ConversationView:
        return _codec.decode(raw)

    def indexes(self, item: ConversationView) -> dict[str, float]:
        if item.inconsistent_since is None:
            return {}
        since = item.inconsistent_since.timestamp()
        return {f"inconsistent:{kind}": since for kind in item.kinds}
