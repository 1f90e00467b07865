"""When each known gateway lease runs out, so its expiry is seen when it happens.

Redis deletes a key whose TTL has passed only when the key is touched, or when
its active expiry cycle happens to sample it; and only then does it send the
``expired`` notification that the sessions source turns into
``session.expired``.  The cycle samples about twenty keys with a TTL ten times
a second, so in a database with many keys that carry one (any application's,
and this project's own first-seen and dedupe keys), a lapsed lease can stay
unnoticed for minutes.

So the source keeps the deadline of every lease it knows (from the lease's
``PTTL``, read when it sees the lease at a scan or when a start or heartbeat
sets its expiry) and reads the ``PTTL`` again when the deadline comes.  A
lease that ran out is expired by that very read, and the notification
follows at once; a lease a heartbeat extended gets its new deadline.  One
read per lease per TTL: no polling of every lease on a timer.
"""

from __future__ import annotations

import heapq
import time
from typing import Any

SLACK_S = 0.05
"""Read a little after the deadline, so the TTL has surely run out on the server's clock."""


class LeaseDeadlines:
    """Deadlines (monotonic seconds) of the leases one sessions source knows."""

    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def note(self, session: str, pttl_ms: int, now: float | None = None) -> None:
        """Record a lease's remaining time as read by ``PTTL``; forget it if it has none."""
        if pttl_ms < 0:  # -2: gone; -1: no expiry (not a lease we can time)
            self._due.pop(session, None)
            return
        due = (time.monotonic() if now is None else now) + pttl_ms / 1000 + SLACK_S
        self._due[session] = due
        heapq.heappush(self._heap, (due, session))

    def seconds_until_next(self, now: float | None = None) -> float:
        self._drop_stale()
        if not self._heap:
            return float("inf")
        return max(0.0, self._heap[0][0] - (time.monotonic() if now is None else now))

    def take_due(self, now: float | None = None) -> list[str]:
        """Sessions whose deadline has come (each once, until noted again)."""
        now = time.monotonic() if now is None else now
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, session = heapq.heappop(self._heap)
            if self._due.get(session) == at:
                del self._due[session]
                due.append(session)
        return due

    def _drop_stale(self) -> None:
        """Heap entries superseded by a later note of the same lease."""
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)


async def read_ttls(redis: Any, lease_keys: list[str]) -> list[int]:
    """``PTTL`` of each key, in one round trip (reading a lapsed key makes Redis expire it)."""
    if not lease_keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in lease_keys:
        pipe.pttl(key)
    return [int(ttl) for ttl in await pipe.execute()]
