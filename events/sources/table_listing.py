"""Listing the conversations table: what only the database knows is reconciled too.

The outbox captures changes from ``migrate`` on; rows that were already wrong
(a closed row still carrying bot fields, a bot run long past its timeout) or
that changed while the trigger was away never make an event.  So the table
is listed as well as watched: :class:`TableListing` pages through the rows
that can matter -- active, or carrying a bot field -- and publishes one key-only
``reconcile.requested`` per conversation key, between ``SnapshotStarted`` and
``SnapshotFinished`` markers like the other sources' snapshots.  The handler
reads every row of the key itself, so the listing carries no row images.

Cost control, since this is the user's database:

* keyset pagination on the id column (the primary key's index): each page is
  ``WHERE id > $last ORDER BY id LIMIT n``, never an ``OFFSET``, and one pass
  reads each row once;
* a rate limit (``RECONCILER_DB_LISTING_RATE`` rows per second) sleeps
  between pages, and each page is its own short statement (no long snapshot
  transaction holding back vacuum);
* its own connection, named ``reconciler-listing`` in ``pg_stat_activity``.

When: on the first start of the ``consumers`` role (no completed listing
recorded in Redis, as after ``migrate``), on demand (``reconciler resync``),
and every ``RECONCILER_DB_LISTING_INTERVAL_S`` with +-20 % jitter as a safety
net.  The reaction path never waits for it.  Two processes do not list at
once (a lock key with a TTL).  It runs in the consumers role because that
role's database user already reads the table; the relay's reads only the
outbox.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from events import metrics
from events.contract import EventBase, ReconcileRequested, SnapshotFinished, SnapshotStarted
from events.envelope import E, new_event
from events.ids import new_event_id
from events.keys import conversation_key
from events.loops import HEARTBEATS, sleep_unless_stopped
from events.publisher import Publisher
from events.settings import Settings
from events.sql import quote_ident, quote_table

log = logging.getLogger(__name__)

SOURCE: Final = "postgres"
APPLICATION_NAME = "reconciler-listing"
PAGE = 500
"""Rows per page (one statement each)."""
JITTER = 0.2
LOCK_TTL_S = 600
RETRY_S = 60.0
"""After a failed listing, the next try (the relay itself is unaffected)."""


@dataclass(frozen=True, slots=True)
class ListingResult:
    rows: int
    keys: int
    seconds: float


def rows_that_can_matter(settings: Settings) -> str:
    """The SQL condition of the rows the rule table can act on: an active conversation, or
    one with bot fields set (a closed row keeping them is cleared).  The listing and the
    re-listing after a stream gap both read exactly these rows."""
    c = settings.columns
    q = {n: quote_ident(getattr(c, n)) for n in
         ("status", "assigned_to", "bot_flow_id", "bot_started_at")}
    return (f"({q['status']} = 'active' OR {q['assigned_to']} IS NOT NULL"
            f" OR {q['bot_flow_id']} IS NOT NULL OR {q['bot_started_at']} IS NOT NULL)")


class TableListing:
    """Pages through the rows of the conversations table that can matter."""

    def __init__(self, settings: Settings, publisher: Publisher, *, page: int = PAGE) -> None:
        c = settings.columns
        q = {n: quote_ident(getattr(c, n)) for n in ("id", "phone", "channel")}
        matters = rows_that_can_matter(settings)
        base = f"SELECT {q['id']}, {q['phone']}, {q['channel']} FROM {quote_table(settings.table)}"
        self._first = f"{base} WHERE {matters} ORDER BY {q['id']} LIMIT $1"
        self._next = f"{base} WHERE {matters} AND {q['id']} > $2 ORDER BY {q['id']} LIMIT $1"
        self._table = settings.table
        self._rate = settings.db_listing_rate
        self._publisher = publisher
        self._page = page

    @property
    def next_page_sql(self) -> str:
        """The statement of every page after the first (``$1`` page size, ``$2`` last id)."""
        return self._next

    async def list_once(self, conn: Any, reason: str) -> ListingResult:
        """One full pass, published between snapshot markers."""
        started, snapshot_id = time.monotonic(), new_event_id()
        await self._publisher.publish(
            _marker(SnapshotStarted, self._table, snapshot_id=snapshot_id), lane="bulk")
        rows = keys = 0
        last: Any = None
        while True:
            page_started = time.monotonic()
            records = await (conn.fetch(self._first, self._page) if last is None
                             else conn.fetch(self._next, self._page, last))
            if not records:
                break
            last = records[-1][0]
            wanted = {conversation_key(str(r[1]), str(r[2])) for r in records if r[1] and r[2]}
            await self._publisher.publish_many([_wake(key, reason) for key in sorted(wanted)],
                                               lane="bulk")
            rows, keys = rows + len(records), keys + len(wanted)
            HEARTBEATS.beat(f"listing:{self._table}")
            await asyncio.sleep(max(0.0, len(records) / self._rate
                                    - (time.monotonic() - page_started)))
        await self._publisher.publish(
            _marker(SnapshotFinished, self._table, snapshot_id=snapshot_id, items=keys),
            lane="bulk")
        metrics.SOURCE_RESYNCS.labels(SOURCE).inc()
        result = ListingResult(rows, keys, time.monotonic() - started)
        log.info("listed %s (%s): %d rows that can matter, %d keys, %.1fs", self._table, reason,
                 rows, keys, result.seconds, extra={"source": SOURCE, "table": self._table})
        return result


def _marker(kind: type[E], table: str, **fields: Any) -> E:
    return new_event(kind, source=SOURCE, key=f"{SOURCE}:{table}"[:256], **fields)


def _wake(key: str, reason: str) -> EventBase:
    return new_event(ReconcileRequested, source=SOURCE, key=key, scope="conversations",
                     reason=f"database listing: {reason}")


async def list_table(settings: Settings, publisher: Publisher, reason: str) -> ListingResult:
    """Open a connection, list the table once, close it (``reconciler resync`` uses this)."""
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url,
                                 server_settings={"application_name": APPLICATION_NAME})
    try:
        return await TableListing(settings, publisher).list_once(conn, reason)
    finally:
        await conn.close()


def next_delay(interval_s: float, rng: random.Random | None = None) -> float:
    """The interval with +-20 % jitter, so many installations do not list in step."""
    return interval_s * (1 + JITTER * (2 * (rng or random).random() - 1))


async def serve_listing(settings: Settings, redis: Redis, publisher: Publisher,
                        stop: asyncio.Event) -> None:
    """List on the first start, then every jittered interval, until ``stop``."""
    state = settings.keys.source_state(f"listing:{settings.table}")
    while not stop.is_set():
        last = await redis.hget(state, "listed_at")
        due = 0.0 if last is None else float(last) + next_delay(settings.db_listing_interval_s)
        if last is not None and settings.db_listing_interval_s <= 0:
            return
        await sleep_unless_stopped(stop, max(0.0, due - time.time()))
        if stop.is_set():
            return
        if not await redis.set(f"{state}:lock", b"1", nx=True, ex=LOCK_TTL_S):
            await sleep_unless_stopped(stop, RETRY_S)  # another relay is listing: look again later
            continue
        try:
            await list_table(settings, publisher, "first start" if last is None else "periodic")
            await redis.hset(state, "listed_at", repr(time.time()))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            log.warning("listing %s failed (%s: %s); trying again in %.0fs", settings.table,
                        type(e).__name__, e, RETRY_S, extra={"source": SOURCE})
            await sleep_unless_stopped(stop, RETRY_S)
        finally:
            await redis.delete(f"{state}:lock")

