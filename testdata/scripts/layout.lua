local got = redis.call('HMGET', KEYS[1], 'partitions', 'queues', 'index')
if not got[1] then
  redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'queues', ARGV[2], 'index', ARGV[3])
  return '+'
end
if got[1] == ARGV[1] and got[2] == ARGV[2] and got[3] == ARGV[3] then return '' end
return 'partitions=' .. tostring(got[1]) .. ' queues=' .. tostring(got[2]) .. ' index=' .. tostring(got[3])
