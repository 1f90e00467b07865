"""The ``projections`` role: tail the streams and fold them into the current versions.

Each projection reads its streams with plain XREAD from its own stored
position -- not a consumer group: a projection's position is part of its
state, committed with it, so it can be rebuilt and compared at will.  One
guarded loop per projection; two processes running the role are safe (the
commit of the slower one conflicts and it re-reads from the stored
position), just wasteful.  When a replay switches the pointer, the next
commit conflicts and the loop continues on the new version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis

from events import metrics
from events.keys import KeySpace, by_slot
from events.loops import HEARTBEATS, spawn
from events.replies import text
from events.settings import Settings
from projections.fold import Entry, Folder, Model, id_tuple
from projections.models import models
from projections.rules import KINDS
from projections.store import Conflict, ProjectionStore

log = logging.getLogger(__name__)

READ_COUNT = 2000
"""Entries per stream per XREAD."""
BLOCK_MS = 1000
GAUGE_INTERVAL_S = 1.0


def flatten(reply: Any) -> list[Entry]:
    """XREAD's ``[[stream, [(id, fields), ...]], ...]`` as ``(stream, id, fields)`` rows."""
    out: list[Entry] = []
    for stream, rows in reply or ():
        name = text(stream)
        out.extend((name, entry_id, fields) for entry_id, fields in rows)
    return out


def stream_keys(keys: KeySpace, model: Model[Any]) -> list[str]:
    """The Redis streams of the model's logical streams, bulk lanes included (a bulk lane
    carries row changes of outbox backlogs and folder snapshots, which the model folds)."""
    return [key for name in model.streams for key in keys.lanes(name)]


async def read_after(redis: Redis, keys: KeySpace, model: Model[Any], positions: dict[str, str], *,
                     count: int = READ_COUNT, block_ms: int | None = None) -> list[Entry]:
    """The next entries of the model's streams after ``positions`` (blocking up to ``block_ms``),
    merged in entry-id order (see :func:`in_id_order`).

    One XREAD reads one hash slot's streams; partitioned streams (one slot each) are read
    side by side, first without blocking, and only when all were empty blocking on each:
    after an idle spell a new entry may then wait up to ``block_ms`` for the other reads."""
    slots = by_slot(stream_keys(keys, model))
    reads = [{key: positions.get(key, "0-0") for key in streams} for streams in slots.values()]
    if len(reads) == 1:
        return in_id_order(flatten(await redis.xread(reads[0], count=count, block=block_ms)), count)
    entries: list[Entry] = []
    for block in (None, block_ms) if block_ms is not None else (None,):
        replies = await asyncio.gather(*(redis.xread(r, count=count, block=block) for r in reads))
        entries = [e for reply in replies for e in flatten(reply)]
        if entries:
            break
    return in_id_order(entries, count)


def in_id_order(entries: list[Entry], count: int) -> list[Entry]:
    """One read of several streams, merged by entry id, cut at a safe horizon.

    A key's events can be on both lanes of a stream (a live change after a snapshot
    of the same key), and a model folds images, so their order matters.  Entry ids
    come from one Redis clock, so they order entries across streams.  A stream that
    returned ``count`` entries may hold more below another stream's later entries:
    entries after the smallest last id among such full streams wait for the next
    read (their positions do not move), and that stream's own entries always pass,
    so every read makes progress.
    """
    last: dict[str, tuple[int, int]] = {}
    sizes: dict[str, int] = {}
    for stream, entry_id, _ in entries:
        last[stream] = id_tuple(text(entry_id))
        sizes[stream] = sizes.get(stream, 0) + 1
    if len(last) < 2:
        return entries
    full = [last[s] for s, n in sizes.items() if n >= count]
    horizon = min(full) if full else None
    kept = [e for e in entries if horizon is None or id_tuple(text(e[1])) <= horizon]
    return sorted(kept, key=lambda e: id_tuple(text(e[1])))


async def tail(redis: Redis, keys: KeySpace, model: Model[Any], stop: asyncio.Event, *,
               block_ms: int = BLOCK_MS) -> None:
    """Fold new entries into the current version of ``model`` until ``stop`` is set."""
    store = ProjectionStore(redis, keys, model.name)
    loop_name = f"projection:{model.name}"
    folder: Folder[Any] | None = None
    exported = 0.0
    while not stop.is_set():
        version = await store.ensure_version()
        if folder is None or folder.version != version:
            folder = Folder(store, model, version)
            await folder.load()
        entries = await read_after(redis, keys, model, folder.positions, block_ms=block_ms)
        try:
            await folder.apply(entries)
        except Conflict:
            log.info("projection %s moved under us; reloading", model.name,
                     extra={"projection": model.name})
            folder = None
        HEARTBEATS.beat(loop_name)
        if model.name == "conversations" and time.monotonic() - exported > GAUGE_INTERVAL_S:
            await export_gauges(store, version)
            exported = time.monotonic()


async def inconsistency_counts(store: ProjectionStore, version: int) -> dict[str, tuple[int, float]]:
    """Per kind: how many conversations are inconsistent, and since when the oldest (0 if none)."""
    pipe = store.redis.pipeline(transaction=False)
    for kind in KINDS:
        pipe.zcard(store.index_key(version, f"inconsistent:{kind}"))
        pipe.zrange(store.index_key(version, f"inconsistent:{kind}"), 0, 0, withscores=True)
    replies = await pipe.execute()
    out: dict[str, tuple[int, float]] = {}
    for i, kind in enumerate(KINDS):
        count, oldest = replies[2 * i], replies[2 * i + 1]
        out[kind] = (int(count), float(oldest[0][1]) if oldest else 0.0)
    return out


async def export_gauges(store: ProjectionStore, version: int) -> None:
    now = time.time()
    for kind, (count, since) in (await inconsistency_counts(store, version)).items():
        metrics.INCONSISTENCIES.labels(kind).set(count)
        metrics.OLDEST_INCONSISTENCY_AGE.labels(kind).set(max(0.0, now - since) if since else 0.0)


async def run_projections(settings: Settings, redis: Redis, stop: asyncio.Event) -> None:
    """The ``projections`` role: every projection, until ``stop`` is set."""
    keys = settings.keys

    def body(model: Model[Any]) -> Any:
        return lambda: tail(redis, keys, model, stop)

    tasks = [spawn(f"projection:{name}", body(model), stall_after_s=60.0, stop=stop)
             for name, model in models(settings).items()]
    try:
        await stop.wait()
        await asyncio.wait(tasks, timeout=BLOCK_MS / 1000 + 10)
    finally:
        for task in tasks:
            task.cancel()
