"""The conversations read model: per conversation key, the story so far.

Each item says what the database says (every row of the key, from the
``conversation.*`` row images), what the file says (``session_file.*``
events), which rules of the rule table they break (the verdict of
:func:`projections.rules.verdict`, the very function the handler asks), since
when the conversation has been inconsistent, and the last actions taken on
it, with their causes (``audit.action`` events).  The clocks the rule table
keeps (first sight of a bot run without a start time) are folded from its
own verdicts, as the handler keeps them in Redis.

Times come from the events (``occurred_at``), never from the clock, so a
replay folds exactly the state the live runner folded.  Indexes:
``inconsistent:{kind}`` (score: since when), one per kind, for the gauges and
for listing the oldest problems first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from consumers.rules.conversation_rules import ForgetSeen, RememberSeen
from events.contract import (
    ROW_CHANGES,
    ActionRecorded,
    BotRunTimedOut,
    ConversationRow,
    Event,
    OrphanGraceElapsed,
    SessionFileRemoved,
    SessionFileWritten,
)
from events.keys import conversation_key, split_conversation_key
from events.settings import Settings
from projections.encoding import ItemCodec
from projections.rules import FileView, Limits, verdict

NAME = "conversations"
RECENT_ACTIONS = 5
"""Actions kept per conversation (the audit stream has them all)."""
REJUDGE = (BotRunTimedOut, OrphanGraceElapsed)
"""Deadlines: the rule table is asked again at their time (a timeout, a settle window)."""


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
    """The row image of the last row change (the rule table reads :attr:`rows`)."""
    rows: tuple[ConversationRow, ...] = ()
    """Every row of the key, by id."""
    row_versions: dict[str, tuple[datetime, int]] = {}
    """For each row id a change of this key carried, when and at which outbox position its
    newest change was captured (kept for rows that left the key too)."""
    row_deleted: bool = False
    file_present: bool = False
    file_name: str | None = None
    file_flow_id: str | None = None
    file_written_at: datetime | None = None
    bot_seen_at: datetime | None = None
    orphan_seen_at: datetime | None = None
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


def _with_rules(view: ConversationView, at: datetime, limits: Limits) -> ConversationView:
    """Ask the rule table at time ``at``; fold its clocks; note when the inconsistency began."""
    file = FileView(view.file_flow_id, modified_at=_unix(view.file_written_at)) \
        if view.file_present else None
    said = verdict(view.key, view.rows, file, at=at.timestamp(),
                   bot_seen_at=_unix(view.bot_seen_at), orphan_seen_at=_unix(view.orphan_seen_at),
                   limits=limits)
    clocks = {"bot": view.bot_seen_at, "orphan": view.orphan_seen_at}
    for action in said.actions:
        if isinstance(action, RememberSeen) and clocks[action.kind] is None:
            clocks[action.kind] = at
        elif isinstance(action, ForgetSeen):
            clocks[action.kind] = None
    kinds = said.kinds
    since = view.inconsistent_since if view.kinds and kinds else (at if kinds else None)
    return _replace(view, kinds=kinds, inconsistent_since=since, changed_at=at,
                    bot_seen_at=clocks["bot"], orphan_seen_at=clocks["orphan"])


def _unix(at: datetime | None) -> float | None:
    return at.timestamp() if at is not None else None


def _rows_after(view: ConversationView, change: Any, ids: set[str]) -> tuple[ConversationRow, ...]:
    """The key's rows once ``change`` of the rows ``ids`` is applied (a row that moved to
    another key leaves)."""
    rows = [r for r in view.rows if r.id not in ids]
    new = change.row
    if new is not None and conversation_key(new.phone, new.channel) == view.key:
        rows.append(new)
    return tuple(sorted(rows, key=lambda r: r.id))


def _newer(seen: tuple[datetime, int] | None, version: tuple[datetime, int]) -> bool:
    """Whether the change ``seen`` of a row was captured after the change at ``version``.

    The relay publishes single changes ahead of bulk statements' rows, so a row's older
    image can arrive after its newer one.  Changes of one row are captured in order
    (the row's lock orders them): both the capture time and the outbox id grow.  Both
    must say "older", so neither a reinstalled outbox (ids from 1 again) nor a clock
    set back makes a newer change look old."""
    return seen is not None and version[0] < seen[0] and version[1] < seen[1]


def fold(view: ConversationView | None, event: Event,
         limits: Limits | None = None) -> ConversationView | None:
    """The view after ``event`` (``view`` is ``None`` for a key never seen)."""
    current = view or ConversationView(key=event.key)
    if isinstance(event, ROW_CHANGES):
        ids = {r.id for r in (event.previous, event.row) if r is not None}
        version = (event.occurred_at, event.outbox_id)
        if any(_newer(current.row_versions.get(i), version) for i in ids):
            return view  # published after a newer change of its row (see _newer)
        current = _replace(current, row=event.row, row_deleted=event.row is None,
                           rows=_rows_after(current, event, ids),
                           row_versions={**current.row_versions, **dict.fromkeys(ids, version)})
    elif isinstance(event, SessionFileWritten):
        current = _replace(current, file_present=True, file_name=event.name,
                           file_flow_id=event.flow_id, file_written_at=event.occurred_at)
    elif isinstance(event, SessionFileRemoved):
        current = _replace(current, file_present=False, file_flow_id=None, file_written_at=None)
    elif isinstance(event, ActionRecorded):
        return _replace(current, actions=with_action(current.actions, event))
    elif not isinstance(event, REJUDGE):
        return view
    return _with_rules(current, event.occurred_at, limits or Limits())


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

    def __init__(self, settings: Settings | None = None) -> None:
        self.limits = Limits.of(settings) if settings is not None else Limits()

    def item_key(self, event: Event) -> str | None:
        if isinstance(event, ActionRecorded):
            return event.key if _is_conversation_key(event.key) else None
        return event.key

    def apply(self, item: ConversationView | None, event: Event) -> ConversationView | None:
        return fold(item, event, self.limits)

    def encode(self, item: ConversationView) -> bytes:
        return _codec.encode(item)

    def decode(self, raw: bytes) -> ConversationView:
        return _codec.decode(raw)

    def indexes(self, item: ConversationView) -> dict[str, float]:
        if item.inconsistent_since is None:
            return {}
        since = item.inconsistent_since.timestamp()
        return {f"inconsistent:{kind}": since for kind in item.kinds}
