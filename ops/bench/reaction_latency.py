"""Reaction latency: from a database commit to the stale session file quarantined.

A fresh table of ``--changes`` (default 1,000) active bot conversations, each
with its session file, gets the capture installed; the relay, the
``consumers`` role and the ``timers`` role run in this process.  Then, one at
a time, each conversation is closed with an UPDATE, and the time from the
UPDATE being sent until the handler's audit entry of the file's
quarantine arrives (XREAD BLOCK; the entry is written right after the move,
and the file is checked to be gone) is measured.  That path is: trigger and
outbox, NOTIFY, relay, XADD, consumer group, handler (row read, file read,
re-check, rename), audit.

Then, on the same table (the event-driven roles stopped), the polling
baseline (:mod:`ops.bench.polling`): a loop like today's scheduler runs
``SELECT phone, phone_number_id FROM t WHERE status = 'closed'`` (with the
index it needs) every 1 s and every 60 s, and moves the session file of each
row it finds to the quarantine folder.  It runs live: ``--poll-1s-changes``
(default 100) closes spread at random over ``--poll-1s-span`` s (20) and
``--poll-60s-changes`` (15) spread over one 60 s period, timed from the commit
to the file moved, as the event-driven variant.  Table, folders and keys are
removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from consumers.consumers_role import run_consumers
from events.settings import Settings
from events.sources.due_timers import run_timers
from events.sources.postgres import run_relay
from ops import capture_install
from ops.bench import common, polling

NAME = "reaction-latency"
FLOW = "promotoras-v2-mw7rpy"
CHANNEL = "940740243"
TIMEOUT_S = 30.0
"""Longest wait for one file before the bench gives up."""
P50_TARGET_MS, P99_TARGET_MS = 5.0, 25.0
POLL_QUERY = 'SELECT phone, phone_number_id FROM "{table}" WHERE status = \'closed\''
POLL_INDEX = 'CREATE INDEX ON "{table}" (status)'


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--poll-1s-changes", type=int, default=100)
    p.add_argument("--poll-1s-span", type=float, default=20.0, help="seconds")
    p.add_argument("--poll-60s-changes", type=int, default=15)
    p.add_argument("--poll-60s-span", type=float, default=60.0, help="seconds")
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(args: Any) -> tuple[dict[str, Any], dict[str, str]]:
    redis_url, database_url, changes = args.redis_url, args.database_url, args.changes
    plans = {"poll_1s": (1.0, args.poll_1s_changes, args.poll_1s_span),
             "poll_60s": (60.0, args.poll_60s_changes, args.poll_60s_span)}
    plans = {name: plan for name, plan in plans.items() if plan[1] > 0}
    with tempfile.TemporaryDirectory(prefix="reaction-bench-") as folder:
        settings = Settings(redis_url=redis_url, database_url=database_url,
                            sessions_dir=Path(folder) / "sessions",
                            quarantine_dir=Path(folder) / "quarantine",
                            table=f"bench_reaction_{uuid.uuid4().hex[:8]}",
                            key_prefix=common.fresh_prefix(NAME), stream_max_len=0)
        settings.sessions_dir.mkdir()
        settings.quarantine_dir.mkdir()
        redis = Redis.from_url(redis_url)
        pg = await asyncpg.connect(database_url)
        stop = asyncio.Event()
        try:
            ids = await _seed(pg, settings, changes + sum(n for _, n, _ in plans.values()))
            await capture_install.install(pg, settings)
            roles = [asyncio.create_task(role(settings, redis, stop))
                     for role in (run_relay, run_consumers, run_timers)]
            await asyncio.sleep(1.0)  # let the groups and the relay start
            latencies = await _measure(pg, redis, settings, ids[:changes])
            stop.set()
            await asyncio.gather(*roles)
            await pg.execute(POLL_INDEX.format(table=settings.table))
            polled, rest = {}, ids[changes:]
            for name, (period_s, count, span_s) in plans.items():
                polled[name] = await _polled(pg, settings, rest[:count], period_s, span_s)
                rest = rest[count:]
            servers = {"redis-server": await common.redis_version(redis),
                       "postgresql": await common.postgres_version(pg)}
        finally:
            stop.set()
            await common.drop_captured_table(pg, settings)
            await pg.close()
            await common.delete_prefix(redis, settings.key_prefix)
            await redis.aclose()
    return _result(changes, latencies, polled, plans), servers


async def _seed(pg: Any, settings: Settings, changes: int) -> list[tuple[int, Path]]:
    await pg.execute(f'CREATE TABLE "{settings.table}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
                     "phone_number_id text NOT NULL, status text NOT NULL DEFAULT 'active', "
                     "assigned_to text, bot_flow_id text, bot_started_at timestamptz)")
    rows = await pg.fetch(
        f'INSERT INTO "{settings.table}" (phone, phone_number_id, assigned_to, bot_flow_id, '
        "bot_started_at) SELECT '5217' || lpad(g::text, 6, '0'), $2, 'bot', $3, now() "
        "FROM generate_series(1, $1) g RETURNING id, phone", changes, CHANNEL, FLOW)
    out = []
    for row in rows:
        path = settings.sessions_dir / f"whatsapp_{row['phone']}_{CHANNEL}.json"
        path.write_text(json.dumps({"flowId": FLOW}))
        out.append((row["id"], path))
    return out


async def _measure(pg: Any, redis: Redis, settings: Settings,
                   ids: list[tuple[int, Path]]) -> list[float]:
    """Close each row; time from the commit to the audit entry of its file's quarantine.

    The handler writes that entry right after moving the file, so its arrival
    (XREAD BLOCK, no polling interval) bounds the move from above; the file is
    checked to be gone at that moment.
    """
    latencies = []
    close = (f'UPDATE "{settings.table}" SET status = \'closed\', assigned_to = NULL, '
             "bot_flow_id = NULL, bot_started_at = NULL WHERE id = $1")
    audit, last_id = settings.keys.audit_stream, "0-0"  # a fresh key prefix: from the start
    for row_id, path in ids:
        _, phone, channel = path.stem.split("_")
        sent = time.perf_counter()  # not after the commit returns: see the notes
        await pg.execute(close, row_id)
        last_id = await common.wait_for_action(redis, audit, last_id, action="quarantine_file",
                                               key=f"{phone}:{channel}", timeout_s=TIMEOUT_S)
        latencies.append((time.perf_counter() - sent) * 1000)
        if path.exists():
            raise RuntimeError(f"{path.name} was audited as quarantined but is still there")
    return latencies


async def _polled(pg: Any, settings: Settings, ids: list[tuple[int, Path]], period_s: float,
                  span_s: float) -> dict[str, list[float]]:
    """The scheduler-like loop: query closed rows every period, move their files."""
    close = (f'UPDATE "{settings.table}" SET status = \'closed\', assigned_to = NULL, '
             "bot_flow_id = NULL, bot_started_at = NULL WHERE id = $1")
    query = POLL_QUERY.format(table=settings.table)
    poller = await asyncpg.connect(settings.database_url)

    async def change(n: int) -> str:
        row_id, path = ids[n]
        await pg.execute(close, row_id)
        return path.name

    async def poll() -> list[tuple[str, float]]:
        acted = []
        for row in await poller.fetch(query):
            name = f"whatsapp_{row['phone']}_{row['phone_number_id']}.json"
            with contextlib.suppress(FileNotFoundError):
                os.replace(settings.sessions_dir / name, settings.quarantine_dir / name)
                acted.append((name, time.perf_counter()))
        return acted

    try:
        return await polling.run_polled(period_s=period_s, changes=len(ids), span_s=span_s,
                                        change=change, poll=poll)
    finally:
        await poller.close()


NOTES = [
    "event_driven: one change at a time; the relay, consumers and timers share this "
    "process's event loop with the client. Latency is from just before the UPDATE is "
    "sent (so it includes the UPDATE's own round trip: with the whole reaction in one "
    "event loop, the client may resume only after the reaction ran, and timing from "
    "the commit's return undercounted some changes to 0.1 ms) to the arrival (XREAD "
    "BLOCK) of the quarantine_file audit entry, written right after the move; the file "
    "is checked to be gone.",
    "poll_*: the polling loop runs live against the same table (the event-driven roles "
    "stopped), its changes made at random moments spread over the span while it polls; "
    "latency is from the UPDATE being sent to the file moved by the poller, split into the wait for "
    "the next poll (wait_for_poll) and the poll's query and file moves (poll_work). Each "
    "poll stats the file of every closed row, as a scheduler must.",
    "poll_60s runs over one 60 s period, so its sample is small: the changes are spread "
    "one per equal slice of the period (stratified), so its latency is close to uniform "
    "between 0 and 60 s (expected mean 30 s).",
]
"""What the figures measure, printed with them."""


def _result(changes: int, latencies: list[float], polled: dict[str, dict[str, list[float]]],
            plans: dict[str, tuple[float, int, float]]) -> dict[str, Any]:
    stats = common.percentiles(latencies)
    figures: dict[str, Any] = {
        "event_driven": {"p50_ms": round(stats["p50"], 3), "p99_ms": round(stats["p99"], 3),
                         "max_ms": round(stats["max"], 3), "mean_ms": round(stats["mean"], 3),
                         "count": len(latencies)},
    }
    figures.update({name: polling.summary(s, common.percentiles) for name, s in polled.items()})
    ratios = {f"{name}/event_driven ({p})": {
        "ratio": common.ratio(figures[name][f"{p}_ms"], figures["event_driven"][f"{p}_ms"]),
        "target": None, "met": None} for name in polled for p in ("p50", "p99")}
    return {
        "parameters": {"changes": changes,
                       **{f"{name}": {"period_s": per, "changes": n, "spread_over_s": span}
                          for name, (per, n, span) in plans.items()},
                       "poll_query": POLL_QUERY, "poll_index": POLL_INDEX},
        "figures": figures,
        "ratios": ratios,
        "targets": {
            "commit -> quarantined p50": common.target(figures["event_driven"]["p50_ms"], P50_TARGET_MS),
            "commit -> quarantined p99": common.target(figures["event_driven"]["p99_ms"], P99_TARGET_MS),
        },
        "distributions": {"event_driven: commit -> file quarantined": latencies,
                          **{f"{name} (polling)": [round(x, 3) for x in s["latency_ms"]]
                             for name, s in polled.items()}},
        "notes": NOTES,
    }
