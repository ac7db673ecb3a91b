package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// queueKeys names the Redis keys of one queue. They share one hash tag, so a
// script may touch them all on a cluster slot too.
type queueKeys struct {
	ready   string // list: encoded tasks, LPUSHed by producers, taken from the right
	pending string // hash: task ID -> encoded task ("+" first once its delivery is recorded), tasks claimed and not finished, as earlier releases recorded them
	claims  string // hash: a claim's first seq -> its claim record ("#<first>:" and its task IDs back to back; earlier releases: the IDs alone), while one of them is pending
	dead    string // hash: task ID -> encoded dead record
	lease   string // string: "<fencing token>.<nonce>:<owner>", with a PX expiry; the queue's owner
	meta    string // hash: fence (last token), seq (last claim), processed, failed, redelivered, cancelled, leases, workers ("<count>:<lease value>"), paused ("1" while paused), pending (tasks pending), endfirst and endsize (claims in place), large (entries over 8 KiB), marktaken and markbound (cancel marks), lastdeath (the latest death stamp, ms), retention (the history's, ms); docs/redis-keys.md
	wake    string // list: at most one element, pushed when a lease is released, to wake a standby
	sched   string // sorted set: task ID -> due time (ms since the epoch), scheduled tasks not yet due
	later   string // hash: task ID -> encoded task, the scheduled tasks of sched
	cancels string // hash: task ID -> cancel time (ms), cancels asked for tasks found ready or pending
	retries string // hash: task ID -> last failure ("<failed ms>:<retry ms>:<error>"), while the task waits to retry
	history string // prefix of the finished-task hashes (history.go): task ID -> status record, one hash per time bucket
}

func newQueueKeys(prefix string, partition, queue int) queueKeys {
	tag := "{" + prefix + ":" + strconv.Itoa(partition) + "." + strconv.Itoa(queue) + "}:"
	return queueKeys{
		ready:   tag + "ready",
		pending: tag + "pending",
		claims:  tag + claimsName, // the name of the first release, kept
		dead:    tag + "dead",
		lease:   tag + "lease",
		meta:    tag + "meta",
		wake:    tag + "wake",
		sched:   tag + "sched",
		later:   tag + "later",
		cancels: tag + "cancels",
		retries: tag + "retries",
		history: tag + "done:",
	}
}

// analyserKeys returns the partition and keys of analyser a's queue, or
// ErrClosed once the queue is closed.
func (q *Queue) analyserKeys(a int) (*partition, queueKeys, error) {
	if q.closed.Load() {
		return nil, queueKeys{}, ErrClosed
	}
	pi, qi, err := q.Layout().Serves(a)
	if err != nil {
		return nil, queueKeys{}, err
	}
	return q.parts[pi], newQueueKeys(q.cfg.Prefix, pi, qi), nil
}

// verifiedKeys is analyserKeys for a call that reads a queue, or changes
// only what is already there (dead letters): it verifies the layout, so
// that a process that disagrees with it reads nothing under names another
// layout gave and touches nothing, and records none on an unused server.
func (q *Queue) verifiedKeys(ctx context.Context, a int) (*partition, queueKeys, error) {
	p, k, err := q.analyserKeys(a)
	if err == nil {
		err = q.verifyLayout(ctx, p)
	}
	return p, k, err
}

// dedup names an idempotency key of AddTaskOnce: a string holding the task
// ID, with the dedup window as its PX expiry.
func (k queueKeys) dedup(orderID uint64, key string) string {
	return strings.TrimSuffix(k.ready, "ready") + "dedup:" + strconv.FormatUint(orderID, 10) + ":" + key
}

// layoutKey names the hash, one per server, that records the layout:
// partitions (R), queues (Q) and this server's index.
func layoutKey(prefix string) string { return prefix + ":layout" }

// layoutKeyOf names the layout hash of partition p: the server's, or on a
// Redis Cluster, where all partitions share one keyspace, one hash per
// partition ("P:layout:I").
func (q *Queue) layoutKeyOf(p *partition) string {
	if p.router != nil {
		return layoutKey(q.cfg.Prefix) + ":" + strconv.Itoa(p.index)
	}
	return layoutKey(q.cfg.Prefix)
}

// layoutScript records the layout on first use and compares it afterwards.
//
//	KEYS[1] = layout hash
//	ARGV[1] = partitions, ARGV[2] = queues, ARGV[3] = this server's index
//
// Returns "" when the layout matches, layoutRecorded when there was none
// and it was just recorded, otherwise the recorded layout as
// "partitions=R queues=Q index=I".
var layoutScript = newScript("layout", 1, `
local got = redis.call('HMGET', KEYS[1], 'partitions', 'queues', 'index')
if not got[1] then
  redis.call('HSET', KEYS[1], 'partitions', ARGV[1], 'queues', ARGV[2], 'index', ARGV[3])
  return '$layoutRecorded'
end
if got[1] == ARGV[1] and got[2] == ARGV[2] and got[3] == ARGV[3] then return '' end
return 'partitions=' .. tostring(got[1]) .. ' queues=' .. tostring(got[2]) .. ' index=' .. tostring(got[3])
`)

// layoutRecorded is layoutScript's reply when it found no layout and
// recorded it.
const layoutRecorded = "+"

// layoutRefused reports whether err, of a layout check, refuses this
// process's configuration (so that trying again cannot help).
func layoutRefused(err error) bool {
	return errors.Is(err, ErrLayoutMismatch)
}

// sameServerError is the error of a Queue given one Redis keyspace (one
// server and database) as two partitions.
func sameServerError(a, b int) error {
	return fmt.Errorf("%w: partitions %d and %d are the same Redis server and database: give each partition its own",
		ErrLayoutMismatch, min(a, b), max(a, b))
}

// partition is one Redis server of the queue.
type partition struct {
	index   int
	pool    *redis.Pool
	router  *clusterRouter   // the Redis Cluster pool routes to (partitionPool); nil for one server
	primary *sentinelPrimary // the Sentinel-watched primary pool connects to (sentinelPool); nil for none
	checked atomic.Bool      // the layout was verified on this server, and no recheck is under way
	once    atomic.Bool      // the layout was verified on this server at least once: its new connections check it (Dial's pools)
	regone  atomic.Bool      // a new connection found the layout record gone and recorded it again, and no recheck has said so yet (Dial's pools)
}

// verified notes that p's layout was verified: until a recheck, no
// pass looks at it again, and from now on every new connection to it
// checks it (see Dial), a recheck's included.
func (p *partition) verified() {
	p.checked.Store(true)
	p.once.Store(true)
}

// checkLayout verifies the layout of partition p before this process first
// writes to it, recording it on first use. Every partition not yet verified
// is checked in the same pass, and the layout is recorded on each that has
// none only once no server disagrees: a process given the servers in
// another order, or another R or Q, is refused whichever partition it
// touches first, and writes nothing (not even a layout). A partition
// other than p whose layout read fails is left for a later pass, and the
// partitions to record are first probed for one server given twice
// (probeServers). It costs a few round trips per partition the first
// time, run side by side, and nothing afterwards.
func (q *Queue) checkLayout(ctx context.Context, p *partition) error {
	_, err := q.checkLayoutOf(ctx, p)
	return err
}

// checkLayoutOf is checkLayout, and reports too whether p held no layout
// record when this call read it (see layoutPass).
func (q *Queue) checkLayoutOf(ctx context.Context, p *partition) (none bool, err error) {
	if !q.records.Load() && q.records.CompareAndSwap(false, true) {
		// What was verified while the Queue only read may be gone since
		// (a server restarted, its new connections only compared): the
		// first write checks every partition again, and records.
		for _, o := range q.parts {
			o.checked.Store(false)
		}
	}
	return q.layoutPass(ctx, p, true)
}

// layoutOn records (on first use) or compares the layout of partition p,
// on conn. recorded reports that there was none, and it recorded it.
func (q *Queue) layoutOn(ctx context.Context, conn redis.Conn, p *partition) (recorded bool, err error) {
	want := [3]int{len(q.parts), q.cfg.Queues, p.index}
	got, err := redis.String(runScript(ctx, layoutScript, conn, q.layoutKeyOf(p), want[0], want[1], want[2]))
	if err != nil {
		return false, redisErr(fmt.Sprintf("check layout of partition %d", p.index), err)
	}
	switch got {
	case "":
		return false, nil
	case layoutRecorded:
		return true, nil
	}
	return false, &LayoutError{
		Partition: p.index,
		Prefix:    q.cfg.Prefix,
		Want:      fmt.Sprintf("partitions=%d queues=%d index=%d", want[0], want[1], want[2]),
		Got:       got,
	}
}

// compareLayout compares got, partition o's layout fields as HMGET read
// them, with this queue's: a *LayoutError when they differ; none when
// there is no layout recorded.
func (q *Queue) compareLayout(o *partition, got []string) (none bool, err error) {
	if len(got) != 3 || got[0] == "" && got[1] == "" && got[2] == "" {
		return true, nil
	}
	want := fmt.Sprintf("partitions=%d queues=%d index=%d", len(q.parts), q.cfg.Queues, o.index)
	have := fmt.Sprintf("partitions=%s queues=%s index=%s", got[0], got[1], got[2])
	if have != want {
		return false, &LayoutError{Partition: o.index, Prefix: q.cfg.Prefix, Want: want, Got: have}
	}
	return false, nil
}

// compareLayoutOn is layoutOn for a Queue that records no layout: it
// compares, on conn, and a server with none passes.
func (q *Queue) compareLayoutOn(ctx context.Context, conn redis.Conn, p *partition) error {
	got, err := q.readLayout(ctx, conn, p)
	if err != nil {
		return redisErr(fmt.Sprintf("check layout of partition %d", p.index), err)
	}
	_, err = q.compareLayout(p, got)
	return err
}

// readLayout reads partition p's layout fields, on c.
func (q *Queue) readLayout(ctx context.Context, c redis.Conn, p *partition) ([]string, error) {
	return redis.Strings(doContext(c, ctx, "HMGET", q.layoutKeyOf(p), "partitions", "queues", "index"))
}

// recheckLayout is checkLayout without the cache: for where the server may
// have lost what it recorded. gone reports that the server held no layout
// record when it was read, as a server that lost its data does after this
// process saw one there, or that a new connection found it so since the
// last recheck of p and recorded it again (Dial's pools: see Dial); false
// when the read failed: err says so, and a loss the connections found is
// kept for the next recheck.
func (q *Queue) recheckLayout(ctx context.Context, p *partition) (gone bool, err error) {
	p.checked.Store(false)
	gone, err = q.checkLayoutOf(ctx, p)
	if err == nil && p.regone.Swap(false) {
		gone = true
	}
	return gone, err
}

// CheckLayout compares the layout recorded in every server (partition
// count, queue count and that server's index) with this queue's, and
// returns a *LayoutError for the first server that disagrees. Like the
// calls that only read (Stats, Status...), which check the partitions
// they read so, and unlike AddTask and Consume, it writes nothing: a
// server with no layout recorded yet passes and stays unrecorded, so a
// read-only tool run with a wrong layout cannot record it for the
// producers and analysers that come later. It is safe for concurrent use
// and costs one round trip per partition not yet verified.
func (q *Queue) CheckLayout(ctx context.Context) error {
	if q.closed.Load() {
		return ErrClosed
	}
	for _, p := range q.parts {
		if err := q.verifyLayout(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// verifyLayout is checkLayout without recording: a server with no layout
// recorded passes and stays unrecorded.
func (q *Queue) verifyLayout(ctx context.Context, p *partition) error {
	_, err := q.layoutPass(ctx, p, false)
	return err
}

// layoutPass checks the layout of every partition not yet verified, p's
// first: it reads them all, refuses a disagreement, then, when record is
// set, records it on those with none (the script compares again, for a
// process that recorded another one meanwhile). p's own errors are
// returned; another partition's Redis errors only leave it unverified.
// pNone reports whether p held no layout record when the pass read it
// (false when it did not read it: verified already, or the read failed).
func (q *Queue) layoutPass(ctx context.Context, p *partition, record bool) (pNone bool, err error) {
	if p.checked.Load() {
		return false, nil
	}
	select {
	case q.layoutSem <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("queue: check layout of partition %d: %w", p.index, ctx.Err())
	}
	defer func() { <-q.layoutSem }()
	if p.checked.Load() {
		return false, nil
	}
	todo := []*partition{p}
	for _, o := range q.parts {
		if o != p && !o.checked.Load() {
			todo = append(todo, o)
		}
	}
	recorded := make([][]string, len(todo))
	errs := make([]error, len(todo))
	eachPartition(todo, func(i int, o *partition) {
		what := fmt.Sprintf("check layout of partition %d", o.index)
		recorded[i], errs[i] = onPartition(ctx, o, what, func(c redis.Conn) ([]string, error) {
			return q.readLayout(ctx, c, o)
		})
	})
	if errs[0] != nil {
		return false, errs[0]
	}
	var unrecorded []*partition
	for i, o := range todo {
		if errs[i] != nil {
			continue
		}
		none, err := q.compareLayout(o, recorded[i])
		if err != nil {
			return false, err
		}
		if none {
			unrecorded = append(unrecorded, o)
		}
	}
	pNone = slices.Contains(unrecorded, p)
	for i, o := range todo {
		if errs[i] == nil && !slices.Contains(unrecorded, o) {
			o.verified()
		}
	}
	if !record || len(unrecorded) == 0 {
		return pNone, nil
	}
	if err := q.probeServers(ctx, unrecorded); err != nil {
		if layoutRefused(err) || pNone {
			return pNone, err
		}
		return pNone, nil // p is verified; the others wait for a later pass
	}
	errs = errs[:len(unrecorded)]
	eachPartition(unrecorded, func(i int, o *partition) {
		conn, err := getConn(ctx, o.pool)
		if err != nil {
			errs[i] = redisErr(fmt.Sprintf("check layout of partition %d", o.index), err)
			return
		}
		defer conn.Close()
		_, errs[i] = q.layoutOn(ctx, conn, o) // p's loss is pNone
	})
	for i, o := range unrecorded {
		var le *LayoutError
		switch {
		case errors.As(errs[i], &le):
			return pNone, errs[i]
		case errs[i] == nil:
			o.verified()
		case o == p:
			return pNone, errs[i]
		}
	}
	return pNone, nil
}

// layoutProbeTTL bounds the life of a layout probe key that could not be
// deleted.
const layoutProbeTTL = time.Minute

// probeServers makes sure, before a layout is recorded on the partitions
// ps (those whose read found none), that no two of them are one Redis
// keyspace (one server given twice, or under two names): else the layout
// one records is what the other reads, and the processes given the
// servers right are refused. Each writes its index under a key of this
// Queue's own, then reads it back: one that reads another's index shares
// its keyspace. Nothing a layout check reads is written. Should any of
// them fail the probe, nothing is recorded in this pass. (A partition
// whose read failed is not among ps: were it the other name of one of
// them, failing where that one answered, its own read would find that
// one's layout later, and refuse this process, but only after it
// recorded.) Partitions on a Redis Cluster, whose layouts have keys of
// their own, are not probed.
func (q *Queue) probeServers(ctx context.Context, ps []*partition) error {
	var probed []*partition
	for _, o := range ps {
		if o.router == nil {
			probed = append(probed, o)
		}
	}
	if len(probed) < 2 {
		return nil
	}
	key := layoutKey(q.cfg.Prefix) + ":probe:" + q.layoutBy
	what := func(o *partition) string { return fmt.Sprintf("check layout of partition %d", o.index) }
	errs := make([]error, len(probed))
	eachPartition(probed, func(i int, o *partition) {
		_, errs[i] = onPartition(ctx, o, what(o), func(c redis.Conn) (any, error) {
			return doContext(c, ctx, "SET", key, o.index, "PX", layoutProbeTTL.Milliseconds())
		})
	})
	read := make([]int, len(probed))
	eachPartition(probed, func(i int, o *partition) {
		if errs[i] == nil {
			read[i], errs[i] = onPartition(ctx, o, what(o), func(c redis.Conn) (int, error) {
				return redis.Int(doContext(c, ctx, "GET", key))
			})
		}
	})
	cleanup := context.WithoutCancel(ctx) // the key expires, but need not linger
	eachPartition(probed, func(i int, o *partition) {
		onPartition(cleanup, o, "delete layout probe", func(c redis.Conn) (any, error) {
			return doContext(c, cleanup, "DEL", key)
		})
	})
	for i, o := range probed {
		if errs[i] == nil && read[i] != o.index {
			return sameServerError(read[i], o.index)
		}
	}
	for _, err := range errs {
		if err != nil {
			return err // a GET that found nothing too: gone, so unknown
		}
	}
	return nil
}

// eachPartition runs f for every partition of ps side by side, and returns
// once all have.
func eachPartition(ps []*partition, f func(i int, p *partition)) {
	if len(ps) == 1 {
		f(0, ps[0])
		return
	}
	var wg sync.WaitGroup
	for i, p := range ps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(i, p)
		}()
	}
	wg.Wait()
}
