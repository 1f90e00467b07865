"""The act path of group ``conversations``: its changes, as actions, and how each is settled.

Each change the rule table asks for -- backfill a flow, close a bot run, clear
bot fields, quarantine a session file, purge a quarantine entry -- is an
:class:`consumers.actions.Action` carried out by :class:`consumers.actions.Actions`
(intent first, one outcome; only planned in a dry run).  :meth:`ConversationActs.check`
is how an intent left without an outcome is settled from the stores:

* ``quarantine_file``: the quarantine record names the action id that moved it;
* a row change: the conditional UPDATE took if the row still is the one
  decided on and holds the values the action writes (a later change of those
  very columns by the CRM makes it read as not carried out);
* ``purge_quarantine``: the entry is gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from consumers.actions import Action, Actions, Result, done, reverted, skipped
from consumers.errors import TemporaryError
from consumers.stores.conversations_sql import ConversationsSql, Row
from consumers.stores.session_folder import FileState, QuarantineError, QuarantineRecord, SessionFiles
from events.contract import ActionRecorded, EventBase, QuarantineRetentionDue
from events.envelope import E, new_event
from events.keys import split_conversation_key
from events.settings import Settings
from events.timer_wheel import TimerWheel

BACKFILL, CLOSE, CLEAR = "backfill_flow", "close_conversation", "clear_bot_fields"
QUARANTINE, PURGE = "quarantine_file", "purge_quarantine"
ROW_CHANGES = (BACKFILL, CLOSE, CLEAR)
BOT = "bot"

Guard = Callable[[FileState], Awaitable[bool]]


def row_after(verb: str, row: Row, flow_id: str | None = None) -> dict[str, Any]:
    """The row as the change ``verb`` leaves it (``as_dict`` form)."""
    before = row.as_dict()
    if verb == BACKFILL:
        return {**before, "bot_flow_id": flow_id}
    if verb == CLOSE:
        return {**before, "status": "closed", "assigned_to": None, "bot_flow_id": None,
                "bot_started_at": None}
    return {**before, "bot_flow_id": None, "bot_started_at": None,
            "assigned_to": None if row.assigned_to == BOT else row.assigned_to}


class ConversationActs:
    """Carries out the changes of one conversations handler."""

    def __init__(self, *, settings: Settings, sql: ConversationsSql, files: SessionFiles,
                 actions: Actions, timers: TimerWheel) -> None:
        self.settings = settings
        self.sql = sql
        self.files = files
        self.actions = actions
        self.timers = timers

    async def row_change(self, verb: str, key: str, row: Row, cause: EventBase,
                         flow_id: str | None = None) -> Result:
        """Backfill, close or clear ``row`` if it is still as read."""
        async def act(_action_id: str) -> Result:
            if verb == BACKFILL:
                took = await self.sql.backfill_flow(row, flow_id or "")
            else:
                took = await (self.sql.close(row) if verb == CLOSE else self.sql.clear_bot_fields(row))
            if took:
                return done()
            return skipped("the row changed since it was read; judged again on its next event")

        action = Action(verb=verb, key=key, target=f"{self.settings.table}#{row.id}",
                        before=row.as_dict(), after=row_after(verb, row, flow_id), cause=cause)
        return await self.actions.run(action, act, check=self.check)

    async def quarantine(self, key: str, name: str, file: FileState, *, reason: str,
                         cause: EventBase, guard: Guard) -> Result:
        """Move the file aside if it is still the content decided on and ``guard`` agrees."""
        target = str(self.files.sessions_dir / name)

        async def act(action_id: str) -> Result:
            moved = await self.files.quarantine(
                name, key=key, reason=reason, cause=cause, expected_fingerprint=file.fingerprint,
                guard=guard, action_id=action_id)
            if moved.outcome == "failed":
                raise TemporaryError(moved.reason)  # the intent stays open; retried with backoff
            if moved.outcome == "reverted":  # moved, found not to be what was decided on, undone
                kept = moved.record
                return reverted(moved.reason, {"kept_as": str(self.files.quarantine_dir / kept.name)}
                                if kept else None)
            record = moved.record or self.files.records.moved_by(action_id)  # a twin moved it
            if moved.outcome != "done" and record is None:
                return skipped(moved.reason or "the file is gone, changed, or no longer to be moved")
            assert record is not None
            return await self._moved(record, cause)

        action = Action(verb=QUARANTINE, key=key, target=target, reason=reason, cause=cause,
                        before={"path": target, "flow_id": file.flow_id, "sha256": file.fingerprint},
                        after={"reason": reason})
        return await self.actions.run(action, act, check=self.check)

    async def purge(self, record: QuarantineRecord, cause: EventBase | None) -> Result:
        """Delete a quarantine entry past its retention."""
        target = str(self.files.quarantine_dir / record.name)

        async def act(_action_id: str) -> Result:
            try:
                gone = self.files.purge(record.name)
            except QuarantineError as e:
                return skipped(str(e))
            return done() if gone else skipped("the entry was already gone")

        action = Action(verb=PURGE, key=record.key, target=target, cause=cause,
                        before={"path": target, "original_path": record.original_path,
                                "quarantined_at": record.quarantined_at.isoformat()},
                        after={"deleted": True})
        return await self.actions.run(action, act, check=self.check)

    async def schedule_purge(self, record: QuarantineRecord, cause: EventBase | None) -> None:
        due = record.quarantined_at.timestamp() + self.settings.quarantine_retention_s
        await self.timers.schedule(f"purge:{record.name}", due, due_event(
            QuarantineRetentionDue, record.key, cause, due, name=record.name))

    async def check(self, intent: ActionRecorded) -> Result | None:
        """The outcome of an intent left open, read from the stores; ``None`` if not carried out."""
        if intent.action == QUARANTINE:
            record = self.files.records.moved_by(intent.action_id)
            return await self._moved(record, None) if record is not None else None
        if intent.action == PURGE:
            gone = not (self.files.quarantine_dir / intent.target.rsplit("/", 1)[-1]).exists()
            return done() if gone else None
        if intent.action in ROW_CHANGES:
            return await self._row_took(intent)
        return None

    async def _moved(self, record: QuarantineRecord, cause: EventBase | None) -> Result:
        await self.schedule_purge(record, cause)
        return done({"quarantined_as": str(self.files.quarantine_dir / record.name),
                     "reason": record.reason})

    async def _row_took(self, intent: ActionRecorded) -> Result | None:
        before, after = intent.before or {}, intent.after or {}
        rows = await self.sql.read_all(*split_conversation_key(intent.key))
        row = next((r for r in rows if r.as_dict()["id"] == before.get("id")), None)
        if row is None:
            return None
        now = row.as_dict()
        written = [k for k in after if after[k] != before.get(k)]
        if not all(now.get(k) == after[k] for k in written):
            return None
        return await self.actions.credited(intent)  # the row holds the values: whose change?


def due_event(kind: type[E], key: str, cause: EventBase | None, due: float, **fields: Any) -> E:
    """An event the timer wheel will publish: it occurs at its deadline, so its
    id and time say when it was due, not when it was scheduled."""
    return new_event(kind, at=utc(due), source="timers", key=key,
                     cause_id=cause.id if cause is not None else None, deadline=utc(due), **fields)


def utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)
