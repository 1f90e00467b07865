"""The outbox: its object names, and turning one outbox row into one event.

The trigger installed by ``reconciler migrate`` writes one row per captured
change: the operation (``INSERT``/``UPDATE``/``DELETE``) and the old and new
values of the columns we care about, as JSON objects with our own field names
(``id, phone, channel, status, assigned_to, bot_flow_id, bot_started_at``),
whatever the columns are called in the user's table.

Everything here is pure: :func:`outbox_names` derives every object name from
the table name (so several tables, and many test tables, can coexist in one
database), and :func:`classify` / :func:`event_from_row` decide which semantic
event a row is, tested on plain values.  A row that cannot be read raises
:class:`BadOutboxRow`; the relay reports it and moves on.

:func:`events_from_row` is what the relay publishes: the row's event, and
where the change moved the row to another key (its phone or channel
changed), the same change under the old key too, so the old key's file is
judged again.  A change too large to publish whole still wakes its key, with
a key-only ``reconcile.requested`` (the handler reads the stores anyway).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import msgspec

from events.codec import MAX_ENTRY_BYTES, encode_json
from events.contract import (
    ConversationBotAssigned,
    ConversationBotFlowCleared,
    ConversationChanged,
    ConversationClosed,
    ConversationCreated,
    ConversationDeleted,
    ConversationLeftClosed,
    ConversationRow,
    EventBase,
    ReconcileRequested,
    RowChange,
)
from events.errors import ReconcilerError
from events.ids import derived_id
from events.keys import conversation_key
from events.sql import quote_ident

SCHEMA = "reconciler"
"""The PostgreSQL schema holding everything this project installs."""

CONSUMERS_APPLICATION_NAME = "reconciler-consumers"
"""The ``application_name`` the consumers connect with.  From capture version 6 on, the
outbox rows their own writes leave have ``origin`` :data:`CONSUMERS_ORIGIN`, and the
relay publishes them on the bulk lane (their handling already saw the change)."""
CONSUMERS_ORIGIN: Final = "consumers"

MAX_IDENTIFIER = 63

Operation = Literal["INSERT", "UPDATE", "DELETE"]
RowChangeType = type[RowChange]


class BadOutboxRow(ReconcilerError):
    """An outbox row that cannot become an event; ``reason`` is a short, stable word."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _name(prefix: str, table: str) -> str:
    """``prefix`` + the table name, shortened with a hash when over 63 bytes."""
    base = prefix + table.replace(".", "__")
    if len(base.encode()) <= MAX_IDENTIFIER:
        return base
    digest = hashlib.blake2b(table.encode(), digest_size=4).hexdigest()
    return base.encode()[: MAX_IDENTIFIER - 9].decode(errors="ignore") + "_" + digest


@dataclass(frozen=True, slots=True)
class OutboxNames:
    """Names of the objects installed for one conversations table (unquoted)."""

    table: str
    outbox: str
    function: str
    trigger: str
    update_trigger: str
    delete_trigger: str
    channel: str

    @property
    def qualified_outbox(self) -> str:
        return f"{quote_ident(SCHEMA)}.{quote_ident(self.outbox)}"

    @property
    def qualified_function(self) -> str:
        return f"{quote_ident(SCHEMA)}.{quote_ident(self.function)}"


def outbox_names(table: str) -> OutboxNames:
    return OutboxNames(
        table=table,
        outbox=_name("outbox_", table),
        function=_name("capture_", table),
        trigger=_name("reconciler_capture_", table),
        update_trigger=_name("reconciler_capture_upd_", table),
        delete_trigger=_name("reconciler_capture_del_", table),
        channel=_name("reconciler_", table),
    )


# --------------------------------------------------------------------------
# Classification.

_row_decoder = msgspec.json.Decoder(ConversationRow)


def classify(op: str, old: ConversationRow | None, new: ConversationRow | None) -> RowChangeType:
    """Which semantic event a change is; the first rule that matches wins."""
    if op == "DELETE":
        return ConversationDeleted
    if new is None:
        raise BadOutboxRow("missing_row", f"{op} without new values")
    waiting_on_bot = new.status == "active" and new.assigned_to == "bot"
    if op == "INSERT" or old is None:
        return ConversationBotAssigned if waiting_on_bot else ConversationCreated
    if new.status != old.status and new.status == "closed":
        return ConversationClosed
    if new.status != old.status and old.status == "closed":
        return ConversationLeftClosed
    if waiting_on_bot and old.assigned_to != "bot":
        return ConversationBotAssigned
    if old.bot_flow_id is not None and new.bot_flow_id is None:
        return ConversationBotFlowCleared
    return ConversationChanged


def _row(raw: str | bytes | None, which: str) -> ConversationRow | None:
    if raw is None:
        return None
    try:
        return _row_decoder.decode(raw)
    except msgspec.DecodeError as e:
        raise BadOutboxRow("invalid_row", f"{which} values: {e}") from e
    except RecursionError as e:
        raise BadOutboxRow("invalid_row", f"{which} values: JSON nested too deeply") from e


def event_from_row(
    *, table: str, outbox_id: int, op: str, old: str | bytes | None, new: str | bytes | None,
    created_at: datetime | None, origin: str | None = None,
) -> EventBase:
    """The one event an outbox row becomes; raises :class:`BadOutboxRow`."""
    if created_at is None or created_at.tzinfo is None:
        raise BadOutboxRow("invalid_row", "created_at is not a time between years 1 and 9999")
    if op not in ("INSERT", "UPDATE", "DELETE"):
        raise BadOutboxRow("invalid_op", f"operation {op[:20]!r}")
    previous, row = _row(old, "old"), _row(new, "new")
    kind = classify(op, previous, row)
    current = row if row is not None else previous
    if current is None:
        raise BadOutboxRow("missing_row", f"{op} without values")
    if not current.phone or not current.channel:
        raise BadOutboxRow("invalid_row", "empty phone or channel")
    event = kind(
        id=derived_id(created_at, f"outbox:{table}:{outbox_id}"),
        occurred_at=created_at,
        source="postgres",
        key=conversation_key(current.phone, current.channel),
        outbox_id=outbox_id,
        row=row,
        previous=previous,
        origin=CONSUMERS_ORIGIN if origin == CONSUMERS_ORIGIN else None,
    )
    if len(event.key) > 256 or len(encode_json(event)) > MAX_ENTRY_BYTES:
        raise BadOutboxRow("oversized", f"event of outbox row {outbox_id} is too large")
    return event


def events_from_row(
    *, table: str, outbox_id: int, op: str, old: str | bytes | None, new: str | bytes | None,
    created_at: datetime | None, origin: str | None = None,
) -> list[EventBase]:
    """Every event an outbox row becomes (see the module docstring); raises :class:`BadOutboxRow`."""
    try:
        event = event_from_row(table=table, outbox_id=outbox_id, op=op, old=old, new=new,
                               created_at=created_at, origin=origin)
    except BadOutboxRow as e:
        if e.reason != "oversized":
            raise
        return [_wake(table, outbox_id, _key_of(_row(new, "new") or _row(old, "old")), created_at)]
    assert isinstance(event, RowChange)
    before = event.previous
    if before is None or event.row is None:
        return [event]
    old_key = _key_of(before)
    if old_key == event.key:
        return [event]
    moved = msgspec.structs.replace(
        event, key=old_key, id=derived_id(event.occurred_at, f"outbox:{table}:{outbox_id}:old"))
    return [event, moved]


def _key_of(row: ConversationRow | None) -> str:
    if row is None or not row.phone or not row.channel:
        raise BadOutboxRow("invalid_row", "empty phone or channel")
    key = conversation_key(row.phone, row.channel)
    if len(key) > 256:
        raise BadOutboxRow("oversized", "phone and channel make a key over 256 characters")
    return key


def _wake(table: str, outbox_id: int, key: str, created_at: datetime | None) -> EventBase:
    """A key-only event for a change too large to publish: the handler reads the stores."""
    assert created_at is not None
    return ReconcileRequested(
        id=derived_id(created_at, f"outbox:{table}:{outbox_id}"), occurred_at=created_at,
        source="postgres", key=key, scope="conversations",
        reason=f"outbox row {outbox_id} too large to publish whole")
