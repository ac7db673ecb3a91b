package prom

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

const testSessionTTL = time.Minute

// newGroupQueue returns a queue of one miniredis partition with qs queues,
// and the server.
func newGroupQueue(t *testing.T, qs int) (*queue.Queue, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	pool := testPool(mr.Addr())
	t.Cleanup(func() { pool.Close() })
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{Queues: qs})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	return q, mr
}

// join runs member in group on q, with an analyse function that does
// nothing, until the test ends.
func join(t *testing.T, q *queue.Queue, group, member string, weight int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cfg := queue.GroupConfig{Member: member, Weight: weight, SessionTTL: testSessionTTL,
		Pool: queue.PoolConfig{Workers: 1, Logger: slog.New(slog.DiscardHandler), OnError: func(error) {}}}
	go func() {
		done <- q.JoinGroup(ctx, group, cfg, func(context.Context, queue.Task) error { return nil })
	}()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "member %q", member)
	})
}

// waitHolding waits until group has the members named, in name order, and
// each holds the leases of n[i] analysers; it returns the group's status.
func waitHolding(t *testing.T, q *queue.Queue, group string, members []string, n []int) queue.GroupStatus {
	t.Helper()
	var st queue.GroupStatus
	require.Eventually(t, func() bool {
		var err error
		if st, err = q.GroupStatus(context.Background(), group); err != nil || len(st.Members) != len(members) {
			return false
		}
		stats, err := q.Stats(context.Background())
		if err != nil {
			return false
		}
		for i, m := range st.Members {
			held := 0
			for _, s := range stats {
				if s.Owner == m.Name {
					held++
				}
			}
			if m.Name != members[i] || held != n[i] {
				return false
			}
		}
		return true
	}, 10*time.Second, 10*time.Millisecond, "group %s: members %v holding %v", group, members, n)
	return st
}

func TestCollectorGroupMetrics(t *testing.T) {
	t.Parallel()
	q, _ := newGroupQueue(t, 4)
	join(t, q, "g", "m1", 1)
	waitHolding(t, q, "g", []string{"m1"}, []int{4})
	join(t, q, "g", "m2", 3)
	st := waitHolding(t, q, "g", []string{"m1", "m2"}, []int{1, 3})
	c := NewCollector(q, Options{Groups: []string{"g", "nobody", "g"}, SkipOldestPending: true})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))

	want := fmt.Sprintf(`
# HELP qugo_group_members Live members of the consumer group.
# TYPE qugo_group_members gauge
qugo_group_members{group="g"} 2
qugo_group_members{group="nobody"} 0
# HELP qugo_group_generation Generation of the group's assignment: Redis's clock in milliseconds when it last changed; changes() counts rebalances.
# TYPE qugo_group_generation gauge
qugo_group_generation{group="g"} %d
qugo_group_generation{group="nobody"} 0
# HELP qugo_group_unassigned Analysers of the group that no live member is given; 0 while a member lives.
# TYPE qugo_group_unassigned gauge
qugo_group_unassigned{group="g"} 0
qugo_group_unassigned{group="nobody"} 4
# HELP qugo_group_member_analysers Analysers (queues) assigned to the member.
# TYPE qugo_group_member_analysers gauge
qugo_group_member_analysers{group="g",member="m1"} 1
qugo_group_member_analysers{group="g",member="m2"} 3
# HELP qugo_group_member_leases_held Analysers whose lease the member holds (lease owner = member name); differs from member_analysers while a queue moves.
# TYPE qugo_group_member_leases_held gauge
qugo_group_member_leases_held{group="g",member="m1"} 1
qugo_group_member_leases_held{group="g",member="m2"} 3
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 1
`, st.Generation)
	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want),
		"qugo_group_members", "qugo_group_generation", "qugo_group_unassigned",
		"qugo_group_member_analysers", "qugo_group_member_leases_held", "qugo_up"))

	families, err := reg.Gather()
	require.NoError(t, err)
	seen := map[string][]string{}
	for _, f := range families {
		switch f.GetName() {
		case "qugo_group_member_heartbeat_age_seconds", "qugo_group_member_session_left_seconds":
			for _, m := range f.GetMetric() {
				v := m.GetGauge().GetValue()
				seen[f.GetName()] = append(seen[f.GetName()], label(m, "member"))
				assert.GreaterOrEqual(t, v, 0.0, f.GetName())
				assert.LessOrEqual(t, v, testSessionTTL.Seconds(), f.GetName())
				if f.GetName() == "qugo_group_member_session_left_seconds" {
					assert.Positive(t, v, "a live member's session has time left")
				}
			}
		}
	}
	for _, name := range []string{"qugo_group_member_heartbeat_age_seconds", "qugo_group_member_session_left_seconds"} {
		assert.Equal(t, []string{"m1", "m2"}, seen[name], name)
	}

	problems, err := testutil.CollectAndLint(c)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// A member holding fewer leases than it is assigned shows a queue that
// has not moved to it (here one held by a process outside the group).
func TestCollectorGroupLeaseElsewhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, _ := newGroupQueue(t, 2)
	outsider, err := q.Consume(ctx, 1, queue.ConsumerConfig{Owner: "outsider", LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { outsider.Release(ctx) })
	join(t, q, "g", "m1", 1)
	waitHolding(t, q, "g", []string{"m1"}, []int{1})
	c := NewCollector(q, Options{Groups: []string{"g"}, SkipOldestPending: true})
	want := `
# HELP qugo_group_member_analysers Analysers (queues) assigned to the member.
# TYPE qugo_group_member_analysers gauge
qugo_group_member_analysers{group="g",member="m1"} 2
# HELP qugo_group_member_leases_held Analysers whose lease the member holds (lease owner = member name); differs from member_analysers while a queue moves.
# TYPE qugo_group_member_leases_held gauge
qugo_group_member_leases_held{group="g",member="m1"} 1
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"qugo_group_member_analysers", "qugo_group_member_leases_held"))
}

// A member whose session has run out (a crash, as Redis's clock sees it)
// has no series left, and its queues count as unassigned.
func TestCollectorGroupSessionRunOut(t *testing.T) {
	t.Parallel()
	q, mr := newGroupQueue(t, 2)
	join(t, q, "g", "m1", 1)
	waitHolding(t, q, "g", []string{"m1"}, []int{2})
	// The member beats every SessionTTL/5 (12s): not before the scrape.
	mr.SetTime(time.Now().Add(2 * testSessionTTL))
	defer mr.SetTime(time.Time{})
	c := NewCollector(q, Options{Groups: []string{"g"}, SkipOldestPending: true})
	want := `
# HELP qugo_group_members Live members of the consumer group.
# TYPE qugo_group_members gauge
qugo_group_members{group="g"} 0
# HELP qugo_group_unassigned Analysers of the group that no live member is given; 0 while a member lives.
# TYPE qugo_group_unassigned gauge
qugo_group_unassigned{group="g"} 2
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want),
		"qugo_group_members", "qugo_group_unassigned", "qugo_group_member_analysers",
		"qugo_group_member_heartbeat_age_seconds", "qugo_group_member_session_left_seconds"))
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A group that cannot be read is logged and makes qugo_up 0; the others,
// and the queues, are exported all the same. A name JoinGroup would refuse
// is logged, and is no Redis failure.
func TestCollectorGroupErrors(t *testing.T) {
	t.Parallel()
	q, mr := newGroupQueue(t, 1)
	// Not a sorted set where the group's members are kept: every read of
	// the group fails (with WRONGTYPE), while the queues read fine.
	require.NoError(t, mr.Set("{qugo:group:broken}:members", "junk"))
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))

	c := NewCollector(q, Options{Groups: []string{"broken", "fine"}, SkipOldestPending: true, Logger: logger})
	want := `
# HELP qugo_group_members Live members of the consumer group.
# TYPE qugo_group_members gauge
qugo_group_members{group="fine"} 0
# HELP qugo_queue_ready Tasks waiting to be claimed (queue depth).
# TYPE qugo_queue_ready gauge
qugo_queue_ready{analyser="0",partition="0",queue="0"} 0
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 0
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "qugo_group_members", "qugo_queue_ready", "qugo_up"))
	assert.Contains(t, logs.String(), "prom: read consumer group")
	assert.Contains(t, logs.String(), "group=broken")
	assert.Contains(t, logs.String(), "WRONGTYPE")

	c = NewCollector(q, Options{Groups: []string{"a{b}"}, SkipOldestPending: true, Logger: logger})
	want = `
# HELP qugo_up 1 when the last scrape read every Redis partition, else 0.
# TYPE qugo_up gauge
qugo_up 1
`
	assert.NoError(t, testutil.CollectAndCompare(c, strings.NewReader(want), "qugo_up", "qugo_group_members"))
	assert.Contains(t, logs.String(), "bad config")
}

// Member names may hold bytes that are not UTF-8; a label value must be
// UTF-8, and a refused metric would fail the whole scrape.
func TestCollectorGroupMemberNameNotUTF8(t *testing.T) {
	t.Parallel()
	q, _ := newGroupQueue(t, 1)
	join(t, q, "g", "m\xff", 1)
	waitHolding(t, q, "g", []string{"m\xff"}, []int{1})
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(NewCollector(q, Options{Groups: []string{"g"}, SkipOldestPending: true})))
	families, err := reg.Gather()
	require.NoError(t, err)
	i := slices.IndexFunc(families, func(f *dto.MetricFamily) bool { return f.GetName() == "qugo_group_member_analysers" })
	require.GreaterOrEqual(t, i, 0)
	require.Len(t, families[i].GetMetric(), 1)
	assert.Equal(t, `"m\xff"`, label(families[i].GetMetric()[0], "member"))
}

// With a partition unread, a member's leases are not counted short: the
// series is left out (qugo_up says why), where it read 1 of the 2 the
// member holds, which its help calls a queue moving.
func TestGroupLeasesLeftOutWhenAPartitionFails(t *testing.T) {
	t.Parallel()
	q, minis := newTestQueueOn(t, 2, 1)
	join(t, q, "g", "m", 1)
	waitHolding(t, q, "g", []string{"m"}, []int{2})
	minis[1].Set("{qugo:1.0}:dead", "x") // Stats fails on partition 1 only
	_, err := q.Stats(context.Background())
	require.Equal(t, []int{1}, queue.FailedPartitions(err))
	c := NewCollector(q, Options{Timeout: 2 * time.Second, Groups: []string{"g"}, Logger: slog.New(slog.DiscardHandler)})
	assert.Equal(t, 1, testutil.CollectAndCount(c, "qugo_group_member_analysers"))
	assert.Zero(t, testutil.CollectAndCount(c, "qugo_group_member_leases_held"))
}
