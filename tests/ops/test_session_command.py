"""``reconciler session start|heartbeat|stop``: the lease and events, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from events import codec
from events.contract import SessionStarted, SessionStopped
from events.keys import KeySpace


def reconciler(redis_url: str, key_prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": redis_url, "RECONCILER_KEY_PREFIX": key_prefix,
           "RECONCILER_QUEUE_PATTERN": f"{key_prefix}queue:{{session}}"}
    env.pop("DATABASE_URL", None)  # the command needs no PostgreSQL
    return subprocess.run([sys.executable, "-m", "ops", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


async def test_session_commands_hold_the_lease_and_publish_events(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    keys = KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}")

    await redis.rpush(keys.parked("940740243"), "parked-1", "parked-2")  # parked while away
    await redis.rpush(keys.queue("940740243"), "newer")
    started = reconciler(redis_url, key_prefix, "session", "start", "940740243",
                         "--gateway", "gw-7", "--ttl", "45")
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout and "2 parked messages back" in started.stdout
    assert await redis.lrange(keys.queue("940740243"), 0, -1) == [b"parked-1", b"parked-2", b"newer"]
    assert 0 < await redis.ttl(keys.lease("940740243")) <= 45

    beat = reconciler(redis_url, key_prefix, "session", "heartbeat", "940740243")
    assert beat.returncode == 0, beat.stderr
    assert "refreshed" in beat.stdout

    stopped = reconciler(redis_url, key_prefix, "session", "stop", "940740243")
    assert stopped.returncode == 0, stopped.stderr
    assert await redis.exists(keys.lease("940740243")) == 0

    events = [codec.decode(f) for _, f in await redis.xrange(keys.sessions_stream)]
    assert [type(e) for e in events] == [SessionStarted, SessionStopped]
    assert isinstance(events[0], SessionStarted)
    assert (events[0].gateway, events[0].lease_ttl_s) == ("gw-7", 45)


def test_a_bad_session_name_is_one_clear_error(redis_url: str, key_prefix: str) -> None:
    result = reconciler(redis_url, key_prefix, "session", "start", "../../etc")
    assert result.returncode == 1
    assert "invalid session name" in result.stderr
    assert "Traceback" not in result.stderr


async def test_heartbeat_of_a_session_without_a_lease_is_an_error_and_starts_nothing(
    redis: Any, redis_url: str, key_prefix: str
) -> None:
    keys = KeySpace(prefix=key_prefix, queue_pattern=f"{key_prefix}queue:{{session}}")
    result = reconciler(redis_url, key_prefix, "session", "heartbeat", "nobody")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "session nobody holds no lease" in result.stderr
    assert "reconciler session start nobody" in result.stderr
    assert await redis.exists(keys.lease("nobody")) == 0
    assert await redis.exists(keys.sessions_stream) == 0
