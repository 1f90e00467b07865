"""The consumer-group runtime against a real Redis: crashes, poison, lost groups, shutdown."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
from redis.asyncio import Redis

from consumers.deadletter import list_dead_letters, retry_dead_letter
from consumers.errors import PermanentError, TemporaryError
from consumers.keepalive import Keepalive
from consumers.keyqueue import Delivery
from consumers.options import GroupOptions
from consumers.release import RELEASED_CONSUMER
from consumers.runtime import GroupConsumer
from events.keys import KeySpace
from events.publisher import Publisher
from tests.chaos.harness import PrivateRedis, harness_redis
from tests.support import eventually, output_of, request, spawn_python

WORKER = Path(__file__).parent / "worker_process.py"


def options(keys: KeySpace, **overrides: object) -> GroupOptions:
    base: dict[str, object] = dict(
        group="test",
        streams=(keys.conversations_stream, keys.sessions_stream),
        deadletter_stream=keys.deadletter_stream,
        read_count=100,
        concurrency=4,
        claim_min_idle_s=1.0,
        claim_interval_s=0.25,
        retry_backoff_s=0.05,
        retry_backoff_max_s=0.2,
        shutdown_deadline_s=5.0,
    )
    base.update(overrides)
    return GroupOptions(**base)  # type: ignore[arg-type]


async def publish_requests(redis: Redis, keys: KeySpace, count: int, distinct_keys: int) -> set[str]:
    events = [request(f"k{n % distinct_keys}") for n in range(count)]
    await Publisher(redis, keys).publish_many(events)
    return {e.id for e in events}


async def pending_of(redis: Redis, stream: str, group: str) -> dict[str, int]:
    info = await redis.xpending(stream, group)
    return {c["name"].decode(): int(c["pending"]) for c in info["consumers"]}


class Running:
    """A GroupConsumer running in this process, stopped on exit."""

    def __init__(self, consumer: GroupConsumer) -> None:
        self.consumer = consumer
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        done, _ = await asyncio.wait([self.task], timeout=15)
        if not done:
            for task in asyncio.all_tasks():
                print("TASK", task.get_name())
                task.print_stack()
            raise AssertionError("consumer did not stop within 15s")
        self.task.result()


async def test_sigkilled_consumer_is_reclaimed_and_nothing_is_lost(
    redis: Redis, redis_url: str, keys: KeySpace, key_prefix: str
) -> None:
    expected = await publish_requests(redis, keys, 5000, distinct_keys=700)
    first = spawn_python(WORKER, redis_url, key_prefix, "test", "--sleep-ms", "5")
    try:
        await eventually(lambda: _scard_at_least(redis, f"{key_prefix}handled", 300),
                         message="first consumer to handle some events")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        before = await redis.scard(f"{key_prefix}handled")
        assert before < 5000, "the kill must land in the middle of the work"
        second = spawn_python(WORKER, redis_url, key_prefix, "test", "--min-idle", "1")
        try:
            await eventually(lambda: _scard_at_least(redis, f"{key_prefix}handled", 5000),
                             timeout=60, message="all 5000 events handled")
            handled = {m.decode() for m in await redis.smembers(f"{key_prefix}handled")}
            assert handled == expected
            await eventually(lambda: _no_pending(redis, keys.conversations_stream, "test"),
                             message="the dead consumer's entries to be claimed and acked")
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()


async def _scard_at_least(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.scard(key)) >= n


async def _no_pending(redis: Redis, stream: str, group: str) -> bool:
    return int((await redis.xpending(stream, group))["pending"]) == 0


async def test_poison_entry_is_dead_lettered_after_max_deliveries(
    redis: Redis, keys: KeySpace
) -> None:
    handled: list[str] = []
    attempts: dict[str, int] = {}

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if key == "poison":
            attempts[key] = attempts.get(key, 0) + 1
            raise TemporaryError("the store said no")
        if key == "hopeless":
            raise PermanentError("this can never work")
        handled.extend(d.event.id for d in deliveries)

    publisher = Publisher(redis, keys)
    poison, hopeless = request("poison"), request("hopeless")
    healthy = [request(f"ok{n}") for n in range(50)]
    await publisher.publish_many([poison, hopeless, *healthy])
    await redis.xadd(keys.conversations_stream, {"v": "1", "type": "no.such_type", "key": "x",
                                                  "data": "{}"})
    consumer = GroupConsumer(redis, options(keys, max_deliveries=3), handler)
    async with Running(consumer):
        await eventually(lambda: _dead_letters_at_least(redis, keys, 3),
                         message="three dead letters")
        await publisher.publish(request("after"))  # the group moves on
        await eventually(lambda: _contains(handled, 51), message="events after the poison")
    letters = {d.fields.get("key"): d for d in await list_dead_letters(redis, keys.deadletter_stream)}
    assert letters["poison"].reason == "max_deliveries"
    assert letters["poison"].deliveries == 3
    assert "the store said no" in letters["poison"].error
    assert attempts["poison"] == 3
    assert letters["hopeless"].reason == "permanent"
    assert letters["hopeless"].deliveries == 1
    assert "this can never work" in letters["hopeless"].error
    assert letters["x"].reason == "malformed"
    assert "unknown event type" in letters["x"].error
    assert letters["poison"].fields["data"]  # the original fields are kept
    assert int((await redis.xpending(keys.conversations_stream, "test"))["pending"]) == 0
    assert set(handled) >= {e.id for e in healthy}

    # retry from the dead-letter stream puts the entry back on its stream
    new_id = await retry_dead_letter(redis, keys.deadletter_stream, letters["hopeless"].entry_id)
    assert (await redis.xrange(keys.conversations_stream, new_id, new_id))[0][1][b"key"] == b"hopeless"
    assert len(await list_dead_letters(redis, keys.deadletter_stream)) == 2


async def _dead_letters_at_least(redis: Redis, keys: KeySpace, n: int) -> bool:
    return int(await redis.xlen(keys.deadletter_stream)) >= n


async def _contains(items: list[str], n: int) -> bool:
    return len(items) >= n


async def test_lost_stream_and_group_are_recreated(redis: Redis, keys: KeySpace) -> None:
    handled: list[str] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        handled.extend(d.event.id for d in deliveries)

    publisher = Publisher(redis, keys)
    async with Running(GroupConsumer(redis, options(keys), handler)):
        first = await publish_requests(redis, keys, 20, distinct_keys=20)
        await eventually(lambda: _contains(handled, 20), message="first events")
        await redis.delete(keys.conversations_stream, keys.sessions_stream)  # as after a restart
        # The consumer, blocked in XREADGROUP, hits NOGROUP and makes the group again:
        await eventually(lambda: _has_group(redis, keys.conversations_stream, "test"),
                         message="the group made again")
        later = [request(f"later{n}") for n in range(20)]
        await publisher.publish_many(later)
        await eventually(lambda: _contains(handled, 40), message="events after the loss")
    assert set(handled) == first | {e.id for e in later}
    groups = await redis.xinfo_groups(keys.conversations_stream)
    assert [g["name"] for g in groups] == [b"test"]


async def test_graceful_shutdown_under_load_leaves_nothing_pending(
    redis: Redis, redis_url: str, keys: KeySpace, key_prefix: str
) -> None:
    expected = await publish_requests(redis, keys, 3000, distinct_keys=3000)
    worker = spawn_python(WORKER, redis_url, key_prefix, "test", "--sleep-ms", "20",
                          "--deadline", "1")
    try:
        await eventually(lambda: _scard_at_least(redis, f"{key_prefix}handled", 100),
                         message="some events handled")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
        assert "consumer stopped" in output_of(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    pending = await pending_of(redis, keys.conversations_stream, "test")
    consumers = {c["name"].decode() for c in
                 await redis.xinfo_consumers(keys.conversations_stream, "test")}
    assert set(pending) <= {RELEASED_CONSUMER}
    assert consumers <= {RELEASED_CONSUMER}, "the stopped consumer left the group"
    # nothing lost: every event is handled, handed back, or not yet read
    handled = {m.decode() for m in await redis.smembers(f"{key_prefix}handled")}
    released = await redis.xpending_range(keys.conversations_stream, "test", "-", "+", 10_000)
    info = await redis.xinfo_groups(keys.conversations_stream)
    last_delivered = info[0]["last-delivered-id"].decode()
    unread = await redis.xrange(keys.conversations_stream, f"({last_delivered}", "+")
    entries = await redis.xrange(keys.conversations_stream)
    event_of = {entry_id: json.loads(fields[b"data"])["id"] for entry_id, fields in entries}
    assert len(event_of) == 3000
    released_events = {event_of[row["message_id"]] for row in released}
    unread_events = {event_of[entry_id] for entry_id, _ in unread}
    # every event is in exactly one place: an unread entry was never delivered,
    # so it can be neither handled nor released
    assert handled | released_events | unread_events == expected
    assert not unread_events & (handled | released_events)


async def test_two_processes_split_the_work(
    redis: Redis, redis_url: str, keys: KeySpace, key_prefix: str
) -> None:
    workers = [spawn_python(WORKER, redis_url, key_prefix, "test", "--sleep-ms", "2")
               for _ in range(2)]
    try:
        # Both reading the group (a consumer shows in it only once it got an entry):
        # a few events at a time until each has handled one; then the split is counted afresh.
        warm_up: set[str] = set()

        async def both_reading() -> bool:
            warm_up.update(await publish_requests(redis, keys, 10, distinct_keys=10))
            return await redis.hlen(f"{key_prefix}by-consumer") >= 2

        await eventually(both_reading, timeout=120, interval=0.5, message="both workers reading")
        await eventually(lambda: _scard_at_least(redis, f"{key_prefix}handled", len(warm_up)),
                         timeout=120, message="the warm-up events handled")
        await redis.delete(f"{key_prefix}by-consumer")
        expected = await publish_requests(redis, keys, 5000, distinct_keys=1000)
        await eventually(lambda: _scard_at_least(redis, f"{key_prefix}handled",
                                                 5000 + len(warm_up)),
                         timeout=120, message="all 5000 events handled")
        handled = {m.decode() for m in await redis.smembers(f"{key_prefix}handled")}
        assert handled == expected | warm_up
        shares = {k.decode(): int(v) for k, v in
                  (await redis.hgetall(f"{key_prefix}by-consumer")).items()}
        assert len(shares) == 2, shares
        assert all(n > 0 for n in shares.values()), shares
        assert sum(shares.values()) >= 5000
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(20) == 0, output_of(worker)


async def test_events_for_a_busy_key_are_coalesced(redis: Redis, keys: KeySpace) -> None:
    running: set[str] = set()
    overlaps: list[str] = []
    calls: list[int] = []

    async def handler(key: str, deliveries: Sequence[Delivery]) -> None:
        if key in running:
            overlaps.append(key)
        running.add(key)
        calls.append(len(deliveries))
        await asyncio.sleep(0.05)
        running.discard(key)

    await publish_requests(redis, keys, 200, distinct_keys=2)
    async with Running(GroupConsumer(redis, options(keys, concurrency=8), handler)):
        await eventually(lambda: _sum_at_least(calls, 200), message="200 events handled")
    assert not overlaps, "one key was handled twice at once"
    assert len(calls) < 200, "events for a busy key were not coalesced"


async def _has_group(redis: Redis, stream: str, group: str) -> bool:
    try:
        return any(g["name"] == group.encode() for g in await redis.xinfo_groups(stream))
    except Exception:  # the stream does not exist yet
        return False


async def _sum_at_least(values: list[int], n: int) -> bool:
    return sum(values) >= n


@pytest.mark.parametrize("idle_after", [0.5])
async def test_idle_consumers_are_removed_only_without_pending(
    redis: Redis, keys: KeySpace, idle_after: float
) -> None:
    stream = keys.conversations_stream
    await Publisher(redis, keys).publish(request("k"))
    await redis.xgroup_create(stream, "test", id="0", mkstream=True)
    await redis.xgroup_createconsumer(stream, "test", "ghost-empty")
    await redis.xreadgroup("test", "ghost-holding", {stream: ">"}, count=1)

    async def both_idle() -> bool:
        idle = [c["idle"] for c in await redis.xinfo_consumers(stream, "test")]
        return len(idle) == 2 and min(idle) > (idle_after + 0.2) * 1000

    await eventually(both_idle, message="both ghosts idle for longer than idle_after")
    consumer = GroupConsumer(redis, options(keys, consumer_gone_after_s=idle_after,
                                            claim_min_idle_s=60), _noop)
    from consumers.reclaim import Reclaimer

    removed = await Reclaimer(consumer).remove_gone_consumers(stream)
    assert removed == ["ghost-empty"]
    names = {c["name"] for c in await redis.xinfo_consumers(stream, "test")}
    assert b"ghost-holding" in names


async def _noop(key: str, deliveries: Sequence[Delivery]) -> None:
    return None


async def test_a_long_backlog_of_a_live_consumer_is_never_reclaimed_or_dead_lettered(
    redis: Redis, keys: KeySpace
) -> None:
    """One worker, 300 entries of 300 keys at 20 ms each: the last waits ~6 s in the
    buffer, six times ``claim_min_idle_s``, while the consumer's own reclaimer runs every
    0.25 s.  Without the keepalive each waiting entry was claimed again and again and,
    past ``max_deliveries``, dead-lettered although it never failed."""
    handled: list[str] = []

    async def slow(key: str, batch: Sequence[Delivery]) -> None:
        await asyncio.sleep(0.02)  # the handler's own work (a database round trip, say)
        handled.extend(d.event.id for d in batch)

    opts = options(keys, concurrency=1, max_deliveries=2)
    ids = await publish_requests(redis, keys, 300, 300)
    async with Running(GroupConsumer(redis, opts, slow)):
        await eventually(lambda: _all_of(handled, ids), timeout=120, message="all 300 handled")
    assert await redis.xlen(keys.deadletter_stream) == 0
    assert sorted(handled) == sorted(ids), "an entry handled twice (claimed by a reclaimer)"


async def _all_of(handled: list[str], ids: set[str]) -> bool:
    return ids <= set(handled)


async def test_the_keepalive_touches_only_what_this_consumer_still_holds(
    redis: Redis, keys: KeySpace
) -> None:
    """An entry a peer claimed meanwhile keeps its owner and its idle time; one of ours
    gets a fresh idle time and no extra delivery."""
    stream, opts = keys.conversations_stream, options(keys, consumer="me")
    await redis.xgroup_create(stream, "test", id="0", mkstream=True)
    ours, theirs = [await Publisher(redis, keys).publish(request(k)) for k in ("a", "b")]
    await redis.xreadgroup("test", "me", {stream: ">"})
    await redis.xclaim(stream, "test", "peer", 0, [theirs])

    async def both_idle() -> bool:
        rows = await redis.xpending_range(stream, "test", "-", "+", 10)
        return all(r["time_since_delivered"] >= 200 for r in rows)

    await eventually(both_idle, message="both entries idle for 200 ms")
    keepalive = Keepalive(redis, opts, lambda: [(stream, ours), (stream, theirs)], asyncio.Event())
    assert await keepalive.touch() == 1
    rows = {r["message_id"].decode(): r for r in
            await redis.xpending_range(stream, "test", "-", "+", 10)}
    assert rows[ours]["consumer"] == b"me" and rows[ours]["time_since_delivered"] < 200
    assert rows[ours]["times_delivered"] == 1
    assert rows[theirs]["consumer"] == b"peer" and rows[theirs]["time_since_delivered"] >= 200


async def test_a_worker_survives_redis_going_away_while_it_handles_a_failure(
    tmp_path: Path
) -> None:
    """The only worker's handler fails just as Redis goes away, so neither the retry nor a
    dead letter can be written.  The worker used to die with that error, leaving the group
    with no worker and its entries kept fresh; now the entries stay pending, are reclaimed
    once Redis is back, and every key is handled."""
    private = PrivateRedis(tmp_path / "redis")
    private.start()
    redis = harness_redis(private.url)
    keys = KeySpace(prefix="t:")
    handled: set[str] = set()
    went_away = asyncio.Event()

    async def handler(key: str, batch: Sequence[Delivery]) -> None:
        if not went_away.is_set():
            await asyncio.to_thread(private.stop)
            went_away.set()
            raise TemporaryError("the store is gone")
        handled.add(key)

    try:
        await publish_requests(redis, keys, 5, 5)
        async with Running(GroupConsumer(redis, options(keys, concurrency=1), handler)):
            await asyncio.wait_for(went_away.wait(), 60)
            await asyncio.to_thread(private.start)  # AOF on: the stream and group are kept

            async def all_handled() -> bool:
                return handled == {f"k{n}" for n in range(5)}

            await eventually(all_handled, timeout=120, message="every key handled")
    finally:
        await redis.aclose()
        private.stop()
