package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// cmdLog records the commands sent through a countingPool, and can hold
// the first LPUSH until released.
type cmdLog struct {
	mu      sync.Mutex
	dials   int
	cmds    []string // command names, in the order sent
	flushes int
	gate    func() // when set, called (once) before the next LPUSH
}

func (l *cmdLog) record(cmd string) {
	l.mu.Lock()
	l.cmds = append(l.cmds, cmd)
	gate := l.gate
	if cmd == "LPUSH" {
		l.gate = nil
	} else {
		gate = nil
	}
	l.mu.Unlock()
	if gate != nil {
		gate()
	}
}

func (l *cmdLog) count(cmd string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.cmds {
		if c == cmd {
			n++
		}
	}
	return n
}

func (l *cmdLog) reset() {
	l.mu.Lock()
	l.cmds, l.flushes = nil, 0
	l.mu.Unlock()
}

// countingConn passes everything to a real connection, recording it.
type countingConn struct {
	redis.Conn
	log *cmdLog
}

func (c countingConn) Do(cmd string, args ...any) (any, error) {
	c.log.record(cmd)
	return c.Conn.Do(cmd, args...)
}

func (c countingConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	c.log.record(cmd)
	return redis.DoContext(c.Conn, ctx, cmd, args...)
}

func (c countingConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	c.log.record(cmd)
	return redis.DoWithTimeout(c.Conn, d, cmd, args...)
}

func (c countingConn) Send(cmd string, args ...any) error {
	c.log.record(cmd)
	return c.Conn.Send(cmd, args...)
}

func (c countingConn) Flush() error {
	c.log.mu.Lock()
	c.log.flushes++
	c.log.mu.Unlock()
	return c.Conn.Flush()
}

func (c countingConn) ReceiveContext(ctx context.Context) (any, error) {
	return redis.ReceiveContext(c.Conn, ctx)
}

func (c countingConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return redis.ReceiveWithTimeout(c.Conn, d)
}

// countingPool returns a pool on url whose commands are recorded in log.
func countingPool(t *testing.T, s *testServer, log *cmdLog) *redis.Pool {
	p := s.wrapPool(16, func(c redis.Conn) redis.Conn {
		log.mu.Lock()
		log.dials++
		log.mu.Unlock()
		return countingConn{Conn: c, log: log}
	})
	t.Cleanup(func() { p.Close() })
	return p
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// downPool returns a pool of a server that is down (nothing listens at
// its address), closed at the test's end.
func downPool(t *testing.T) *redis.Pool {
	t.Helper()
	p := testPool("redis://" + closedAddr(t))
	t.Cleanup(func() { p.Close() })
	return p
}

// entryID returns the task ID of an encoded entry.
func entryID(e []byte) string { return string(e[1:entryHeader]) }

// TestAdderCoalesces holds the first round trip of a partition while n
// more callers queue up, then checks that they went out together: one LPUSH
// per queue per batch of maxAddBatch, in arrival order, each call with its
// result. A call whose ctx ended while it waited (the first in line, due
// to lead the next round trip) left the line at once, unsent.
func TestAdderCoalesces(t *testing.T) {
	t.Parallel()
	for _, n := range []int{63, maxAddBatch + 76} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			s := newTestServers(t, 1)[0]
			log := &cmdLog{}
			prefix := testPrefix(t)
			q, err := New([]*redis.Pool{countingPool(t, s, log)}, Config{Prefix: prefix, Queues: 2})
			require.NoError(t, err)
			_, err = q.AddTask(ctx, 0, []byte("warm-up")) // records the layout
			require.NoError(t, err)
			log.reset()

			entered, release := make(chan struct{}), make(chan struct{})
			log.mu.Lock()
			log.gate = func() { close(entered); <-release }
			log.mu.Unlock()

			type result struct {
				id  string
				err error
			}
			leader := make(chan result, 1)
			go func() {
				id, err := q.AddTask(ctx, 1, []byte("leader")) // queue 1
				leader <- result{id, err}
			}()
			<-entered

			a := &q.adders[0]
			results := make([]chan result, n)
			cancelled, cancel := context.WithCancel(ctx)
			for g := 0; g < n; g++ {
				results[g] = make(chan result, 1)
				c := ctx
				if g == 0 {
					c = cancelled // the next leader: its ctx ends while it waits
				}
				go func() {
					id, err := q.AddTask(c, uint64(g), []byte(strconv.Itoa(g)))
					results[g] <- result{id, err}
				}()
				// Queue them one at a time, so the arrival order is known.
				require.Eventually(t, func() bool {
					a.mu.Lock()
					defer a.mu.Unlock()
					return len(a.waiting) == g+1
				}, 10*time.Second, time.Millisecond)
			}
			cancel()
			gone := <-results[0] // returns while the round trip is still held
			assert.ErrorIs(t, gone.err, context.Canceled)
			assert.Empty(t, gone.id)
			a.mu.Lock()
			arrival := make([]*addCall, len(a.waiting))
			copy(arrival, a.waiting)
			a.mu.Unlock()
			require.Len(t, arrival, n-1, "the cancelled call left the line")
			close(release)

			r := <-leader
			require.NoError(t, r.err)
			ids := make([]string, n)
			for g := 1; g < n; g++ {
				r := <-results[g]
				require.NoError(t, r.err, "call %d", g)
				ids[g] = r.id
			}
			leaderID := r.id

			// Call g queued g-th, and got its own task's ID back.
			for i, c := range arrival {
				assert.Equal(t, ids[i+1], entryID(c.entry), "call %d", i+1)
			}
			// The leader's LPUSH, then per batch one LPUSH per queue, all
			// batch commands in one pipeline (one Flush).
			wantPush, batches := 1, 0
			for rest := arrival; len(rest) > 0; batches++ {
				b := rest[:min(len(rest), maxAddBatch)]
				keys := map[string]bool{}
				for _, c := range b {
					keys[c.key] = true
				}
				wantPush += len(keys)
				rest = rest[len(b):]
			}
			assert.Equal(t, wantPush, log.count("LPUSH"))
			assert.Equal(t, batches, log.flushes)
			assert.Equal(t, n > maxAddBatch, batches == 2)

			// Each queue holds its tasks in the order the calls were made.
			want := map[string][]string{}
			k0, k1 := newQueueKeys(prefix, 0, 0).ready, newQueueKeys(prefix, 0, 1).ready
			want[k1] = append(want[k1], leaderID)
			for _, c := range arrival {
				want[c.key] = append(want[c.key], entryID(c.entry))
			}
			got0 := readyIDs(t, s, k0)
			require.NotEmpty(t, got0)
			assert.Equal(t, want[k0], got0[1:], "queue 0 after the warm-up task")
			assert.Equal(t, want[k1], readyIDs(t, s, k1), "queue 1")

			a.mu.Lock()
			assert.False(t, a.busy, "the adder went idle")
			assert.Empty(t, a.waiting)
			a.mu.Unlock()
		})
	}
}

// readyEntries returns a ready list's entries in the order they will be
// claimed (from the right).
func readyEntries(t *testing.T, s *testServer, key string) [][]byte {
	t.Helper()
	l, err := redis.ByteSlices(s.do(t, "LRANGE", key, 0, -1), nil)
	require.NoError(t, err)
	for i, j := 0, len(l)-1; i < j; i, j = i+1, j-1 {
		l[i], l[j] = l[j], l[i]
	}
	return l
}

// readyIDs returns the task IDs of a ready list in claim order.
func readyIDs(t *testing.T, s *testServer, key string) []string {
	t.Helper()
	var ids []string
	for _, e := range readyEntries(t, s, key) {
		ids = append(ids, entryID(e))
	}
	return ids
}

// readyList decodes a ready list in claim order; every entry must decode
// and carry no deliveries yet.
func readyList(t *testing.T, s *testServer, key string) []Task {
	t.Helper()
	var out []Task
	for _, e := range readyEntries(t, s, key) {
		task, deliveries, err := decodeEntry(e)
		require.NoError(t, err)
		require.Zero(t, deliveries)
		out = append(out, task)
	}
	return out
}

// TestAddTaskConcurrent adds tasks from 64 goroutines at once, over four
// queues: every task lands exactly once, in the queue Route names, with
// the ID its call returned, and each goroutine's tasks keep their order.
func TestAddTaskConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, servers := newTestQueue(t, 2, Config{Queues: 2})
	const goroutines, per = 64, 100
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		ids[g] = make([]string, per)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				orderID := uint64(g*1000 + i%7)
				id, err := q.AddTask(ctx, orderID, []byte(fmt.Sprintf("%d/%d", g, i)))
				if !assert.NoError(t, err) {
					return
				}
				ids[g][i] = id
			}
		}()
	}
	wg.Wait()

	seen := map[string]int{}
	total := 0
	for pi, s := range servers {
		for qi := 0; qi < 2; qi++ {
			last := map[int]int{} // goroutine -> last i seen in this queue
			for _, task := range readyList(t, s, newQueueKeys(q.cfg.Prefix, pi, qi).ready) {
				total++
				g, i := parsePair(t, string(task.Payload))
				p, qq := q.Route(task.OrderID)
				assert.Equal(t, [2]int{pi, qi}, [2]int{p, qq}, "task %d/%d in the wrong queue", g, i)
				assert.Equal(t, uint64(g*1000+i%7), task.OrderID)
				assert.Equal(t, ids[g][i], task.ID, "task %d/%d", g, i)
				seen[string(task.Payload)]++
				if prev, ok := last[g]; ok {
					assert.Greater(t, i, prev, "goroutine %d's tasks out of order in queue %d.%d", g, pi, qi)
				}
				last[g] = i
			}
		}
	}
	assert.Equal(t, goroutines*per, total)
	assert.Len(t, seen, goroutines*per, "a task landed twice")
}

func parsePair(t *testing.T, s string) (int, int) {
	t.Helper()
	a, b, ok := strings.Cut(s, "/")
	require.True(t, ok, s)
	x, err := strconv.Atoi(a)
	require.NoError(t, err)
	y, err := strconv.Atoi(b)
	require.NoError(t, err)
	return x, y
}

// TestAdderErrors checks that every caller gets the round trip's error and
// that the adder goes idle afterwards.
func TestAdderErrors(t *testing.T) {
	t.Parallel()
	addr := closedAddr(t)
	bad := &redis.Pool{Dial: func() (redis.Conn, error) { return redis.Dial("tcp", addr) }}
	defer bad.Close()
	var a adder
	entry := encodeTask(Task{ID: testID, Payload: []byte("x")}, 0)
	var wg sync.WaitGroup
	errs := make([]error, 32)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = a.add(context.Background(), bad, "k", entry)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		assert.Error(t, err, "call %d", i)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := newTestServers(t, 1)[0]
	err := a.add(ctx, s.pool, "k", entry)
	assert.True(t, errors.Is(err, context.Canceled), "got %v", err)

	a.mu.Lock()
	defer a.mu.Unlock()
	assert.False(t, a.busy)
	assert.Empty(t, a.waiting)
}
