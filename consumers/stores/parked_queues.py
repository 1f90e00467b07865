"""Parked queues: the Redis adapter that moves a session's messages aside and back.

A gateway queue ``queue:{s}`` is a Redis list: producers RPUSH, the gateway
pops from the head (index 0).  When its session is not live the messages are
*parked*, never deleted:

* **park** moves every message of the queue, in order, to the tail of the
  parked list ``{prefix}parked:{queue:{s}}`` and appends a batch record
  (when, how many, which event) to the hash ``{prefix}parked-meta:{queue:{s}}``;
* **restore** puts every parked message back at the *head* of the queue in
  its original order, ahead of anything pushed since, and forgets the batches;
* **take expired** removes the oldest batches parked before a cutoff and
  returns their messages, so the caller can audit their content.

Each of these is one Lua script over keys that share the queue key as their
hash tag (see :mod:`events.keys`), so the script runs in one Cluster slot and
no message is ever in two places or in none.  Park and restore are the texts
of :mod:`events.parked_scripts`, which the gateway's start handshake runs too:
a returning session puts its own messages back, atomically with taking its
lease, even when no reconciler runs; the restore here is the backup, and
finding nothing parked it does nothing.

The lease is in the same slot, so park and the ``drop`` policy's take check
it inside their script: a session that is live by then keeps its queue.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from events.keys import KeySpace
from events.parked_scripts import PARK, PUSH_HEAD, RESTORE
from events.replies import text

LIST_PAGE = 1000
"""Parked sessions read per round trip when listing them."""

TAKE_QUEUE = """
-- KEYS: queue, lease
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return items
"""

TAKE_EXPIRED = """
local raw = redis.call('HGET', KEYS[2], 'batches')
if not raw then return {'[]'} end
local batches = cjson.decode(raw)
local expired, kept, total = {}, {}, 0
for _, b in ipairs(batches) do
  if #kept == 0 and b.at <= tonumber(ARGV[1]) then
    expired[#expired + 1] = b
    total = total + b.count
  else
    kept[#kept + 1] = b
  end
end
if #expired == 0 then return {'[]'} end
total = math.min(total, redis.call('LLEN', KEYS[1]))
local items = {}
if total > 0 then
  items = redis.call('LRANGE', KEYS[1], 0, total - 1)
  redis.call('LTRIM', KEYS[1], total, -1)
end
if #kept == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  redis.call('HSET', KEYS[2], 'batches', cjson.encode(kept))
end
local out = {cjson.encode(expired)}
for _, item in ipairs(items) do out[#out + 1] = item end
return out
"""

PUT_BACK = PUSH_HEAD + """
local n = #ARGV - 1
if n > 0 then
  local items = {}
  for i = 2, #ARGV do items[#items + 1] = ARGV[i] end
  push_head(KEYS[1], items, n)
end
if ARGV[1] ~= '' then
  local back = cjson.decode(ARGV[1])
  local raw = redis.call('HGET', KEYS[2], 'batches')
  if raw then
    for _, b in ipairs(cjson.decode(raw)) do back[#back + 1] = b end
  end
  redis.call('HSET', KEYS[2], 'batches', cjson.encode(back))
end
return n
"""


@dataclass(frozen=True, slots=True)
class ParkedBatch:
    """Messages parked together: when (Unix seconds), how many, and the event that caused it."""

    at: float
    count: int
    cause: str = ""


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the stores hold for one session right now."""

    session: str
    live: bool
    queue_length: int
    parked_length: int
    batches: tuple[ParkedBatch, ...]
    noted: str | None = None
    """The last report signature recorded for this session (see the handler)."""


@dataclass(frozen=True, slots=True)
class ParkedSummary:
    session: str
    queue: str
    parked: int
    oldest_at: float | None
    queue_length: int
    live: bool


class ParkedQueues:
    """Park, restore, list and expire the parked messages of gateway sessions."""

    def __init__(self, redis: Redis, keys: KeySpace) -> None:
        self._redis = redis
        self._keys = keys
        self._park = redis.register_script(PARK)
        self._restore = redis.register_script(RESTORE)
        self._take_queue = redis.register_script(TAKE_QUEUE)
        self._take_expired = redis.register_script(TAKE_EXPIRED)
        self._put_back = redis.register_script(PUT_BACK)

    def _slot_keys(self, session: str) -> list[str]:
        k = self._keys
        return [k.queue(session), k.parked(session), k.parked_meta(session)]

    async def observe(self, session: str) -> SessionState:
        """Lease, queue length, parked length and batches, read in one round trip."""
        return (await self.observe_many([session]))[0]

    async def observe_many(self, sessions: list[str]) -> list[SessionState]:
        """:meth:`observe` for several sessions, in one pipelined round trip."""
        k = self._keys
        pipe = self._redis.pipeline(transaction=False)
        for session in sessions:
            pipe.exists(k.lease(session))
            pipe.llen(k.queue(session))
            pipe.llen(k.parked(session))
            pipe.hget(k.parked_meta(session), "batches")
            pipe.get(k.session_noted(session))
        replies = await pipe.execute()
        out = []
        for n, session in enumerate(sessions):
            live, queue_length, parked_length, raw, noted = replies[5 * n : 5 * n + 5]
            out.append(SessionState(
                session=session, live=bool(live), queue_length=int(queue_length),
                parked_length=int(parked_length), batches=decode_batches(raw),
                noted=text(noted)))
        return out

    async def lease_exists(self, session: str) -> bool:
        return bool(await self._redis.exists(self._keys.lease(session)))

    async def park(self, session: str, *, now: float, cause: str) -> int:
        """Move every queued message to the parked list; returns how many moved.

        Nothing moves (0) when the session's lease exists when the script runs.
        """
        moved = await self._park(keys=[*self._slot_keys(session), self._keys.lease(session)],
                                 args=[int(now * 1000), cause])
        return int(moved)

    async def restore(self, session: str) -> int:
        """Put every parked message back at the head of the queue, in order."""
        return int(await self._restore(keys=self._slot_keys(session)))

    async def take_queue(self, session: str) -> list[bytes]:
        """Remove and return every queued message (the ``drop`` policy); none while live."""
        k = self._keys
        return list(await self._take_queue(keys=[k.queue(session), k.lease(session)]))

    async def take_expired(self, session: str, *, cutoff: float) -> tuple[list[ParkedBatch], list[bytes]]:
        """Remove and return the oldest batches parked at or before ``cutoff``."""
        k = self._keys
        reply = await self._take_expired(
            keys=[k.parked(session), k.parked_meta(session)], args=[int(cutoff * 1000)])
        return list(decode_batches(reply[0])), list(reply[1:])

    async def put_back_queue(self, session: str, items: list[bytes]) -> None:
        """Undo :meth:`take_queue`: the messages go back to the head, in order."""
        k = self._keys
        await self._put_back(keys=[k.queue(session), k.parked_meta(session)], args=["", *items])

    async def put_back_parked(self, session: str, batches: list[ParkedBatch], items: list[bytes]) -> None:
        """Undo :meth:`take_expired`: messages and batch records go back to the front."""
        k = self._keys
        await self._put_back(keys=[k.parked(session), k.parked_meta(session)],
                             args=[encode_batches(batches), *items])

    async def queued(self, session: str) -> list[bytes]:
        return list(await self._redis.lrange(self._keys.queue(session), 0, -1))

    async def parked(self, session: str, count: int = -1) -> list[bytes]:
        stop = -1 if count < 0 else count - 1
        if stop < -1 or count == 0:
            return []
        return list(await self._redis.lrange(self._keys.parked(session), 0, stop))

    async def note(self, session: str, signature: str | None, *, ttl_s: int) -> None:
        key = self._keys.session_noted(session)
        if signature is None:
            await self._redis.delete(key)
        else:
            await self._redis.set(key, signature, ex=ttl_s)

    async def list_parked(self) -> list[ParkedSummary]:
        """Every session with parked messages, oldest batch first (a SCAN page per round trip)."""
        out: list[ParkedSummary] = []
        page: list[str] = []
        async for raw_key in self._redis.scan_iter(match=self._keys.parked_glob, count=LIST_PAGE):
            session = self._keys.session_of_parked(text(raw_key))
            if session is not None:
                page.append(session)
            if len(page) >= LIST_PAGE:
                out += self._summaries(await self.observe_many(page))
                page = []
        if page:
            out += self._summaries(await self.observe_many(page))
        out.sort(key=lambda s: (s.oldest_at or 0.0, s.session))
        return out

    def _summaries(self, states: list[SessionState]) -> list[ParkedSummary]:
        return [ParkedSummary(session=s.session, queue=self._keys.queue(s.session),
                              parked=s.parked_length,
                              oldest_at=s.batches[0].at if s.batches else None,
                              queue_length=s.queue_length, live=s.live)
                for s in states if s.parked_length]


def decode_batches(raw: bytes | str | None) -> tuple[ParkedBatch, ...]:
    """Batch records as stored by the scripts (``at`` in milliseconds)."""
    if not raw:
        return ()
    try:
        items = json.loads(raw)
    except ValueError:
        return ()
    if not isinstance(items, list):  # cjson encodes an empty table as {}
        return ()
    return tuple(ParkedBatch(at=float(b["at"]) / 1000, count=int(b["count"]),
                             cause=str(b.get("cause", ""))) for b in items)


def encode_batches(batches: list[ParkedBatch]) -> str:
    if not batches:
        return ""
    return json.dumps([{"at": int(b.at * 1000), "count": b.count, "cause": b.cause}
                       for b in batches])


def describe_messages(items: list[bytes]) -> list[Any]:
    """Message contents for an audit entry: text as is, other bytes as base64."""
    out: list[Any] = []
    for item in items:
        try:
            out.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            out.append({"base64": base64.b64encode(item).decode("ascii")})
    return out
