"""``reconciler demo``: the incidents of DESIGN.md, found and healed live.

It needs nothing but the install: embedded Redis and PostgreSQL in a
temporary folder, a conversations table, a sessions folder and a gateway;
a few hundred healthy conversations with live traffic; the three incidents;
every role running in this process.  It prints each action as it happens,
then a summary, and exits 0 only when every store agrees at the end and no
queue message was lost.  Nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from events.settings import Settings
from ops import capture_install
from ops.demo.show import AuditTail, summary
from ops.demo.stage import (
    LOST_SESSION,
    STUCK_FLOW,
    Staged,
    create_table,
    leave_a_file_behind,
    stage_healthy,
    stage_incidents,
)
from ops.demo.traffic import LIVE_SESSION, DemoGateway, TrafficCounts, run_traffic
from ops.roles import ROLE_NAMES, serve_roles
from ops.runtime_env import connect_pg, open_environment
from ops.scan import by_kind, scan
from ops.tables import cell

STUCK_TIMEOUT_S = 6.0
"""The stuck chat's flow times out this long after it started, so the demo shows the close."""
LIVE_INCIDENT_AFTER_S = 2.0
GATEWAY_RETURNS_AFTER_S = 5.0
QUIET_S = 2.0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="stage the known incidents and watch them heal")
    parser.add_argument("--conversations", type=int, default=300,
                        help="healthy conversations to stage (default 300)")
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="how long live traffic runs (default 12)")
    parser.add_argument("--keep", action="store_true", help="keep the demo's data folder")
    parser.set_defaults(handler=run)


def demo_settings(folder: Path) -> Settings:
    for name in ("sessions", "quarantine", "data"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    return Settings(
        sessions_dir=folder / "sessions", quarantine_dir=folder / "quarantine",
        data_dir=folder / "data", flow_timeouts_s={STUCK_FLOW: STUCK_TIMEOUT_S}, grace_s=3.0,
        session_ttl_s=5.0, metrics_addr="127.0.0.1:0", claim_min_idle_s=10.0,
    )


async def run(args: argparse.Namespace) -> int:
    if args.log_level is None:  # the demo's own lines are the show; logs only for trouble
        logging.getLogger().setLevel(logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="reconciler-demo-"))
    print(f"reconciler demo: working in {folder}")
    try:
        async with open_environment(demo_settings(folder)) as env:
            return await _demo(env.settings, env.redis, args)
    finally:
        if args.keep:
            print(f"data kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


async def _demo(settings: Settings, redis: Any, args: argparse.Namespace) -> int:
    started = time.monotonic()
    rng = random.Random(20261122)
    assert settings.database_url is not None
    pg = await connect_pg(settings.database_url)  # this task's; the traffic task opens its own
    counts = TrafficCounts()
    gateway = DemoGateway(redis, settings, counts)
    staged = Staged()
    try:
        await create_table(pg, settings.table)
        await capture_install.install(pg, settings)
        staged.healthy = await stage_healthy(pg, settings, args.conversations, rng)
        await gateway.open(LIVE_SESSION)
        await stage_incidents(pg, redis, settings, staged)
        found = by_kind(await scan(pg, redis, settings))
        print(f"staged {len(staged.healthy)} healthy conversations and the incidents; "
              f"a read-only scan finds: {cell(found)}")
        print("starting every role; actions as they happen:")
        seen, remaining = await _live(pg, redis, settings, staged, gateway, counts, args, rng)
    finally:
        await gateway.close()
        await pg.close()
    delivered = counts.delivered_by_session.get(LOST_SESSION, [])
    lost = len([m for m in staged.lost_queue if m not in delivered])
    print(summary(seen.seen, found=found, remaining=remaining, delivered_after_restore=len(delivered),
                  lost_messages=lost, elapsed_s=time.monotonic() - started))
    return 0 if not remaining and lost == 0 else 1


async def _live(pg: Any, redis: Any, settings: Settings, staged: Staged, gateway: DemoGateway,
                counts: TrafficCounts, args: argparse.Namespace,
                rng: random.Random) -> tuple[AuditTail, dict[str, int]]:
    stop_roles, stop_traffic, stop_tail = asyncio.Event(), asyncio.Event(), asyncio.Event()
    tail = AuditTail(redis, settings.keys, roles_started=time.time())
    tail_task = asyncio.create_task(tail.run(stop_tail))
    roles = asyncio.create_task(serve_roles(settings, redis, ROLE_NAMES, stop_roles))
    traffic = asyncio.create_task(
        _traffic(redis, settings, staged.healthy, counts, stop_traffic, rng), name="demo-traffic")
    try:
        await _wait_or_fail(roles, LIVE_INCIDENT_AFTER_S)
        key = await leave_a_file_behind(pg, settings, staged.healthy)
        print(f"  the CRM closes bot chat {key} and clears its flow, but leaves its file")
        await _wait_or_fail(roles, GATEWAY_RETURNS_AFTER_S - LIVE_INCIDENT_AFTER_S)
        print(f"  the gateway restarts and session {LOST_SESSION} is back")
        await gateway.open(LOST_SESSION)
        await _wait_or_fail(roles, max(0.0, args.seconds - GATEWAY_RETURNS_AFTER_S))
        stop_traffic.set()
        await traffic
        await _wait_or_fail(roles, QUIET_S)
        remaining = by_kind(await scan(pg, redis, settings))
    finally:
        stop_traffic.set()
        stop_roles.set()
        with contextlib.suppress(Exception):
            await traffic
        await roles
        stop_tail.set()
        await tail_task
    return tail, remaining


async def _traffic(redis: Any, settings: Settings, healthy: list[str], counts: TrafficCounts,
                   stop: asyncio.Event, rng: random.Random) -> None:
    """The CRM's traffic, on a database connection of its own."""
    assert settings.database_url is not None
    pg = await connect_pg(settings.database_url)
    try:
        await run_traffic(pg, redis, settings, healthy, counts, stop, rng)
    finally:
        await pg.close()


async def _wait_or_fail(roles: asyncio.Task[None], seconds: float) -> None:
    """Sleep, but surface at once a role that failed."""
    done, _ = await asyncio.wait([roles], timeout=seconds)
    if done:
        roles.result()
        raise RuntimeError("the roles stopped early")


