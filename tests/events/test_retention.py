"""Retention against real Redis: a cap or an age never trims what a group has not read and acked."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from events.keys import KeySpace
from events.publisher import Publisher, Retention
from events.retention import GAP_LUA, TRIM_LUA, trim_args
from events.timer_wheel import TimerWheel
from tests.support import request

GROUP = "conversations"


async def publish(publisher: Publisher, n: int) -> list[bytes]:
    ids = await publisher.publish_many([request(f"55{i}:chan") for i in range(n)])
    return [i.encode() for i in ids]


async def stream_ids(redis: Redis, stream: str) -> set[bytes]:
    return {entry_id for entry_id, _ in await redis.xrange(stream)}


async def test_a_cap_never_trims_unread_or_unacked_entries(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    publisher = Publisher(redis, keys, Retention(max_len=500))
    ids = await publish(publisher, 3000)
    assert await redis.xlen(stream) == 3000  # six times the cap, nothing read yet: all kept

    [(_, delivered)] = await redis.xreadgroup(GROUP, "c1", {stream: ">"}, count=2000)
    await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in delivered[:1000]])
    more = await publish(publisher, 10)
    kept = await stream_ids(redis, stream)
    assert set(ids[1000:]) | set(more) <= kept  # pending (1000..1999) and unread (2000..) kept
    assert len(kept) < 3010  # what was acked is trimmed, in whole nodes

    await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in delivered[1000:]])
    [(_, rest)] = await redis.xreadgroup(GROUP, "c1", {stream: ">"}, count=5000)
    await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in rest])
    await publish(publisher, 10)
    assert 500 <= await redis.xlen(stream) <= 700  # back near the cap once everything is acked


async def test_the_slowest_group_decides(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    for group in ("fast", "slow"):
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    publisher = Publisher(redis, keys, Retention(max_len=100))
    ids = await publish(publisher, 1000)
    [(_, delivered)] = await redis.xreadgroup("fast", "c", {stream: ">"}, count=1000)
    await redis.xack(stream, "fast", *[entry_id for entry_id, _ in delivered])
    await redis.xreadgroup("slow", "c", {stream: ">"}, count=300)  # pending from 0, unread from 300
    await publish(publisher, 10)
    assert set(ids) <= await stream_ids(redis, stream)


async def test_a_stream_no_group_reads_is_capped_as_before(redis: Redis, keys: KeySpace) -> None:
    publisher = Publisher(redis, keys, Retention(max_len=500))
    await publish(publisher, 3000)
    assert 500 <= await redis.xlen(keys.conversations_stream) <= 700


async def test_an_age_limit_keeps_what_a_group_has_not_read(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await publish(Publisher(redis, keys, Retention(max_len=0)), 1000)
    trim = redis.register_script(TRIM_LUA)
    future_ms = int(time.time() * 1000) + 3_600_000  # "older than an hour from now": everything
    assert await trim(keys=[stream], args=trim_args(max_len=0, cutoff_ms=future_ms)) == 0
    [(_, delivered)] = await redis.xreadgroup(GROUP, "c", {stream: ">"}, count=600)
    await redis.xack(stream, GROUP, *[entry_id for entry_id, _ in delivered])
    await trim(keys=[stream], args=trim_args(max_len=0, cutoff_ms=future_ms))
    left = await stream_ids(redis, stream)
    assert 400 <= len(left) < 1000 and delivered[-1][0] in left


async def test_fired_deadlines_do_not_trim_unread_entries(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    wheel = TimerWheel(redis, keys, max_len=10)
    for n in range(300):
        await wheel.schedule(f"t{n}", time.time() - 1, request(f"55{n}:chan"))
    fired = await wheel.fire_due()
    assert fired.fired == 300
    assert await redis.xlen(stream) == 300


async def test_a_gap_is_reported_once(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
    gap = redis.register_script(GAP_LUA)
    check = {"keys": [stream, keys.stream_gaps], "args": [GROUP]}
    publisher = Publisher(redis, keys, Retention(max_len=0))
    await publish(publisher, 10)
    assert not await gap(**check)  # the group has not read anything yet: nothing to compare
    await redis.xreadgroup(GROUP, "c", {stream: ">"}, count=5)
    assert not await gap(**check)
    await publish(publisher, 200)
    await redis.xtrim(stream, maxlen=50)  # someone else trims entries the group never read
    first = await gap(**check)
    assert first == (await redis.xrange(stream, count=1))[0][0]
    assert not await gap(**check)  # reported once
    await redis.xtrim(stream, maxlen=0)
    assert await gap(**check)  # an emptied stream is a new gap
