"""Database capture latency: from an UPDATE's commit to its event on the stream.

A fresh table gets the capture installed and a relay running in this
process.  Then, in one run:

* ``sequential`` -- ``--changes`` (default 1,000) single-row UPDATEs, one at a
  time; for each, the time from the commit returning to the client until a
  blocking XREAD sees the event (p50/p99);
* ``burst`` -- the same number of UPDATEs sent back to back, then the time
  until the last one is on the stream (changes per second end to end).

The relay shares this process's event loop with the client and the reader,
so the figures include that contention.  Table, outbox and keys are removed
at the end.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from redis.asyncio import Redis

from events import codec
from events.contract import SourceResynced
from events.settings import Settings
from events.sources.postgres import RelayOptions, run_relay
from ops import capture_install
from ops.bench import common

NAME = "db-capture"
ROWS = 100


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--changes", type=int, default=1000)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args.redis_url, args.database_url, args.changes))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(redis_url: str, database_url: str, changes: int) -> tuple[dict[str, Any], dict[str, str]]:
    settings = Settings(redis_url=redis_url, database_url=database_url,
                        table=f"bench_capture_{uuid.uuid4().hex[:8]}",
                        key_prefix=common.fresh_prefix(NAME), stream_max_len=0)
    redis = Redis.from_url(redis_url)
    pg = await asyncpg.connect(database_url)
    stop = asyncio.Event()
    try:
        await pg.execute(f'CREATE TABLE "{settings.table}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
                         "phone_number_id text NOT NULL, status text NOT NULL DEFAULT 'active', "
                         "assigned_to text, bot_flow_id text, bot_started_at timestamptz)")
        await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id) '
                         "SELECT '5511' || g, '940740243' FROM generate_series(1, $1) g", ROWS)
        await capture_install.install(pg, settings)
        relay = asyncio.create_task(run_relay(settings, redis, stop, RelayOptions()))
        stream, bulk = settings.keys.lanes("conversations")
        marker = await _wait_for_marker(redis, bulk)  # the relay's resynced marker: bulk lane
        latencies, last = await _sequential(pg, redis, settings.table, stream, b"0", changes)
        burst_s = await _burst(pg, redis, settings.table, {stream: last, bulk: marker}, changes)
        stop.set()
        await relay
        servers = {"redis-server": await common.redis_version(redis),
                   "postgresql": await common.postgres_version(pg)}
    finally:
        stop.set()
        await common.drop_captured_table(pg, settings)
        await pg.close()
        await common.delete_prefix(redis, settings.key_prefix)
        await redis.aclose()
    return _result(changes, latencies, burst_s), servers


async def _wait_for_marker(redis: Redis, stream: str) -> bytes:
    last = b"0"
    while True:
        reply = await redis.xread({stream: last}, block=10_000, count=10)
        if not reply:
            raise TimeoutError("the relay did not start within 10 s")
        for entry_id, fields in reply[0][1]:
            last = bytes(entry_id)
            if isinstance(codec.decode(fields), SourceResynced):
                return last


async def _sequential(pg: Any, redis: Redis, table: str, stream: str, last: bytes,
                      changes: int) -> tuple[list[float], bytes]:
    latencies = []
    for n in range(changes):
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2',
                         f"flow-{n}", n % ROWS + 1)
        committed = time.perf_counter()
        reply = await redis.xread({stream: last}, block=10_000, count=1)
        if not reply:
            raise TimeoutError(f"change {n} did not reach the stream within 10 s")
        latencies.append((time.perf_counter() - committed) * 1000)
        last = reply[0][1][-1][0]
    return latencies, last


async def _burst(pg: Any, redis: Redis, table: str, positions: dict[str, bytes],
                 changes: int) -> float:
    """Seconds until a burst of ``changes`` is on the streams (read on both lanes: single
    writes go live, a bulk statement's rows bulk)."""
    started = time.perf_counter()
    for n in range(changes):
        await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 WHERE id = $2',
                         f"burst-{n}", n % ROWS + 1)
    seen = 0
    while seen < changes:
        reply = await redis.xread(positions, block=10_000, count=1000)
        if not reply:
            raise TimeoutError("the burst did not reach the stream within 10 s")
        for stream, entries in reply:
            seen += len(entries)
            positions[stream.decode()] = entries[-1][0]
    return time.perf_counter() - started


def _result(changes: int, latencies: list[float], burst_s: float) -> dict[str, Any]:
    stats = common.percentiles(latencies)
    return {
        "parameters": {"changes": changes, "rows": ROWS},
        "figures": {
            "sequential": {"p50_ms": round(stats["p50"], 3), "p99_ms": round(stats["p99"], 3),
                           "max_ms": round(stats["max"], 3), "mean_ms": round(stats["mean"], 3)},
            "burst": {"seconds": round(burst_s, 3), "changes_per_s": round(changes / burst_s, 1)},
        },
        "ratios": {},
        "distributions": {"UPDATE commit -> stream (LISTEN/NOTIFY relay)": latencies},
        "notes": ["Latency runs from the commit returning to the client until a blocking XREAD "
                  "returns the event; the relay runs in the same process and event loop."],
    }
