if redis.call('HGET', KEYS[1], 'by') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'partitions', 'queues', 'index', 'by')
end
return 0
