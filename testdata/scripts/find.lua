local out = {}
for i = 1, #KEYS, 2 do
  local es = redis.pcall('LRANGE', KEYS[i], 0, -1)
  if type(es) == 'table' and not es.err then
    for j, e in ipairs(es) do
      local h = string.byte(e, 1) == 43 and 2 or 1
      local v = string.byte(e, h)
      if v and v <= 7 and v % 2 == 1 and string.sub(e, h + 1, h + 20) == ARGV[1] then
        local done = redis.pcall('GETBIT', KEYS[i + 1], j - 1)
        out[#out + 1] = (i + 1) / 2
        out[#out + 1] = j - 1
        out[#out + 1] = e
        out[#out + 1] = type(done) == 'number' and done or 0
      end
    end
  end
end
return out
