"""The roles under the minimal Redis ACL of docs/security.md, and under less.

The ACL user is created per test with a unique name and deleted after; the
rules are the documented ones with this test's key prefix filled in.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from events import grants
from events.loops import HEARTBEATS
from events.readiness import READINESS
from events.settings import Settings
from events.sources import gateway_leases as sessions
from ops import capture_install
from ops.roles import ROLE_NAMES, serve_roles
from tests.ops.cli_support import cli
from tests.support import create_conversations_table, eventually

PASSWORD = "acl-" + uuid.uuid4().hex


def documented_rules(settings: Settings, *, channels: bool = True) -> list[str]:
    """docs/security.md's ``ACL SETUSER`` rules, for this prefix, queue pattern and db 0."""
    keys = settings.keys
    rules = ["on", f">{PASSWORD}", "resetkeys", "resetchannels",
             f"~{settings.key_prefix}*", f"~{keys.queue_glob}",
             "-@all", "+@read", "+@write", "+@keyspace", "+@stream", "+@list", "+@hash", "+@set",
             "+@sortedset", "+@string", "+@pubsub", "+@scripting", "+@transaction",
             "+@connection", "-@dangerous"]
    if channels:
        rules += [f"&{keys.deadlines_wake}", f"&__keyspace@0__:{keys.lease_glob}",
                  f"&__keyspace@0__:{keys.queue_glob}"]
    return rules


@pytest.fixture
async def acl_user(redis: Redis, redis_url: str) -> AsyncIterator[Callable[[list[str]], Any]]:
    names: list[str] = []
    clients: list[Redis] = []

    async def make(rules: list[str]) -> Redis:
        name = f"test-acl-{uuid.uuid4().hex[:10]}"
        await redis.execute_command("ACL", "SETUSER", name, *rules)
        names.append(name)
        host = redis_url.split("://", 1)[1].rsplit("@", 1)[-1]
        client = Redis.from_url(f"redis://{name}:{PASSWORD}@{host}")
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            await client.aclose()
        for name in names:
            await redis.execute_command("ACL", "DELUSER", name)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grants, "RECHECK_S", 0.05)
    monkeypatch.setattr(sessions, "_warned", set())


async def flags() -> dict[str, tuple[bool, str]]:
    return {r.name: (r.ok, r.detail) for r in await READINESS.run()}


async def test_every_role_works_under_the_documented_acl(
    pg: Any, redis: Redis, settings: Settings, acl_user: Callable[[list[str]], Any]
) -> None:
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    limited = await acl_user(documented_rules(settings))
    stop = asyncio.Event()
    roles = list(ROLE_NAMES)
    task = asyncio.create_task(serve_roles(settings, limited, roles, stop))
    try:
        async def caught_up() -> bool:
            state = await flags()
            return all(state.get(f, (False, ""))[0]
                       for f in ("source:postgres", "source:sessions", "source:files"))
        await eventually(caught_up, message="the sources' first snapshots")
        await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id, status, '
                         "assigned_to) VALUES ('5511', 'c', 'active', 'agent')")

        async def consumed() -> bool:
            stream = settings.keys.conversations_stream
            groups = await redis.xinfo_groups(stream) if await redis.exists(stream) else []
            return any(g["name"] == b"conversations" and g["entries-read"] and g["lag"] == 0
                       and g["pending"] == 0 for g in groups)
        await eventually(consumed, message="the row's event handled by the consumers")
        assert not [n for n in await flags() if n.startswith("grants:")]
        failures = {name: loop["last_error"] for name, loop in HEARTBEATS.report().items()
                    if loop["failures"]}
        assert failures == {}
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    await capture_install.uninstall(pg, settings, force=True)


async def test_without_the_channels_timers_say_what_to_grant_and_sessions_fall_back_to_scans(
    redis: Redis, settings: Settings, acl_user: Callable[[list[str]], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = await acl_user(documented_rules(settings, channels=False))
    caplog.set_level(logging.WARNING, logger="events.sources.gateway_leases")
    stop = asyncio.Event()
    task = asyncio.create_task(serve_roles(replace(settings, rescan_interval_s=0.2), limited,
                                           ["timers", "sessions"], stop))
    try:
        async def told() -> bool:
            state = await flags()
            return (not state.get("grants:timers", (True, ""))[0]
                    and state.get("source:sessions") == (True, ""))
        await eventually(told, message="the timers' missing channel and the sessions listing")
        detail = (await flags())["grants:timers"][1]
        assert f"ACL SETUSER <user> '&{settings.keys.deadlines_wake}'" in detail
        warnings = [r.getMessage() for r in caplog.records if "subscribe" in r.getMessage()]
        assert len(warnings) == 1 and "&__keyspace@0__:" in warnings[0]
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


OPERATOR_COMMANDS = (
    ("status",), ("dlq", "list"), ("parked", "list"), ("paused",), ("audit",),
    ("inspect", "5511999990000:940740243"), ("pause", "5511999990000:940740243"),
    ("resume", "5511999990000:940740243"), ("session", "start", "940740243"),
    ("session", "stop", "940740243"), ("quarantine", "list"), ("replay", "conversations"),
    ("replay", "sessions"), ("resync",),
)


async def test_the_operator_commands_work_under_the_documented_acl(
    pg: Any, redis: Redis, redis_url: str, settings: Settings,
    acl_user: Callable[[list[str]], Any],
) -> None:
    """Each read and each small write an operator makes, as the documented ACL user."""
    await create_conversations_table(pg, settings.table)
    client = await acl_user(documented_rules(settings))
    name = client.connection_pool.connection_kwargs["username"]
    host = redis_url.split("://", 1)[1].rsplit("@", 1)[-1]
    as_acl_user = replace(settings, redis_url=f"redis://{name}:{PASSWORD}@{host}")
    for command in OPERATOR_COMMANDS:
        code, out, err = await cli(as_acl_user, *command)
        assert code == 0, f"reconciler {' '.join(command)}: exit {code}\n{out}\n{err}"
        assert PASSWORD not in out + err
