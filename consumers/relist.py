"""Re-listing a store's keys after entries were lost from its stream.

Retention never trims what a group has not read (:mod:`events.retention`),
but other hands can: an operator's XTRIM, an older release trimming by length
during an upgrade, a Redis failover or flush.  The consumer runtime notices
(a gap before its last-delivered id, a pending entry that is gone, a group
that had to be recreated) and calls :meth:`Relister.request`.  The keys the
lost entries carried are unknown, so every key that can matter is listed
again and published as ``reconcile.requested``; the handlers are
level-triggered, so a key listed without need costs one reconciliation.

* conversations: every key with a row the rule table can act on (the same rows
  the database listing reads: :func:`events.sources.table_listing.rows_that_can_matter`)
  and every session file;
* sessions: every session with a queue, a parked list or a lease.

Requests coalesce: while a re-list runs, further requests make it run once
more at the end, never twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from events.contract import ReconcileRequested
from events.envelope import new_event
from events.keys import conversation_key
from events.publisher import Publisher
from events.replies import text
from events.session_file_format import FilePattern
from events.settings import Settings
from events.sources.table_listing import rows_that_can_matter
from events.sql import quote_ident, quote_table

log = logging.getLogger(__name__)

Scope = Literal["conversations", "sessions"]
PUBLISH_BATCH = 2000
"""Keys per ``publish_many`` call."""
SCAN_COUNT = 1000


class Relister:
    """Publishes ``reconcile.requested`` for every key of one scope, on request."""

    def __init__(self, *, scope: Scope, keys: Callable[[], AsyncIterator[str]],
                 publisher: Publisher) -> None:
        self.scope = scope
        self._keys = keys
        self._publisher = publisher
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._reasons: list[str] = []
        self.runs = 0
        """Re-lists finished (for tests and logs)."""

    def request(self, reason: str) -> None:
        """Re-list soon (in the background); coalesced with a re-list already running."""
        self._reasons.append(reason)
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name=f"relist:{self.scope}")

    async def wait(self) -> None:
        """Wait until no re-list is running (tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def stop(self) -> None:
        """Shutdown: cancel a re-list still running, and say how to finish it by hand."""
        if self._task is None or self._task.done():
            return
        self._task.cancel()
        await asyncio.wait([self._task])
        log.warning("a re-list of the %s keys was interrupted by shutdown; run "
                    "`reconciler audit --fix` to finish it", self.scope, extra={"scope": self.scope})

    async def _run(self) -> None:
        while True:
            self._again = False
            reason, self._reasons = "; ".join(dict.fromkeys(self._reasons))[:400], []
            try:
                listed = await self._relist(reason)
            except Exception:
                log.error("re-listing the %s keys failed; it runs again on the next gap",
                          self.scope, exc_info=True, extra={"scope": self.scope})
                return
            self.runs += 1
            log.warning("re-listed %d %s key(s) after lost stream entries (%s)", listed,
                        self.scope, reason, extra={"scope": self.scope})
            if not self._again:
                return

    async def _relist(self, reason: str) -> int:
        batch: list[ReconcileRequested] = []
        total = 0
        async for key in self._keys():
            batch.append(new_event(ReconcileRequested, source="reconciler", key=key,
                                   scope=self.scope, reason=reason))
            if len(batch) >= PUBLISH_BATCH:
                total += await self._flush(batch)
        return total + await self._flush(batch)

    async def _flush(self, batch: list[ReconcileRequested]) -> int:
        if batch:
            await self._publisher.publish_many(batch, lane="bulk")
        count = len(batch)
        batch.clear()
        return count


def conversation_keys(settings: Settings, pool: Any) -> Callable[[], AsyncIterator[str]]:
    """Keys of rows the rule table can act on, then keys of session files (each once)."""
    c, table = settings.columns, quote_table(settings.table)
    phone, channel = quote_ident(c.phone), quote_ident(c.channel)
    query = (f"SELECT DISTINCT {phone}::text AS phone, {channel}::text AS channel FROM {table} "
             f"WHERE {rows_that_can_matter(settings)}")
    pattern = FilePattern(settings.file_pattern)

    async def keys() -> AsyncIterator[str]:
        seen: set[str] = set()
        async with pool.acquire() as conn, conn.transaction():
            async for record in conn.cursor(query, prefetch=PUBLISH_BATCH):
                if record["phone"] is not None and record["channel"] is not None:
                    key = conversation_key(record["phone"], record["channel"])
                    seen.add(key)
                    yield key
        for name in await asyncio.to_thread(_file_names, settings):
            parsed = pattern.parse(name)
            if parsed is not None and parsed.key not in seen:
                seen.add(parsed.key)
                yield parsed.key
    return keys


def _file_names(settings: Settings) -> list[str]:
    folder = settings.sessions_dir
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def session_names(settings: Settings, redis: Any) -> Callable[[], AsyncIterator[str]]:
    """Sessions with a queue, a parked list or a lease (each once)."""
    keys = settings.keys
    globs: list[tuple[str, Callable[[str], str | None]]] = [
        (keys.queue_glob, keys.session_of_queue), (keys.parked_glob, keys.session_of_parked),
        (keys.lease_glob, keys.session_of_lease)]

    async def names() -> AsyncIterator[str]:
        seen: set[str] = set()
        for glob, session_of in globs:
            async for raw in redis.scan_iter(match=glob, count=SCAN_COUNT):
                name = session_of(text(raw))
                if name is not None and name not in seen:
                    seen.add(name)
                    yield name
    return names

