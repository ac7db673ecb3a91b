local old = redis.call('GET', KEYS[2])
if old then return {0, old} end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return {1, ARGV[1]}
