"""Installing and removing the change capture in the user's database.

The SQL lives in ``ops/migrations/`` as numbered files (``0001_outbox.sql``,
...) plus ``uninstall.sql``; each is a template whose ``{placeholders}`` are
filled with identifiers quoted here, never with raw setting values.  The
version installed for each table is a row in ``reconciler.schema_version``,
so ``install`` applies only the files above it and running it again changes
nothing.  Every run holds one advisory lock for its whole transaction: two
``reconciler migrate`` at once take turns, and a failed one leaves nothing
half-done.

``uninstall`` removes the triggers, the function, the outbox and the version
row, and the schema itself once no table uses it.  It refuses while the
outbox still holds changes the relay has not published, unless forced.

Both refuse up front when the role lacks a right they need
(:mod:`ops.migrate_checks`), and both run their DDL under a ``lock_timeout``:
``CREATE TRIGGER`` waits for every open write transaction on the table, and
every writer arriving after it would queue behind that wait, so ``migrate``
gives up after a few seconds with a clear message instead of stalling the
application.  ``create_index`` builds the lookup index ``CONCURRENTLY``
(outside any transaction), so writes are never blocked by it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from events.errors import ReconcilerError
from events.settings import Settings
from events.sources.outbox import CONSUMERS_APPLICATION_NAME, SCHEMA, outbox_names
from events.sql import quote_ident, quote_table
from ops.migrate_checks import IndexState, lookup_index, require_rights

__all__ = ["IndexState", "MigrationError", "Outcome", "create_index", "install", "uninstall"]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
"""Shipped as package data next to this module."""
MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
VERSION_TABLE = f"{quote_ident(SCHEMA)}.schema_version"
LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('reconciler.migrate'))"
LOCK_TIMEOUT_S = 1.0
"""How long DDL may wait for a table lock (writers queue behind the wait)."""


class MigrationError(ReconcilerError):
    """The database refused a migration; the message says what and where."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str


@dataclass
class Outcome:
    """What ``install`` or ``uninstall`` did (or, in a dry run, would do)."""

    table: str
    before: int | None
    after: int | None
    applied: list[str] = field(default_factory=list)
    sql: str = ""
    pending_rows: int = 0
    dry_run: bool = False
    index: IndexState | None = None
    """The lookup index found (install only)."""


def migrations() -> list[Migration]:
    """The numbered migrations shipped with the package, in order."""
    found = []
    for entry in MIGRATIONS_DIR.iterdir():
        match = MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)


IMAGE_TYPES = {"id": "text", "phone": "text", "channel": "text", "status": "text",
               "assigned_to": "text", "bot_flow_id": "text", "bot_started_at": "timestamptz"}
"""The watched columns, under our names, and the type each is cast to in a row's image."""


def render(template: str, settings: Settings) -> str:
    """A migration template with every name filled in, quoted.

    From version 5 on, templates take these from one list of the watched columns
    instead of spelling them out: ``{watched}`` (the user's column names),
    ``{old_image}`` and ``{new_image}`` (the jsonb images of rows ``o`` and ``n``)
    and ``{changed}`` (whether any watched column differs between them)."""
    names = outbox_names(settings.table)
    quoted = {name: quote_ident(getattr(settings.columns, name)) for name in IMAGE_TYPES}
    return template.format(
        table=quote_table(settings.table),
        outbox=names.qualified_outbox,
        function=names.qualified_function,
        trigger=quote_ident(names.trigger),
        update_trigger=quote_ident(names.update_trigger),
        delete_trigger=quote_ident(names.delete_trigger),
        channel_literal=_literal(names.channel),
        consumers_application_name=_literal(CONSUMERS_APPLICATION_NAME),
        **{f"c_{name}": column for name, column in quoted.items()},
        watched=", ".join(quoted.values()),
        old_image=_image("o", quoted),
        new_image=_image("n", quoted),
        changed="\n           OR ".join(f"o.{c} IS DISTINCT FROM n.{c}" for c in quoted.values()),
    )


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _image(alias: str, quoted: dict[str, str]) -> str:
    pairs = ", ".join(f"'{name}', {alias}.{quoted[name]}::{cast}" for name, cast in IMAGE_TYPES.items())
    return f"jsonb_build_object({pairs})"


async def installed_version(conn: Any, table: str) -> int | None:
    """The version installed for ``table``, or ``None``."""
    if await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.schema_version") is None:
        return None
    version: int | None = await conn.fetchval(
        f"SELECT version FROM {VERSION_TABLE} WHERE target = $1", table)
    return version


async def install(conn: Any, settings: Settings, *, dry_run: bool = False,
                  lock_timeout_s: float = LOCK_TIMEOUT_S, up_to: int | None = None) -> Outcome:
    """Apply the migrations not yet applied to ``settings.table``.

    ``up_to`` stops at that version, as an older release would (benchmarks
    compare versions; tests upgrade an installed version in place).
    """
    async with conn.transaction():
        if not await _begin(conn, settings, lock_timeout_s):
            raise MigrationError(f"table {settings.table!r} does not exist (RECONCILER_TABLE)")
        await require_rights(conn, settings, installing=True)
        before = await installed_version(conn, settings.table)
        pending = [m for m in migrations()
                   if (before or 0) < m.version <= (up_to or m.version)]
        outcome = Outcome(table=settings.table, before=before, dry_run=dry_run,
                          after=pending[-1].version if pending else before,
                          applied=[m.name for m in pending],
                          sql="\n".join(render(m.template, settings) for m in pending),
                          index=await lookup_index(conn, settings))
        if dry_run or not pending:
            return outcome
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
        # exists, which a role installing a second table may rightly lack.
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                                   SCHEMA):
            await _run(conn, f"CREATE SCHEMA {quote_ident(SCHEMA)}", "create schema")
        await _run(conn, f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} ("
                         "target text PRIMARY KEY, version integer NOT NULL, "
                         "installed_at timestamptz NOT NULL DEFAULT now())", "version table")
        for migration in pending:
            await _run(conn, render(migration.template, settings), migration.name)
        await conn.execute(
            f"INSERT INTO {VERSION_TABLE} (target, version) VALUES ($1, $2) "
            "ON CONFLICT (target) DO UPDATE SET version = EXCLUDED.version, installed_at = now()",
            settings.table, outcome.after)
        return outcome


async def uninstall(
    conn: Any, settings: Settings, *, dry_run: bool = False, force: bool = False,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
) -> Outcome:
    """Remove everything installed for ``settings.table``."""
    names = outbox_names(settings.table)
    async with conn.transaction():
        if await _begin(conn, settings, lock_timeout_s):  # a dropped table leaves only our objects
            await require_rights(conn, settings, installing=False)
        before = await installed_version(conn, settings.table)
        pending_rows = 0
        if await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.{names.outbox}") is not None:
            pending_rows = await conn.fetchval(
                f"SELECT count(*) FROM {names.qualified_outbox} WHERE failed IS NULL")
        sql = render((MIGRATIONS_DIR / "uninstall.sql").read_text(), settings)
        outcome = Outcome(table=settings.table, before=before, after=None, sql=sql,
                          pending_rows=pending_rows, dry_run=dry_run)
        if dry_run:
            return outcome
        if pending_rows and not force:
            raise MigrationError(
                f"the outbox of {settings.table} holds {pending_rows} unpublished change(s): "
                "run the relay until it is empty, or pass --force to drop them")
        await _run(conn, sql, "uninstall.sql")
        await _drop_version_and_schema(conn, settings.table)
        return outcome


async def create_index(conn: Any, settings: Settings) -> IndexState:
    """Build the lookup index concurrently (never in a transaction); the state after."""
    state = await lookup_index(conn, settings)
    if state.serving is None:
        if state.invalid is not None:
            raise MigrationError(
                f"index {state.invalid} on {settings.table} is invalid (an earlier concurrent "
                f"build failed): DROP INDEX CONCURRENTLY {state.invalid}; then run again")
        await _run(conn, state.create_sql, "create index")
        state = await lookup_index(conn, settings)
    return state


async def _begin(conn: Any, settings: Settings, lock_timeout_s: float) -> bool:
    """Take the migrate lock and bound every later lock wait; whether the table exists."""
    await conn.execute(LOCK_SQL)
    await conn.execute(f"SET LOCAL lock_timeout = '{max(1, int(lock_timeout_s * 1000))}ms'")
    return await conn.fetchval("SELECT to_regclass($1)", settings.table) is not None


async def _drop_version_and_schema(conn: Any, table: str) -> None:
    if await conn.fetchval("SELECT to_regclass($1)", f"{SCHEMA}.schema_version") is None:
        return
    await conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE target = $1", table)
    if await conn.fetchval(f"SELECT count(*) FROM {VERSION_TABLE}") == 0:
        await conn.execute(f"DROP TABLE {VERSION_TABLE}")
        # RESTRICT, in a savepoint: anything else a user put in the schema keeps it.
        try:
            async with conn.transaction():
                await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(SCHEMA)} RESTRICT")
        except asyncpg.DependentObjectsStillExistError:
            pass


async def _run(conn: Any, sql: str, what: str) -> None:
    try:
        await conn.execute(sql)
    except asyncpg.LockNotAvailableError as e:
        raise MigrationError(
            f"{what}: another transaction holds a lock on the table (an open write?); migrate "
            "gave up after lock_timeout so writers are not stalled behind it, and changed "
            "nothing: retry once it has committed (--lock-timeout to wait longer)") from e
    except asyncpg.PostgresError as e:
        raise MigrationError(f"{what}: {type(e).__name__}: {e}") from e
