if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end
redis.call('PEXPIRE', KEYS[3], ARGV[2])

local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end

local n = 0
for i = 3, #ARGV, 2 do
  redis.call('HDEL', KEYS[5], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.pcall('HDEL', KEYS[6], ARGV[i])
    local f, rec = ARGV[i], ARGV[i + 1]
    local old = redis.call('HGET', KEYS[2], f)
    if old then
      local k, g = 2, f .. '#2'
      while redis.call('HEXISTS', KEYS[2], g) == 1 do
        k = k + 1
        g = f .. '#' .. k
      end
      if string.byte(rec, 2) == 0 then f = g else redis.call('HSET', KEYS[2], g, old) end
    end
    redis.call('HSET', KEYS[2], f, rec)
    n = n + 1
  end
end
if n > 0 then incr(KEYS[4], 'failed', n) end
return n
