"""The gateway client: leases and lifecycle events, against real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from consumers.stores.parked_queues import ParkedQueues
from events import codec
from events.action_log import OUTCOME_LUA
from events.contract import Event, SessionStarted, SessionStopped
from events.gateway import GatewaySessions
from events.keys import KeySpace
from events.parked_scripts import START
from tests.support import eventually, one_line_per_action, recorded


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


async def test_heartbeat_without_restart_reports_a_missing_lease_and_writes_nothing(
    redis: Any, keys: KeySpace
) -> None:
    gateway = GatewaySessions(redis, keys, ttl_s=5)
    assert await gateway.heartbeat("nobody", restart=False) is False
    assert await redis.exists(keys.lease("nobody")) == 0
    assert await redis.xlen(keys.sessions_stream) == 0


async def park(redis: Any, keys: KeySpace, session: str, messages: list[str], *,
               at: float | None = None) -> None:
    """Messages parked as the sessions group parks them (its own script)."""
    await redis.rpush(keys.queue(session), *messages)
    store = ParkedQueues(redis, keys)
    assert await store.park(session, now=time.time() if at is None else at,
                            cause="test") == len(messages)


async def test_a_session_back_while_no_reconciler_runs_drains_parked_first_then_newer(
    redis: Any, keys: KeySpace
) -> None:
    parked = [f"parked-{n}" for n in range(30)]
    await park(redis, keys, "940740243", parked)
    newer = [f"newer-{n}" for n in range(10)]
    await redis.rpush(keys.queue("940740243"), *newer)  # pushed while the session was away
    gateway = GatewaySessions(redis, keys, gateway="gw-1", ttl_s=30, settled_ttl_s=3600)
    later = [f"later-{n}" for n in range(20)]
    drained: list[bytes] = []

    async def produce() -> None:
        for message in later:
            await redis.rpush(keys.queue("940740243"), message)

    async def drain_from_the_instant_it_is_back() -> None:
        started = await gateway.start("940740243")
        assert started.restored == len(parked)
        producer = asyncio.create_task(produce())
        while len(drained) < len(parked) + len(newer) + len(later):
            popped = await redis.blpop([keys.queue("940740243")], timeout=1)
            if popped is not None:
                drained.append(popped[1])
        await producer

    await asyncio.wait_for(drain_from_the_instant_it_is_back(), timeout=60)

    assert drained == [m.encode() for m in [*parked, *newer, *later]], "order kept, none doubled"
    assert await redis.exists(keys.parked("940740243"), keys.parked_meta("940740243"),
                              keys.queue("940740243")) == 0
    # The sessions group's own restore, run later, is a backup: it finds nothing to do.
    assert await ParkedQueues(redis, keys).restore("940740243") == 0
    assert 3000 < await redis.ttl(keys.settled_actions("940740243")) <= 3600
    (audit,) = one_line_per_action(await recorded(redis, keys))  # intent, then done
    (started,) = await session_events(redis, keys)
    assert (audit.action, audit.outcome, audit.source, audit.cause_id, audit.target,
            audit.after) == ("restore_parked", "done", "gateway", started.id,
                             keys.queue("940740243"), {"parked": 0, "restored": 30})
    assert await redis.hlen(keys.open_actions("940740243")) == 0, "the intent was closed"


async def test_the_handshake_leaves_batches_past_retention_to_the_reconciler(
    redis: Any, keys: KeySpace
) -> None:
    await park(redis, keys, "940740243", ["old-1", "old-2"], at=time.time() - 3600)
    await park(redis, keys, "940740243", ["recent-1"])
    gateway = GatewaySessions(redis, keys, ttl_s=30, parked_retention_s=600)

    assert (await gateway.start("940740243")).restored == 1

    assert await redis.lrange(keys.queue("940740243"), 0, -1) == [b"recent-1"]
    store = ParkedQueues(redis, keys)
    assert await store.parked("940740243") == [b"old-1", b"old-2"]
    assert [b.count for b in (await store.observe("940740243")).batches] == [2]


async def test_parking_never_takes_the_queue_of_a_session_that_holds_its_lease(
    redis: Any, keys: KeySpace
) -> None:
    await GatewaySessions(redis, keys, ttl_s=30).start("940740243")
    await redis.rpush(keys.queue("940740243"), "m1")
    store = ParkedQueues(redis, keys)
    assert await store.park("940740243", now=time.time(), cause="late event") == 0
    assert await store.take_queue("940740243") == []
    assert await redis.lrange(keys.queue("940740243"), 0, -1) == [b"m1"]


async def test_keep_alive_keeps_the_lease_past_its_ttl_and_stops_at_the_end(
    redis: Any, keys: KeySpace
) -> None:
    gateway = GatewaySessions(redis, keys, ttl_s=3)  # heartbeats have room on a busy machine
    async with gateway.keep_alive("default"):
        await asyncio.sleep(7.0)  # more than twice the TTL: the time itself is what is tested
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


def test_the_wire_protocol_page_prints_the_scripts_the_client_runs() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()
    assert f"```lua\n{START.strip(chr(10))}\n```" in page
    assert f"```lua\n{OUTCOME_LUA.strip(chr(10))}\n```" in page


async def test_a_start_with_nothing_parked_writes_no_audit(redis: Any, keys: KeySpace) -> None:
    assert (await GatewaySessions(redis, keys, ttl_s=30).start("940740243")).restored == 0
    assert await redis.exists(keys.lease("940740243")) == 1
    assert await redis.xlen(keys.audit_stream) == 0
