"""The rule table for a conversation key, as one pure function: :func:`judge`.

A key (phone + channel) may have several rows: a returning customer has old
closed conversations and a new one.  The rules, per DESIGN.md:

=====================================  ==========================================
rows of the key / session file          verdict
=====================================  ==========================================
one active bot row, flow F / flowId F   nothing but that row's deadline
one active bot row, flow NULL / F       ``flow_missing``: backfill F on that row
one active bot row, flow F / flowId G   ``flow_mismatch`` (reported only)
every active bot row, started at T      deadline T + timeout (per flow); when due
                                        ``timed_out``: close that row
active bot row, no start, no flow       timed from when first seen (a clock)
two or more active bot rows             ``ambiguous_rows``: reported; each row
                                        still times out; no backfill, no move
every closed row with bot fields        ``bot_fields_on_closed``: clear that row
no active bot row, file present         ``stale_file``: quarantine the file
no row at all, file present             ``orphan_file``: quarantine the file
=====================================  ==========================================

The settle window: a file modified less than ``grace_s`` ago is never judged
(no ``stale_file``/``orphan_file``, no move, whatever the rows say); a
re-judge is scheduled for when the window ends.  A CRM may write the file a
moment before it commits the row that makes it a bot chat (or the row at all).
Where the file's time is unknown and there is no row, the window runs from
when the file was first seen (a clock kept by the caller).

The active bot row owns the file; which row is "latest" does not change a
verdict, so no ordering (least of all the id's) is assumed here.  Inputs are
read through the :class:`RowFacts` / :class:`FileFacts` protocols, so the
handler's database rows and the projection's event rows are judged alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

BOT = "bot"
ACTIVE = "active"
DUE_SLACK_S = 0.05
"""A deadline this close is due (clocks of the timer loop and the handler differ a little)."""

KINDS: tuple[str, ...] = (
    "flow_missing", "flow_mismatch", "timed_out", "stale_file", "bot_fields_on_closed",
    "orphan_file", "ambiguous_rows",
)
"""Every inconsistency kind, a fixed vocabulary (metric labels, projection indexes)."""


class RowFacts(Protocol):
    """What the rules read of one row (a database row or an event's row image)."""

    @property
    def id(self) -> Any: ...
    @property
    def status(self) -> str: ...
    @property
    def assigned_to(self) -> str | None: ...
    @property
    def bot_flow_id(self) -> str | None: ...
    @property
    def bot_started_at(self) -> datetime | None: ...


class FileFacts(Protocol):
    """What the rules read of the session file."""

    @property
    def flow_id(self) -> str | None: ...
    @property
    def movable(self) -> bool: ...
    @property
    def modified_at(self) -> float | None:
        """Unix time of the last change (``None``: unknown, taken as settled)."""


R = TypeVar("R", bound=RowFacts)
F = TypeVar("F", bound=FileFacts)


@dataclass(frozen=True, kw_only=True)
class Observed(Generic[R, F]):
    """Everything :func:`judge` looks at about one key, read just before.

    Generic in the row and file types, so a caller gets back the very rows it
    read (the handler writes them back in its conditional ``UPDATE``).
    """

    key: str
    now: float
    rows: Sequence[R] = ()
    file: F | None = None
    bot_seen_at: float | None = None
    """When this key was first seen as a bot run without ``bot_started_at``."""
    orphan_seen_at: float | None = None
    """When this key's file was first seen without a database row."""
    bot_timeout_s: float = 1800.0
    flow_timeouts_s: Mapping[str, float] = field(default_factory=dict)
    grace_s: float = 30.0


@dataclass(frozen=True, order=True)
class Inconsistency:
    kind: str
    row_id: str | None = None
    """The row concerned (``None`` for the key as a whole: its file, or its rows together)."""


@dataclass(frozen=True)
class BackfillFlow:
    row_id: str
    flow_id: str


@dataclass(frozen=True)
class CloseConversation:
    """Close the bot run (status closed, bot fields cleared) if it is still the run read."""

    row_id: str


@dataclass(frozen=True)
class ClearBotFields:
    row_id: str


@dataclass(frozen=True)
class QuarantineFile:
    reason: str


@dataclass(frozen=True)
class ReportAmbiguousRows:
    row_ids: tuple[str, ...]


@dataclass(frozen=True)
class ScheduleBotTimeout:
    member: str
    due: float
    flow_id: str | None
    row_id: str = ""
    started_at: datetime | None = None


@dataclass(frozen=True)
class ScheduleRejudge:
    """Look at the key again at ``due`` (orphan grace or settle window over)."""

    member: str
    due: float


@dataclass(frozen=True)
class RememberSeen:
    kind: str
    at: float


@dataclass(frozen=True)
class ForgetSeen:
    kind: str


Action = (BackfillFlow | CloseConversation | ClearBotFields | QuarantineFile | ReportAmbiguousRows
          | ScheduleBotTimeout | ScheduleRejudge | RememberSeen | ForgetSeen)


@dataclass(frozen=True)
class Verdict:
    inconsistencies: tuple[Inconsistency, ...]
    actions: tuple[Action, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The distinct kinds found, in :data:`KINDS` order."""
        found = {i.kind for i in self.inconsistencies}
        return tuple(k for k in KINDS if k in found)


def waiting_on_bot(row: RowFacts) -> bool:
    return row.status == ACTIVE and row.assigned_to == BOT


def has_bot_fields(row: RowFacts) -> bool:
    return row.assigned_to == BOT or row.bot_flow_id is not None or row.bot_started_at is not None


def may_move_file(rows: Sequence[RowFacts]) -> bool:
    """The safety rule, checked again right before a move: never the file of a live bot run."""
    return not any(waiting_on_bot(r) for r in rows)


def judge(o: Observed[Any, Any]) -> Verdict:
    """The verdict of the rule table on ``o``: what is wrong, and what to do, in order."""
    found: list[Inconsistency] = []
    actions: list[Action] = []
    bots = [r for r in o.rows if waiting_on_bot(r)]
    if len(bots) > 1:
        ids = tuple(sorted(str(r.id) for r in bots))
        found.append(Inconsistency("ambiguous_rows"))
        actions.append(ReportAmbiguousRows(ids))
    for row in bots:
        _bot_run(o, row, owns_file=len(bots) == 1, found=found, actions=actions)
    if not bots and o.bot_seen_at is not None:
        actions.append(ForgetSeen("bot"))
    for row in o.rows:
        if row.status != ACTIVE and has_bot_fields(row):
            found.append(Inconsistency("bot_fields_on_closed", str(row.id)))
            actions.append(ClearBotFields(str(row.id)))
    if o.rows and o.orphan_seen_at is not None:
        actions.append(ForgetSeen("orphan"))
    if not bots:
        _file_without_bot_run(o, found, actions)
    return Verdict(tuple(found), tuple(actions))


def _timeout(o: Observed[Any, Any], flow: str | None) -> float:
    return o.flow_timeouts_s.get(flow, o.bot_timeout_s) if flow is not None else o.bot_timeout_s


def _bot_run(o: Observed[Any, Any], row: RowFacts, *, owns_file: bool, found: list[Inconsistency],
             actions: list[Action]) -> None:
    rid = str(row.id)
    flow = row.bot_flow_id
    file_flow = o.file.flow_id if o.file is not None and owns_file else None
    if flow is None and file_flow is not None:
        found.append(Inconsistency("flow_missing", rid))
        actions.append(BackfillFlow(rid, file_flow))
        flow = file_flow
    elif flow is not None and file_flow is not None and file_flow != flow:
        found.append(Inconsistency("flow_mismatch", rid))
    if row.bot_started_at is not None:
        start = row.bot_started_at.timestamp()
    elif o.bot_seen_at is not None:
        start = o.bot_seen_at
    else:
        start = o.now
        if RememberSeen("bot", start) not in actions:
            actions.append(RememberSeen("bot", start))
    due = start + _timeout(o, flow)
    if o.now >= due - DUE_SLACK_S:
        found.append(Inconsistency("timed_out", rid))
        actions.append(CloseConversation(rid))
    else:
        actions.append(ScheduleBotTimeout(f"bot:{o.key}:{rid}:{round(start * 1000)}", due, flow,
                                          rid, row.bot_started_at))


def _file_without_bot_run(o: Observed[Any, Any], found: list[Inconsistency], actions: list[Action]) -> None:
    if o.file is None or not o.file.movable:
        if not o.rows and o.orphan_seen_at is not None:
            actions.append(ForgetSeen("orphan"))
        return
    settles = None if o.file.modified_at is None else o.file.modified_at + o.grace_s
    if not o.rows and settles is None:  # no file time known: the grace runs from first sight
        since = o.orphan_seen_at
        if since is None:
            since = o.now
            actions.append(RememberSeen("orphan", since))
        settles = since + o.grace_s
    if settles is not None and o.now < settles - DUE_SLACK_S:
        actions.append(ScheduleRejudge(f"rejudge:{o.key}:{round(settles * 1000)}", settles))
        return
    if not o.rows:
        found.append(Inconsistency("orphan_file"))
        actions.append(QuarantineFile("no_row"))
        return
    found.append(Inconsistency("stale_file"))
    active = any(r.status == ACTIVE for r in o.rows)
    actions.append(QuarantineFile("not_bot" if active else "closed"))
