"""Where a projection keeps its state and its position, and how both move together.

Storage is Redis (see ARCHITECTURE.md, "Projections"): every key of one
projection carries the hash tag ``{projection:NAME}``, so a MULTI may touch
them all, also in a Redis Cluster.  For version ``v`` of projection ``NAME``:

* ``…:v{v}:items``     hash, item key -> the item as JSON;
* ``…:v{v}:position``  hash, stream key -> id of the last entry applied;
* ``…:v{v}:ix:{name}`` sorted sets maintained from the items (indexes);
* ``…:current``        the version readers and the live runner use (the pointer).

:meth:`ProjectionStore.commit` writes a batch's item changes and the new
position in one MULTI, under WATCH of the position and the pointer: if
another writer moved the position, or a replay switched the pointer, nothing
is written and :class:`Conflict` is raised, so the caller reloads.  Applying
an entry twice is therefore impossible -- eventsourcing's tracking records,
with Redis's optimistic locking in place of a unique constraint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from events.keys import KeySpace
from events.replies import text

SCAN_COUNT = 1000


class Conflict(Exception):
    """The position or the pointer moved under a commit; reload and go on."""


@dataclass
class Changes:
    """What one batch changes in one version."""

    items: dict[str, bytes | None] = field(default_factory=dict)
    """Item key -> new JSON, or ``None`` to delete the item."""
    index_add: dict[str, dict[str, float]] = field(default_factory=dict)
    """Index name -> {member: score} to add or update."""
    index_remove: dict[str, set[str]] = field(default_factory=dict)

    def add(self, index: str, member: str, score: float) -> None:
        self.index_add.setdefault(index, {})[member] = score
        self.index_remove.get(index, set()).discard(member)

    def remove(self, index: str, member: str) -> None:
        self.index_remove.setdefault(index, set()).add(member)
        self.index_add.get(index, {}).pop(member, None)



class ProjectionStore:
    """The keys of one projection, across its versions."""

    def __init__(self, redis: Redis, keys: KeySpace, name: str) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name

    def key(self, version: int, part: str) -> str:
        return self.keys.projection(self.name, version, part)

    @property
    def pointer(self) -> str:
        return self.keys.projection_pointer(self.name)

    @property
    def version_counter(self) -> str:
        return self.keys.projection_versions(self.name)

    def index_key(self, version: int, index: str) -> str:
        return self.key(version, f"ix:{index}")

    # -- versions ----------------------------------------------------------

    async def current_version(self) -> int | None:
        raw = await self.redis.get(self.pointer)
        return int(raw) if raw is not None else None

    async def ensure_version(self) -> int:
        """The current version, creating version 1 for a projection never built."""
        version = await self.current_version()
        if version is not None:
            return version
        await self.redis.set(self.version_counter, 0, nx=True)
        candidate = int(await self.redis.incr(self.version_counter))
        if await self.redis.set(self.pointer, candidate, nx=True):
            return candidate
        version = await self.current_version()
        assert version is not None
        return version

    async def new_version(self) -> int:
        """A fresh, empty version number (not yet current)."""
        version = int(await self.redis.incr(self.version_counter))
        await self.delete_version(version)
        return version

    async def switch(self, version: int) -> int | None:
        """Make ``version`` current; returns the version it replaced."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.getset(self.pointer, version)
            (old,) = await pipe.execute()
        return int(old) if old is not None else None

    async def delete_version(self, version: int) -> int:
        """Remove every key of one version; returns how many were removed."""
        removed = 0
        pattern = self.key(version, "*").replace("{", "\\{").replace("}", "\\}")
        async for key in self.redis.scan_iter(match=pattern, count=SCAN_COUNT):
            removed += int(await self.redis.unlink(key))
        return removed

    # -- reading -----------------------------------------------------------

    async def positions(self, version: int) -> dict[str, str]:
        raw = await self.redis.hgetall(self.key(version, "position"))
        return {text(k): text(v) for k, v in raw.items()}

    async def get_items(self, version: int, item_keys: list[str]) -> dict[str, bytes | None]:
        if not item_keys:
            return {}
        values = await self.redis.hmget(self.key(version, "items"), item_keys)
        return dict(zip(item_keys, values, strict=True))

    async def all_items(self, version: int) -> dict[str, bytes]:
        """Every item of a version (for reads of small models, tests and checks)."""
        out: dict[str, bytes] = {}
        async for k, v in self.redis.hscan_iter(self.key(version, "items"), count=SCAN_COUNT):
            out[text(k)] = v
        return out

    async def index(self, version: int, index: str, *, start: int = 0, stop: int = -1,
                    ) -> list[tuple[str, float]]:
        rows = await self.redis.zrange(self.index_key(version, index), start, stop, withscores=True)
        return [(text(member), float(score)) for member, score in rows]

    # -- writing -----------------------------------------------------------

    async def commit(
        self, version: int, *, expected: Mapping[str, str], position: Mapping[str, str],
        changes: Changes, check_pointer: bool = True,
    ) -> None:
        """Write ``changes`` and ``position`` atomically if nobody moved them; else :class:`Conflict`."""
        position_key = self.key(version, "position")
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(position_key, *((self.pointer,) if check_pointer else ()))
                stored = {text(k): text(v) for k, v in (await pipe.hgetall(position_key)).items()}
                pointer = await pipe.get(self.pointer) if check_pointer else None
                if stored != dict(expected) or (check_pointer and _int(pointer) != version):
                    raise Conflict(f"projection {self.name} v{version} moved")
                pipe.multi()
                self._queue_writes(pipe, version, changes)
                if position:
                    pipe.hset(position_key, mapping=dict(position))
                await pipe.execute()
            except WatchError as e:
                raise Conflict(f"projection {self.name} v{version} moved") from e

    def _queue_writes(self, pipe: Any, version: int, changes: Changes) -> None:
        items_key = self.key(version, "items")
        upserts = {k: v for k, v in changes.items.items() if v is not None}
        deletes = [k for k, v in changes.items.items() if v is None]
        if upserts:
            pipe.hset(items_key, mapping=upserts)
        if deletes:
            pipe.hdel(items_key, *deletes)
        for index, members in changes.index_remove.items():
            if members:
                pipe.zrem(self.index_key(version, index), *members)
        for index, scored in changes.index_add.items():
            if scored:
                pipe.zadd(self.index_key(version, index), scored)


def _int(raw: bytes | str | None) -> int | None:
    return int(raw) if raw is not None else None

