"""Processes of one prefix agree on the partition count, or a process refuses to start."""

from __future__ import annotations

from typing import Any

import pytest

from events.keys import KeySpace
from events.layout import LayoutMismatch, claim_layout


async def test_the_first_process_records_the_count_and_others_must_match(
    redis: Any, key_prefix: str
) -> None:
    await claim_layout(redis, KeySpace(prefix=key_prefix, partitions=4))
    assert await redis.get(f"{key_prefix}stream-layout") == b"4"
    await claim_layout(redis, KeySpace(prefix=key_prefix, partitions=4))  # the same: fine
    with pytest.raises(LayoutMismatch, match="is 1 here but 4") as caught:
        await claim_layout(redis, KeySpace(prefix=key_prefix))
    assert f"{key_prefix}stream-layout" in str(caught.value)
    await redis.delete(f"{key_prefix}stream-layout")  # the documented way to change it
    await claim_layout(redis, KeySpace(prefix=key_prefix, partitions=2))
    assert await redis.get(f"{key_prefix}stream-layout") == b"2"
