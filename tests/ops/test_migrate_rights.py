"""``migrate`` against the roles a CRM really has: the owner, its writer, a TRIGGER-only role.

The application's writer must keep writing its table after ``migrate`` (the
capture runs with the installer's rights, under a fixed search_path); a role
that could install but never uninstall is refused up front, naming the
grant; an installed version 1 is upgraded in place; an open write
transaction makes ``migrate`` give up after its lock timeout; the lookup
index is advised and built concurrently.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from events.settings import Settings
from ops import capture_install
from ops.migrate_checks import RightsMissing
from tests.conftest import RUN_ID, with_database
from tests.ops.test_migrate import catalogue, outbox_rows, reconciler
from tests.pgroles import Roles
from tests.support import create_conversations_table


@pytest.fixture
async def database_url(_servers: dict[str, str]) -> AsyncIterator[str]:
    """A database of each test's own: whether schema ``reconciler`` exists (and who owns it)
    decides which grant ``migrate`` asks for, so no test may see another's."""
    name = f"reconciler_rights_{RUN_ID}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_servers["postgres"])
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(_servers["postgres"], name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


WRITER_GRANTS = ('GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}" TO {{role}}',
                 'GRANT USAGE ON SEQUENCE "{table}_id_seq" TO {{role}}')


async def owned_table(pg: Any, roles: Roles, settings: Settings) -> tuple[str, str]:
    """The conversations table owned by an owner role, and a writer with only DML rights."""
    await create_conversations_table(pg, settings.table)
    owner = await roles.create("owner", f'ALTER TABLE "{settings.table}" OWNER TO {{role}}')
    writer = await roles.create("writer", *(g.format(table=settings.table) for g in WRITER_GRANTS))
    return owner, writer


async def write_as(roles: Roles, role: str, table: str) -> None:
    conn = await roles.connect(role)
    try:
        await conn.execute(f'INSERT INTO "{table}" (phone, phone_number_id, status, assigned_to) '
                           "VALUES ('5511', 'c', 'active', 'bot')")
        await conn.execute(f"UPDATE \"{table}\" SET status = 'closed', assigned_to = NULL")
        await conn.execute(f'DELETE FROM "{table}"')
    finally:
        await conn.close()


async def test_the_application_writer_keeps_writing_after_migrate(
    pg: Any, roles: Roles, settings: Settings
) -> None:
    _, writer = await owned_table(pg, roles, settings)
    done = await capture_install.install(pg, settings)
    assert done.applied[:2] == ["0001_outbox.sql", "0002_definer_rights.sql"]
    assert done.after == capture_install.migrations()[-1].version
    await write_as(roles, writer, settings.table)
    assert await outbox_rows(pg, settings.table) == 3
    function = await pg.fetchrow(
        "SELECT prosecdef, proconfig, has_function_privilege('public', p.oid, 'EXECUTE') AS public "
        "FROM pg_proc p WHERE proname = $1", f"capture_{settings.table}")
    assert function["prosecdef"] and "search_path=pg_catalog, pg_temp" in function["proconfig"]
    assert not function["public"]
    await capture_install.uninstall(pg, settings, force=True)


async def test_an_installed_version_1_is_upgraded_in_place(
    pg: Any, roles: Roles, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, writer = await owned_table(pg, roles, settings)
    shipped = capture_install.migrations()
    monkeypatch.setattr(capture_install, "migrations", lambda: shipped[:1])
    assert (await capture_install.install(pg, settings)).after == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="schema reconciler"):
        await write_as(roles, writer, settings.table)  # what version 1 did to the CRM
    monkeypatch.undo()
    upgraded = await capture_install.install(pg, settings)
    assert (upgraded.before, upgraded.after) == (1, shipped[-1].version)
    assert upgraded.applied == [m.name for m in shipped[1:]]
    await write_as(roles, writer, settings.table)
    assert await outbox_rows(pg, settings.table) == 3
    await capture_install.uninstall(pg, settings, force=True)


async def test_a_trigger_only_role_is_refused_up_front_and_the_owners_member_can_do_both(
    pg: Any, roles: Roles, settings: Settings, database_url: str
) -> None:
    owner, _ = await owned_table(pg, roles, settings)
    installer = await roles.create(
        "installer", f'GRANT TRIGGER ON "{settings.table}" TO {{role}}',
        f"GRANT CREATE ON DATABASE {urlsplit(database_url).path.lstrip('/')} TO {{role}}")
    before = await catalogue(pg)
    conn = await roles.connect(installer)
    try:
        with pytest.raises(RightsMissing, match=f'GRANT "{owner}" TO "{installer}"'):
            await capture_install.install(conn, settings)
        assert await catalogue(pg) == before
        await pg.execute(f'GRANT "{owner}" TO "{installer}"')
        await capture_install.install(conn, settings)
        await capture_install.install(conn, settings)
        await capture_install.uninstall(conn, settings, force=True)
        assert await catalogue(pg) == before
    finally:
        await conn.close()


async def test_a_role_that_may_not_create_the_schema_is_told_the_grant(
    pg: Any, roles: Roles, settings: Settings
) -> None:
    owner, _ = await owned_table(pg, roles, settings)
    conn = await roles.connect(owner)
    try:
        with pytest.raises(RightsMissing, match="GRANT CREATE ON DATABASE"):
            await capture_install.install(conn, settings)
    finally:
        await conn.close()


async def test_a_schema_holding_another_tables_capture_is_named_with_its_grant(
    pg: Any, roles: Roles, settings: Settings, database_url: str
) -> None:
    other = replace(settings, table=f"{settings.table}_other")
    await create_conversations_table(pg, other.table)
    await capture_install.install(pg, other)  # schema reconciler now exists, owned by the superuser
    owner, writer = await owned_table(pg, roles, settings)
    installer = await roles.create("installer", f'GRANT "{owner}" TO {{role}}')
    before = await catalogue(pg)
    conn = await roles.connect(installer)
    try:
        grant = f'GRANT USAGE, CREATE ON SCHEMA "reconciler" TO "{installer}"'
        with pytest.raises(RightsMissing, match=grant):
            await capture_install.install(conn, settings)
        assert await catalogue(pg) == before
        await pg.execute(f'GRANT USAGE, CREATE ON SCHEMA reconciler TO "{installer}"')
        with pytest.raises(RightsMissing, match=re.escape(
                'GRANT SELECT, INSERT, UPDATE, DELETE ON "reconciler".schema_version')):
            await capture_install.install(conn, settings)
        await pg.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON reconciler.schema_version "
                         f'TO "{installer}"')
        await capture_install.install(conn, settings)
        await write_as(roles, writer, settings.table)
        assert await outbox_rows(pg, settings.table) == 3
        await capture_install.uninstall(conn, settings, force=True)
    finally:
        await conn.close()
    await capture_install.uninstall(pg, other, force=True)


async def test_an_open_write_transaction_makes_migrate_give_up_not_stall_writers(
    pg: Any, settings: Settings, database_url: str
) -> None:
    await create_conversations_table(pg, settings.table)
    before = await catalogue(pg)
    holder = await asyncpg.connect(database_url)
    try:
        open_write = holder.transaction()
        await open_write.start()
        await holder.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES (1, 1)')
        with pytest.raises(capture_install.MigrationError, match="another transaction holds a lock"):
            await capture_install.install(pg, settings, lock_timeout_s=0.3)
        assert await catalogue(pg) == before
        await open_write.commit()
    finally:
        await holder.close()
    assert (await capture_install.install(pg, settings)).after == capture_install.migrations()[-1].version
    await capture_install.uninstall(pg, settings, force=True)


async def test_migrate_advises_the_lookup_index_and_builds_it_concurrently(
    pg: Any, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    advised = reconciler(settings, "migrate")
    assert advised.returncode == 0, advised.stderr
    statement = (f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "reconciler_lookup_{settings.table}" '
                 f'ON "{settings.table}" ("phone", "phone_number_id");')
    assert "no index serves" in advised.stdout and statement in advised.stdout
    built = reconciler(settings, "migrate", "--create-index")
    assert built.returncode == 0, built.stderr
    assert f"lookup index reconciler_lookup_{settings.table} serves" in built.stdout
    assert (await capture_install.install(pg, settings)).index.serving  # type: ignore[union-attr]
    await pg.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = $1::regclass",
                     f"reconciler_lookup_{settings.table}")  # as a failed concurrent build leaves it
    invalid = reconciler(settings, "migrate", "--create-index")
    assert invalid.returncode == 1
    assert f'DROP INDEX CONCURRENTLY reconciler_lookup_{settings.table}' in invalid.stderr
    assert "is invalid" in reconciler(settings, "migrate").stdout
    await pg.execute(f'DROP INDEX "reconciler_lookup_{settings.table}"')
    await pg.execute(f'CREATE INDEX ON "{settings.table}" (phone_number_id, phone, status)')
    found = await capture_install.install(pg, settings)
    assert found.index is not None and found.index.serving is not None
    await capture_install.uninstall(pg, settings, force=True)
