if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end

local m4 = redis.call('HMGET', KEYS[4], 'seq', 'paused')
local last = m4[1]
if last and not (string.match(last, '^%d+$') and #last <= 15) then
  return redis.error_reply('QUGOBADVALUE ' .. KEYS[4] .. ' field seq holds ' .. string.format('%q', string.sub(last, 1, 40)) .. ', not a claim count')
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])

local now = tonumber(ARGV[7])
local function nextDue()
  local z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  if z[2] then return math.ceil(tonumber(z[2])) end
  return -1
end
if m4[2] == '1' then
  local nd = nextDue()
  if nd >= 0 and nd <= now or redis.call('LLEN', KEYS[1]) > 0 then return {-2, nd, redis.call('ZCARD', KEYS[6])} end
  return {0, nd, redis.call('ZCARD', KEYS[6])}
end
local function addedAt(e)
  if not e or #e < 21 then return nil end
  local v = string.byte(e, 1)
  if v > 7 or v % 2 ~= 1 then return nil end
  local i = 21 + 1
  repeat -- past the OrderID
    v = string.byte(e, i)
    if not v then return nil end
    i = i + 1
  until v < 128
  local ms, mul = 0, 1
  while true do
    v = string.byte(e, i)
    if not v then return nil end
    if v < 128 then return ms + v * mul end
    ms, mul, i = ms + (v - 128) * mul, mul * 128, i + 1
  end
end
local waiting
local z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
if z[2] and tonumber(z[2]) <= now then
  local upto = ARGV[7]
  local head = addedAt(redis.call('LINDEX', KEYS[1], -1))
  if head and head <= now then upto = '(' .. string.format('%d', head) end
  local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', upto, 'LIMIT', 0, tonumber(ARGV[3]))
  if #due > 0 then
    -- Up to scriptBytes of entries, at least one however large.
    local take, size = 0, 0
    for i = 1, #due do
      local n = redis.call('HSTRLEN', KEYS[7], due[i])
      if take > 0 and size + n > 8388608 then break end
      take, size = i, size + n
    end
    local es = redis.call('HMGET', KEYS[7], unpack(due, 1, take))
    for i = take, 1, -1 do
      if es[i] then redis.call('RPUSH', KEYS[1], es[i]) end
    end
    redis.call('ZREM', KEYS[6], unpack(due, 1, take))
    redis.call('HDEL', KEYS[7], unpack(due, 1, take))
    z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  end
  if z[2] and tonumber(z[2]) <= now then waiting = tonumber(z[2]) end
end
local want, budget, ask = tonumber(ARGV[3]), tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), tonumber(ARGV[3]))
local strict = ARGV[6] == '1'
local items = redis.call('RPOP', KEYS[1], ask)
if not items then
  if redis.call('EXISTS', KEYS[8]) == 1 then
    -- Nothing is ready: a cancel mark whose task is not pending either
    -- names a task that is nowhere any more. Up to 1000 of them a
    -- claim, drawn at random when there are more.
    local ids = redis.pcall('HRANDFIELD', KEYS[8], 1000)
    if type(ids) == 'table' and not ids.err then
      for _, id in ipairs(ids) do
        if redis.call('HEXISTS', KEYS[2], id) == 0 then redis.call('HDEL', KEYS[8], id) end
      end
    end
  end
  return {0, nextDue(), redis.call('ZCARD', KEYS[6])}
end
local sub, byte = string.sub, string.byte
local args, seq, bad = {}, {}, nil
local n, bytes, got = 0, 0, items
while true do
  local m = #got
  for i = 1, m do
    local e = got[i]
    local size = #e
    if bytes + size > budget and (n > 0 or strict) or waiting and n > 0 and (addedAt(e) or 0) > waiting then
      for j = m, i, -1 do
        redis.call('RPUSH', KEYS[1], got[j])
        if got == items then items[j] = nil end
      end
      want = n
      break
    end
    n, bytes = n + 1, bytes + size
    if got ~= items then items[n] = e end
    local v = byte(e, 1)
    if size >= 21 and v <= 7 and v % 2 == 1 then
      local f = sub(e, 2, 21)
      seq[n] = f
      args[2 * n - 1] = f
    else
      seq[n] = '--------------------'
      bad = bad or {}
      bad[#bad + 1] = n
    end
    args[2 * n] = e
  end
  if n >= want or m < ask then break end
  ask = math.min(ask * 2, want - n)
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
local first = redis.call('HINCRBY', KEYS[4], 'seq', n) - n
if bad then
  for _, i in ipairs(bad) do args[2 * i - 1] = string.format('bad:%d', first + i) end
end
for i = 1, 2 * n, 1000 do
  redis.call('HSET', KEYS[2], unpack(args, i, math.min(i + 1000 - 1, 2 * n)))
end
redis.call('HSET', KEYS[5], string.format('%d', first), table.concat(seq))
local k = 0
if redis.call('EXISTS', KEYS[8]) == 1 then
  for i = 1, n do
    if redis.pcall('HEXISTS', KEYS[8], seq[i]) == 1 then
      k = k + 1
      items[n + k] = i
    end
  end
end
items[n + k + 1] = k
items[n + k + 2] = first
return items
