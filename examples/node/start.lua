local CHUNK = 1000

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

-- The gateway's start handshake.
-- KEYS: lease, queue, parked list, parked-meta (one hash tag: the queue key)
-- ARGV: lease value, lease TTL in seconds, retention cutoff in ms (0: restore all),
--       and '0' to take the lease only (nothing was parked when the gateway looked)
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
if ARGV[4] == '0' then return 0 end
return restore(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[3]) or 0)
