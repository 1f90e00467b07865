"""KeyQueue: one worker per key, events of a waiting or busy key coalesced, order kept."""

from __future__ import annotations

import asyncio

import pytest

from consumers.keyqueue import Delivery, KeyQueue
from tests.support import request


def delivery(key: str, n: int) -> Delivery:
    return Delivery(stream="s", entry_id=f"{n}-0", event=request(key), fields={})


def test_events_of_a_waiting_key_are_coalesced_in_order() -> None:
    queue = KeyQueue()
    a1, b1, a2 = delivery("a", 1), delivery("b", 2), delivery("a", 3)
    queue.add_many([a1, b1, a2])
    assert len(queue) == 3
    assert queue.get_nowait() == ("a", [a1, a2])
    assert queue.get_nowait() == ("b", [b1])
    with pytest.raises(IndexError):
        queue.get_nowait()


def test_a_busy_key_is_not_handed_out_twice_and_comes_back_when_done() -> None:
    queue = KeyQueue()
    first, later = delivery("a", 1), delivery("a", 2)
    queue.add_many([first])
    assert queue.get_nowait() == ("a", [first])
    queue.add_many([later])  # arrives while "a" is being handled
    with pytest.raises(IndexError):
        queue.get_nowait()
    queue.done("a")
    assert queue.get_nowait() == ("a", [later])
    queue.done("a")
    assert len(queue) == 0


async def test_join_waits_until_every_key_is_done() -> None:
    queue = KeyQueue()
    queue.add_many([delivery("a", 1), delivery("b", 2)])
    joined = asyncio.create_task(queue.join())
    for _ in range(2):
        key, _batch = await queue.get()
        await asyncio.sleep(0)
        assert not joined.done()
        queue.done(key)
    await asyncio.wait_for(joined, timeout=10)


async def test_wait_for_space_returns_once_entries_are_done() -> None:
    queue = KeyQueue()
    queue.add_many([delivery("a", 1), delivery("b", 2)])
    waiting = asyncio.create_task(queue.wait_for_space(2))
    await asyncio.sleep(0)
    assert not waiting.done()
    key, _ = queue.get_nowait()
    queue.done(key)
    await asyncio.wait_for(waiting, timeout=10)


def test_clear_forgets_everything() -> None:
    queue = KeyQueue()
    queue.add_many([delivery("a", 1), delivery("b", 2)])
    queue.get_nowait()
    queue.clear()
    assert len(queue) == 0
    with pytest.raises(IndexError):
        queue.get_nowait()
