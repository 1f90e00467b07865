"""``reconciler audit`` / ``audit --fix`` / ``inspect`` against real stores, as an operator runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from events.session_file_format import FilePattern
from events.settings import Settings
from ops.demo.stage import write_session_file
from ops.roles import serve_roles
from tests.support import create_conversations_table, eventually

CHANNEL = "109876543210"


def cli_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "REDIS_URL": str(settings.redis_url),
        "DATABASE_URL": str(settings.database_url),
        "RECONCILER_KEY_PREFIX": settings.key_prefix,
        "RECONCILER_QUEUE_PATTERN": settings.queue_pattern,
        "RECONCILER_TABLE": settings.table,
        "RECONCILER_SESSIONS_DIR": str(settings.sessions_dir),
        "RECONCILER_QUARANTINE_DIR": str(settings.quarantine_dir),
        "RECONCILER_METRICS_ADDR": "127.0.0.1:0",
    }


def reconciler(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=cli_env(settings),
                          capture_output=True, text=True, timeout=120)


async def stage(pg: Any, redis: Redis, settings: Settings) -> None:
    """One of each inconsistency the old check scripts looked for, and a healthy chat."""
    await create_conversations_table(pg, settings.table)
    pattern = FilePattern(settings.file_pattern)
    rows = [("5210001", "closed", None, None), ("5210002", "active", "bot", None),
            ("5210003", "active", "bot", "flow-a")]
    await pg.executemany(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'bot' THEN now() END)",
        [(p, CHANNEL, s, a, f) for p, s, a, f in rows])
    for phone, flow in (("5210001", "flow-left"), ("5210002", "promotoras-v2-mw7rpy"),
                        ("5210003", "flow-a")):
        write_session_file(settings.sessions_dir, pattern, phone, flow, age_s=3600)
    await redis.rpush(settings.keys.queue("940740243"), *[f"m{n}" for n in range(9)])


async def test_audit_lists_each_kind_then_fix_heals_through_the_consumers(
    pg: Any, redis: Redis, settings: Settings
) -> None:
    await stage(pg, redis, settings)
    found = reconciler(settings, "--json", "audit")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    kinds = {(i["kind"], i["key"]) for i in report["inconsistencies"]}
    assert kinds == {("stale_file", f"5210001:{CHANNEL}"), ("flow_missing", f"5210002:{CHANNEL}"),
                     ("orphan_queue", "940740243")}
    assert (settings.sessions_dir / f"whatsapp_5210001_{CHANNEL}.json").exists(), "audit is read-only"

    stop = asyncio.Event()
    roles = asyncio.create_task(serve_roles(settings, redis, ["consumers"], stop))
    try:
        fixed = reconciler(settings, "--json", "audit", "--fix")
        assert json.loads(fixed.stdout)["reconcile_requested"] == 3

        await eventually(lambda: _audit_clean(settings), timeout=60, message="audit to come back clean")
    finally:
        stop.set()
        await roles
    assert await redis.llen(settings.keys.parked("940740243")) == 9

    shown = reconciler(settings, "--json", "inspect", f"5210001:{CHANNEL}")
    assert shown.returncode == 0, shown.stderr
    story = json.loads(shown.stdout)
    assert story["session_file"].endswith("absent")
    assert story["quarantined_copies"] != "none"
    assert story["broken_rules"] == "none"
    whats = [line["what"] for line in story["timeline"]]
    assert "reconcile.requested" in whats
    assert "action quarantine_file (done)" in whats
    request = next(line for line in story["timeline"] if line["what"] == "reconcile.requested")
    action = next(line for line in story["timeline"] if line["what"].startswith("action quarantine"))
    assert action["cause"].startswith(request["id"]), "the action names the request as its cause"

    session = json.loads(reconciler(settings, "--json", "inspect", "940740243").stdout)
    assert session["parked_messages"] == 9
    assert session["lease"].startswith("none")


async def _audit_clean(settings: Settings) -> bool:
    result = await asyncio.to_thread(reconciler, settings, "audit")
    return result.returncode == 0


def test_bad_input_is_one_clear_line(settings: Settings, tmp_path: Path) -> None:
    result = reconciler(settings, "inspect", "../../etc/passwd")
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "neither PHONE:CHANNEL nor a session name" in result.stderr
    assert "Traceback" not in result.stderr
