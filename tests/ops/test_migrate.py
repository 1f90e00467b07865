"""``reconciler migrate``: idempotent, versioned install; an uninstall that leaves no trace."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from events.settings import Columns, Settings
from events.sources.outbox import outbox_names
from ops import capture_install
from tests.support import create_conversations_table, one_line_per_action, recorded

CATALOGUE = """
SELECT 'schema ' || nspname FROM pg_namespace
 WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
UNION ALL
SELECT 'relation ' || n.nspname || '.' || c.relname FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'function ' || n.nspname || '.' || p.proname FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
UNION ALL
SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal
"""


async def catalogue(pg: Any) -> set[str]:
    return {r[0] for r in await pg.fetch(CATALOGUE)}


LATEST = capture_install.migrations()[-1].version


async def outbox_rows(pg: Any, table: str) -> int:
    count: int = await pg.fetchval(f"SELECT count(*) FROM {outbox_names(table).qualified_outbox}")
    return count


async def test_install_is_idempotent_and_uninstall_leaves_no_trace(pg: Any, settings: Settings) -> None:
    await create_conversations_table(pg, settings.table)
    before = await catalogue(pg)
    first = await capture_install.install(pg, settings)
    assert (first.before, first.after) == (None, LATEST)
    assert first.applied == [m.name for m in capture_install.migrations()]
    assert first.applied[:3] == ["0001_outbox.sql", "0002_definer_rights.sql",
                                 "0003_statement_capture.sql"]
    installed = await catalogue(pg)
    second = await capture_install.install(pg, settings)
    assert (second.before, second.after, second.applied) == (LATEST, LATEST, [])
    assert await catalogue(pg) == installed
    assert await capture_install.installed_version(pg, settings.table) == LATEST
    await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES ($1, $2)', "1", "c")
    assert await outbox_rows(pg, settings.table) == 1
    await capture_install.uninstall(pg, settings, force=True)
    assert await catalogue(pg) == before
    await pg.execute(f'UPDATE "{settings.table}" SET status = $1', "closed")  # no trigger left to fire
    assert await capture_install.installed_version(pg, settings.table) is None


async def test_uninstall_refuses_while_changes_are_unpublished_and_dry_runs_change_nothing(
    pg: Any, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    before = await catalogue(pg)
    planned = await capture_install.install(pg, settings, dry_run=True)
    assert planned.after == LATEST and "CREATE TRIGGER" in planned.sql
    assert await catalogue(pg) == before
    await capture_install.install(pg, settings)
    installed = await catalogue(pg)
    await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES ($1, $2)', "1", "c")
    with pytest.raises(capture_install.MigrationError, match="1 unpublished change"):
        await capture_install.uninstall(pg, settings)
    dry = await capture_install.uninstall(pg, settings, dry_run=True)
    assert dry.pending_rows == 1 and "DROP TABLE" in dry.sql
    assert await catalogue(pg) == installed and await outbox_rows(pg, settings.table) == 1
    await capture_install.uninstall(pg, settings, force=True)
    assert await catalogue(pg) == before


async def test_tables_coexist_and_are_removed_one_at_a_time(pg: Any, settings: Settings) -> None:
    other = replace(settings, table=settings.table + "_b")
    for each in (settings, other):
        await create_conversations_table(pg, each.table)
        await capture_install.install(pg, each)
    await capture_install.uninstall(pg, other)
    await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES ($1, $2)', "1", "c")
    await pg.execute(f'INSERT INTO "{other.table}" (phone, phone_number_id) VALUES ($1, $2)', "1", "c")
    assert await outbox_rows(pg, settings.table) == 1
    assert await capture_install.installed_version(pg, other.table) is None
    await capture_install.uninstall(pg, settings, force=True)
    await pg.execute(f'DROP TABLE "{settings.table}", "{other.table}"')


async def test_a_missing_table_or_column_is_a_clear_error(pg: Any, settings: Settings) -> None:
    with pytest.raises(capture_install.MigrationError, match="does not exist"):
        await capture_install.install(pg, settings)
    await create_conversations_table(pg, settings.table)
    renamed = replace(settings, columns=Columns(phone="msisdn"))
    with pytest.raises(capture_install.MigrationError, match="msisdn"):
        await capture_install.install(pg, renamed)
    assert await capture_install.installed_version(pg, settings.table) is None


def reconciler(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    assert settings.redis_url and settings.database_url
    environ = {**os.environ, "REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url,
               "RECONCILER_TABLE": settings.table, "RECONCILER_KEY_PREFIX": settings.key_prefix,
               **env}
    return subprocess.run([sys.executable, "-m", "ops", *args], env=environ, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_the_command_with_renamed_columns_is_audited(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    await pg.execute(f'CREATE TABLE "{settings.table}" (conv_id bigserial PRIMARY KEY, '
                     "msisdn text NOT NULL, phone_number_id text NOT NULL, status text NOT NULL, "
                     "assigned_to text, bot_flow_id text, bot_started_at timestamptz)")
    env = {"RECONCILER_COLUMN_ID": "conv_id", "RECONCILER_COLUMN_PHONE": "msisdn"}
    done = reconciler(settings, "migrate", **env)
    assert done.returncode == 0, done.stderr
    assert f"installed version {LATEST}" in done.stdout
    again = reconciler(settings, "migrate", **env)
    assert f"up to date at version {LATEST}" in again.stdout
    await pg.execute(f'INSERT INTO "{settings.table}" (msisdn, phone_number_id, status) '
                     "VALUES ('5511', 'c', 'active')")
    refused = reconciler(settings, "migrate", "--uninstall", **env)
    assert refused.returncode == 1 and "--force" in refused.stderr
    dry = reconciler(settings, "migrate", "--uninstall", "--dry-run", **env)
    assert dry.returncode == 0 and "DROP TRIGGER" in dry.stdout
    removed = reconciler(settings, "migrate", "--uninstall", "--force", **env)
    assert removed.returncode == 0, removed.stderr
    assert await capture_install.installed_version(pg, settings.table) is None
    lines = one_line_per_action(await recorded(redis, settings.keys))
    assert [(a.action, a.outcome) for a in lines] == [
        ("capture_install.install", "done"), ("capture_install.install", "skipped"),
        ("capture_install.uninstall", "failed"), ("capture_install.uninstall", "planned"),
        ("capture_install.uninstall", "done")]
    await pg.execute(f'DROP TABLE "{settings.table}"')
