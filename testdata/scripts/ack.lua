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
  local inPlace = redis.call('TYPE', l).ok ~= 'list'
  if inPlace and not inEnd(meta, first) or not bitsOK(d) then return 0 end
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
  if inPlace then
    -- A claim in place leaves the end at a claim (claimend.go).
    if k > 0 then incr(meta, 'pending', -k) end
  else
    finished(claims, meta, first, l, d, k)
  end
  return k
end

local m = tonumber(ARGV[3])
local last = 5 + 3 * m
local bad = claimTypes(KEYS[1], 6, last, 3)
if bad then return bad end
if ARGV[4] ~= '0' and last < #ARGV and history(KEYS[5]) then
  local kept = false
  for i = last + 1, #ARGV, 4 do
    local l, d = claimKeys(KEYS[1], ARGV[i])
    local held = redis.call('TYPE', l).ok == 'list' or inEnd(KEYS[3], ARGV[i])
    if ARGV[i + 3] ~= '' and held and bitsOK(d) and redis.call('GETBIT', d, ARGV[i + 1]) == 0 then
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
    local off = not base and not list and v and string.byte(v, 1) == 35 and inEnd(KEYS[3], ARGV[i])
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
    elseif (list or off) and #places > 0 then
      -- One LRANGE over the places' span, or a LINDEX each for a few
      -- (each walks the list to its place); a claim in place's entries
      -- are in the ready list, its place p at -(off+p+1).
      local from, to, span = places[1], places[#places], nil
      if #places > 16 then
        if list then span = redis.call('LRANGE', l, from, to) else span = redis.call('LRANGE', KEYS[7], -(off + to + 1), -(off + from + 1)) end
      end
      for _, place in ipairs(places) do
        local e
        if span and list then e = span[place - from + 1]
        elseif span then e = span[to - place + 1]
        elseif list then e = redis.call('LINDEX', l, place)
        else e = redis.call('LINDEX', KEYS[7], -(off + place + 1)) end
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
