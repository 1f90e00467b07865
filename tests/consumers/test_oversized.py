"""Oversized stream entries: refused before decoding, dead-lettered as an excerpt, the stream capped."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from redis.asyncio import Redis

from consumers.deadletter import EXCERPT_BYTES, Failed, dead_letter, list_dead_letters, retry_dead_letter
from consumers.keyqueue import Delivery
from consumers.runtime import GroupConsumer
from events import codec
from events.errors import EntryTooLarge
from events.keys import KeySpace
from tests.consumers.test_runtime import Running, options
from tests.support import eventually, request

MB = 1024 * 1024


def test_an_entry_with_a_huge_unknown_field_is_refused_before_decoding() -> None:
    fields = {k.encode(): v for k, v in codec.encode(request("k")).items()}
    assert codec.decode(fields).key == "k"
    with pytest.raises(EntryTooLarge, match="not decoded"):
        codec.decode({**fields, b"junk": b"x" * (3 * MB)})
    with pytest.raises(EntryTooLarge):
        codec.decode({**fields, b"data": b"[" * MB})


async def handled(key: str, deliveries: Sequence[Delivery]) -> None:
    return None


async def test_oversized_entries_are_dead_lettered_as_bounded_excerpts(
    redis: Redis, keys: KeySpace
) -> None:
    stream = keys.conversations_stream
    good = {k.encode(): v for k, v in codec.encode(request("k")).items()}
    await redis.xadd(stream, {**good, b"data": b"{" + b" " * (10 * MB) + b"}"})
    await redis.xadd(stream, {**good, b"junk": b"j" * (4 * MB)})
    consumer = GroupConsumer(redis, options(keys, streams=(stream,)), handled)
    async with Running(consumer):
        async def two_dead_letters() -> bool:
            return int(await redis.xlen(keys.deadletter_stream)) == 2
        await eventually(two_dead_letters, message="both oversized entries dead-lettered")
        letters = await list_dead_letters(redis, keys.deadletter_stream)
    assert {letter.truncated for letter in letters} == {f"data={10 * MB + 2}", f"junk={4 * MB}"}
    assert all(letter.reason == "malformed" for letter in letters)
    for _, fields in await redis.xrange(keys.deadletter_stream):
        assert sum(len(k) + len(v) for k, v in fields.items()) < 4 * EXCERPT_BYTES + 4096
    assert (await redis.xpending(stream, "test"))["pending"] == 0
    with pytest.raises(LookupError, match="cannot be retried"):
        await retry_dead_letter(redis, keys.deadletter_stream, letters[0].entry_id)


async def test_the_dead_letter_stream_is_capped_by_its_setting(redis: Redis, keys: KeySpace) -> None:
    stream = keys.conversations_stream
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    failed = [Failed(stream=stream, entry_id=f"{n + 1}-0", fields={b"n": str(n).encode()})
              for n in range(1000)]
    for start in range(0, len(failed), 100):
        await dead_letter(redis, deadletter_stream=keys.deadletter_stream, group="g",
                          failed=failed[start:start + 100], reason="malformed", error="x", max_len=50)
    length = int(await redis.xlen(keys.deadletter_stream))
    assert 50 <= length < 1000 - 100  # MAXLEN ~ trims whole nodes: near the cap, never all 1000
    newest = await redis.xrevrange(keys.deadletter_stream, count=1)
    assert newest[0][1][b"n"] == b"999"  # the oldest went first
