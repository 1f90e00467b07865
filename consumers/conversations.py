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

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from consumers.actions import Actions, Result
from consumers.conversations_act import BACKFILL, CLEAR, CLOSE, ConversationActs, Guard, envelope, utc
from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.stores.conversations_sql import ConversationsSql, Row
from consumers.stores.session_files import FileState, QuarantineError, SessionFiles
from events.contract import (
    BotRunTimedOut,
    EventBase,
    OrphanGraceElapsed,
    QuarantineRetentionDue,
    SessionFileRejected,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
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
INFORMATIONAL = (SnapshotStarted, SnapshotFinished, SourceResynced, SessionFileRejected)
"""Events that may carry a key that is not a conversation key; those are ignored."""


class ConversationsHandler:
    """``async (key, deliveries)`` for the ``conversations`` group."""

    def __init__(self, *, settings: Settings, sql: ConversationsSql, files: SessionFiles,
                 redis: Any, actions: Actions, timers: TimerWheel) -> None:
        self.settings = settings
        self.sql = sql
        self.files = files
        self.redis = redis
        self.actions = actions
        self.timers = timers
        self.acts = ConversationActs(settings=settings, sql=sql, files=files, actions=actions,
                                     timers=timers)
        self.keys = settings.keys

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        cause = deliveries[-1].event
        try:
            phone, channel = split_conversation_key(key)
            name = self.files.name_for(phone, channel)
        except ValueError as e:
            if all(isinstance(d.event, INFORMATIONAL) for d in deliveries):
                return
            raise PermanentError(f"not a conversation key: {e}") from e
        left = await self.actions.settle(key, self.acts.check)
        for d in deliveries:
            if isinstance(d.event, QuarantineRetentionDue):
                await self.purge_entry(d.event.name, cause=d.event)
        for _ in range(MAX_ROUNDS):
            observed = await self.observe(key, phone, channel, name)
            if not await self.apply(observed, decide(observed), name, cause):
                break
        else:
            log.warning("key %s still changing after %d rounds; the next event goes on", key,
                        MAX_ROUNDS, extra={"key": key, "stream": deliveries[-1].stream})
        await self.actions.close_left(key, left)

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
                    **envelope(o.key, cause, action.due), flow_id=action.flow_id,
                    started_at=o.row.bot_started_at if o.row else None,
                    deadline=utc(action.due)))
            elif isinstance(action, ScheduleOrphanGrace):
                await self.timers.schedule(action.member, action.due, OrphanGraceElapsed(
                    **envelope(o.key, cause, action.due), deadline=utc(action.due)))
            elif (await self.change(o, action, name, cause)).outcome in ("done", "reverted"):
                return True  # the state changed: observe again
        return False

    async def change(self, o: Observed, action: Action, name: str, cause: EventBase) -> Result:
        """Make (or, in a dry run, plan) one change through the action executor."""
        if isinstance(action, QuarantineFile):
            assert o.file is not None
            return await self.acts.quarantine(o.key, name, o.file, reason=action.reason,
                                              cause=cause, guard=self._still_stale(o, action))
        assert o.row is not None
        if isinstance(action, BackfillFlow):
            return await self.acts.row_change(BACKFILL, o.key, o.row, cause, action.flow_id)
        verb = CLOSE if isinstance(action, CloseConversation) else CLEAR
        return await self.acts.row_change(verb, o.key, o.row, cause)

    def _still_stale(self, o: Observed, action: QuarantineFile) -> Guard:
        """The guard checked right before a move: the database still says to move it."""
        async def still_stale(now_file: FileState) -> bool:
            row = await self.sql.read(*split_conversation_key(o.key))
            again = Observed(key=o.key, now=time.time(), row=row, file=now_file,
                             bot_seen_at=o.bot_seen_at, orphan_seen_at=o.orphan_seen_at,
                             bot_timeout_s=o.bot_timeout_s, grace_s=o.grace_s)
            return may_move_file(row) and QuarantineFile(action.reason) in decide(again)
        return still_stale

    async def purge_entry(self, qname: str, *, cause: EventBase | None) -> bool:
        """Delete a quarantine entry whose retention is over (audited); ``True`` if deleted."""
        try:
            record = self.files.record(qname)
        except QuarantineError as e:
            log.info("quarantine entry not purged: %s", e, extra={"quarantine": qname[:120]})
            return False
        due = record.quarantined_at.timestamp() + self.settings.quarantine_retention_s
        if due > time.time():  # the retention was raised since it was scheduled
            await self.acts.schedule_purge(record, cause)
            return False
        return (await self.acts.purge(record, cause)).outcome == "done"

    async def purge_expired(self) -> int:
        """Purge every entry past its retention (run at start: the list before the watch)."""
        expired = self.files.expired(self.settings.quarantine_retention_s)
        return sum([await self.purge_entry(r.name, cause=None) for r in expired])


def _float(raw: bytes | str | None) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return None
