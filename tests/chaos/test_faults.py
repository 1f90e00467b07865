"""Fault injection under load: kill processes and connections, restart Redis, flood the folder.

Every role runs in its own process against a private Redis (AOF on) and the
test run's PostgreSQL, while :mod:`tests.chaos.load` drives conversations,
files and queue pushes.  Faults come at seeded random moments (``CHAOS_SEED``
picks another sequence).  Then the load stops and the stores must agree with
the rule table, every pushed message must be somewhere, no live bot run's
file may have been moved, and no action may have been done twice.  Per action
id the audit holds exactly one intent and one outcome, no intent is left open,
and the quarantine folder agrees with the outcomes (each kept file names the
action that moved it, audited ``done`` there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from consumers.actions import NOT_CARRIED_OUT, SETTLED
from consumers.stores.session_folder import SessionFiles
from events import codec
from events.contract import ActionRecorded
from events.settings import Settings
from events.sources.outbox import outbox_names
from ops.capture_install import install
from ops.scan import Inconsistency, scan
from tests.chaos.harness import Cluster, Faults, PrivateRedis, harness_redis, pg_pids, role_env
from tests.chaos.load import CHANNEL, Crm, FakeGateway, Ledger, burst, phone, push_messages, run_crm
from tests.support import create_conversations_table, eventually, one_line_per_action

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

SEED = int(os.environ.get("CHAOS_SEED", "7"))
LOAD_S = 30.0
CONVERGE_S = 100.0
DUE_HORIZON_S = 10.0
"""Converged means no deadline falls due within this (longer than the grace and session TTL
of :func:`chaos_settings`): a file still in its grace is not judged by the scan yet."""
ROLES = {"relay": "relay", "watcher": "watcher", "sessions": "sessions", "consumers-1": "consumers",
         "consumers-2": "consumers", "timers": "timers"}
KILLABLE = ("relay", "watcher", "consumers-1", "consumers-2", "timers")
LIVE, GONE = ["live-a", "live-b"], ["gone-a", "gone-b"]
CRM_NUMBERS = range(1, 41)
BURST_NUMBERS = range(10_000, 12_000)
ORPHAN_NUMBERS = range(20_000, 20_050)


def chaos_settings(settings: Settings, redis_url: str) -> Settings:
    return replace(settings, redis_url=redis_url, claim_min_idle_s=1.0, grace_s=2.0,
                   session_ttl_s=6.0, bot_timeout_s=3600.0, rescan_interval_s=5.0)


async def stage_burst_rows(pg: Any, settings: Settings) -> None:
    """Rows of the conversations whose files arrive in the burst: live bot runs, all of them."""
    now = datetime.now(UTC)
    await pg.executemany(
        f"INSERT INTO {settings.table} (phone, phone_number_id, status, assigned_to, bot_flow_id,"
        " bot_started_at) VALUES ($1, $2, 'active', 'bot', $3, $4)",
        [(phone(n), CHANNEL, ("bienvenida-v3", "cobranza-v1", "encuesta-nps")[n % 3], now)
         for n in BURST_NUMBERS])


async def inject(faults: Faults, settings: Settings, ledger: Ledger, stop: asyncio.Event) -> None:
    """Faults for ``LOAD_S`` seconds: the burst and two Redis restarts at fixed points, the
    rest (SIGKILLs, connection kills) at random moments in between."""
    rng = faults.rng
    start = time.monotonic()
    milestones = [(0.3, "burst"), (0.45, "restart"), (0.75, "restart")]
    kinds = ["sigkill"] * 3 + ["pg"] + ["redis_clients"]
    while (elapsed := time.monotonic() - start) < LOAD_S:
        for name in faults.cluster.revive():  # e.g. started while Redis was restarting
            faults.done[f"revived:{name}"] = faults.done.get(f"revived:{name}", 0) + 1
        if milestones and elapsed >= milestones[0][0] * LOAD_S:
            what = milestones.pop(0)[1]
            if what == "burst":
                await asyncio.to_thread(burst, settings, BURST_NUMBERS, ledger, orphans=ORPHAN_NUMBERS)
            else:
                await faults.restart_redis()
        else:
            kind = rng.choice(kinds)
            if kind == "sigkill":
                await faults.sigkill_and_restart()
            elif kind == "pg":
                await faults.kill_pg_connections()
            else:
                await faults.kill_redis_connections()
        await asyncio.sleep(rng.uniform(0.6, 1.6))
    stop.set()


async def audit_entries(redis: Redis, settings: Settings) -> list[ActionRecorded]:
    entries: list[ActionRecorded] = []
    last = "-"
    while True:
        batch = await redis.xrange(settings.keys.audit_stream, min=last, max="+", count=1000)
        batch = [b for b in batch if b[0].decode() != last]
        if not batch:
            return entries
        for entry_id, fields in batch:
            event = codec.decode(fields)
            if isinstance(event, ActionRecorded):
                entries.append(event)
            last = entry_id.decode()


async def message_ids(redis: Redis, key: str) -> list[str]:
    return [json.loads(raw)["id"] for raw in await redis.lrange(key, 0, -1)]


async def where_messages_are(redis: Redis, settings: Settings, gateway: FakeGateway,
                             session: str) -> dict[str, list[str]]:
    keys = settings.keys
    return {"delivered": await message_ids(redis, gateway.delivered_key(session)),
            "parked": await message_ids(redis, keys.parked(session)),
            "queued": await message_ids(redis, keys.queue(session))}


async def test_faults_under_load(pg: Any, settings: Settings, tmp_path: Path) -> None:
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    s = chaos_settings(settings, private.url)
    assert s.database_url is not None
    client = harness_redis(private.url)
    crm_pg = await asyncpg.connect(s.database_url)
    await create_conversations_table(pg, s.table)
    await install(pg, s)
    await stage_burst_rows(pg, s)
    rng = random.Random(SEED)
    ledger = Ledger()
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = Cluster.of(role_env(s, private.url), logs, ROLES)
    gateway = FakeGateway(client, s.keys, s.session_ttl_s)
    gate = asyncio.Lock()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        cluster.start()
        faults = Faults(cluster, private, client, s.database_url, await pg_pids(pg, crm_pg),
                        random.Random(rng.random()), gate, KILLABLE)
        crm = Crm(crm_pg, s, ledger, random.Random(rng.random()), CRM_NUMBERS)
        tasks = [asyncio.create_task(gateway.serve(name)) for name in LIVE]
        tasks += [
            asyncio.create_task(run_crm(crm, stop)),
            asyncio.create_task(push_messages(client, s.keys, LIVE + GONE, ledger,
                                              random.Random(rng.random()), gate, stop)),
        ]
        await asyncio.wait_for(inject(faults, s, ledger, stop), timeout=LOAD_S + 60)
        await asyncio.wait_for(asyncio.gather(*tasks[len(LIVE):]), timeout=60)
        print("faults:", faults.done, "load:", ledger.ops)  # shown with -s

        cluster.revive()  # one killed during the last fault may not have come back yet
        await converge(pg, client, s, gateway)
        assert cluster.crashed() == {}, "a role process gave up while the stores converged"
        # The checks read the audit, the open-actions hashes and the folder one after the
        # other: nothing may act in between (a periodic rescan, a deadline far off).
        await asyncio.to_thread(cluster.stop)
        await check_messages(client, s, gateway, ledger)
        audit = await audit_entries(client, s)
        await check_no_open_intent(client, s, audit)
        actions = one_line_per_action(audit)  # and: exactly one intent and one outcome per id
        print("outcomes:", Counter(a.outcome for a in actions),
              "settled after a kill:", sum(a.reason.startswith(SETTLED) for a in actions),
              "closed as not carried out:", sum(a.reason == NOT_CARRIED_OUT for a in actions))
        check_no_live_file_moved(s, ledger, actions)
        check_audited_once(actions, ledger)
        check_quarantine_agrees(s, actions)
    finally:
        stop.set()
        gateway.stop.set()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, timeout=20)
        await asyncio.to_thread(cluster.stop)
        await crm_pg.close()
        await client.aclose()
        private.stop()


async def converge(pg: Any, redis: Redis, settings: Settings, gateway: FakeGateway) -> None:
    """The scan finds nothing left (within ``CONVERGE_S``) and the queues are empty."""
    last: list[Inconsistency] = []

    async def quiet() -> bool:
        nonlocal last
        found = await scan(pg, redis, settings)
        # Nothing is explained away: bot timeouts are an hour (no run falls due) and every
        # file of a run is written after its row, so every kind the scan knows must be gone.
        last = found
        queued = [await redis.llen(settings.keys.queue(n)) for n in LIVE + GONE]
        due_soon = await redis.zcount(settings.keys.deadlines(), "-inf",
                                      (time.time() + DUE_HORIZON_S) * 1000)
        return not last and not any(queued) and not due_soon

    try:
        await eventually(quiet, timeout=CONVERGE_S, interval=0.5, message="stores to converge")
    except AssertionError as e:
        raise AssertionError(f"{e}; left: {last[:6]} ({len(last)} in all); "
                             f"{await diagnose(pg, redis, settings)}") from None


async def diagnose(pg: Any, redis: Redis, settings: Settings) -> dict[str, Any]:
    """Where the changes stand: outbox rows left, stream lengths, group lag and pending."""
    keys = settings.keys
    outbox = outbox_names(settings.table).qualified_outbox
    found: dict[str, Any] = {"outbox_rows": await pg.fetchval(f"SELECT count(*) FROM {outbox}")}
    found["deadlines_due_soon"] = await redis.zrangebyscore(
        keys.deadlines(), "-inf", (time.time() + DUE_HORIZON_S) * 1000, start=0, num=5)
    for stream in (keys.conversations_stream, keys.sessions_stream, keys.deadletter_stream):
        found[stream] = {"length": await redis.xlen(stream)}
        with contextlib.suppress(Exception):
            found[stream]["groups"] = await redis.xinfo_groups(stream)
    return found


async def check_messages(redis: Redis, settings: Settings, gateway: FakeGateway,
                         ledger: Ledger) -> None:
    """Every message pushed is delivered, parked or queued, exactly once."""
    for session, pushed in ledger.pushed.items():
        places = await where_messages_are(redis, settings, gateway, session)
        found = Counter(i for ids in places.values() for i in ids)
        doubled = {i: n for i, n in found.items() if n > 1}
        assert not doubled, f"{session}: messages in two places or twice: {list(doubled)[:10]}"
        lost = pushed - set(found) - ledger.uncertain
        assert not lost, f"{session}: {len(lost)} of {len(pushed)} messages lost: {sorted(lost)[:10]}"
        assert set(found) <= pushed, f"{session}: messages nobody pushed"
        if session in GONE:
            assert not places["delivered"], f"{session} is gone, yet something was delivered"


def check_no_live_file_moved(settings: Settings, ledger: Ledger, audit: list[ActionRecorded]) -> None:
    """A quarantined file was an orphan or the file of a run already ended by then.

    Both witnesses are read: the ``~record.json`` beside each file in the
    quarantine folder, and the ``quarantine_file`` entries of the audit stream.
    """
    moves = [(r.name, r.sha256, r.quarantined_at.timestamp())
             for r in SessionFiles(settings).records.entries()]
    moves += [(a.target, str((a.before or {}).get("sha256")), a.occurred_at.timestamp())
              for a in audit if a.action == "quarantine_file" and a.outcome == "done"]
    assert moves, "nothing was quarantined: the load's incidents did not reach the consumers"
    wrong = []
    for name, sha256, at in moves:
        sha = sha256.removeprefix("sha256:")
        if sha in ledger.orphan_contents:
            continue
        run = ledger.runs.get(sha)
        assert run is not None, f"quarantined a file the load never wrote: {name}"
        if run.ended_at is None or at < run.ended_at:
            wrong.append((name, run.key, run.flow, run.ended_at, at))
    assert not wrong, f"files of live bot runs were quarantined: {wrong[:5]}"


def check_audited_once(audit: list[ActionRecorded], ledger: Ledger) -> None:
    """No action done twice.

    "Once" under redelivery: an event may be handled several times (a consumer
    killed before its ack, a reclaim, a retry after a lost connection), and each
    handling observes the stores again and acts only on what it finds, with a
    conditional write.  So "once" is counted per incident, not per event:

    * a backfill at most once per time the CRM cleared the flow of that bot run
      (the CRM may clear it again after a backfill, recreating the same state);
    * any other action at most once per (action, target, cause, state acted on):
      the same cause may act again only on a state that came back meanwhile, which
      this load never recreates for those actions (file contents are unique, a run
      is closed once, queue counts only grow between parks of a gone session).
    """
    done = [a for a in audit if a.outcome == "done"]
    backfills = Counter((a.key, datetime.fromisoformat(str((a.before or {})["bot_started_at"])))
                        for a in done if a.action == "backfill_flow")
    too_many = {k: n for k, n in backfills.items()
                if k not in ledger.started or n > ledger.started[k].flow_clears}
    assert not too_many, f"flows backfilled more often than the CRM cleared them: {too_many}"
    others = Counter((a.action, a.target, a.cause_id, json.dumps(a.before, sort_keys=True, default=str))
                     for a in done if a.action != "backfill_flow")
    twice = [k[:3] for k, n in others.items() if n > 1]
    assert not twice, f"actions audited as done more than once: {twice[:10]}"


async def check_no_open_intent(redis: Redis, settings: Settings,
                              audit: list[ActionRecorded]) -> None:
    """Every intent was settled: none is left in an open-actions hash of any key."""
    keys = {a.key for a in audit}
    still_open = {k: n for k in keys if (n := await redis.hlen(settings.keys.open_actions(k)))}
    assert not still_open, f"intents left without an outcome, by key: {list(still_open.items())[:10]}"


def check_quarantine_agrees(settings: Settings, actions: list[ActionRecorded]) -> None:
    """The quarantine folder and the outcomes of ``quarantine_file`` say the same, per action id.

    Each file kept in quarantine names the action that moved it, and that action's
    outcome is ``done`` and says where it put it; each ``done`` has its file there;
    an action that did not end ``done`` has no file kept in its name.
    """
    files = SessionFiles(settings)
    kept = {r.action_id: r for r in files.records.entries() if not r.superseded}
    outcomes = {a.action_id: a for a in actions if a.action == "quarantine_file"}
    unexplained = [r.name for aid, r in kept.items() if aid not in outcomes]
    assert not unexplained, f"quarantined files without an audited action: {unexplained[:10]}"
    wrong = [(aid, outcomes[aid].outcome, r.name) for aid, r in kept.items()
             if outcomes[aid].outcome != "done"
             or (outcomes[aid].after or {}).get("quarantined_as") != str(files.quarantine_dir / r.name)]
    assert not wrong, f"files kept in quarantine by actions not audited as done there: {wrong[:10]}"
    missing = [aid for aid, a in outcomes.items() if a.outcome == "done" and aid not in kept]
    assert not missing, f"quarantine_file done, yet no file kept in its name: {missing[:10]}"
