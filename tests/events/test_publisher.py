"""The publisher: a batch's entries land in order on their streams and lanes, and are counted."""

from __future__ import annotations

from prometheus_client import REGISTRY
from redis.asyncio import Redis

from events import codec
from events.contract import Lane
from events.keys import KeySpace
from events.publisher import Publisher
from tests.support import request, session_started


def published(stream: str, tag: str) -> float:
    return REGISTRY.get_sample_value(
        "reconciler_events_published_total", {"stream": stream, "type": tag}) or 0.0


async def test_a_mixed_batch_is_published_in_order_and_counted_by_stream_and_type(
    redis: Redis, keys: KeySpace
) -> None:
    # Conversation requests on both lanes, interleaved with gateway sessions starting,
    # in rounds of three: counting once per (stream, type) must still count every event.
    events = [request(f"5511{n:09d}:940740243") if n % 3 else session_started(f"s{n}")
              for n in range(10)]
    lanes: list[Lane] = ["bulk" if n % 2 else "live" for n in range(10)]
    counters = {("conversations", "reconcile.requested"), ("sessions", "session.started")}
    before = {c: published(*c) for c in counters}

    ids = await Publisher(redis, keys).publish_many(events, batch_size=3, lane=lanes)

    assert {c: published(*c) - before[c] for c in counters} == {
        ("conversations", "reconcile.requested"): 6, ("sessions", "session.started"): 4}
    for stream in ("conversations", "sessions"):
        for lane in ("live", "bulk"):
            entries = await redis.xrange(keys.stream_for(stream, "", lane))
            expected = [(entry_id, event) for entry_id, event, event_lane
                        in zip(ids, events, lanes, strict=True)
                        if event.stream == stream and event_lane == lane]
            assert [(e.decode(), codec.decode(f)) for e, f in entries] == expected, (stream, lane)
