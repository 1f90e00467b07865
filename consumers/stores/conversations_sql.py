"""The conversations table: read every row of a key, change one only if it is as it was read.

Identifiers come from settings (table and column names), are validated by
:mod:`ops.config` and quoted here again, so no name is ever spliced into SQL
unquoted.  Every UPDATE repeats the values the handler read in its ``WHERE``
(``IS NOT DISTINCT FROM``, so NULLs compare too) and returns how many rows it
changed: 0 means somebody else changed the row first, and nothing is done.

A key (phone + channel) may have several rows over time (a returning
customer); :meth:`ConversationsSql.read_all` returns all of them, latest first
by the ordering column (``RECONCILER_ORDER_COLUMN``, by default ``created_at``
where the table has one; never the id, since uuids do not sort by time).  The
rule table does not depend on that order; it is what "latest" means when rows
are shown.  Rows that can matter (active, or with bot fields) come first, so
the :data:`MAX_ROWS_PER_KEY` cap never hides one.  The keys handled at the same
time are read by one query (:mod:`consumers.stores.read_batches`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from consumers.errors import PermanentError, RightsMissing, TemporaryError
from consumers.stores.read_batches import ReadBatches
from events.settings import Settings
from events.sql import quote_ident, quote_table

log = logging.getLogger(__name__)

DEFAULT_ORDER_COLUMN = "created_at"
MAX_ROWS_PER_KEY = 500
"""Rows read per key; a number with more is logged, and its rows that can matter come first."""


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
        """The row for an audit entry; a text value over :data:`AUDIT_VALUE_CHARS` is cut
        to an excerpt with its size and hash (a 1 MB ``bot_flow_id`` stays 1 MB in the
        database, not in every audit entry)."""
        started = self.bot_started_at.isoformat() if self.bot_started_at else None
        return {"id": bounded(str(self.id)), "status": bounded(self.status),
                "assigned_to": bounded(self.assigned_to), "bot_flow_id": bounded(self.bot_flow_id),
                "bot_started_at": started}


AUDIT_VALUE_CHARS = 512


def bounded(value: str | None) -> Any:
    """``value``, or ``{"excerpt", "bytes", "sha256"}`` when it is longer than the limit."""
    if value is None or len(value) <= AUDIT_VALUE_CHARS:
        return value
    raw = value.encode(errors="surrogatepass")
    return {"excerpt": value[:64], "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


ORDER_COLUMN_READABLE = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1)"
    " AND attname = $2 AND attnum > 0 AND NOT attisdropped)"
    " THEN has_column_privilege($1, $2, 'SELECT') END")
"""``NULL``: no such column; ``false``: this role may not read it; ``true``: usable."""
COLUMN_TYPE = (
    "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = to_regclass($1)"
    " AND attname = $2 AND attnum > 0 AND NOT attisdropped")
"""A column's type as SQL (``format_type`` quotes what needs quoting), or ``NULL``."""
MAX_KEYS_PER_READ = 256
"""Keys read by one query at most (a batch is what waits while the previous read runs)."""


def _row(record: Any) -> Row:
    raw = started = record[4]
    if isinstance(started, datetime) and started.tzinfo is None:
        started = started.replace(tzinfo=UTC)  # a timestamp without zone is taken as UTC
    return Row(id=record[0], status=str(record[1]), assigned_to=record[2],
               bot_flow_id=record[3], bot_started_at=started, started_raw=raw)


class ConversationsSql:
    """Reads and conditionally updates rows of the conversations table."""

    def __init__(self, pool: Any, settings: Settings, *,
                 max_keys_per_read: int = MAX_KEYS_PER_READ) -> None:
        self._pool = pool
        self._order_setting = settings.order_column
        self._table = settings.table
        c = settings.columns
        q = {name: quote_ident(getattr(c, name)) for name in
             ("id", "phone", "channel", "status", "assigned_to", "bot_flow_id", "bot_started_at")}
        t = quote_table(settings.table)
        same = (f"{q['id']} = $1 AND {q['status']} = $2 AND {q['assigned_to']} IS NOT DISTINCT FROM $3"
                f" AND {q['bot_flow_id']} IS NOT DISTINCT FROM $4"
                f" AND {q['bot_started_at']} IS NOT DISTINCT FROM $5")
        matters = (f"({q['status']} = 'active' OR {q['assigned_to']} IS NOT NULL"
                   f" OR {q['bot_flow_id']} IS NOT NULL OR {q['bot_started_at']} IS NOT NULL)")
        # One query for a batch of keys: each key's rows by the (phone, channel) index,
        # ranked as one key's read ranks them; ``reconciler_keys`` is the batch, ``n`` each
        # key's position in it (names no CRM column is likely to have).
        # The key's text is cast to each column's own type, so the index serves any type.
        self._select = (
            f"SELECT r.*, reconciler_keys.n FROM unnest($1::text[], $2::text[])"
            f" WITH ORDINALITY AS reconciler_keys(phone, channel, n) CROSS JOIN LATERAL ("
            f"SELECT {q['id']}, {q['status']}, {q['assigned_to']}, {q['bot_flow_id']},"
            f" {q['bot_started_at']},"
            f" row_number() OVER (ORDER BY {matters} DESC{{order}}) AS reconciler_rank"
            f" FROM {t} WHERE {q['phone']} = reconciler_keys.phone::{{phone_type}}"
            f" AND {q['channel']} = reconciler_keys.channel::{{channel_type}}"
            f" ORDER BY reconciler_rank LIMIT {MAX_ROWS_PER_KEY}) AS r"
            f" ORDER BY reconciler_keys.n, r.reconciler_rank")
        self._read_sql: str | None = None
        """:attr:`_select` with the ordering column and key types, settled at the first read."""
        self._key_columns = (c.phone, c.channel)
        self._batches: ReadBatches[tuple[str, str], tuple[Row, ...]] = ReadBatches(
            self._read_many, max_keys=max_keys_per_read)
        self._backfill = f"UPDATE {t} SET {q['bot_flow_id']} = $6 WHERE {same}"
        self._close = (f"UPDATE {t} SET {q['status']} = 'closed', {q['assigned_to']} = NULL,"
                       f" {q['bot_flow_id']} = NULL, {q['bot_started_at']} = NULL WHERE {same}")
        self._clear = (
            f"UPDATE {t} SET {q['assigned_to']} = CASE WHEN {q['assigned_to']} = 'bot' THEN NULL"
            f" ELSE {q['assigned_to']} END, {q['bot_flow_id']} = NULL,"
            f" {q['bot_started_at']} = NULL WHERE {same}")

    async def read_all(self, phone: str, channel: str) -> tuple[Row, ...]:
        """Every row of ``phone`` on ``channel``, latest first (``()`` when there is none);
        read together with the other keys asked for at the same time (one query)."""
        return await self._batches.get((phone, channel))

    async def _read_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str],
                                                                         tuple[Row, ...]]:
        sql = self._read_sql if self._read_sql is not None else await self._settle()
        records = await self._run("fetch", sql, [k[0] for k in keys], [k[1] for k in keys])
        rows: list[list[Row]] = [[] for _ in keys]
        for record in records:
            rows[record[-1] - 1].append(_row(record))  # the last column: the key's position
        if any(len(r) >= MAX_ROWS_PER_KEY for r in rows):
            log.warning("key has %d rows or more; only the first are judged", MAX_ROWS_PER_KEY,
                        extra={"table": self._table})
        return {key: tuple(found) for key, found in zip(keys, rows, strict=True)}

    async def _settle(self) -> str:
        """The batch read with its ordering (:meth:`_settle_order`) and the key columns' types."""
        order = await self._settle_order()
        phone_type, channel_type = [
            await self._run("fetchval", COLUMN_TYPE, quote_table(self._table), column) or "text"
            for column in self._key_columns]
        self._read_sql = self._select.format(order=order, phone_type=phone_type,
                                             channel_type=channel_type)
        return self._read_sql

    async def _settle_order(self) -> str:
        """`` , "col" DESC NULLS LAST`` for the ordering column, or ``""`` when it has none.

        The default (``created_at``) is used where the table has it and this role may
        read it; a column named in the setting must be both, or the read fails naming
        the setting and the fix."""
        column = self._order_setting or DEFAULT_ORDER_COLUMN
        usable = await self._run("fetchval", ORDER_COLUMN_READABLE, quote_table(self._table), column)
        if not usable and self._order_setting is not None:
            fix = (f"GRANT SELECT ({column}) ON {self._table} to the consumers' role"
                   if usable is False else "name an existing column or unset it")
            raise PermanentError(f"RECONCILER_ORDER_COLUMN: table {self._table} has no readable "
                                 f"column {column!r}; {fix}")
        return f", {quote_ident(column)} DESC NULLS LAST" if usable else ""

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
        except asyncpg.InsufficientPrivilegeError as e:
            raise RightsMissing(f"the database refused this role: {e}") from e
