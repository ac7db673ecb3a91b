package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A queue's lease is a string key with a PX expiry (Redis's clock decides
// when it ends) holding "<fencing token>.<nonce>:<owner>". Every script
// that changes pending work compares the caller's whole lease value with
// the key's (see fenced in scripts.go) and extends the lease, so a stale
// owner's late call changes nothing. The nonce, random per acquisition,
// makes every lease value unique even when the token is not: after Redis
// loses writes (a restart without persistence, a failover to a replica
// that missed them) two processes with the same Owner string could
// otherwise hold equal values. The token itself is Redis's clock in
// microseconds, or the last token plus one when that is not higher, so it
// grows across such a loss too unless Redis's clock went back.

// luaNextFence sets fence to the next fencing token, from the meta hash at
// KEYS[2] and Redis's clock, without writing anything. A fence that is not
// a count (written by hand) is passed over: the clock alone is enough.
const luaNextFence = `
local old = redis.call('HGET', KEYS[2], 'fence')
local t = redis.call('TIME')
local fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
if old and string.match(old, '^%d+$') and #old <= 16 and tonumber(old) >= fence then fence = tonumber(old) + 1 end
fence = string.format('%d', fence)
`

// acquireScript takes a free lease with a new fencing token, and counts
// the leases taken (meta field leases). A lease that still holds the
// caller's own last value (one it gave up for lost while Redis was out of
// reach, or failed to release) is free to it. A lease whose value ends
// as ARGV[5] says was taken by a try of this acquisition (or given by a
// refence) whose reply was lost: no call carries that value yet, so it is
// only extended and returned, and a try that arrives late, after another
// took the lease, changes nothing.
//
//	KEYS[1] = lease, KEYS[2] = meta hash
//	ARGV[1] = owner, ARGV[2] = lease TTL ms, ARGV[3] = nonce,
//	ARGV[4] = the caller's last lease value, or "",
//	ARGV[5] = ".<nonce>:<owner>" of the caller's last acquisition (or,
//	failing one, refence) whose reply was lost, or "": a lease ending so is
//	the caller's too
//
// Returns {1, lease value, the meta hash's lastDeathField ("" when none)}
// when taken, or {0, ms left on the current lease, its value ("" when the
// key is not a string)}.
// Its first write is a DEL of the lease: Redis refuses a script at
// maxmemory only at its first write, and only when that command may grow
// memory (HSET, SET), so starting with DEL lets a pool take the lease and
// drain a full Redis.
var acquireScript = newScript("acquire", 2, luaIncr+`
-- The latest death the dead-letter store recorded: the new owner stamps
-- its own past it (deathClock).
local function lastDeath()
  local v = redis.pcall('HGET', KEYS[2], '$lastDeathField')
  if type(v) == 'string' then return v end
  return ''
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  local held = ''
  if redis.call('TYPE', KEYS[1]).ok == 'string' then held = redis.call('GET', KEYS[1]) end
  if ARGV[5] ~= '' and #held > #ARGV[5] and string.sub(held, -#ARGV[5]) == ARGV[5] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, held, lastDeath()}
  end
  if ARGV[4] == '' or held ~= ARGV[4] then
    return {0, redis.call('PTTL', KEYS[1]), held}
  end
end
`+luaNextFence+`
redis.call('DEL', KEYS[1])
-- The cancel marks' bound (cancel.go) goes with the owner: one of an
-- earlier release put entries back without raising it, and the next
-- claim sets it afresh.
redis.call('HDEL', KEYS[2], '$markBoundField')
redis.call('HSET', KEYS[2], 'fence', fence)
incr(KEYS[2], 'leases', 1)
local v = fence .. '.' .. ARGV[3] .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v, lastDeath()}
`)

// refenceScript gives a lease its holder still has a new fencing token and
// nonce, so that every call still on its way with the old value is
// refused when it arrives. A retry whose first try ran but lost its reply
// finds the lease already carrying its nonce, and takes that value.
//
//	KEYS[1] = lease, KEYS[2] = meta hash
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms, ARGV[3] = new nonce, ARGV[4] = owner
//
// Returns the new lease value.
var refenceScript = newScript("refence", 2, `
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then
  local mine = '.' .. ARGV[3] .. ':' .. ARGV[4]
  if cur and #cur > #mine and string.sub(cur, -#mine) == mine then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return cur
  end
  return redis.error_reply('$staleReply lease lost')
end
`+luaNextFence+`
local v = fence .. '.' .. ARGV[3] .. ':' .. ARGV[4]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'fence', fence)
return v
`)

// renewScript extends a lease that is still the caller's.
//
//	KEYS[1] = lease
//	ARGV[1] = lease value, ARGV[2] = lease TTL ms
//
// Returns 1 when extended, 0 when the lease is gone or another's.
var renewScript = newScript("renew", 1, `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

// releaseScript gives a lease up and wakes one standby.
//
//	KEYS[1] = lease, KEYS[2] = wake list
//	ARGV[1] = lease value
//
// Returns 1 when released, 0 when the lease was not the caller's.
var releaseScript = newScript("release", 2, `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
`)

// leaseDefaults fills in the lease settings that Consumer and AnalysePool
// share, and checks them.
func leaseDefaults(ttl time.Duration, maxAttempts int, owner string) (time.Duration, int, string, error) {
	if ttl == 0 {
		ttl = 5 * time.Second
	}
	if ttl < 10*time.Millisecond || ttl > time.Hour {
		return 0, 0, "", fmt.Errorf("%w: LeaseTTL %v not in [10ms, 1h]", ErrBadConfig, ttl)
	}
	if maxAttempts == 0 {
		maxAttempts = 5
	}
	if maxAttempts < 0 || maxAttempts > 1000 {
		return 0, 0, "", fmt.Errorf("%w: MaxAttempts %d not in [1, 1000]", ErrBadConfig, maxAttempts)
	}
	if owner == "" {
		owner = defaultOwner()
	}
	return ttl, maxAttempts, owner, nil
}

// value returns the lease value the store holds ("" before an acquisition).
func (s *store) value() string {
	if v := s.lease.Load(); v != nil {
		return *v
	}
	return ""
}

// abandonScript gives up a lease taken by an acquisition whose reply was
// lost, and wakes one standby.
//
//	KEYS[1] = lease, KEYS[2] = wake list
//	ARGV[1] = ".<nonce>:<owner>" of that acquisition
//
// Returns 1 when it was still held, else 0.
var abandonScript = newScript("abandon", 2, `
local cur = redis.call('GET', KEYS[1])
if not cur or #cur <= #ARGV[1] or string.sub(cur, -#ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
`)

// tryAcquire takes the lease if it is free. When it is not, it returns
// the time left on the current lease and its holder's value. When the
// reply is lost, the lease may have been taken all the same: the next
// try takes such a lease as its own (by its nonce), and an acquire that
// gives up abandons it. A lease given a value by a refence of the last
// tenure whose reply was lost is taken as the store's own too.
func (s *store) tryAcquire(ctx context.Context) (ok bool, left time.Duration, holder string, err error) {
	if err := ctx.Err(); err != nil {
		// Sent, it would only take a lease to release at once (see
		// below): once ctx has ended, nothing is sent (as getConn does).
		return false, 0, "", redisErr(s.what("acquire lease of"), ctxCause(ctx, err))
	}
	// Every try until one is answered carries the same nonce: any of them
	// may be the one that took the lease.
	sent := time.Now()
	nonce, lost := s.unanswered, ""
	if nonce == "" {
		nonce = newNonce()
		if s.refencing != "" { // no tenure is under way: nothing else reads or writes it
			// A refence of the last tenure whose reply was lost may have
			// given the lease a value ending so: the store's own.
			lost = s.nonceSuffix(s.refencing)
		}
	} else {
		lost = s.nonceSuffix(nonce)
	}
	// The call is not cut short the moment ctx ends: a try whose reply
	// was not awaited may still be on its way, and run after the abandon
	// that was to give its lease up, leaving a lease nobody knows is held
	// (every standby then waits its whole TTL). Its reply is awaited for
	// acquireGrace after ctx's end; the lease it brings is released by
	// the caller, which finds ctx ended.
	cctx, stop := outlive(ctx, acquireGrace)
	defer stop()
	r, err := redis.Values(s.script(cctx, "acquire lease of", acquireScript, s.keys.lease, s.keys.meta, s.owner, s.ttlMS, nonce, s.value(), lost))
	if err != nil {
		// Maybe taken, maybe not (an error reply took nothing, and then
		// no lease ends with this nonce: no harm done).
		s.unanswered = nonce
		return false, 0, "", err
	}
	s.unanswered = ""
	if n, _ := redis.Int(r[0], nil); n == 1 && len(r) == 3 {
		v, err := redis.String(r[1], nil)
		if err != nil {
			return false, 0, "", err
		}
		last, _ := redis.String(r[2], nil)
		s.deathFloor.Store(deathFloor(last, time.Now().UnixMilli()))
		s.lease.Store(&v)
		s.acquired = sent
		s.refencing = "" // a refence left unanswered by an earlier tenure is moot
		return true, 0, "", nil
	}
	if len(r) != 3 {
		return false, 0, "", fmt.Errorf("queue: %s: unexpected reply %v", s.what("acquire lease of"), r)
	}
	ms, _ := redis.Int64(r[1], nil)
	if ms == -1 {
		// Every lease has an expiry: the key holds something else, and a
		// standby waiting for it to lapse would spin for ever.
		return false, 0, "", fmt.Errorf("queue: %s: %w: %s has no expiry; delete it to let an owner take the queue",
			s.what("acquire lease of"), ErrWrongType, s.keys.lease)
	}
	holder, _ = redis.String(r[2], nil)
	return false, time.Duration(max(ms, 1)) * time.Millisecond, holder, nil
}

// acquire waits as a standby until it holds the lease or ctx ends. It
// waits for a released lease's wake-up signal, or for the lease to expire.
// Redis errors are returned, or, with a report func, reported and retried
// with capped backoff. onLook, when set, is told of every answer Redis
// gave (sent: when the call was sent) and the holder it found: "" when the
// lease was taken.
func (s *store) acquire(ctx context.Context, report func(error), onLook func(sent time.Time, holder string, left time.Duration)) error {
	var b backoff
	fail := func(err error) error {
		if ctx.Err() != nil {
			s.abandon(ctx)
			return ctx.Err()
		}
		if report == nil {
			// The caller gives up on this store (Consume returns the
			// error): a lease a lost reply took goes with it.
			s.abandon(ctx)
			return err
		}
		report(err)
		return b.wait(ctx)
	}
	for {
		sent := time.Now()
		ok, left, holder, err := s.tryAcquire(ctx)
		if ok {
			// What the store knew of the ready list is of a tenure that
			// ended: others may have claimed and put entries back since.
			s.ahead.Store(aheadUnknown)
			s.declined.Store(false)
			if onLook != nil {
				onLook(sent, "", 0)
			}
			return nil
		}
		if err != nil {
			if err := fail(err); err != nil {
				return err
			}
			continue
		}
		b.reset()
		if onLook != nil {
			onLook(sent, holder, left)
		}
		if err := s.waitLease(ctx, time.Now().Add(min(left, s.ttl))); err != nil {
			if err := fail(err); err != nil {
				return err
			}
		}
	}
}

// acquireGrace is how long an acquisition's reply is awaited after its
// ctx ended (see tryAcquire): an answer comes in a round trip, and a
// server that gives none in this time is one whose lease, taken or not,
// is left to abandon and, failing that, to the TTL.
const acquireGrace = time.Second

// outlive returns a context that ends grace after ctx does (with ctx's
// cause), and a func to call when done with it.
func outlive(ctx context.Context, grace time.Duration) (context.Context, func()) {
	c, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	stopAfter := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(grace, func() { cancel(context.Cause(ctx)) })
		context.AfterFunc(c, func() { t.Stop() }) // at once if c has ended
	})
	return c, func() { stopAfter(); cancel(nil) }
}

// abandon gives up, when acquire gives up, a lease the last try may have
// taken though its reply never came: held unknowingly, it would keep
// every standby waiting a whole TTL. Best effort, bounded by a second.
func (s *store) abandon(ctx context.Context) {
	if s.unanswered == "" {
		return
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	if _, err := s.script(actx, "abandon lease of", abandonScript, s.keys.lease, s.keys.wake, s.nonceSuffix(s.unanswered)); err == nil {
		s.unanswered = ""
	}
}

// nonceSuffix is how a lease value taken with nonce by this store ends.
func (s *store) nonceSuffix(nonce string) string { return "." + nonce + ":" + s.owner }

// renew extends the lease by the TTL. It returns ErrLeaseLost when the
// lease is no longer the store's. Costs one round trip.
func (s *store) renew(ctx context.Context) error {
	if err := s.lockLease(ctx); err != nil { // not while refence changes the value
		return redisErr(s.what("renew lease of"), err)
	}
	defer s.unlockLease()
	if s.refencing != "" {
		// A refence whose answer was lost may have changed the value:
		// finish it first (it extends the lease too).
		return s.refenceLocked(ctx)
	}
	n, err := redis.Int(s.script(ctx, "renew lease of", renewScript, s.keys.lease, s.value(), s.ttlMS))
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("queue: %s: %w", s.what("renew lease of"), ErrLeaseLost)
	}
	return nil
}

// release gives the lease up, waking a standby at once. Costs one round
// trip, and one more after a refence whose reply was lost: that refence is
// finished first, as the lease may hold the value it gave.
func (s *store) release(ctx context.Context) error {
	if err := s.finishRefence(ctx); err != nil {
		if errors.Is(err, ErrLeaseLost) {
			return nil // not the store's: nothing to give up
		}
		return err
	}
	_, err := s.script(ctx, "release lease of", releaseScript, s.keys.lease, s.keys.wake, s.value())
	return err
}

// finishRefence finishes a refence whose reply was lost, if any: until
// then the lease may hold a value the store was never told, and every
// fenced call made with the old one is refused as a lost lease's. Costs
// one round trip when there is one, none otherwise.
func (s *store) finishRefence(ctx context.Context) error {
	if err := s.lockLease(ctx); err != nil {
		return redisErr(s.what("refence lease of"), err)
	}
	defer s.unlockLease()
	if s.refencing == "" {
		return nil
	}
	return s.refenceLocked(ctx)
}

// refence gives the lease a new token and nonce (see refenceScript): every
// call made with the old value and still on its way is refused when it
// reaches Redis. Costs one round trip.
func (s *store) refence(ctx context.Context) error {
	if err := s.lockLease(ctx); err != nil {
		return redisErr(s.what("refence lease of"), err)
	}
	defer s.unlockLease()
	return s.refenceLocked(ctx)
}

// lockLease takes the store's lease lock, held by renew and refence so
// that a renewal never races a new value; it gives up when ctx ends, so
// that a renewer whose deadline passes while a refence waits on Redis
// still declares the lease lost in time.
func (s *store) lockLease(ctx context.Context) error {
	select {
	case s.leaseLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *store) unlockLease() { <-s.leaseLock }

// refenceLocked is refence with the lease lock held. Until a refence has been
// answered, its nonce is kept: a retry (or the next renewal) sends the
// same one, and so finds the new value if the lost try ran.
func (s *store) refenceLocked(ctx context.Context) error {
	if s.refencing == "" {
		s.refencing = newNonce()
	}
	v, err := redis.String(s.script(ctx, "refence lease of", refenceScript, s.keys.lease, s.keys.meta, s.value(), s.ttlMS, s.refencing, s.owner))
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			s.refencing = ""
		}
		return err
	}
	s.refencing = ""
	s.lease.Store(&v)
	return nil
}

// newNonce returns the random part of a new lease value.
func newNonce() string { return strconv.FormatUint(rand.Uint64(), 36) }

// parseLease splits a lease value, "<fencing token>.<nonce>:<owner>" (or
// "<fencing token>:<owner>", as older releases wrote it). A value of
// another form holds the queue all the same (pools wait for it to
// expire): its owner is then the value itself, quoted and clipped, so
// that no one reads it as a lease nobody holds.
func parseLease(v string) (token int64, owner string) {
	tok, owner, ok := strings.Cut(v, ":")
	tok, _, _ = strings.Cut(tok, ".")
	token, err := strconv.ParseInt(tok, 10, 64)
	if v != "" && (!ok || err != nil) {
		return 0, fmt.Sprintf("(not a lease of this package: %q)", clipError(v, 40))
	}
	return token, owner
}

// defaultOwner names this process in a lease: "host:pid".
func defaultOwner() string {
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(os.Getpid())
}
