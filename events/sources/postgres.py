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

Single changes go first: each batch reads the rows not marked ``bulk`` (by
the capture, version 4: a statement of ``BULK_ROWS`` rows or more) before
the bulk ones, so a change committed while a big statement's rows drain is
published with the next batch, not after the whole statement.  A key's
events can therefore reach the streams out of outbox order (a live change
ahead of the statement's older image of the same row); the consumers read
the stores anyway, and the conversations projection keeps each row's newest
image (``outbox_id`` orders a row's changes).  Against an outbox of version
3 the relay reads in id order only, and says to run ``reconciler migrate``.
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
from events.sources.outbox import BULK_ROWS, BadOutboxRow, events_from_row, outbox_names

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


def lanes_of(transactions: list[str]) -> list[Lane]:
    """The lane of each single-change row of a batch, by the transaction (``xmin``) that
    wrote it: the rows of a transaction with ``BULK_ROWS`` or more rows in the batch (many
    small statements in one transaction, or any bulk statement of an outbox of version 3)
    go to the bulk lane, every other row live.  Rows the capture marked bulk always go bulk.

    So a single change committed while a bulk statement drains -- a user's, or one the
    consumers make as they work through the statement -- goes live instead of waiting behind
    the whole statement in the consumers, and so do the users' own changes left in the
    outbox by a relay that was down."""
    sizes = Counter(transactions)
    return ["bulk" if sizes[t] >= BULK_ROWS else "live" for t in transactions]


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
        self._select = {which: (
            f"SELECT id, op, old_row::text, new_row::text, {READABLE_CREATED_AT}, "
            f"xmin::text AS txn FROM {outbox} WHERE failed IS NULL AND {condition} AND id > $2 "
            "ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1")
            for which, condition in (("single", "NOT bulk"), ("bulk", "bulk"), ("any", "true"))}
        self._marks_bulk = True
        """The outbox has the ``bulk`` column (version 4); checked at every connect."""
        self._delete = f"DELETE FROM {outbox} WHERE id = ANY($1::bigint[])"
        self._mark_failed = f"UPDATE {outbox} SET failed = $2 WHERE id = $1"

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

    async def _session(self, stop: asyncio.Event, reason: str) -> None:
        conn = await asyncpg.connect(self._dsn, timeout=self._options.connect_timeout_s,
                                     server_settings={"application_name": APPLICATION_NAME})
        lost, doorbell = asyncio.Event(), asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            if not await wait_until_granted(
                    lambda: missing_grants(conn, self._settings, "relay"), role="relay", stop=stop,
                    beat=lambda: HEARTBEATS.beat(self.loop_name)):
                return
            await conn.add_listener(self._names.channel, lambda *_args: doorbell.set())
            await self._check_marks(conn)
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

    async def _check_marks(self, conn: Any) -> None:
        self._marks_bulk = bool(await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass($1) "
            "AND attname = 'bulk' AND NOT attisdropped)", self._names.qualified_outbox))
        if not self._marks_bulk:
            log.warning("the change capture of %s is older than version 4: single changes wait "
                        "behind bulk statements in the relay; run `reconciler migrate`",
                        self._table, extra={"source": SOURCE, "table": self._table})

    async def drain(self, conn: Any) -> int:
        """Publish every row not locked by another relay; the number of rows handled.

        Each drain starts from the smallest ids and each batch reads past the last ids
        of the one before (one position for the single changes, one for the bulk rows),
        so a long backlog is not scanned from its start again for every batch (past the
        index entries of rows just deleted).  A row whose transaction commits during a
        drain with a smaller id rings the doorbell at its commit, and the next drain,
        from the start again, publishes it.
        """
        total, after = 0, {"single": 0, "bulk": 0, "any": 0}
        while True:
            handled = await self._batch(conn, after)
            total += handled
            if handled < self._options.batch:
                return total

    async def _batch(self, conn: Any, after: dict[str, int]) -> int:
        """One transaction: the rows after the positions in ``after`` (moved on); the rows handled."""
        timeout = self._options.query_timeout_s
        async with conn.transaction():
            try:
                rows, row_lanes = await self._fetch(conn, after)
            except asyncpg.UndefinedTableError as e:
                raise OutboxMissing(f"no outbox for table {self._table!r}: run `reconciler migrate`") from e
            if not rows:
                return 0
            events, lanes, published, failed = [], [], [], []
            for row, lane in zip(rows, row_lanes, strict=True):
                try:
                    found = events_from_row(
                        table=self._table, outbox_id=row["id"], op=row["op"], old=row["old_row"],
                        new=row["new_row"], created_at=row["created_at"])
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

    async def _fetch(self, conn: Any, after: dict[str, int]) -> tuple[list[Any], list[Lane]]:
        """A batch's rows, locked, and their lanes: the single changes first, then bulk rows
        with the room left (all rows in id order where the outbox marks none)."""
        limit, timeout = self._options.batch, self._options.query_timeout_s
        first = "single" if self._marks_bulk else "any"
        rows = list(await conn.fetch(self._select[first], limit, after[first], timeout=timeout))
        if rows:
            after[first] = int(rows[-1]["id"])
        lanes = lanes_of([row["txn"] for row in rows])
        if self._marks_bulk and len(rows) < limit:
            bulk = await conn.fetch(self._select["bulk"], limit - len(rows), after["bulk"],
                                    timeout=timeout)
            if bulk:
                after["bulk"] = int(bulk[-1]["id"])
            rows += bulk
            lanes += ["bulk"] * len(bulk)
        return rows, lanes

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
