local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
