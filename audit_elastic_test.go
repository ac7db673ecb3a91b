package queue

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// strictLog checks, as tasks run, that an OrderID's tasks start one at
// a time and in order: each start is of the task after the last that
// succeeded (a retry starts the same one again).
type strictLog struct {
	mu      sync.Mutex
	next    map[uint64]int // the seq each OrderID must start next
	running map[uint64]bool
	bad     []string
	done    int64
}

func newStrictLog() *strictLog {
	return &strictLog{next: map[uint64]int{}, running: map[uint64]bool{}}
}

func (l *strictLog) begin(t Task) int {
	seq, _ := strconv.Atoi(string(t.Payload[strings.IndexByte(string(t.Payload), ':')+1:]))
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.running[t.OrderID] {
		l.bad = append(l.bad, fmt.Sprintf("order %d seq %d started while another ran", t.OrderID, seq))
	}
	if want := l.next[t.OrderID]; seq != want {
		l.bad = append(l.bad, fmt.Sprintf("order %d: seq %d started, want %d", t.OrderID, seq, want))
	}
	l.running[t.OrderID] = true
	return seq
}

func (l *strictLog) end(t Task, seq int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running[t.OrderID] = false
	if ok && seq == l.next[t.OrderID] {
		l.next[t.OrderID]++
		l.done++
	}
}

// TestAuditElasticPoolChurn runs elastic pools that grow and shrink all
// the time (bursts of tasks of many OrderIDs, some slow, some failing
// once, and pauses in which workers retire after 5ms idle), in both
// dispatch modes: an OrderID's tasks must still run one at a time, in
// order, each retry before the task after it.
func TestAuditElasticPoolChurn(t *testing.T) {
	for _, mode := range []DispatchMode{DispatchByOrder, DispatchFree} {
		t.Run(mode.String(), func(t *testing.T) {
			q, _ := newTestQueue(t, 1, Config{Queues: 1})
			l := newStrictLog()
			fails := sync.Map{}
			fn := func(ctx context.Context, t Task) error {
				seq := l.begin(t)
				r := rand.IntN(100)
				if r < 5 {
					time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				}
				fail := false
				if r >= 90 {
					_, seen := fails.LoadOrStore(t.ID, true)
					fail = !seen
				}
				l.end(t, seq, !fail)
				if fail {
					return fmt.Errorf("first try of %s fails", t.ID)
				}
				return nil
			}
			var grown, retired atomic.Int64
			logger := slog.New(slog.NewTextHandler(evWriter(func(s string) {
				switch {
				case strings.Contains(s, "workers grown"):
					grown.Add(1)
				case strings.Contains(s, "workers retiring"):
					retired.Add(1)
				}
			}), &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- q.AnalysePool(ctx, 0, PoolConfig{MinWorkers: 1, MaxWorkers: 12, ScaleDownAfter: 5 * time.Millisecond,
					Dispatch: mode, Prefetch: 64,
					Backoff: func(int) time.Duration { return time.Duration(rand.IntN(3)) * time.Millisecond },
					OnError: func(error) {}, Logger: logger}, fn)
			}()
			added := map[uint64]int{}
			var total int64
			for burst := range 12 {
				orders := 5 + burst*20
				var ts []Task
				for i := range 400 {
					o := uint64(i % orders)
					ts = append(ts, Task{OrderID: o, Payload: []byte(fmt.Sprintf("%d:%d", o, added[o]))})
					added[o]++
				}
				_, err := q.AddTasks(bounded(t), ts)
				require.NoError(t, err)
				total += int64(len(ts))
				require.Eventually(t, func() bool {
					l.mu.Lock()
					defer l.mu.Unlock()
					return l.done == total
				}, 30*time.Second, time.Millisecond, "burst %d not done", burst)
				time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
			}
			cancel()
			require.NoError(t, <-done)
			t.Logf("grown %d times, retired workers %d times", grown.Load(), retired.Load())
			require.Positive(t, grown.Load())
			require.Positive(t, retired.Load())
			l.mu.Lock()
			defer l.mu.Unlock()
			require.Empty(t, l.bad)
			for o, n := range added {
				require.Equal(t, n, l.next[o], "order %d", o)
			}
		})
	}
}
