if redis.call('EXISTS', KEYS[1]) == 1 then return {0, redis.call('PTTL', KEYS[1])} end
redis.call('DEL', KEYS[1])
local v = redis.call('HINCRBY', KEYS[2], 'fence', 1) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
