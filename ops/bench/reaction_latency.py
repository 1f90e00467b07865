"""Reaction latency: from a database commit to the stale session file quarantined.

A fresh table of ``--changes`` (default 1,000) active bot conversations, each
with its session file, gets the capture installed; the relay, the
``consumers`` role and the ``timers`` role run in this process.  Then, one at
a time, each conversation is closed with an UPDATE, and the time from the
commit returning to the client until its file has left the sessions folder is
measured (the file is looked for every millisecond).  That path is: trigger
and outbox, NOTIFY, relay, XADD, consumer group, handler (row read, file
read, re-check, rename), audit.  Table, folders and keys are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from consumers.run import run_consumers
from events.settings import Settings
from events.sources.postgres import run_relay
from events.sources.timers import run_timers
from ops import migrate
from ops.bench import common

NAME = "reaction-latency"
FLOW = "promotoras-v2-mw7rpy"
CHANNEL = "940740243"
TIMEOUT_S = 30.0
"""Longest wait for one file before the bench gives up."""


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--changes", type=int, default=1000)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args.redis_url, args.database_url, args.changes))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(redis_url: str, database_url: str, changes: int) -> tuple[dict[str, Any], dict[str, str]]:
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
            ids = await _seed(pg, settings, changes)
            await migrate.install(pg, settings)
            roles = [asyncio.create_task(role(settings, redis, stop))
                     for role in (run_relay, run_consumers, run_timers)]
            await asyncio.sleep(1.0)  # let the groups and the relay start
            latencies = await _measure(pg, settings, ids)
            stop.set()
            await asyncio.gather(*roles)
            servers = {"redis-server": await common.redis_version(redis),
                       "postgresql": await common.postgres_version(pg)}
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await migrate.uninstall(pg, settings, force=True)
            await pg.execute(f'DROP TABLE IF EXISTS "{settings.table}"')
            await pg.close()
            async for key in redis.scan_iter(match=f"{settings.key_prefix}*"):
                await redis.unlink(key)
            await redis.aclose()
    return _result(changes, latencies), servers


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


async def _measure(pg: Any, settings: Settings, ids: list[tuple[int, Path]]) -> list[float]:
    latencies = []
    close = (f'UPDATE "{settings.table}" SET status = \'closed\', assigned_to = NULL, '
             "bot_flow_id = NULL, bot_started_at = NULL WHERE id = $1")
    for row_id, path in ids:
        await pg.execute(close, row_id)
        committed = time.perf_counter()
        while path.exists():
            if time.perf_counter() - committed > TIMEOUT_S:
                raise TimeoutError(f"{path.name} was not quarantined within {TIMEOUT_S} s")
            await asyncio.sleep(0.001)
        latencies.append((time.perf_counter() - committed) * 1000)
    return latencies


def _result(changes: int, latencies: list[float]) -> dict[str, Any]:
    stats = common.percentiles(latencies)
    return {
        "parameters": {"changes": changes},
        "figures": {
            "commit_to_quarantined": {"p50_ms": round(stats["p50"], 3),
                                      "p99_ms": round(stats["p99"], 3),
                                      "max_ms": round(stats["max"], 3),
                                      "mean_ms": round(stats["mean"], 3)},
        },
        "ratios": {},
        "distributions": {"UPDATE commit -> session file quarantined": latencies},
        "notes": ["One change at a time; the relay, consumers and timers share this process's "
                  "event loop with the client, and the file is looked for every millisecond."],
    }
