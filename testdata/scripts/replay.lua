local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a list') end
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

local n, moved, large = 0, false, 0
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    if moved then redis.call('HDEL', KEYS[1], ARGV[i]) end
  elseif redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    if #ARGV[i + 1] > 8192 then large = large + 1 end
    n, moved = n + 1, true
  else
    moved = false
  end
end
addLarge(KEYS[3], KEYS[2], large)
return n
