local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end

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

local old = redis.call('GET', KEYS[2])
if old then
  redis.call('SET', KEYS[2], old, 'KEEPTTL')
  return {0, old}
end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if #ARGV[2] > 8192 then addLarge(KEYS[3], KEYS[1], 1) end
return {1, ARGV[1]}
