"""Small, valid events for projection tests, with explicit times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from events.contract import (
    ActionRecorded,
    BotRunTimedOut,
    ConversationBotAssigned,
    ConversationClosed,
    ConversationRow,
    EventBase,
    OrphanGraceElapsed,
    QueueObserved,
    SessionExpired,
    SessionFileRemoved,
    SessionFileWritten,
    SessionStarted,
)
from events.ids import new_event_id

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SHA = "0" * 64


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _base(key: str, t: float, source: str) -> dict[str, Any]:
    return {"id": new_event_id(at(t)), "occurred_at": at(t), "source": source, "key": key}


def row(key: str, *, status: str = "active", assigned_to: str | None = "bot",
        flow: str | None = "flow-a", started: datetime | None = T0) -> ConversationRow:
    phone, channel = key.split(":")
    return ConversationRow(id=phone, phone=phone, channel=channel, status=status,
                           assigned_to=assigned_to, bot_flow_id=flow, bot_started_at=started)


def db(key: str, t: float, **fields: Any) -> EventBase:
    new = row(key, **fields)
    kind = ConversationClosed if new.status == "closed" else ConversationBotAssigned
    return kind(**_base(key, t, "postgres"), outbox_id=int(t * 1000), row=new)


def file_written(key: str, t: float, flow: str | None = "flow-a") -> SessionFileWritten:
    phone, channel = key.split(":")
    return SessionFileWritten(**_base(key, t, "folder"), name=f"whatsapp_{phone}_{channel}.json",
                              flow_id=flow, content_sha256=SHA, size_bytes=20)


def file_removed(key: str, t: float) -> SessionFileRemoved:
    phone, channel = key.split(":")
    return SessionFileRemoved(**_base(key, t, "folder"), name=f"whatsapp_{phone}_{channel}.json")


def timed_out(key: str, t: float, started: datetime | None = T0) -> BotRunTimedOut:
    return BotRunTimedOut(**_base(key, t, "timers"), flow_id="flow-a", started_at=started,
                          deadline=at(t))


def rejudge(key: str, t: float) -> OrphanGraceElapsed:
    """The deadline the handler sets for when a file's settle window ends."""
    return OrphanGraceElapsed(**_base(key, t, "timers"), deadline=at(t))


def action(key: str, t: float, name: str, *, cause: str | None = None,
           after: dict[str, Any] | None = None) -> ActionRecorded:
    return ActionRecorded(**{**_base(key, t, "reconciler"), "cause_id": cause}, action=name,
                          target=key, outcome="done", after=after)


def started(name: str, t: float) -> SessionStarted:
    return SessionStarted(**_base(name, t, "gateway"), gateway="gw-1")


def expired(name: str, t: float) -> SessionExpired:
    return SessionExpired(**_base(name, t, "gateway"))


def queue_seen(name: str, t: float, length: int, queue: str) -> QueueObserved:
    return QueueObserved(**_base(name, t, "queues"), queue=queue, length=length)
