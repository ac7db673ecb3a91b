package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// inPlaceConsumer returns a Consumer of analyser 0 of q whose claims are
// made in place, as a pool's are (claimend.go), with a lease of ttl.
func inPlaceConsumer(t *testing.T, q *Queue, ttl time.Duration) *Consumer {
	t.Helper()
	c, err := q.Consume(context.Background(), 0, ConsumerConfig{LeaseTTL: ttl})
	require.NoError(t, err)
	c.st.native.Store(true)
	c.st.idsLater = true
	t.Cleanup(func() { c.Release(context.Background()) })
	return c
}

func claimIDsOf(t *testing.T, c *Consumer, n int) []string {
	t.Helper()
	ts, err := c.Claim(context.Background(), n)
	require.NoError(t, err)
	ids := make([]string, len(ts))
	for i, x := range ts {
		ids[i] = x.ID
	}
	return ids
}

// Claims in place: the end of the ready list holds them, nothing is
// copied; a finished claim leaves the list at the next claim once it is
// the oldest, and not before; Stats counts the end as pending.
func TestClaimInPlaceTrimsFinishedClaims(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(4, 5)) // 20 tasks
	c := inPlaceConsumer(t, q, 0)

	a := claimIDsOf(t, c, 4)
	b := claimIDsOf(t, c, 4)
	assert.Equal(t, ids[:8], append(a, b...))
	assert.Equal(t, int64(20), srv.do(t, "LLEN", k.ready))
	st := stats0(t, q)
	assert.Equal(t, int64(8), st.Pending)
	assert.Equal(t, int64(12), st.Ready)

	// The second claim finished first: it stays, behind the first.
	n, err := c.Ack(ctx, b...)
	require.NoError(t, err)
	assert.Equal(t, 4, n)
	assert.Equal(t, ids[8:10], claimIDsOf(t, c, 2))
	assert.Equal(t, int64(20), srv.do(t, "LLEN", k.ready), "nothing leaves before the oldest claim finishes")
	assert.Equal(t, int64(6), stats0(t, q).Pending)

	// The first finishes: both leave at the next claim.
	_, err = c.Ack(ctx, a...)
	require.NoError(t, err)
	assert.Equal(t, ids[10:11], claimIDsOf(t, c, 1))
	assert.Equal(t, int64(12), srv.do(t, "LLEN", k.ready))
	recs := claimRecords(t, srv, k)
	assert.Len(t, recs, 2, "the records of the claims left: %v", recs)
	assert.Equal(t, int64(3), stats0(t, q).Pending)
	assert.Equal(t, int64(9), stats0(t, q).Ready)
}

// An owner that dies holding claims in place loses nothing: the next
// owner opens the end and puts back what was not finished, in claim
// order, ahead of the tasks not claimed, and nothing finished runs again.
func TestClaimInPlaceRecovers(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(3, 4)) // 12 tasks
	const ttl = 500 * time.Millisecond
	c := inPlaceConsumer(t, q, ttl)
	a := claimIDsOf(t, c, 3)
	b := claimIDsOf(t, c, 3)
	_, err := c.Ack(ctx, a[1], b[0], b[2])
	require.NoError(t, err)
	assert.Equal(t, []any{[]byte("0"), []byte("6")}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))

	// The owner dies.
	if srv.mini != nil {
		srv.mini.FastForward(ttl + time.Millisecond)
	} else {
		time.Sleep(ttl + 100*time.Millisecond)
	}
	next, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	t.Cleanup(func() { next.Release(ctx) })
	got, err := next.Claim(ctx, 100)
	require.NoError(t, err)
	var order []string
	for _, x := range got {
		order = append(order, x.ID)
	}
	want := append([]string{a[0], a[2], b[1]}, ids[6:]...)
	assert.Equal(t, want, order, "unfinished first, in claim order; the finished ones never again")
	assert.Equal(t, []any{nil, nil}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
}

// Readers of other processes read a claim in place where it is: Status
// and State say pending, Pending lists it in claim order, and Cancel
// finds it; none of them opens the end.
func TestClaimInPlaceReaders(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(2, 3)) // 6 tasks
	c := inPlaceConsumer(t, q, 0)
	c.st.idsAfter = time.Hour // records keep no IDs: readers search the entries
	a := claimIDsOf(t, c, 2)
	b := claimIDsOf(t, c, 2)
	_, err := c.Ack(ctx, a[0])
	require.NoError(t, err)

	for _, id := range []string{a[1], b[0], b[1]} {
		st, err := q.Status(ctx, 0, id)
		require.NoError(t, err)
		assert.Equal(t, StatePending, st.State, "task %s", id)
	}
	pend, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	var pids []string
	for _, x := range pend {
		pids = append(pids, x.ID)
	}
	assert.Equal(t, []string{a[1], b[0], b[1]}, pids)

	// A record that holds its IDs: its places are read one by one.
	c.st.idsAfter = 0
	_, err = c.Ack(ctx, b[0])
	require.NoError(t, err)
	st, err := q.Status(ctx, 0, b[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, st.State)

	// No owner polls here: Cancel waits cancelWait for one, then returns.
	// (A deadline on ctx would bound the calls that set the mark too.)
	state, err := q.Cancel(ctx, 0, b[1])
	require.NoError(t, err)
	assert.Equal(t, StatePending, state)
	assert.Equal(t, []any{[]byte("0"), []byte("4")}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField), "readers leave the end")
	assert.Equal(t, ids[4:], claimIDsOf(t, c, 10), "a claim with a cancel mark waiting opens the end, and goes on")
	assert.Equal(t, []any{nil, nil}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
}

// The owner's steps that work on claim lists open the end first: a task
// handed back goes first, a failed one is retried in its place, one out
// of attempts is dead-lettered, and the rest are claimed after them.
func TestClaimInPlaceOpensForOtherSteps(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(3, 3)) // 9 tasks
	c := inPlaceConsumer(t, q, 0)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, []any{[]byte("0"), []byte("3")}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))

	// A failure is recorded in the task's record, which the end's opening
	// moved into a claim list.
	dead, err := c.Fail(ctx, got[0], errors.New("boom"))
	require.NoError(t, err)
	assert.False(t, dead)
	assert.Equal(t, []any{nil, nil}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
	assert.Equal(t, int64(3), srv.do(t, "LLEN", claimListKey(k, "0")))

	more, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, more, 3)
	require.NoError(t, c.Requeue(ctx, more[1], more[2]))
	back := claimIDsOf(t, c, 2)
	assert.Equal(t, []string{more[1].ID, more[2].ID}, back, "handed back first")
	assert.Equal(t, ids[6:], claimIDsOf(t, c, 10))
	st := stats0(t, q)
	assert.Equal(t, int64(0), st.Ready)
	assert.Equal(t, int64(9), st.Pending)
}

// One long task holds back the finished claims made after its own, at the
// end of the ready list; past maxEnd entries the end is opened: the
// finished claims leave, the long task's claim goes to its list, and the
// claims go on in place.
func TestClaimInPlaceEndIsBounded(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	total := maxEnd + maxMoved
	ids := addLong(t, q, srv, k, orderTasks(1000, total/1000))
	c := inPlaceConsumer(t, q, 0)
	long := claimIDsOf(t, c, 1)
	assert.Equal(t, ids[:1], long)
	claimed := 1
	for claimed+maxMoved <= maxEnd {
		got := claimIDsOf(t, c, maxMoved)
		require.Equal(t, ids[claimed:claimed+maxMoved], got)
		_, err := c.Ack(ctx, got...)
		require.NoError(t, err)
		claimed += maxMoved
	}
	assert.Equal(t, int64(total), srv.do(t, "LLEN", k.ready), "the finished claims wait behind the long one")
	got := claimIDsOf(t, c, maxMoved)
	require.Equal(t, ids[claimed:claimed+maxMoved], got)
	assert.Equal(t, int64(1), srv.do(t, "LLEN", claimListKey(k, "0")), "the long task's claim in its list")
	assert.Equal(t, int64(total-claimed), srv.do(t, "LLEN", k.ready), "the finished claims gone")
	st := stats0(t, q)
	assert.Equal(t, int64(1+maxMoved), st.Pending)
	_, err := c.Ack(ctx, long[0])
	require.NoError(t, err)
	assert.Equal(t, int64(0), srv.do(t, "EXISTS", claimListKey(k, "0")))
}

// A claim knows where its entries will be: past the store's claims at
// the end, less those whose acks Redis confirmed (the claim trims those
// and no more), so that it reads them with its script however many
// there are; and a claim whose acks are not all confirmed stays.
func TestClaimInPlaceKnowsWhereItsEntriesAre(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(10, 60)) // 600 tasks
	c := inPlaceConsumer(t, q, 0)
	c.st.entrySize.Store(64)
	a := claimIDsOf(t, c, 300)
	b := claimIDsOf(t, c, 100)
	assert.Equal(t, ids[:400], append(a, b...))
	_, trims, off := c.st.endClaims()
	assert.Equal(t, 0, trims)
	assert.Equal(t, 400, off)

	_, err := c.Ack(ctx, a...)
	require.NoError(t, err)
	_, err = c.Ack(ctx, b[:99]...)
	require.NoError(t, err)
	_, trims, off = c.st.endClaims()
	assert.Equal(t, 1, trims, "the first claim's acks are all confirmed")
	assert.Equal(t, 100, off)
	got, err := c.st.claim(ctx, 5, 1<<20, false, nil)
	require.NoError(t, err)
	assert.Equal(t, ids[400:405], claimedIDs(got))
	assert.Equal(t, int64(600-300), srv.do(t, "LLEN", k.ready), "the first claim trimmed, the second not")
	assert.Equal(t, []any{[]byte("300"), []byte("105")}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
}

// A graceful stop with every held task running (nothing to hand back)
// leaves no claim in place: the finished claims leave the ready list
// before the lease goes, as a claim list would have, and nothing of the
// tasks is left.
func TestPoolStopLeavesNoClaimInPlace(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	addAll(t, q, orderTasks(8, 1))
	ctx, stop := context.WithCancel(bounded(t))
	defer stop()
	var started sync.WaitGroup
	started.Add(8)
	errc := runPool(ctx, q, PoolConfig{Workers: 8, Prefetch: 8, Dispatch: DispatchFree}, func(context.Context, Task) error {
		started.Done()
		<-ctx.Done() // running as the stop begins
		return nil
	})
	started.Wait()
	stop()
	require.NoError(t, <-errc)
	assert.Equal(t, int64(0), srv.do(t, "LLEN", k.ready))
	assert.Empty(t, claimRecords(t, srv, k))
	assert.Equal(t, []any{nil, nil}, srv.do(t, "HMGET", k.meta, endFirstField, endSizeField))
	st := stats0(t, q)
	assert.Zero(t, st.Pending)
	assert.Equal(t, int64(8), st.Processed)
}

// The end holds no more than the claims a claim can name: past
// maxEndTrims of them, or maxEndBytes of entries at the size seen, the
// next claim opens it first.
func TestClaimInPlaceEndRoom(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(1, 60))
	c := inPlaceConsumer(t, q, 0)
	c.st.entrySize.Store(64)
	assert.Equal(t, int64(maxEnd), c.st.endRoom(1))
	assert.Zero(t, c.st.endRoom(maxEndTrims))
	long := claimIDsOf(t, c, 1) // never finished here
	assert.Equal(t, ids[:1], long)
	for i := 1; i < 50; i++ {
		got := claimIDsOf(t, c, 1)
		require.Equal(t, ids[i:i+1], got)
		_, err := c.Ack(ctx, got...)
		require.NoError(t, err)
		assert.LessOrEqual(t, len(claimRecords(t, srv, k)), maxEndTrims+1, "claim %d", i)
	}
	c.st.entrySize.Store(4 << 10)
	assert.Equal(t, int64(maxEndBytes/(4<<10)), c.st.endRoom(1))
}

// A claim whose entries are gone before its read, with the lease (a new
// owner recovered them), says the lease is lost, not that a record is
// malformed.
func TestClaimInPlaceReadAfterTakeoverSaysLeaseLost(t *testing.T) {
	t.Parallel()
	q, srv, k := testQueue1(t)
	ctx := context.Background()
	addAll(t, q, orderTasks(1, 3))
	c := inPlaceConsumer(t, q, 0)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	require.Len(t, got, 3)
	require.NoError(t, c.st.openEnd(ctx)) // as the next owner's recovery does
	srv.do(t, "DEL", claimListKey(k, "0"))
	srv.do(t, "SET", k.lease, "999:other", "PX", 60000)
	_, err = c.st.readInPlace(ctx, 0, 0, 0, 3)
	require.ErrorIs(t, err, ErrLeaseLost)
	srv.do(t, "SET", k.lease, c.st.value(), "PX", 60000)
	_, err = c.st.readInPlace(ctx, 0, 0, 0, 3)
	require.ErrorIs(t, err, ErrMalformed, "with the lease still held: malformed")
}
