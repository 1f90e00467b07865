"""The Lua scripts that move a session's messages between its queue and its parked list.

They live at the bottom layer because two parts run them: the gateway's start
handshake (:mod:`events.gateway`, and any gateway in another language, which
runs :data:`START` as it is printed in ``docs/gateway.md``) and the
parked-queue store of the ``sessions`` group (:mod:`consumers.stores.parked_queues`).
One text per move, so the handshake and the group's backup restore cannot
diverge.

Every key a script touches shares the queue key as its Redis Cluster hash tag
(see :mod:`events.keys`): the lease ``{prefix}lease:{queue:s}``, the queue
``queue:s`` itself, ``{prefix}parked:{queue:s}`` and
``{prefix}parked-meta:{queue:s}``.  So each script runs in one slot, and no
message is ever in two places or in none.

The head of a queue is index 0 (producers RPUSH, the gateway pops from the
left).  Restoring LPUSHes the parked messages back so the oldest parked one
is first, ahead of anything pushed since.  Lists are moved in chunks of
:data:`CHUNK` arguments to stay below Lua's ``unpack`` limit.
"""

from __future__ import annotations

CHUNK = 1000
"""Messages per RPUSH/LPUSH inside a script (Lua's unpack has a limit)."""

_CHUNK = f"local CHUNK = {CHUNK}\n"

PUSH_HEAD = _CHUNK + """
local function push_head(key, items, n)
  local hi = n
  while hi >= 1 do
    local lo = math.max(hi - CHUNK + 1, 1)
    local args = {}
    for i = hi, lo, -1 do args[#args + 1] = items[i] end
    redis.call('LPUSH', key, unpack(args))
    hi = lo - 1
  end
end
"""

_RESTORE_FUNCTION = PUSH_HEAD + """
-- Put the parked messages back at the head of the queue, oldest first.  Batches
-- parked at or before cutoff_ms (0: none) at the front stay parked, for the
-- reconciler to drop with their content audited.  Returns how many moved.
local function restore(queue, parked, meta, cutoff_ms)
  local keep, expired = 0, {}
  if cutoff_ms > 0 then
    local raw = redis.call('HGET', meta, 'batches')
    if raw then
      for _, b in ipairs(cjson.decode(raw)) do
        if b.at > cutoff_ms then break end
        expired[#expired + 1] = b
        keep = keep + b.count
      end
    end
    keep = math.min(keep, redis.call('LLEN', parked))
  end
  local items = redis.call('LRANGE', parked, keep, -1)
  local n = #items
  if n > 0 then push_head(queue, items, n) end
  if keep == 0 then
    redis.call('DEL', parked, meta)
  else
    redis.call('LTRIM', parked, 0, keep - 1)
    redis.call('HSET', meta, 'batches', cjson.encode(expired))
  end
  return n
end
"""

START = _RESTORE_FUNCTION + """
-- The gateway's start handshake.
-- KEYS: lease, queue, parked list, parked-meta (one hash tag: the queue key)
-- ARGV: lease value, lease TTL in seconds, retention cutoff in ms (0: restore all),
--       and '0' to take the lease only (nothing was parked when the gateway looked)
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
if ARGV[4] == '0' then return 0 end
return restore(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3]) or 0)
"""

RESTORE = _RESTORE_FUNCTION + """
-- KEYS: queue, parked list, parked-meta
return restore(KEYS[1], KEYS[2], KEYS[3], 0)
"""

PARK = _CHUNK + """
-- KEYS: queue, parked list, parked-meta, lease;  ARGV: now in ms, cause
-- A live session's queue is its gateway's to drain: nothing moves while the lease exists.
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local n = #items
if n == 0 then return 0 end
for i = 1, n, CHUNK do
  redis.call('RPUSH', KEYS[2], unpack(items, i, math.min(i + CHUNK - 1, n)))
end
redis.call('DEL', KEYS[1])
local raw = redis.call('HGET', KEYS[3], 'batches')
local batches = {}
if raw then batches = cjson.decode(raw) end
batches[#batches + 1] = {at = tonumber(ARGV[1]), count = n, cause = ARGV[2]}
redis.call('HSET', KEYS[3], 'batches', cjson.encode(batches))
return n
"""
