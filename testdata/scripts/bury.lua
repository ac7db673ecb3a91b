if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[7]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[7] .. ' holds a ' .. t .. ', want a hash') end
redis.call('PEXPIRE', KEYS[3], ARGV[2])
local pendingKey, metaKey, claimsKey = KEYS[1], KEYS[4], KEYS[7]

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

local takes, takeOrder = {}, {}
local function take(i)
  if ARGV[i] == '' then return redis.call('HDEL', pendingKey, ARGV[i + 2]) == 1 end
  local first = ARGV[i]
  local c = takes[first]
  if c == nil then
    local l, d = claimKeys(claimsKey, first)
    c = false
    if redis.call('TYPE', l).ok == 'list' and bitsOK(d) then
      c = {l = l, d = d, k = 0}
      takeOrder[#takeOrder + 1] = first
    end
    takes[first] = c
  end
  if not c then return false end
  local place = tonumber(ARGV[i + 1])
  -- SETBIT answers the bit as it was: set, the place was taken already.
  if not redis.call('LINDEX', c.l, place) or redis.call('SETBIT', c.d, place, 1) == 1 then return false end
  c.k = c.k + 1
  return true
end
local function takesDone()
  for _, first in ipairs(takeOrder) do
    local c = takes[first]
    if c.k > 0 then finished(claimsKey, metaKey, first, c.l, c.d, c.k) end
  end
  takes, takeOrder = {}, {}
end

local bad = claimTypes(claimsKey, 5, #ARGV, 4)
if bad then return bad end
local n = 0
local function asked(f)
  return ARGV[4] == '1' and redis.pcall('HEXISTS', KEYS[6], f) == 1
end
for i = 5, #ARGV, 4 do
  if not asked(ARGV[i + 2]) and take(i) then
    local f, rec = ARGV[i + 2], ARGV[i + 3]
    redis.call('HDEL', KEYS[5], f)
    redis.pcall('HDEL', KEYS[6], f)
    local old = redis.call('HGET', KEYS[2], f)
    if old then
      local k, g = 2, f .. '#2'
      while redis.call('HEXISTS', KEYS[2], g) == 1 do
        k = k + 1
        g = f .. '#' .. k
      end
      if string.byte(rec, 2) == 0 then f = g else redis.call('HSET', KEYS[2], g, old) end
    end
    redis.call('HSET', KEYS[2], f, rec)
    n = n + 1
  end
end
takesDone()
if n > 0 then
  incr(KEYS[4], 'failed', n)
  local last, died = redis.call('HGET', KEYS[4], 'lastdeath'), tonumber(ARGV[3])
  last = last and #last <= 15 and string.match(last, '^%d+$') and tonumber(last)
  if not last or last < died or last > died + 86400000 then
    redis.call('HSET', KEYS[4], 'lastdeath', ARGV[3])
  end
end
return n
