local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a list') end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end

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

local out = {}
local only = tonumber(ARGV[2] or '-1') or -1
for i = 4, #KEYS, 2 do
  local l, d = KEYS[i], KEYS[i + 1]
  -- entry(p): the entry at place p; n: the claim's size.
  local entry, n
  local t = redis.pcall('TYPE', l)
  if type(t) == 'table' and t.ok == 'list' then
    local es
    entry = function(p)
      if only >= 0 then return redis.call('LINDEX', l, p) end
      es = es or redis.call('LRANGE', l, 0, -1)
      return es[p + 1]
    end
    n = redis.call('LLEN', l)
  else
    local first = string.match(l, 'claim:(%d+)$')
    local off = first and inEnd(KEYS[2], first)
    n = off and recordCount(redis.call('HGET', KEYS[3], first))
    if n then
      local es
      entry = function(p)
        if only >= 0 then return redis.call('LINDEX', KEYS[1], -(off + p + 1)) end
        es = es or redis.call('LRANGE', KEYS[1], -(off + n), -(off + 1))
        return es[n - p]
      end
    end
  end
  if entry then
    local from, to = 0, n - 1
    if only >= 0 then from, to = only, only end
    for p = from, to do
      local e = entry(p)
      local h = e and string.byte(e, 1) == 43 and 2 or 1
      local v = e and string.byte(e, h)
      if v and v <= 7 and v % 2 == 1 and string.sub(e, h + 1, h + 20) == ARGV[1] then
        local done = redis.pcall('GETBIT', d, p)
        out[#out + 1] = (i - 2) / 2
        out[#out + 1] = p
        out[#out + 1] = e
        out[#out + 1] = type(done) == 'number' and done or 0
      end
    end
  end
end
return out
