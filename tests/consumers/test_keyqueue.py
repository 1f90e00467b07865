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


def test_a_live_key_goes_before_bulk_keys_and_a_live_event_moves_a_waiting_bulk_key_up() -> None:
    queue = KeyQueue()
    queue.add_many([delivery("a", 1), delivery("b", 2)], live=False)
    queue.add_many([delivery("c", 3)])
    queue.add_many([delivery("b", 4)])  # a live change of a key the backlog woke
    assert [queue.get_nowait()[0] for _ in range(3)] == ["c", "b", "a"]


def test_a_live_event_for_a_busy_key_brings_it_back_ahead_of_the_bulk_lane() -> None:
    queue = KeyQueue()
    queue.add_many([delivery("a", 1), delivery("b", 2)], live=False)
    assert queue.get_nowait()[0] == "a"
    queue.add_many([delivery("a", 3)], live=False)  # while "a" is handled: bulk, then live
    queue.add_many([delivery("a", 4)])
    queue.done("a")
    key, batch = queue.get_nowait()
    assert (key, [d.entry_id for d in batch]) == ("a", ["3-0", "4-0"])


def test_bulk_keys_leave_a_worker_for_live_ones() -> None:
    queue = KeyQueue(bulk_max=2, bulk_while_live=2)
    queue.add_many([delivery(k, n) for n, k in enumerate("abc")], live=False)
    assert [queue.get_nowait()[0] for _ in range(2)] == ["a", "b"]
    with pytest.raises(IndexError):
        queue.get_nowait()  # "c" waits: a third bulk key would take the last worker
    queue.add_many([delivery("d", 9)])
    assert queue.get_nowait()[0] == "d"
    queue.done("a")
    assert queue.get_nowait()[0] == "c"


async def test_while_a_live_key_is_handled_few_bulk_keys_are() -> None:
    queue = KeyQueue(bulk_max=15, bulk_while_live=1)
    queue.add_many([delivery(k, n) for n, k in enumerate("abcd")], live=False)
    assert queue.get_nowait()[0] == "a"
    queue.add_many([delivery("live", 9)])
    assert queue.get_nowait()[0] == "live"
    waiting = asyncio.create_task(queue.get())  # one bulk key runs already: "b" must wait
    queue.done("a")
    assert (await asyncio.wait_for(waiting, timeout=10))[0] == "b"
    with pytest.raises(IndexError):
        queue.get_nowait()
    queue.done("live")  # no live key left: the bulk lane has every worker again
    assert [queue.get_nowait()[0] for _ in range(2)] == ["c", "d"]
