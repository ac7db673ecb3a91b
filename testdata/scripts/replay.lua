local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a list') end

local n, moved = 0, false
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    if moved then redis.call('HDEL', KEYS[1], ARGV[i]) end
  elseif redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n, moved = n + 1, true
  else
    moved = false
  end
end
return n
