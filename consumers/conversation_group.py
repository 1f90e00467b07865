"""Group ``conversations``: reconcile one conversation key with the rule table.

The rules live in :mod:`consumers.rules.conversation_rules` (:func:`judge`, a pure
function of what was observed: every row of the key, its session file, when
clocks started, the time).  This module observes, asks for the verdict and
carries out its actions through the action executor
(:mod:`consumers.conversation_acts`); each action that changes a row names
that row.  After a change it observes again (a close is followed at once by
the quarantine of the file it left behind).  It does not care which event
woke it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from consumers.actions import Action as Change
from consumers.actions import Actions, Result, skipped
from consumers.conversation_acts import BACKFILL, CLEAR, CLOSE, ConversationActs, Guard, due_event
from consumers.errors import PermanentError
from consumers.keyqueue import Delivery
from consumers.own_echoes import OwnEchoes
from consumers.rules.conversation_rules import (
    Action,
    BackfillFlow,
    CloseConversation,
    ForgetSeen,
    Observed,
    QuarantineFile,
    RememberSeen,
    ReportAmbiguousRows,
    ScheduleBotTimeout,
    ScheduleRejudge,
    judge,
    may_move_file,
)
from consumers.stores.conversations_sql import ConversationsSql, Row
from consumers.stores.session_folder import FileState, QuarantineError, SessionFiles
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
from events.envelope import new_event
from events.keys import split_conversation_key
from events.settings import Settings
from events.timer_wheel import TimerWheel

log = logging.getLogger(__name__)

Seen = Observed[Row, FileState]
"""What the handler observed: the database rows and the file state it read."""


def decide(o: Observed[Any, Any]) -> list[Action]:
    """The actions of the rule table's verdict on ``o``, in the order they are carried out."""
    return list(judge(o).actions)


# --------------------------------------------------------------------------
# The handler: observe, decide, act.

MAX_ROUNDS = 4
"""Observe-decide-act rounds per call; each round after the first follows a change we made."""
STILL_CHANGING = f"still changing after {MAX_ROUNDS} rounds"
SEEN_TTL_S = 30 * 86400
REPORTED_TTL_S = 7 * 86400
"""How long a report of an unchanged state (ambiguous rows) is not repeated."""
MARKERS = (SnapshotStarted, SnapshotFinished, SourceResynced)
INFORMATIONAL = (*MARKERS, SessionFileRejected)
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
        self.echoes = OwnEchoes()

    async def __call__(self, key: str, deliveries: Sequence[Delivery]) -> None:
        cause = deliveries[-1].event
        if all(isinstance(d.event, MARKERS) for d in deliveries):
            return  # a source's progress marker: its key names the source, not a conversation
        if self.echoes.only_echoes(deliveries):
            return  # our own changes coming back: observed by the handling that made them
        try:
            phone, channel = split_conversation_key(key)
        except ValueError as e:
            if all(isinstance(d.event, INFORMATIONAL) for d in deliveries):
                return
            raise PermanentError(f"not a conversation key: {e}") from e
        name = self.file_name(key, phone, channel)
        left = await self.actions.settle(key, self.acts.check)
        for d in deliveries:
            if isinstance(d.event, QuarantineRetentionDue):
                await self.purge_entry(d.event.name, cause=d.event)
        for _ in range(MAX_ROUNDS):
            observed = await self.observe(key, phone, channel, name)
            if not await self.apply(observed, decide(observed), name, cause):
                break
        else:
            await self.still_changing(key, deliveries)
        await self.actions.close_left(key, left)

    async def still_changing(self, key: str, deliveries: Sequence[Delivery]) -> None:
        """The rounds ran out after a change whose echo will be skipped: ask for one more
        look, once (a CRM trigger that undoes every change must not loop forever)."""
        again = not any(isinstance(d.event, ReconcileRequested) and d.event.reason == STILL_CHANGING
                        for d in deliveries)
        log.warning("key %s %s%s", key, STILL_CHANGING, "; it is judged again" if again else "",
                    extra={"key": key, "stream": deliveries[-1].stream})
        if again:
            await self.actions.publisher.publish(new_event(
                ReconcileRequested, source="reconciler", key=key, scope="conversations",
                cause_id=deliveries[-1].event.id, reason=STILL_CHANGING))

    def file_name(self, key: str, phone: str, channel: str) -> str | None:
        """The key's session file name; ``None`` when its phone makes no safe file name.

        Such a key still gets every database-only action (close, clear); a backfill
        from its file is not possible, since no file of it can exist."""
        try:
            return self.files.name_for(phone, channel)
        except ValueError as e:
            log.info("key %s has no session file name (%s): database-only actions", key[:80],
                     e, extra={"key": key[:256]})
            return None

    async def observe(self, key: str, phone: str, channel: str, name: str | None) -> Seen:
        """Every row of the key, its file and its clocks, as the rule table reads them."""
        rows = await self.sql.read_all(phone, channel)
        file = self.files.read(name) if name is not None else None
        pipe = self.redis.pipeline(transaction=False)  # two hash slots: no MGET on a cluster
        for kind in ("bot", "orphan"):
            pipe.get(self.keys.first_seen(kind, key))
        bot_seen, orphan_seen = await pipe.execute()
        return Seen(key=key, now=time.time(), rows=rows, file=file,
                    bot_seen_at=_float(bot_seen), orphan_seen_at=_float(orphan_seen),
                    bot_timeout_s=self.settings.bot_timeout_s,
                    flow_timeouts_s=self.settings.flow_timeouts_s, grace_s=self.settings.grace_s)

    async def apply(self, o: Seen, actions: list[Action], name: str | None,
                    cause: EventBase) -> bool:
        """Carry out ``actions``; ``True`` when the state changed and must be observed again.

        The changes of one verdict concern distinct rows (each write conditional on its
        own row as read) or the file of a key with no bot run, so all are made before
        the key is observed again."""
        changed = False
        for action in actions:
            if isinstance(action, RememberSeen):
                if not await self.redis.set(self.keys.first_seen(action.kind, o.key),
                                            repr(action.at), nx=True, ex=SEEN_TTL_S):
                    return True  # another consumer started the clock first: use its time
            elif isinstance(action, ForgetSeen):
                await self.redis.delete(self.keys.first_seen(action.kind, o.key))
            elif isinstance(action, ScheduleBotTimeout):
                await self.timers.schedule(action.member, action.due, due_event(
                    BotRunTimedOut, o.key, cause, action.due, flow_id=action.flow_id,
                    started_at=action.started_at))
            elif isinstance(action, ScheduleRejudge):
                await self.timers.schedule(action.member, action.due, due_event(
                    OrphanGraceElapsed, o.key, cause, action.due))
            elif isinstance(action, ReportAmbiguousRows):
                await self.report_ambiguous(o, action, cause)
            else:
                outcome = (await self.change(o, action, name, cause)).outcome
                if outcome == "done" and isinstance(action, QuarantineFile) and name is not None:
                    self.echoes.moved_away(name)  # the watcher will report it gone
                changed = changed or outcome in ("done", "reverted")
        return changed

    async def change(self, o: Seen, action: Action, name: str | None,
                     cause: EventBase) -> Result:
        """Make (or, in a dry run, plan) one change through the action executor."""
        if isinstance(action, QuarantineFile):
            assert o.file is not None and name is not None  # a file was read, so it has a name
            return await self.acts.quarantine(o.key, name, o.file, reason=action.reason,
                                              cause=cause, guard=self._still_stale(o, action))
        row = next(r for r in o.rows if str(r.id) == getattr(action, "row_id", None))
        if isinstance(action, BackfillFlow):
            return await self.acts.row_change(BACKFILL, o.key, row, cause, action.flow_id)
        verb = CLOSE if isinstance(action, CloseConversation) else CLEAR
        return await self.acts.row_change(verb, o.key, row, cause)

    def _still_stale(self, o: Seen, action: QuarantineFile) -> Guard:
        """The guard checked right before a move: the database still says to move it."""
        async def still_stale(now_file: FileState) -> bool:
            rows = await self.sql.read_all(*split_conversation_key(o.key))
            again = replace(o, now=time.time(), rows=rows, file=now_file)
            return may_move_file(rows) and QuarantineFile(action.reason) in judge(again).actions
        return still_stale

    async def report_ambiguous(self, o: Seen, action: ReportAmbiguousRows,
                               cause: EventBase) -> None:
        """Say once per state that several rows are active bot runs: nothing is guessed."""
        rows = [r.as_dict() for r in o.rows if str(r.id) in action.row_ids]
        digest = hashlib.sha256(json.dumps(["ambiguous_rows", o.key, rows], sort_keys=True,
                                           default=str).encode()).hexdigest()[:32]
        if not await self.redis.set(self.keys.planned(digest), b"1", nx=True, ex=REPORTED_TTL_S):
            return
        log.warning("key %s has %d active bot rows; none owns the file, nothing is guessed",
                    o.key, len(rows), extra={"key": o.key})
        await self.actions.record_made(
            Change(verb="report_ambiguous_rows", key=o.key, target=self.settings.table,
                   before={"rows": rows}, cause=cause,
                   reason="ambiguous_rows: several active bot rows"),
            skipped("several active bot rows: none is guessed to own the file"))

    async def purge_entry(self, qname: str, *, cause: EventBase | None) -> bool:
        """Delete a quarantine entry whose retention is over (audited); ``True`` if deleted."""
        try:
            record = self.files.records.read(qname)
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
