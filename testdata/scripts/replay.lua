local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a list') end

local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
