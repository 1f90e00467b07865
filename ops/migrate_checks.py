"""What ``reconciler migrate`` checks before it touches the user's database.

Two questions, answered from the catalog before any DDL runs:

* **Rights.**  Removing a trigger is reserved to the owner of its table, so
  a role holding only the ``TRIGGER`` privilege could install the capture
  but never remove it.  ``migrate`` therefore refuses, up front and naming
  the ``GRANT`` that fixes it, unless the role has the rights of the table's
  owner (a member of that role, or the owner itself), and it checks the
  ``CREATE`` right the new schema or outbox needs.
* **The lookup index.**  Every handler read looks a conversation up by
  phone and channel; without an index serving that, each read is a
  sequential scan of the whole table.  :func:`lookup_index` says whether an
  index starts with those two columns (either order), and
  :func:`create_index_sql` is the exact ``CREATE INDEX CONCURRENTLY``
  statement ``migrate`` prints (and runs with ``--create-index``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from events.errors import ReconcilerError
from events.settings import Settings
from events.sources.outbox import SCHEMA, outbox_names
from events.sql import quote_ident, quote_table

_RIGHTS_SQL = """
SELECT c.relowner::regrole::text AS owner, current_user AS me, current_database() AS db,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owns,
       has_database_privilege(current_database(), 'CREATE') AS create_db,
       CASE WHEN n.oid IS NULL THEN NULL
            ELSE has_schema_privilege(n.oid, 'CREATE') END AS create_schema,
       CASE WHEN n.oid IS NULL THEN NULL
            ELSE has_schema_privilege(n.oid, 'USAGE') END AS usage_schema,
       EXISTS (SELECT 1 FROM pg_class o WHERE o.relnamespace = n.oid AND o.relname = $3) AS has_outbox,
       (SELECT bool_and(has_table_privilege(v.oid, p))
          FROM pg_class v, unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p
         WHERE v.relnamespace = n.oid AND v.relname = 'schema_version') AS writes_versions
  FROM pg_class c LEFT JOIN pg_namespace n ON n.nspname = $2
 WHERE c.oid = $1::regclass
"""

_INDEXES_SQL = """
SELECT i.indexrelid::regclass::text AS name, i.indisvalid AS valid,
       (SELECT array_agg(a.attname::text ORDER BY k.n)
          FROM unnest(i.indkey[0:1]) WITH ORDINALITY AS k(attnum, n)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum) AS leading
  FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_am am ON am.oid = ic.relam
 WHERE i.indrelid = $1::regclass AND am.amname = 'btree' AND i.indpred IS NULL
"""


class RightsMissing(ReconcilerError):
    """The role running ``migrate`` lacks a right it needs; the message names the grant."""


@dataclass(frozen=True, slots=True)
class IndexState:
    """Whether a valid index serves the lookup, and the statement that would create one."""

    serving: str | None
    """The name of a valid index serving the lookup, or ``None``."""
    invalid: str | None
    """An index on the right columns left invalid (a failed concurrent build), or ``None``."""
    create_sql: str


async def require_rights(conn: Any, settings: Settings, *, installing: bool) -> None:
    """Raise :class:`RightsMissing` unless ``conn``'s role can install *and* uninstall.

    Read from the catalog alone, before anything in schema ``reconciler`` is
    looked at: that schema may already exist (another table's capture, installed
    by another role) without this role having any right on it.
    """
    row = await conn.fetchrow(_RIGHTS_SQL, settings.table, SCHEMA, outbox_names(settings.table).outbox)
    new_outbox = installing and not row["has_outbox"]
    me, owner, table = quote_ident(row["me"]), quote_ident(row["owner"]), settings.table
    if not row["owns"]:
        raise RightsMissing(
            f"role {me} needs the rights of {owner}, the owner of table {table}: only the owner "
            f"may remove a trigger, so a TRIGGER privilege alone could install but never "
            f"uninstall. Run migrate as {owner}, or GRANT {owner} TO {me}")
    if row["create_schema"] is None and not row["create_db"]:
        raise RightsMissing(
            f"role {me} may not create schema {SCHEMA!r}: GRANT CREATE ON DATABASE "
            f"{quote_ident(row['db'])} TO {me}")
    if row["usage_schema"] is False or row["writes_versions"] is False:
        schema = quote_ident(SCHEMA)
        raise RightsMissing(
            f"role {me} may not use schema {SCHEMA!r}, which another role set up for the capture "
            f"of other tables: GRANT USAGE, CREATE ON SCHEMA {schema} TO {me}; GRANT SELECT, "
            f"INSERT, UPDATE, DELETE ON {schema}.schema_version TO {me}")
    if new_outbox and row["create_schema"] is False:
        raise RightsMissing(
            f"role {me} may not create the outbox in schema {SCHEMA!r}: GRANT CREATE ON SCHEMA "
            f"{quote_ident(SCHEMA)} TO {me}")


def index_name(settings: Settings) -> str:
    """``reconciler_lookup_<table>``, shortened like every other installed name."""
    return outbox_names(settings.table).trigger.replace("reconciler_capture_", "reconciler_lookup_", 1)


def create_index_sql(settings: Settings) -> str:
    columns = settings.columns
    return (f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote_ident(index_name(settings))} "
            f"ON {quote_table(settings.table)} "
            f"({quote_ident(columns.phone)}, {quote_ident(columns.channel)})")


async def lookup_index(conn: Any, settings: Settings) -> IndexState:
    """Which btree index (if any) starts with the phone and channel columns."""
    wanted = {settings.columns.phone, settings.columns.channel}
    serving = invalid = None
    for row in await conn.fetch(_INDEXES_SQL, settings.table):
        if set(row["leading"] or ()) != wanted:
            continue
        if row["valid"]:
            serving = serving or row["name"]
        else:
            invalid = invalid or row["name"]
    return IndexState(serving=serving, invalid=invalid, create_sql=create_index_sql(settings))
