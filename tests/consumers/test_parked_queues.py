"""The parked-queue scripts against a real Redis: order, atomicity, expiry, undo."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from consumers.stores.parked_queues import ParkedBatch, ParkedQueues, describe_messages
from events.keys import KeySpace

SESSION = "940740243"


async def test_park_then_restore_keeps_order_ahead_of_newer_messages(
    redis: Redis, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    queue = keys.queue(SESSION)
    await redis.rpush(queue, *[f"m{n}" for n in range(3)])
    assert await store.park(SESSION, now=time.time(), cause="e1") == 3
    await redis.rpush(queue, "m3", "m4")
    assert await store.park(SESSION, now=time.time(), cause="e2") == 2
    assert await redis.exists(queue) == 0
    assert await store.parked(SESSION) == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    state = await store.observe(SESSION)
    assert [b.count for b in state.batches] == [3, 2]
    assert [b.cause for b in state.batches] == ["e1", "e2"]

    await redis.rpush(queue, "newer")
    assert await store.restore(SESSION) == 5
    assert await redis.lrange(queue, 0, -1) == [b"m0", b"m1", b"m2", b"m3", b"m4", b"newer"]
    assert await redis.exists(keys.parked(SESSION), keys.parked_meta(SESSION)) == 0


async def test_large_queues_move_in_order(redis: Redis, keys: KeySpace) -> None:
    store = ParkedQueues(redis, keys)
    messages = [f"{n:05d}".encode() for n in range(2500)]
    await redis.rpush(keys.queue(SESSION), *messages)
    assert await store.park(SESSION, now=time.time(), cause="e") == 2500
    await redis.rpush(keys.queue(SESSION), b"late")
    assert await store.restore(SESSION) == 2500
    assert await redis.lrange(keys.queue(SESSION), 0, -1) == [*messages, b"late"]


async def test_parking_an_empty_queue_changes_nothing(redis: Redis, keys: KeySpace) -> None:
    store = ParkedQueues(redis, keys)
    assert await store.park(SESSION, now=time.time(), cause="e") == 0
    assert await store.restore(SESSION) == 0
    assert await redis.exists(keys.parked(SESSION), keys.parked_meta(SESSION),
                              keys.queue(SESSION)) == 0


async def test_take_expired_removes_only_old_batches_and_can_be_undone(
    redis: Redis, keys: KeySpace
) -> None:
    store = ParkedQueues(redis, keys)
    queue = keys.queue(SESSION)
    now = time.time()
    await redis.rpush(queue, "old1", "old2")
    await store.park(SESSION, now=now - 100, cause="e1")
    await redis.rpush(queue, "young")
    await store.park(SESSION, now=now, cause="e2")

    batches, items = await store.take_expired(SESSION, cutoff=now - 50)
    assert items == [b"old1", b"old2"]
    assert [b.count for b in batches] == [2]
    assert await store.parked(SESSION) == [b"young"]
    assert [b.count for b in (await store.observe(SESSION)).batches] == [1]

    await store.put_back_parked(SESSION, batches, items)
    assert await store.parked(SESSION) == [b"old1", b"old2", b"young"]
    assert [b.count for b in (await store.observe(SESSION)).batches] == [2, 1]

    batches, items = await store.take_expired(SESSION, cutoff=now + 1)
    assert items == [b"old1", b"old2", b"young"]
    assert await redis.exists(keys.parked(SESSION), keys.parked_meta(SESSION)) == 0


async def test_take_queue_and_put_back(redis: Redis, keys: KeySpace) -> None:
    store = ParkedQueues(redis, keys)
    queue = keys.queue(SESSION)
    await redis.rpush(queue, "a", "b")
    items = await store.take_queue(SESSION)
    assert items == [b"a", b"b"] and await redis.exists(queue) == 0
    await redis.rpush(queue, "c")
    await store.put_back_queue(SESSION, items)
    assert await redis.lrange(queue, 0, -1) == [b"a", b"b", b"c"]


async def test_list_parked_names_each_session(redis: Redis, keys: KeySpace) -> None:
    store = ParkedQueues(redis, keys)
    for session, count in (("alpha", 2), ("beta.1", 1)):
        await redis.rpush(keys.queue(session), *[b"x"] * count)
        await store.park(session, now=time.time(), cause="e")
    await redis.set(keys.lease("beta.1"), "gw", ex=30)
    listed = {s.session: (s.parked, s.live, s.queue) for s in await store.list_parked()}
    assert listed == {"alpha": (2, False, keys.queue("alpha")),
                      "beta.1": (1, True, keys.queue("beta.1"))}


def test_keys_of_one_session_share_a_hash_tag(keys: KeySpace) -> None:
    tag = "{" + keys.queue(SESSION) + "}"
    assert tag in keys.parked(SESSION) and tag in keys.parked_meta(SESSION)


def test_binary_messages_are_described_as_base64() -> None:
    assert describe_messages([b"hola", b"\xff\x00"]) == ["hola", {"base64": "/wA="}]
    assert ParkedBatch(at=1.0, count=1).cause == ""


async def test_listing_reads_many_parked_sessions_page_by_page(redis: Redis, keys: KeySpace) -> None:
    store = ParkedQueues(redis, keys)
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for n in range(2500):
        pipe.rpush(keys.parked(f"s{n}"), "m")
    await pipe.execute()
    await redis.rpush(keys.queue("oldest"), "a", "b")
    await store.park("oldest", now=now - 60, cause="e")
    await redis.set(keys.lease("oldest"), "gw", ex=30)

    listed = await store.list_parked()

    assert len(listed) == 2501
    assert (listed[-1].session, listed[-1].parked, listed[-1].live) == ("oldest", 2, True)
    assert {s.session for s in listed[:-1]} == {f"s{n}" for n in range(2500)}
