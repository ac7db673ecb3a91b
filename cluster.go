package queue

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
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
// and redirections when its ctx has no deadline: about what a failover
// takes (a node timeout plus an election).
const clusterRetryFor = 20 * time.Second

// maxRedirects bounds the MOVED and ASK replies followed for one command.
const maxRedirects = 16

// keySlot returns the hash slot of key: CRC16 (XMODEM) of its hash tag
// (the part between the first '{' and the next '}', when not empty), or
// of the whole key.
func keySlot(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if end := strings.IndexByte(key[open+1:], '}'); end > 0 {
			key = key[open+1 : open+1+end]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[i]]
	}
	return int(crc) % clusterSlots
}

var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

// commandKey returns the key a command is routed by: the first key of a
// script, the first argument of the other commands this package sends.
// keyless reports a command that any primary may answer; a command that
// is neither (connection state: CLIENT, SUBSCRIBE, MULTI, SELECT) is
// refused on a cluster connection.
func commandKey(cmd string, args []any) (key string, keyless, ok bool) {
	switch strings.ToUpper(cmd) {
	case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
		if len(args) < 3 {
			return "", false, false
		}
		if n, err := strconv.Atoi(argString(args[1])); err != nil || n < 1 {
			return "", true, true // a script without keys: any primary
		}
		return argString(args[2]), false, true
	case "PING", "ECHO", "TIME", "INFO", "CONFIG", "ROLE", "DBSIZE", "SCRIPT", "FUNCTION", "COMMAND", "LOLWUT":
		return "", true, true
	case "CLIENT", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "MULTI", "EXEC", "DISCARD",
		"WATCH", "UNWATCH", "SELECT", "AUTH", "HELLO", "RESET", "MONITOR", "QUIT", "ASKING", "READONLY",
		"WAIT", "SCAN", "KEYS", "FLUSHDB", "FLUSHALL", "RANDOMKEY":
		return "", false, false
	}
	if len(args) == 0 {
		return "", false, false
	}
	return argString(args[0]), false, true
}

// argString renders a command argument as redigo writes it.
func argString(a any) string {
	switch v := a.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	case int:
		return strconv.Itoa(v)
	case int64:
		return strconv.FormatInt(v, 10)
	default:
		return fmt.Sprint(v)
	}
}

// slotMap is one reading of the cluster's slot owners.
type slotMap struct {
	owner     [clusterSlots]int16 // index into primaries, -1 when no primary serves the slot
	primaries []string            // addresses host:port
}

func (m *slotMap) addrOf(slot int) string {
	if i := m.owner[slot]; i >= 0 {
		return m.primaries[i]
	}
	return ""
}

// clusterRouter routes the commands of every partition on one cluster.
type clusterRouter struct {
	u     redisURL // credentials and TLS for every node
	cfg   Config
	seeds []string

	slots atomic.Pointer[slotMap]

	mu         sync.Mutex
	nodes      map[string]*redis.Pool // by address
	closed     bool
	refreshing chan struct{} // closed when the refresh under way ends; nil when none runs
	refreshErr error         // the last refresh's error
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
	p, err := r.nodePool(addr)
	if err != nil {
		return nil, err
	}
	c, err := p.GetContext(ctx)
	if err != nil {
		return nil, err
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
	var errs []error
	for _, p := range r.nodes {
		errs = append(errs, p.Close())
	}
	return errors.Join(errs...)
}

// refresh reads the slot map again, or waits for the refresh under way,
// within ctx.
func (r *clusterRouter) refresh(ctx context.Context) error {
	done, start := r.startRefresh()
	if start {
		r.runRefresh(ctx, done)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refreshErr
}

// refreshAsync starts a refresh in the background unless one runs.
func (r *clusterRouter) refreshAsync() {
	done, start := r.startRefresh()
	if !start {
		return
	}
	r.mu.Lock()
	if r.closed {
		r.refreshing = nil
		r.mu.Unlock()
		close(done)
		return
	}
	r.bg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.bg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), r.cfg.DialTimeout+r.cfg.ReadTimeout)
		defer cancel()
		r.runRefresh(ctx, done)
	}()
}

// startRefresh returns the channel of the refresh under way, and whether
// the caller must run it (none was under way).
func (r *clusterRouter) startRefresh() (chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refreshing != nil {
		return r.refreshing, false
	}
	r.refreshing = make(chan struct{})
	return r.refreshing, true
}

func (r *clusterRouter) runRefresh(ctx context.Context, done chan struct{}) {
	m, err := r.readSlots(ctx)
	r.mu.Lock()
	if err == nil {
		r.slots.Store(m)
	}
	r.refreshErr = err
	r.refreshing = nil
	r.mu.Unlock()
	close(done)
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
	p, err := r.nodePool(addr)
	if err != nil {
		return nil, err
	}
	c, err := p.GetContext(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	reply, err := redis.Values(redis.DoContext(c, ctx, "CLUSTER", "SHARDS"))
	if err == nil {
		return parseClusterShards(reply, addr)
	}
	var re redis.Error
	if !errors.As(err, &re) {
		return nil, err
	}
	if !strings.Contains(strings.ToLower(string(re)), "unknown subcommand") {
		return nil, err // cluster support disabled, or refused
	}
	reply, err = redis.Values(redis.DoContext(c, ctx, "CLUSTER", "SLOTS")) // Redis 6.2
	if err != nil {
		return nil, err
	}
	return parseClusterSlots(reply, addr)
}

// nodeAddr renders a node's address; an empty or "?" host is the one
// that was asked (a node that does not know its own address says so).
func nodeAddr(host string, port int64, asked string) string {
	if host == "" || host == "?" {
		host, _, _ = net.SplitHostPort(asked)
	}
	return net.JoinHostPort(host, strconv.FormatInt(port, 10))
}

func newSlotMap() *slotMap {
	m := &slotMap{}
	for i := range m.owner {
		m.owner[i] = -1
	}
	return m
}

// assign gives slots [from, to] to the primary at addr.
func (m *slotMap) assign(from, to int64, addr string) error {
	if from < 0 || to >= clusterSlots || from > to {
		return fmt.Errorf("slot range %d-%d out of bounds", from, to)
	}
	i := slices.Index(m.primaries, addr)
	if i < 0 {
		i = len(m.primaries)
		m.primaries = append(m.primaries, addr)
	}
	for s := from; s <= to; s++ {
		m.owner[s] = int16(i)
	}
	return nil
}

// parseClusterShards reads CLUSTER SHARDS: per shard, "slots" (a flat
// list of range bounds) and "nodes" (maps of fields), of which the one
// with role "master" and health "online" serves.
func parseClusterShards(reply []any, asked string) (*slotMap, error) {
	m := newSlotMap()
	for _, sh := range reply {
		fields, err := redis.Values(sh, nil)
		if err != nil {
			return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
		}
		var ranges []int64
		var primary string
		for i := 0; i+1 < len(fields); i += 2 {
			name, _ := redis.String(fields[i], nil)
			switch name {
			case "slots":
				if ranges, err = redis.Int64s(fields[i+1], nil); err != nil {
					return nil, fmt.Errorf("CLUSTER SHARDS slots: %w", err)
				}
			case "nodes":
				nodes, err := redis.Values(fields[i+1], nil)
				if err != nil {
					return nil, fmt.Errorf("CLUSTER SHARDS nodes: %w", err)
				}
				for _, n := range nodes {
					kv, err := shardNodeFields(n)
					if err != nil {
						return nil, fmt.Errorf("CLUSTER SHARDS node: %w", err)
					}
					if kv["role"] != "master" || kv["health"] == "failed" {
						continue
					}
					port, _ := strconv.ParseInt(kv["port"], 10, 64)
					if port == 0 {
						port, _ = strconv.ParseInt(kv["tls-port"], 10, 64)
					}
					host := kv["ip"]
					if h := kv["endpoint"]; h != "" && h != "?" {
						host = h
					}
					primary = nodeAddr(host, port, asked)
				}
			}
		}
		if primary == "" || len(ranges) == 0 {
			continue
		}
		for i := 0; i+1 < len(ranges); i += 2 {
			if err := m.assign(ranges[i], ranges[i+1], primary); err != nil {
				return nil, fmt.Errorf("CLUSTER SHARDS: %w", err)
			}
		}
	}
	if len(m.primaries) == 0 {
		return nil, errors.New("CLUSTER SHARDS: no primary serves a slot")
	}
	return m, nil
}

// shardNodeFields reads a node of CLUSTER SHARDS: a flat list of names
// and values, of which some (port, tls-port, replication-offset) are
// integers.
func shardNodeFields(n any) (map[string]string, error) {
	v, err := redis.Values(n, nil)
	if err != nil || len(v)%2 != 0 {
		return nil, errors.New("malformed node")
	}
	kv := make(map[string]string, len(v)/2)
	for i := 0; i < len(v); i += 2 {
		name, err := redis.String(v[i], nil)
		if err != nil {
			return nil, errors.New("malformed node")
		}
		switch x := v[i+1].(type) {
		case int64:
			kv[name] = strconv.FormatInt(x, 10)
		case []byte:
			kv[name] = string(x)
		}
	}
	return kv, nil
}

// parseClusterSlots reads CLUSTER SLOTS: per range, its first and last
// slot, then its primary (host, port, ...), then its replicas.
func parseClusterSlots(reply []any, asked string) (*slotMap, error) {
	m := newSlotMap()
	for _, rg := range reply {
		v, err := redis.Values(rg, nil)
		if err != nil || len(v) < 3 {
			return nil, errors.New("CLUSTER SLOTS: malformed range")
		}
		from, err1 := redis.Int64(v[0], nil)
		to, err2 := redis.Int64(v[1], nil)
		node, err3 := redis.Values(v[2], nil)
		if err1 != nil || err2 != nil || err3 != nil || len(node) < 2 {
			return nil, errors.New("CLUSTER SLOTS: malformed range")
		}
		host, _ := redis.String(node[0], nil)
		port, err := redis.Int64(node[1], nil)
		if err != nil {
			return nil, errors.New("CLUSTER SLOTS: malformed node")
		}
		if err := m.assign(from, to, nodeAddr(host, port, asked)); err != nil {
			return nil, fmt.Errorf("CLUSTER SLOTS: %w", err)
		}
	}
	if len(m.primaries) == 0 {
		return nil, errors.New("CLUSTER SLOTS: no primary serves a slot")
	}
	return m, nil
}

// moveSlot records a MOVED reply in the map: slot is now served by addr.
func (r *clusterRouter) moveSlot(slot int, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.slots.Load()
	m := &slotMap{owner: old.owner, primaries: slices.Clone(old.primaries)}
	m.assign(int64(slot), int64(slot), addr)
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

// redirect is what a cluster error reply asks of its command.
type redirect int

const (
	noRedirect redirect = iota
	movedTo             // MOVED slot addr: go to addr, and update the map
	askTo               // ASK slot addr: go to addr once, after ASKING
	tryAgain            // refused before running: send it again later
)

// parseRedirect reads a cluster error reply.
func parseRedirect(err error) (redirect, int, string) {
	var re redis.Error
	if !errors.As(err, &re) {
		return noRedirect, 0, ""
	}
	msg := string(re)
	word, rest, _ := strings.Cut(msg, " ")
	switch word {
	case "MOVED", "ASK":
		slotStr, addr, ok := strings.Cut(rest, " ")
		slot, err := strconv.Atoi(slotStr)
		if !ok || err != nil || slot < 0 || slot >= clusterSlots || addr == "" {
			return noRedirect, 0, ""
		}
		if word == "MOVED" {
			return movedTo, slot, addr
		}
		return askTo, slot, addr
	case "TRYAGAIN", "CLUSTERDOWN", "LOADING", "MASTERDOWN", "UNBLOCKED":
		return tryAgain, 0, ""
	}
	return noRedirect, 0, ""
}

// do runs one command on the primary that serves its key, following
// redirections and refusals.
func (r *clusterRouter) do(ctx context.Context, cmd string, args []any) (any, error) {
	key, keyless, ok := commandKey(cmd, args)
	if !ok {
		return nil, redis.Error("ERR " + strings.ToUpper(cmd) + " is not supported on a Redis Cluster connection")
	}
	slot := -1
	if !keyless {
		slot = keySlot(key)
	}
	deadline := time.Now().Add(clusterRetryFor)
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
			if redirects++; redirects > maxRedirects {
				return nil, err
			}
			if kind == movedTo {
				r.moveSlot(movedSlot, target)
				r.refreshAsync()
			} else {
				ask = target
			}
			continue
		case tryAgain:
		default:
			if errors.Is(err, errNodeUnreachable) {
				// Not sent: the node may be gone (killed, failed over).
				r.refreshAsync()
				break
			}
			if !isRedisError(err) {
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
		if err := c.Send("ASKING"); err != nil {
			return nil, err
		}
		// Do reads ASKING's reply, then the command's, and returns the
		// command's (with the first error reply of the two): there is no
		// third reply to wait for.
		return doContext(c, ctx, cmd, args...)
	}
	return doContext(c, ctx, cmd, args...)
}

// clusterPools marks the pools made by partitionPool, for New.
var clusterPools sync.Map // *redis.Pool -> *clusterRouter

// isClusterPool reports whether p routes to a Redis Cluster.
func isClusterPool(p *redis.Pool) bool {
	_, ok := clusterPools.Load(p)
	return ok
}

// partitionPool returns a pool of routed connections for one partition on
// the cluster. wrap, when set, wraps each of them.
func (r *clusterRouter) partitionPool(wrap func(redis.Conn) redis.Conn) *redis.Pool {
	p := &redis.Pool{
		MaxIdle: r.cfg.MaxIdle,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			r.mu.Lock()
			closed := r.closed
			r.mu.Unlock()
			if closed {
				return nil, ErrClosed
			}
			var c redis.Conn = &routedConn{r: r}
			if wrap != nil {
				c = wrap(c)
			}
			return c, nil
		},
	}
	clusterPools.Store(p, r)
	return p
}

// routedConn is a connection to a cluster: each command goes to the
// primary that serves its key. Commands sent in a pipeline go on one
// connection per primary, held until their replies are read.
type routedConn struct {
	r       *clusterRouter
	pending []routedCmd          // sent, reply not read yet, in order
	held    map[string]redis.Conn // by node address, while they have replies to read
	dirty   map[string]bool       // held connections with commands not flushed
	err     error
}

type routedCmd struct {
	addr string
	cmd  string
	args []any
}

var (
	_ redis.ConnWithContext = (*routedConn)(nil)
	_ redis.ConnWithTimeout = (*routedConn)(nil)
)

func (c *routedConn) Err() error { return c.err }

// fatal ends the connection after a node connection failed under it: as
// a redigo connection after a network error, it returns err from then
// on, so that the pool drops it rather than hand it out again with the
// failed node connection and replies nobody will read. The node may have
// failed: the map is read again.
func (c *routedConn) fatal(err error) error {
	if c.err == nil {
		c.err = err
		for addr, nc := range c.held {
			nc.Close()
			delete(c.held, addr)
		}
		c.pending = nil
		c.r.refreshAsync()
	}
	return err
}

func (c *routedConn) Close() error {
	var errs []error
	for addr, nc := range c.held {
		errs = append(errs, nc.Close())
		delete(c.held, addr)
	}
	c.pending = nil
	if c.err == nil {
		c.err = errors.New("redigo: closed")
	}
	return errors.Join(errs...)
}

func (c *routedConn) Do(cmd string, args ...any) (any, error) {
	return c.DoContext(context.Background(), cmd, args...)
}

func (c *routedConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.DoContext(ctx, cmd, args...)
}

func (c *routedConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	if c.err != nil {
		return nil, c.err
	}
	if len(c.pending) == 0 {
		if cmd == "" {
			return nil, nil
		}
		return c.r.do(ctx, cmd, args)
	}
	// Replies are pending: as redigo does, send cmd after them, then read
	// them all; the reply is cmd's (all of them for cmd "").
	if cmd != "" {
		if err := c.Send(cmd, args...); err != nil {
			return nil, err
		}
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	replies := make([]any, 0, len(c.pending))
	var last error
	for len(c.pending) > 0 {
		v, err := c.ReceiveContext(ctx)
		if err != nil && !isRedisError(err) {
			return nil, err
		}
		replies = append(replies, v)
		last = err
		if err != nil {
			replies[len(replies)-1] = err
		}
	}
	if cmd == "" {
		return replies, nil
	}
	return replies[len(replies)-1], last
}

func (c *routedConn) Send(cmd string, args ...any) error {
	if c.err != nil {
		return c.err
	}
	key, keyless, ok := commandKey(cmd, args)
	if !ok {
		return redis.Error("ERR " + strings.ToUpper(cmd) + " is not supported on a Redis Cluster connection")
	}
	slot := -1
	if !keyless {
		slot = keySlot(key)
	}
	addr, err := c.r.addrFor(context.Background(), slot)
	if err != nil {
		return err
	}
	nc := c.held[addr]
	if nc == nil {
		if nc, err = c.r.nodeConn(context.Background(), addr); err != nil {
			return c.fatal(err)
		}
		if c.held == nil {
			c.held, c.dirty = map[string]redis.Conn{}, map[string]bool{}
		}
		c.held[addr] = nc
	}
	if err := nc.Send(cmd, args...); err != nil {
		return c.fatal(err)
	}
	c.dirty[addr] = true
	c.pending = append(c.pending, routedCmd{addr: addr, cmd: cmd, args: args})
	return nil
}

func (c *routedConn) Flush() error {
	if c.err != nil {
		return c.err
	}
	for addr := range c.dirty {
		if err := c.held[addr].Flush(); err != nil {
			return c.fatal(err)
		}
		delete(c.dirty, addr)
	}
	return nil
}

func (c *routedConn) Receive() (any, error) { return c.ReceiveContext(context.Background()) }

func (c *routedConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return c.ReceiveContext(ctx)
}

// ReceiveContext reads the reply of the oldest command sent. A command
// that was redirected or refused is sent again (it did not run) on a
// connection of its own, before the next command's reply is read.
func (c *routedConn) ReceiveContext(ctx context.Context) (any, error) {
	if c.err != nil {
		return nil, c.err
	}
	if len(c.pending) == 0 {
		return nil, errors.New("queue: no reply pending on a Redis Cluster connection (it does not carry pub/sub)")
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	head := c.pending[0]
	c.pending = c.pending[1:]
	nc := c.held[head.addr]
	reply, err := receiveContext(nc, ctx)
	if err != nil && !isRedisError(err) {
		return nil, c.fatal(err)
	}
	if !slices.ContainsFunc(c.pending, func(p routedCmd) bool { return p.addr == head.addr }) {
		delete(c.held, head.addr)
		nc.Close()
	}
	if kind, _, _ := parseRedirect(err); kind != noRedirect {
		return c.r.do(ctx, head.cmd, head.args)
	}
	return reply, err
}
