package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A partition whose primary Redis Sentinel watches (redis+sentinel://).
// Its pool dials whatever server the sentinels name as the primary:
//
//   - The sentinels are asked side by side (SENTINEL GET-MASTER-ADDR-BY-
//     NAME), and the address most of those that answer name is taken
//     (see ask); once most of them agree, the rest are not waited for,
//     and one that is down or does not answer within DialTimeout is left
//     out. At most one lookup runs at a time; the dials that need it wait
//     for it.
//   - Every new connection checks ROLE and refuses a server that is not a
//     primary: right after a failover a sentinel may still name the old
//     one, now a replica. The next address named is tried then, and that
//     sentinel is subscribed to last.
//   - A connection that fails, or gets a READONLY reply (its server was
//     demoted), reports a non-nil Err, so redigo drops it when it is put
//     back, and makes the next dial ask the sentinels again.
//   - One goroutine per partition subscribes to +switch-master on a
//     sentinel (reconnecting with backoff, to the next sentinel when one
//     fails) and takes the new address at once. A sentinel that names
//     another primary as it is subscribed to makes the next dial ask them
//     all. An idle connection to another address is dropped when a borrow
//     takes it.
//
// Nothing is sent again here: a command whose connection failed has the
// uncertain reply it had on a standalone server, and a READONLY reply
// becomes ErrReadOnly (the write did not run) for the caller to handle.

const (
	// switchMaster is the channel on which sentinels announce a failover:
	// "<name> <old ip> <old port> <new ip> <new port>".
	switchMaster = "+switch-master"
	// sentinelQuiet is how long a subscription may go without a message
	// before it is made again (and the primary asked for again): a
	// sentinel that stopped answering without closing the connection is
	// left within that.
	sentinelQuiet = time.Minute
)

// sentinelPrimary finds and follows the primary of one partition.
type sentinelPrimary struct {
	name       string        // the name the sentinels know the primary by
	toSentinel *serverDialer // the sentinels' credentials, DialTimeout to answer
	toPrimary  *serverDialer // the URL's credentials and database

	mu        sync.Mutex
	sentinels []string      // in the order they are asked
	addr      string        // the primary as last named ("" before the first lookup)
	from      string        // the sentinel that named it
	fresh     bool          // no connection to addr has failed since it was named
	lookup    chan struct{} // closed when the lookup under way ends; nil when none runs
	sub       redis.Conn    // the subscription's connection, while it is made
	cancel    context.CancelFunc
	done      chan struct{} // closed when the subscription's goroutine returns

	// moves counts the times another primary than the last was named:
	// the queues' owners resync when it changes during a tenure (see
	// slotWatch). Written with mu held, read without.
	moves atomic.Uint32
}

// sentinelPools marks the pools made by sentinelPool, for New, until
// their stop: a partition's owners watch its primary's moves.
var sentinelPools sync.Map // *redis.Pool -> *sentinelPrimary

// primaryOf returns the sentinelPrimary whose pool p is, or nil.
func primaryOf(p *redis.Pool) *sentinelPrimary {
	v, _ := sentinelPools.Load(p)
	sp, _ := v.(*sentinelPrimary)
	return sp
}

// current returns the primary's address as last named.
func (s *sentinelPrimary) current() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// newSentinelPool makes the pool of a partition whose primary Sentinel
// watches, and pings the primary through it. stop, when not nil, ends
// what the pool runs in the background.
func newSentinelPool(ctx context.Context, u redisURL, cfg Config, onDial func(context.Context, redis.Conn) error) (p *redis.Pool, stop func() error, err error) {
	return sentinelPool(ctx, u, cfg, onDial, nil)
}

// sentinelPool is newSentinelPool with wrap, when set, wrapping every
// connection to the primary (the fault suite records through it).
func sentinelPool(ctx context.Context, u redisURL, cfg Config, onDial func(context.Context, redis.Conn) error, wrap func(redis.Conn) redis.Conn) (*redis.Pool, func() error, error) {
	s := &sentinelPrimary{
		name:       u.primary,
		toSentinel: newServerDialer(cfg, u.tls, u.sentinelUser, u.sentinelPassword, 0, cfg.DialTimeout),
		toPrimary:  newServerDialer(cfg, u.tls, u.user, u.password, u.db, cfg.ReadTimeout),
		sentinels:  slices.Clone(u.addrs),
		done:       make(chan struct{}),
	}
	s.toPrimary.wrap = wrap
	p := poolOf(cfg, s.dial, onDial, s.stale)
	if err := ping(ctx, p); err != nil {
		p.Close()
		return nil, nil, err
	}
	watch, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.follow(watch)
	sentinelPools.Store(p, s)
	return p, func() error {
		sentinelPools.Delete(p)
		return s.stop()
	}, nil
}

// stop ends the subscription and joins its goroutine.
func (s *sentinelPrimary) stop() error {
	s.mu.Lock()
	s.cancel()
	if s.sub != nil {
		s.sub.Close() // ends its wait for a message
	}
	s.mu.Unlock()
	<-s.done
	return nil
}

// dial connects to the primary. A server that is not one is refused, and
// the sentinels are asked again for another, until none is left.
func (s *sentinelPrimary) dial(ctx context.Context) (*watchedConn, error) {
	var refused map[string]bool // in this dial
	var err error
	for {
		addr, from, lerr := s.primary(ctx, refused)
		if lerr != nil {
			if err != nil && errors.Is(lerr, errNoOtherPrimary) {
				return nil, err
			}
			return nil, lerr
		}
		c, derr := s.toPrimary.dial(ctx, addr)
		if derr != nil {
			s.suspect(addr)
			return nil, fmt.Errorf("primary %q at %s: %w", s.name, addr, derr)
		}
		role, rerr := roleOf(ctx, c)
		if rerr == nil && role == "master" {
			c.lost = s.suspect
			return c, nil
		}
		c.Close()
		if rerr != nil {
			s.suspect(addr)
			return nil, fmt.Errorf("primary %q at %s: ROLE: %w", s.name, addr, rerr)
		}
		s.refuse(addr, from)
		if refused == nil {
			refused = map[string]bool{}
		}
		refused[addr] = true
		err = fmt.Errorf("primary %q: sentinel %s names %s, which is not a primary (ROLE %s): a failover may be under way", s.name, from, addr, role)
	}
}

// errNoOtherPrimary is ask's error when every address the sentinels name
// was refused already.
var errNoOtherPrimary = errors.New("the sentinels name no other server")

// roleOf returns the first word of ROLE: master, slave or sentinel.
func roleOf(ctx context.Context, c redis.Conn) (string, error) {
	v, err := redis.Values(doContext(c, ctx, "ROLE"))
	if err != nil {
		return "", err
	}
	if len(v) == 0 {
		return "", errors.New("empty ROLE reply")
	}
	return redis.String(v[0], nil)
}

// stale refuses an idle connection to a server other than the primary.
func (s *sentinelPrimary) stale(c *watchedConn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.addr != s.addr {
		return errors.New("queue: connection to a former primary")
	}
	return nil
}

// primary returns the primary's address and the sentinel that named it,
// asking the sentinels when no address is trusted, or the one trusted is
// in skip.
func (s *sentinelPrimary) primary(ctx context.Context, skip map[string]bool) (addr, from string, err error) {
	for {
		s.mu.Lock()
		if s.fresh && !skip[s.addr] {
			addr, from = s.addr, s.from
			s.mu.Unlock()
			return addr, from, nil
		}
		if wait := s.lookup; wait != nil {
			s.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return "", "", ctx.Err()
			}
		}
		done := make(chan struct{})
		s.lookup = done
		order := slices.Clone(s.sentinels)
		s.mu.Unlock()

		addr, from, err = s.ask(ctx, order, skip)
		s.mu.Lock()
		s.lookup = nil
		close(done)
		if err == nil {
			s.named(addr, from)
		}
		s.mu.Unlock()
		return addr, from, err
	}
}

// ask asks every sentinel for the primary's address, side by side, and
// returns the address most of those that answered name (skip aside), with
// the first sentinel of order that named it; a tie goes to the one named
// first. During a failover the sentinels disagree for seconds: the leader
// names the promoted replica at once, the others the old primary until
// +switch-master, and the old primary answers ROLE master until it is
// turned into a replica. A process that took the leader's word while the
// processes already running kept the old primary would run a queue on two
// primaries at once, each with a lease of its own; by the majority's word
// it joins them, and every one moves at +switch-master.
func (s *sentinelPrimary) ask(ctx context.Context, order []string, skip map[string]bool) (addr, from string, err error) {
	type answer struct {
		i    int
		addr string
		err  error
	}
	// Once most of the sentinels name one address, the others cannot
	// outvote it: they are not waited for (one that hangs costs nothing).
	actx, cancel := context.WithCancel(ctx)
	got := make(chan answer, len(order))
	var wg sync.WaitGroup
	for i, sa := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := s.toSentinel.dial(actx, sa)
			var addr string
			if err == nil {
				addr, err = primaryAddr(doContext(c, actx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name))
				c.Close()
			}
			got <- answer{i, addr, err}
		}()
	}
	answers := make([]*answer, len(order)) // nil: not waited for
	votes := map[string]int{}
	for range order {
		a := <-got
		answers[a.i] = &a
		if a.err == nil && !skip[a.addr] {
			if votes[a.addr]++; votes[a.addr] > len(order)/2 {
				break
			}
		}
	}
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return "", "", ctx.Err()
	}
	e := &lookupError{name: s.name}
	first := map[string]int{}
	for i, a := range answers {
		switch {
		case a == nil:
		case a.err != nil:
			e.errs = append(e.errs, fmt.Errorf("sentinel %s: %w", order[i], a.err))
		case !skip[a.addr]:
			if _, ok := first[a.addr]; !ok {
				first[a.addr] = i
			}
			if addr == "" || votes[a.addr] > votes[addr] || votes[a.addr] == votes[addr] && first[a.addr] < first[addr] {
				addr = a.addr
			}
		}
	}
	switch {
	case addr != "":
		return addr, order[first[addr]], nil
	case len(e.errs) < len(order):
		return "", "", errNoOtherPrimary
	}
	return "", "", e
}

// lookupError is a lookup that no sentinel answered: each one's error.
type lookupError struct {
	name string
	errs []error
}

func (e *lookupError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "no sentinel named the primary %q", e.name)
	sep := ": "
	for _, err := range e.errs {
		b.WriteString(sep + err.Error())
		sep = "; "
	}
	return b.String()
}

func (e *lookupError) Unwrap() []error { return e.errs }

// primaryAddr reads a sentinel's reply to SENTINEL GET-MASTER-ADDR-BY-NAME.
func primaryAddr(reply any, err error) (string, error) {
	hp, err := redis.Strings(reply, err)
	if errors.Is(err, redis.ErrNil) {
		return "", errors.New("it watches no primary of that name")
	}
	if err != nil {
		return "", err
	}
	if len(hp) != 2 {
		return "", fmt.Errorf("%d fields in its reply, not 2", len(hp))
	}
	return net.JoinHostPort(hp[0], hp[1]), nil
}

// named takes addr as the primary, named by the sentinel from, which is
// asked first from now on. Called with s.mu held.
func (s *sentinelPrimary) named(addr, from string) {
	if s.addr != "" && addr != s.addr {
		s.moves.Add(1)
	}
	s.addr, s.from, s.fresh = addr, from, true
	if i := slices.Index(s.sentinels, from); i > 0 {
		s.sentinels = slices.Insert(slices.Delete(s.sentinels, i, i+1), 0, from)
	}
}

// suspect makes the next dial ask the sentinels again, when addr is the
// primary's address still: a connection to it failed or found a replica.
func (s *sentinelPrimary) suspect(addr string) {
	s.mu.Lock()
	if addr == s.addr {
		s.fresh = false
	}
	s.mu.Unlock()
}

// refuse records that addr, named by the sentinel from, is not a primary:
// that sentinel is asked last from now on.
func (s *sentinelPrimary) refuse(addr, from string) {
	s.mu.Lock()
	if addr == s.addr {
		s.fresh = false
	}
	if i := slices.Index(s.sentinels, from); i >= 0 {
		s.sentinels = append(slices.Delete(s.sentinels, i, i+1), from)
	}
	s.mu.Unlock()
}

// follow keeps a subscription to +switch-master on one of the sentinels
// until ctx ends, moving to the next sentinel with backoff when one fails.
func (s *sentinelPrimary) follow(ctx context.Context) {
	defer close(s.done)
	var b backoff
	for next := 0; ; next++ {
		s.mu.Lock()
		order := slices.Clone(s.sentinels)
		s.mu.Unlock()
		if s.subscribe(ctx, order[next%len(order)]) {
			b.reset()
			next = -1 // the preferred sentinel again
		}
		if b.wait(ctx) != nil {
			return
		}
	}
}

// subscribe follows one sentinel's announcements of failovers until its
// connection fails, it says nothing for sentinelQuiet, or ctx ends. It
// reports whether the subscription was made.
func (s *sentinelPrimary) subscribe(ctx context.Context, sa string) bool {
	c, err := s.toSentinel.dial(ctx, sa)
	if err != nil {
		return false
	}
	s.mu.Lock()
	if ctx.Err() != nil {
		s.mu.Unlock()
		c.Close()
		return false
	}
	s.sub = c
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.sub = nil
		s.mu.Unlock()
		c.Close()
	}()
	// Asked and subscribed in one write, which the sentinel runs without
	// a failover in between: no switch can fall between the two.
	c.Send("SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name)
	c.Send("SUBSCRIBE", switchMaster)
	if c.Flush() != nil {
		return false
	}
	addr, err := primaryAddr(c.Receive())
	if err != nil {
		return false
	}
	if _, err := c.Receive(); err != nil { // the subscription's confirmation
		return false
	}
	s.mu.Lock()
	if addr != s.addr {
		// A switch may have come while no one listened, or this sentinel
		// is the one of a failover's leader that names the promoted
		// replica before the others do: the next dial asks them all.
		s.fresh = false
	}
	s.mu.Unlock()
	for {
		v, err := redis.ReceiveWithTimeout(c, sentinelQuiet)
		if err != nil {
			return true
		}
		msg, _ := redis.Values(v, nil)
		if len(msg) != 3 {
			continue
		}
		text, _ := redis.String(msg[2], nil)
		f := strings.Fields(text)
		if len(f) == 5 && f[0] == s.name {
			s.mu.Lock()
			s.named(net.JoinHostPort(f[3], f[4]), sa)
			s.mu.Unlock()
		}
	}
}
