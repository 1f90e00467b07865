"""Publishing events: XADD pipelined in batches, then trimming by retention.

Retention is explicit: either an approximate length cap or an age (a
``MINID`` derived from the clock).  Each batch ends with one trim script per lane of each
stream it touched (:mod:`events.retention`), which never removes an entry a
consumer group has not read and acked: a bulk change larger than the cap waits
in the stream instead of pushing unread entries out.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from events import codec, metrics
from events.contract import EventBase, Lane, stream_of, tag_of
from events.keys import KeySpace
from events.pipeline_scripts import queue_eval
from events.replies import text
from events.retention import TRIM_LUA, trim_args
from events.streamids import StreamExhausted, describe, find_exhausted, is_exhausted_error

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

    def stream_key(self, event: EventBase, lane: Lane = "live") -> str:
        """The Redis stream of ``event``: its key's partition's, on the bulk lane when
        asked and it has one."""
        return self._keys.stream_for(stream_of(event), event.key, lane)

    async def publish(self, event: EventBase, *, lane: Lane = "live") -> str:
        """Publish one event; returns its stream entry id."""
        return (await self.publish_many([event], lane=lane))[0]

    async def publish_many(self, events: Sequence[EventBase], *, batch_size: int = BATCH_SIZE,
                           lane: Lane | Sequence[Lane] = "live") -> list[str]:
        """Publish events in order, ``batch_size`` per round trip; returns entry ids.

        ``lane="bulk"``: conversation and session events go to their bulk lane, which
        consumers read only with the capacity live changes leave (snapshots, listings,
        re-listings, outbox backlogs).  A sequence gives each event its own lane; the
        XADDs stay in the events' order either way.
        """
        lanes = [lane] * len(events) if isinstance(lane, str) else list(lane)
        if len(lanes) != len(events):
            raise ValueError(f"{len(lanes)} lanes for {len(events)} events")
        ids: list[str] = []
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            pipe = self._redis.pipeline(transaction=False)
            streams = [self.stream_key(event, event_lane) for event, event_lane
                       in zip(batch, lanes[start : start + batch_size], strict=True)]
            for stream, event in zip(streams, batch, strict=True):
                pipe.xadd(stream, codec.encode(event))
            for stream in self._trimmed(streams):  # once per stream, after its XADDs
                self.queue_trim(pipe, stream)
            try:
                replies = await pipe.execute()
            except ResponseError as e:
                if not is_exhausted_error(e):
                    raise
                names = {stream_of(event): key for event, key in zip(batch, streams, strict=True)}
                raise StreamExhausted(describe(await find_exhausted(self._redis, names))) from e
            ids += [text(entry_id) for entry_id in replies[:len(batch)]]  # trim replies follow
            _count_published(batch)
        return ids

    def _trimmed(self, streams: Sequence[str]) -> list[str]:
        """The streams a batch's trim covers: both lanes of every stream (and partition) it
        touched, so a bulk lane read and acked shrinks back with the next live change too."""
        return [lane for stream in dict.fromkeys(streams) for lane in self._keys.lanes_of(stream)]

    def add_to(self, pipe: Any, event: EventBase) -> None:
        """Queue the XADD of ``event``, and its trim, on a caller's MULTI (one that also
        writes other keys of the ``{events}`` slot); the caller counts it after EXEC."""
        stream = self.stream_key(event)
        pipe.xadd(stream, codec.encode(event))
        self.queue_trim(pipe, stream)

    def queue_trim(self, pipe: Any, stream: str) -> None:
        """Queue the trim of ``stream`` by the retention on ``pipe``, as a publish does
        (after an XADD made elsewhere, e.g. by a script)."""
        trim = self._trim_args()
        if trim is not None:
            queue_eval(pipe, TRIM_LUA, [stream], trim)

    def _trim_args(self) -> list[object] | None:
        if self._retention.max_age_s > 0:
            cutoff_ms = int((time.time() - self._retention.max_age_s) * 1000)
            return trim_args(max_len=0, cutoff_ms=cutoff_ms)
        if self._retention.max_len > 0:
            return trim_args(max_len=self._retention.max_len, cutoff_ms=None)
        return None


def _count_published(events: Sequence[EventBase]) -> None:
    """Count a batch's events by stream and type: one counter update per pair, not per
    event (a labelled update per event was about 4 % of the relay's samples)."""
    for (stream, kind), n in Counter((stream_of(e), type(e)) for e in events).items():
        metrics.EVENTS_PUBLISHED.labels(stream, tag_of(kind)).inc(n)
