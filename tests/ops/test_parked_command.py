"""``reconciler parked list|restore`` as an operator runs it: a child process against real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from redis.asyncio import Redis

from consumers.stores.parked_queues import ParkedQueues
from events.contract import ActionRecorded
from events.keys import KeySpace
from tests.support import one_line_per_action, recorded


async def reconciler(redis_url: str, keys: KeySpace, *args: str) -> tuple[int, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "RECONCILER_KEY_PREFIX": keys.prefix,
           "RECONCILER_QUEUE_PATTERN": keys.queue_pattern}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return int(process.returncode or 0), out.decode()


async def audit_entries(redis: Redis, keys: KeySpace) -> list[ActionRecorded]:
    return one_line_per_action(await recorded(redis, keys))


async def test_list_then_restore_with_a_dry_run_first(
    redis: Redis, redis_url: str, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    queue = keys.queue("940740243")
    await redis.rpush(queue, b"m1", b"m2")
    await store.park("940740243", now=time.time(), cause="e")
    await redis.rpush(queue, b"newer")

    code, out = await reconciler(redis_url, keys, "--json", "parked", "list")
    assert code == 0, out
    (row,) = json.loads(out)
    assert (row["session"], row["parked"], row["queue_length"], row["live"]) == (
        "940740243", 2, 1, False)

    code, out = await reconciler(redis_url, keys, "parked", "restore", "940740243", "--dry-run")
    assert code == 0 and "would restore 2" in out, out
    assert await store.parked("940740243") == [b"m1", b"m2"]

    code, out = await reconciler(redis_url, keys, "parked", "restore", "940740243")
    assert code == 0 and "restored 2" in out, out
    assert await redis.lrange(queue, 0, -1) == [b"m1", b"m2", b"newer"]

    code, out = await reconciler(redis_url, keys, "parked", "list")
    assert code == 0 and "no parked messages" in out, out
    outcomes = [(a.action, a.outcome, a.source, a.key) for a in await audit_entries(redis, keys)]
    assert outcomes == [("restore_parked", "planned", "operator", "940740243"),
                        ("restore_parked", "done", "operator", "940740243")]


async def test_restore_refuses_a_bad_session_name(redis_url: str, keys: KeySpace) -> None:
    code, out = await reconciler(redis_url, keys, "parked", "restore", "../etc")
    assert code == 1 and "invalid session name" in out, out
