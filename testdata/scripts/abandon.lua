local cur = redis.call('GET', KEYS[1])
if not cur or #cur <= #ARGV[1] or string.sub(cur, -#ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
