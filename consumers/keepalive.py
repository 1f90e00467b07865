"""Keeping the entries a live consumer holds from looking abandoned.

An entry this consumer has read but not yet acked (waiting in its buffer
behind a backlog, or waiting for a retry) is pending under its name, and its
idle time grows.  Past ``claim_min_idle_s`` every reclaimer in
the group, this consumer's own included, takes it for the entry of a dead
consumer: XAUTOCLAIM raises its delivery count, and after ``max_deliveries``
such claims it is dead-lettered without ever having failed.  A consumer with
thousands of entries buffered on a loaded machine lost whole bursts that way.

So while the consumer lives, every ``claim_min_idle_s / 3`` it touches the
entries it holds that no handler has yet (one inside a handler ages as before,
so a hung handler's entries are still reclaimed by a peer): :data:`TOUCH_LUA`
resets their idle time with ``XCLAIM … JUSTID`` (which does not count a
delivery), and only for those still pending
under its own name, so an entry a peer has legitimately claimed is never taken
back.  When the consumer dies the touching stops and the reclaimers take its
entries after ``claim_min_idle_s``, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from consumers.options import GroupOptions
from events.loops import HEARTBEATS, sleep_unless_stopped
from events.replies import is_nogroup

log = logging.getLogger(__name__)

TOUCH_LUA: Final = """
local args = {KEYS[1], ARGV[1], ARGV[2], 0}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #row > 0 then args[#args + 1] = ARGV[i] end
end
local owned = #args - 4
if owned == 0 then return 0 end
args[#args + 1] = 'JUSTID'  -- last: unpack() in the middle of a call gives one value only
redis.call('XCLAIM', unpack(args))
return owned
"""
"""KEYS: stream.  ARGV: group, consumer, entry ids.  Touches those pending under the consumer."""
CHUNK = 500
"""Entry ids per script call (one XPENDING lookup each)."""


class Keepalive:
    """Touches the entries ``held()`` names, per stream, until ``stopped`` is set."""

    def __init__(self, redis: Redis, options: GroupOptions,
                 held: Callable[[], Iterable[tuple[str, str]]], stopped: asyncio.Event) -> None:
        self._redis, self._options, self._held, self._stopped = redis, options, held, stopped
        self._touch = redis.register_script(TOUCH_LUA)
        self._name = f"consumer:{options.group}:keepalive"
        self.interval_s = max(0.1, options.claim_min_idle_s / 3)

    async def run(self) -> None:
        while not self._stopped.is_set():
            HEARTBEATS.beat(self._name)
            if await sleep_unless_stopped(self._stopped, self.interval_s):
                return
            await self.touch()

    async def touch(self) -> int:
        """One pass; how many entries were touched."""
        by_stream: dict[str, list[str]] = {}
        for stream, entry_id in list(self._held()):
            by_stream.setdefault(stream, []).append(entry_id)
        touched = 0
        for stream, ids in by_stream.items():
            for start in range(0, len(ids), CHUNK):
                try:
                    touched += int(await self._touch(
                        keys=[stream], args=[self._options.group, self._options.consumer,
                                             *ids[start:start + CHUNK]]))
                except ResponseError as e:
                    if not is_nogroup(e):  # the group is gone: the reader recreates it
                        raise
        return touched
