if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a hash') end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
local claimsKey = KEYS[1]

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

-- recount returns the encoded task e (behind a '+' or not) with n as its
-- delivery count, not marked recovered, behind a '+' when accounted is
-- '1'; false when e is not an encoded task of ID id.
local function recount(e, id, n, accounted)
  local i = 1
  if string.byte(e, 1) == 43 then i = 2 end
  local flags = string.byte(e, i)
  if not flags or string.sub(e, i + 1, i + 20) ~= id then return false end
  local p = i + 1 + 20
  for _ = 1, 2 do -- OrderID, AddedAt
    while (string.byte(e, p) or 0) >= 128 do p = p + 1 end
    p = p + 1
  end
  local from = p
  while (string.byte(e, p) or 0) >= 128 do p = p + 1 end
  if p > #e then return false end
  if flags % (2 * 2) >= 2 then flags = flags - 2 end
  local v = {}
  while n >= 128 do
    v[#v + 1] = string.char(n % 128 + 128)
    n = math.floor(n / 128)
  end
  v[#v + 1] = string.char(n)
  local mark = ''
  if accounted == '1' then mark = '+' end
  return mark .. string.char(flags) .. string.sub(e, i + 1, from - 1) .. table.concat(v) .. string.sub(e, p + 1)
end
local function rewrite(first, place, id, n, accounted)
  if first == '' then return false end
  local l, d = claimKeys(claimsKey, first)
  if redis.call('TYPE', l).ok ~= 'list' or not bitsOK(d) or redis.call('GETBIT', d, place) == 1 then return false end
  local e = redis.call('LINDEX', l, place)
  if not e then return false end
  local record = recount(e, id, n, accounted)
  if not record then return false end
  redis.call('LSET', l, place, record)
  return true
end

local bad = claimTypes(claimsKey, 3, 3, 1)
if bad then return bad end
if not rewrite(ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]), '1') then return 0 end
return 1
