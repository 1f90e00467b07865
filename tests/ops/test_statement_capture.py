"""Capture per statement (migration 3) writes exactly the outbox rows capture per row wrote.

Two tables with the same rows: one at version 2 (a trigger per row), one at
the latest version (a trigger per statement, transition tables).  The same
statements run on both, and their outboxes must hold the same operations
with the same images in the same order.  Then ``migrate`` upgrades a table
at version 2 in place, with unpublished changes waiting in its outbox.
"""

from __future__ import annotations

import json
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
    # One row at a time, as a CRM mostly writes (version 5 captures these without pairing):
    "UPDATE {t} SET notes = 'a new message' WHERE phone = '556'",
    "UPDATE {t} SET status = 'closed' WHERE phone = '5521'",
    "UPDATE {t} SET status = status WHERE phone = '5522'",
    "UPDATE {t} SET id = {moved}, phone = phone || '9' WHERE phone = '5520'",
    "UPDATE {t} SET notes = 'nobody' WHERE phone = 'no such phone'",
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


async def filled_at_version(pg: Any, settings: Settings, version: int) -> Settings:
    """A new table with the capture at ``version`` and its first 3,000 rows inserted."""
    target = table_settings(settings)
    await create(pg, target, "bigint")
    await capture_install.install(pg, target, up_to=version)
    await pg.execute(STATEMENTS[0].format(t=f'"{target.table}"', id="g"))
    return target


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
    target = await filled_at_version(pg, settings, 3)
    update = f'UPDATE "{target.table}" SET bot_flow_id = \'again-\' || id'
    (before,) = await capture_plans(pg, update)
    assert "JIT:" in before
    upgraded = await capture_install.install(pg, target)
    assert upgraded.applied[0] == "0004_capture_without_jit.sql"
    (after,) = await capture_plans(pg, update)
    assert "JIT:" not in after and "Insert on" in after
    await capture_install.uninstall(pg, target, force=True)


async def test_a_one_row_update_is_captured_without_pairing_after_the_upgrade(
    pg: Any, settings: Settings
) -> None:
    # Version 4 numbered, joined and sorted both transition tables even for the one
    # row a CRM mostly writes; version 5 joins the two one-row tables as they are.
    target = await filled_at_version(pg, settings, 4)
    one_row = f"UPDATE \"{target.table}\" SET status = 'closed' WHERE phone = '5521'"
    many_rows = f"UPDATE \"{target.table}\" SET status = 'closed' WHERE phone LIKE '552%'"
    (before,) = await capture_plans(pg, one_row)
    assert "WindowAgg" in before
    upgraded = await capture_install.install(pg, target)
    assert upgraded.applied[0] == "0005_one_row_capture.sql"
    (after,) = await capture_plans(pg, one_row.replace("5521", "5523"))
    assert "WindowAgg" not in after and "Insert on" in after
    (bulk,) = await capture_plans(pg, many_rows)
    assert "WindowAgg" in bulk and "JIT:" not in bulk
    changes = await outbox(pg, target.table)  # 3,000 inserts, 5521, 5523, then the other 552*
    assert len(changes) == 3000 + 2 + 1109  # 552, 5520-5529, 55200-55299, 552000-552999
    op, old, new = changes[3001]
    assert (op, json.loads(old)["status"], json.loads(new)["status"], json.loads(new)["phone"]) == (
        "UPDATE", "active", "closed", "5523")
    await capture_install.uninstall(pg, target, force=True)
