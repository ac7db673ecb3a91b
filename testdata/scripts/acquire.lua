local function incr(key, field, n)
  local v = redis.call('HGET', key, field)
  if v and not (string.match(v, '^%d+$') and #v <= 15) then
    redis.call('HSET', key, field, n)
  else
    redis.call('HINCRBY', key, field, n)
  end
end

-- The latest death the dead-letter store recorded: the new owner stamps
-- its own past it (deathClock).
local function lastDeath()
  local v = redis.pcall('HGET', KEYS[2], 'lastdeath')
  if type(v) == 'string' then return v end
  return ''
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local held = ''
  if redis.call('TYPE', KEYS[1]).ok == 'string' then held = redis.call('GET', KEYS[1]) end
  if ARGV[5] ~= '' and #held > #ARGV[5] and string.sub(held, -#ARGV[5]) == ARGV[5] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, held, lastDeath()}
  end
  if ARGV[4] == '' or held ~= ARGV[4] then
    return {0, redis.call('PTTL', KEYS[1]), held}
  end
end

local old = redis.call('HGET', KEYS[2], 'fence')
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
if old and string.match(old, '^%d+$') and #old <= 16 and tonumber(old) >= fence then fence = tonumber(old) + 1 end
fence = string.format('%d', fence)

redis.call('DEL', KEYS[1])
-- The cancel marks' bound (cancel.go) goes with the owner: one of an
-- earlier release put entries back without raising it, and the next
-- claim sets it afresh.
redis.call('HDEL', KEYS[2], 'markbound')
redis.call('HSET', KEYS[2], 'fence', fence)
incr(KEYS[2], 'leases', 1)
local v = fence .. '.' .. ARGV[3] .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v, lastDeath()}
