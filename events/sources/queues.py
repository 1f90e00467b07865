"""Queue discovery: which sessions' outgoing queues hold messages.

Two inputs feed it, both owned by :mod:`events.sources.gateway_leases`: keyspace
notifications of list pushes (``lpush``, ``rpush``, ``linsert``, ...) and a
SCAN of the queue keys (never KEYS) at start, after a reconnect, and on the
slow rescan.  A gateway may push thousands of messages a second to one queue,
and one event per push would flood the sessions stream, so pushes are
coalesced: a queue yields at most two ``queue.observed`` events per
``window_s`` (the first push at once, the rest at the window's end), each
carrying the queue's length when it was flushed.
Consumers are level-triggered, so the length is a hint, never a count.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from events import metrics
from events.contract import QueueObserved
from events.envelope import new_event
from events.keys import KeySpace
from events.publisher import Publisher
from events.replies import text

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
    return new_event(QueueObserved, source="queues", key=session, queue=keys.queue(session),
                     length=length)


class QueueCoalescer:
    """Collects the sessions whose queues were pushed to and publishes them in bursts.

    Leading and trailing edge: a queue not published within the last
    ``window_s`` is due at once (an isolated push costs no wait); pushes to a
    queue published less than ``window_s`` ago wait for the window's end and
    become one more event.  So a queue yields at most two events per window,
    and the last event always follows the last push.
    """

    def __init__(self, redis: Any, keys: KeySpace, publisher: Publisher,
                 *, window_s: float = COALESCE_WINDOW_S) -> None:
        self._redis = redis
        self._keys = keys
        self._publisher = publisher
        self.window_s = window_s
        self._due: dict[str, float] = {}
        self._published: dict[str, float] = {}

    def note(self, session: str) -> None:
        if session in self._due:
            return
        now = time.monotonic()
        last = self._published.get(session)
        self._due[session] = now if last is None else max(now, last + self.window_s)

    @property
    def pending(self) -> bool:
        return bool(self._due)

    def seconds_until_due(self) -> float:
        """How long until the next pending queue is due (0 when one is)."""
        if not self._due:
            return float("inf")
        return max(0.0, min(self._due.values()) - time.monotonic())

    async def flush(self, *, everything: bool = False) -> int:
        """Publish one event per due (or, with ``everything``, pending) non-empty queue."""
        now = time.monotonic()
        sessions = sorted(s for s, due in self._due.items() if everything or due <= now)
        for session in sessions:
            del self._due[session]
        self._published = {s: t for s, t in self._published.items() if now - t < self.window_s}
        if not sessions:
            return 0
        self._published.update(dict.fromkeys(sessions, now))
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
        key = text(raw)
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
