local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'zset' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a zset') end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end

local n = 0
for i = 1, #ARGV, 3 do
  local due = tonumber(ARGV[i])
  local score = due
  local last = redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', due + 1), ARGV[i], 'WITHSCORES', 'LIMIT', 0, 1)
  if last[2] and due < 8796093022208 then score = math.min(tonumber(last[2]) + 0.0009765625, due + 1 - 0.0009765625) end
  redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2])
  redis.call('ZADD', KEYS[1], string.format('%.17g', score), ARGV[i + 1])
  n = n + 1
end
return n
