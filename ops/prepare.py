"""The database ``reconciler run`` is about to use: made ready when embedded, checked when real.

* **Embedded** (no ``DATABASE_URL``): the conversations table is created in
  the shape the README documents (:data:`CONVERSATIONS_DDL`, with the column
  names of ``RECONCILER_COLUMN_*``), the change capture is installed and the
  sessions and quarantine folders are created, so ``reconciler run`` on a
  fresh machine works at once; one line says so.
* **Real**: nothing is ever created.  A missing table, or a table without the
  change capture, stops the start with one line naming the setting or the
  command that fixes it, instead of a relay retrying with a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from events.errors import ReconcilerError
from events.settings import Settings
from events.sql import quote_ident, quote_table
from ops import capture_install
from ops.runtime_env import Environment

CONVERSATIONS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    {id}             bigserial PRIMARY KEY,
    {phone}          text NOT NULL,
    {channel}        text NOT NULL,
    {status}         text NOT NULL DEFAULT 'active',
    {assigned_to}    text,
    {bot_flow_id}    text,
    {bot_started_at} timestamptz
)
"""
"""The conversations table as the README shows it (several rows per phone allowed)."""

TABLE_ROLES = ("relay", "consumers")
"""Roles that read or write the conversations table."""


class DatabaseNotReady(ReconcilerError):
    """The real database lacks the table or the change capture; the message says how to fix it."""


def conversations_ddl(settings: Settings) -> str:
    names = {name: quote_ident(getattr(settings.columns, name))
             for name in ("id", "phone", "channel", "status", "assigned_to", "bot_flow_id", "bot_started_at")}
    return CONVERSATIONS_DDL.format(table=quote_table(settings.table), **names)


async def prepare_database(env: Environment, roles: Sequence[str]) -> None:
    """Create and install on the embedded database; check a real one.  Raises :class:`DatabaseNotReady`."""
    if not any(role in TABLE_ROLES for role in roles):
        return
    conn = await env.connect_pg()
    try:
        if "postgres" in env.embedded:
            await _make_ready(conn, env.settings)
        else:
            await _check(conn, env.settings, need_capture="relay" in roles)
    finally:
        await conn.close()


async def _make_ready(conn: Any, settings: Settings) -> None:
    for folder in (settings.sessions_dir, settings.quarantine_dir):
        folder.mkdir(parents=True, exist_ok=True)
    created = await conn.fetchval("SELECT to_regclass($1)", settings.table) is None
    if created:
        await conn.execute(conversations_ddl(settings))
    outcome = await capture_install.install(conn, settings)
    done = [f"created table {settings.table}"] if created else []
    if outcome.before != outcome.after:
        done.append(f"installed the change capture (version {outcome.after})")
    if done:
        print(f"reconciler: embedded PostgreSQL: {' and '.join(done)}", file=sys.stderr)


async def _check(conn: Any, settings: Settings, *, need_capture: bool) -> None:
    if await conn.fetchval("SELECT to_regclass($1)", settings.table) is None:
        raise DatabaseNotReady(
            f"PostgreSQL (DATABASE_URL): table {settings.table!r} does not exist: set RECONCILER_TABLE "
            "to your conversations table (docs/database.md shows the shape it needs)")
    if need_capture and await capture_install.installed_version(conn, settings.table) is None:
        raise DatabaseNotReady(
            f"PostgreSQL (DATABASE_URL): no change capture on table {settings.table!r}: "
            "run `reconciler migrate` once (it adds a trigger and an outbox)")
