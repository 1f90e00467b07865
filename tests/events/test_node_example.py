"""The Node.js gateway example speaks the protocol the Python side decodes.

Runs ``examples/node/gateway.js`` (ioredis) with ``node`` against real Redis;
the ``node_example`` fixture installs its npm packages when they are missing,
and skips with the reason when it cannot.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from consumers.stores.parked_queues import ParkedQueues
from events import codec
from events.action_log import OUTCOME_LUA
from events.contract import SessionStarted, SessionStopped
from events.ids import id_time
from events.keys import KeySpace
from events.parked_scripts import START
from tests.support import eventually, one_line_per_action, recorded

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")

pytestmark = [pytest.mark.skipif(NODE is None, reason="node is not installed"),
              pytest.mark.usefixtures("node_example")]


def node_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "RECONCILER_KEY_PREFIX": key_prefix,
            "RECONCILER_QUEUE_PATTERN": f"{key_prefix}queue:{{session}}",
            "GATEWAY_ID": "node-gw", "RECONCILER_SESSION_TTL_S": "40"}


async def gateway(redis_url: str, key_prefix: str, *args: str, partitions: int = 1) -> str:
    assert (EXAMPLE / "node_modules" / "ioredis").is_dir(), (
        f"no npm packages in {EXAMPLE}")
    result = await asyncio.to_thread(
        subprocess.run, [str(NODE), "gateway.js", *args], cwd=EXAMPLE,
        env={**node_env(redis_url, key_prefix), "RECONCILER_STREAM_PARTITIONS": str(partitions)},
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_the_node_example_publishes_events_the_python_codec_decodes(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    keys = KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}")

    await gateway(redis_url, key_prefix, "start", "940740243")
    assert 0 < await redis.ttl(keys.lease("940740243")) <= 40
    assert "refreshed" in await gateway(redis_url, key_prefix, "heartbeat", "940740243")
    await redis.delete(keys.lease("940740243"))  # as if it had expired
    assert "started again" in await gateway(redis_url, key_prefix, "heartbeat", "940740243")
    await gateway(redis_url, key_prefix, "stop", "940740243")
    assert await redis.exists(keys.lease("940740243")) == 0

    events = [codec.decode(fields) for _, fields in await redis.xrange(keys.sessions_stream)]
    assert [type(e) for e in events] == [SessionStarted, SessionStarted, SessionStopped]
    first = events[0]
    assert isinstance(first, SessionStarted)
    assert (first.key, first.gateway, first.lease_ttl_s, first.source) == (
        "940740243", "node-gw", 40, "gateway")
    assert abs(id_time(first.id) - first.occurred_at.timestamp()) < 1.0, "ids are ULIDs"


async def test_the_node_example_publishes_into_the_partition_python_computes(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    keys = KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}", partitions=5)
    names = ["940740243", "default", "5511999990000", "gw-7", "sales.2"]
    assert len({keys.partition_of(n) for n in names}) > 2
    for name in names:
        await gateway(redis_url, key_prefix, "start", name, partitions=5)
    for stream in keys.live_streams("sessions"):
        got = {codec.decode(fields).key for _, fields in await redis.xrange(stream)}
        assert got == {n for n in names if keys.stream_for("sessions", n) == stream}


async def test_the_node_example_refuses_a_bad_session_name(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "RECONCILER_KEY_PREFIX": key_prefix}
    result = await asyncio.to_thread(
        subprocess.run, [str(NODE), "gateway.js", "start", "../x"], cwd=EXAMPLE, env=env,
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "invalid session name" in result.stderr
    assert await redis.exists(KeySpace(prefix=key_prefix).sessions_stream) == 0


def test_the_node_example_runs_the_same_scripts_as_the_python_client() -> None:
    assert (EXAMPLE / "start.lua").read_text() == START
    assert (EXAMPLE / "outcome.lua").read_text() == OUTCOME_LUA


async def test_a_node_gateway_back_while_no_reconciler_runs_drains_parked_first_then_newer(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    """The Node gateway drains the instant its session is back; a producer keeps pushing."""
    keys = KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}")
    queue = keys.queue("940740243")
    parked = [f"parked-{n}" for n in range(36)]
    await redis.rpush(queue, *parked)
    assert await ParkedQueues(redis, keys).park("940740243", now=time.time(), cause="t") == 36
    newer = [f"newer-{n}" for n in range(29)]
    await redis.rpush(queue, *newer)  # pushed while the session was away
    later = [f"later-{n}" for n in range(50)]
    total = len(parked) + len(newer) + len(later)
    assert (EXAMPLE / "node_modules" / "ioredis").is_dir(), f"run `npm install` in {EXAMPLE}"
    process = await asyncio.create_subprocess_exec(
        str(NODE), "gateway.js", "drain", "940740243", str(total), cwd=EXAMPLE,
        env={**node_env(redis_url, key_prefix), "RECONCILER_SETTLED_TTL_S": "3600"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)

    async def lease_taken() -> bool:
        return bool(await redis.exists(keys.lease("940740243")))

    await eventually(lease_taken, timeout=60, message="the Node gateway took its lease")
    for message in later:  # while the gateway drains
        await redis.rpush(queue, message)
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()

    drained = [json.loads(line) for line in out.decode().splitlines()]
    assert drained == [*parked, *newer, *later], "order kept, nothing lost or doubled"
    assert "36 parked messages back" in err.decode()
    assert await redis.exists(queue, keys.parked("940740243"), keys.parked_meta("940740243")) == 0
    assert await ParkedQueues(redis, keys).restore("940740243") == 0  # the backup finds nothing
    audit = one_line_per_action(await recorded(redis, keys))  # intent, then done, one action id
    started = [codec.decode(f) for _, f in await redis.xrange(keys.sessions_stream)]
    assert [(a.action, a.outcome, a.source, a.cause_id, a.after) for a in audit] == [
        ("restore_parked", "done", "gateway", started[0].id, {"parked": 0, "restored": 36})]
    assert await redis.hlen(keys.open_actions("940740243")) == 0, "the intent was closed"
    assert await redis.hget(keys.settled_actions("940740243"), audit[0].action_id) == b"done"
    assert 3000 < await redis.ttl(keys.settled_actions("940740243")) <= 3600, \
        "remembered for the gateway's RECONCILER_SETTLED_TTL_S"
