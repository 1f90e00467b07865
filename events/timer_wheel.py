"""The timer wheel: deadlines as events, fired exactly once.

A deadline is a member of a sorted set (score: due time in milliseconds) and
the encoded event to publish when it is due, kept in a hash beside it.  Both
keys carry the hash tag of the streams the event goes to (``{events}``, or its
key's partition's ``{events-N}``), so one Lua script can take every due
deadline of a partition and XADD its event in one atomic step: however many
timer loops run, a deadline is removed by exactly one script call, and its
event is appended exactly once.

Scheduling is idempotent per member: scheduling a member again replaces its
due time and event, never adds a second deadline.  Callers name members after
what they time (``bot:{key}:{started_at}``), so a repeated schedule of the same
run is a no-op.  When a schedule makes a member the earliest deadline, the
script publishes on a channel so sleeping timer loops wake up early.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.exceptions import ResponseError

from events import codec
from events.contract import CONVERSATIONS, SESSIONS, EventBase, stream_of
from events.keys import KeySpace
from events.replies import text
from events.retention import TRIM_FUNCTION
from events.streamids import StreamExhausted, describe, find_exhausted, is_exhausted_error

FIRE_BATCH = 500
"""Deadlines fired per script call (a long backlog is fired in several calls)."""

# KEYS: deadlines, payloads.  ARGV: member, due (ms), payload, the wake-up channel (not a
# key: one channel serves every partition's slot).
_SCHEDULE = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local first = redis.call('ZRANGE', KEYS[1], 0, 0)
if first[1] == ARGV[1] then
  redis.call('PUBLISH', ARGV[4], ARGV[2])
end
return 1
"""

# KEYS: a partition's deadlines, payloads, then every stream of it a payload may name.
# ARGV: now (ms), batch size, stream cap (0: none).  Streams are trimmed after
# the XADDs by the groups' positions (events.retention), never past unread entries.
_FIRE = TRIM_FUNCTION + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local allowed = {}
for i = 3, #KEYS do allowed[KEYS[i]] = false end
local fired = 0
local lost = 0
for _, member in ipairs(due) do
  local raw = redis.call('HGET', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
  local ok, p = pcall(cjson.decode, raw or '')
  if ok and type(p) == 'table' and allowed[p.stream] ~= nil then
    local added = redis.pcall('XADD', p.stream, '*', 'v', p.v, 'type', p.type, 'key', p.key,
                              'data', p.data)
    if type(added) == 'table' and added.err then  -- e.g. the stream ran out of ids: keep it
      redis.call('ZADD', KEYS[1], ARGV[1], member)
      redis.call('HSET', KEYS[2], member, raw)
      return redis.error_reply(added.err)
    end
    allowed[p.stream] = true
    fired = fired + 1
  else
    lost = lost + 1
  end
end
for stream, touched in pairs(allowed) do
  if touched then safe_trim(stream, tonumber(ARGV[3]), '') end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {fired, lost, nxt[2] or '', redis.call('ZCARD', KEYS[1])}
"""


@dataclass(frozen=True, slots=True)
class Fired:
    """What one :meth:`TimerWheel.fire_due` call did."""

    fired: int
    """Events appended to their streams."""
    unreadable: int
    """Deadlines dropped because their stored payload could not be read."""
    next_due: float | None
    """Unix time of the earliest remaining deadline."""
    scheduled: int
    """Deadlines still waiting."""


class TimerWheel:
    """Schedules, cancels and fires deadlines in Redis."""

    def __init__(self, redis: Any, keys: KeySpace, *, max_len: int = 1_000_000) -> None:
        self._redis = redis
        self._keys = keys
        self._max_len = max_len
        self._schedule = redis.register_script(_SCHEDULE)
        self._fire = redis.register_script(_FIRE)
        self._partitions = range(keys.partitions)

    @property
    def wake_channel(self) -> str:
        return self._keys.deadlines_wake

    def _streams(self, partition: int) -> dict[str, str]:
        """The streams a partition's deadlines publish to, by name."""
        return {name: self._keys.partition_lanes(name, partition)[0]
                for name in (CONVERSATIONS, SESSIONS)}

    async def schedule(self, member: str, due_unix: float, event: EventBase) -> None:
        """Publish ``event`` at ``due_unix``; replaces an earlier schedule of ``member``."""
        name = stream_of(event)
        if name not in (CONVERSATIONS, SESSIONS):
            raise ValueError(f"the timer wheel does not publish to {name!r}")
        partition = self._keys.partition_of(event.key)
        fields = codec.encode(event)
        payload = msgspec.json.encode({
            "stream": self._streams(partition)[name],
            **{field: value.decode() for field, value in fields.items()},
        })
        await self._schedule(
            keys=[self._keys.deadlines(partition), self._keys.deadline_payloads(partition)],
            args=[member, int(due_unix * 1000), payload, self._keys.deadlines_wake],
        )

    async def cancel(self, member: str, key: str) -> bool:
        """Forget the deadline ``member`` of ``key`` (the key its event carries); ``True``
        if it was waiting."""
        partition = self._keys.partition_of(key)
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self._keys.deadlines(partition), member)
        pipe.hdel(self._keys.deadline_payloads(partition), member)
        removed, _ = await pipe.execute()
        return bool(removed)

    async def fire_due(self, now: float | None = None, *, batch: int = FIRE_BATCH) -> Fired:
        """Take the deadlines due at ``now`` (default: the clock), at most ``batch`` per
        partition, and publish their events."""
        now_ms = int((time.time() if now is None else now) * 1000)
        fired = [await self._fire_partition(p, now_ms, batch) for p in self._partitions]
        dues = [f.next_due for f in fired if f.next_due is not None]
        return Fired(fired=sum(f.fired for f in fired), unreadable=sum(f.unreadable for f in fired),
                     next_due=min(dues) if dues else None,
                     scheduled=sum(f.scheduled for f in fired))

    async def _fire_partition(self, partition: int, now_ms: int, batch: int) -> Fired:
        streams = self._streams(partition)
        try:
            reply = await self._fire(
                keys=[self._keys.deadlines(partition), self._keys.deadline_payloads(partition),
                      *streams.values()],
                args=[now_ms, batch, self._max_len],
            )
        except ResponseError as e:  # the deadline that could not be appended is kept
            if not is_exhausted_error(e):
                raise
            raise StreamExhausted(describe(await find_exhausted(self._redis, streams))) from e
        fired, lost, next_ms, count = reply
        next_text = text(next_ms)
        return Fired(
            fired=int(fired),
            unreadable=int(lost),
            next_due=float(next_text) / 1000 if next_text else None,
            scheduled=int(count),
        )

    async def next_due(self) -> float | None:
        firsts = [await self._redis.zrange(self._keys.deadlines(p), 0, 0, withscores=True)
                  for p in self._partitions]
        dues = [float(first[0][1]) / 1000 for first in firsts if first]
        return min(dues) if dues else None

    async def count(self, due_by: float | None = None) -> int:
        """Deadlines waiting, over every partition; only those due by ``due_by`` when given."""
        top = "+inf" if due_by is None else int(due_by * 1000)
        return sum([int(await self._redis.zcount(self._keys.deadlines(p), "-inf", top))
                    for p in self._partitions])
