"""Publishing events: XADD with retention, pipelined in batches.

Retention is explicit: either an approximate length cap (``MAXLEN ~``) or an
age (``MINID ~`` derived from the clock), so Redis trims cheaply as it goes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from events import codec, metrics
from events.contract import EventBase, stream_of, tag_of
from events.keys import KeySpace

BATCH_SIZE = 500
"""Events per pipeline round trip."""


@dataclass(frozen=True, slots=True)
class Retention:
    max_len: int = 1_000_000
    """Approximate cap on entries per stream; 0 = no cap."""
    max_age_s: float = 0.0
    """Approximate age limit; 0 = no limit."""


class Publisher:
    """Appends events to their streams."""

    def __init__(self, redis: Redis, keys: KeySpace, retention: Retention | None = None) -> None:
        self._redis = redis
        self._keys = keys
        self._retention = retention or Retention()

    def stream_key(self, event: EventBase) -> str:
        return self._keys.stream(stream_of(event))

    async def publish(self, event: EventBase) -> str:
        """Publish one event; returns its stream entry id."""
        return (await self.publish_many([event]))[0]

    async def publish_many(self, events: Sequence[EventBase]) -> list[str]:
        """Publish events in order, ``BATCH_SIZE`` per round trip; returns entry ids."""
        ids: list[str] = []
        for start in range(0, len(events), BATCH_SIZE):
            batch = events[start : start + BATCH_SIZE]
            pipe = self._redis.pipeline(transaction=False)
            trim = self._trim_args()
            for event in batch:
                pipe.xadd(self.stream_key(event), codec.encode(event), **trim)
            for event, entry_id in zip(batch, await pipe.execute(), strict=True):
                metrics.EVENTS_PUBLISHED.labels(stream_of(event), tag_of(type(event))).inc()
                ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
        return ids

    def _trim_args(self) -> dict[str, object]:
        if self._retention.max_age_s > 0:
            cutoff_ms = int((time.time() - self._retention.max_age_s) * 1000)
            return {"minid": f"{cutoff_ms}-0", "approximate": True}
        if self._retention.max_len > 0:
            return {"maxlen": self._retention.max_len, "approximate": True}
        return {}
