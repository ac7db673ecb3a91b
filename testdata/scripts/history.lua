local function history(key)
  local t = redis.call('TYPE', key).ok
  return t == 'hash' or t == 'none'
end

local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end

if not history(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('HSETNX', KEYS[2], 'retention', ARGV[4])
return 1
