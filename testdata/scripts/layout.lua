local got = redis.call('HMGET', KEYS[1], 'partitions', 'queues', 'index', 'by')
if not got[1] then
  redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'queues', ARGV[2], 'index', ARGV[3], 'by', ARGV[4])
  return ''
end
if got[1] == ARGV[1] and got[2] == ARGV[2] and got[3] == ARGV[3] then return '' end
if got[4] == ARGV[4] then return 'same ' .. tostring(got[3]) end
return 'partitions=' .. tostring(got[1]) .. ' queues=' .. tostring(got[2]) .. ' index=' .. tostring(got[3])
