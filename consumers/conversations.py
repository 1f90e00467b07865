"""Group ``conversations``: reconcile one conversation key with the rule table.

:func:`decide` is the rule table of DESIGN.md as a pure function of what was
observed (the database row, the session file, when clocks started, the time):

| database | session file | actions |
|---|---|---|
| no row | present | remember when first seen; after ``grace_s`` quarantine |
| active, bot, flow NULL | flowId F | backfill ``bot_flow_id = F`` |
| active, bot, started at T (else first seen) | any | deadline T + timeout; when due, close |
| active, not bot / closed | present | quarantine the file |
| closed with bot fields | any | clear the bot fields |

``active, bot, flow F / flowId F`` gets nothing but its deadline, and a file
of an active bot conversation is never quarantined.  A bot run with neither
``bot_started_at`` nor a flow anywhere is timed from when it was first seen.

:class:`ConversationsHandler` observes, decides and acts, and observes again
after a change it made (a close is followed at once by the quarantine of the
file it left behind).  It does not care which event woke it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from consumers.audit import Auditor
from consumers.errors import PermanentError, TemporaryError
from consumers.keyqueue import Delivery
from consumers.stores.conversations_sql import ConversationsSql, Row
from consumers.stores.pauses import PauseStore
from consumers.stores.session_files import FileState, QuarantineError, SessionFiles
from events.contract import (
    BotRunTimedOut,
    EventBase,
    OrphanGraceElapsed,
    QuarantineRetentionDue,
    ReconcileRequested,
    SessionFileRejected,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
from events.ids import new_event_id
from events.keys import split_conversation_key
from events.settings import Settings
from events.timers import TimerWheel

log = logging.getLogger(__name__)

BOT = "bot"
ACTIVE = "active"
DUE_SLACK_S = 0.05
"""A deadline this close is due (clocks of the timer loop and the handler differ a little)."""


@dataclass(frozen=True, kw_only=True)
class Observed:
    """Everything :func:`decide` looks at, read from the stores just before."""

    key: str
    now: float
    row: Row | None
    file: FileState | None
    bot_seen_at: float | None = None
    """When this key was first seen as a bot run without ``bot_started_at``."""
    orphan_seen_at: float | None = None
    """When this key's file was first seen without a database row."""
    bot_timeout_s: float = 1800.0
    grace_s: float = 30.0


@dataclass(frozen=True)
class BackfillFlow:
    flow_id: str


@dataclass(frozen=True)
class CloseConversation:
    """Close the bot run (status closed, bot fields cleared) if it is still the run read."""


@dataclass(frozen=True)
class ClearBotFields:
    pass


@dataclass(frozen=True)
class QuarantineFile:
    reason: str


@dataclass(frozen=True)
class ScheduleBotTimeout:
    member: str
    due: float
    flow_id: str | None


@dataclass(frozen=True)
class ScheduleOrphanGrace:
    member: str
    due: float


@dataclass(frozen=True)
class RememberSeen:
    kind: str
    at: float


@dataclass(frozen=True)
class ForgetSeen:
    kind: str


Action = (BackfillFlow | CloseConversation | ClearBotFields | QuarantineFile
          | ScheduleBotTimeout | ScheduleOrphanGrace | RememberSeen | ForgetSeen)

CHANGES = (BackfillFlow, CloseConversation, ClearBotFields, QuarantineFile)
"""Actions that change a store (audited, and only planned in a dry run)."""
CHANGE_VERBS: dict[type, str] = {BackfillFlow: "backfill_flow", CloseConversation: "close_conversation",
                                 ClearBotFields: "clear_bot_fields", QuarantineFile: "quarantine_file"}
"""The name each change is audited under (also when skipped: its key is paused)."""


def decide(o: Observed) -> list[Action]:
    """The actions the rule table asks for, in the order they are to be carried out."""
    if o.row is None:
        return _no_row(o)
    actions: list[Action] = [ForgetSeen("orphan")] if o.orphan_seen_at is not None else []
    if o.row.status == ACTIVE and o.row.assigned_to == BOT:
        return actions + _bot_run(o, o.row)
    if o.bot_seen_at is not None:
        actions.append(ForgetSeen("bot"))
    if o.row.status != ACTIVE and has_bot_fields(o.row):
        actions.append(ClearBotFields())
    if o.file is not None and o.file.movable:
        actions.append(QuarantineFile("closed" if o.row.status != ACTIVE else "not_bot"))
    return actions


def _bot_run(o: Observed, row: Row) -> list[Action]:
    actions: list[Action] = []
    flow = row.bot_flow_id
    file_flow = o.file.flow_id if o.file is not None else None
    if flow is None and file_flow is not None:
        actions.append(BackfillFlow(file_flow))
        flow = file_flow
    if row.bot_started_at is not None:
        start = row.bot_started_at.timestamp()
    elif o.bot_seen_at is not None:
        start = o.bot_seen_at
    else:
        start = o.now
        actions.append(RememberSeen("bot", start))
    due = start + o.bot_timeout_s
    if o.now >= due - DUE_SLACK_S:
        actions.append(CloseConversation())
    else:
        actions.append(ScheduleBotTimeout(f"bot:{o.key}:{round(start * 1000)}", due, flow))
    return actions


def _no_row(o: Observed) -> list[Action]:
    actions: list[Action] = [ForgetSeen("bot")] if o.bot_seen_at is not None else []
    if o.file is None or not o.file.movable:
        if o.orphan_seen_at is not None:
            actions.append(ForgetSeen("orphan"))
        return actions
    since = o.orphan_seen_at
    if since is None:
        since = o.now
        actions.append(RememberSeen("orphan", since))
    due = since + o.grace_s
    if o.now >= due - DUE_SLACK_S:
        actions.append(QuarantineFile("no_row"))
    else:
        actions.append(ScheduleOrphanGrace(f"orphan:{o.key}:{round(since * 1000)}", due))
    return actions


def has_bot_fields(row: Row) -> bool:
    return row.assigned_to == BOT or row.bot_flow_id is not None or row.bot_started_at is not None


def may_move_file(row: Row | None) -> bool:
    """The safety rule, checked again right before a move: never the file of a live bot run."""
    return row is None or row.status != ACTIVE or row.assigned_to != BOT


# --------------------------------------------------------------------------
# The handler: observe, decide, act.

MAX_ROUNDS = 4
"""Observe-decide-act rounds per call; each round after the first follows a change we made."""
SEEN_TTL_S = 30 * 86400
PLANNED_TTL_S = 7 * 86400
"""How long a dry run remembers that it already recorded an action as planned."""
INFORMATIONAL = (SnapshotStarted, SnapshotFinished, SourceResynced, SessionFileRejected)
"""Events that may carry a key that is not a conversation key; those are ignored."""


class ConversationsHandler:
    """``async (key, deliveries)`` for the ``conversations`` group."""

    def __init__(self, *, settings: Settings, sql: ConversationsSql, files: SessionFiles,
                 redis: Any, auditor: Auditor, timers: TimerWheel) -> None:
        self.settings = settings
        self.sql = sql
        self.files = files
        self.redis = redis
        self.auditor = auditor
        self.timers = timers
        self.keys = settings.keys
        self.pauses = PauseStore(redis, self.keys)

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        cause = deliveries[-1].event
        try:
            phone, channel = split_conversation_key(key)
            name = self.files.name_for(phone, channel)
        except ValueError as e:
            if all(isinstance(d.event, INFORMATIONAL) for d in deliveries):
                return
            raise PermanentError(f"not a conversation key: {e}") from e
        for d in deliveries:
            if isinstance(d.event, QuarantineRetentionDue):
                await self.purge_entry(d.event.name, cause=d.event)
        for _ in range(MAX_ROUNDS):
            observed = await self.observe(key, phone, channel, name)
            if not await self.apply(observed, decide(observed), name, cause):
                return
        log.warning("key %s still changing after %d rounds; the next event goes on", key,
                    MAX_ROUNDS, extra={"key": key, "stream": deliveries[-1].stream})

    async def observe(self, key: str, phone: str, channel: str, name: str) -> Observed:
        row = await self.sql.read(phone, channel)
        file = self.files.read(name)
        bot_seen, orphan_seen = await self.redis.mget(
            self.keys.first_seen("bot", key), self.keys.first_seen("orphan", key))
        flow = (row.bot_flow_id if row else None) or (file.flow_id if file else None)
        return Observed(key=key, now=time.time(), row=row, file=file,
                        bot_seen_at=_float(bot_seen), orphan_seen_at=_float(orphan_seen),
                        bot_timeout_s=self.settings.bot_timeout_for(flow),
                        grace_s=self.settings.grace_s)

    async def apply(self, o: Observed, actions: list[Action], name: str, cause: EventBase) -> bool:
        """Carry out ``actions``; ``True`` when the state changed and must be observed again."""
        for action in actions:
            if isinstance(action, RememberSeen):
                if not await self.redis.set(self.keys.first_seen(action.kind, o.key),
                                            repr(action.at), nx=True, ex=SEEN_TTL_S):
                    return True  # another consumer started the clock first: use its time
            elif isinstance(action, ForgetSeen):
                await self.redis.delete(self.keys.first_seen(action.kind, o.key))
            elif isinstance(action, ScheduleBotTimeout):
                await self.timers.schedule(action.member, action.due, BotRunTimedOut(
                    **_envelope(o.key, cause, action.due), flow_id=action.flow_id,
                    started_at=o.row.bot_started_at if o.row else None,
                    deadline=_utc(action.due)))
            elif isinstance(action, ScheduleOrphanGrace):
                await self.timers.schedule(action.member, action.due, OrphanGraceElapsed(
                    **_envelope(o.key, cause, action.due), deadline=_utc(action.due)))
            elif await self.change(o, action, name, cause) and not self.auditor.dry_run:
                return True
        return False

    async def change(self, o: Observed, action: Action, name: str, cause: EventBase) -> bool:
        """Make (or, in a dry run, plan) one change; ``True`` if it was made or planned."""
        if not self.auditor.dry_run and (reason := await self.pauses.gate(o.key)):
            await self.auditor.record(action=CHANGE_VERBS[type(action)], target=o.key, key=o.key,
                                      outcome="skipped", cause=cause, reason=reason,
                                      before=o.row.as_dict() if o.row else None)
            return False
        if isinstance(action, QuarantineFile):
            return await self.quarantine(o, action, name, cause)
        row = o.row
        assert row is not None
        table_target = f"{self.settings.table}#{row.id}"
        before = row.as_dict()
        write: Callable[[], Awaitable[bool]]
        if isinstance(action, BackfillFlow):
            verb, after = "backfill_flow", {**before, "bot_flow_id": action.flow_id}
            write = partial(self.sql.backfill_flow, row, action.flow_id)
        elif isinstance(action, CloseConversation):
            verb, after = "close_conversation", {**before, "status": "closed", "assigned_to": None,
                                                 "bot_flow_id": None, "bot_started_at": None}
            write = partial(self.sql.close, row)
        else:
            assert isinstance(action, ClearBotFields)
            verb = "clear_bot_fields"
            after = {**before, "bot_flow_id": None, "bot_started_at": None,
                     "assigned_to": None if row.assigned_to == BOT else row.assigned_to}
            write = partial(self.sql.clear_bot_fields, row)
        if self.auditor.dry_run:
            return await self.plan(verb, table_target, o.key, cause, before, after)
        if not await write():
            return False  # the row changed since it was read: observe again on the next event
        await self.auditor.record(action=verb, target=table_target, key=o.key, outcome="done",
                                  cause=cause, before=before, after=after)
        return True

    async def quarantine(self, o: Observed, action: QuarantineFile, name: str,
                         cause: EventBase) -> bool:
        assert o.file is not None
        target = str(self.files.sessions_dir / name)
        before = {"path": target, "flow_id": o.file.flow_id, "sha256": o.file.sha256}
        if self.auditor.dry_run:
            return await self.plan("quarantine_file", target, o.key, cause, before,
                                   {"reason": action.reason}, reason=action.reason)

        async def still_stale(now_file: FileState) -> bool:
            row = await self.sql.read(*split_conversation_key(o.key))
            again = Observed(key=o.key, now=time.time(), row=row, file=now_file,
                             bot_seen_at=o.bot_seen_at, orphan_seen_at=o.orphan_seen_at,
                             bot_timeout_s=o.bot_timeout_s, grace_s=o.grace_s)
            return may_move_file(row) and QuarantineFile(action.reason) in decide(again)

        moved = await self.files.quarantine(name, key=o.key, reason=action.reason, cause=cause,
                                            expected_sha256=o.file.sha256, guard=still_stale)
        if moved.outcome == "failed":
            raise TemporaryError(moved.reason)  # retried with backoff
        if moved.outcome == "reverted":  # moved, found not to be what was decided on, undone
            await self.auditor.record(
                action="quarantine_file", target=target, key=o.key, outcome="skipped",
                cause=cause, reason=f"reverted: {moved.reason}", before=before,
                after={"kept_as": str(self.files.quarantine_dir / moved.record.name)}
                if moved.record else None)
        if moved.outcome != "done" or moved.record is None:
            return moved.outcome == "reverted"
        record = moved.record
        await self.auditor.record(
            action="quarantine_file", target=target, key=o.key, outcome="done", cause=cause,
            reason=action.reason, before=before,
            after={"quarantined_as": str(self.files.quarantine_dir / record.name)})
        due = record.quarantined_at.timestamp() + self.settings.quarantine_retention_s
        await self.timers.schedule(f"purge:{record.name}", due, QuarantineRetentionDue(
            **_envelope(o.key, cause, due), name=record.name, deadline=_utc(due)))
        return True

    async def plan(self, verb: str, target: str, key: str, cause: EventBase,
                   before: dict[str, Any], after: dict[str, Any], reason: str = "") -> bool:
        """Record a planned action once per observed state (repeated events plan nothing new)."""
        digest = hashlib.sha256(json.dumps([verb, target, before, after], sort_keys=True,
                                           default=str).encode()).hexdigest()[:32]
        if await self.redis.set(self.keys.planned(digest), b"1", nx=True, ex=PLANNED_TTL_S):
            await self.auditor.record(action=verb, target=target, key=key, outcome="planned",
                                      cause=cause, reason=reason, before=before, after=after)
        return True

    async def purge_entry(self, qname: str, *, cause: EventBase | None) -> bool:
        """Delete a quarantine entry whose retention is over (audited); ``True`` if deleted."""
        try:
            record = self.files.record(qname)
        except QuarantineError as e:
            log.info("quarantine entry not purged: %s", e, extra={"quarantine": qname[:120]})
            return False
        due = record.quarantined_at.timestamp() + self.settings.quarantine_retention_s
        target = str(self.files.quarantine_dir / qname)
        if due > time.time():  # the retention was raised since it was scheduled
            await self.timers.schedule(f"purge:{qname}", due, QuarantineRetentionDue(
                **_envelope(record.key, cause, due), name=qname, deadline=_utc(due)))
            return False
        before = {"path": target, "original_path": record.original_path,
                  "quarantined_at": record.quarantined_at.isoformat()}
        if self.auditor.dry_run:
            return await self.plan("purge_quarantine", target, record.key, cause or _nothing(),
                                   before, {"deleted": True})
        if not self.files.purge(qname):
            return False
        await self.auditor.record(action="purge_quarantine", target=target, key=record.key,
                                  outcome="done", cause=cause, before=before,
                                  after={"deleted": True})
        return True

    async def purge_expired(self) -> int:
        """Purge every entry past its retention (run at start: the list before the watch)."""
        expired = self.files.expired(self.settings.quarantine_retention_s)
        return sum([await self.purge_entry(r.name, cause=None) for r in expired])


def _envelope(key: str, cause: EventBase | None, due: float | None = None) -> dict[str, Any]:
    """Envelope of an event the timer wheel will publish: it occurs at its deadline,
    so its id and time say when it was due, not when it was scheduled."""
    at = _utc(due) if due is not None else datetime.now(UTC)
    return {"id": new_event_id(at), "occurred_at": at, "source": "timers",
            "key": key, "cause_id": cause.id if cause is not None else None}


def _nothing() -> EventBase:
    return ReconcileRequested(**_envelope("quarantine", None), scope="conversations",
                              reason="quarantine retention sweep")


def _utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, UTC)


def _float(raw: bytes | str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
