local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[6]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[6] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[7]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[7] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[8]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[8] .. ' holds a ' .. t .. ', want a list') end

local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end

local endFirst, endSize
local function claimedEnd(meta)
  if not endFirst then
    local r = redis.call('HMGET', meta, 'endfirst', 'endsize')
    local f, n = tonumber(r[1] or ''), tonumber(r[2] or '')
    if f and n and f >= 0 and n > 0 and f % 1 == 0 and n % 1 == 0 and f <= 999999999999999 then
      endFirst, endSize = f, n
    else
      endFirst, endSize = 0, 0
    end
  end
  return endFirst, endSize
end
local function setClaimedEnd(meta, f, n)
  endFirst, endSize = f, n
  if n > 0 then
    redis.call('HSET', meta, 'endfirst', string.format('%d', f), 'endsize', string.format('%d', n))
  else
    redis.call('HDEL', meta, 'endfirst', 'endsize')
  end
end
local function inEnd(meta, first)
  local f, n = claimedEnd(meta)
  first = tonumber(first)
  if first and n > 0 and first >= f and first < f + n then return first - f end
  return nil
end
local function recordCount(v)
  if not v or string.byte(v, 1) ~= 35 then return nil end
  local n = string.match(v, '^.%d+/(%d+)$')
  if n then return tonumber(n) end
  local ids = string.match(v, '^.%d+:(.*)$')
  if ids and #ids > 0 and #ids % 20 == 0 then return #ids / 20 end
  return nil
end

local function idsLater(v)
  return string.byte(v, 1) == 35 and string.match(v, '^.%d+/%d+$') ~= nil
end
local function claimKeys(claims, first)
  local l = string.sub(claims, 1, -#'order' - 1) .. 'claim:' .. first
  return l, l .. ':done'
end
local function bitsOK(d)
  local t = redis.call('TYPE', d).ok
  return t == 'string' or t == 'none'
end
local function claimTypes(claims, from, to, step)
  local seen = {}
  for i = from, to, step do
    if ARGV[i] ~= '' and not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      local l, d = claimKeys(claims, ARGV[i])
      for _, kt in ipairs({{l, 'list'}, {d, 'string'}}) do
        local t = redis.call('TYPE', kt[1]).ok
        if t ~= kt[2] and t ~= 'none' then
          return redis.error_reply('QUGOWRONGTYPE ' .. kt[1] .. ' holds a ' .. t .. ', want a ' .. kt[2])
        end
      end
    end
  end
end

local function markTaken(meta, n)
  local p = tonumber(redis.call('HGET', meta, 'marktaken') or '')
  if not p or p % 1 ~= 0 or math.abs(p) > 999999999999999 then
    -- Counted again from zero: a bound set from the count that is gone
    -- goes with it.
    p = 0
    redis.call('HDEL', meta, 'markbound')
  end
  p = p + n
  redis.call('HSET', meta, 'marktaken', string.format('%d', p))
  return p
end
local function markBound(meta)
  local b = tonumber(redis.call('HGET', meta, 'markbound') or '')
  if b and b % 1 == 0 and math.abs(b) <= 999999999999999 then return b end
  return nil
end
local function raiseMarkBound(meta, ready, fresh)
  local _, held = claimedEnd(meta)
  local len = redis.call('LLEN', ready)
  if held > len then held = 0 end
  local b = markTaken(meta, 0) + len - held
  local old = not fresh and markBound(meta)
  if not old or old < b then redis.call('HSET', meta, 'markbound', string.format('%d', b)) end
end

local function pending()
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return true end
  local given, read = {}, {}
  local p = tonumber(ARGV[3])
  for i = 4, 3 + 2 * p, 2 do given[ARGV[i] .. ':' .. ARGV[i + 1]] = true end
  for i = 4 + 2 * p, #ARGV do read[ARGV[i]] = true end
  local all = redis.call('HGETALL', KEYS[7])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    if idsLater(v) then
      if not read[all[i]] then return 'recheck' end
      -- Its places the caller found in its list.
      local _, d = claimKeys(KEYS[7], all[i])
      for j = 4, 3 + 2 * p, 2 do
        if ARGV[j] == all[i] and bitsOK(d) and redis.call('GETBIT', d, ARGV[j + 1]) == 0 then return true end
      end
    end
    local base = string.byte(v, 1) == 35 and string.find(v, ':', 2, true)
    local from = base and base + 1
    while from do
      local at = string.find(v, ARGV[1], from, true)
      if not at then break end
      if (at - base - 1) % 20 == 0 then
        local place = string.format('%d', (at - base - 1) / 20)
        -- A place the caller did not read was claimed since: pending.
        if not given[all[i] .. ':' .. place] then return true end
        local _, d = claimKeys(KEYS[7], all[i])
        if bitsOK(d) and redis.call('GETBIT', d, place) == 0 then return true end
      end
      from = at + 1
    end
  end
  return false
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local e = redis.call('HGET', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  incr(KEYS[6], 'cancelled', 1)
  return {'scheduled', e or ''}
end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 1 then return {'dead'} end
-- The first mark waits for no bound set before it.
local fresh = redis.call('EXISTS', KEYS[5]) == 0
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
-- Before the mark may be left for a second call (recheck): claims made
-- in between may pass a bound set before it.
raiseMarkBound(KEYS[6], KEYS[8], fresh)
local found = pending()
if found == 'recheck' then return {'recheck'} end
if found then return {'pending'} end
return {'marked'}
