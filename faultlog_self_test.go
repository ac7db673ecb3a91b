package queue

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the fault suite's recording connection (recConn, faultlog_test.go).

// TestRecConnRecordsLeaseTokens takes a lease and acks a task through
// recording connections, on analyser 3 of 2 servers x 2 queues: the lease
// grant and the ack in the history carry the lease's fencing token, which
// the checker compares across processes to find stale starts and late
// acks, and the analyser whose keys the call touched (a group member
// serves many analysers over the same connections).
func TestRecConnRecordsLeaseTokens(t *testing.T) {
	ctx := context.Background()
	h, err := openHistory(filepath.Join(t.TempDir(), "h.jsonl"))
	require.NoError(t, err)
	t.Cleanup(func() { h.f.Close() })
	var pools []*redis.Pool
	for _, s := range newTestServers(t, 2) {
		pool := s.wrapPool(0, func(c redis.Conn) redis.Conn { return &recConn{Conn: c, h: h, partitions: 2} })
		t.Cleanup(func() { pool.Close() })
		pools = append(pools, pool)
	}
	q, err := New(pools, Config{Prefix: testPrefix(t), Queues: 2})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	const analyser = 3 // partition 1, queue 1
	_, err = q.AddTask(ctx, 7, []byte("x"))
	require.NoError(t, err)
	require.Equal(t, analyser, q.AnalyserOf(7))
	c := claimAckOne(t, q, analyser)

	require.Positive(t, c.Token())
	evs, err := readHistory(h.f.Name())
	require.NoError(t, err)
	var got []faultEvent
	for _, e := range evs {
		got = append(got, faultEvent{Ev: e.Ev, Token: e.Token, Analyser: e.Analyser, Result: e.Result, N: e.N})
	}
	assert.Equal(t, []faultEvent{
		{Ev: evLease, Token: c.Token(), Analyser: analyser},
		{Ev: evAck, Token: c.Token(), Analyser: analyser, Result: "ok", N: 1},
	}, got)
}

// TestRecConnRecordsCancelFinishes cancels a queued task and claims it
// through recording connections: the call that finishes it as cancelled
// is in the history, naming the task and the analyser, which the checker
// needs to tell a cancelled task from a lost one.
func TestRecConnRecordsCancelFinishes(t *testing.T) {
	ctx := context.Background()
	h, err := openHistory(filepath.Join(t.TempDir(), "h.jsonl"))
	require.NoError(t, err)
	t.Cleanup(func() { h.f.Close() })
	s := newTestServers(t, 1)[0]
	preloadScripts(t, s.pool) // one EVALSHA per call, no EVAL after a NOSCRIPT
	pool := s.wrapPool(0, func(c redis.Conn) redis.Conn { return &recConn{Conn: c, h: h, partitions: 1} })
	t.Cleanup(func() { pool.Close() })
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t), Queues: 2})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })

	const order = 3 // analyser 1
	cancelled, err := q.AddTask(ctx, order, []byte("x"))
	require.NoError(t, err)
	kept, err := q.AddTask(ctx, order, []byte("y"))
	require.NoError(t, err)
	st, err := q.Cancel(ctx, order, cancelled)
	require.NoError(t, err)
	require.Equal(t, StateUnknown, st, "queued")
	c, err := q.Consume(ctx, q.AnalyserOf(order), ConsumerConfig{})
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 1)
	assert.Equal(t, kept, ts[0].ID)

	evs, err := readHistory(h.f.Name())
	require.NoError(t, err)
	var fins []faultEvent
	for _, e := range evs {
		if e.Ev == evCancelFin {
			fins = append(fins, faultEvent{Ev: e.Ev, ID: e.ID, Analyser: e.Analyser})
		}
	}
	assert.Equal(t, []faultEvent{{Ev: evCancelFin, ID: cancelled, Analyser: 1}}, fins)
}

func TestAnalyserOfKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key        any
		partitions int
		want       int
	}{
		{newQueueKeys("fault", 0, 0).lease, 1, 0},
		{newQueueKeys("fault", 0, 11).pending, 1, 11},
		{newQueueKeys("a:b:c", 1, 2).lease, 2, 5}, // a prefix with colons
		{newQueueKeys("p", 2, 3).meta, 3, 11},
		{newQueueKeys("p", 3, 0).lease, 3, -1}, // no such partition
		{"{p:0.x}:lease", 1, -1},
		{"p:0.0:lease", 1, -1},
		{"{p:0.0:lease", 1, -1},
		{[]byte("{p:0.0}:lease"), 1, -1}, // the library passes keys as strings
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, analyserOfKey(tc.key, tc.partitions), "%v", tc.key)
	}
}

// TestStampIsTheMonotonicClock: the suite's clock (stamp) orders a
// process's events by the monotonic clock. A later reading never stamps
// earlier; a time extrapolated from an earlier reading, as the pool's
// clock for a task's start is (the ctx's deadline less the task timeout),
// stamps exactly its monotonic distance from that reading, whatever the
// wall clock read meanwhile; and a time with no monotonic reading (one
// Redis recorded) stamps its wall clock.
func TestStampIsTheMonotonicClock(t *testing.T) {
	prev := stamp(time.Now())
	for range 10000 {
		s := stamp(time.Now())
		require.GreaterOrEqual(t, s, prev)
		prev = s
	}
	base := time.Now()
	time.Sleep(2 * time.Millisecond)
	later := time.Now()
	for _, d := range []time.Duration{time.Microsecond, 3 * time.Millisecond, time.Second} {
		at := base.Add(d)
		assert.Equal(t, int64(d), stamp(at)-stamp(base))
		assert.Equal(t, int64(at.Sub(later)), stamp(at)-stamp(later))
	}
	wall := time.Now().Round(0) // no monotonic reading
	assert.Equal(t, wall.UnixNano(), stamp(wall))
	anchorBase, offset := clockAnchor()
	assert.Equal(t, offset, stamp(anchorBase), "the anchor's reading stamps the anchor's offset")
}

// TestStampIsOneClockForTheSuite: a child's stamps agree with the
// harness's, as both read the host's monotonic clock shifted by the
// offset the harness passes on, whatever the wall clock did between
// their starts: a child given an offset 5 s off stamps 5 s off.
func TestStampIsOneClockForTheSuite(t *testing.T) {
	if _, ok := hostMono(); !ok {
		t.Skip("no clock shared by the host's processes is read here")
	}
	for _, shift := range []int64{0, 5e9} {
		before := stamp(time.Now())
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), faultRoleEnv+"=clock", faultClockEnv+"="+strconv.FormatInt(suiteWallOffset()+shift, 10))
		out, err := cmd.Output()
		require.NoError(t, err)
		after := stamp(time.Now())
		child, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		require.NoError(t, err, "%q", out)
		assert.GreaterOrEqual(t, child-shift, before, "shift %d", shift)
		assert.LessOrEqual(t, child-shift, after, "shift %d", shift)
	}
}

// parkForDump waits on ch: a goroutine of this package for
// TestSummarizeDump to find in a dump.
func parkForDump(ch chan struct{}) { <-ch }

// A goroutine dump after a SIGQUIT is told apart from the output before
// it, and condensed into a line for each state and first frame of this
// package, with the goroutines that share them counted.
func TestSummarizeDump(t *testing.T) {
	ch := make(chan struct{})
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { parkForDump(ch) })
	}
	defer wg.Wait()
	defer close(ch)
	var stacks []byte
	require.Eventually(t, func() bool {
		buf := make([]byte, 1<<20)
		stacks = buf[:runtime.Stack(buf, true)]
		return bytes.Count(stacks, []byte("queue.parkForDump(")) == 3
	}, 10*time.Second, time.Millisecond)
	out := "queue: lease taken\nqueue: claimed 12\n"
	b := []byte(out + "SIGQUIT: quit\nPC=0x47a2c1 m=0 sigcode=0\n\n" + string(stacks))

	before, dump := splitDump(b)
	assert.Equal(t, out, string(before))
	sum := summarizeDump(dump)
	assert.Contains(t, sum, "   3  [chan receive]  github.com/qugo/queue.parkForDump\n", sum)
	assert.Regexp(t, `(?m)^   1  \[running\]  github\.com/qugo/queue\.TestSummarizeDump`, sum)
	assert.Equal(t, "3", strings.Fields(strings.Split(sum, "\n")[0])[0], "the most shared first:\n%s", sum)

	plain, none := splitDump([]byte(out))
	assert.Equal(t, out, string(plain))
	assert.Nil(t, none)
}
