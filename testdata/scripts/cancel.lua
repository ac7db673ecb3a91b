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

local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
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
  for i = from, to, step do
    if ARGV[i] ~= '' then
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
redis.call('HSET', KEYS[5], ARGV[1], ARGV[2])
local found = pending()
if found == 'recheck' then return {'recheck'} end
if found then return {'pending'} end
return {'marked'}
