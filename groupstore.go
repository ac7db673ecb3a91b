package queue

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/gomodule/redigo/redis"
)

// A group's state lives on partition 0, under a hash tag of its own:
//
//	members  sorted set: member name -> when its session ends (Redis's clock, ms)
//	info     hash: member name -> "<weight>:<joined ms>:<last heartbeat ms>"
//	assign   hash: analyser -> member name, the assignment
//	meta     hash: gen (bumped with every change of the assignment), analysers, changed (ms)
//	nudge:M  list: at most one element, pushed when member M's queues change
//
// Every change (a join, a heartbeat, a leave, a member's session running
// out) is one script, which also computes the new assignment from the old
// one and the live members: members converge without a leader, and two
// members can never be handed one queue by one version of the assignment.
// The assignment only decides who tries to run a queue; the queue's fenced
// lease still decides who does.
type groupKeys struct {
	members, info, assign, meta, nudge string // nudge: the prefix of nudge:M
}

func newGroupKeys(prefix, group string) groupKeys {
	tag := "{" + prefix + ":group:" + group + "}:"
	return groupKeys{
		members: tag + "members",
		info:    tag + "info",
		assign:  tag + "assign",
		meta:    tag + "meta",
		nudge:   tag + "nudge:",
	}
}

// CheckGroupName returns an error (errors.Is ErrBadConfig) when name
// cannot name a consumer group or a member: empty, over 200 bytes, or
// with a brace or a control character (C0, DEL or C1; other bytes, UTF-8
// or not, may be used). JoinGroup and GroupStatus check
// their names so; this checks one without a Queue.
func CheckGroupName(name string) error { return checkGroupName("name", name) }

// checkGroupName refuses names that would break the keys: empty, too
// long, or with a brace (the hash tag) or a control character.
func checkGroupName(what, name string) error {
	if name == "" || len(name) > 200 || strings.ContainsAny(name, "{}") || strings.ContainsFunc(name, unicode.IsControl) {
		return fmt.Errorf("%w: %s %q: want 1 to 200 bytes, no braces or control characters", ErrBadConfig, what, name)
	}
	return nil
}

// groupBeatScript joins, heartbeats or leaves, drops the members whose
// session ran out, and when the members or their weights changed, or the
// layout did, assigns the queues anew: sticky (a queue stays with its
// member while that member has no more than its share) and balanced (each
// member gets its weight's share of the queues, rounded down, and the
// queues left over go to the members with the largest fractions, then to
// those that held more, then by name). Queues that must move go, in
// queue order, to the members furthest under their share. Every member
// whose queues changed is nudged: here when the caller gave its nudge
// key (it gives those of the members it knows), else by the caller once
// the script returned (a member that joined after the caller last read
// the members). An assignment about to be sent that the script did not
// write (edited by hand) is assigned anew too.
//
//	KEYS[1] = members, KEYS[2] = info, KEYS[3] = assign, KEYS[4] = meta,
//	KEYS[5...] = the nudge keys of members to nudge should their queues change
//	ARGV[1] = member, ARGV[2] = session TTL ms, ARGV[3] = weight,
//	ARGV[4] = analysers, ARGV[5] = nudge key prefix, ARGV[6] = "beat" or "leave",
//	ARGV[7] = the generation the member knows ("" when none),
//	ARGV[8] = the member's run ("" when none), ARGV[9] = how long a leave is kept, ms
//
// A leave of a run keeps in meta, under "left:<member>", the run and
// when the record ends: a heartbeat of that run that reaches Redis after
// the leave (sent before it, and given up on) joins nothing, and
// returns the reply of a settled group. A heartbeat of another run (the
// member started again) drops the record. A leave drops the records
// that ended.
//
// Returns {gen, the member's analysers as a comma-separated string (nil
// when the generation is the one the member knows: a heartbeat of a
// settled group costs no walk over the assignment), ms until the next
// other member's session ends (-1 when none), the live members, the
// members whose queues changed and whose nudge key was not given}.
var groupBeatScript = newScript("group-beat", -1, typeCheck(keyType{1, "zset"}, hashAt(2), hashAt(3), hashAt(4))+`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, n = ARGV[1], tonumber(ARGV[4])
local leftField = 'left:' .. me
if ARGV[8] ~= '' and ARGV[6] ~= 'leave' then
  local left = redis.call('HGET', KEYS[4], leftField)
  if left then
    local run, ends = string.match(left, '^(.*):(%d+)$')
    if run == ARGV[8] and tonumber(ends) > now then
      return {redis.call('HGET', KEYS[4], 'gen') or '0', false, -1, redis.call('ZRANGE', KEYS[1], 0, -1), {}}
    end
    redis.call('HDEL', KEYS[4], leftField)
  end
end
local changed = false
local missed = {} -- members whose queues changed, their nudge key not given
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
-- A session that ends further ahead than any SessionTTL reaches was not
-- written by a member (or Redis's clock went back): it would never end.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now + $maxSessionMS), '+inf')) do
  gone[#gone + 1] = m
end
for _, m in ipairs(gone) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('HDEL', KEYS[2], m)
  changed = true
end
if ARGV[6] == 'leave' then
  if redis.call('ZREM', KEYS[1], me) == 1 then changed = true end
  redis.call('HDEL', KEYS[2], me)
  local meta = redis.call('HGETALL', KEYS[4])
  for i = 1, #meta, 2 do
    if string.sub(meta[i], 1, 5) == 'left:' then
      local ends = string.match(meta[i + 1], ':(%d+)$')
      if not ends or tonumber(ends) <= now then redis.call('HDEL', KEYS[4], meta[i]) end
    end
  end
  if ARGV[8] ~= '' then redis.call('HSET', KEYS[4], leftField, ARGV[8] .. ':' .. (now + tonumber(ARGV[9]))) end
else
  local joined, weight = now, ARGV[3]
  local old = redis.call('HGET', KEYS[2], me)
  if redis.call('ZSCORE', KEYS[1], me) == false or not old then
    changed = true
  else
    local w, j = string.match(old, '^(%d+):(%d+):')
    if w ~= weight then changed = true end
    if j then joined = j end
  end
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), me)
  redis.call('HSET', KEYS[2], me, weight .. ':' .. joined .. ':' .. now)
end
if tostring(redis.call('HGET', KEYS[4], 'analysers')) ~= ARGV[4] then changed = true end
-- A member that does not know the generation is to be sent its
-- analysers: an assignment this script did not write (an analyser
-- missing, out of range or named twice, or held by no member: written by
-- hand) is computed anew first.
local sent
if not changed and ARGV[6] ~= 'leave' and redis.call('HGET', KEYS[4], 'gen') ~= ARGV[7] then
  sent = redis.call('HGETALL', KEYS[3])
  local live = {}
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do live[m] = true end
  changed = #sent ~= 2 * n
  for i = 1, #sent, 2 do
    local f = sent[i]
    if changed or not ((f == '0' or string.match(f, '^[1-9]%d*$')) and tonumber(f) < n and live[sent[i + 1]]) then
      changed = true
      break
    end
  end
end
if changed then
  local ms = redis.call('ZRANGE', KEYS[1], 0, -1)
  table.sort(ms)
  local live, w, total = {}, {}, 0
  for _, m in ipairs(ms) do
    live[m] = true
    local v = redis.call('HGET', KEYS[2], m)
    -- A weight out of bounds (written by hand) counts as the bound.
    local d = v and string.match(v, '^(%d+):') or '1'
    w[m] = #d > #'$maxGroupWeight' and $maxGroupWeight or math.min(math.max(tonumber(d), 1), $maxGroupWeight)
    total = total + w[m]
  end
  local owner, held = {}, {}
  local cur = redis.call('HGETALL', KEYS[3])
  for i = 1, #cur, 2 do
    local q = tonumber(cur[i])
    if q and q >= 0 and q < n and q == math.floor(q) and live[cur[i + 1]] then
      owner[q] = cur[i + 1]
      held[cur[i + 1]] = (held[cur[i + 1]] or 0) + 1
    end
  end
  local quota, rank = {}, {}
  local left = n
  for _, m in ipairs(ms) do
    quota[m] = math.floor(n * w[m] / total)
    left = left - quota[m]
    rank[#rank + 1] = m
  end
  table.sort(rank, function(a, b)
    local fa, fb = (n * w[a]) % total, (n * w[b]) % total
    if fa ~= fb then return fa > fb end
    local ha, hb = held[a] or 0, held[b] or 0
    if ha ~= hb then return ha > hb end
    return a < b
  end)
  for i = 1, math.min(left, #rank) do quota[rank[i]] = quota[rank[i]] + 1 end
  local kept, new, moved = {}, {}, {}
  for q = 0, n - 1 do
    local o = owner[q]
    if o and (kept[o] or 0) < quota[o] then
      kept[o] = (kept[o] or 0) + 1
      new[q] = o
    end
  end
  for q = 0, n - 1 do
    if not new[q] then
      local best, gap = nil, 0
      for _, m in ipairs(ms) do
        local g = quota[m] - (kept[m] or 0)
        if g > gap then best, gap = m, g end
      end
      if best then
        kept[best] = (kept[best] or 0) + 1
        new[q] = best
      end
      if owner[q] then moved[owner[q]] = true end
      if best then moved[best] = true end
    end
  end
  redis.call('DEL', KEYS[3])
  local args = {}
  for q = 0, n - 1 do
    if new[q] then
      args[#args + 1] = q
      args[#args + 1] = new[q]
      if #args >= 2 * $scriptChunk then
        redis.call('HSET', KEYS[3], unpack(args))
        args = {}
      end
    end
  end
  if #args > 0 then redis.call('HSET', KEYS[3], unpack(args)) end
  -- The generation is Redis's clock in ms, or one more than the last when
  -- that is not higher: a group that Redis lost (a restart without
  -- persistence) does not repeat a generation a member knows. A last one
  -- that is not a count Lua adds one to exactly (written by hand) is
  -- passed over.
  local gen = redis.call('HGET', KEYS[4], 'gen')
  gen = gen and string.match(gen, '^%d+$') and #gen <= 15 and tonumber(gen) or 0
  gen = string.format('%d', math.max(gen + 1, now))
  redis.call('HSET', KEYS[4], 'gen', gen, 'analysers', ARGV[4], 'changed', now)
  local given = {}
  for i = 5, #KEYS do given[KEYS[i]] = true end
  for m in pairs(moved) do
    local k = ARGV[5] .. m
    if m ~= me and given[k] then
      redis.call('DEL', k)
      redis.call('RPUSH', k, '1')
      redis.call('PEXPIRE', k, ARGV[2])
    elseif m ~= me then
      missed[#missed + 1] = m
    end
  end
end
local gen = redis.call('HGET', KEYS[4], 'gen') or '0'
local mine = {}
if ARGV[6] ~= 'leave' and gen ~= ARGV[7] then
  if changed or not sent then sent = redis.call('HGETALL', KEYS[3]) end
  for i = 1, #sent, 2 do
    if sent[i + 1] == me then mine[#mine + 1] = sent[i] end
  end
end
local next = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 1, 'WITHSCORES')
for i = 1, #first, 2 do
  if first[i] ~= me then
    next = math.max(tonumber(first[i + 1]) - now, 0)
    break
  end
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if gen == ARGV[7] then return {gen, false, next, live, missed} end
return {gen, table.concat(mine, ','), next, live, missed}
`)

// groupStore runs a group's scripts on partition 0.
type groupStore struct {
	part  *partition
	keys  groupKeys
	name  string
	n     int // analysers
	ttlMS int64

	// members are the group's live members as the last heartbeat read
	// them (nil before the first): a heartbeat nudges those of them whose
	// queues it moves. Heartbeats of one member run one at a time.
	members []string

	// run names the member's run (one JoinGroup call): its leave is
	// kept, so that a heartbeat of the run that reaches Redis after it
	// joins nothing. "" for none (nothing kept).
	run string
}

// groupLeftKeep is how long a leave is kept for its run's late
// heartbeats (at least a session). A heartbeat given up on while its
// connection went half-open may still reach Redis after the member left:
// the connection is closed, but the system goes on sending what it held,
// for about 15 minutes with Linux's defaults (tcp_retries2).
const groupLeftKeep = 20 * time.Minute

func (q *Queue) newGroupStore(group string, ttl time.Duration) (*groupStore, error) {
	if err := checkGroupName("group", group); err != nil {
		return nil, err
	}
	if q.closed.Load() {
		return nil, ErrClosed
	}
	return &groupStore{
		part:  q.parts[0],
		keys:  newGroupKeys(q.cfg.Prefix, group),
		name:  group,
		n:     q.Analysers(),
		ttlMS: ttl.Milliseconds(),
	}, nil
}

// groupBeat is what a heartbeat tells a member.
type groupBeat struct {
	gen       int64
	same      bool          // the generation is the one the caller knows: analysers is not read
	analysers []int         // the member's, in order
	nextEnd   time.Duration // until the next other member's session ends; -1 when none
}

// beat runs the beat script for member with op "beat" or "leave"; known
// is the generation the member knows (0 when none).
func (g *groupStore) beat(ctx context.Context, member string, weight int, op string, known int64) (groupBeat, error) {
	knownArg := ""
	if known > 0 {
		knownArg = strconv.FormatInt(known, 10)
	}
	what := fmt.Sprintf("%s group %q", op, g.name)
	r, err := onPartition(ctx, g.part, what, func(conn redis.Conn) ([]any, error) {
		if g.members == nil {
			// The first heartbeat: the members to nudge are read first.
			m, err := redis.Strings(doContext(conn, ctx, "ZRANGE", g.keys.members, 0, -1))
			if err != nil {
				return nil, err
			}
			g.members = m
		}
		args := make([]any, 0, 5+len(g.members)+9)
		args = append(args, 4+len(g.members), g.keys.members, g.keys.info, g.keys.assign, g.keys.meta)
		for _, m := range g.members {
			args = append(args, g.keys.nudge+m)
		}
		keep := max(groupLeftKeep.Milliseconds(), g.ttlMS)
		args = append(args, member, g.ttlMS, weight, g.n, g.keys.nudge, op, knownArg, g.run, keep)
		r, err := redis.Values(runScript(ctx, groupBeatScript, conn, args...))
		if err != nil || len(r) != 5 {
			return r, err
		}
		// Members the caller did not know of (they joined since it last
		// read the members) would otherwise learn of their changed
		// queues only at their own next heartbeat, a fifth of their
		// session later. Nudged here, in one round trip, at best: the
		// heartbeat itself is done, and a nudge that fails only leaves
		// that wait.
		missed, _ := redis.Strings(r[4], nil)
		g.nudge(ctx, conn, missed)
		return r, nil
	})
	if err != nil {
		return groupBeat{}, err
	}
	if len(r) != 5 {
		return groupBeat{}, fmt.Errorf("queue: %s: unexpected reply %v", what, r)
	}
	if live, err := redis.Strings(r[3], nil); err == nil {
		g.members = live
	}
	var b groupBeat
	b.gen, _ = redis.Int64(r[0], nil)
	if r[1] == nil {
		b.same = true
	} else {
		list, _ := redis.String(r[1], nil)
		if b.analysers, err = parseAnalysers(list, g.n); err != nil {
			return groupBeat{}, fmt.Errorf("queue: %s: %w", what, err)
		}
	}
	next, _ := redis.Int64(r[2], nil)
	b.nextEnd = time.Duration(next) * time.Millisecond
	if next < 0 {
		b.nextEnd = -1
	}
	return b, nil
}

// nudge wakes the members' waits (waitNudge), ignoring errors. One
// round trip; none when members is empty.
func (g *groupStore) nudge(ctx context.Context, conn redis.Conn, members []string) {
	if len(members) == 0 {
		return
	}
	for _, m := range members {
		k := g.keys.nudge + m
		for _, c := range [][]any{{"DEL", k}, {"RPUSH", k, "1"}, {"PEXPIRE", k, g.ttlMS}} {
			if conn.Send(c[0].(string), c[1:]...) != nil {
				return
			}
		}
	}
	if conn.Flush() != nil {
		return
	}
	for range 3 * len(members) {
		if _, err := receiveContext(conn, ctx); err != nil && conn.Err() != nil {
			return
		}
	}
}

// parseAnalysers parses "a,b,c" into sorted analysers below n, each
// once. An analyser twice (fields "1" and "01" of a hash written by hand)
// is refused: the member would start two pools on it and lose track of
// one.
func parseAnalysers(list string, n int) ([]int, error) {
	if list == "" {
		return nil, nil
	}
	fields := strings.Split(list, ",")
	out := make([]int, 0, len(fields))
	for _, f := range fields {
		a, err := strconv.Atoi(f)
		if err != nil || a < 0 || a >= n {
			return nil, fmt.Errorf("%w: analyser %q in the assignment", ErrMalformed, f)
		}
		out = append(out, a)
	}
	slices.Sort(out)
	for i := 1; i < len(out); i++ {
		if out[i] == out[i-1] {
			return nil, fmt.Errorf("%w: analyser %d twice in the assignment", ErrMalformed, out[i])
		}
	}
	return out, nil
}

// waitNudge waits up to d for member's nudge, and reports whether one came.
// A reply that has not come a heartbeat's period after d (a connection
// gone half-open, a server that stopped answering) ends the wait as a
// timeout would: the connection's read timeout (10s with Dial's pools,
// none at all on a redigo pool's by default) may be longer than the
// member's session, which would run out while the member lives, its
// queues given to the others.
func (g *groupStore) waitNudge(ctx context.Context, member string, d time.Duration) (bool, error) {
	wctx, cancel := blockCtx(ctx, d, time.Duration(g.ttlMS)*time.Millisecond/5)
	defer cancel()
	r, err := onPartition(wctx, g.part, fmt.Sprintf("wait on group %q", g.name), func(conn redis.Conn) (any, error) {
		return doContext(conn, wctx, "BLPOP", g.keys.nudge+member, blockSeconds(d))
	})
	if err != nil {
		if blockOver(ctx, wctx, err) {
			return false, nil
		}
		return false, err
	}
	return r != nil, nil
}
