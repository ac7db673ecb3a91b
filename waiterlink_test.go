package queue

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// killWaiterConn kills one of the waiter connections that d holds: the
// subscriber (sub) or the tracking one.
func killWaiterConn(t testing.TB, s *testServer, d *countedDialer, sub bool) {
	t.Helper()
	list, err := redis.String(s.do(t, "CLIENT", "LIST"), nil)
	require.NoError(t, err)
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			k, v, _ := strings.Cut(kv, "=")
			f[k] = v
		}
		if f["name"] == waiterName && d.has(f["addr"]) && (f["sub"] == "1") == sub {
			s.do(t, "CLIENT", "KILL", "ID", f["id"])
			return
		}
	}
	t.Fatal("no waiter connection to kill")
}

// A waiter that loses a connection loses what Redis tracked for it: it
// wakes every wait, and a wait made after the loss (before or after the
// reconnection) sees work added after it. The waits here have a deadline
// of 10s, so nothing below relies on it.
func TestWaiterLostConnectionLosesNoWakeUp(t *testing.T) {
	needRealRedis(t)
	for _, sub := range []bool{true, false} {
		name := map[bool]string{true: "subscriber", false: "tracking"}[sub]
		t.Run(name, func(t *testing.T) {
			q, s, d := countedQueue(t)
			w := q.waiters[0].retain()
			defer w.release()
			key := newQueueKeys(q.cfg.Prefix, 0, 0).ready
			t.Cleanup(func() { s.do(t, "DEL", key) })
			ctx := context.Background()
			nonEmpty := func(n int64) bool { return n > 0 }
			await := func() <-chan awoke {
				ch := make(chan awoke, 1)
				go func() {
					end, err := w.await(ctx, "LLEN", key, time.Now().Add(10*time.Second), nonEmpty)
					assert.NoError(t, err)
					ch <- end
				}()
				return ch
			}
			ended := func(ch <-chan awoke, want awoke, what string) {
				t.Helper()
				select {
				case got := <-ch:
					assert.Equal(t, want, got, what)
				case <-time.After(3 * time.Second):
					t.Fatalf("%s: the wait did not end", what)
				}
			}

			first := await()
			require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
			time.Sleep(20 * time.Millisecond) // its read answered
			killWaiterConn(t, s, d, sub)
			ended(first, awokeChanged, "a wait under way when the connection was lost")

			// A task added at once, before the waiter is back: the next
			// wait's read (on the new connection) sees it.
			s.do(t, "LPUSH", key, "task")
			ended(await(), awokeReady, "a wait made after the task was added")
			s.do(t, "DEL", key)

			// A wait on the new connection, then a task.
			second := await()
			require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
			time.Sleep(20 * time.Millisecond)
			s.do(t, "LPUSH", key, "task")
			ended(second, awokeChanged, "a wait on the new connection")
		})
	}
}

// An idle pool whose waiter connection is killed picks up a task added
// just after, within the wait's re-check (1s) or faster.
func TestWaiterLostConnectionPoolPicksUp(t *testing.T) {
	needRealRedis(t)
	s := newTestServers(t, 1)[0]
	pool, d := countedPool(s.url, 4)
	ran := make(chan int, 4)
	q := idlePools(t, pool, 1, func(a int) { ran <- a })
	require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
	for _, sub := range []bool{true, false} {
		require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
		time.Sleep(1100 * time.Millisecond) // up for a while: the waiter connects again at once
		killWaiterConn(t, s, d, sub)
		start := time.Now()
		_, err := q.AddTask(context.Background(), 0, []byte("x"))
		require.NoError(t, err)
		select {
		case <-ran:
			t.Logf("picked up %v after the kill (subscriber killed: %v)", time.Since(start).Round(time.Millisecond), sub)
		case <-time.After(1500 * time.Millisecond):
			t.Fatalf("the task added after the kill (subscriber killed: %v) did not run within the 1s re-check", sub)
		}
	}
}

// A flush (FLUSHDB or FLUSHALL on any database) tells tracking clients
// with a null instead of key names: every wait wakes.
func TestWaiterFlushWakesAll(t *testing.T) {
	needRealRedis(t)
	q, s, d := countedQueue(t)
	w := q.waiters[0].retain()
	defer w.release()
	ch := make(chan awoke, 1)
	go func() {
		end, err := w.await(context.Background(), "PTTL", newQueueKeys(q.cfg.Prefix, 0, 0).lease, time.Now().Add(10*time.Second),
			func(ms int64) bool { return false })
		assert.NoError(t, err)
		ch <- end
	}()
	require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	c := s.pool.Get() // left on database 15: the pool is this test's alone
	defer c.Close()
	_, err := c.Do("SELECT", 15) // a database no test uses: an empty flush is told all the same
	require.NoError(t, err)
	_, err = c.Do("FLUSHDB")
	require.NoError(t, err)
	select {
	case end := <-ch:
		assert.Equal(t, awokeChanged, end)
	case <-time.After(3 * time.Second):
		t.Fatal("a flush did not wake the wait")
	}
}

// A waiter whose reads go unanswered (a stuck connection, a paused
// server) ends its waits within about a recheck, so that their callers
// look for themselves: a new wait after a second, one already answered
// at the next recheck but one.
func TestWaiterUnansweredWaitsEnd(t *testing.T) {
	needRealRedis(t)
	q, s, d := countedQueue(t)
	w := q.waiters[0].retain()
	defer w.release()
	key := newQueueKeys(q.cfg.Prefix, 0, 0).ready
	never := func(int64) bool { return false }
	wait := func() <-chan time.Duration {
		ch := make(chan time.Duration, 1)
		start := time.Now()
		go func() {
			end, err := w.await(context.Background(), "LLEN", key, start.Add(10*time.Second), never)
			assert.NoError(t, err)
			assert.Equal(t, awokeTimeout, end)
			ch <- time.Since(start)
		}()
		return ch
	}
	answered := wait()
	require.Eventually(t, func() bool { return len(waiterClients(t, s, d)) == 2 }, 5*time.Second, 5*time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	s.do(t, "CLIENT", "PAUSE", 4000, "ALL")
	t.Cleanup(func() { s.do(t, "CLIENT", "UNPAUSE") })
	paused := time.Now()
	unanswered := wait()
	for _, ch := range []<-chan time.Duration{answered, unanswered} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatal("a wait whose reads went unanswered did not end")
		}
	}
	// Two rechecks at most, and before the pause ends (then the reads
	// are answered and the waits would go on).
	assert.Less(t, time.Since(paused), 3500*time.Millisecond, "both ended before the pause did")
}

// countedQueue returns a one-queue Queue over a test server through a
// counted pool (MaxIdle 4), the server and the pool's dialer; both are
// closed when t ends.
func countedQueue(t *testing.T) (*Queue, *testServer, *countedDialer) {
	t.Helper()
	s := newTestServers(t, 1)[0]
	pool, d := countedPool(s.url, 4)
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close(); pool.Close() })
	return q, s, d
}
