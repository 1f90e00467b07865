"""The PostgreSQL relay: outbox rows -> events on the conversations stream.

NOTIFY is only a doorbell; the outbox is the truth.  The relay holds one
dedicated connection and, on every (re)connect, first LISTENs, then drains
the whole backlog, then publishes a ``SourceResynced`` marker, then waits for
the bell.  LISTEN comes before the drain so a change committed during the
drain rings the bell and is read by the next pass.

A connection can die without a word (asyncpg listeners are known to go
quiet), so two things watch it: the termination listener, and a keepalive --
every ``keepalive_s`` of silence the relay reads the outbox anyway, with a
timeout.  The keepalive read also picks up rows another relay had locked
when it died.  A lost connection is counted (``SOURCE_RECONNECTS``) and
re-opened with backoff.

One batch is one transaction: ``SELECT ... ORDER BY id FOR UPDATE SKIP
LOCKED LIMIT n``, XADD of the events, then DELETE of those rows, then
COMMIT.  So rows are deleted only after Redis has them, two relays never
publish the same row at the same time, and a crash between XADD and COMMIT
re-publishes rows under the same derived event ids.  A row that cannot
become an event is marked ``failed`` (kept for inspection), counted and
logged, and never read again.

Single changes go first.  Once a batch shows a bulk transaction (``BULK_ROWS``
rows or more of one transaction), the rows up to that transaction's last row
are the backlog, and every later batch reads the rows above it first, then
the backlog with the room left (:class:`DrainCursor`).  So a change committed
while a 100,000-row statement drains is published with the next batch, not
after the statement's last row; nothing is added to the capture's cost.  The
consumers' own writes (``origin``, capture version 6) go to the bulk lane too,
without making a backlog: the handling that made each one already saw it.

A key's events can therefore reach the streams out of outbox order (a live
change ahead of the statement's older image of the same row); the consumers
read the stores anyway, and the conversations projection keeps each row's
newest image (``outbox_id`` orders a row's changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from events import metrics, wiring
from events.contract import Lane, ReconcileRequested, SourceResynced
from events.envelope import new_event
from events.errors import ReconcilerError
from events.grants import missing_grants, wait_until_granted
from events.loops import HEARTBEATS, Backoff, guarded, sleep_unless_stopped
from events.publisher import Publisher
from events.readiness import READINESS
from events.settings import Settings
from events.sources.outbox import CONSUMERS_ORIGIN, BadOutboxRow, events_from_row, outbox_names

log = logging.getLogger(__name__)

SOURCE: Final = "postgres"
READY_FLAG: Final = "source:postgres"
"""Not ready until the first drain of the outbox is published."""
APPLICATION_NAME = "reconciler-relay"
"""Shown in ``pg_stat_activity``, so an operator can find the relay's connection."""
READABLE_CREATED_AT = ("CASE WHEN created_at BETWEEN '0001-01-02' AND '9999-12-30' "
                       "THEN created_at END AS created_at")
"""``created_at``, or NULL where Python cannot hold it (infinity, BC, year 10000+): such a
row is reported and skipped instead of failing the fetch of its whole batch, every time."""


class ConnectionLost(ReconcilerError):
    """The relay's database connection died or stopped answering."""


class OutboxMissing(ReconcilerError):
    """The outbox is not installed for the table: run ``reconciler migrate``."""


@dataclass(frozen=True, kw_only=True)
class RelayOptions:
    batch: int = 500
    """Outbox rows per transaction (and per Redis pipeline)."""
    keepalive_s: float = 5.0
    """Silence after which the relay reads the outbox anyway, to prove the connection."""
    query_timeout_s: float = 10.0
    """A query that takes longer means the connection is gone."""
    connect_timeout_s: float = 10.0
    backoff_s: float = 0.2
    backoff_max_s: float = 10.0


DISCONNECTS: tuple[type[BaseException], ...] = (
    ConnectionLost,
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection killed mid-operation can surface as this
    asyncpg.exceptions.OperatorInterventionError,
)
"""Errors that mean "reconnect", as opposed to a bug or a missing outbox."""


BULK_ROWS = 100
"""A transaction with this many rows in one batch is a bulk change (its rows go bulk)."""


GENERIC_PLANS = "SET plan_cache_mode = force_generic_plan"
"""For the relay's own connection.  Its batch reads walk the outbox's id index from a
given id with a LIMIT, which is the right plan whatever the ids; but the first five
executions of a prepared statement are planned for their values, and right after a
1,000,000-row statement those plans took 340-600 ms per batch, against 3-4 ms from the
sixth batch on (when PostgreSQL tries the generic plan), which held every live change
of those seconds back.  Set after connecting rather than in the startup packet, which
PgBouncer refuses unknown parameters in."""

HAS_ORIGIN = ("SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = $1::regclass "
              "AND attname = 'origin' AND NOT attisdropped)")
"""Whether the outbox has the ``origin`` column of capture version 6."""


def bulk_transactions(transactions: list[str]) -> set[str]:
    """The transactions (``xmin``) with ``BULK_ROWS`` or more rows in the batch: a bulk
    statement, or many small ones in one transaction.  They make the backlog that later
    batches read after the rows above it (:class:`DrainCursor`)."""
    return {t for t, size in Counter(transactions).items() if size >= BULK_ROWS}


def lanes_of(rows: list[Any]) -> list[Lane]:
    """The lane of each outbox row of a batch: the rows of a bulk transaction, and those
    the consumers wrote (``origin``), go to the bulk lane, every other row live.

    So a user's single change committed while a bulk statement drains goes live instead of
    waiting behind the whole statement in the consumers, and so do the users' own changes
    left in the outbox by a relay that was down.  The consumers' own clears of that
    statement's rows (one transaction each) do not crowd the live lane: the handling that
    made each one already observed its key again."""
    bulk = bulk_transactions([row["txn"] for row in rows])
    return ["bulk" if row["txn"] in bulk or row["origin"] == CONSUMERS_ORIGIN else "live"
            for row in rows]


@dataclass
class DrainCursor:
    """Where one drain is in the outbox.

    Ids are only where to start reading (rows are deleted as they are published, so
    nothing is read twice): ``after`` for the backlog, or for every row while there is
    none; ``backlog_end``, once a batch showed a bulk transaction, the id of its last
    row; ``newer_after`` for the rows above it, which are read first."""

    after: int = 0
    backlog_end: int | None = None
    newer_after: int = 0


class OutboxRelay:
    """Publishes the outbox of one conversations table."""

    def __init__(self, settings: Settings, publisher: Publisher,
                 options: RelayOptions | None = None) -> None:
        if settings.database_url is None:
            raise ReconcilerError("the relay needs DATABASE_URL")
        self._dsn = settings.database_url
        self._settings = settings
        self._table = settings.table
        self._names = outbox_names(settings.table)
        self._publisher = publisher
        self._options = options or RelayOptions()
        self.loop_name = f"relay:{settings.table}"
        outbox = self._names.qualified_outbox
        self._select, self._select_up_to = self._selects(has_origin=False)
        self._last_id_of = (f"SELECT id FROM {outbox} WHERE xmin::text = ANY($1::text[]) "
                            "ORDER BY id DESC LIMIT 1")
        """The last row of the given transactions: read backwards from the newest row, so
        it passes only the rows written after them."""
        self._delete = f"DELETE FROM {outbox} WHERE id = ANY($1::bigint[])"
        self._mark_failed = f"UPDATE {outbox} SET failed = $2 WHERE id = $1"

    def _selects(self, *, has_origin: bool) -> tuple[str, str]:
        """The batch reads (every row above ``$2``; up to ``$3``); an outbox from before
        capture version 6 has no ``origin`` column, and reads as if nobody's rows had one."""
        origin = "origin" if has_origin else "NULL::text AS origin"
        columns = (f"SELECT id, op, old_row::text, new_row::text, {READABLE_CREATED_AT}, "
                   f"xmin::text AS txn, {origin} FROM {self._names.qualified_outbox} "
                   "WHERE failed IS NULL AND id > $2")
        locked = " ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1"
        return columns + locked, columns + " AND id <= $3" + locked

    async def _read_origin_if_there(self, conn: Any) -> None:
        has_origin = await conn.fetchval(HAS_ORIGIN, self._names.qualified_outbox,
                                         timeout=self._options.query_timeout_s)
        self._select, self._select_up_to = self._selects(has_origin=has_origin)
        if not has_origin:
            log.warning("the change capture of %s is older than version 6: the consumers' own "
                        "changes are published live; `reconciler migrate` upgrades it in place",
                        self._table, extra={"source": SOURCE, "table": self._table})

    @property
    def options(self) -> RelayOptions:
        return self._options

    async def serve(self, stop: asyncio.Event) -> None:
        """Connect, drain, listen; reconnect with backoff; return once ``stop`` is set."""
        backoff, reason = Backoff(self._options.backoff_s, self._options.backoff_max_s), "start"
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop, reason)
                return
            except (*DISCONNECTS, asyncpg.InsufficientPrivilegeError) as e:
                metrics.SOURCE_RECONNECTS.labels(SOURCE).inc()
                if time.monotonic() - started > self._options.keepalive_s:
                    backoff.reset()
                delay = backoff.next()
                what = ("a right was revoked" if isinstance(e, asyncpg.InsufficientPrivilegeError)
                        else "database connection lost")
                log.warning("%s (%s: %s); reconnecting in %.1fs", what, type(e).__name__, e,
                            delay, extra={"source": SOURCE, "table": self._table})
                reason = "reconnect"
                await sleep_unless_stopped(stop, delay)

    async def connect(self) -> Any:
        """The relay's own connection: named, and planning its batch reads generically."""
        conn = await asyncpg.connect(self._dsn, timeout=self._options.connect_timeout_s,
                                     server_settings={"application_name": APPLICATION_NAME})
        try:
            if conn.get_server_version() >= (12,):  # plan_cache_mode is new in 12
                await conn.execute(GENERIC_PLANS, timeout=self._options.query_timeout_s)
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _session(self, stop: asyncio.Event, reason: str) -> None:
        conn = await self.connect()
        lost, doorbell = asyncio.Event(), asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            if not await wait_until_granted(
                    lambda: missing_grants(conn, self._settings, "relay"), role="relay", stop=stop,
                    beat=lambda: HEARTBEATS.beat(self.loop_name)):
                return
            await self._read_origin_if_there(conn)
            await conn.add_listener(self._names.channel, lambda *_args: doorbell.set())
            backlog = await self.drain(conn)
            await self._resynced(reason, backlog)
            while not stop.is_set():
                HEARTBEATS.beat(self.loop_name)
                await _wait_any((stop, lost, doorbell), timeout=self._options.keepalive_s)
                if lost.is_set():
                    raise ConnectionLost("the server closed the connection")
                if not stop.is_set():
                    doorbell.clear()
                    await self.drain(conn)
        finally:
            if lost.is_set() or conn.is_closed():
                conn.terminate()
            else:
                with contextlib.suppress(*DISCONNECTS):
                    await conn.close(timeout=self._options.query_timeout_s)

    async def drain(self, conn: Any) -> int:
        """Publish every row not locked by another relay; the number of rows handled.

        Each drain starts from the smallest id and each batch reads past the last ids
        of the one before (:class:`DrainCursor`), so a long backlog is not scanned from
        its start again for every batch (past the index entries of rows just deleted).
        A row whose transaction commits during a drain with a smaller id rings the
        doorbell at its commit, and the next drain, from the start again, publishes it.
        """
        total, cursor = 0, DrainCursor()
        while True:
            handled = await self._batch(conn, cursor)
            total += handled
            if handled < self._options.batch:
                return total

    async def _batch(self, conn: Any, cursor: DrainCursor) -> int:
        """One transaction: the next rows of ``cursor`` (moved on); the rows handled."""
        timeout = self._options.query_timeout_s
        async with conn.transaction():
            try:
                rows, row_lanes = await self._fetch(conn, cursor)
            except asyncpg.UndefinedTableError as e:
                raise OutboxMissing(f"no outbox for table {self._table!r}: run `reconciler migrate`") from e
            if not rows:
                return 0
            events, lanes, published, failed = [], [], [], []
            for row, lane in zip(rows, row_lanes, strict=True):
                try:
                    found = events_from_row(
                        table=self._table, outbox_id=row["id"], op=row["op"], old=row["old_row"],
                        new=row["new_row"], created_at=row["created_at"], origin=row["origin"])
                    if isinstance(found[0], ReconcileRequested):
                        self._report(row["id"], BadOutboxRow(
                            "oversized", "too large to publish whole; its key was woken"))
                    events += found
                    lanes += [lane] * len(found)
                    published.append(row["id"])
                except BadOutboxRow as e:
                    failed.append((row["id"], e.reason))
                    self._report(row["id"], e)
            if events:
                await self._publisher.publish_many(events, batch_size=self._options.batch,
                                                   lane=lanes)
                metrics.SOURCE_LAST_EVENT.labels(SOURCE).set(time.time())
            await conn.execute(self._delete, published, timeout=timeout)
            if failed:
                await conn.executemany(self._mark_failed, failed, timeout=timeout)
        return len(rows)

    async def _fetch(self, conn: Any, cursor: DrainCursor) -> tuple[list[Any], list[Lane]]:
        """A batch's rows, locked, and their lanes: with a backlog, the rows above it first,
        then the backlog with the room left; a bulk transaction among the rows read first
        moves the backlog's end to its last row."""
        limit, timeout = self._options.batch, self._options.query_timeout_s
        end = cursor.backlog_end
        start = cursor.after if end is None else max(end, cursor.newer_after)
        rows = list(await conn.fetch(self._select, limit, start, timeout=timeout))
        if rows and end is None:
            cursor.after = int(rows[-1]["id"])
        elif rows:
            cursor.newer_after = int(rows[-1]["id"])
        bulk = bulk_transactions([row["txn"] for row in rows])
        if bulk:
            last = await conn.fetchval(self._last_id_of, list(bulk), timeout=timeout)
            cursor.backlog_end = max(cursor.backlog_end or 0, int(last or rows[-1]["id"]))
        if end is not None and len(rows) < limit:
            older = await conn.fetch(self._select_up_to, limit - len(rows), cursor.after, end,
                                     timeout=timeout)
            if older:
                cursor.after = int(older[-1]["id"])
            elif cursor.backlog_end == end:  # the backlog is published
                cursor.after, cursor.backlog_end = max(cursor.after, cursor.newer_after), None
            rows += older
        return rows, lanes_of(rows)

    def _report(self, outbox_id: int, error: BadOutboxRow) -> None:
        metrics.INVALID_INPUTS.labels(SOURCE, error.reason).inc()
        log.error("outbox row %d of %s skipped: %s", outbox_id, self._table, error,
                  extra={"source": SOURCE, "table": self._table, "outbox_id": outbox_id,
                         "reason": error.reason})

    async def _resynced(self, reason: str, backlog: int) -> None:
        await self._publisher.publish(new_event(
            SourceResynced, source=SOURCE, key=f"{SOURCE}:{self._table}"[:256], reason=reason),
            lane="bulk")
        metrics.SOURCE_RESYNCS.labels(SOURCE).inc()
        READINESS.ready(READY_FLAG)
        log.info("relay for %s %s: %d backlog row(s) handled, listening", self._table,
                 "started" if reason == "start" else "reconnected", backlog,
                 extra={"source": SOURCE, "table": self._table})


async def _wait_any(events: Iterable[asyncio.Event], *, timeout: float) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_relay(settings: Settings, redis: Redis, stop: asyncio.Event,
                    options: RelayOptions | None = None) -> None:
    """The ``relay`` role: publish the outbox of ``settings.table`` until ``stop`` is set."""
    relay = OutboxRelay(settings, wiring.publisher(settings, redis), options)
    with READINESS.flagged(READY_FLAG, "first drain of the outbox not published yet"):
        await guarded(relay.loop_name, lambda: relay.serve(stop),
                      stall_after_s=max(60.0, 4 * relay.options.keepalive_s), stop=stop)
