"""The conversations table: read one conversation, change it only if it is as it was read.

Identifiers come from settings (table and column names), are validated by
:mod:`ops.config` and quoted here again, so no name is ever spliced into SQL
unquoted.  Every UPDATE repeats the values the handler read in its ``WHERE``
(``IS NOT DISTINCT FROM``, so NULLs compare too) and returns how many rows it
changed: 0 means somebody else changed the row first, and nothing is done.

A key (phone + channel) may have several rows over time; the conversation is
the active one if there is one, else the latest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from consumers.errors import TemporaryError
from events.settings import Settings


@dataclass(frozen=True, kw_only=True)
class Row:
    """The columns of one conversation that the rule table looks at."""

    id: Any
    """The primary key as the driver returns it (passed back unchanged)."""
    status: str
    assigned_to: str | None
    bot_flow_id: str | None
    bot_started_at: datetime | None
    """Timezone-aware (a column without a zone is read as UTC)."""
    started_raw: Any = field(default=None, compare=False, repr=False)
    """``bot_started_at`` exactly as the driver returned it, for the ``WHERE`` of a write."""

    def where_started(self) -> Any:
        return self.started_raw if self.started_raw is not None else self.bot_started_at

    def as_dict(self) -> dict[str, Any]:
        started = self.bot_started_at.isoformat() if self.bot_started_at else None
        return {"id": str(self.id), "status": self.status, "assigned_to": self.assigned_to,
                "bot_flow_id": self.bot_flow_id, "bot_started_at": started}


def quote_ident(name: str) -> str:
    """``name`` as a quoted SQL identifier (``schema.table`` quoted part by part)."""
    if not name or "\x00" in name:
        raise ValueError("empty SQL identifier")
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


class ConversationsSql:
    """Reads and conditionally updates rows of the conversations table."""

    def __init__(self, pool: Any, settings: Settings) -> None:
        self._pool = pool
        c = settings.columns
        q = {name: quote_ident(getattr(c, name)) for name in
             ("id", "phone", "channel", "status", "assigned_to", "bot_flow_id", "bot_started_at")}
        t = quote_ident(settings.table)
        same = (f"{q['id']} = $1 AND {q['status']} = $2 AND {q['assigned_to']} IS NOT DISTINCT FROM $3"
                f" AND {q['bot_flow_id']} IS NOT DISTINCT FROM $4"
                f" AND {q['bot_started_at']} IS NOT DISTINCT FROM $5")
        self._select = (
            f"SELECT {q['id']}, {q['status']}, {q['assigned_to']}, {q['bot_flow_id']},"
            f" {q['bot_started_at']} FROM {t} WHERE {q['phone']} = $1 AND {q['channel']} = $2"
            f" ORDER BY ({q['status']} = 'active') DESC, {q['id']} DESC LIMIT 1")
        self._backfill = f"UPDATE {t} SET {q['bot_flow_id']} = $6 WHERE {same}"
        self._close = (f"UPDATE {t} SET {q['status']} = 'closed', {q['assigned_to']} = NULL,"
                       f" {q['bot_flow_id']} = NULL, {q['bot_started_at']} = NULL WHERE {same}")
        self._clear = (
            f"UPDATE {t} SET {q['assigned_to']} = CASE WHEN {q['assigned_to']} = 'bot' THEN NULL"
            f" ELSE {q['assigned_to']} END, {q['bot_flow_id']} = NULL,"
            f" {q['bot_started_at']} = NULL WHERE {same}")

    async def read(self, phone: str, channel: str) -> Row | None:
        """The current conversation of ``phone`` on ``channel``, or ``None``."""
        record = await self._run("fetchrow", self._select, phone, channel)
        if record is None:
            return None
        raw = started = record[4]
        if isinstance(started, datetime) and started.tzinfo is None:
            started = started.replace(tzinfo=UTC)  # a timestamp without zone is taken as UTC
        return Row(id=record[0], status=str(record[1]), assigned_to=record[2],
                   bot_flow_id=record[3], bot_started_at=started, started_raw=raw)

    async def backfill_flow(self, row: Row, flow_id: str) -> bool:
        """Set ``bot_flow_id`` if the row is still as read; ``True`` if it changed."""
        return await self._update(self._backfill, row, flow_id)

    async def close(self, row: Row) -> bool:
        """Close the conversation and clear its bot fields if it is still this bot run."""
        return await self._update(self._close, row)

    async def clear_bot_fields(self, row: Row) -> bool:
        """Clear the bot fields of a row that is still as read."""
        return await self._update(self._clear, row)

    async def _update(self, sql: str, row: Row, *extra: Any) -> bool:
        status = await self._run("execute", sql, row.id, row.status, row.assigned_to,
                                 row.bot_flow_id, row.where_started(), *extra)
        return str(status).rsplit(" ", 1)[-1] != "0"

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        try:
            return await getattr(self._pool, method)(sql, *args)
        except (asyncpg.PostgresConnectionError, OSError, asyncpg.TooManyConnectionsError) as e:
            raise TemporaryError(f"database unavailable: {type(e).__name__}") from e
