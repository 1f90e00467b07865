"""The Node.js gateway example speaks the protocol the Python side decodes.

Runs ``examples/node/gateway.js`` with ``node`` against real Redis; CI installs
its npm packages (``.ci/extra-setup``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from events import codec
from events.contract import SessionStarted, SessionStopped
from events.ids import id_time
from events.keys import KeySpace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (CI has it)")


async def gateway(redis_url: str, key_prefix: str, *args: str) -> str:
    assert (EXAMPLE / "node_modules" / "redis").is_dir(), (
        f"run `npm install` in {EXAMPLE} first (CI does it in .ci/extra-setup)")
    env = {**os.environ, "REDIS_URL": redis_url, "RECONCILER_KEY_PREFIX": key_prefix,
           "GATEWAY_ID": "node-gw", "RECONCILER_SESSION_TTL_S": "40"}
    result = await asyncio.to_thread(
        subprocess.run, [str(NODE), "gateway.js", *args], cwd=EXAMPLE, env=env,
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_the_node_example_publishes_events_the_python_codec_decodes(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    keys = KeySpace(prefix=key_prefix)

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
