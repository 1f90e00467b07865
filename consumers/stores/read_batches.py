"""Reads of many keys asked for at once go to the store together, as one read.

Handlings of different keys run concurrently, and each begins by reading its key.
:class:`ReadBatches` answers each ``get`` with one call of its ``read_many``: a
``get`` made while no read is in flight reads at once, in its own task (so a
connection that belongs to one task still serves); the keys asked for while that
read runs wait, and when it ends the turn passes to one of them, which reads
them all together (a group commit; every other waiter wakes only for its
answer).  An idle process reads each key as it comes; under a backlog one query
serves every handling that waits.

Each answer is read after its ``get`` was asked, so a handling never sees a state
older than its own start: per-key semantics stay as they were.  An error of a read
is raised in every handling that waited for it; a reading handling that is
cancelled hands the others' keys to the next read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ReadMany = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]
"""Reads the given keys; every key must be in the answer."""
YOUR_TURN: Any = object()
"""Resolves a waiter's answer when the read has become its to make."""


class ReadBatches(Generic[K, V]):
    """Coalesces the reads of one store (see the module docstring)."""

    def __init__(self, read_many: ReadMany[K, V], *, max_keys: int) -> None:
        self._read_many = read_many
        self._max_keys = max_keys
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._reading = False
        """A read is in flight, or the turn to make one was passed to a waiter."""

    async def get(self, key: K) -> V:
        """The value of ``key``, read after this call began."""
        answer = self._ask(key)
        if self._reading:
            value = await self._wait(answer)
            if value is not YOUR_TURN:
                return value
            answer = self._ask(key)
        self._reading = True
        try:
            others = itertools.islice((k for k in self._waiting if k != key), self._max_keys - 1)
            taken = [key, *others]
            await self._answer({k: self._waiting.pop(k) for k in taken})
        except BaseException:
            answer.cancel()  # this handling was cancelled: its own answer is not awaited
            raise
        finally:
            self._pass_turn()
        return answer.result()

    async def _wait(self, answer: asyncio.Future[V]) -> V:
        try:
            return await answer  # a handling cancelled here cancels its answer too
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled() and answer.exception() is None \
                    and answer.result() is YOUR_TURN:
                self._pass_turn()  # the turn came as this handling was cancelled: pass it on
            raise

    def _ask(self, key: K) -> asyncio.Future[V]:
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(answer)
        return answer

    def _pass_turn(self) -> None:
        """Hand the next read to a handling still waiting, if any."""
        for key, futures in list(self._waiting.items()):
            while futures:
                future = futures.pop(0)
                if not future.done():
                    if not futures:
                        del self._waiting[key]
                    future.set_result(YOUR_TURN)
                    return
            del self._waiting[key]
        self._reading = False

    async def _answer(self, batch: dict[K, list[asyncio.Future[V]]]) -> None:
        try:
            found = await self._read_many(list(batch))
        except Exception as e:
            for future in itertools.chain.from_iterable(batch.values()):
                if not future.done():  # its handling may have been cancelled meanwhile
                    future.set_exception(e)
            return
        except BaseException:  # this handling was cancelled: the next read takes the rest
            for k, futures in batch.items():
                if left := [f for f in futures if not f.done()]:
                    self._waiting.setdefault(k, []).extend(left)
            raise
        for k, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(found[k])
