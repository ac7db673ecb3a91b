local function history(key)
  local t = redis.call('TYPE', key).ok
  return t == 'hash' or t == 'none'
end

if not history(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
