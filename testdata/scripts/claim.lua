if redis.call('GET', KEYS[3]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[2]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[2] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[5]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[5] .. ' holds a ' .. t .. ', want a hash') end

local last = redis.call('HGET', KEYS[4], 'seq')
if last and not (string.match(last, '^%d+$') and #last <= 15) then
  return redis.error_reply('QUGOBADVALUE ' .. KEYS[4] .. ' field seq holds ' .. string.format('%q', string.sub(last, 1, 40)) .. ', not a claim count')
end
redis.call('PEXPIRE', KEYS[3], ARGV[2])

local want, budget, ask = tonumber(ARGV[3]), tonumber(ARGV[4]), math.min(tonumber(ARGV[5]), tonumber(ARGV[3]))
local strict = ARGV[6] == '1'
local items = redis.call('RPOP', KEYS[1], ask)
if not items then return {0} end
local sub, byte = string.sub, string.byte
local args, seq, bad = {}, {}, nil
local n, bytes, got = 0, 0, items
while true do
  local m = #got
  for i = 1, m do
    local e = got[i]
    local size = #e
    if bytes + size > budget and (n > 0 or strict) then
      for j = m, i, -1 do
        redis.call('RPUSH', KEYS[1], got[j])
        if got == items then items[j] = nil end
      end
      want = n
      break
    end
    n, bytes = n + 1, bytes + size
    if got ~= items then items[n] = e end
    local v = byte(e, 1)
    if size >= 21 and v <= 7 and v % 2 == 1 then
      local f = sub(e, 2, 21)
      seq[n] = f
      args[2 * n - 1] = f
    else
      seq[n] = '--------------------'
      bad = bad or {}
      bad[#bad + 1] = n
    end
    args[2 * n] = e
  end
  if n >= want or m < ask then break end
  ask = math.min(ask * 2, want - n)
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
local first = redis.call('HINCRBY', KEYS[4], 'seq', n) - n
if bad then
  for _, i in ipairs(bad) do args[2 * i - 1] = string.format('bad:%d', first + i) end
end
for i = 1, 2 * n, 1000 do
  redis.call('HSET', KEYS[2], unpack(args, i, math.min(i + 1000 - 1, 2 * n)))
end
redis.call('HSET', KEYS[5], string.format('%d', first), table.concat(seq))
items[n + 1] = first
return items
