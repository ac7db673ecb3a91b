if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('QUGOSTALE lease lost') end

local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[1] .. ' holds a ' .. t .. ', want a list') end
local t = redis.call('TYPE', KEYS[3]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[3] .. ' holds a ' .. t .. ', want a hash') end
local t = redis.call('TYPE', KEYS[4]).ok
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('QUGOWRONGTYPE ' .. KEYS[4] .. ' holds a ' .. t .. ', want a hash') end
redis.call('PEXPIRE', KEYS[2], ARGV[2])

local endFirst, endSize
local function claimedEnd(meta)
  if not endFirst then
    local r = redis.call('HMGET', meta, 'endfirst', 'endsize')
    local f, n = tonumber(r[1] or ''), tonumber(r[2] or '')
    if f and n and f >= 0 and n > 0 and f % 1 == 0 and n % 1 == 0 and f <= 999999999999999 then
      endFirst, endSize = f, n
    else
      endFirst, endSize = 0, 0
    end
  end
  return endFirst, endSize
end
local function setClaimedEnd(meta, f, n)
  endFirst, endSize = f, n
  if n > 0 then
    redis.call('HSET', meta, 'endfirst', string.format('%d', f), 'endsize', string.format('%d', n))
  else
    redis.call('HDEL', meta, 'endfirst', 'endsize')
  end
end
local function inEnd(meta, first)
  local f, n = claimedEnd(meta)
  first = tonumber(first)
  if first and n > 0 and first >= f and first < f + n then return first - f end
  return nil
end
local function recordCount(v)
  if not v or string.byte(v, 1) ~= 35 then return nil end
  local n = string.match(v, '^.%d+/(%d+)$')
  if n then return tonumber(n) end
  local ids = string.match(v, '^.%d+:(.*)$')
  if ids and #ids > 0 and #ids % 20 == 0 then return #ids / 20 end
  return nil
end

local function idsLater(v)
  return string.byte(v, 1) == 35 and string.match(v, '^.%d+/%d+$') ~= nil
end
local function claimKeys(claims, first)
  local l = string.sub(claims, 1, -#'order' - 1) .. 'claim:' .. first
  return l, l .. ':done'
end
local function bitsOK(d)
  local t = redis.call('TYPE', d).ok
  return t == 'string' or t == 'none'
end
local function claimTypes(claims, from, to, step)
  local seen = {}
  for i = from, to, step do
    if ARGV[i] ~= '' and not seen[ARGV[i]] then
      seen[ARGV[i]] = true
      local l, d = claimKeys(claims, ARGV[i])
      for _, kt in ipairs({{l, 'list'}, {d, 'string'}}) do
        local t = redis.call('TYPE', kt[1]).ok
        if t ~= kt[2] and t ~= 'none' then
          return redis.error_reply('QUGOWRONGTYPE ' .. kt[1] .. ' holds a ' .. t .. ', want a ' .. kt[2])
        end
      end
    end
  end
end

local function openEnd(ready, meta, claims, firsts, lists, bits)
  local f, size = claimedEnd(meta)
  if size == 0 then return true end
  local plan, covered = {}, 0
  while covered < size do
    local n = recordCount(redis.call('HGET', claims, string.format('%d', f + covered)))
    if not n or n <= 0 or covered + n > size then break end
    plan[#plan + 1] = n
    covered = covered + n
  end
  if #plan ~= #firsts then return false end
  local at = f
  for i = 1, #plan do
    if firsts[i] ~= string.format('%d', at) or lists[i] ~= claimKeys(claims, firsts[i]) or bits[i] ~= lists[i] .. ':done' then return false end
    if redis.call('TYPE', lists[i]).ok ~= 'none' or not bitsOK(bits[i]) then return false end
    at = at + plan[i]
  end
  for i = 1, #plan do
    local n, first, l, d = plan[i], firsts[i], lists[i], bits[i]
    if redis.call('BITPOS', d, 0) >= n then
      redis.call('DEL', d)
      redis.call('HDEL', claims, first)
    else
      local moved = redis.pcall('SORT', ready, 'BY', 'nosort', 'DESC', 'LIMIT', 0, n, 'STORE', l)
      if moved ~= n then
        -- SORT refused (an ACL): through Lua.
        redis.call('DEL', l)
        local es = redis.call('LRANGE', ready, -n, -1)
        for j = #es, 1, -1000 do
          local part = {}
          for k = j, math.max(j - 1000 + 1, 1), -1 do part[#part + 1] = es[k] end
          redis.call('RPUSH', l, unpack(part))
        end
      end
    end
    redis.call('LTRIM', ready, 0, -n - 1)
  end
  setClaimedEnd(meta, 0, 0)
  return true
end

local firsts, lists, bits = {}, {}, {}
for i = 3, #ARGV do
  firsts[#firsts + 1], lists[#lists + 1], bits[#bits + 1] = ARGV[i], KEYS[2 * i - 1], KEYS[2 * i]
end
if not openEnd(KEYS[1], KEYS[3], KEYS[4], firsts, lists, bits) then
  return redis.error_reply('QUGOEND the claims given are not those in place')
end
return #firsts
