"""Queue discovery: which sessions' outgoing queues hold messages.

Two inputs feed it, both owned by :mod:`events.sources.sessions`: keyspace
notifications of list pushes (``lpush``, ``rpush``, ``linsert``, ...) and a
SCAN of the queue keys (never KEYS) at start, after a reconnect, and on the
slow rescan.  A gateway may push thousands of messages a second to one queue,
and one event per push would flood the sessions stream, so pushes are
coalesced: a queue noted several times within ``window_s`` becomes one
``queue.observed`` event carrying the queue's length when it was flushed.
Consumers are level-triggered, so the length is a hint, never a count.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from events import metrics
from events.contract import QueueObserved
from events.ids import new_event_id
from events.keys import KeySpace
from events.publisher import Publisher

log = logging.getLogger(__name__)

COALESCE_WINDOW_S = 0.05
"""Pushes to one queue within this window become one event."""
SCAN_COUNT = 1000
"""SCAN COUNT hint: keys looked at per SCAN call."""

PUSH_EVENTS = frozenset(
    {b"lpush", b"rpush", b"lpushx", b"rpushx", b"linsert", b"lset", b"lmove", b"rename_to",
     b"restore", b"copy_to", b"move_to"}
)
"""Keyspace events that may leave messages in a list (LMOVE and RPOPLPUSH
report ``lpush``/``rpush`` on the destination)."""

SOURCE = "sessions"
"""The ``source`` label of this source's metrics."""


def queue_event(keys: KeySpace, session: str, length: int) -> QueueObserved:
    return QueueObserved(id=new_event_id(), occurred_at=datetime.now(UTC), source="queues",
                         key=session, queue=keys.queue(session), length=length)


class QueueCoalescer:
    """Collects the sessions whose queues were pushed to and publishes them in bursts."""

    def __init__(self, redis: Any, keys: KeySpace, publisher: Publisher,
                 *, window_s: float = COALESCE_WINDOW_S) -> None:
        self._redis = redis
        self._keys = keys
        self._publisher = publisher
        self.window_s = window_s
        self._pending: set[str] = set()
        self._first_noted = 0.0

    def note(self, session: str) -> None:
        if not self._pending:
            self._first_noted = time.monotonic()
        self._pending.add(session)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def seconds_until_due(self) -> float:
        """How long until the pending queues should be flushed (0 when due)."""
        return max(0.0, self._first_noted + self.window_s - time.monotonic())

    async def flush(self) -> int:
        """Publish one event per pending, non-empty queue; returns how many."""
        sessions = sorted(self._pending)
        self._pending.clear()
        if not sessions:
            return 0
        lengths = await queue_lengths(self._redis, self._keys, sessions)
        events = [queue_event(self._keys, s, n) for s, n in lengths.items() if n > 0]
        if events:
            await self._publisher.publish_many(events)
            metrics.SOURCE_LAST_EVENT.labels(SOURCE).set(time.time())
        return len(events)


async def queue_lengths(redis: Any, keys: KeySpace, sessions: list[str]) -> dict[str, int]:
    """LLEN of each session's queue, in one round trip."""
    pipe = redis.pipeline(transaction=False)
    for session in sessions:
        pipe.llen(keys.queue(session))
    return {s: int(n) for s, n in zip(sessions, await pipe.execute(), strict=True)}


async def scan_queues(redis: Any, keys: KeySpace) -> list[QueueObserved]:
    """One ``queue.observed`` event per non-empty queue, found by SCAN."""
    sessions: list[str] = []
    async for raw in redis.scan_iter(match=keys.queue_glob, count=SCAN_COUNT, _type="list"):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        session = keys.session_of_queue(key)
        if session is None:
            metrics.INVALID_INPUTS.labels(SOURCE, "bad_session_name").inc()
            log.debug("queue key %r does not name a valid session", key[:120],
                      extra={"key": key[:120]})
            continue
        sessions.append(session)
    events: list[QueueObserved] = []
    for start in range(0, len(sessions), SCAN_COUNT):
        chunk = sessions[start : start + SCAN_COUNT]
        lengths = await queue_lengths(redis, keys, chunk)
        events.extend(queue_event(keys, s, n) for s, n in lengths.items() if n > 0)
    return events
