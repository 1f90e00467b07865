"""A stream whose last possible entry id is used: reported loudly, and the documented recovery works."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from consumers.actions import Action, Actions, Result, done
from events import codec
from events.keys import KeySpace
from events.loops import Heartbeats
from events.publisher import Publisher
from events.readiness import Readiness
from events.settings import Settings
from events.streamids import EXHAUSTED, LAST_POSSIBLE_ID, StreamExhausted
from events.timer_wheel import TimerWheel
from ops.health import HealthServer, add_standard_checks
from tests.events.test_postgres_relay import changes, insert_rows, outbox_count, relay
from tests.ops.test_health import get
from tests.support import eventually, request


@pytest.fixture
async def served(redis: Redis, keys: KeySpace) -> AsyncIterator[str]:
    readiness = Readiness()
    add_standard_checks(readiness, redis=redis, keys=keys, database_url=None, groups=dict)
    server = HealthServer("127.0.0.1:0", heartbeats=Heartbeats(), readiness=readiness)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        await server.close()
        EXHAUSTED.clear()


@pytest.fixture(autouse=True)
def forget_exhausted() -> Iterator[None]:
    """The registry is process-wide: a stream left in it would fail /healthz in later tests."""
    yield
    EXHAUSTED.clear()


@pytest.fixture(autouse=True)
async def redis_lowers_last_ids(redis: Redis) -> None:
    """The recovery lowers a stream's last id with XSETID below a deleted entry: Redis
    allows it, Valkey (the embedded server when no TEST_REDIS_URL is given) refuses."""
    info = await redis.info("server")
    if "valkey_version" in info or info.get("server_name") == "valkey":
        pytest.skip("Valkey refuses XSETID below a deleted entry id; the documented "
                    "recovery (docs/security.md) is for Redis: set TEST_REDIS_URL to a Redis")


def gauge(stream: str) -> float | None:
    return REGISTRY.get_sample_value("reconciler_stream_ids_exhausted", {"stream": stream})


async def test_an_exhausted_stream_fails_publishing_health_and_readiness_until_recovered(
    redis: Redis, keys: KeySpace, served: str, caplog: pytest.LogCaptureFixture
) -> None:
    stream, publisher = keys.conversations_stream, Publisher(redis, keys)
    first = await publisher.publish(request("k"))
    await redis.xgroup_create(stream, "conversations", id="0")
    await redis.xadd(stream, {"junk": "1"}, id=LAST_POSSIBLE_ID)
    await redis.xreadgroup("conversations", "c1", {stream: ">"})
    caplog.set_level(logging.CRITICAL, logger="events.streamids")
    for _ in range(2):
        with pytest.raises(StreamExhausted, match="conversations used the last possible entry id"):
            await publisher.publish(request("k"))
    assert len([r for r in caplog.records if r.levelno == logging.CRITICAL]) == 1
    assert gauge("conversations") == 1
    status, _, body = await get(served, "/healthz")
    assert status == 503 and json.loads(body)["exhausted_streams"]["streams"] == ["conversations"]
    status, _, body = await get(served, "/readyz")
    assert status == 503 and "ran out of entry ids" in json.loads(body)["checks"]["stream_ids"]["detail"]

    # The recovery of docs/security.md, step by step.
    await redis.xdel(stream, LAST_POSSIBLE_ID)
    last = (await redis.xrevrange(stream, count=1))[0][0]
    assert last.decode() == first
    await redis.execute_command("XSETID", stream, last)
    for group in await redis.xinfo_groups(stream):
        if group["last-delivered-id"].decode() == LAST_POSSIBLE_ID:
            await redis.xgroup_setid(stream, group["name"], last)
            await redis.xack(stream, group["name"], LAST_POSSIBLE_ID)

    assert (await get(served, "/readyz"))[0] == 200
    assert (await get(served, "/healthz"))[0] == 200 and gauge("conversations") == 0
    new_id = await publisher.publish(request("k"))
    delivered = await redis.xreadgroup("conversations", "c1", {stream: ">"})
    assert [e[0].decode() for e in delivered[0][1]] == [new_id]


async def test_a_deadline_due_on_an_exhausted_stream_is_kept_until_it_can_be_appended(
    redis: Redis, keys: KeySpace
) -> None:
    wheel = TimerWheel(redis, keys)
    await wheel.schedule("bot:k", time.time() - 1, request("k"))
    await redis.xadd(keys.conversations_stream, {"junk": "1"}, id=LAST_POSSIBLE_ID)
    try:
        with pytest.raises(StreamExhausted, match="conversations"):
            await wheel.fire_due()
        assert await wheel.count() == 1
        await redis.xdel(keys.conversations_stream, LAST_POSSIBLE_ID)
        await redis.execute_command("XSETID", keys.conversations_stream, "1-1")
        assert (await wheel.fire_due()).fired == 1 and await wheel.count() == 0
    finally:
        EXHAUSTED.clear()


async def exhaust(redis: Redis, stream: str) -> None:
    await redis.xadd(stream, codec.encode(request("seed")))  # the last real entry
    await redis.xadd(stream, {"junk": "1"}, id=LAST_POSSIBLE_ID)


async def recover(redis: Redis, stream: str) -> None:
    """docs/security.md, for a stream no group has read the bad entry of."""
    await redis.xdel(stream, LAST_POSSIBLE_ID)
    await redis.execute_command("XSETID", stream, (await redis.xrevrange(stream, count=1))[0][0])


async def test_an_action_on_an_exhausted_audit_stream_raises_stream_exhausted(
    redis: Redis, keys: KeySpace
) -> None:
    """Both action scripts append to the audit stream: out of ids, the claim acts on nothing
    and the outcome leaves its intent open for the next handling to settle."""
    actions = Actions(redis=redis, publisher=Publisher(redis, keys), keys=keys)
    clear = Action(verb="clear_bot_fields", key="5217:94", target="crm_conversations")
    ran: list[str] = []

    async def act(action_id: str) -> Result:
        ran.append(action_id)
        return done()

    await exhaust(redis, keys.audit_stream)
    with pytest.raises(StreamExhausted, match="audit used the last possible entry id"):
        await actions.run(clear, act)
    assert ran == [] and await redis.hlen(keys.open_actions(clear.key)) == 0
    await recover(redis, keys.audit_stream)

    async def act_then_exhaust(action_id: str) -> Result:
        await exhaust(redis, keys.audit_stream)
        return await act(action_id)

    with pytest.raises(StreamExhausted, match="audit"):
        await actions.run(clear, act_then_exhaust)
    assert ran == [clear.id]
    assert [i.action_id for i in await actions.open_intents(clear.key)] == [clear.id]


async def test_the_relay_keeps_changes_in_the_outbox_and_says_so_once_until_recovered(
    pg: Any, redis: Redis, settings: Settings, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both lanes out of ids while the relay runs: the failure is one ERROR line, then a
    short line per restart (no traceback loop); nothing leaves the outbox until the
    recovery, and then every change is published."""
    keys = settings.keys
    caplog.set_level(logging.WARNING, logger="events.loops")
    async with relay(settings, redis):
        for lane in keys.lanes("conversations"):
            await exhaust(redis, lane)
        await insert_rows(pg, table, 5)

        async def failed_three_times() -> bool:
            return len([r for r in caplog.records if r.name == "events.loops"]) >= 3

        await eventually(failed_three_times, timeout=90, message="three restarts of the relay")
        assert await outbox_count(pg, table) == 5
        said = [r for r in caplog.records if r.name == "events.loops"]
        assert [r.levelno for r in said[:3]] == [logging.ERROR, logging.WARNING, logging.WARNING]
        assert all(r.exc_info is None for r in said), "a traceback per restart"
        assert "used the last possible entry id" in said[0].getMessage()
        assert "still failing (3 times in a row)" in said[2].getMessage()
        for lane in keys.lanes("conversations"):
            await recover(redis, lane)

        async def published() -> bool:
            return len(await changes(redis, settings)) == 5 and await outbox_count(pg, table) == 0

        await eventually(published, timeout=90, message="the five changes published after recovery")
