"""Conversation reactions against real PostgreSQL, Redis and a real folder.

Each test changes the stores directly, then publishes the event a source
would publish, and watches what a user would see: the row, the session
folder, the quarantine folder and the audit stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from consumers.consumers_role import run_consumers
from events.contract import ActionRecorded, ConversationClosed, ConversationRow, SessionFileWritten
from events.ids import new_event_id
from events.publisher import Publisher
from events.settings import Settings
from events.sources.due_timers import run_timers
from tests.support import (
    create_conversations_table,
    eventually,
    group_caught_up,
    one_line_per_action,
    recorded,
    request,
)

FLOW = "promotoras-v2-mw7rpy"
CHANNEL = "940740243"
RECONCILER = [sys.executable, "-m", "ops"]
"""The CLI of this checkout (the console script would run the installed copy)."""


@asynccontextmanager
async def reacting(settings: Settings, redis: Redis) -> AsyncIterator[None]:
    """The consumers and timers roles, running in this process."""
    stop = asyncio.Event()
    roles = [asyncio.create_task(run_consumers(settings, redis, stop)),
             asyncio.create_task(run_timers(settings, redis, stop))]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*roles)


def write_file(settings: Settings, phone: str, flow: str | None) -> Path:
    path = settings.sessions_dir / f"whatsapp_{phone}_{CHANNEL}.json"
    path.write_text(json.dumps({"flowId": flow, "step": 3}))
    return path


async def audit(redis: Redis, settings: Settings, *, allow_open: bool = False,
                ) -> list[ActionRecorded]:
    """One line per action; every action has its intent and one outcome (unless ``allow_open``)."""
    return one_line_per_action(await recorded(redis, settings.keys), allow_open=allow_open)


async def actions_of(redis: Redis, settings: Settings, key: str) -> list[tuple[str, str]]:
    return [(a.action, a.outcome) for a in await audit(redis, settings) if a.key == key]


async def row_of(pg: Any, settings: Settings, phone: str) -> dict[str, Any]:
    record = await pg.fetchrow(f"SELECT * FROM {settings.table} WHERE phone = $1", phone)
    return dict(record)


def closed_event(key: str, phone: str) -> ConversationClosed:
    return ConversationClosed(
        id=new_event_id(), occurred_at=datetime.now(UTC), source="postgres", key=key, outbox_id=1,
        row=ConversationRow(id="1", phone=phone, channel=CHANNEL, status="closed"))


def written_event(key: str, name: str, flow: str | None) -> SessionFileWritten:
    return SessionFileWritten(id=new_event_id(), occurred_at=datetime.now(UTC), source="folder",
                              key=key, name=name, flow_id=flow, content_sha256="0" * 64,
                              size_bytes=10)


async def test_chat_stuck_waiting_on_the_bot_gets_its_flow_then_times_out(
    redis: Redis, pg: Any, settings: Settings
) -> None:
    settings = replace(settings, flow_timeouts_s={FLOW: 2.0})
    await create_conversations_table(pg, settings.table)
    phone = "5215550101"
    key = f"{phone}:{CHANNEL}"
    await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to,"
                     " bot_started_at) VALUES ($1, $2, 'active', 'bot', now())", phone, CHANNEL)
    path = write_file(settings, phone, FLOW)
    async with reacting(settings, redis):
        await Publisher(redis, settings.keys).publish(written_event(key, path.name, FLOW))

        async def closed_and_moved() -> bool:
            return (await row_of(pg, settings, phone))["status"] == "closed" and not path.exists()

        await eventually(closed_and_moved, timeout=60, message="the conversation to time out")
    records = [a for a in await audit(redis, settings) if a.key == key]
    assert [(a.action, a.outcome) for a in records] == [
        ("backfill_flow", "done"), ("close_conversation", "done"), ("quarantine_file", "done")]
    assert records[0].after and records[0].after["bot_flow_id"] == FLOW
    assert records[1].before and records[1].before["bot_flow_id"] == FLOW
    row = await row_of(pg, settings, phone)
    assert (row["assigned_to"], row["bot_flow_id"], row["bot_started_at"]) == (None, None, None)
    moved = [p for p in settings.quarantine_dir.iterdir() if p.name.endswith(path.name)]
    assert len(moved) == 1 and json.loads(moved[0].read_text())["flowId"] == FLOW


async def test_file_left_behind_by_a_closed_conversation_is_quarantined_and_restorable(
    redis: Redis, pg: Any, settings: Settings
) -> None:
    await create_conversations_table(pg, settings.table)
    phone = "5215550102"
    key = f"{phone}:{CHANNEL}"
    await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status) "
                     "VALUES ($1, $2, 'closed')", phone, CHANNEL)
    path = write_file(settings, phone, FLOW)
    left = path.stat().st_mtime - 3600  # left behind long ago: outside the settle window
    os.utime(path, (left, left))
    async with reacting(settings, redis):
        await Publisher(redis, settings.keys).publish(closed_event(key, phone))

        async def moved() -> bool:
            return not path.exists()

        await eventually(moved, timeout=30, message="the stale file to be quarantined")
    assert await actions_of(redis, settings, key) == [("quarantine_file", "done")]
    listing = run_cli(settings, "--json", "quarantine", "list")
    [entry] = json.loads(listing)
    assert (entry["key"], entry["reason"], entry["flow_id"]) == (key, "closed", FLOW)
    run_cli(settings, "quarantine", "restore", entry["name"], "--dry-run")
    assert not path.exists()
    run_cli(settings, "quarantine", "restore", entry["name"])
    assert json.loads(path.read_text())["flowId"] == FLOW
    assert json.loads(run_cli(settings, "--json", "quarantine", "list")) == []
    assert (await actions_of(redis, settings, key))[1:] == [
        ("restore_file", "planned"), ("restore_file", "done")]


async def test_file_written_before_its_row_commits_is_kept(
    redis: Redis, pg: Any, settings: Settings
) -> None:
    settings = replace(settings, grace_s=10.0)  # time enough for the row, on a busy machine too
    await create_conversations_table(pg, settings.table)
    early, orphan = "5215550103", "5215550104"
    early_key = f"{early}:{CHANNEL}"
    files = {p: write_file(settings, p, FLOW) for p in (early, orphan)}
    publisher = Publisher(redis, settings.keys)
    async with reacting(settings, redis):
        await publisher.publish_many([written_event(f"{p}:{CHANNEL}", f.name, FLOW)
                                      for p, f in files.items()])

        async def early_seen_without_row() -> bool:  # judged, and its settle window timed
            members = [m.decode() for m in await redis.zrange(settings.keys.deadlines(), 0, -1)]
            return any(m.startswith(f"rejudge:{early_key}:") for m in members)

        await eventually(early_seen_without_row, message="the early file seen without its row")
        await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to,"
                         " bot_flow_id, bot_started_at) VALUES ($1, $2, 'active', 'bot', $3, now())",
                         early, CHANNEL, FLOW)
        await publisher.publish(request(f"{early}:{CHANNEL}"))

        async def orphan_moved() -> bool:
            return not files[orphan].exists()

        await eventually(orphan_moved, timeout=90, message="the orphan to be quarantined")

        async def early_deadline_handled() -> bool:  # its grace deadline fires too, then nothing
            members = [m.decode() for m in await redis.zrange(settings.keys.deadlines(), 0, -1)]
            return (not any(m.startswith(f"rejudge:{early_key}:") for m in members)
                    and await group_caught_up(redis, settings.keys.conversations_stream,
                                              "conversations"))

        await eventually(early_deadline_handled, timeout=90,
                         message="the early file's grace deadline fired and handled")
    assert files[early].exists()
    assert await actions_of(redis, settings, f"{early}:{CHANNEL}") == []
    assert await actions_of(redis, settings, f"{orphan}:{CHANNEL}") == [("quarantine_file", "done")]


def run_cli(settings: Settings, *args: str) -> str:
    result = subprocess.run([*RECONCILER, *args], env=cli_env(settings), capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": settings.redis_url or "",
            "DATABASE_URL": settings.database_url or "",
            "RECONCILER_SESSIONS_DIR": str(settings.sessions_dir),
            "RECONCILER_QUARANTINE_DIR": str(settings.quarantine_dir),
            "RECONCILER_DATA_DIR": str(settings.data_dir), "RECONCILER_TABLE": settings.table,
            "RECONCILER_KEY_PREFIX": settings.key_prefix,
            "RECONCILER_QUEUE_PATTERN": settings.queue_pattern,
            "RECONCILER_METRICS_ADDR": "127.0.0.1:0", "RECONCILER_LOG_LEVEL": "WARNING", **extra}


# --------------------------------------------------------------------------
# Many keys, two processes, every event twice and shuffled.

KINDS = ("bot_matching", "bot_no_flow", "bot_timed_out", "agent_with_file", "closed_with_bot",
         "no_row")
EXPECTED_ACTIONS = {
    "bot_matching": [], "bot_no_flow": ["backfill_flow"], "bot_timed_out": ["close_conversation"],
    "agent_with_file": ["quarantine_file"], "closed_with_bot": ["clear_bot_fields", "quarantine_file"],
    "no_row": ["quarantine_file"],
}
FILE_STAYS = {"bot_matching": True, "bot_no_flow": True, "bot_timed_out": False,
              "agent_with_file": False, "closed_with_bot": False, "no_row": False}


async def seed(pg: Any, settings: Settings, count: int) -> dict[str, str]:
    """``count`` conversations in mixed states; returns phone -> kind."""
    now = datetime.now(UTC)
    long_ago = now - timedelta(hours=2)
    rows, kinds = [], {}
    for n in range(count):
        phone, kind = f"52156{n:05d}", KINDS[n % len(KINDS)]
        kinds[phone] = kind
        row = {
            "bot_matching": ("active", "bot", FLOW, now),
            "bot_no_flow": ("active", "bot", None, now),
            "bot_timed_out": ("active", "bot", FLOW, long_ago),
            "agent_with_file": ("active", "agent-7", None, None),
            "closed_with_bot": ("closed", "bot", FLOW, long_ago),
        }.get(kind)
        if row is not None:
            rows.append((phone, CHANNEL, *row))
        if kind != "bot_timed_out":
            write_file(settings, phone, FLOW)
    await create_conversations_table(pg, settings.table)
    await pg.copy_records_to_table(settings.table, records=rows, columns=[
        "phone", "phone_number_id", "status", "assigned_to", "bot_flow_id", "bot_started_at"])
    return kinds


async def publish_twice_shuffled(redis: Redis, settings: Settings, kinds: dict[str, str]) -> None:
    events: list[Any] = []
    for phone in kinds:
        key = f"{phone}:{CHANNEL}"
        name = f"whatsapp_{phone}_{CHANNEL}.json"
        events += [request(key), written_event(key, name, FLOW)] * 2
    random.Random(7).shuffle(events)
    await Publisher(redis, settings.keys).publish_many(events)


def start_reactor(settings: Settings, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``reconciler run --role consumers --role timers`` as a child process."""
    return subprocess.Popen([*RECONCILER, "run", "--role", "consumers", "--role", "timers"],
                            env=cli_env(settings, RECONCILER_GRACE_S="1", **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_two_processes(redis: Redis, settings: Settings, expected: int, **env: str) -> None:
    children = [start_reactor(settings, env) for _ in range(2)]
    try:
        async def all_recorded() -> bool:
            return len(await audit(redis, settings, allow_open=True)) >= expected

        await eventually(all_recorded, timeout=240, interval=0.5,
                         message=f"{expected} audited actions")
        # A duplicate action would come from an event not handled yet: wait until none is.
        await eventually(lambda: group_caught_up(redis, settings.keys.conversations_stream,
                                                 "conversations"),
                         timeout=240, interval=0.5, message="every event handled and acked")
        assert all(child.poll() is None for child in children)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            await asyncio.to_thread(child.wait, 60)


async def test_two_processes_reach_the_rule_table_with_each_action_audited_once(
    redis: Redis, pg: Any, settings: Settings
) -> None:
    kinds = await seed(pg, settings, 2000)
    expected = Counter((a, f"{p}:{CHANNEL}") for p, k in kinds.items() for a in EXPECTED_ACTIONS[k])
    await publish_twice_shuffled(redis, settings, kinds)
    await run_two_processes(redis, settings, sum(expected.values()))
    records = await audit(redis, settings)
    done = [r for r in records if r.outcome == "done"]
    assert Counter((r.action, r.key) for r in done) == expected
    # The loser of a race between the two processes records its action as skipped, with why.
    lost = [r for r in records if r.outcome != "done"]
    assert all(r.outcome == "skipped" and r.reason and (r.action, r.key) in expected
               for r in lost), lost[:5]
    rows = {r["phone"]: r for r in await pg.fetch(f"SELECT * FROM {settings.table}")}
    for phone, kind in kinds.items():
        stays = (settings.sessions_dir / f"whatsapp_{phone}_{CHANNEL}.json").exists()
        assert stays == FILE_STAYS[kind], (phone, kind)
        row = rows.get(phone)
        if kind in ("bot_matching", "bot_no_flow"):
            assert (row["status"], row["bot_flow_id"]) == ("active", FLOW), (phone, kind)
        elif kind in ("bot_timed_out", "closed_with_bot"):
            assert (row["status"], row["assigned_to"], row["bot_flow_id"], row["bot_started_at"]) == (
                "closed", None, None, None), (phone, kind)
    moved = sum(1 for p in settings.quarantine_dir.iterdir() if p.name.endswith(".json")
                and "~" not in p.name)
    assert moved == sum(1 for k in kinds.values() if not FILE_STAYS[k] and k != "bot_timed_out")


async def test_dry_run_changes_nothing_and_plans_the_same_actions(
    redis: Redis, pg: Any, settings: Settings
) -> None:
    kinds = await seed(pg, settings, 2000)
    before = sorted(map(tuple, await pg.fetch(f"SELECT * FROM {settings.table} ORDER BY id")))
    files_before = sorted(p.name for p in settings.sessions_dir.iterdir())
    expected = Counter((a, f"{p}:{CHANNEL}") for p, k in kinds.items() for a in EXPECTED_ACTIONS[k])
    await publish_twice_shuffled(redis, settings, kinds)
    await run_two_processes(redis, settings, sum(expected.values()), RECONCILER_DRY_RUN="true")
    records = await audit(redis, settings)
    assert {(r.outcome, r.dry_run) for r in records} == {("planned", True)}
    assert Counter((r.action, r.key) for r in records) == expected
    assert sorted(map(tuple, await pg.fetch(f"SELECT * FROM {settings.table} ORDER BY id"))) == before
    assert sorted(p.name for p in settings.sessions_dir.iterdir()) == files_before
    assert list(settings.quarantine_dir.iterdir()) == []
