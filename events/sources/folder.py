"""The session-folder source: watchfiles changes and folder scans -> events.

One guarded loop (``folder-watcher``) owns the folder.  Each run of it:

1. waits for the folder to exist;
2. publishes a snapshot -- every entry as it is now, plus removals of files
   last seen by an earlier run (their names persist in a Redis hash) --
   bracketed by ``SnapshotStarted``/``SnapshotFinished``;
3. watches with :func:`watchfiles.awatch`.  The first time the watcher yields
   it is known to be installed, and the folder is rescanned once more: a
   change made between the listing and the watch is never missed
   (list, then watch);
4. every ``rescan_interval_s`` rescans the folder and publishes what differs
   from what was last seen (inotify drops events silently when its queue
   overflows);
5. notices the folder being removed or replaced (its inode changes), publishes
   the removals, waits for it to come back, rescans and publishes a
   ``SourceResynced``.

watchfiles is tuned for latency: ``step`` (how long the Rust side waits for
more changes before yielding) is a few milliseconds, and ``debounce`` (the cap
on grouping under a continuous stream of changes) is short; see watchfiles
issue #360 on how the two interact.  A timeout of ``TICK_MS`` makes the
generator yield empty sets when nothing happens, which drives heartbeats,
folder checks, rechecks and rescans from the same single task -- so the
:class:`FolderView` memory is never touched by two tasks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from watchfiles import awatch

from events import metrics, wiring
from events.contract import (
    EventBase,
    Lane,
    SessionFileRejected,
    SnapshotFinished,
    SnapshotStarted,
    SourceResynced,
)
from events.envelope import E, new_event
from events.ids import new_event_id
from events.keys import KeySpace
from events.loops import HEARTBEATS, guarded, sleep_unless_stopped
from events.readiness import READINESS
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sources.folder_scan import FOLDER_KEY, SOURCE, FolderView

log = logging.getLogger(__name__)

LOOP_NAME = "folder-watcher"
READY_FLAG = "source:files"
"""Not ready until the first snapshot of the sessions folder is published."""
WATCH_STEP_MS = 2
"""Quiet time after a change before watchfiles yields (its default is 50).  The
Rust side wakes every ``step`` ms, so latency is about 2-3 steps plus our work:
2 ms measured ~7 ms p50 from write to stream, for ~1% of a core while idle
(1 ms: ~5 ms for ~2%; 50 ms: ~105 ms)."""
WATCH_DEBOUNCE_MS = 50
"""Longest watchfiles groups a continuous stream of changes (its default is 1600)."""
TICK_MS = 500
"""Longest the watch waits without yielding, so the loop can beat and check the folder."""
FOLDER_POLL_S = 0.25
"""How often a missing folder is looked for."""
STALL_AFTER_S = 60.0

FolderId = tuple[int, int]


def state_key(keys: KeySpace) -> str:
    """Hash: session file name -> token of what was last published for it."""
    return keys.source_state(f"{SOURCE}:files")


async def run_watcher(settings: Settings, redis: Redis, stop: asyncio.Event) -> None:
    """Role ``watcher``: publish session-folder changes until ``stop`` is set."""
    watcher = FolderWatcher(settings, redis)
    with READINESS.flagged(READY_FLAG, "first snapshot of the sessions folder not published yet"):
        await guarded(LOOP_NAME, partial(watcher.run, stop), stall_after_s=STALL_AFTER_S, stop=stop)


class FolderWatcher:
    """The state of the folder source across restarts of its loop."""

    def __init__(
        self, settings: Settings, redis: Redis, *,
        step_ms: int = WATCH_STEP_MS, debounce_ms: int = WATCH_DEBOUNCE_MS,
    ) -> None:
        self.folder = Path(os.path.abspath(settings.sessions_dir))
        self.view = FolderView(self.folder, FilePattern(settings.file_pattern),
                               max_bytes=settings.max_file_bytes)
        self.rescan_interval_s = settings.rescan_interval_s
        self.polling = settings.watch_polling
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.redis = redis
        self.state_key = state_key(settings.keys)
        self.publisher = wiring.publisher(settings, redis)
        self.runs = 0

    async def run(self, stop: asyncio.Event) -> None:
        """One run of the loop: snapshot, then watch until stopped (or failed)."""
        self.runs += 1
        resync_reason = None if self.runs == 1 else "watcher restarted"
        snapshot_due = True
        while not stop.is_set():
            folder_id = await self._wait_for_folder(stop)
            if folder_id is None:
                return
            if snapshot_due:
                await self._snapshot(resync_reason)
                snapshot_due = False
            else:
                await self._rescan(resync_reason)
            if not await self._watch(folder_id, stop):
                return
            log.warning("sessions folder %s was removed or replaced; waiting for it",
                        self.folder, extra={"source": SOURCE})
            await self._publish(await asyncio.to_thread(self.view.rescan), lane="bulk")
            resync_reason = "sessions folder re-created"

    # -- listing ---------------------------------------------------------

    async def _snapshot(self, resync_reason: str | None) -> None:
        if self.runs == 1:
            self.view.load(await self._load_tokens())
        snapshot_id = new_event_id()
        events, items = await asyncio.to_thread(self.view.snapshot)
        await self._publish([
            self._event(SnapshotStarted, snapshot_id=snapshot_id),
            *events,
            self._event(SnapshotFinished, snapshot_id=snapshot_id, items=items),
            *self._resynced(resync_reason),
        ], replace_state=True, lane="bulk")
        metrics.SOURCE_RESYNCS.labels(SOURCE).inc()
        READINESS.ready(READY_FLAG)
        log.info("sessions folder snapshot: %d items", items,
                 extra={"source": SOURCE, "snapshot_id": snapshot_id})

    async def _rescan(self, resync_reason: str | None = None) -> None:
        events = await asyncio.to_thread(self.view.rescan)
        metrics.SOURCE_RESYNCS.labels(SOURCE).inc()
        if events:
            log.info("sessions folder rescan found %d changes", len(events),
                     extra={"source": SOURCE})
        await self._publish([*events, *self._resynced(resync_reason)], lane="bulk")

    # -- watching --------------------------------------------------------

    async def _watch(self, folder_id: FolderId, stop: asyncio.Event) -> bool:
        """Watch until ``stop`` (returns False) or the folder is gone (returns True)."""
        next_rescan = self._next_rescan()
        installed = False
        changes = awatch(
            self.folder, watch_filter=None, debounce=self.debounce_ms, step=self.step_ms,
            stop_event=stop, rust_timeout=TICK_MS, yield_on_timeout=True, recursive=False,
            force_polling=self.polling,
        )
        async with contextlib.aclosing(changes):
            async for batch in changes:
                HEARTBEATS.beat(LOOP_NAME)
                if _folder_id(self.folder) != folder_id:
                    return True
                names = {name for _, path in batch if (name := self._name_of(path))}
                names.update(self.view.due_rechecks())
                if names:
                    await self._publish(await asyncio.to_thread(self.view.observe_many, sorted(names)))
                if not installed or time.monotonic() >= next_rescan:
                    installed = True  # list, then watch: look again now the watch is in place
                    await self._rescan()
                    next_rescan = self._next_rescan()
        return False

    def _name_of(self, path: str) -> str | None:
        parent, name = os.path.split(path)
        return name if parent == str(self.folder) and name else None

    def _next_rescan(self) -> float:
        if self.rescan_interval_s <= 0:
            return float("inf")
        return time.monotonic() + self.rescan_interval_s

    async def _wait_for_folder(self, stop: asyncio.Event) -> FolderId | None:
        warned = False
        while not stop.is_set():
            folder_id = _folder_id(self.folder)
            if folder_id is not None:
                return folder_id
            if not warned:
                log.warning("sessions folder %s does not exist (yet); waiting for it",
                            self.folder, extra={"source": SOURCE})
                warned = True
            HEARTBEATS.beat(LOOP_NAME)
            await sleep_unless_stopped(stop, FOLDER_POLL_S)
        return None

    # -- publishing ------------------------------------------------------

    async def _publish(self, events: Sequence[EventBase], *, replace_state: bool = False,
                       lane: Lane = "live") -> None:
        """Publish; snapshots and rescans go to the bulk lane, watched changes live."""
        if events:
            await self.publisher.publish_many(events, lane=lane)
            metrics.SOURCE_LAST_EVENT.labels(SOURCE).set(time.time())
            for event in events:
                if isinstance(event, SessionFileRejected):
                    metrics.INVALID_INPUTS.labels(SOURCE, event.reason).inc()
                    log.warning("session folder entry rejected: %s", event.reason,
                                extra={"source": SOURCE, "key": event.key, "file": event.name})
        await self._save_tokens(replace=replace_state)

    async def _load_tokens(self) -> dict[str, str]:
        raw: dict[Any, Any] = await self.redis.hgetall(self.state_key)
        # file names round-trip to their bytes on disk (surrogateescape), unlike reply text
        return {os.fsdecode(k): os.fsdecode(v) for k, v in raw.items()}

    async def _save_tokens(self, *, replace: bool) -> None:
        changed = self.view.take_changed()
        if not replace and not changed:
            return
        pipe = self.redis.pipeline(transaction=True)
        if replace:
            pipe.delete(self.state_key)
            if self.view.seen:
                pipe.hset(self.state_key, mapping=self.view.seen)
        else:
            gone = [name for name, token in changed.items() if token is None]
            kept = {name: token for name, token in changed.items() if token is not None}
            if gone:
                pipe.hdel(self.state_key, *gone)
            if kept:
                pipe.hset(self.state_key, mapping=kept)
        await pipe.execute()

    def _event(self, kind: type[E], **fields: Any) -> E:
        return new_event(kind, source=SOURCE, key=FOLDER_KEY, **fields)

    def _resynced(self, reason: str | None) -> list[EventBase]:
        return [] if reason is None else [self._event(SourceResynced, reason=reason)]


def _folder_id(folder: Path) -> FolderId | None:
    try:
        info = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None

