"""Noticing that a group's stream lost entries it had not handled.

Three signs, each reported once (metric ``reconciler_stream_gaps_total``, an
error log line, and the group's ``on_gap`` callback, which re-lists the
store's keys, :mod:`consumers.relist`):

* before each read, :data:`events.retention.GAP_LUA` finds the stream's first
  entry newer than the group's last-delivered id (entries after it are gone);
  the check is pipelined in front of XREADGROUP, so it costs no round trip;
* a pending entry comes back from XCLAIM / XAUTOCLAIM as deleted;
* the group itself had to be recreated (the stream was deleted or flushed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from events import metrics
from events.keys import beside, stream_label
from events.pipeline_scripts import queue_eval
from events.replies import text
from events.retention import GAP_LUA

log = logging.getLogger(__name__)

OnGap = Callable[[str], None]
"""``on_gap(reason)``: called once per gap found."""


class GapWatch:
    """Checks one group's streams for gaps and reports them."""

    def __init__(self, redis: Any, *, group: str, gaps_key: str, on_gap: OnGap | None) -> None:
        self._redis = redis
        self.group = group
        self._gaps_key = gaps_key
        self._on_gap = on_gap
        self._checked = bool(gaps_key)

    async def read(self, consumer: str, streams: dict[str, str], *, count: int,
                   block_ms: int | None) -> Any:
        """XREADGROUP (``block_ms=None``: without BLOCK), with one gap check per stream
        pipelined in front of it when on."""
        if not self._checked:
            return await self._redis.xreadgroup(self.group, consumer, streams, count=count,
                                                block=block_ms)
        pipe = self._redis.pipeline(transaction=False)
        for stream in streams:
            queue_eval(pipe, GAP_LUA, [stream, beside(self._gaps_key, stream)], [self.group])
        pipe.xreadgroup(self.group, consumer, streams, count=count, block=block_ms)
        *checks, reply = await pipe.execute()
        for stream, boundary in zip(streams, checks, strict=True):
            if boundary:
                self.lost(stream, f"entries before {text(boundary)} were removed unread")
        return reply

    def lost(self, stream: str, detail: str) -> None:
        """Count, log and re-list: entries of ``stream`` were lost to this group."""
        name = stream_label(stream)  # e.g. conversations:bulk, or conversations:bulk@3
        metrics.STREAM_GAPS.labels(name, self.group).inc()
        log.error("group %s lost entries of %s: %s; re-listing its keys", self.group, stream,
                  detail, extra={"group": self.group, "stream": stream})
        if self._on_gap is not None:
            self._on_gap(f"{name}: {detail}")
