package queue

import (
	"context"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The cancel marks' bound across an upgrade: the scripts of the release
// before it (3f43bed, under testdata/release-3f43bed) neither count nor
// raise it.

// earlierScript returns the text of the earlier release's script name.
func earlierScript(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/release-3f43bed/" + name + ".lua")
	require.NoError(t, err)
	return string(b)
}

// An owner of the earlier release hands back, at its graceful stop for
// the upgrade, tasks it claimed before a Cancel of this release marked a
// ready task behind them. The first owner of this release takes the
// lease, which drops the bound, and sets it afresh: the marked task is
// never handed out.
func TestCancelMarkAcrossHandBackOfAnEarlierRelease(t *testing.T) {
	t.Parallel()
	q, s, _ := testQueue1(t)
	ctx := bounded(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "old"})
	require.NoError(t, err)
	ids := addAll(t, q, orderTasks(10, 2))
	held, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	target := ids[19]
	where, err := q.Cancel(ctx, 1, target)
	require.NoError(t, err)
	require.Equal(t, StateUnknown, where)
	// The earlier release's hand-back, last claimed first in the list.
	st := c.st
	args := []any{st.value(), st.ttlMS, "0"}
	var records []string
	for i := len(held) - 1; i >= 0; i-- {
		task := held[i]
		task.Attempt--
		ct := c.claimedOf(task)
		r := ct.ref()
		args = append(r.args(args), encodeClaimed(ct))
		records = append(records, r.record)
	}
	call := st.requeueCall(records, args...)
	n, err := redis.Int(s.do(t, "EVAL", append([]any{earlierScript(t, "requeue")}, call...)...), nil)
	require.NoError(t, err)
	require.Equal(t, 10, n)
	require.NoError(t, c.Release(context.Background()))
	c2, err := q.Consume(ctx, 0, ConsumerConfig{Owner: "new"})
	require.NoError(t, err)
	defer func() { _ = c2.Release(context.Background()) }()
	seen := claimAll(t, c2, 10, nil)
	assert.Len(t, seen, 19)
	assert.False(t, seen[target], "a task marked while ready is never handed out")
}

// A Cancel of the earlier release marks a task deep in a backlog added
// after a stray mark of this release was dropped (its bound, had it
// stayed, would be long passed): with no mark left the bound went, and
// the next claim sets one past the new mark.
func TestCancelMarkOfAnEarlierReleaseAfterADrop(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := bounded(t)
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	defer func() { _ = c.Release(context.Background()) }()
	addAll(t, q, orderTasks(10, 1))
	_, err = q.Cancel(ctx, 1, unusedID())
	require.NoError(t, err)
	ts, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, ts, 10)
	require.False(t, hasMark(t, s, k, unusedID()), "dropped by the claim that took the ten ready when it was set")
	ids := addAll(t, q, orderTasks(10, 10))
	target := ids[90]
	keys := []any{k.sched, k.later, k.pending, k.dead, k.cancels, k.meta, k.claims}
	r, err := redis.Values(s.do(t, "EVAL", append(append([]any{earlierScript(t, "cancel"), len(keys)}, keys...), target, time.Now().UnixMilli(), 0)...), nil)
	require.NoError(t, err)
	require.Equal(t, "marked", string(r[0].([]byte)))
	seen := claimAll(t, c, 10, nil)
	assert.False(t, seen[target], "a task marked while ready is never handed out")
}

// Random interleavings of adds, claims (in place or not), acks,
// hand-backs, releases (recovery by the next owner), scheduled tasks,
// stray Cancels and Cancels of ready tasks: a task marked while ready is
// never handed out, and every other task is, once.
func TestCancelMarksRandomized(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 12; seed++ {
		q, _, _ := testQueue1(t)
		ctx := bounded(t)
		r := rand.New(rand.NewPCG(seed, 7))
		var c *Consumer
		owner := func() {
			if r.IntN(2) == 0 {
				c = inPlaceConsumer(t, q, 0)
				return
			}
			var err error
			c, err = q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
		}
		owner()
		added := map[string]bool{}
		ready := map[string]bool{}
		var readyList []string
		var held []Task
		marked := map[string]bool{}
		handed := map[string]int{} // acknowledged
		take := func(max int) int {
			ts, err := c.Claim(ctx, max)
			require.NoError(t, err)
			for _, x := range ts {
				require.False(t, marked[x.ID], "seed %d: task %s, marked while ready, handed out", seed, x.ID)
				delete(ready, x.ID)
				held = append(held, x)
			}
			return len(ts)
		}
		for range 300 {
			switch op := r.IntN(10); {
			case op < 3:
				ts := make([]Task, 1+r.IntN(30))
				for i := range ts {
					ts[i] = Task{OrderID: uint64(r.IntN(5)), Payload: []byte("p")}
				}
				for _, id := range addAll(t, q, ts) {
					added[id], ready[id] = true, true
					readyList = append(readyList, id)
				}
			case op < 5:
				take(1 + r.IntN(20))
			case op < 6 && len(held) > 0:
				k := 1 + r.IntN(len(held))
				var ids []string
				for _, x := range held[:k] {
					ids = append(ids, x.ID)
					handed[x.ID]++
				}
				_, err := c.Ack(ctx, ids...)
				require.NoError(t, err)
				held = held[k:]
			case op < 7 && len(held) > 0:
				k := 1 + r.IntN(len(held))
				back := held[len(held)-k:]
				require.NoError(t, c.Requeue(ctx, back...))
				for _, x := range back {
					ready[x.ID] = true
				}
				held = held[:len(held)-k]
			case op < 8:
				if r.IntN(3) == 0 {
					_, err := q.Cancel(ctx, 1, formatID(0x5eed, uint32(r.IntN(1<<20))))
					require.NoError(t, err)
					break
				}
				var cand []string
				for _, id := range readyList {
					if ready[id] && !marked[id] {
						cand = append(cand, id)
					}
				}
				if len(cand) > 0 {
					id := cand[r.IntN(len(cand))]
					where, err := q.Cancel(ctx, 1, id)
					require.NoError(t, err)
					require.Equal(t, StateUnknown, where)
					marked[id] = true
				}
			case op < 9:
				id, err := q.AddTaskAfter(ctx, uint64(r.IntN(5)), time.Duration(r.IntN(3))*time.Millisecond, []byte("s"))
				require.NoError(t, err)
				added[id] = true
			default:
				if r.IntN(4) == 0 {
					require.NoError(t, c.Release(context.Background()))
					for _, x := range held {
						ready[x.ID] = true
					}
					held = nil
					owner()
				}
			}
		}
		// The rest, until the queue is empty and the scheduled tasks ran.
		require.Eventually(t, func() bool {
			for take(50) > 0 {
			}
			var ids []string
			for _, x := range held {
				ids = append(ids, x.ID)
				handed[x.ID]++
			}
			if len(ids) > 0 {
				_, err := c.Ack(ctx, ids...)
				require.NoError(t, err)
			}
			held = nil
			return stats0(t, q).Scheduled == 0 && stats0(t, q).Ready == 0
		}, 10*time.Second, 5*time.Millisecond)
		for id := range added {
			if marked[id] {
				assert.Zero(t, handed[id], "seed %d: %s was marked", seed, id)
			} else {
				assert.Equal(t, 1, handed[id], "seed %d: %s acknowledged once", seed, id)
			}
		}
		require.NoError(t, c.Release(context.Background()))
	}
}
