if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

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

local n, last = 0, 3 + tonumber(ARGV[3])
for i = 4, last, 1000 do
  n = n + redis.call('HDEL', KEYS[1], unpack(ARGV, i, math.min(i + 1000 - 1, last)))
end
for i = last + 1, #ARGV, 1000 do
  redis.call('HDEL', KEYS[4], unpack(ARGV, i, math.min(i + 1000 - 1, #ARGV)))
end
if n > 0 then incr(KEYS[3], 'processed', n) end
return n
