"""What listing the conversations table costs: rate and database load on a large table.

A table of ``--rows`` conversations (default 1,000,000; two rows per number,
``--matter`` of them active or carrying bot fields, the rest clean closed
rows) is listed by :class:`events.sources.table_listing.TableListing`, the
code the relay and ``reconciler resync`` run, publishing to a fresh Redis
prefix.  Two variants:

* ``unlimited`` -- no rate limit: the raw cost of one pass;
* ``limited`` -- at ``--rate`` rows per second (the setting's default).

Figures per variant: rows and keys listed, seconds, rows per second, the
share of the wall time the database spent on the listing's statements
(``db_busy_share``: summed statement time / wall time; at most one backend
is ever busy), the slowest page, and the table's sequential scans during
the pass (0: every page was an index range scan).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from redis.asyncio import Redis

from events.keys import KeySpace
from events.publisher import Publisher
from events.settings import Settings
from events.sources.table_listing import TableListing
from ops.bench import common

NAME = "db-listing"


class TimedConnection:
    """The part of a connection the listing uses, timing every statement."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.busy_s = 0.0
        self.slowest_s = 0.0

    async def fetch(self, sql: str, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.conn.fetch(sql, *args)
        finally:
            spent = time.perf_counter() - started
            self.busy_s += spent
            self.slowest_s = max(self.slowest_s, spent)


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--matter", type=float, default=0.1,
                   help="share of rows that can matter (active, or with bot fields)")
    p.add_argument("--rate", type=float, default=Settings().db_listing_rate)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args.database_url, args.redis_url, args.rows,
                                       args.matter, args.rate))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _stage(pg: Any, table: str, rows: int, matter: float) -> None:
    await pg.execute(f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
                     "phone_number_id text NOT NULL, status text NOT NULL, assigned_to text, "
                     "bot_flow_id text, bot_started_at timestamptz, notes text, "
                     "created_at timestamptz NOT NULL DEFAULT now())")
    await pg.execute(
        f'INSERT INTO "{table}" (phone, phone_number_id, status, assigned_to, bot_flow_id) '
        "SELECT '52155' || (g / 2), '940740243', CASE WHEN random() < $2 THEN 'active' "
        "ELSE 'closed' END, NULL, NULL FROM generate_series(1, $1) g", rows, matter)
    await pg.execute(f'UPDATE "{table}" SET assigned_to = \'bot\', bot_flow_id = \'flow-a\' '
                     "WHERE status = 'active'")
    await pg.execute(f'CREATE INDEX ON "{table}" (phone, phone_number_id)')
    await pg.execute(f'VACUUM ANALYZE "{table}"')


async def _variant(pg: Any, redis: Redis, settings: Settings, rate: float) -> dict[str, Any]:
    keys = KeySpace(prefix=settings.key_prefix)
    listing = TableListing(Settings(table=settings.table, db_listing_rate=rate),
                           Publisher(redis, keys))
    timed = TimedConnection(pg)
    result = await listing.list_once(timed, "bench")
    return {"rows": result.rows, "keys": result.keys, "seconds": round(result.seconds, 2),
            "rows_per_s": round(result.rows / result.seconds) if result.seconds else None,
            "db_busy_share": round(timed.busy_s / result.seconds, 3) if result.seconds else None,
            "slowest_page_ms": round(timed.slowest_s * 1000, 1),
            "page_plan": await _plan(pg, listing)}


async def _plan(pg: Any, listing: TableListing) -> str:
    """The plan of a page in the middle of the table, e.g. ``Limit > Index Scan``."""
    middle = await pg.fetchval(f"SELECT max(id) / 2 FROM ({listing.next_page_sql.split(' WHERE')[0]}"
                               ") AS t")
    plan = await pg.fetchval(f"EXPLAIN (FORMAT JSON) {listing.next_page_sql}", 500, middle)
    node, names = json.loads(plan)[0]["Plan"], []
    while node:
        names.append(node["Node Type"])
        node = (node.get("Plans") or [None])[0]
    return " > ".join(names)


async def _run(database_url: str, redis_url: str, rows: int, matter: float,
               rate: float) -> tuple[dict[str, Any], dict[str, str]]:
    table = f"bench_listing_{uuid.uuid4().hex[:8]}"
    settings = Settings(table=table, key_prefix=common.fresh_prefix(NAME))
    pg = await asyncpg.connect(database_url)
    redis = Redis.from_url(redis_url)
    try:
        await _stage(pg, table, rows, matter)
        figures = {"unlimited": await _variant(pg, redis, settings, 1e12),
                   "limited": await _variant(pg, redis, settings, rate)}
        servers = {"postgresql": await common.postgres_version(pg),
                   "redis-server": await common.redis_version(redis)}
    finally:
        await pg.execute(f'DROP TABLE IF EXISTS "{table}"')
        await pg.close()
        await common.delete_prefix(redis, settings.key_prefix)
        await redis.aclose()
    return {"parameters": {"rows": rows, "matter": matter, "rate": rate}, "figures": figures,
            "notes": ["Keyset pages of 500 rows on the primary key; each page is one short "
                      "statement, so no transaction is held open for the pass."]}, servers
