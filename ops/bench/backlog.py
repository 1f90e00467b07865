"""A nightly bulk close of a big table: ours against a polling scheduler, side by side.

Two identical tables of ``--rows`` conversations (default 1,000,000; four rows
per phone number, the three older ones closed, with the CRM's lookup index on
``(phone, phone_number_id)`` and an inbox index on ``(status, created_at)``).
The newest row of ``--stale`` phones (default 100,000) is an active bot run of
one campaign and of ``--live`` more (50) an active bot run of another flow;
each of those has its session file.  The CRM's nightly job then closes the
campaign in one statement and leaves the bot fields behind::

    UPDATE t SET status = 'closed' WHERE status = 'active' AND bot_flow_id = 'campaign'

so every one of those keys must have its bot fields cleared and its session
file quarantined.  Measured from the commit until that is done for every key
and ``audit`` (:func:`ops.scan.scan_conversations`) finds nothing:

* ``ours`` -- the capture installed, and the relay, watcher, consumers and
  timers roles running in this process (``serve_roles``), started on the
  seeded table and folder (a first start: the table is listed and the folder
  snapshotted, and the bench waits until the groups have handled both), the
  periodic listing off;
* ``polling`` -- on the other table, no capture: a scheduler written like
  the seed's, every ``--period`` s (1): ``SELECT`` the closed rows that keep
  a bot field, then per row move its session file and ``UPDATE`` the row.

While each backlog drains, ``--live`` single closes of the other flow's rows
are made, one every ``--live-interval-ms`` (200) from the commit on, each
timed from just before its UPDATE to its session file being gone (looked at
every 5 ms).  Tables, folders and keys are removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from redis.asyncio import Redis

from events.contract import BULK_SUFFIX, CONVERSATIONS
from events.settings import Settings
from ops import capture_install, scan
from ops.bench import common
from ops.group_metrics import GroupCollector
from ops.roles import serve_roles

NAME = "backlog"
VARIANTS = ("ours", "polling")
CHANNEL = "940740243"
CAMPAIGN, OTHER_FLOW = "campaign-2026-11", "promotoras-v2-mw7rpy"
ROWS_PER_PHONE = 4
ROLES = ("relay", "watcher", "consumers", "timers")
WAIT_S = 3600.0
"""Longest wait for one variant's backlog, and for the roles to settle."""
LOOK_EVERY_S = 0.005
"""How often the live changes' files are looked at."""
DONE_EVERY_S = 0.25
"""How often the backlog's files (then its rows) are looked at."""
DDL = ('CREATE TABLE "{t}" (id bigserial PRIMARY KEY, phone text NOT NULL, '
       "phone_number_id text NOT NULL, status text NOT NULL DEFAULT 'active', "
       "assigned_to text, bot_flow_id text, bot_started_at timestamptz, "
       "created_at timestamptz NOT NULL DEFAULT now(), notes text)")
INDEXES = ('CREATE INDEX ON "{t}" (phone, phone_number_id)',
           'CREATE INDEX ON "{t}" (status, created_at)')
SEED = """
INSERT INTO "{t}" (phone, phone_number_id, status, assigned_to, bot_flow_id, bot_started_at,
                   created_at, notes)
SELECT '52' || lpad(p::text, 10, '0'), $1,
       CASE WHEN r = 3 AND (p < $3 OR p % 10 = 0) THEN 'active' ELSE 'closed' END,
       CASE WHEN r = 3 AND p < $3 THEN 'bot' WHEN r = 3 AND p % 10 = 0 THEN 'agent-7' END,
       CASE WHEN r = 3 AND p < $2 THEN $4 WHEN r = 3 AND p < $3 THEN $5 END,
       CASE WHEN r = 3 AND p < $3 THEN now() - interval '5 minutes' END,
       now() - (3 - r) * interval '1 day', 'seeded'
FROM generate_series(0, $6 - 1) p, generate_series(0, 3) r
"""
NIGHTLY_JOB = 'UPDATE "{t}" SET status = \'closed\' WHERE status = \'active\' AND bot_flow_id = $1'
LIVE_CLOSE = 'UPDATE "{t}" SET status = \'closed\' WHERE phone = $1 AND status = \'active\''
LEFT_BEHIND = ('SELECT EXISTS (SELECT 1 FROM "{t}" WHERE status = \'closed\' AND (assigned_to '
               'IS NOT NULL OR bot_flow_id IS NOT NULL OR bot_started_at IS NOT NULL))')
POLL_QUERY = ('SELECT id, phone, phone_number_id FROM "{t}" WHERE status = \'closed\' AND '
              '(assigned_to IS NOT NULL OR bot_flow_id IS NOT NULL OR bot_started_at IS NOT NULL)')
POLL_CLEAR = ('UPDATE "{t}" SET assigned_to = NULL, bot_flow_id = NULL, bot_started_at = NULL '
              'WHERE id = $1')


@dataclass(frozen=True)
class Plan:
    rows: int
    stale: int
    live: int
    live_interval_s: float
    period_s: float

    def phone(self, n: int) -> str:
        return "52" + str(n).rjust(10, "0")

    def file_name(self, n: int) -> str:
        return f"whatsapp_{self.phone(n)}_{CHANNEL}.json"


def main(argv: Sequence[str]) -> int:
    p = common.parser(NAME, __doc__.splitlines()[0] if __doc__ else NAME)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--stale", type=int, default=100_000)
    p.add_argument("--live", type=int, default=50)
    p.add_argument("--live-interval-ms", type=float, default=200.0)
    p.add_argument("--period", type=float, default=1.0, help="the polling period, seconds")
    args = p.parse_args(list(argv))
    if args.rows // ROWS_PER_PHONE < args.stale + args.live:
        p.error("--rows must hold four rows for each --stale and --live phone")
    plan = Plan(args.rows, args.stale, args.live, args.live_interval_ms / 1000, args.period)
    result, servers = asyncio.run(_run(args.redis_url, args.database_url, plan))
    common.emit(NAME, result, argv=argv, out=args.out, servers=servers)
    return 0


async def _run(redis_url: str, database_url: str, plan: Plan) -> tuple[dict[str, Any], dict[str, str]]:
    redis = Redis.from_url(redis_url)
    pg = await asyncpg.connect(database_url)
    measured: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="backlog-bench-") as folder:
            for variant in VARIANTS:
                settings = _settings(redis_url, database_url, Path(folder) / variant)
                try:
                    await _seed(pg, settings, plan)
                    run = _ours if variant == "ours" else _polling
                    measured[variant] = await run(pg, redis, settings, plan)
                finally:
                    await common.drop_captured_table(pg, settings)
                    await common.delete_prefix(redis, settings.key_prefix)
        servers = {"redis-server": await common.redis_version(redis),
                   "postgresql": await common.postgres_version(pg)}
    finally:
        await pg.close()
        await redis.aclose()
    return _result(plan, measured), servers


def _settings(redis_url: str, database_url: str, folder: Path) -> Settings:
    settings = Settings(redis_url=redis_url, database_url=database_url,
                        sessions_dir=folder / "sessions", quarantine_dir=folder / "quarantine",
                        data_dir=folder, table=f"bench_backlog_{uuid.uuid4().hex[:8]}",
                        key_prefix=common.fresh_prefix(NAME), db_listing_interval_s=0)
    settings.sessions_dir.mkdir(parents=True)
    settings.quarantine_dir.mkdir()
    return settings


async def _seed(pg: Any, settings: Settings, plan: Plan) -> None:
    """The table and the session files of its bot runs (written an hour ago)."""
    t = settings.table
    await pg.execute(DDL.format(t=t))
    await pg.execute(SEED.format(t=t), CHANNEL, plan.stale, plan.stale + plan.live, CAMPAIGN,
                     OTHER_FLOW, plan.rows // ROWS_PER_PHONE)
    for index in INDEXES:
        await pg.execute(index.format(t=t))
    await pg.execute(f'ANALYZE "{t}"')
    await asyncio.to_thread(_write_files, settings.sessions_dir, plan)


def _write_files(folder: Path, plan: Plan) -> None:
    an_hour_ago = time.time() - 3600
    for n in range(plan.stale + plan.live):
        flow = CAMPAIGN if n < plan.stale else OTHER_FLOW
        path = folder / plan.file_name(n)
        path.write_text(f'{{"flowId": "{flow}", "step": 3}}')
        os.utime(path, (an_hour_ago, an_hour_ago))


async def _ours(pg: Any, redis: Redis, settings: Settings, plan: Plan) -> dict[str, Any]:
    await capture_install.install(pg, settings)
    stop = asyncio.Event()
    cpu_before, started = await common.cpu_seconds(redis), time.perf_counter()
    roles = asyncio.create_task(serve_roles(settings, redis, ROLES, stop))
    try:
        start_s = await _settled(redis, settings, roles) - started
        own, server = _spent(cpu_before, await common.cpu_seconds(redis))
        start = {"start_s": start_s, "start_events": await _entries_read(redis, settings),
                 "start_process_cpu_s": own, "start_redis_cpu_s": server}
        return {**await _drain(pg, redis, settings, plan), **start}
    finally:
        stop.set()
        await asyncio.wait_for(roles, 60)


async def _settled(redis: Redis, settings: Settings, roles: asyncio.Task[None]) -> float:
    """When the groups had first read and acked everything (the first start's listing of
    the table and snapshot of the folder), seen so three times in a row a second apart."""
    collector = GroupCollector(redis, settings.keys, (CONVERSATIONS, CONVERSATIONS + BULK_SUFFIX))
    deadline, quiet, since = time.monotonic() + WAIT_S, 0, time.perf_counter()
    while quiet < 3:
        if roles.done():
            roles.result()  # a role failed: say why
            raise RuntimeError("the roles stopped before the backlog")
        if time.monotonic() > deadline:
            raise TimeoutError("the roles did not settle in time")
        states = await collector.collect()
        at = time.perf_counter()
        busy = not states or any(s.lag or s.pending for s in states)
        quiet, since = (0, since) if busy else (quiet + 1, since if quiet else at)
        await asyncio.sleep(1.0)
    return since


async def _entries_read(redis: Redis, settings: Settings) -> int:
    """Entries the conversations group has read from both lanes."""
    read = 0
    for stream in settings.keys.lanes(CONVERSATIONS):
        read += sum(int(g["entries-read"] or 0) for g in await redis.xinfo_groups(stream))
    return read


async def _polling(pg: Any, redis: Redis, settings: Settings, plan: Plan) -> dict[str, Any]:
    poller_pg = await asyncpg.connect(settings.database_url)
    stop = asyncio.Event()
    poller = asyncio.create_task(_poll(poller_pg, settings, plan.period_s, stop))
    try:
        return await _drain(pg, redis, settings, plan)
    finally:
        stop.set()
        await asyncio.wait_for(poller, 60)
        await poller_pg.close()


async def _poll(pg: Any, settings: Settings, period_s: float, stop: asyncio.Event) -> None:
    """The scheduler: every period, the candidates, then per row its file and its UPDATE."""
    query, clear = POLL_QUERY.format(t=settings.table), POLL_CLEAR.format(t=settings.table)
    while not stop.is_set():
        started = time.perf_counter()
        for row in await pg.fetch(query):
            name = settings.file_pattern.format(phone=row["phone"], channel=row["phone_number_id"])
            with contextlib.suppress(FileNotFoundError):
                os.replace(settings.sessions_dir / name, settings.quarantine_dir / name)
            await pg.execute(clear, row["id"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, started + period_s - time.perf_counter()))


async def _drain(pg: Any, redis: Redis, settings: Settings, plan: Plan) -> dict[str, Any]:
    """Run the nightly job, the live closes beside it; wait until both are reconciled."""
    cpu_before = await common.cpu_seconds(redis)
    sent = time.perf_counter()
    status = await pg.execute(NIGHTLY_JOB.format(t=settings.table), CAMPAIGN)
    committed = time.perf_counter()
    if status != f"UPDATE {plan.stale}":
        raise RuntimeError(f"the nightly job changed {status!r}, not {plan.stale} rows")
    live = asyncio.create_task(_live_closes(settings, plan))
    drained_at = await _reconciled(pg, settings, plan)
    own, server = _spent(cpu_before, await common.cpu_seconds(redis))
    latencies = await asyncio.wait_for(live, WAIT_S)
    found = await scan.scan_conversations(pg, settings)
    if found:
        raise RuntimeError(f"audit found {len(found)} inconsistencies, e.g. {found[0]}")
    return {"statement_s": committed - sent, "drained_s": drained_at - committed,
            "latency_ms": latencies, "process_cpu_s": own, "redis_cpu_s": server}


def _spent(before: tuple[float, float], after: tuple[float, float]) -> tuple[float, float]:
    """CPU seconds of this process and of the Redis server between two readings."""
    return after[0] - before[0], after[1] - before[1]


async def _reconciled(pg: Any, settings: Settings, plan: Plan) -> float:
    """When no closed row keeps a bot field and the campaign's files are all gone.

    The rows are asked first (a query that stops at the first row left), the folder is
    listed only once they are done: listing 100,000 files every look took a quarter of
    the CPU this process gave the roles."""
    names = {plan.file_name(n) for n in range(plan.stale)}
    left_behind = LEFT_BEHIND.format(t=settings.table)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        at = time.perf_counter()
        if not await pg.fetchval(left_behind) and names.isdisjoint(
                await asyncio.to_thread(os.listdir, settings.sessions_dir)):
            return at
        await asyncio.sleep(DONE_EVERY_S)
    raise TimeoutError("the backlog was not reconciled in time")


async def _live_closes(settings: Settings, plan: Plan) -> list[float]:
    """Close each live row on its own connection; ms from the UPDATE to its file gone."""
    pg = await asyncpg.connect(settings.database_url)
    close = LIVE_CLOSE.format(t=settings.table)
    sent: dict[Path, float] = {}
    try:
        looking = asyncio.create_task(_gone(sent, plan.live))
        for n in range(plan.stale, plan.stale + plan.live):
            before = time.perf_counter()
            await pg.execute(close, plan.phone(n))
            sent[settings.sessions_dir / plan.file_name(n)] = before
            await asyncio.sleep(plan.live_interval_s)
        gone = await looking
    finally:
        await pg.close()
    return [(gone[path] - before) * 1000 for path, before in sent.items()]


async def _gone(sent: dict[Path, float], count: int) -> dict[Path, float]:
    """When each file of ``sent`` was first seen gone, until ``count`` are."""
    gone: dict[Path, float] = {}
    deadline = time.monotonic() + WAIT_S
    while len(gone) < count:
        if time.monotonic() > deadline:
            raise TimeoutError("the live closes' files were not all quarantined in time")
        waiting = [path for path in sent if path not in gone]
        absent = await asyncio.to_thread(_absent, waiting)
        gone.update(dict.fromkeys(absent, time.perf_counter()))
        await asyncio.sleep(LOOK_EVERY_S)
    return gone


def _absent(paths: list[Path]) -> list[Path]:
    return [path for path in paths if not path.exists()]


def _result(plan: Plan, measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    figures = {}
    for variant, m in measured.items():
        stats = common.percentiles(m["latency_ms"])
        figures[variant] = {"drained_s": round(m["drained_s"], 3),
                            "keys_per_s": round(plan.stale / m["drained_s"], 1),
                            "statement_s": round(m["statement_s"], 3),
                            "live_p50_ms": round(stats["p50"], 3),
                            "live_p99_ms": round(stats["p99"], 3),
                            "live_max_ms": round(stats["max"], 3),
                            "process_cpu_ms_per_key": round(1000 * m["process_cpu_s"] / plan.stale, 3),
                            "redis_cpu_ms_per_key": round(1000 * m["redis_cpu_s"] / plan.stale, 3)}
        if "start_s" in m:  # ours: the first start's listing and snapshot, keys consistent
            events = m["start_events"]
            figures[variant].update({
                "start_s": round(m["start_s"], 3), "start_events": events,
                "start_events_per_s": round(events / m["start_s"], 1),
                "start_process_cpu_ms_per_event": round(1000 * m["start_process_cpu_s"] / events, 3),
                "start_redis_cpu_ms_per_event": round(1000 * m["start_redis_cpu_s"] / events, 3)})
    ratios = {"polling/ours (drained_s)": {
        "ratio": common.ratio(figures["polling"]["drained_s"], figures["ours"]["drained_s"]),
        "target": 1.0, "met": figures["polling"]["drained_s"] > figures["ours"]["drained_s"]}}
    ratios.update({f"polling/ours (live {p})": {
        "ratio": common.ratio(figures["polling"][f"live_{p}_ms"], figures["ours"][f"live_{p}_ms"]),
        "target": None, "met": None} for p in ("p50", "p99")})
    return {
        "parameters": {"rows": plan.rows, "stale": plan.stale, "live": plan.live,
                       "live_interval_ms": plan.live_interval_s * 1000,
                       "polling_period_s": plan.period_s, "nightly_job": NIGHTLY_JOB,
                       "poll_query": POLL_QUERY, "indexes": list(INDEXES), "roles": list(ROLES)},
        "figures": figures,
        "ratios": ratios,
        "distributions": {f"{v}: live close during the backlog -> file quarantined"
                          if v == "ours" else "polling (poll 1s): live close during the backlog":
                          m["latency_ms"] for v, m in measured.items()},
        "notes": NOTES,
    }


NOTES = [
    "drained_s runs from the nightly job's commit until none of the campaign's files is in the "
    "sessions folder and no closed row keeps a bot field (looked at every 0.25 s: the rows "
    "first, the folder once they are done); then audit must find nothing, or the bench fails.",
    "ours gets three events per key of the job: the job's change, the consumers' own clear "
    "coming back through the capture (marked as theirs, on the bulk lane) and the watcher's "
    "report of the quarantined file's removal.  The last two are echoes of changes the handling"
    " observed right after making them, and are skipped unhandled "
    "(reconciler_echoes_skipped_total); drained_s ends when the stores are right.",
    "start_* (ours): the first start, from the roles' start until the groups had read and acked"
    " it: the table listing (one reconcile.requested per key with a row that can matter) and "
    "the folder's snapshot (one event per file), every key consistent (observed, judged, its "
    "bot timeout scheduled); start_events_per_s is what one consumers process reconciles when "
    "nothing is to be done, with the CPU it took per event.",
    "process_cpu_ms_per_key: CPU of this process (every role, or the poller, and the bench's "
    "own looking) from the commit until drained, per key of the job; redis_cpu_ms_per_key the "
    "same for the Redis server (INFO cpu; other clients of a shared server count too).",
    "Live closes are timed from just before the UPDATE to the file gone (looked at every 5 ms).",
    "Where ours spends its event loop while the backlog drains (py-spy, 100 Hz for 30 s of a "
    "default run at 2e4688e, before echoes were skipped, the loop's samples): observing a key "
    "(its rows, its file, its clocks) 22%, the quarantine (file, record, purge timer) 14%, the "
    "relay 12%, claims 7%, the guard's second look at the rows before and after a move 6%, "
    "outcomes 6%, the runtime's reads, acks and queue 5%, the UPDATEs 4%, the watcher 4%, "
    "settling open intents 3%, the pause gate 3%; the rest is socket reads and the loop itself."
    "  Each key is handled about three times (the job's change, the consumers' own clear and "
    "the watcher's report of the quarantined file come back as events), and its two actions "
    "take an intent and an outcome each and verify the move: work the polling scheduler does "
    "not do.",
    "Batched row reads (the keys handled at once read by one query; bench row-reads): with "
    "py-spy at 100 Hz over a whole run of --rows 200000 --stale 20000, before and after, the "
    "row reads went from 1,283 samples (7.8%) to 625 (4.7%) and asyncpg from 1,661 to 918; "
    "resolving the session folder for every path was 486 samples (3.7%), since removed.",
    "With echoes skipped (py-spy, 100 Hz over a whole run of --rows 100000 --stale 10000 at "
    "0b41417, all samples, the first start's included): the conversations handler 42%: its "
    "actions 25% (the quarantine 15%, of which the move with its record, checks and second look"
    " at the rows 7%, its purge timer 2%, intent and outcome 3%, the pause gate 1%; the clears "
    "7%; timers the verdicts schedule 2%), observing 13% (the file 4%, the rows 3%, the two "
    "clocks' pipeline 5%), settling open intents 3%; the relay 3%, the watcher 2%, the folder's"
    " first snapshot and rescan 10%, the bench's own writing and looking 13%.  At that size "
    "skipping the echoes did not move drained_s beyond this machine's noise (two alternating "
    "runs: 42.9 s and 41.3 s, against 44.7 s and 41.7 s handling them); Redis CPU per key went "
    "from 0.69 and 0.65 ms to 0.62 and 0.54 ms.  At the default size, one run of each on the "
    "same day (this one at 0b41417, then 133f39e, which handled the echoes and published the "
    "clears live): drained 371 s against 458 s, live p50 120 ms against 152, p99 648 against "
    "885, CPU per key 3.5 ms against 4.4, Redis CPU per key 0.55 ms against 0.69; their first "
    "starts, which skip nothing, ran at 1,284 and 1,404 events/s.",
    "A live close made during the job is published with the relay's next batch (once the relay "
    "has seen the statement it reads what was committed after it first), then handled on the "
    "live lane; what is left of its latency is this saturated process, where the relay and the "
    "consumers share one event loop. Before that relay (7f31813, a run of this command): live "
    "p50 25,862 ms, p99 30,325 ms.",
    "With at most two bulk handlings started beside a live one (00f61cd), against the "
    "same build without that cap, one default run each on the same day: live p50 86 ms against "
    "119, drained 264 s against 280; the p99 (578 against 584 ms) is the first eight closes, "
    "made in the 1.6 s after the job's commit, in both.  The relay's first five backlog reads "
    "after the job took 340-600 ms each (3-4 ms from the sixth on); since its session plans "
    "generically (6b6bbfd; this run, at ff231c0): live p50 72 ms, p99 363 ms (the first close "
    "alone; the second took 121 ms), drained 258 s.",
]
