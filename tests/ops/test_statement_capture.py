"""Capture per statement (migration 3) writes exactly the outbox rows capture per row wrote.

Two tables with the same rows: one at version 2 (a trigger per row), one at
the latest version (a trigger per statement, transition tables).  The same
statements run on both, and their outboxes must hold the same operations
with the same images in the same order.  Then ``migrate`` upgrades a table
at version 2 in place, with unpublished changes waiting in its outbox.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest

from events.settings import Settings
from events.sources.outbox import outbox_names
from ops import capture_install

DDL = """CREATE TABLE "{table}" (
    id {id_type} PRIMARY KEY, phone text NOT NULL, phone_number_id text NOT NULL,
    status text NOT NULL DEFAULT 'active', assigned_to text, bot_flow_id text,
    bot_started_at timestamp, notes text, updated_by text)"""
"""The users' table, with a column we do not watch and a zone-less timestamp."""

USER_TRIGGER = """
CREATE FUNCTION "{table}_stamp"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.assigned_to = 'bot' AND NEW.bot_started_at IS NULL THEN
        NEW.bot_started_at := '2026-01-02 03:04:05';
    END IF;
    NEW.updated_by := current_user;
    RETURN NEW;
END $$;
CREATE TRIGGER "{table}_stamp" BEFORE INSERT OR UPDATE ON "{table}"
    FOR EACH ROW EXECUTE FUNCTION "{table}_stamp"();
"""
"""The CRM's own BEFORE trigger: what it changes is what must be captured."""

STATEMENTS = [
    "INSERT INTO {t} (id, phone, phone_number_id, assigned_to) "
    "SELECT {id}, '55' || g, 'c' || (g % 3), CASE WHEN g % 2 = 0 THEN 'bot' END "
    "FROM generate_series(1, 3000) g",
    "UPDATE {t} SET bot_flow_id = 'flow-' || phone WHERE assigned_to = 'bot'",
    "UPDATE {t} SET notes = 'not watched'",
    "UPDATE {t} SET status = 'closed' WHERE false",
    "UPDATE {t} SET status = 'closed', assigned_to = NULL WHERE phone IN ('552', '5510', '5511')",
    "UPDATE {t} SET phone = phone || '0' WHERE phone LIKE '551%'",
    "UPDATE {t} SET id = {moved}, status = 'closed' WHERE phone LIKE '557%'",
    "UPDATE {t} SET assigned_to = 'bot', bot_started_at = NULL WHERE phone = '553'",
    "DELETE FROM {t} WHERE phone LIKE '554%'",
    "UPDATE {t} SET status = status",
]


def table_settings(settings: Settings) -> Settings:
    return replace(settings, table=f"conv_{uuid.uuid4().hex[:8]}")


async def create(pg: Any, settings: Settings, id_type: str) -> None:
    await pg.execute(DDL.format(table=settings.table, id_type=id_type))
    await pg.execute(USER_TRIGGER.format(table=settings.table))


async def outbox(pg: Any, table: str) -> list[tuple[str, Any, Any]]:
    rows = await pg.fetch(f"SELECT op, old_row, new_row FROM {outbox_names(table).qualified_outbox} "
                          "ORDER BY id")
    return [(r["op"], r["old_row"], r["new_row"]) for r in rows]


async def row_triggers(pg: Any, table: str) -> list[bool]:
    """For each of our triggers on ``table``: whether it fires per row."""
    rows = await pg.fetch("SELECT (tgtype & 1) = 1 AS per_row FROM pg_trigger "
                          "WHERE tgrelid = $1::regclass AND tgname LIKE 'reconciler_capture%'", table)
    return [r["per_row"] for r in rows]


@pytest.mark.parametrize("id_type,id_expr,moved", [
    ("bigint", "g", "id + 100000"),
    ("uuid", "md5(g::text)::uuid", "md5(id::text)::uuid"),
])
async def test_statement_capture_writes_what_row_capture_wrote(
    pg: Any, settings: Settings, id_type: str, id_expr: str,
    moved: str,
) -> None:
    per_row, per_statement = table_settings(settings), table_settings(settings)
    for target in (per_row, per_statement):
        await create(pg, target, id_type)
    await capture_install.install(pg, per_row, up_to=2)
    await capture_install.install(pg, per_statement)
    assert await row_triggers(pg, per_row.table) == [True, True]
    assert await row_triggers(pg, per_statement.table) == [False, False, False]
    for statement in STATEMENTS:
        for target in (per_row, per_statement):
            await pg.execute(statement.format(t=f'"{target.table}"', id=id_expr, moved=moved))
    expected = await outbox(pg, per_row.table)
    assert len(expected) > 5000
    assert await outbox(pg, per_statement.table) == expected
    for target in (per_row, per_statement):
        await capture_install.uninstall(pg, target, force=True)


async def test_migrate_upgrades_an_installed_version_in_place(
    pg: Any, settings: Settings
) -> None:
    target = table_settings(settings)
    await create(pg, target, "bigint")
    await capture_install.install(pg, target, up_to=2)
    await pg.execute(STATEMENTS[0].format(t=f'"{target.table}"', id="g"))
    waiting = await outbox(pg, target.table)
    upgraded = await capture_install.install(pg, target)
    assert (upgraded.before, upgraded.applied[0]) == (2, "0003_statement_capture.sql")
    assert await outbox(pg, target.table) == waiting  # unpublished changes survive the upgrade
    assert await row_triggers(pg, target.table) == [False, False, False]
    await pg.execute(f"UPDATE \"{target.table}\" SET status = 'closed' WHERE phone = '551'")
    after = await outbox(pg, target.table)
    assert len(after) == len(waiting) + 1 and after[-1][0] == "UPDATE"
    await capture_install.uninstall(pg, target, force=True)
    assert await row_triggers(pg, target.table) == []


async def capture_plans(pg: Any, statement: str) -> list[str]:
    """The plans of what ``statement`` ran, its trigger's query included (auto_explain)."""
    plans: list[str] = []

    def listen(_conn: Any, message: Any) -> None:
        if "plan:" in message.message:
            plans.append(message.message)

    pg.add_log_listener(listen)
    try:
        await pg.execute("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
                         "SET auto_explain.log_nested_statements = on; "
                         "SET auto_explain.log_level = notice; SET jit_above_cost = 0")
        await pg.execute(statement)
    finally:
        await pg.execute("RESET auto_explain.log_min_duration; RESET jit_above_cost")
        pg.remove_log_listener(listen)
    return [p for p in plans if "INSERT INTO" in p]


async def test_the_capture_query_is_not_jit_compiled_after_the_upgrade(
    pg: Any, settings: Settings
) -> None:
    # A bulk UPDATE's pairing join is estimated at n x n rows, so PostgreSQL compiled
    # the capture query with LLVM on every bulk statement (version 4 turns that off).
    if not await pg.fetchval("SELECT pg_jit_available()"):
        pytest.skip("this PostgreSQL has no JIT")
    target = table_settings(settings)
    await create(pg, target, "bigint")
    await capture_install.install(pg, target, up_to=3)
    await pg.execute(STATEMENTS[0].format(t=f'"{target.table}"', id="g"))
    update = f'UPDATE "{target.table}" SET bot_flow_id = \'again-\' || id'
    (before,) = await capture_plans(pg, update)
    assert "JIT:" in before
    upgraded = await capture_install.install(pg, target)
    assert upgraded.applied == ["0004_capture_without_jit.sql"]
    (after,) = await capture_plans(pg, update)
    assert "JIT:" not in after and "Insert on" in after
    await capture_install.uninstall(pg, target, force=True)
