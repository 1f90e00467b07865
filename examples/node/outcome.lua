
-- KEYS: the audit stream, the key's open-actions hash, its settled-actions hash.
-- ARGV: action id, outcome, settled TTL (s), then the entry's fields and values.
-- Returns the entry id, or false when the intent is no longer open (already settled).
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return false end
local entry = {KEYS[1], '*'}
for i = 4, #ARGV do entry[#entry + 1] = ARGV[i] end
local id = redis.call('XADD', unpack(entry))
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
return id
