"""``reconciler run`` against a real three-node Redis Cluster, every role in it.

The real CLI runs as a child process with ``RECONCILER_REDIS_CLUSTER=true``,
``REDIS_URL`` naming one node of the cluster (:mod:`tests.redis_cluster`) and
three stream partitions, against a real PostgreSQL and a real sessions folder.
It does what it does on one node: chats stuck waiting on the bot get their
flow from the file, time out on the timer wheel and have their files
quarantined, on keys of all three partitions; a gateway that crashes leaves
its queue parked, and the same session back gets its messages first; and
``reconciler status``, run against another node, reads every group.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster

from events.gateway import GatewaySessions
from events.settings import Settings
from ops import capture_install
from tests.ops.test_embedded import Run
from tests.ops.test_health import free_port
from tests.redis_cluster import NODES, client, cluster, keyslot
from tests.redis_cluster import node as cluster_node
from tests.support import create_conversations_table, eventually

__all__ = ["client", "cluster"]  # the fixtures
pytestmark = pytest.mark.timeout(600)

PARTITIONS = 3
FLOW = "cluster-flow"
CHANNEL = "940740243"


def run_env(settings: Settings, node_port: int, metrics_port: int, folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    assert settings.database_url is not None
    return {**env, "REDIS_URL": f"redis://127.0.0.1:{node_port}/0",
            "DATABASE_URL": settings.database_url, "RECONCILER_REDIS_CLUSTER": "true",
            "RECONCILER_STREAM_PARTITIONS": str(PARTITIONS), "RECONCILER_TABLE": settings.table,
            "RECONCILER_KEY_PREFIX": settings.key_prefix,
            "RECONCILER_QUEUE_PATTERN": settings.queue_pattern, "RECONCILER_GRACE_S": "2",
            "RECONCILER_SESSIONS_DIR": str(settings.sessions_dir),
            "RECONCILER_QUARANTINE_DIR": str(settings.quarantine_dir),
            "RECONCILER_DATA_DIR": str(folder / "data"),
            "RECONCILER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "RECONCILER_FLOW_TIMEOUTS": f"{FLOW}=2"}


def node_of(slot: int) -> int:
    """Which of the cluster's nodes serves ``slot`` (they split the slots evenly, in order)."""
    return min(slot // (16384 // NODES), NODES - 1)


def answer(port: int, route: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


async def test_reconciler_run_on_a_cluster_reconciles_conversations_and_sessions(
    cluster: list[int], client: RedisCluster, pg: Any, settings: Settings, tmp_path: Path,
) -> None:
    settings = replace(settings, stream_partitions=PARTITIONS)
    keys = settings.keys
    await create_conversations_table(pg, settings.table)
    await capture_install.install(pg, settings)
    phones = [f"52155{n:05d}" for n in range(12)]
    assert {keys.partition_of(f"{p}:{CHANNEL}") for p in phones} == set(range(PARTITIONS))
    metrics_port = free_port()
    run = Run(run_env(settings, cluster[1], metrics_port, tmp_path), tmp_path / "run.log")
    try:
        run.wait_ready()

        async def ready() -> bool:
            return answer(metrics_port, "/readyz") == 200
        await eventually(ready, timeout=120, message="readiness on the cluster")

        for phone in phones:  # waiting on the bot, its flow only in the file
            await pg.execute(f"INSERT INTO {settings.table} (phone, phone_number_id, status, "
                             "assigned_to, bot_started_at) VALUES ($1, $2, 'active', 'bot', now())",
                             phone, CHANNEL)
            (settings.sessions_dir / f"whatsapp_{phone}_{CHANNEL}.json").write_text(
                json.dumps({"flowId": FLOW, "step": 3}))

        async def timed_out_and_moved() -> bool:
            closed = await pg.fetchval(f"SELECT count(*) FROM {settings.table} WHERE status = "
                                       "'closed' AND bot_flow_id IS NULL AND assigned_to IS NULL")
            return bool(closed == len(phones) and not any(settings.sessions_dir.iterdir()))
        await eventually(timed_out_and_moved, timeout=180,
                         message=f"{len(phones)} chats timed out and their files quarantined")
        moved = [p for p in settings.quarantine_dir.iterdir() if not p.name.endswith("record.json")]
        assert len(moved) == len(phones)

        # A session started after the reconciler's listing, so only the keyspace
        # notifications of the node holding its lease tell of it (the rescan is 10 min off),
        # and that node is not the one REDIS_URL names.
        session = next(name for name in (f"gw-crashed-{n}" for n in range(100))
                       if node_of(keyslot(keys.lease(name))) != 1)
        gateway = GatewaySessions(client, keys, ttl_s=1)  # type: ignore[arg-type]
        await gateway.start(session)
        await client.rpush(keys.queue(session), b"m1", b"m2")  # then the gateway dies

        async def parked() -> bool:
            return await client.llen(keys.parked(session)) == 2
        await eventually(parked, timeout=60, message="the crashed session's queue parked")
        assert await client.llen(keys.queue(session)) == 0
        back = await gateway.start(session)
        assert back.restored == 2
        assert await client.lrange(keys.queue(session), 0, -1) == [b"m1", b"m2"]
        assert answer(metrics_port, "/healthz") == 200
        assert run.process.poll() is None, run.log.read_text()
        status = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "ops", "--json", "status"],
            env=run_env(settings, cluster[2], free_port(), tmp_path), capture_output=True,
            text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["dead_letters"] == 0 and report["groups"], report
    finally:
        print(run.log.read_text()[-20_000:])  # shown when the test fails
        run.stop()
    log = run.log.read_text()
    assert "Traceback" not in log, log


def test_a_cluster_node_without_the_setting_is_refused_by_name(
    cluster: list[int], settings: Settings, tmp_path: Path,
) -> None:
    env = run_env(settings, cluster[0], free_port(), tmp_path)
    del env["RECONCILER_REDIS_CLUSTER"]
    done = subprocess.run([sys.executable, "-m", "ops", "status"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "is a node of a Redis Cluster: set RECONCILER_REDIS_CLUSTER=true" in done.stderr


def test_a_cluster_user_without_the_slot_map_is_told_which_rule(
    cluster: list[int], settings: Settings, tmp_path: Path,
) -> None:
    """security.md's ACL, on a cluster, without ``+cluster|slots``: redis-py's own message
    (cluster mode not enabled) would send the operator the wrong way."""
    user = f"no-slots-{uuid.uuid4().hex[:8]}"
    rules = ["on", ">pw", "resetkeys", "resetchannels", "~*", "-@all", "+@read", "+@write",
             "+@stream", "+@connection", "-@dangerous"]
    for port in cluster:
        with cluster_node(port) as client:
            client.execute_command("ACL", "SETUSER", user, *rules)
    try:
        env = run_env(settings, cluster[0], free_port(), tmp_path)
        env["REDIS_URL"] = f"redis://{user}:pw@127.0.0.1:{cluster[0]}/0"
        done = subprocess.run([sys.executable, "-m", "ops", "status"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode != 0
        assert "may not run CLUSTER SLOTS" in done.stderr and "+cluster|slots" in done.stderr
        assert ":pw@" not in done.stderr  # the URL is shown redacted
    finally:
        for port in cluster:
            with cluster_node(port) as client:
                client.execute_command("ACL", "DELUSER", user)
