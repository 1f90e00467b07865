"""Rebuilding a projection from the start of the retained streams.

A replay folds every retained entry into a *fresh* version (a new number
from the projection's version counter) with the same :class:`Folder` the live
runner uses, then, once a read returns nothing more, makes it current with
one atomic pointer write and deletes the old version.  Nobody reads the fresh
version before the switch, so the folder commits it (items and position
together, as live) only when :data:`REPLAY_COMMIT_ITEMS` changed items wait,
and once more before the switch.  Readers and the live
runner keep using the old version until the switch; the runner's next commit
to the old version conflicts (it watches the pointer), so it moves to the new
one and carries on from the new version's position.

Streams are trimmed by retention (``RECONCILER_STREAM_MAX_LEN`` /
``RECONCILER_STREAM_RETENTION_S``), so "from the start" means from the oldest
retained entry.  The sources re-list their stores on every start and
reconnect, between ``source.snapshot_started`` and
``source.snapshot_finished`` markers; state folded from the latest complete
snapshot onward is therefore complete.  :func:`retained_snapshot` says
whether the retained streams still hold one (the markers and the snapshot are
on the bulk lane, ``KeySpace.bulk_stream``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from events import codec
from events.contract import SnapshotFinished, SnapshotStarted
from events.errors import MalformedEntry
from events.keys import KeySpace
from projections.fold import Folder
from projections.models import model as model_named
from projections.runner import read_after, stream_keys
from projections.store import ProjectionStore

REPLAY_READ_COUNT = 5_000
"""Entries per stream per XREAD: small reads keep few objects alive at once."""
REPLAY_COMMIT_ITEMS = 100_000
"""Changed items held in memory before a commit of the fresh version (bounds one MULTI)."""


@dataclass(frozen=True, slots=True)
class Progress:
    projection: str
    applied: int
    """Entries folded so far."""
    total: int
    """Entries retained when the replay started (more may arrive while it runs)."""
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class ReplayResult:
    projection: str
    version: int
    replaced: int | None
    applied: int
    elapsed_s: float
    positions: dict[str, str]

    @property
    def events_per_s(self) -> float:
        return self.applied / self.elapsed_s if self.elapsed_s > 0 else 0.0


async def retained_total(redis: Redis, streams: list[str]) -> int:
    pipe = redis.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
    return sum(int(n) for n in await pipe.execute())


async def replay(
    redis: Redis, keys: KeySpace, name: str, *,
    progress: Callable[[Progress], None] | None = None, count: int = REPLAY_READ_COUNT,
    commit_items: int = REPLAY_COMMIT_ITEMS,
) -> ReplayResult:
    """Rebuild projection ``name`` into a fresh version and switch to it when caught up."""
    model = model_named(name)
    store = ProjectionStore(redis, keys, name)
    version = await store.new_version()
    folder: Folder[Any] = Folder(store, model, version, fresh=True, check_pointer=False,
                                 commit_items=commit_items)
    total = await retained_total(redis, stream_keys(keys, model))
    started = time.monotonic()
    try:
        while True:
            entries = await read_after(redis, keys, model, folder.positions, count=count)
            if not entries:
                break
            await folder.apply(entries)
            if progress is not None:
                progress(Progress(name, folder.applied, max(total, folder.applied),
                                  time.monotonic() - started))
        await folder.flush()
    except BaseException:
        await store.delete_version(version)
        raise
    replaced = await store.switch(version)
    if replaced is not None and replaced != version:
        await store.delete_version(replaced)
    return ReplayResult(projection=name, version=version, replaced=replaced,
                        applied=folder.applied, elapsed_s=time.monotonic() - started,
                        positions=dict(folder.positions))


@dataclass(frozen=True, slots=True)
class SnapshotCover:
    source: str
    snapshot_id: str
    finished_entry: str


async def retained_snapshot(redis: Redis, stream: str, *, scan: int = 100_000) -> list[SnapshotCover]:
    """Complete snapshots (started and finished both retained) among the oldest ``scan`` entries."""
    started: dict[tuple[str, str], str] = {}
    covers: list[SnapshotCover] = []
    for entry_id, fields in await redis.xrange(stream, count=scan):
        kind = fields.get(b"type", b"")
        if kind not in (b"source.snapshot_started", b"source.snapshot_finished"):
            continue
        try:
            event = codec.decode(fields)
        except MalformedEntry:
            continue
        if isinstance(event, SnapshotStarted):
            started[(event.source, event.snapshot_id)] = entry_id.decode()
        elif isinstance(event, SnapshotFinished) and (event.source, event.snapshot_id) in started:
            covers.append(SnapshotCover(event.source, event.snapshot_id, entry_id.decode()))
    return covers
