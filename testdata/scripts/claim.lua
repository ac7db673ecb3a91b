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
local items = redis.call('RPOP', KEYS[1], ask)
if not items then return {0} end
local n, bytes, full, strict = 0, 0, false, ARGV[6] == '1'
local got = items
while true do
  for i = 1, #got do
    local size = #got[i]
    if (n > 0 or strict) and bytes + size > budget then
      for j = #got, i, -1 do
        redis.call('RPUSH', KEYS[1], got[j])
        if got == items then items[j] = nil end
      end
      full = true
      break
    end
    n, bytes = n + 1, bytes + size
    if got ~= items then items[n] = got[i] end
  end
  if full or n >= want or #got < ask then break end
  ask = math.min(ask * 2, want - n)
  got = redis.call('RPOP', KEYS[1], ask)
  if not got then break end
end
if n == 0 then return {-1} end
local first = redis.call('HINCRBY', KEYS[4], 'seq', n) - n
local sub, byte = string.sub, string.byte
local args, seq = {}, {}
for i = 1, n do
  local e = items[i]
  local f
  if #e >= 21 and (byte(e, 1) == 1 or byte(e, 1) == 3) then
    f = sub(e, 2, 21)
    seq[i] = f
  else
    f = string.format('bad:%d', first + i)
    seq[i] = '--------------------'
  end
  args[2 * i - 1] = f
  args[2 * i] = e
end
for i = 1, 2 * n, 1000 do
  redis.call('HSET', KEYS[2], unpack(args, i, math.min(i + 1000 - 1, 2 * n)))
end
redis.call('HSET', KEYS[5], string.format('%d', first), table.concat(seq))
items[n + 1] = first
return items
