package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A Redis Cluster slot router over redigo. Every key of one queue carries
// the queue's hash tag, so each command and script touches one slot; the
// router sends it to the primary that owns the slot. It keeps the slot
// map (from CLUSTER SHARDS, or CLUSTER SLOTS before Redis 7), one redigo
// pool per primary, and follows the cluster's redirections:
//
//   - MOVED: the slot has a new owner. The map takes it at once, a full
//     refresh is started (at most one runs at a time), and the command is
//     sent to the new owner.
//   - ASK: the slot is being migrated and the key is on the target
//     already. The command is sent there once after ASKING; the map is
//     left alone.
//   - TRYAGAIN, CLUSTERDOWN, LOADING, MASTERDOWN, UNBLOCKED: the node
//     refused before running the command. It is sent again after a capped
//     backoff, within the caller's ctx and clusterRetryFor.
//
// Each of these replies says the command did not run, so sending it again
// cannot run it twice. Any other failure (a reply lost to a connection
// error, a timeout) is returned as it is, to the caller's own handling of
// an uncertain reply; a connection error also starts a map refresh.
//
// A partition on a cluster is a redigo pool (partitionPool) whose
// connections route each command, pipelined ones included: a pipeline
// that spans slots is split over the primaries' connections, and its
// replies come back in the order of its commands.

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// clusterRetryFor bounds how long a command is sent again after refusals
// and redirections when its ctx has no later deadline: about what a failover
// takes (a node timeout plus an election).
const clusterRetryFor = 20 * time.Second

// quickRedirects is how many MOVED and ASK replies are followed at once
// for one command; later ones wait the backoff first.
const quickRedirects = 3

// clusterRouter routes the commands of every partition on one cluster.
type clusterRouter struct {
	u     redisURL // credentials and TLS for every node
	cfg   Config
	seeds []string

	slots atomic.Pointer[slotMap] // stored by storeSlotsLocked
	moves slotMoves               // the primary changes of each slot (clustermoves.go)

	mu         sync.Mutex
	nodes      map[string]*redis.Pool // by address
	parts      []*redis.Pool          // the partitions' pools (partitionPool), forgotten in clusterPools on close
	closed     bool
	refreshing *refreshRun // the refresh under way; nil when none runs
	bg         sync.WaitGroup

	// wrap, when set, wraps every node connection (the tests record what
	// crosses them).
	wrap func(redis.Conn) redis.Conn
}

// clusterKey names the cluster a URL reaches, with its credentials:
// partitions of one Dial on the same cluster share one router.
func (u redisURL) clusterKey() string {
	seeds := slices.Clone(u.addrs)
	slices.Sort(seeds)
	return fmt.Sprintf("%t\x00%s\x00%s\x00%s", u.tls, u.user, u.password, strings.Join(seeds, ","))
}

// newClusterRouter reads the slot map from the first seed that answers.
func newClusterRouter(ctx context.Context, u redisURL, cfg Config) (*clusterRouter, error) {
	r := &clusterRouter{u: u, cfg: cfg, seeds: u.addrs, nodes: map[string]*redis.Pool{}}
	if err := r.refresh(ctx); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// nodePool returns the pool of the node at addr, made on first use.
func (r *clusterRouter) nodePool(addr string) (*redis.Pool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	p := r.nodes[addr]
	if p == nil {
		u := r.u
		u.topo, u.addr, u.addrs, u.db = standalone, addr, nil, 0
		p = newPool(u, r.cfg, nil)
		r.nodes[addr] = p
	}
	return p, nil
}

// nodeConn returns a connection to the node at addr.
func (r *clusterRouter) nodeConn(ctx context.Context, addr string) (redis.Conn, error) {
	var c redis.Conn
	for {
		p, err := r.nodePool(addr)
		if err != nil {
			return nil, err
		}
		c, err = getConn(ctx, p)
		if err == nil {
			break
		}
		if !r.dropped(addr, p) {
			return nil, err
		}
		// A refresh closed the pool meanwhile (addr served no slot);
		// the next one is made afresh.
	}
	if r.wrap != nil {
		c = r.wrap(c)
	}
	return c, nil
}

func (r *clusterRouter) close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.bg.Wait() // a refresh under way uses the pools
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.parts {
		clusterPools.Delete(p)
	}
	var errs []error
	for _, p := range r.nodes {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

// refresh reads the slot map again, or waits for the refresh under way,
// within ctx. A refresh runs within the ctx of the call that started it:
// when that ctx ended it, a call whose own ctx lives starts another.
func (r *clusterRouter) refresh(ctx context.Context) error {
	for {
		run, start := r.startRefresh()
		if start {
			r.runRefresh(ctx, run)
			return run.err
		}
		select {
		case <-run.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := run.err
		if ctx.Err() != nil || !ctxEnded(err) {
			return err
		}
	}
}

// refreshRun is one reading of the slot map, shared by the calls that
// wait for it. Each run keeps its own error: a run that ended is not
// told the outcome of a later one.
type refreshRun struct {
	done chan struct{} // closed when the run ends
	err  error         // set before done is closed
}

// refreshAsync starts a refresh in the background unless one runs.
func (r *clusterRouter) refreshAsync() {
	run, start := r.startRefresh()
	if !start {
		return
	}
	r.mu.Lock()
	if r.closed {
		r.refreshing = nil
		r.mu.Unlock()
		run.err = ErrClosed
		close(run.done)
		return
	}
	r.bg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.DialTimeout+r.cfg.ReadTimeout)
		defer cancel()
		r.runRefresh(ctx, run)
	}()
}

// startRefresh returns the refresh under way, and whether the caller
// must run it (none was under way).
func (r *clusterRouter) startRefresh() (*refreshRun, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refreshing != nil {
		return r.refreshing, false
	}
	r.refreshing = &refreshRun{done: make(chan struct{})}
	return r.refreshing, true
}

func (r *clusterRouter) runRefresh(ctx context.Context, run *refreshRun) {
	m, err := r.readSlots(ctx)
	var gone []*redis.Pool
	r.mu.Lock()
	if err == nil {
		r.storeSlotsLocked(m)
		gone = r.dropNodesLocked(m)
	}
	run.err = err
	r.refreshing = nil
	r.mu.Unlock()
	for _, p := range gone {
		p.Close()
	}
	close(run.done)
}

// dropNodesLocked forgets the pools of the nodes that are neither a seed
// nor a primary of m, and returns them to be closed: over a long life a
// cluster's nodes come and go (a node restarted on a new address), and
// each pool keeps idle connections to its node. A connection in use
// is closed when put back; a node that serves again gets a new pool.
// r.mu is held.
func (r *clusterRouter) dropNodesLocked(m *slotMap) []*redis.Pool {
	var gone []*redis.Pool
	for addr, p := range r.nodes {
		if !slices.Contains(m.primaries, addr) && !slices.Contains(r.seeds, addr) {
			delete(r.nodes, addr)
			gone = append(gone, p)
		}
	}
	return gone
}

// dropped reports whether p, the pool of addr, was dropped by a refresh
// (and closed) while the router is open.
func (r *clusterRouter) dropped(addr string, p *redis.Pool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.closed && r.nodes[addr] != p
}

// readSlots asks the known primaries, then the seeds, in a random order
// each, for the slot map, and returns the first answer.
func (r *clusterRouter) readSlots(ctx context.Context) (*slotMap, error) {
	var candidates []string
	if m := r.slots.Load(); m != nil {
		candidates = slices.Clone(m.primaries)
		rand.Shuffle(len(candidates), func(i, j int) { candidates[i], candidates[j] = candidates[j], candidates[i] })
	}
	seeds := slices.Clone(r.seeds)
	rand.Shuffle(len(seeds), func(i, j int) { seeds[i], seeds[j] = seeds[j], seeds[i] })
	for _, s := range seeds {
		if !slices.Contains(candidates, s) {
			candidates = append(candidates, s)
		}
	}
	var errs []error
	for _, addr := range candidates {
		m, err := r.readSlotsFrom(ctx, addr)
		if err == nil {
			return m, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("read the cluster's slot map: no node answered: %w", errors.Join(errs...))
}

func (r *clusterRouter) readSlotsFrom(ctx context.Context, addr string) (*slotMap, error) {
	c, err := r.nodeConn(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	reply, err := redis.Values(doContext(c, ctx, "CLUSTER", "SHARDS"))
	if err == nil {
		return parseClusterShards(reply, addr, r.u.tls)
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return nil, err
	}
	if strings.Contains(strings.ToLower(string(re)), "cluster support disabled") {
		return nil, fmt.Errorf("%w: the server at %s is not a Redis Cluster node (%v): reach one server with a redis:// URL, Sentinel's with redis+sentinel://",
			ErrBadConfig, addr, err)
	}
	if !strings.Contains(strings.ToLower(string(re)), "unknown subcommand") {
		return nil, err // refused
	}
	reply, err = redis.Values(doContext(c, ctx, "CLUSTER", "SLOTS")) // Redis 6.2
	if err != nil {
		return nil, err
	}
	return parseClusterSlots(reply, addr)
}

// moveSlot records a MOVED reply in the map: slot is now served by addr.
func (r *clusterRouter) moveSlot(slot int, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.slots.Load()
	m := &slotMap{owner: old.owner, primaries: slices.Clone(old.primaries)}
	m.assign(int64(slot), int64(slot), addr)
	r.moves.seen(slot, r.moves.index(addr))
	r.slots.Store(m)
}

// addrFor returns the primary that serves slot (any primary for a keyless
// command, slot -1), refreshing the map first when no primary serves it.
func (r *clusterRouter) addrFor(ctx context.Context, slot int) (string, error) {
	m := r.slots.Load()
	if slot < 0 {
		return m.primaries[rand.IntN(len(m.primaries))], nil
	}
	if a := m.addrOf(slot); a != "" {
		return a, nil
	}
	if err := r.refresh(ctx); err != nil {
		return "", err
	}
	if a := r.slots.Load().addrOf(slot); a != "" {
		return a, nil
	}
	return "", redis.Error(fmt.Sprintf("CLUSTERDOWN Hash slot %d not served", slot))
}

// do runs one command on the primary that serves its key, following
// redirections and refusals.
func (r *clusterRouter) do(ctx context.Context, cmd string, args []any) (any, error) {
	slot, err := commandSlot(cmd, args)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(clusterRetryFor)
	if d, ok := ctx.Deadline(); ok && d.After(deadline) {
		deadline = d // the caller allows longer
	}
	wait := 5 * time.Millisecond
	var ask string
	for redirects := 0; ; {
		addr := ask
		var reply any
		var err error
		if addr == "" {
			addr, err = r.addrFor(ctx, slot)
		}
		if err == nil {
			reply, err = r.doOn(ctx, addr, ask != "", cmd, args)
		}
		ask = ""
		if err == nil {
			return reply, nil
		}
		kind, movedSlot, target := parseRedirect(err)
		if strings.HasPrefix(target, ":") { // a node that does not know its host: the one asked
			host, _, _ := net.SplitHostPort(addr)
			target = host + target
		}
		switch kind {
		case movedTo, askTo:
			if kind == movedTo {
				r.moveSlot(movedSlot, target)
				r.refreshAsync()
			} else {
				ask = target
			}
			// The first redirections are followed at once. More mean the
			// nodes disagree for a moment (a migration's end reaches them
			// one by one): they are followed after the backoff.
			if redirects++; redirects <= quickRedirects {
				continue
			}
		case tryAgain:
		default:
			if errors.Is(err, errNodeUnreachable) {
				// Not sent: the node may be gone (killed, failed over).
				r.refreshAsync()
				break
			}
			if !isReplyError(err) {
				r.refreshAsync() // the node may have failed: look again
			}
			return nil, err
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		if err := sleep(ctx, wait/2+rand.N(wait/2+1)); err != nil {
			return nil, err
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// errNodeUnreachable wraps a failure to get a connection to a node: the
// command was not sent.
var errNodeUnreachable = errors.New("cluster node unreachable")

// doOn runs one command on the node at addr, after ASKING when asking.
func (r *clusterRouter) doOn(ctx context.Context, addr string, asking bool, cmd string, args []any) (any, error) {
	c, err := r.nodeConn(ctx, addr)
	if err != nil {
		if errors.Is(err, ErrClosed) || ctx.Err() != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errNodeUnreachable, err)
	}
	defer c.Close()
	if asking {
		// Do reads ASKING's reply too, and returns cmd's.
		if err := c.Send("ASKING"); err != nil {
			return nil, err
		}
	}
	return doContext(c, ctx, cmd, args...)
}

// onNodeOf runs f on a connection to the primary that serves key's slot,
// for a command that has no key of its own (CONFIG, INFO) but is about
// that key's server.
func (r *clusterRouter) onNodeOf(ctx context.Context, key string, f func(redis.Conn) (string, error)) (string, error) {
	addr, err := r.addrFor(ctx, keySlot(key))
	if err != nil {
		return "", err
	}
	c, err := r.nodeConn(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return f(c)
}
