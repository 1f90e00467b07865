"""Real conversations: several rows per number, uuid and bigserial ids, races with the CRM.

Against real PostgreSQL (a CRM's own table: extra columns, a trigger of its
own, ``created_at``), Redis and a watched folder, with the roles a deployment
runs (relay with its table listing, watcher, consumers, timers), as a user
sees the outcome: the rows, the session folder, the quarantine, ``audit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from consumers.errors import PermanentError
from consumers.stores.conversations_sql import ConversationsSql
from events.contract import ActionRecorded
from events.settings import Settings
from ops import capture_install
from ops.config import ConfigError, load_settings
from ops.roles import serve_roles
from tests.ops.test_audit_inspect import reconciler
from tests.pgroles import Roles
from tests.support import eventually, recorded

CHANNEL = "940740243"
FLOW = "promotoras-v2-mw7rpy"
ROLES = ["relay", "watcher", "consumers", "timers"]

CRM_TABLE = """
CREATE TABLE {table} (
    id {id_type} PRIMARY KEY,
    phone text NOT NULL,
    phone_number_id text NOT NULL,
    status text NOT NULL DEFAULT 'active',
    assigned_to text,
    bot_flow_id text,
    bot_started_at timestamptz,
    customer_name text,
    notes jsonb DEFAULT '{{}}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON {table} (phone, phone_number_id);
CREATE FUNCTION {table}_touch() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table}
  FOR EACH ROW EXECUTE FUNCTION {table}_touch();
"""
ID_TYPES = {"uuid": "uuid DEFAULT gen_random_uuid()", "bigserial": "bigserial"}


async def crm_table(pg: Any, settings: Settings, id_kind: str, *, install: bool = True) -> None:
    await pg.execute(CRM_TABLE.format(table=settings.table, id_type=ID_TYPES[id_kind]))
    if install:
        await capture_install.install(pg, settings)


async def insert(pg: Any, settings: Settings, phone: str, status: str, assigned: str | None,
                 flow: str | None, started: bool) -> Any:
    return await pg.fetchval(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at, customer_name) VALUES ($1, $2, $3, $4, $5,"
        " CASE WHEN $6 THEN now() END, 'Cliente') RETURNING id",
        phone, CHANNEL, status, assigned, flow, started)


def write_file(settings: Settings, phone: str, flow: str | None, *, age_s: float = 0.0) -> Path:
    path = settings.sessions_dir / f"whatsapp_{phone}_{CHANNEL}.json"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps({"flowId": flow, "step": 1}))
    if age_s:
        os.utime(temporary, (time.time() - age_s, time.time() - age_s))
    os.replace(temporary, path)
    return path


@asynccontextmanager
async def running(settings: Settings, redis: Redis) -> AsyncIterator[None]:
    stop = asyncio.Event()
    roles = asyncio.create_task(serve_roles(settings, redis, ROLES, stop))
    try:
        yield
    finally:
        stop.set()
        await roles


async def audit_actions(redis: Redis, settings: Settings) -> list[ActionRecorded]:
    return await recorded(redis, settings.keys)


async def drained(redis: Redis, settings: Settings) -> bool:
    """Every event on the conversations stream delivered and acknowledged."""
    groups = await redis.xinfo_groups(settings.keys.conversations_stream)
    return bool(groups) and all(g["pending"] == 0 and g.get("lag") == 0 for g in groups)


async def bot_fields_left(pg: Any, settings: Settings) -> int:
    count: int = await pg.fetchval(
        f"SELECT count(*) FROM {settings.table} WHERE status <> 'active' AND (assigned_to = 'bot'"
        " OR bot_flow_id IS NOT NULL OR bot_started_at IS NOT NULL)")
    return count


@pytest.mark.parametrize("id_kind", ["uuid", "bigserial"])
async def test_returning_customers_every_row_is_reconciled_from_the_listing(
    pg: Any, redis: Redis, settings: Settings, id_kind: str,
) -> None:
    """Made before ``migrate`` (no change will ever come): healed on the first start alone."""
    await crm_table(pg, settings, id_kind, install=False)
    healthy, reopened = [f"52155{n:05d}" for n in range(10)], [f"52166{n:05d}" for n in range(10)]
    for phone in healthy:  # an older closed row still carrying bot fields, a newer live bot run
        await insert(pg, settings, phone, "closed", "bot", "flow-old", True)
        await insert(pg, settings, phone, "active", "bot", FLOW, True)
        write_file(settings, phone, FLOW, age_s=3600)
    for phone in reopened:  # an old clean closed row, then a bot row the CRM closed with the seed bug
        await insert(pg, settings, phone, "closed", None, None, False)
        await insert(pg, settings, phone, "closed", "bot", FLOW, True)
    assert await bot_fields_left(pg, settings) == 20
    await capture_install.install(pg, settings)

    async with running(settings, redis):
        async def healed() -> bool:
            return await bot_fields_left(pg, settings) == 0
        await eventually(healed, timeout=90, message="every closed row's bot fields cleared")

    assert sorted(p.name for p in settings.sessions_dir.iterdir()) == sorted(
        f"whatsapp_{p}_{CHANNEL}.json" for p in healthy), "the healthy chats' files are kept"
    live = await pg.fetchval(f"SELECT count(*) FROM {settings.table} WHERE status = 'active'"
                             " AND assigned_to = 'bot' AND bot_flow_id = $1", FLOW)
    assert live == 10
    result = await asyncio.to_thread(reconciler, settings, "audit")
    assert result.returncode == 0, result.stdout + result.stderr


async def test_two_active_bot_rows_are_reported_not_acted_on(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await crm_table(pg, settings, "uuid")
    phone = "5217700001"
    first = await insert(pg, settings, phone, "active", "bot", None, True)
    second = await insert(pg, settings, phone, "active", "bot", None, True)
    path = write_file(settings, phone, FLOW, age_s=3600)

    async with running(settings, redis):
        async def reported() -> bool:
            return any(a.action == "report_ambiguous_rows"
                       for a in await audit_actions(redis, settings))
        await eventually(reported, timeout=60, message="the ambiguous rows to be reported")
        result = await asyncio.to_thread(reconciler, settings, "--json", "audit")
        shown = await asyncio.to_thread(reconciler, settings, "--json", "inspect",
                                        f"{phone}:{CHANNEL}")

    assert path.exists(), "no quarantine guessed"
    flows = await pg.fetch(f"SELECT bot_flow_id FROM {settings.table}")
    assert [r[0] for r in flows] == [None, None], "no backfill guessed"
    report = json.loads(result.stdout)
    assert {i["kind"] for i in report["inconsistencies"]} == {"ambiguous_rows"}
    story = json.loads(shown.stdout)
    assert story["broken_rules"] == "ambiguous_rows", "inspect agrees with audit"
    assert "report_ambiguous_rows" in story["rule_table_says"]
    entry = next(a for a in await audit_actions(redis, settings)
                 if a.action == "report_ambiguous_rows")
    assert entry.before is not None
    assert {r["id"] for r in entry.before["rows"]} == {str(first), str(second)}


async def test_a_file_written_before_its_row_says_bot_is_never_moved(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    """The flow builder writes the file; 150 ms later the CRM commits ``assigned_to='bot'``."""
    settings = replace(settings, grace_s=2.0)
    await crm_table(pg, settings, "bigserial")
    phones = [f"52188{n:05d}" for n in range(10)]
    ids = [await insert(pg, settings, p, "active", "agent-7", None, False) for p in phones]
    async with running(settings, redis):
        await asyncio.sleep(0)
        for phone, row_id in zip(phones, ids, strict=True):
            write_file(settings, phone, FLOW)
            await asyncio.sleep(0.15)  # the race itself, not a wait for a result
            await pg.execute(f"UPDATE {settings.table} SET assigned_to = 'bot', bot_flow_id = $2,"
                             " bot_started_at = now() WHERE id = $1", row_id, FLOW)

        async def settled() -> bool:
            members = [m.decode() for m in await redis.zrange(settings.keys.deadlines(), 0, -1)]
            bots = sum(m.startswith("bot:") for m in members)
            waiting = any(m.startswith("rejudge:") for m in members)
            return bots == len(phones) and not waiting and await drained(redis, settings)
        await eventually(settled, timeout=90,
                         message="every bot run scheduled and every settle window re-judged")
    moved = [a for a in await audit_actions(redis, settings)
             if a.action == "quarantine_file" and a.outcome == "done"]
    assert moved == []
    assert len(list(settings.sessions_dir.glob("whatsapp_*.json"))) == len(phones)


async def test_a_phone_change_re_judges_the_old_key(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await crm_table(pg, settings, "uuid")
    old, new = "5219900001", "5219900002"
    row_id = await insert(pg, settings, old, "active", "bot", FLOW, True)
    path = write_file(settings, old, FLOW, age_s=3600)
    async with running(settings, redis):
        async def listed() -> bool:
            return any(True for _ in await redis.xrange(settings.keys.conversations_stream))
        await eventually(listed, message="the relay to start")
        await pg.execute(f"UPDATE {settings.table} SET phone = $2 WHERE id = $1", row_id, new)

        async def quarantined() -> bool:
            return not path.exists()
        await eventually(quarantined, timeout=60, message="the old key's file judged again")
    reasons = [a.reason for a in await audit_actions(redis, settings)
               if a.action == "quarantine_file" and a.outcome == "done"]
    assert reasons == ["no_row"]


async def test_resync_lists_what_only_the_database_knows(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    """``reconciler resync`` on demand: no relay runs, no change is made, the key is judged."""
    await crm_table(pg, settings, "bigserial", install=False)
    await insert(pg, settings, "5213300001", "closed", "bot", FLOW, True)
    await insert(pg, settings, "5213300002", "closed", None, None, False)  # nothing to do there
    state = settings.keys.source_state(f"listing:{settings.table}")
    await redis.hset(state, "listed_at", repr(time.time()))  # not a first start: no listing due
    stop = asyncio.Event()
    roles = asyncio.create_task(serve_roles(settings, redis, ["consumers", "timers"], stop))
    try:
        result = await asyncio.to_thread(reconciler, settings, "--json", "resync")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["keys_requested"] == 1

        async def healed() -> bool:
            return await bot_fields_left(pg, settings) == 0
        await eventually(healed, timeout=60, message="the listed key reconciled")
    finally:
        stop.set()
        await roles


async def test_a_phone_with_no_safe_file_name_still_gets_its_database_actions(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await crm_table(pg, settings, "uuid")
    phone = "+52 55 1234 5678"
    await pg.execute(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, 'active', 'bot', $3, now() - interval '2 hours'),"
        " ($1, $2, 'closed', 'bot', $3, now() - interval '3 hours')", phone, CHANNEL, FLOW)
    async with running(settings, redis):
        async def closed() -> bool:
            left = await pg.fetchval(f"SELECT count(*) FROM {settings.table} WHERE status = 'active'"
                                     " OR assigned_to IS NOT NULL OR bot_flow_id IS NOT NULL")
            return bool(left == 0)
        await eventually(closed, timeout=60, message="the timed-out run closed, the old row cleared")
    dead = await redis.xlen(settings.keys.deadletter_stream)
    assert dead == 0, "no dead letter: the key is a conversation key"


async def test_rows_are_read_latest_first_by_the_ordering_column_never_the_id(
    pg: Any, settings: Settings,
) -> None:
    await crm_table(pg, settings, "uuid", install=False)
    phone = "5214400001"
    made = [await insert(pg, settings, phone, "closed", None, None, False) for _ in range(5)]
    store = ConversationsSql(pg, settings)
    assert [r.id for r in await store.read_all(phone, CHANNEL)] == made[::-1]

    missing = ConversationsSql(pg, replace(settings, order_column="opened_at"))
    with pytest.raises(PermanentError, match="RECONCILER_ORDER_COLUMN"):
        await missing.read_all(phone, CHANNEL)


def test_the_ordering_column_is_a_setting() -> None:
    assert load_settings({"RECONCILER_ORDER_COLUMN": "opened_at"}).order_column == "opened_at"
    assert load_settings({}).order_column is None
    with pytest.raises(ConfigError, match="RECONCILER_ORDER_COLUMN"):
        load_settings({"RECONCILER_ORDER_COLUMN": "x; DROP TABLE t"})


async def test_a_change_too_large_to_publish_still_wakes_its_key_and_audits_small(
    pg: Any, redis: Redis, settings: Settings,
) -> None:
    await crm_table(pg, settings, "bigserial")
    huge = "f" * 1_048_576
    async with running(settings, redis):
        row_id = await insert(pg, settings, "5216600001", "closed", "bot", huge, True)

        async def cleared() -> bool:
            return await bot_fields_left(pg, settings) == 0
        await eventually(cleared, timeout=60, message="the huge row's bot fields cleared")
    entries = await redis.xrange(settings.keys.audit_stream)
    sizes = [len(b"".join(fields.values())) for _, fields in entries]
    assert max(sizes) < 16_384, "no audit entry carries the megabyte"
    entry = next(a for a in await audit_actions(redis, settings) if a.action == "clear_bot_fields")
    assert entry.before is not None and entry.before["id"] == str(row_id)
    assert entry.before["bot_flow_id"]["bytes"] == len(huge)
    assert len(entry.before["bot_flow_id"]["sha256"]) == 64


async def test_a_role_with_column_grants_reads_every_row_without_the_ordering_column(
    pg: Any, roles: Roles, settings: Settings,
) -> None:
    """The consumers' column grants (docs/security.md) need not include ``created_at``."""
    await crm_table(pg, settings, "uuid", install=False)
    await insert(pg, settings, "5214500001", "closed", "bot", FLOW, True)
    await insert(pg, settings, "5214500001", "active", "bot", FLOW, True)
    consumer = await roles.create(
        "rows", f'GRANT SELECT (id, phone, phone_number_id, status, assigned_to, bot_flow_id, '
                f'bot_started_at) ON "{settings.table}" TO {{role}}')
    conn = await roles.connect(consumer)
    try:
        assert len(await ConversationsSql(conn, settings).read_all("5214500001", CHANNEL)) == 2
        named = ConversationsSql(conn, replace(settings, order_column="created_at"))
        with pytest.raises(PermanentError, match="GRANT SELECT"):
            await named.read_all("5214500001", CHANNEL)
    finally:
        await conn.close()
