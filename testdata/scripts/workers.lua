if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'workers', ARGV[2] .. ':' .. ARGV[1])
return 1
