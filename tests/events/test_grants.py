"""Each role with exactly the grants docs/security.md lists, and without them.

Real roles (created and dropped per test): the relay and the consumers with
the documented grants do their work; without them they do not start, say so
once, and ``/readyz`` names the missing ``GRANT`` -- no restart loop, no
dead letters -- until the grant arrives.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from consumers import consumers_role
from consumers.consumers_role import run_consumers
from consumers.stores.conversations_sql import ConversationsSql
from events import grants
from events.publisher import Publisher
from events.readiness import READINESS
from events.settings import Settings
from events.sources import postgres
from events.sources.outbox import outbox_names
from events.sources.postgres import RelayOptions, run_relay
from ops import capture_install
from tests.pgroles import Roles
from tests.support import create_conversations_table, eventually, request

FAST = RelayOptions(keepalive_s=0.5, backoff_s=0.05, backoff_max_s=0.5, query_timeout_s=5.0)


def relay_grants(table: str) -> tuple[str, ...]:
    """The relay's grants, as docs/security.md lists them."""
    return ("GRANT USAGE ON SCHEMA reconciler TO {role}",
            f"GRANT SELECT, UPDATE, DELETE ON {outbox_names(table).qualified_outbox} TO {{role}}")


def consumer_grants(table: str) -> tuple[str, ...]:
    """The consumers' grants, as docs/security.md lists them (column by column)."""
    return (f'GRANT SELECT (id, phone, phone_number_id, status, assigned_to, bot_flow_id, '
            f'bot_started_at) ON "{table}" TO {{role}}',
            f'GRANT UPDATE (status, assigned_to, bot_flow_id, bot_started_at) ON "{table}" TO {{role}}')


async def flag(name: str) -> tuple[bool, str] | None:
    found = [r for r in await READINESS.run() if r.name == name]
    return (found[0].ok, found[0].detail) if found else None


@pytest.fixture(autouse=True)
def quick_rechecks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants, "RECHECK_S", 0.05)


def counted(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """Every grants probe the relay makes, counted."""
    calls: list[None] = []

    async def probe(*args: Any) -> list[str]:
        calls.append(None)
        return await grants.missing_grants(*args)

    monkeypatch.setattr(postgres, "missing_grants", probe)
    return calls


async def test_the_relay_waits_for_its_grants_says_so_once_then_publishes(
    pg: Any, redis: Redis, roles: Roles, settings: Settings, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    relay = await roles.create("relay")
    probes = counted(monkeypatch)
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="events.grants")
    task = asyncio.create_task(run_relay(replace(settings, database_url=roles.url(relay)),
                                         redis, stop, FAST))
    try:
        await eventually(lambda: _detail_has("grants:relay", "GRANT USAGE ON SCHEMA"))
        await pg.execute(relay_grants(settings.table)[0].format(role=f'"{relay}"'))
        await eventually(lambda: _detail_has("grants:relay", "GRANT SELECT, UPDATE, DELETE ON"))
        assert await flag("source:postgres") == (False, "first drain of the outbox not published yet")
        seen = len(probes)
        await eventually(lambda: _more_than(probes, seen + 3))  # rechecks: still one line each
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2, [r.getMessage() for r in errors]
        await pg.execute(relay_grants(settings.table)[1].format(role=f'"{relay}"'))
        await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES (1, 1)')
        await eventually(lambda: _flag_is("source:postgres", (True, "")))
        assert await flag("grants:relay") is None
        await eventually(lambda: _stream_has(redis, settings.keys.lanes("conversations"), 2))
        outbox = outbox_names(settings.table).qualified_outbox
        await pg.execute(f'REVOKE DELETE ON {outbox} FROM "{relay}"')  # revoked while running
        await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) VALUES (2, 1)')
        await eventually(lambda: _detail_has("grants:relay", f"GRANT DELETE ON {outbox}"))
        await pg.execute(f'GRANT DELETE ON {outbox} TO "{relay}"')
        await eventually(lambda: _stream_has(redis, settings.keys.lanes("conversations"), 4))
        assert await flag("grants:relay") is None
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await flag("source:postgres") is None
    await capture_install.uninstall(pg, settings, force=True)


async def test_consumers_with_exactly_their_grants_clear_bot_fields(
    pg: Any, roles: Roles, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    consumer = await roles.create("consumer", *consumer_grants(settings.table))
    await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id, status, assigned_to, '
                     "bot_flow_id, bot_started_at) VALUES ('5511', 'c', 'active', 'bot', 'f', now())")
    conn = await roles.connect(consumer)
    try:
        assert await grants.missing_grants(conn, settings, "consumers") == []
        sql = ConversationsSql(conn, settings)
        [row] = await sql.read_all("5511", "c")
        assert await sql.clear_bot_fields(row)
    finally:
        await conn.close()
    assert await pg.fetchval(f'SELECT bot_flow_id FROM "{settings.table}"') is None
    assert await pg.fetchval(
        f"SELECT count(*) FROM {outbox_names(settings.table).qualified_outbox}") == 2
    await capture_install.uninstall(pg, settings, force=True)


async def test_consumers_without_update_do_not_start_and_dead_letter_nothing(
    pg: Any, redis: Redis, roles: Roles, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    reader = await roles.create("reader", consumer_grants(settings.table)[0])
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumers(replace(settings, database_url=roles.url(reader)),
                                             redis, stop))
    try:
        await eventually(lambda: _detail_has(
            "grants:consumers",
            f'GRANT UPDATE ("status", "assigned_to", "bot_flow_id", "bot_started_at") '
            f'ON "{settings.table}" TO "{reader}"'))
        assert await redis.xlen(settings.keys.deadletter_stream) == 0
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await flag("grants:consumers") is None


async def test_a_grant_revoked_while_consumers_run_holds_the_work_and_dead_letters_nothing(
    pg: Any, redis: Redis, roles: Roles, settings: Settings, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """UPDATE revoked from the running consumers' role: the entry that needs it is held
    (pending, not retried, never dead-lettered, even past ``max_deliveries``), the log says
    the missing GRANT once and /readyz names it; granted again, the row is cleared."""
    await create_conversations_table(pg, settings.table)
    consumer = await roles.create("consumer", *consumer_grants(settings.table))
    probes: list[None] = []

    async def probe(*args: Any) -> list[str]:
        probes.append(None)
        return await grants.missing_grants(*args)

    monkeypatch.setattr(consumers_role, "missing_grants", probe)
    caplog.set_level(logging.INFO, logger="events.grants")
    settings = replace(settings, database_url=roles.url(consumer), max_deliveries=2,
                       claim_min_idle_s=2.0)  # the reclaimer, too, must leave held entries alone
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumers(settings, redis, stop))
    table, stream = f'"{settings.table}"', settings.keys.conversations_stream
    try:
        await eventually(lambda: _group_exists(redis, stream, "conversations"))
        await pg.execute(f'REVOKE UPDATE ON {table} FROM "{consumer}"')
        await pg.execute(f"INSERT INTO {table} (phone, phone_number_id, status, assigned_to, "
                         "bot_flow_id, bot_started_at) VALUES ('5511', 'c', 'closed', 'bot', 'f', now())")
        await Publisher(redis, settings.keys).publish(request("5511:c"))
        await eventually(lambda: _detail_has("grants:consumers", "GRANT UPDATE ("))
        seen = len(probes)
        await eventually(lambda: _more_than(probes, seen + 40), timeout=120)  # held, rechecking
        assert await redis.xlen(settings.keys.deadletter_stream) == 0
        [pending] = await redis.xpending_range(stream, "conversations", "-", "+", 10)
        assert pending["times_delivered"] == 1, "retried while the right was missing"
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "GRANT UPDATE (" in errors[0].getMessage()
        await pg.execute(consumer_grants(settings.table)[1].format(role=f'"{consumer}"'))

        async def cleared() -> bool:
            return await pg.fetchval(f"SELECT bot_flow_id FROM {table}") is None

        await eventually(cleared, timeout=120, message="the bot fields cleared once granted")
        assert await flag("grants:consumers") is None
        assert await redis.xlen(settings.keys.deadletter_stream) == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def _group_exists(redis: Redis, stream: str, group: str) -> bool:
    try:
        return any(g["name"] in (group, group.encode()) for g in await redis.xinfo_groups(stream))
    except Exception:  # no stream yet
        return False


async def _detail_has(name: str, text: str) -> bool:
    state = await flag(name)
    return state is not None and not state[0] and text in state[1]


async def _flag_is(name: str, value: tuple[bool, str]) -> bool:
    return await flag(name) == value


async def _stream_has(redis: Redis, streams: tuple[str, ...], count: int) -> bool:
    """At least ``count`` entries on the lanes of a stream (the relay's marker is on the bulk one)."""
    return sum([int(await redis.xlen(stream)) for stream in streams]) >= count


async def _more_than(calls: list[None], count: int) -> bool:
    return len(calls) > count
