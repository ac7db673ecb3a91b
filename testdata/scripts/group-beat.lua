local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a zset') end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, n = ARGV[1], tonumber(ARGV[4])
local leftField = 'left:' .. me
if ARGV[8] ~= '' and ARGV[6] ~= 'leave' then
  local left = redis.call('HGET', KEYS[4], leftField)
  if left then
    local run, ends = string.match(left, '^(.*):(%d+)$')
    if run == ARGV[8] and tonumber(ends) > now then
      return {redis.call('HGET', KEYS[4], 'gen') or '0', false, -1, redis.call('ZRANGE', KEYS[1], 0, -1), {}}
    end
    redis.call('HDEL', KEYS[4], leftField)
  end
end
local changed = false
local missed = {} -- members whose queues changed, their nudge key not given
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
-- A session that ends further ahead than any SessionTTL reaches was not
-- written by a member (or Redis's clock went back): it would never end.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now + 3600000), '+inf')) do
  gone[#gone + 1] = m
end
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  changed = true
end
if ARGV[6] == 'leave' then
  if redis.call('ZREM', KEYS[1], me) == 1 then changed = true end
  redis.call('HDEL', KEYS[2], me)
  local meta = redis.call('HGETALL', KEYS[4])
  for i = 1, #meta, 2 do
    if string.sub(meta[i], 1, 5) == 'left:' then
      local ends = string.match(meta[i + 1], ':(%d+)$')
      if not ends or tonumber(ends) <= now then redis.call('HDEL', KEYS[4], meta[i]) end
    end
  end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[4], leftField, ARGV[8] .. ':' .. (now + tonumber(ARGV[9]))) end
else
  local joined, weight = now, ARGV[3]
  local old = redis.call('HGET', KEYS[2], me)
  if redis.call('ZSCORE', KEYS[1], me) == false or not old then
    changed = true
  else
    local w, j = string.match(old, '^(%d+):(%d+):')
    if w ~= weight then changed = true end
    if j then joined = j end
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), me)
  redis.call('HSET', KEYS[2], me, weight .. ':' .. joined .. ':' .. now)
end
if tostring(redis.call('HGET', KEYS[4], 'analysers')) ~= ARGV[4] then changed = true end
-- A member that does not know the generation is to be sent its
-- analysers: an assignment this script did not write (an analyser
-- missing, out of range or named twice, or held by no member: written by
-- hand) is computed anew first.
local sent
if not changed and ARGV[6] ~= 'leave' and redis.call('HGET', KEYS[4], 'gen') ~= ARGV[7] then
  sent = redis.call('HGETALL', KEYS[3])
  local live = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do live[m] = true end
  changed = #sent ~= 2 * n
  for i = 1, #sent, 2 do
    local f = sent[i]
    if changed or not ((f == '0' or string.match(f, '^[1-9]%d*$')) and tonumber(f) < n and live[sent[i + 1]]) then
      changed = true
      break
    end
  end
end
if changed then
  local ms = redis.call('ZRANGE', KEYS[1], 0, -1)
  table.sort(ms)
  local live, w, total = {}, {}, 0
  for _, m in ipairs(ms) do
    live[m] = true
    local v = redis.call('HGET', KEYS[2], m)
    -- A weight out of bounds (written by hand) counts as the bound.
    local d = v and string.match(v, '^(%d+):') or '1'
    w[m] = #d > #'1000' and 1000 or math.min(math.max(tonumber(d), 1), 1000)
    total = total + w[m]
  end
  local owner, held = {}, {}
  local cur = redis.call('HGETALL', KEYS[3])
  for i = 1, #cur, 2 do
    local q = tonumber(cur[i])
    if q and q >= 0 and q < n and q == math.floor(q) and live[cur[i + 1]] then
      owner[q] = cur[i + 1]
      held[cur[i + 1]] = (held[cur[i + 1]] or 0) + 1
    end
  end
  local quota, rank = {}, {}
  local left = n
  for _, m in ipairs(ms) do
    quota[m] = math.floor(n * w[m] / total)
    left = left - quota[m]
    rank[#rank + 1] = m
  end
  table.sort(rank, function(a, b)
    local fa, fb = (n * w[a]) % total, (n * w[b]) % total
    if fa ~= fb then return fa > fb end
    local ha, hb = held[a] or 0, held[b] or 0
    if ha ~= hb then return ha > hb end
    return a < b
  end)
  for i = 1, math.min(left, #rank) do quota[rank[i]] = quota[rank[i]] + 1 end
  local kept, new, moved = {}, {}, {}
  for q = 0, n - 1 do
    local o = owner[q]
    if o and (kept[o] or 0) < quota[o] then
      kept[o] = (kept[o] or 0) + 1
      new[q] = o
    end
  end
  for q = 0, n - 1 do
    if not new[q] then
      local best, gap = nil, 0
      for _, m in ipairs(ms) do
        local g = quota[m] - (kept[m] or 0)
        if g > gap then best, gap = m, g end
      end
      if best then
        kept[best] = (kept[best] or 0) + 1
        new[q] = best
      end
      if owner[q] then moved[owner[q]] = true end
      if best then moved[best] = true end
    end
  end
  redis.call('DEL', KEYS[3])
  local args = {}
  for q = 0, n - 1 do
    if new[q] then
      args[#args + 1] = q
      args[#args + 1] = new[q]
      if #args >= 2 * 1000 then
        redis.call('HSET', KEYS[3], unpack(args))
        args = {}
      end
    end
  end
  if #args > 0 then redis.call('HSET', KEYS[3], unpack(args)) end
  -- The generation is Redis's clock in ms, or one more than the last when
  -- that is not higher: a group that Redis lost (a restart without
  -- persistence) does not repeat a generation a member knows. A last one
  -- that is not a count Lua adds one to exactly (written by hand) is
  -- passed over.
  local gen = redis.call('HGET', KEYS[4], 'gen')
  gen = gen and string.match(gen, '^%d+$') and #gen <= 15 and tonumber(gen) or 0
  gen = string.format('%d', math.max(gen + 1, now))
  redis.call('HSET', KEYS[4], 'gen', gen, 'analysers', ARGV[4], 'changed', now)
  local given = {}
  for i = 5, #KEYS do given[KEYS[i]] = true end
  for m in pairs(moved) do
    local k = ARGV[5] .. m
    if m ~= me and given[k] then
      redis.call('DEL', k)
      redis.call('RPUSH', k, '1')
      redis.call('PEXPIRE', k, ARGV[2])
    elseif m ~= me then
      missed[#missed + 1] = m
    end
  end
end
local gen = redis.call('HGET', KEYS[4], 'gen') or '0'
local mine = {}
if ARGV[6] ~= 'leave' and gen ~= ARGV[7] then
  if changed or not sent then sent = redis.call('HGETALL', KEYS[3]) end
  for i = 1, #sent, 2 do
    if sent[i + 1] == me then mine[#mine + 1] = sent[i] end
  end
end
local next = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= me then
    next = math.max(tonumber(first[i + 1]) - now, 0)
    break
  end
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if gen == ARGV[7] then return {gen, false, next, live, missed} end
return {gen, table.concat(mine, ','), next, live, missed}
