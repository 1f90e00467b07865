"""How fast the relay drains a bulk statement's outbox, by batch size, side by side.

A table of ``--rows`` conversations (default 100,000) with the capture
installed; one ``UPDATE`` of every row fills the outbox; then a relay with a
given batch size (outbox rows per transaction, and XADDs per Redis pipeline)
runs until every row is on the stream.  Each ``--batches`` size (default 500,
the old default, and 5000) drains the same backlog, and so does the first size
with redis-py's own command packing (Python) instead of the roles' client
(hiredis, :mod:`events.resp_packing`), alternating for ``--rounds`` rounds
(median reported), so the ratios compare them under the same load.  Also
reported: the outbox's size on disk after the UPDATE.

The relay runs in this process; the stream is not trimmed (no cap) and is
deleted between runs.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from redis.asyncio import Redis

from events.settings import Settings
from events.sources.outbox import outbox_names
from events.sources.postgres import RelayOptions, run_relay
from ops import capture_install
from ops.bench import common
from ops.runtime_env import redis_client

NAME = "relay-drain"
DDL = ('CREATE TABLE "{table}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
       "phone_number_id text NOT NULL, status text NOT NULL DEFAULT 'active', "
       "assigned_to text, bot_flow_id text, bot_started_at timestamptz)")
TIMEOUT_S = 1800.0


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--batches", type=int, nargs="+", default=[500, 5000])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args.redis_url, args.database_url, args.rows,
                                       args.batches, args.rounds))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(redis_url: str, database_url: str, rows: int, batches: list[int],
               rounds: int) -> tuple[dict[str, Any], dict[str, str]]:
    settings = Settings(redis_url=redis_url, database_url=database_url,
                        table=f"bench_drain_{uuid.uuid4().hex[:8]}",
                        key_prefix=common.fresh_prefix(NAME), stream_max_len=0)
    redis, python_packing = redis_client(redis_url), Redis.from_url(redis_url)
    variants = {**{f"batch {b}": (b, redis) for b in batches},
                f"batch {batches[0]}, python packing": (batches[0], python_packing)}
    pg = await asyncpg.connect(database_url)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    outbox_bytes = 0
    try:
        await pg.execute(DDL.format(table=settings.table))
        await pg.execute(f'INSERT INTO "{settings.table}" (phone, phone_number_id, assigned_to) '
                         "SELECT '5511' || g, '940740243', 'bot' FROM generate_series(1, $1) g", rows)
        await capture_install.install(pg, settings)
        for n in range(rounds):
            for name in list(variants) if n % 2 == 0 else list(variants)[::-1]:
                batch, client = variants[name]
                await pg.execute(f'UPDATE "{settings.table}" SET bot_flow_id = $1 || id::text',
                                 f"r{n}{name}-")
                if not outbox_bytes:  # a fresh outbox (later fills reuse its dead space)
                    outbox_bytes = await _outbox_bytes(pg, settings.table)
                samples[name].append(await _drain(client, settings, rows, batch))
        servers = {"redis-server": await common.redis_version(redis),
                   "postgresql": await common.postgres_version(pg)}
    finally:
        await common.drop_captured_table(pg, settings)
        await pg.close()
        await common.delete_prefix(redis, settings.key_prefix)
        await redis.aclose()
        await python_packing.aclose()
    return _result(samples, rows=rows, rounds=rounds, batches=batches,
                   outbox_bytes=outbox_bytes), servers


async def _outbox_bytes(pg: Any, table: str) -> int:
    size: int = await pg.fetchval("SELECT pg_total_relation_size($1::regclass)",
                                  outbox_names(table).qualified_outbox)
    return size


async def _drain(redis: Redis, settings: Settings, rows: int, batch: int) -> float:
    """Seconds from the relay's start until ``rows`` changes are on the stream."""
    lanes = settings.keys.lanes("conversations")  # a bulk statement's rows go to the bulk lane
    await redis.delete(*lanes)
    stop = asyncio.Event()
    started = time.perf_counter()
    relay = asyncio.create_task(run_relay(settings, redis, stop, RelayOptions(batch=batch)))
    try:
        while sum([await redis.xlen(s) for s in lanes]) < rows:  # changes, resynced marker
            if relay.done() or time.perf_counter() - started > TIMEOUT_S:
                raise RuntimeError(f"the relay stopped or took over {TIMEOUT_S:g} s")
            await asyncio.sleep(0.05)
        return time.perf_counter() - started
    finally:
        stop.set()
        await relay


def _result(samples: dict[str, list[float]], *, rows: int, rounds: int, batches: list[int],
            outbox_bytes: int) -> dict[str, Any]:
    rates = {name: rows / statistics.median(s) for name, s in samples.items()}
    first, largest = f"batch {batches[0]}", f"batch {max(batches)}"
    comparisons = {(largest, first), (first, f"{first}, python packing")} - {(first, first)}
    return {
        "parameters": {"rows": rows, "rounds": rounds, "batches": batches},
        "figures": {
            **{name: {"rows_per_s": round(rate, 1), "seconds": round(statistics.median(samples[name]), 2)}
               for name, rate in rates.items()},
            "outbox after the first UPDATE": {"mb": round(outbox_bytes / 1e6, 1),
                                        "bytes_per_row": round(outbox_bytes / rows, 1)},
        },
        "ratios": {f"{a} / {b}": {"ratio": common.ratio(rates[a], rates[b]), "target": None,
                                  "met": None} for a, b in sorted(comparisons)},
        "notes": ["Drain time runs from the relay's start (connect, LISTEN, drain) until every "
                  "change is on the stream; the relay shares this process with the poller.",
                  "python packing: the same relay on a plain redis-py client, which packs "
                  "commands in Python (redis/redis-py#4176)."],
    }
