"""Reads of many keys asked for at once go to the store together, as one read.

Handlings of different keys run concurrently, and each begins by reading its key.
:class:`ReadBatches` answers each ``get`` with one call of its ``read_many``: a
``get`` made while no read is in flight reads at once, in its own task (so a
connection that belongs to one task still serves); the keys asked for while that
read runs wait, and the first of them to wake reads them all together when it
ends (a group commit).  An idle process reads each key as it comes; under a
backlog one query serves every handling that waits.

Each answer is read after its ``get`` was asked, so a handling never sees a state
older than its own start: per-key semantics stay as they were.  An error of a read
is raised in every handling that waited for it; a reading handling that is
cancelled hands the others' keys to the next read.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

ReadMany = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]
"""Reads the given keys; every key must be in the answer."""


class ReadBatches(Generic[K, V]):
    """Coalesces the reads of one store (see the module docstring)."""

    def __init__(self, read_many: ReadMany[K, V], *, max_keys: int) -> None:
        self._read_many = read_many
        self._max_keys = max_keys
        self._waiting: dict[K, list[asyncio.Future[V]]] = {}
        self._reading: asyncio.Future[None] | None = None
        """Done when the read in flight ends; ``None`` while none is."""

    async def get(self, key: K) -> V:
        """The value of ``key``, read after this call began."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[V] = loop.create_future()
        self._waiting.setdefault(key, []).append(answer)
        while not answer.done():
            if self._reading is not None:
                await asyncio.wait([self._reading])  # never cancels the read it waits for
                continue
            self._reading = loop.create_future()
            try:
                taken = list(itertools.islice(self._waiting, self._max_keys))
                await self._answer({k: self._waiting.pop(k) for k in taken})
            finally:
                ended, self._reading = self._reading, None
                ended.set_result(None)
        return answer.result()

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
