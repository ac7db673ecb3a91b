if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
redis.call('PEXPIRE', KEYS[2], ARGV[2])

local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end

local function history(key)
  local t = redis.call('TYPE', key).ok
  return t == 'hash' or t == 'none'
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

local function openPlaces(l, d)
  local n = redis.call('LLEN', l)
  local full, set = math.floor(n / 8), 0
  if full > 0 then set = redis.call('BITCOUNT', d, 0, full - 1) end
  for p = full * 8, n - 1 do set = set + redis.call('GETBIT', d, p) end
  return n - set
end
local function finished(claims, meta, first, l, d, k)
  if k > 0 then incr(meta, 'pending', -k) end
  if redis.call('BITPOS', d, 0) >= redis.call('LLEN', l) then
    redis.call('DEL', l, d)
    redis.call('HDEL', claims, first)
  end
end
local function setDone(claims, meta, first, bits)
  local l, d = claimKeys(claims, first)
  if redis.call('TYPE', l).ok ~= 'list' or not bitsOK(d) then return 0 end
  local before = redis.call('BITCOUNT', d)
  if before == 0 then
    redis.call('SET', d, bits)
  else
    local tmp = l .. ':or'
    redis.call('SET', tmp, bits)
    redis.call('BITOP', 'OR', d, d, tmp)
    redis.call('DEL', tmp)
  end
  local k = redis.call('BITCOUNT', d) - before
  finished(claims, meta, first, l, d, k)
  return k
end
local function takePlace(claims, meta, first, place)
  local l, d = claimKeys(claims, first)
  if redis.call('TYPE', l).ok ~= 'list' or not bitsOK(d) then return nil end
  local e = redis.call('LINDEX', l, place)
  if not e or redis.call('GETBIT', d, place) == 1 then return nil end
  redis.call('SETBIT', d, place, 1)
  finished(claims, meta, first, l, d, 1)
  return e
end

local m = tonumber(ARGV[3])
local last = 5 + 3 * m
local bad = claimTypes(KEYS[1], 6, last, 3)
if bad then return bad end
if ARGV[4] ~= '0' and last < #ARGV and history(KEYS[5]) then
  local kept = false
  for i = last + 1, #ARGV, 4 do
    local l, d = claimKeys(KEYS[1], ARGV[i])
    if ARGV[i + 3] ~= '' and redis.call('TYPE', l).ok == 'list' and bitsOK(d) and redis.call('GETBIT', d, ARGV[i + 1]) == 0 then
      redis.call('HSET', KEYS[5], ARGV[i + 2], ARGV[i + 3])
      kept = true
    end
  end
  if kept then
    redis.call('PEXPIREAT', KEYS[5], ARGV[4])
    redis.call('HSET', KEYS[3], 'retention', ARGV[5])
  end
end
local marks = redis.call('EXISTS', KEYS[6]) == 1
local byID = marks or redis.call('EXISTS', KEYS[4]) == 1
if byID then
  -- The IDs at the places acknowledged, from the claim-sequence records,
  -- or those given, or else the claim's list.
  local ids = {}
  for i = 6, last, 3 do
    local v, bits = redis.call('HGET', KEYS[1], ARGV[i]), ARGV[i + 1]
    local base = v and string.byte(v, 1) == 35 and string.find(v, ':', 2, true)
    if not base and ARGV[i + 2] ~= '' then v, base = ARGV[i + 2], 0 end
    local l = claimKeys(KEYS[1], ARGV[i])
    local list = not base and v and string.byte(v, 1) == 35 and redis.call('TYPE', l).ok == 'list'
    local places = {}
    for j = 1, #bits do
      local b = string.byte(bits, j)
      local k = 0
      while b > 0 do
        if b >= 128 then places[#places + 1] = (j - 1) * 8 + k end
        b, k = (b % 128) * 2, k + 1
      end
    end
    if base then
      for _, place in ipairs(places) do
        local at = base + 1 + place * 20
        ids[#ids + 1] = string.sub(v, at, at + 20 - 1)
      end
    elseif list and #places > 0 then
      -- One LRANGE over the places' span, or a LINDEX each for a few
      -- (each walks the list to its place).
      local from, span = places[1], nil
      if #places > 16 then span = redis.call('LRANGE', l, from, places[#places]) end
      for _, place in ipairs(places) do
        local e
        if span then e = span[place - from + 1] else e = redis.call('LINDEX', l, place) end
        if e and string.byte(e, 1) == 43 then e = string.sub(e, 2) end
        if e and #e >= 21 then ids[#ids + 1] = string.sub(e, 2, 21) end
      end
    end
  end
  for i = 1, #ids, 1000 do
    local part = {unpack(ids, i, math.min(i + 1000 - 1, #ids))}
    redis.call('HDEL', KEYS[4], unpack(part))
    if marks then redis.pcall('HDEL', KEYS[6], unpack(part)) end
  end
end
local n = 0
for i = 6, last, 3 do n = n + setDone(KEYS[1], KEYS[3], ARGV[i], ARGV[i + 1]) end
if n > 0 then incr(KEYS[3], 'processed', n) end
for i = 6, last, 3 do
  local f, ids = ARGV[i], ARGV[i + 2]
  if ids ~= '' and #ids % 20 == 0 then
    local mark = string.char(35) .. f
    if redis.call('HGET', KEYS[1], f) == mark .. '/' .. string.format('%d', #ids / 20) then
      redis.call('HSET', KEYS[1], f, mark .. ':' .. ids)
    end
  end
end
return {n, byID and 1 or 0}
