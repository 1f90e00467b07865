"""A read-only scan of the database, the sessions folder and Redis for inconsistencies.

This is what the old one-off check scripts did, done once and right: it reads
every conversation row, every session file and every queue, applies the rule
table (:func:`projections.rules.broken_rules` for conversations; the queue
rule for sessions) and lists what disagrees, by kind.  It changes nothing;
``reconciler audit --fix`` only asks the consumers to reconcile the keys it
found, through the normal path.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from consumers.stores.conversations_sql import quote_ident
from events.contract import ConversationRow
from events.keys import conversation_key
from events.sessionfiles import FilePattern, Rejected, read_session_file
from events.settings import Settings
from projections.rules import FileView, broken_rules

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
        f"FROM {quote_ident(settings.table)}"
    )


async def _rows(pg: Any, settings: Settings) -> AsyncIterator[ConversationRow]:
    async with pg.transaction():
        async for record in pg.cursor(row_select(settings), prefetch=ROW_BATCH):
            yield ConversationRow(**dict(record))


def _files(settings: Settings) -> dict[str, FileView]:
    pattern = FilePattern(settings.file_pattern)
    files: dict[str, FileView] = {}
    if not settings.sessions_dir.is_dir():
        return files
    for path in settings.sessions_dir.iterdir():
        name = pattern.parse(path.name)
        if name is None:
            continue
        try:
            content = read_session_file(path, max_bytes=settings.max_file_bytes)
        except FileNotFoundError:
            continue
        flow = None if isinstance(content, Rejected) else content.flow_id
        files[name.key] = FileView(present=True, flow_id=flow)
    return files


async def scan_conversations(pg: Any, settings: Settings) -> list[Inconsistency]:
    files = _files(settings)
    found: list[Inconsistency] = []
    now = time.time()
    async for row in _rows(pg, settings):
        key = conversation_key(row.phone, row.channel)
        file = files.pop(key, FileView(present=False))
        kinds = list(broken_rules(row, file))
        if _overdue(row, settings, now) and "timed_out" not in kinds:
            kinds.append("timed_out")
        found += [Inconsistency(k, key, "conversations", _describe(row, file)) for k in kinds]
    for key, file in files.items():  # files left over have no row
        found.append(Inconsistency("orphan_file", key, "conversations",
                                   f"no database row; file names flow {file.flow_id}"))
    return found


def _overdue(row: ConversationRow, settings: Settings, now: float) -> bool:
    if row.status != "active" or row.assigned_to != "bot" or row.bot_started_at is None:
        return False
    return row.bot_started_at.timestamp() + settings.bot_timeout_for(row.bot_flow_id) < now


def _describe(row: ConversationRow, file: FileView) -> str:
    started = row.bot_started_at.astimezone(UTC).isoformat() if row.bot_started_at else None
    db = (f"db: {row.status}, assigned_to={row.assigned_to}, flow={row.bot_flow_id}, "
          f"started={started}")
    return f"{db}; file: {'flowId=' + str(file.flow_id) if file.present else 'none'}"


async def scan_sessions(redis: Redis, settings: Settings) -> list[Inconsistency]:
    keys = settings.keys
    found: list[Inconsistency] = []
    async for raw in redis.scan_iter(match=keys.queue_glob, count=1000, _type="list"):
        name = keys.session_of_queue(raw.decode() if isinstance(raw, bytes) else raw)
        if name is None:
            continue
        length = await redis.llen(keys.queue(name))
        if length and not await redis.exists(keys.lease(name)):
            found.append(Inconsistency("orphan_queue", name, "sessions",
                                       f"{length} messages queued, session not live"))
    async for raw in redis.scan_iter(match=keys.parked_glob, count=1000):
        text = raw.decode() if isinstance(raw, bytes) else raw
        queue_key = text[text.find("{") + 1 : text.rfind("}")]
        name = keys.session_of_queue(queue_key)
        if name is not None and await redis.exists(keys.lease(name)):
            parked = await redis.llen(raw)
            if parked:
                found.append(Inconsistency("parked_not_restored", name, "sessions",
                                           f"{parked} parked messages, session is live"))
    return found


async def scan(pg: Any, redis: Redis, settings: Settings) -> list[Inconsistency]:
    """Every inconsistency across the three stores, conversations first."""
    return [*await scan_conversations(pg, settings), *await scan_sessions(redis, settings)]


def by_kind(found: list[Inconsistency]) -> dict[str, int]:
    return dict(Counter(i.kind for i in found))


def scanned_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
