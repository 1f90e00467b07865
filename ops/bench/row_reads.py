"""Row reads: the consumers' reads of many keys at once, batched against one query per key.

A table of ``--rows`` conversations (default 1,000,000; four rows per number,
the newest of one in ten an active bot run, with the indexes a CRM has) is read
by ``--handlings`` concurrent handlings (default: the ``concurrency`` setting,
16), each reading random keys through :class:`consumers.stores.conversations_sql.
ConversationsSql` and a pool sized as the consumers role sizes it, until
``--reads`` reads (default 50,000) are done.  Two variants, in one run, taking
turns for ``--rounds`` rounds (default 3; the median is reported):

* ``batched`` -- as the consumers read: the keys asked for while a read is in
  flight go out together in the next query;
* ``per_key`` -- one query per key (a batch of at most one key).

Figures per variant: reads per second, the keys one query carried on average,
and this process's CPU per read.  The table is dropped at the end.
"""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from consumers.consumers_role import POOL_MAX_SIZE
from consumers.stores.conversations_sql import MAX_KEYS_PER_READ, ConversationsSql
from events.settings import Settings
from ops.bench import common

NAME = "row-reads"
CHANNEL = "940740243"
ROWS_PER_PHONE = 4
VARIANTS = {"batched": MAX_KEYS_PER_READ, "per_key": 1}


class CountingPool:
    """The pool's two methods the reads use, counting the row queries."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = 0

    async def fetch(self, *args: Any) -> Any:
        self.queries += 1
        return await self.pool.fetch(*args)

    async def fetchval(self, *args: Any) -> Any:
        return await self.pool.fetchval(*args)


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--reads", type=int, default=50_000)
    p.add_argument("--handlings", type=int, default=Settings().concurrency)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _stage(pg: Any, table: str, rows: int) -> None:
    await pg.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),'
                     " phone text NOT NULL, phone_number_id text NOT NULL, status text NOT NULL,"
                     " assigned_to text, bot_flow_id text, bot_started_at timestamptz, notes text,"
                     " created_at timestamptz NOT NULL)")
    await pg.execute(
        f'INSERT INTO "{table}" (phone, phone_number_id, status, assigned_to, bot_flow_id,'
        " bot_started_at, created_at) SELECT '52155' || (g / $2), $3,"
        " CASE WHEN g % $2 = 0 AND (g / $2) % 10 = 0 THEN 'active' ELSE 'closed' END,"
        " CASE WHEN g % $2 = 0 AND (g / $2) % 10 = 0 THEN 'bot' END,"
        " CASE WHEN g % $2 = 0 AND (g / $2) % 10 = 0 THEN 'flow-a' END, NULL,"
        " now() - make_interval(secs => $1 - g) FROM generate_series(1, $1) g",
        rows, ROWS_PER_PHONE, CHANNEL)
    await pg.execute(f'CREATE INDEX ON "{table}" (phone, phone_number_id)')
    await pg.execute(f'CREATE INDEX ON "{table}" (status, created_at)')
    await pg.execute(f'VACUUM ANALYZE "{table}"')


async def _variant(pool: asyncpg.Pool, settings: Settings, max_keys: int, args: Any,
                   phones: int) -> dict[str, float]:
    counting = CountingPool(pool)
    store = ConversationsSql(counting, settings, max_keys_per_read=max_keys)
    await store.read_all("521550", CHANNEL)  # settles the ordering and the key types
    counting.queries = 0
    left = args.reads
    rng = random.Random(7)

    async def handling() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await store.read_all(f"52155{rng.randrange(phones)}", CHANNEL)

    cpu = _cpu_s()
    started = time.perf_counter()
    await asyncio.gather(*(handling() for _ in range(args.handlings)))
    seconds = time.perf_counter() - started
    return {"reads_per_s": args.reads / seconds, "keys_per_query": args.reads / counting.queries,
            "cpu_ms_per_read": (_cpu_s() - cpu) * 1000 / args.reads}


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


async def _run(args: Any) -> tuple[dict[str, Any], dict[str, str]]:
    table = f"bench_row_reads_{uuid.uuid4().hex[:8]}"
    settings = Settings(table=table)
    pg = await asyncpg.connect(args.database_url)
    try:
        await _stage(pg, table, args.rows)
        async with asyncpg.create_pool(args.database_url, min_size=1,
                                       max_size=min(POOL_MAX_SIZE, args.handlings)) as pool:
            rounds: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant, max_keys in VARIANTS.items():
                    rounds[variant].append(await _variant(pool, settings, max_keys, args,
                                                          args.rows // ROWS_PER_PHONE))
        servers = {"postgresql": await common.postgres_version(pg)}
    finally:
        await pg.execute(f'DROP TABLE IF EXISTS "{table}"')
        await pg.close()
    figures = {v: {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
               for v, runs in rounds.items()}
    return {
        "parameters": {"rows": args.rows, "reads": args.reads, "handlings": args.handlings,
                       "rounds": args.rounds, "max_keys_per_read": MAX_KEYS_PER_READ},
        "figures": figures,
        "ratios": {
            "batched/per_key (reads_per_s)": {"ratio": common.ratio(
                figures["batched"]["reads_per_s"], figures["per_key"]["reads_per_s"]),
                "target": None, "met": None},
            "per_key/batched (cpu_ms_per_read)": {"ratio": common.ratio(
                figures["per_key"]["cpu_ms_per_read"], figures["batched"]["cpu_ms_per_read"]),
                "target": None, "met": None}},
        "notes": [
            "Both variants run the same query (unnest of the batch's keys, each key's rows by "
            "its index); per_key sends it with one key. The database runs on the same cores, so "
            "its share of the work shows in reads_per_s, not in cpu_ms_per_read.",
            "Each round's variants read the same random keys (seed 7), one after the other.",
        ],
    }, servers
