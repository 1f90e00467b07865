"""The gateway client: leases and lifecycle events, against real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from events import codec
from events.contract import Event, SessionStarted, SessionStopped
from events.gateway import GatewaySessions
from events.keys import KeySpace
from tests.support import eventually


async def session_events(redis: Any, keys: KeySpace) -> list[Event]:
    return [codec.decode(fields) for _, fields in await redis.xrange(keys.sessions_stream)]


async def test_start_heartbeat_stop_publish_events_and_hold_the_lease(redis: Any, keys: KeySpace) -> None:
    gateway = GatewaySessions(redis, keys, gateway="gw-1", ttl_s=20)

    await gateway.start("940740243")
    lease = await redis.get(keys.lease("940740243"))
    assert json.loads(lease)["gateway"] == "gw-1"
    assert 0 < await redis.ttl(keys.lease("940740243")) <= 20

    assert await gateway.heartbeat("940740243") is True
    await gateway.stop("940740243")
    assert await redis.exists(keys.lease("940740243")) == 0

    events = await session_events(redis, keys)
    assert [type(e) for e in events] == [SessionStarted, SessionStopped]
    started, stopped = events
    assert isinstance(started, SessionStarted)
    assert (started.key, started.gateway, started.lease_ttl_s) == ("940740243", "gw-1", 20)
    assert (stopped.key, stopped.source) == ("940740243", "gateway")


async def test_heartbeat_after_the_lease_expired_starts_the_session_again(
    redis: Any, keys: KeySpace
) -> None:
    gateway = GatewaySessions(redis, keys, ttl_s=1)
    await gateway.start("default")
    await redis.delete(keys.lease("default"))  # as if the TTL had run out

    assert await gateway.heartbeat("default") is False

    assert await redis.exists(keys.lease("default")) == 1
    events = await session_events(redis, keys)
    assert [type(e) for e in events] == [SessionStarted, SessionStarted]


async def test_keep_alive_keeps_the_lease_past_its_ttl_and_stops_at_the_end(
    redis: Any, keys: KeySpace
) -> None:
    gateway = GatewaySessions(redis, keys, ttl_s=1)
    async with gateway.keep_alive("default"):
        await asyncio.sleep(2.5)  # more than twice the TTL
        assert await redis.exists(keys.lease("default")) == 1
    assert await redis.exists(keys.lease("default")) == 0

    async def stopped() -> bool:
        return any(isinstance(e, SessionStopped) for e in await session_events(redis, keys))

    await eventually(stopped, message="session.stopped")
    starts = [e for e in await session_events(redis, keys) if isinstance(e, SessionStarted)]
    assert len(starts) == 1, "the heartbeats refreshed the lease; it never lapsed"


async def test_an_invalid_session_name_is_refused_before_touching_redis(
    redis: Any, keys: KeySpace
) -> None:
    gateway = GatewaySessions(redis, keys)
    with pytest.raises(ValueError, match="invalid session name"):
        await gateway.start("../etc")
    assert await redis.xlen(keys.sessions_stream) == 0
