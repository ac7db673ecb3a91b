local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  local mine = '.' .. ARGV[3] .. ':' .. ARGV[4]
  if cur and #cur > #mine and string.sub(cur, -#mine) == mine then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return redis.error_reply('QUGOSTALE lease lost')
end

local old = redis.call('HGET', KEYS[2], 'fence')
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
if old and string.match(old, '^%d+$') and #old <= 16 and tonumber(old) >= fence then fence = tonumber(old) + 1 end
fence = string.format('%d', fence)

local v = fence .. '.' .. ARGV[3] .. ':' .. ARGV[4]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'fence', fence)
return v
