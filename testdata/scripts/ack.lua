if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end
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

local n, k = 0, tonumber(ARGV[3])
local last = 5 + k
if k > 0 and redis.call('EXISTS', KEYS[7]) == 1 then
  for i = 6, last do
    if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.pcall('HDEL', KEYS[7], ARGV[i]) end
  end
end
if ARGV[4] == '0' or not history(KEYS[6]) then
  for i = 6, last, 1000 do
    n = n + redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 1000 - 1, last)))
  end
else
  -- A status record for each task that was pending (and has one).
  for i = 6, last do
    if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
      n = n + 1
      local j = last + 2 * (i - 6) + 1
      if ARGV[j + 1] ~= '' then redis.call('HSET', KEYS[6], ARGV[j], ARGV[j + 1]) end
    end
  end
  if n > 0 then
    redis.call('PEXPIREAT', KEYS[6], ARGV[4])
    redis.call('HSET', KEYS[3], 'retention', ARGV[5])
  end
end
if k > 0 and redis.call('EXISTS', KEYS[5]) == 1 then
  for i = 6, last, 1000 do
    redis.call('HDEL', KEYS[5], unpack(ARGV, i, math.min(i + 1000 - 1, last)))
  end
end
if ARGV[4] ~= '0' then last = last + 2 * k end
for i = last + 1, #ARGV, 1000 do
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, math.min(i + 1000 - 1, #ARGV)))
end
if n > 0 then incr(KEYS[3], 'processed', n) end
return n
