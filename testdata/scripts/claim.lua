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

local addedLarge = false
local function addLarge(meta, ready, n)
  if n == 0 then return end
  addedLarge = true
  local v = redis.call('HGET', meta, 'large')
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', meta, 'large', string.format('%d', redis.call('LLEN', ready)))
  else
    redis.call('HINCRBY', meta, 'large', n)
  end
end
local function takeLarge(meta, ready, n)
  local v = redis.call('HGET', meta, 'large')
  if not v then return end
  local c = string.match(v, '^%d+$') and #v <= 15 and tonumber(v) - n
  if c and c <= 0 or redis.call('LLEN', ready) == 0 then
    redis.call('HDEL', meta, 'large')
  elseif c and n > 0 then
    redis.call('HSET', meta, 'large', string.format('%d', c))
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

local function openEnd(ready, meta, claims, firsts, lists, bits)
  local f, size = claimedEnd(meta)
  if size == 0 then return true end
  local plan, covered = {}, 0
  while covered < size do
    local n = recordCount(redis.call('HGET', claims, string.format('%d', f + covered)))
    if not n or n <= 0 or covered + n > size then break end
    plan[#plan + 1] = n
    covered = covered + n
  end
  if #plan ~= #firsts then return false end
  local at = f
  for i = 1, #plan do
    if firsts[i] ~= string.format('%d', at) or lists[i] ~= claimKeys(claims, firsts[i]) or bits[i] ~= lists[i] .. ':done' then return false end
    if redis.call('TYPE', lists[i]).ok ~= 'none' or not bitsOK(bits[i]) then return false end
    at = at + plan[i]
  end
  for i = 1, #plan do
    local n, first, l, d = plan[i], firsts[i], lists[i], bits[i]
    if redis.call('BITPOS', d, 0) >= n then
      redis.call('DEL', d)
      redis.call('HDEL', claims, first)
    else
      local moved = redis.pcall('SORT', ready, 'BY', 'nosort', 'DESC', 'LIMIT', 0, n, 'STORE', l)
      if moved ~= n then
        -- SORT refused (an ACL): through Lua.
        redis.call('DEL', l)
        local es = redis.call('LRANGE', ready, -n, -1)
        for j = #es, 1, -1000 do
          local part = {}
          for k = j, math.max(j - 1000 + 1, 1), -1 do part[#part + 1] = es[k] end
          redis.call('RPUSH', l, unpack(part))
        end
      end
    end
    redis.call('LTRIM', ready, 0, -n - 1)
  end
  setClaimedEnd(meta, 0, 0)
  return true
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

local m4 = redis.call('HMGET', KEYS[4], 'seq', 'paused', 'large')
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
local due0 = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
-- The caller's claims in place, oldest first (ARGV from 13 on, their
-- lists and done bitmaps from KEYS[11] on), from the first not trimmed.
local given, trims = 13, tonumber(ARGV[12])
local function inPlace(ask)
  -- The finished claims at the very end leave it, oldest first, up to
  -- ARGV[12] of them.
  local f, size = claimedEnd(KEYS[4])
  local f0, t = f, given
  while size > 0 and t < 13 + trims and ARGV[t] == string.format('%d', f) do
    local d = KEYS[2 * t - 14]
    local n = recordCount(redis.call('HGET', KEYS[5], ARGV[t]))
    if not n or n > size or not bitsOK(d) or redis.call('BITPOS', d, 0) < n then break end
    redis.call('LTRIM', KEYS[1], 0, -n - 1)
    redis.call('DEL', d)
    redis.call('HDEL', KEYS[5], ARGV[t])
    f, size, t = f + n, size - n, t + 1
  end
  given = t
  local first = tonumber(ARGV[8])
  local n = math.min(ask, redis.call('LLEN', KEYS[1]) - size)
  if n <= 0 or size > 0 and f + size ~= first or size + n > tonumber(ARGV[11]) then
    if f ~= f0 then setClaimedEnd(KEYS[4], f, size) end
    return nil
  end
  if size == 0 then f = first end
  setClaimedEnd(KEYS[4], f, size + n)
  redis.call('HSET', KEYS[4], 'seq', string.format('%d', first + n))
  redis.call('HSET', KEYS[5], ARGV[8], string.char(35) .. ARGV[8] .. '/' .. string.format('%d', n))
  incr(KEYS[4], 'pending', n)
  return {-3, n, first, size, f}
end
local fast = ARGV[10] ~= '0' and (not m4[3] or m4[3] == '0') and redis.call('EXISTS', KEYS[8]) == 0
if fast and m4[2] ~= '1' and not (due0[2] and tonumber(due0[2]) <= tonumber(ARGV[7])) then
  local r = inPlace(math.min(tonumber(ARGV[5]), tonumber(ARGV[3])))
  if r then return r end
end
if ARGV[10] == '2' then
  local f, size = claimedEnd(KEYS[4])
  if due0[2] and tonumber(due0[2]) <= tonumber(ARGV[7]) or redis.call('LLEN', KEYS[1]) > size then
    return {-5, f, size}
  end
end
local _, held = claimedEnd(KEYS[4])
if held > 0 then
  -- Opened here when the caller named every claim in place.
  local firsts, lists, bits = {}, {}, {}
  for t = given, #ARGV do
    firsts[#firsts + 1], lists[#lists + 1], bits[#bits + 1] = ARGV[t], KEYS[2 * t - 15], KEYS[2 * t - 14]
  end
  if not openEnd(KEYS[1], KEYS[4], KEYS[5], firsts, lists, bits) then return {-4} end
end

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
local waiting, promoted = nil, 0
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
    local large = 0
    for i = take, 1, -1 do
      if es[i] then
        redis.call('RPUSH', KEYS[1], es[i])
        promoted = promoted + 1
        if #es[i] > 8192 then large = large + 1 end
      end
    end
    addLarge(KEYS[4], KEYS[1], large)
    redis.call('ZREM', KEYS[6], unpack(due, 1, take))
    redis.call('HDEL', KEYS[7], unpack(due, 1, take))
    z = redis.call('ZRANGE', KEYS[6], 0, 0, 'WITHSCORES')
  end
  if z[2] and tonumber(z[2]) <= now then waiting = tonumber(z[2]) end
end
if promoted > 0 and redis.call('EXISTS', KEYS[8]) == 1 then
  -- Put at the consuming end: see luaMarkBound.
  markTaken(KEYS[4], -promoted)
  raiseMarkBound(KEYS[4], KEYS[1])
end
local want, budget, ask = tonumber(ARGV[3]), tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), tonumber(ARGV[3]))
local strict = ARGV[6] == '1'
if fast and not waiting and not addedLarge then
  local r = inPlace(ask)
  if r then return r end
end
-- Each entry passes through Lua below: at most 1000 of them.
want, ask = math.min(want, 1000), math.min(ask, 1000)
-- While large entries are counted, the entries popped at a time are those
-- the bytes left hold at largeEntry each: fewer go back.
local n, bytes = 0, 0
local guard = addedLarge or m4[3] and m4[3] ~= '0'
local function room()
  if not guard then return want end
  return math.max(1, math.floor((budget - bytes) / 8192))
end
ask = math.min(ask, room())
-- Drops the cancel marks whose task no record names: up to 1000
-- of them, drawn at random when there are more. Called when no task a
-- mark names can be in the ready list any more.
local function dropStray()
  local ids = redis.pcall('HRANDFIELD', KEYS[8], 1000)
  if type(ids) == 'table' and not ids.err then
    for _, id in ipairs(ids) do
      if not named(KEYS[5], KEYS[2], id) then redis.call('HDEL', KEYS[8], id) end
    end
  end
end
local items = redis.call('RPOP', KEYS[1], ask)
if not items then
  if m4[3] then redis.call('HDEL', KEYS[4], 'large') end
  if redis.call('EXISTS', KEYS[8]) == 1 then
    -- Nothing is ready: a cancel mark whose task is not pending either
    -- names a task that is nowhere any more.
    dropStray()
  end
  return {0, nextDue(), redis.call('ZCARD', KEYS[6])}
end
local sub, byte = string.sub, string.byte
local seq = {}
local marks = redis.call('EXISTS', KEYS[8]) == 1
local ids = ARGV[9] == '1' or marks
local got, large = items, 0
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
    if size > 8192 then large = large + 1 end
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
  ask = math.min(ask * 2, want - n, room())
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
if large > 0 or m4[3] then takeLarge(KEYS[4], KEYS[1], large) end
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
  -- One HMGET for every claimed ID (at most 1000), not a call each.
  local got = redis.pcall('HMGET', KEYS[8], unpack(seq, 1, n))
  if type(got) == 'table' and not got.err then
    for i = 1, n do
      if got[i] then
        k = k + 1
        items[n + k] = i
      end
    end
  end
  -- Past the marks' bound, a mark no record names (this claim's record
  -- names the tasks it found) is stray: up to 1000 are dropped,
  -- and the bound is raised for those left (also one not set, its
  -- fields lost). Where more are left, the next bound drops more: one
  -- claim a backlog pays for a drop. Where none is left, the bound goes,
  -- so that a mark set without raising it (by an earlier release's
  -- Cancel) finds none, and the next claim sets one past it.
  local taken, bound = markTaken(KEYS[4], n), markBound(KEYS[4])
  if bound and taken >= bound then dropStray() end
  if redis.call('EXISTS', KEYS[8]) == 0 then
    redis.call('HDEL', KEYS[4], 'markbound')
  elseif not bound or taken >= bound then
    raiseMarkBound(KEYS[4], KEYS[1])
  end
end
items[n + k + 1] = k
items[n + k + 2] = ids and 1 or 0
items[n + k + 3] = first
return items
