"""Stream retention that never trims what a consumer group has not read and acked.

``XADD … MAXLEN ~ N`` trims the oldest entries whether or not anyone has read
them: a bulk change larger than the cap used to push unread entries out of the
stream, and their keys were never reconciled.  So events are appended without
a trim, and :data:`TRIM_LUA` trims afterwards, in one script on the stream's
own key, by the groups' positions:

* the *floor* is, over every group of the stream, the smaller of its
  last-delivered id and its oldest pending id: entries at or after the floor
  are still needed by someone;
* a length cap trims with ``XTRIM MINID ~ floor LIMIT (length - cap)``: whole
  nodes older than the floor, never more than the excess over the cap; an age
  limit trims with ``MINID ~ min(cutoff, floor)``;
* a stream with no group at all (nobody reads it with XREADGROUP: the audit
  and dead-letter streams) is trimmed as before.

The cap is therefore a target, not a bound: while a group is behind, the
stream keeps every entry it has not read (the lag gauge and its alert show
that), and it shrinks back to the cap as the group catches up.

Loss is still possible by other hands (an operator's XTRIM, an older release
trimming with MAXLEN during an upgrade, a Redis failover).  :data:`GAP_LUA`
detects it for one group: our trim always keeps the entry at the group's
last-delivered id, so when the stream's first entry is newer than that id
(or the stream is empty although newer ids were generated) entries the group
had not read were removed.  Each gap is reported once per group (its boundary
is remembered in a hash beside the streams), so consumers can re-list the
store's keys (:mod:`consumers.relist`).
"""

from __future__ import annotations

from typing import Final

ID_FUNCTIONS: Final = """
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function fields_of(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function groups_of(stream)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  if not ok then return {} end
  local out = {}
  for _, g in ipairs(groups) do out[#out + 1] = fields_of(g) end
  return out
end
"""

TRIM_FUNCTION: Final = ID_FUNCTIONS + """
local function read_floor(stream, groups)
  local floor = nil
  for _, g in ipairs(groups) do
    local need = g['last-delivered-id']
    if tonumber(g['pending']) > 0 then
      local oldest = redis.call('XPENDING', stream, g['name'])[2]
      if id_less(oldest, need) then need = oldest end
    end
    if floor == nil or id_less(need, floor) then floor = need end
  end
  return floor
end
-- Trim one stream to its cap or age, never past what a group still needs.
-- Under its cap, a stream costs one XLEN: the groups are read only when there is a trim to make.
local function safe_trim(stream, cap, cutoff)
  if cap <= 0 and cutoff == '' then return 0 end
  local len = redis.call('XLEN', stream)
  if len == 0 or (cutoff == '' and len <= cap) then return 0 end
  local floor = read_floor(stream, groups_of(stream))
  if cutoff ~= '' then
    if floor ~= nil and id_less(floor, cutoff) then cutoff = floor end
    return redis.call('XTRIM', stream, 'MINID', '~', cutoff)
  end
  if floor == nil then return redis.call('XTRIM', stream, 'MAXLEN', '~', cap) end
  return redis.call('XTRIM', stream, 'MINID', '~', floor, 'LIMIT', len - cap)
end
"""

TRIM_LUA: Final = TRIM_FUNCTION + """
-- KEYS: the stream.  ARGV: cap (0: none), age cutoff id ('' : none).
return safe_trim(KEYS[1], tonumber(ARGV[1]), ARGV[2])
"""
"""Trim one stream; returns the number of entries removed."""

GAP_LUA: Final = ID_FUNCTIONS + """
-- KEYS: the stream, the hash of reported gaps.  ARGV: the group.
-- Returns the boundary id of a gap not reported before, or false.
local ok, raw = pcall(redis.call, 'XINFO', 'STREAM', KEYS[1])
if not ok then return false end
local info = fields_of(raw)
local last = nil
for _, g in ipairs(groups_of(KEYS[1])) do
  if g['name'] == ARGV[1] then last = g['last-delivered-id'] end
end
if last == nil or last == '0-0' then return false end
local boundary = info['last-generated-id']
if info['first-entry'] then boundary = info['first-entry'][1] end
if not id_less(last, boundary) then return false end
local field = ARGV[1] .. ' ' .. KEYS[1]
local seen = redis.call('HGET', KEYS[2], field)
if seen and not id_less(seen, boundary) then return false end
redis.call('HSET', KEYS[2], field, boundary)
return boundary
"""


def trim_args(*, max_len: int, cutoff_ms: int | None) -> list[object]:
    """ARGV of :data:`TRIM_LUA` for a cap (0: none) or an age cutoff in ms (``None``: none)."""
    return [max_len, "" if cutoff_ms is None else f"{cutoff_ms}-0"]
