"""What the capture trigger costs the user's writes: with it against without, one run.

Two identical tables of ``--rows`` conversations (default 10,000); one has
the capture installed (trigger + outbox), the other nothing.  The variants
alternate for ``--rounds`` rounds, each round in the other order (median
reported), since a shared 2-core
machine is noisy:

* ``single`` -- ``--updates`` single-row UPDATEs of ``bot_flow_id``, each its
  own transaction (updates per second);
* ``bulk`` -- one ``UPDATE`` of every row's ``bot_flow_id`` (rows per second);
* ``notes_only`` -- single-row UPDATEs of a column we do not capture: the
  trigger's WHEN clause should make these cost nothing.

The outbox is emptied between rounds (no relay runs).  Ratios are
with/without; the target for single-row writes is 0.6 or better.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from events.settings import Settings
from events.sources.outbox import outbox_names
from ops import migrate
from ops.bench import common

NAME = "trigger-cost"
TARGET = 0.6


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--rows", type=int, default=10_000)
    p.add_argument("--updates", type=int, default=2_000)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args(list(argv))
    result, servers = asyncio.run(_run(args.database_url, args.rows, args.updates, args.rounds))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(database_url: str, rows: int, updates: int,
               rounds: int) -> tuple[dict[str, Any], dict[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    plain, captured = f"bench_plain_{suffix}", f"bench_captured_{suffix}"
    settings = Settings(database_url=database_url, table=captured)
    pg = await asyncpg.connect(database_url)
    samples: dict[str, dict[str, list[float]]] = {
        v: {"plain": [], "captured": []} for v in ("single", "bulk", "notes_only")}
    try:
        for table in (plain, captured):
            await pg.execute(f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
                             "phone_number_id text NOT NULL, status text NOT NULL DEFAULT 'active', "
                             "assigned_to text, bot_flow_id text, bot_started_at timestamptz, notes text)")
            await pg.execute(f'INSERT INTO "{table}" (phone, phone_number_id, assigned_to) '
                             "SELECT '5511' || g, '940740243', 'bot' FROM generate_series(1, $1) g", rows)
        await migrate.install(pg, settings)
        outbox = outbox_names(captured).qualified_outbox
        for n in range(rounds):
            order = [("plain", plain), ("captured", captured)]
            for name, table in order if n % 2 == 0 else order[::-1]:
                samples["single"][name].append(
                    await _single(pg, table, rows, updates, "bot_flow_id", f"s{n}"))
                samples["notes_only"][name].append(
                    await _single(pg, table, rows, updates, "notes", f"n{n}"))
                samples["bulk"][name].append(await _bulk(pg, table, rows, f"b{n}"))
                await pg.execute(f"TRUNCATE {outbox}")
                await pg.execute(f'VACUUM "{table}"')
        servers = {"postgresql": await common.postgres_version(pg)}
    finally:
        await migrate.uninstall(pg, settings, force=True)
        await pg.execute(f'DROP TABLE IF EXISTS "{plain}", "{captured}"')
        await pg.close()
    return _result(samples, rows=rows, updates=updates, rounds=rounds), servers


async def _single(pg: Any, table: str, rows: int, updates: int, column: str, tag: str) -> float:
    sql = f'UPDATE "{table}" SET "{column}" = $1 WHERE id = $2'
    started = time.perf_counter()
    for n in range(updates):
        await pg.execute(sql, f"{tag}-{n}", (n * 7919) % rows + 1)
    return updates / (time.perf_counter() - started)


async def _bulk(pg: Any, table: str, rows: int, tag: str) -> float:
    started = time.perf_counter()
    await pg.execute(f'UPDATE "{table}" SET bot_flow_id = $1 || id::text', f"{tag}-")
    return rows / (time.perf_counter() - started)


def _result(samples: dict[str, dict[str, list[float]]], **parameters: int) -> dict[str, Any]:
    figures: dict[str, dict[str, float]] = {}
    ratios: dict[str, dict[str, Any]] = {}
    for variant, by_table in samples.items():
        plain, captured = (statistics.median(by_table[t]) for t in ("plain", "captured"))
        unit = "rows_per_s" if variant == "bulk" else "updates_per_s"
        figures[f"{variant}_without_trigger"] = {unit: round(plain, 1)}
        figures[f"{variant}_with_trigger"] = {unit: round(captured, 1)}
        value = common.ratio(captured, plain)
        target = TARGET if variant == "single" else None
        ratios[f"{variant}: with/without"] = {
            "ratio": value, "target": target,
            "met": None if target is None or value is None else value >= target}
    return {
        "parameters": parameters,
        "figures": figures,
        "ratios": ratios,
        "notes": ["Each single-row UPDATE is its own transaction over one connection, so the "
                  "round trip dominates; the bulk UPDATE shows the trigger's own cost per row "
                  "(a jsonb image pair and an outbox insert)."],
    }
