package queue

import (
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Fault 11: maxmemory reached under noeviction.

// usedMemory returns the server's used_memory in bytes.
func (e *faultEnv) usedMemory() int64 {
	e.t.Helper()
	c := e.pool.Get()
	defer c.Close()
	info, err := redis.String(c.Do("INFO", "memory"))
	require.NoError(e.t, err)
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, err := redis.Int64([]byte(v), nil)
			require.NoError(e.t, err)
			return n
		}
	}
	e.t.Fatal("no used_memory in INFO memory")
	return 0
}

func TestFaultRedisOOM(t *testing.T) {
	const maxMemory = 4 << 20
	e := newFaultEnv(t, 1, false, "--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
	// 4,000 tasks of about 2KB, twice what fits: two producers, by AddTask
	// and by AddTasks, adding again each task (or batch) Redis refused.
	const orders, per, pad = 100, 40, 2000
	total := orders * per
	single := roleConfig{Orders: orders / 2, PerOrder: per, Goroutines: 4, PayloadPad: pad, RetryRefused: true}
	batched := single
	batched.FirstOrder, batched.Batch = orders/2, 20
	producers := []*child{e.spawn("producer", single), e.spawn("producer", batched)}

	// No analyser yet: Redis fills up and refuses both producers.
	require.Eventually(t, func() bool {
		for _, p := range producers {
			if e.countKind(p, "oom") == 0 {
				return false
			}
		}
		return true
	}, 60*time.Second, 5*time.Millisecond, "the producers were not refused")
	e.event(faultEvent{Ev: evFault})
	fullAt := time.Now()
	used := e.usedMemory()
	// An analyser now takes the lease of a full Redis and drains it; the
	// producers' adds succeed again as memory falls, and fill it again.
	acfg := e.analyserConfig(0)
	acfg.Work = 2 * time.Millisecond // slower than the producers: memory stays near the limit
	a := e.spawn("analyser", acfg)
	e.drain(producers, []*child{a}, 120*time.Second)

	events := e.events()
	r := checkHistory(events)
	var oom, other, okAfter, startsWhileFull int
	var firstOOM, lastOOM int64
	message := map[string]string{} // by AddTask (added) and AddTasks (batch)
	poolErrs := map[string]int{}   // the analyser's reports, by kind
	for _, x := range events {
		if x.Ev == evPoolErr {
			poolErrs[x.Kind]++
		}
		if (x.Ev == evAdded || x.Ev == evBatch) && x.Result == "error" {
			if x.Kind != "oom" {
				other++
				continue
			}
			oom++
			message[x.Ev] = x.Err
			if firstOOM == 0 {
				firstOOM = x.Wall
			}
			lastOOM = x.Wall
		}
	}
	for _, x := range events {
		switch {
		case (x.Ev == evAdded || x.Ev == evBatch) && x.Result == "ok" && x.Wall > firstOOM:
			okAfter++
		case x.Ev == evStart && x.Wall > stamp(fullAt) && x.Wall < lastOOM:
			startsWhileFull++
		}
	}
	start := firstAfter(events, fullAt, evStart, "")
	t.Logf("maxmemory 4mb, noeviction: full at %d bytes used; %d adds refused (AddTask: %q; AddTasks: %q), %d other add errors; %d adds ok after the first refusal; the analyser started %v after Redis was full, ran %d tasks while adds were still refused, and reported %v: %v",
		used, oom, message[evAdded], message[evBatch], other, okAfter, fmtRecovery(start), startsWhileFull, poolErrs, r)
	requireClean(t, r)
	assert.Greater(t, used, int64(maxMemory*9/10), "Redis was full")
	assert.Positive(t, oom, "adds refused")
	assert.Zero(t, other, "add errors other than ErrRedisOOM")
	for _, ev := range []string{evAdded, evBatch} {
		assert.Contains(t, message[ev], ErrRedisOOM.Error(), "%s: the error says Redis is out of memory", ev)
	}
	assert.Positive(t, okAfter, "adds succeed again once memory falls")
	assert.Positive(t, startsWhileFull, "the analyser drains while adds are refused")
	assert.Equal(t, total, r.AddedOK, "every task added in the end")
	assert.Equal(t, total, r.Completed)
	assert.Zero(t, r.Dead)
	assert.Zero(t, r.DupPending+r.DupOther)
	require.Positive(t, start, "no start after Redis was full")
}

// countKind returns the add errors of kind in c's history so far.
func (e *faultEnv) countKind(c *child, kind string) int {
	e.t.Helper()
	evs, err := readHistory(c.cfg.History)
	if err != nil {
		return 0 // not written yet
	}
	n := 0
	for _, x := range evs {
		if (x.Ev == evAdded || x.Ev == evBatch) && x.Kind == kind {
			n++
		}
	}
	return n
}
