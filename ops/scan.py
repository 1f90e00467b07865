"""A read-only scan of the database, the sessions folder and Redis for inconsistencies.

This is what the old one-off check scripts did, done once and right: it reads
every conversation row (the rows of one key together, since a key may have
several), every session file and every queue, asks the rule table
(:func:`consumers.rules.conversation_rules.judge` per conversation key,
:func:`consumers.rules.gateway_session_rules.judge` per session) and lists what disagrees,
by kind, naming the row concerned.  It changes nothing; ``reconciler audit
--fix`` only asks the consumers to reconcile the keys it found, through the
normal path.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from consumers.relist import session_names
from consumers.rules import conversation_rules as rules
from consumers.rules import gateway_session_rules as session_rules
from consumers.stores.parked_queues import ParkedQueues
from consumers.stores.session_folder import FileState, SessionFiles
from events.contract import ConversationRow
from events.keys import conversation_key
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sql import quote_ident, quote_table

ROW_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Inconsistency:
    kind: str
    key: str
    scope: str
    """``conversations`` or ``sessions``: which consumer group reconciles it."""
    detail: str


def row_select(settings: Settings) -> str:
    """``SELECT`` of the watched columns, renamed to the names of :class:`ConversationRow`."""
    c = settings.columns
    q = {name: quote_ident(getattr(c, name)) for name in
         ("id", "phone", "channel", "status", "assigned_to", "bot_flow_id", "bot_started_at")}
    return (
        f"SELECT {q['id']}::text AS id, {q['phone']} AS phone, {q['channel']} AS channel, "
        f"{q['status']} AS status, {q['assigned_to']} AS assigned_to, "
        f"{q['bot_flow_id']} AS bot_flow_id, {q['bot_started_at']} AS bot_started_at "
        f"FROM {quote_table(settings.table)}"
    )


async def _keys_rows(pg: Any, settings: Settings) -> AsyncIterator[list[ConversationRow]]:
    """Every row of the table, the rows of one key together."""
    c = settings.columns
    order = f" ORDER BY {quote_ident(c.phone)}, {quote_ident(c.channel)}"
    group: list[ConversationRow] = []
    async with pg.transaction():
        async for record in pg.cursor(row_select(settings) + order, prefetch=ROW_BATCH):
            row = ConversationRow(**dict(record))
            if group and (group[0].phone, group[0].channel) != (row.phone, row.channel):
                yield group
                group = []
            group.append(row)
    if group:
        yield group


def _files(settings: Settings) -> dict[str, FileState]:
    """Every session file of ours, by conversation key."""
    pattern = FilePattern(settings.file_pattern)
    store = SessionFiles(settings)
    files: dict[str, FileState] = {}
    if not settings.sessions_dir.is_dir():
        return files
    for path in settings.sessions_dir.iterdir():
        name = pattern.parse(path.name)
        state = store.read(path.name) if name is not None else None
        if name is not None and state is not None:
            files[name.key] = state
    return files


def judge_key(key: str, rows: list[ConversationRow], file: FileState | None, *,
              settings: Settings, now: float, bot_seen_at: float | None = None,
              orphan_seen_at: float | None = None) -> list[Inconsistency]:
    """What the rule table finds wrong with one key, as the scan lists it."""
    said = rules.judge(rules.Observed(
        key=key, now=now, rows=rows, file=file, bot_seen_at=bot_seen_at,
        orphan_seen_at=orphan_seen_at, bot_timeout_s=settings.bot_timeout_s,
        flow_timeouts_s=settings.flow_timeouts_s, grace_s=settings.grace_s))
    return [Inconsistency(i.kind, key, "conversations", _describe(i, rows, file))
            for i in said.inconsistencies]


async def scan_conversations(pg: Any, settings: Settings,
                             redis: Redis | None = None) -> list[Inconsistency]:
    files = _files(settings)
    found: list[Inconsistency] = []
    now = time.time()
    async for rows in _keys_rows(pg, settings):
        key = conversation_key(rows[0].phone, rows[0].channel)
        found += judge_key(key, rows, files.pop(key, None), settings=settings, now=now,
                           bot_seen_at=await _clock(redis, settings, "bot", key, rows))
    for key, file in files.items():  # files left over have no row
        found += judge_key(key, [], file, settings=settings, now=now,
                           orphan_seen_at=await _clock(redis, settings, "orphan", key, []))
    return found


async def _clock(redis: Redis | None, settings: Settings, kind: str, key: str,
                 rows: list[ConversationRow]) -> float | None:
    """The handler's first-sight clock of ``key``, where the rule table may read it."""
    if redis is None or (kind == "bot" and not any(
            rules.waiting_on_bot(r) and r.bot_started_at is None for r in rows)):
        return None
    raw = await redis.get(settings.keys.first_seen(kind, key))
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def _describe(found: rules.Inconsistency, rows: list[ConversationRow],
              file: FileState | None) -> str:
    shown = [r for r in rows if r.id == found.row_id] or rows
    db = "; ".join(_row_text(r) for r in shown) or "db: no row"
    return f"{db}; file: {'flowId=' + str(file.flow_id) if file else 'none'}"


def _row_text(row: ConversationRow) -> str:
    started = row.bot_started_at.astimezone(UTC).isoformat() if row.bot_started_at else None
    return (f"row {row.id}: {row.status}, assigned_to={row.assigned_to}, "
            f"flow={row.bot_flow_id}, started={started}")


async def scan_sessions(redis: Redis, settings: Settings) -> list[Inconsistency]:
    """Every session with a queue, parked messages or a lease, judged by the sessions rule."""
    store = ParkedQueues(redis, settings.keys)
    found: list[Inconsistency] = []
    for name in sorted([n async for n in session_names(settings, redis)()]):
        state = await store.observe(name)
        said = session_rules.judge(session_rules.observed(state, settings, now=time.time()))
        detail = (f"{state.queue_length} messages queued, {state.parked_length} parked, "
                  f"session {'live' if state.live else 'not live'}")
        found += [Inconsistency(kind, name, "sessions", detail) for kind in said.kinds]
    return found


async def scan(pg: Any, redis: Redis, settings: Settings) -> list[Inconsistency]:
    """Every inconsistency across the three stores, conversations first."""
    return [*await scan_conversations(pg, settings, redis), *await scan_sessions(redis, settings)]


def by_kind(found: list[Inconsistency]) -> dict[str, int]:
    return dict(Counter(i.kind for i in found))


def scanned_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
