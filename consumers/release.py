"""Handing a stopping consumer's unfinished entries back to its group.

At the end of a shutdown, whatever is still pending under the consumer's name
is claimed by :data:`RELEASED_CONSUMER` with its idle time already past the
reclaim threshold, so a live consumer's reclaimer takes it at once; then the
consumer leaves the group, so nothing is left pending under a name that is gone.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ResponseError

from consumers.options import GroupOptions
from events.replies import is_nogroup, text

log = logging.getLogger(__name__)

RELEASED_CONSUMER = "released"
"""Where entries go that a stopping consumer could not finish."""

PAGE = 1000


async def release_pending(redis: Any, opts: GroupOptions) -> None:
    """Hand every entry pending under ``opts.consumer`` to the group, then leave it."""
    idle_ms = int(opts.claim_min_idle_s * 1000)
    for stream in opts.streams:
        try:
            while rows := await redis.xpending_range(
                stream, opts.group, "-", "+", PAGE, consumername=opts.consumer
            ):
                ids = [text(row["message_id"]) for row in rows]
                await redis.xclaim(
                    stream, opts.group, RELEASED_CONSUMER, 0, ids, idle=idle_ms, justid=True
                )
                log.info("released %d unfinished entries of %s", len(ids), stream,
                         extra={"stream": stream, "group": opts.group})
            await redis.xgroup_delconsumer(stream, opts.group, opts.consumer)
        except ResponseError as e:
            if not is_nogroup(e):
                raise
