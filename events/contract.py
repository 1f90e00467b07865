"""The event contract: every event this project publishes, as one tagged union.

Each event is a frozen, keyword-only msgspec Struct with an explicit wire tag
(the ``type`` field), so renaming a class never changes the wire format.  All
of them share the envelope fields of :class:`EventBase`:

* ``id`` -- time-ordered (a ULID, see :mod:`events.ids`);
* ``occurred_at`` -- when the change happened, UTC;
* ``source`` -- which source saw it;
* ``key`` -- a conversation key ``{phone}:{channel}`` or a session name;
* ``cause_id`` -- the id of the event that caused this one, if any.

Schema evolution: new fields get defaults, tags never change, and
``SCHEMA_VERSION`` is raised only for a change old readers cannot decode.
The checked-in JSON Schema (``events/events.schema.json``) is generated from
this module; a test fails when the two drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

SCHEMA_VERSION = 1

UtcDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
"""A timezone-aware timestamp; naive ones are rejected on decode."""

BoundedText = Annotated[str, msgspec.Meta(max_length=512)]

Source = Literal["postgres", "folder", "gateway", "queues", "timers", "reconciler", "operator"]

CONVERSATIONS = "conversations"
SESSIONS = "sessions"
AUDIT = "audit"
NOTIFICATIONS = "notifications"

LANED = (CONVERSATIONS, SESSIONS)
"""Streams with a second, bulk lane (``{stream}:bulk``) that consumers read after the live one."""
BULK_SUFFIX = ":bulk"

Lane = Literal["live", "bulk"]
"""Which lane a publisher writes: ``bulk`` for snapshots, listings, re-listings and backlogs."""


# gc=False (inherited by every event; ConversationRow too): an event is a tree decoded
# from JSON or built from values, never part of a reference cycle, so the garbage
# collector need not track the one built per entry read (consumer-throughput: about 5 %).
# omit_defaults (inherited too): a field at its default is not written -- the schema gives
# every default, so readers fill it in -- which leaves the null bot fields and absent causes
# out of every entry (stream-memory: 0.94x the bytes in Redis).
class EventBase(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", gc=False,
                omit_defaults=True):
    """Envelope fields shared by every event."""

    stream: ClassVar[str] = CONVERSATIONS
    """Logical stream the event is published to (see :mod:`events.keys`)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    occurred_at: UtcDatetime
    source: Source
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    cause_id: Annotated[str, msgspec.Meta(max_length=64)] | None = None


# --------------------------------------------------------------------------
# PostgreSQL: one event per outbox row, carrying the old and new values.


class ConversationRow(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """The columns of a conversation this project cares about."""

    id: str
    phone: str
    channel: str
    """The ``phone_number_id`` column: which WhatsApp number the chat is on."""
    status: str
    assigned_to: str | None = None
    bot_flow_id: str | None = None
    bot_started_at: UtcDatetime | None = None


class RowChange(EventBase, frozen=True, kw_only=True):
    outbox_id: int
    """Position in the outbox: a row's changes have growing positions (the relay publishes
    single changes ahead of bulk statements' rows, so not every event of a key follows it)."""
    row: ConversationRow | None
    """The new values (``None`` once deleted)."""
    previous: ConversationRow | None = None
    """The old values (``None`` for an insert)."""
    origin: Literal["consumers"] | None = None
    """``consumers`` when the reconciler's consumers made the change (capture version 6):
    the handling that made it observed the key again afterwards, so it brings them no news."""


class ConversationCreated(RowChange, frozen=True, kw_only=True, tag="conversation.created"):
    """A row was inserted that is not (yet) waiting on the bot."""


class ConversationBotAssigned(RowChange, frozen=True, kw_only=True, tag="conversation.bot_assigned"):
    """``assigned_to`` became ``'bot'`` on an active conversation."""


class ConversationBotFlowCleared(
    RowChange, frozen=True, kw_only=True, tag="conversation.bot_flow_cleared"
):
    """``bot_flow_id`` went from a value to NULL."""


class ConversationChanged(
    RowChange, frozen=True, kw_only=True, tag="conversation.bot_fields_changed"
):
    """Any other change of the row: bot fields, a status other than to or from ``'closed'``,
    the phone or channel.  (The wire tag keeps its first name; tags never change.)"""


class ConversationClosed(RowChange, frozen=True, kw_only=True, tag="conversation.closed"):
    """``status`` became ``'closed'``."""


class ConversationLeftClosed(RowChange, frozen=True, kw_only=True, tag="conversation.reopened"):
    """``status`` went from ``'closed'`` to any other status (the tag says "reopened")."""


class ConversationDeleted(RowChange, frozen=True, kw_only=True, tag="conversation.deleted"):
    """The row was deleted."""


# --------------------------------------------------------------------------
# Session folder.


class SessionFileWritten(EventBase, frozen=True, kw_only=True, tag="session_file.written"):
    """A session file was created or its content changed."""

    name: BoundedText
    flow_id: BoundedText | None
    content_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    size_bytes: int


class SessionFileRemoved(EventBase, frozen=True, kw_only=True, tag="session_file.removed"):
    """A session file is gone (deleted, or renamed away)."""

    name: BoundedText


RejectReason = Literal[
    "invalid_json",
    "oversized",
    "not_ours",
    "symlink",
    "outside_folder",
    "not_a_file",
    "unreadable",
]


class SessionFileRejected(EventBase, frozen=True, kw_only=True, tag="session_file.rejected"):
    """A file in the sessions folder that was not followed, and why."""

    name: BoundedText
    reason: RejectReason
    detail: BoundedText = ""


# --------------------------------------------------------------------------
# Gateway sessions and their queues.


class SessionStarted(EventBase, frozen=True, kw_only=True, tag="session.started"):
    """A gateway announced a live session (its lease now exists)."""

    stream: ClassVar[str] = SESSIONS
    gateway: BoundedText | None = None
    lease_ttl_s: int = 30


class SessionStopped(EventBase, frozen=True, kw_only=True, tag="session.stopped"):
    """A gateway said a session ended (its lease was removed)."""

    stream: ClassVar[str] = SESSIONS
    gateway: BoundedText | None = None


class SessionExpired(EventBase, frozen=True, kw_only=True, tag="session.expired"):
    """A session's lease ran out without a stop: the gateway died or restarted."""

    stream: ClassVar[str] = SESSIONS


class QueueObserved(EventBase, frozen=True, kw_only=True, tag="queue.observed"):
    """Something was pushed to a session's outgoing queue (or a scan found one)."""

    stream: ClassVar[str] = SESSIONS
    queue: BoundedText
    length: int | None = None


# --------------------------------------------------------------------------
# Deadlines fired by the timer wheel.


class BotRunTimedOut(EventBase, frozen=True, kw_only=True, tag="conversation.bot_timed_out"):
    """A bot run reached its deadline; close it only if it is still this run."""

    flow_id: BoundedText | None
    started_at: UtcDatetime | None
    deadline: UtcDatetime


class OrphanGraceElapsed(EventBase, frozen=True, kw_only=True, tag="session_file.grace_elapsed"):
    """The grace period for a session file without a database row is over."""

    deadline: UtcDatetime


class ParkedRetentionDue(EventBase, frozen=True, kw_only=True, tag="session.parked_retention_due"):
    """Parked messages of a session may have outlived their retention."""

    stream: ClassVar[str] = SESSIONS
    deadline: UtcDatetime


class QuarantineRetentionDue(
    EventBase, frozen=True, kw_only=True, tag="session_file.quarantine_retention_due"
):
    """A quarantined session file may have outlived its retention; ``name`` is its quarantine name."""

    name: BoundedText
    deadline: UtcDatetime


# --------------------------------------------------------------------------
# Markers, requests and the audit trail.


class SnapshotStarted(EventBase, frozen=True, kw_only=True, tag="source.snapshot_started"):
    """A source begins listing its store; events until the end marker are the snapshot."""

    snapshot_id: BoundedText
    scope: Literal["conversations", "sessions"] = "conversations"


class SnapshotFinished(EventBase, frozen=True, kw_only=True, tag="source.snapshot_finished"):
    """A source finished listing its store; ``items`` events were in the snapshot."""

    snapshot_id: BoundedText
    items: int
    scope: Literal["conversations", "sessions"] = "conversations"


class SourceResynced(EventBase, frozen=True, kw_only=True, tag="source.resynced"):
    """A source reconnected or restarted and closed the gap by re-listing its store."""

    reason: BoundedText
    scope: Literal["conversations", "sessions"] = "conversations"


class ReconcileRequested(EventBase, frozen=True, kw_only=True, tag="reconcile.requested"):
    """An operator asked for a key to be reconciled through the normal path."""

    scope: Literal["conversations", "sessions"]
    reason: BoundedText = ""


ActionOutcome = Literal["intent", "done", "planned", "skipped", "failed", "reverted"]
"""``intent`` comes first, before any store is touched; exactly one of ``done``,
``skipped``, ``failed`` or ``reverted`` follows it (same ``action_id``).  A dry
run records ``planned`` alone."""


class ActionRecorded(EventBase, frozen=True, kw_only=True, tag="audit.action"):
    """One step of an action: its intent, or its outcome (see :mod:`consumers.actions`)."""

    stream: ClassVar[str] = AUDIT
    action: BoundedText
    target: BoundedText
    outcome: ActionOutcome
    action_id: Annotated[str, msgspec.Meta(max_length=64)] = ""
    """Deterministic id shared by an action's intent and its outcome ("" before 2026-12)."""
    dry_run: bool = False
    reason: BoundedText = ""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    cause_type: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    """The wire tag of the cause event (``cause_id``), when there is one."""


# --------------------------------------------------------------------------
# Outbound notifications (consumers/notifier.py).


class WebhookDue(EventBase, frozen=True, kw_only=True, tag="webhook.due"):
    """One notification to POST to one URL; ``key`` is ``{notification_id}:{url digest}``."""

    stream: ClassVar[str] = NOTIFICATIONS
    notification_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    """The idempotency key receivers dedupe on: the action id (or the event's id)."""
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    body: str
    """The JSON document, exactly as it is sent (and signed) on every try."""


Event = (
    ConversationCreated
    | ConversationBotAssigned
    | ConversationBotFlowCleared
    | ConversationChanged
    | ConversationClosed
    | ConversationLeftClosed
    | ConversationDeleted
    | SessionFileWritten
    | SessionFileRemoved
    | SessionFileRejected
    | SessionStarted
    | SessionStopped
    | SessionExpired
    | QueueObserved
    | BotRunTimedOut
    | OrphanGraceElapsed
    | ParkedRetentionDue
    | QuarantineRetentionDue
    | SnapshotStarted
    | SnapshotFinished
    | SourceResynced
    | ReconcileRequested
    | ActionRecorded
    | WebhookDue
)
"""Every event, as one tagged union: decode with ``type=Event``."""

EVENT_TYPES: tuple[type[EventBase], ...] = Event.__args__

ROW_CHANGES: tuple[type[RowChange], ...] = tuple(
    t for t in EVENT_TYPES if issubclass(t, RowChange)
)


def tag_of(event_type: type[EventBase]) -> str:
    """The wire tag of an event class."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


TAGS: frozenset[str] = frozenset(tag_of(t) for t in EVENT_TYPES)


def stream_of(event: EventBase) -> str:
    """The logical stream an event belongs on.

    Markers and requests carry their scope; everything else declares its
    stream on the class.
    """
    scope = getattr(event, "scope", None)
    if isinstance(scope, str):
        return scope
    return event.stream
