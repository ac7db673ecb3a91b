local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a list') end
local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end

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

local n = 0
for i = 2, #ARGV, 1000 do
  n = redis.call('LPUSH', KEYS[1], unpack(ARGV, i, math.min(i + 1000 - 1, #ARGV)))
end
addLarge(KEYS[2], KEYS[1], tonumber(ARGV[1]))
return n
