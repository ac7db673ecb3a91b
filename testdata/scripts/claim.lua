if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end

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

local function named(claims, pending, id)
  local all = #id == 20 and redis.call('HVALS', claims) or {}
  for _, v in ipairs(all) do
    -- A record whose IDs are not written yet may name any task.
    if idsLater(v) then return true end
    local base = string.byte(v, 1) == 35 and string.find(v, ':', 2, true)
    if base then
      local from = base + 1
      while true do
        local at = string.find(v, id, from, true)
        if not at then break end
        if (at - base - 1) % 20 == 0 then return true end
        from = at + 1
      end
    end
  end
  return redis.call('HEXISTS', pending, id) == 1
end

local function claimAfter(claims, first)
  local after = first + 1
  local all = redis.call('HGETALL', claims)
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local mark = '^' .. string.char(35)
    local from, ids = string.match(v, mark .. '(%d+):(.*)$')
    local count = math.ceil(#(ids or v) / 20)
    if not from then
      local n
      from, n = string.match(v, mark .. '(%d+)/(%d+)$')
      if from then count = tonumber(n) end
    end
    for _, f in ipairs({all[i], from}) do
      if string.match(f, '^%d+$') and #f <= 15 then
        after = math.max(after, tonumber(f) + count)
      end
    end
  end
  return after
end

local m4 = redis.call('HMGET', KEYS[4], 'seq', 'paused')
local last = m4[1]
if last and not (string.match(last, '^%d+$') and #last <= 15) then
  return redis.error_reply('QUGOBADVALUE ' .. KEYS[4] .. ' field seq holds ' .. string.format('%q', string.sub(last, 1, 40)) .. ', not a claim count')
end
local seq0 = tonumber(last or '0')
if tonumber(ARGV[8]) < seq0 then return redis.error_reply('QUGOSEQ ' .. string.format('%d', seq0)) end
if redis.call('EXISTS', KEYS[9], KEYS[10]) > 0 or redis.call('HEXISTS', KEYS[5], ARGV[8]) == 1 then
  return redis.error_reply('QUGOSEQ ' .. string.format('%d', claimAfter(KEYS[5], tonumber(ARGV[8]))))
end
if tonumber(ARGV[8]) + tonumber(ARGV[3]) > 999999999999999 then
  return redis.error_reply('QUGOBADVALUE ' .. KEYS[4] .. ' field seq: a claim of ' .. ARGV[3] .. ' tasks from ' .. ARGV[8] .. ' would count past 999999999999999')
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
local refused = false
if ARGV[10] == '1' and not waiting and redis.call('EXISTS', KEYS[8]) == 0 then
  -- Redis's own move: the ask entries at the consuming end, in claim
  -- order, into the claim's list; the caller reads them.
  local n = math.min(ask, redis.call('LLEN', KEYS[1]))
  if n > 0 then
    local f, l = ARGV[8], KEYS[9]
    local moved = redis.pcall('SORT', KEYS[1], 'BY', 'nosort', 'DESC', 'LIMIT', 0, n, 'STORE', l)
    if moved == n then
      redis.call('LTRIM', KEYS[1], 0, -n - 1)
      redis.call('HSET', KEYS[4], 'seq', string.format('%d', tonumber(f) + n))
      redis.call('HSET', KEYS[5], f, string.char(35) .. f .. '/' .. string.format('%d', n))
      incr(KEYS[4], 'pending', n)
      return {-3, n, tonumber(f)}
    end
    if type(moved) == 'number' then redis.call('DEL', l) end
    refused = true
  end
end
-- Each entry passes through Lua below: at most 1000 of them.
want, ask = math.min(want, 1000), math.min(ask, 1000)
local items = redis.call('RPOP', KEYS[1], ask)
if not items then
  if redis.call('EXISTS', KEYS[8]) == 1 then
    -- Nothing is ready: a cancel mark whose task is not pending either
    -- names a task that is nowhere any more. Up to 1000 of them a
    -- claim, drawn at random when there are more.
    local ids = redis.pcall('HRANDFIELD', KEYS[8], 1000)
    if type(ids) == 'table' and not ids.err then
      for _, id in ipairs(ids) do
        if not named(KEYS[5], KEYS[2], id) then redis.call('HDEL', KEYS[8], id) end
      end
    end
  end
  return {0, nextDue(), redis.call('ZCARD', KEYS[6])}
end
local sub, byte = string.sub, string.byte
local seq = {}
local marks = redis.call('EXISTS', KEYS[8]) == 1
local ids = ARGV[9] == '1' or marks
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
    if ids then
      local v = byte(e, 1)
      if size >= 21 and v <= 7 and v % 2 == 1 then
        seq[n] = sub(e, 2, 21)
      else
        seq[n] = '--------------------'
      end
    end
  end
  if n >= want or m < ask then break end
  ask = math.min(ask * 2, want - n)
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
local first, f, l = tonumber(ARGV[8]), ARGV[8], KEYS[9]
redis.call('HSET', KEYS[4], 'seq', string.format('%d', first + n))
for i = 1, n, 1000 do
  redis.call('RPUSH', l, unpack(items, i, math.min(i + 1000 - 1, n)))
end
if ids then
  redis.call('HSET', KEYS[5], f, string.char(35) .. f .. ':' .. table.concat(seq))
else
  redis.call('HSET', KEYS[5], f, string.char(35) .. f .. '/' .. string.format('%d', n))
end
incr(KEYS[4], 'pending', n)
local k = 0
if marks then
  for i = 1, n do
    if redis.pcall('HEXISTS', KEYS[8], seq[i]) == 1 then
      k = k + 1
      items[n + k] = i
    end
  end
end
items[n + k + 1] = k
items[n + k + 2] = (ids and 1 or 0) + (refused and 2 or 0)
items[n + k + 3] = first
return items
