"""Folding stream entries into a projection, one atomic batch at a time.

A :class:`Model` is pure: which item an event touches, how the item changes,
how it is stored and which indexes it belongs to.  :class:`Folder` does the
I/O: it skips entries at or before the stored position of their stream,
fetches the touched items, applies the events in stream order and commits
item changes, index changes and the new position in one MULTI
(:meth:`ProjectionStore.commit`).  The live runner and a replay use the same
folder, so a rebuilt version is folded by exactly the code that built the
live one.

Each item's fields are folded from one stream only (conversation and session
state from their streams, recent actions from the audit stream), so how the
entries of different streams interleave in a batch never changes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar

from events import codec
from events.contract import Event
from events.errors import MalformedEntry
from events.replies import text
from projections.store import Changes, Conflict, ProjectionStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CACHED_ITEMS = 200_000
"""Items kept in memory between commits; the cache is dropped after a commit beyond this."""

Entry = tuple[str, str, Any]
"""``(stream key, entry id, fields)`` as read with XREAD / XRANGE."""


class Model(Protocol[T]):
    name: str
    streams: tuple[str, ...]
    """Logical streams the model folds (``conversations``, ``sessions``, ``audit``)."""

    def item_key(self, event: Event) -> str | None: ...
    def apply(self, item: T | None, event: Event) -> T | None: ...
    def encode(self, item: T) -> bytes: ...
    def decode(self, raw: bytes) -> T: ...
    def indexes(self, item: T) -> dict[str, float]: ...


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def after(entry_id: str, position: str | None) -> bool:
    return position is None or id_tuple(entry_id) > id_tuple(position)



class Folder(Generic[T]):
    """Applies batches of entries to one version of one projection.

    With ``commit_items=0`` (the live runner) every :meth:`apply` commits.  A
    replay folds into a fresh version nobody reads before the switch, so it
    commits only once ``commit_items`` items wait (and at the end): items are
    folded in memory, and a commit writes each item changed since the previous
    commit once, with the position reached, in one MULTI -- the same atomic
    step, taken less often.  :meth:`flush` commits whatever is pending.
    """

    def __init__(self, store: ProjectionStore, model: Model[T], version: int, *,
                 fresh: bool = False, check_pointer: bool = True, commit_items: int = 0) -> None:
        self.store = store
        self.model = model
        self.version = version
        self.fresh = fresh
        """A version nobody else writes and that started empty: a cache miss is an absent item."""
        self.check_pointer = check_pointer
        self.commit_items = commit_items
        self.positions: dict[str, str] = {}
        """Position folded up to (committed, or pending the next commit)."""
        self.committed: dict[str, str] = {}
        """Position as stored."""
        self.applied = 0
        self._cache: dict[str, T | None] = {}
        self._stored: dict[str, T | None] = {}
        """Items changed since the last commit, as they were stored before."""

    async def load(self) -> None:
        self.committed = await self.store.positions(self.version)
        self.positions = dict(self.committed)
        self._cache.clear()
        self._stored.clear()
        self.fresh = self.fresh and not self.positions

    async def apply(self, entries: Sequence[Entry]) -> int:
        """Fold ``entries`` (in stream order per stream); returns how many were new.

        On :class:`Conflict` the folder reloads its position and re-raises:
        the caller reads again from the stored position.
        """
        position = self.positions
        pending: list[tuple[str, Event]] = []
        new = 0
        item_key, decode = self.model.item_key, self._decode
        for stream, raw_id, fields in entries:
            entry_id = text(raw_id)
            if not after(entry_id, position.get(stream)):
                continue
            position[stream] = entry_id
            new += 1
            event = decode(stream, entry_id, fields)
            key = item_key(event) if event is not None else None
            if event is not None and key is not None:
                pending.append((key, event))
        if not new:
            return 0
        items = await self._items({key for key, _ in pending})
        stored, fold = self._stored, self.model.apply
        for key, event in pending:
            if key not in stored:
                stored[key] = items[key]
            items[key] = fold(items[key], event)
        self._remember(items)
        self.applied += new
        if len(stored) >= self.commit_items:
            await self.flush()
        return new

    async def flush(self) -> None:
        """Commit the items changed since the last commit with the position reached."""
        if self.positions == self.committed:
            return
        changes = self._changes()
        try:
            await self.store.commit(self.version, expected=self.committed, position=self.positions,
                                    changes=changes, check_pointer=self.check_pointer)
        except Conflict:
            await self.load()
            raise
        except BaseException:
            self._forget()
            raise
        self.committed = dict(self.positions)
        self._stored.clear()
        if len(self._cache) > MAX_CACHED_ITEMS:
            self._cache.clear()
            self.fresh = False

    def _decode(self, stream: str, entry_id: str, fields: Any) -> Event | None:
        try:
            return codec.decode(fields)
        except MalformedEntry as e:
            log.warning("projection %s skips malformed entry: %s", self.model.name, e,
                        extra={"stream": stream, "entry_id": entry_id})
            return None

    async def _items(self, wanted: set[str]) -> dict[str, T | None]:
        cache = self._cache
        found = {k: cache[k] for k in wanted if k in cache}
        if len(found) == len(wanted):
            return found
        missing = sorted(wanted - found.keys())
        if self.fresh:
            found.update(dict.fromkeys(missing))
        else:
            for key, raw in (await self.store.get_items(self.version, missing)).items():
                found[key] = self.model.decode(raw) if raw is not None else None
        return found

    def _changes(self) -> Changes:
        changes = Changes()
        for key, old in self._stored.items():
            new = self._cache[key]
            if new is old:
                continue
            changes.items[key] = self.model.encode(new) if new is not None else None
            old_ix = self.model.indexes(old) if old is not None else {}
            new_ix = self.model.indexes(new) if new is not None else {}
            for index in old_ix.keys() - new_ix.keys():
                changes.remove(index, key)
            for index, score in new_ix.items():
                if old_ix.get(index) != score:
                    changes.add(index, key, score)
        return changes

    def _remember(self, items: dict[str, T | None]) -> None:
        self._cache.update(items)

    def _forget(self) -> None:
        """After a failed commit: back to the stored position, nothing folded in memory."""
        self.positions = dict(self.committed)
        self._cache.clear()
        self._stored.clear()
        self.fresh = False
