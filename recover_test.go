package queue

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of reading the pending store back: the pending and claim-sequence
// record decoders, and recovery's order and charges.

func TestSplitPending(t *testing.T) {
	t.Parallel()
	accounted, entry, legacy, err := splitPending([]byte("\x01rest:with:colons"))
	require.NoError(t, err)
	assert.False(t, accounted)
	assert.Equal(t, "\x01rest:with:colons", string(entry))
	assert.EqualValues(t, -1, legacy)
	accounted, entry, legacy, err = splitPending([]byte("+\x01e"))
	require.NoError(t, err)
	assert.True(t, accounted)
	assert.Equal(t, "\x01e", string(entry))
	assert.EqualValues(t, -1, legacy)
	// Records as claims wrote them before order records.
	accounted, entry, legacy, err = splitPending([]byte("12:\x01rest:with:colons"))
	require.NoError(t, err)
	assert.False(t, accounted)
	assert.Equal(t, "\x01rest:with:colons", string(entry))
	assert.EqualValues(t, 12, legacy)
	accounted, entry, legacy, err = splitPending([]byte("7+:\x01e"))
	require.NoError(t, err)
	assert.True(t, accounted)
	assert.Equal(t, "\x01e", string(entry))
	assert.EqualValues(t, 7, legacy)
	for _, bad := range []string{"", "+", "++\x01e", "x", "+x", "\x02e", "12", "05:x", "5++:x", "05+:x", "5 +:x",
		"99999999999999999999:x", "-5:x", "+5:x", ":x"} {
		_, _, _, err := splitPending([]byte(bad))
		assert.ErrorIs(t, err, ErrMalformed, "%q", bad)
	}
}

func TestClaimOrder(t *testing.T) {
	t.Parallel()
	id := func(c byte) string { return strings.Repeat(string(c), idLen) }
	got := claimSeqs(map[string]string{
		"10": id('a') + id('b') + seqFiller,
		"13": id('c') + id('a'), // a was handed back and claimed again
		"7":  id('z'),
		// Not order records as the claim script writes them: skipped.
		"07":                   id('x'),
		"-1":                   id('x'),
		"x":                    id('x'),
		"20":                   id('x') + "short",
		"99999999999999999999": id('x'),
	})
	assert.Equal(t, map[string]int64{
		id('z'): 8, id('b'): 12, seqFiller: 13, id('c'): 14, id('a'): 15,
	}, got)
}

// TestMalformedPendingQuarantined writes garbage straight into a pending
// hash: the next owner's recovery moves it to the dead-letter store with
// its raw bytes, and puts the real pending tasks back in claim order.
func TestMalformedPendingQuarantined(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	mk := func(id string, order uint64, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: order, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:3])}, deliveries)
	}
	idA, idB, idC := "aaa00000000000000000", "bbb00000000000000000", "ccc00000000000000000"
	plus := func(b []byte) []byte { return append([]byte{accountedMark}, b...) }
	records := map[string][]byte{
		idB:                    plus(mk(idB, 1, 2)), // claimed second; its second delivery started
		idA:                    mk(idA, 1, 0),       // claimed first
		idC:                    plus(mk(idC, 2, 5)), // its fifth delivery started: dead
		"x":                    []byte("no task at all"),
		"y":                    []byte("5:garbage"),
		"bad:6":                []byte("\x01"),
		"ddd00000000000000000": mk("eee00000000000000000", 3, 0), // field and ID disagree
		"zzz":                  plus(mk("zzz00000000000000000", 3, 0)),
	}
	for f, v := range records {
		s.do(t, "HSET", k.pending, f, v)
	}
	// Claim order: A (seq 3), then B and C (seqs 8 and 9).
	s.do(t, "HSET", k.claims, "2", idA, "7", idB+idC, "x7", "not an order record")
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDs(pending), "Pending lists decodable records in claim order")
	assert.Equal(t, []int{1, 2, 5}, []int{pending[0].Attempt, pending[1].Attempt, pending[2].Attempt})

	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 5})
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
	assert.Equal(t, []string{idA, idB}, readyIDs(t, s, k.ready), "recovered in claim order")
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 2)
	assert.Equal(t, []int{1, 3}, []int{got[0].Attempt, got[1].Attempt},
		"a recorded interrupted delivery counts; an unrecorded first one may never have started, and does not")

	list, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	var raws [][]byte
	for _, d := range list {
		if d.ID == idC {
			assert.Nil(t, d.Raw)
			assert.Equal(t, 5, d.Attempts)
			assert.Contains(t, d.LastError, "delivered 5 times")
			assert.Equal(t, []byte("ccc"), d.Payload)
			continue
		}
		assert.Equal(t, records[d.ID], d.Raw, "record %q keeps its raw bytes", d.ID)
		assert.True(t, strings.HasPrefix(d.LastError, "recover: "), d.LastError)
		raws = append(raws, d.Raw)
	}
	assert.Len(t, raws, len(records)-3)
	st := statsOf(t, q, 0)
	assert.EqualValues(t, len(records)-2, st.Failed)
	assert.EqualValues(t, 2, st.Redelivered)
	assert.EqualValues(t, 2, st.Pending)
	require.NoError(t, c.Release(ctx))
}

// FuzzDecodePending checks that a pending record, an entry as a claim
// writes it or '+' and an entry as a recorded delivery does (or either in
// the older form with a claim seq in front), never panics the decoder, and
// that one that decodes re-encodes to its own bytes.
func FuzzDecodePending(f *testing.F) {
	task := Task{ID: testID, OrderID: 9, AddedAt: time.UnixMilli(1_700_000_000_000), Payload: []byte("x:y")}
	f.Add(encodeTask(task, 2))
	f.Add(accountedRecord(task, 2))
	task.Headers = map[string]string{"k": "v", "tenant": "t1"}
	f.Add(encodeClaimed(claimed{Task: task, recovered: true}))
	f.Add(accountedRecord(task, 3))
	f.Add([]byte("+"))
	f.Add([]byte("17:no seq any more"))
	f.Fuzz(func(t *testing.T, b []byte) {
		accounted, e, legacy, err := splitPending(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		task, deliveries, err := decodeEntry(e)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		re := encodeTask(task, deliveries)
		if accounted {
			re = accountedRecord(task, deliveries)
		}
		if legacy >= 0 {
			head := strconv.FormatInt(legacy, 10)
			if accounted {
				head += "+"
			}
			re = append([]byte(head+":"), encodeTask(task, deliveries)...)
		}
		// The entry's flags say whether recovery marked it (the mark is
		// not the task's): keep the one it had.
		if off := len(re) - len(encodeTask(task, deliveries)); off < len(b) && isEntryStart(b[off]) {
			re[off] = b[off]
		}
		if !bytes.Equal(re, b) {
			t.Fatalf("re-encoded %q as %q", b, re)
		}
	})
}

// FuzzClaimOrder checks that any claim-sequence record is read without a
// panic, and that one of the pending hash's format, as the claim script
// of earlier releases wrote it, numbers each of its IDs (claimSeqs leaves
// claim records, which start with claimedMark, to claimLists).
func FuzzClaimOrder(f *testing.F) {
	f.Add("10", testID+testID)
	f.Add("0", seqFiller)
	f.Add("07", testID)
	f.Add("x", "short")
	f.Add("5", "#5:"+testID)
	f.Fuzz(func(t *testing.T, field, ids string) {
		records := map[string]string{field: ids}
		claimRecordFirst(ids)
		claimPlaces(records, testID)
		got := claimSeqs(records)
		first, err := strconv.ParseInt(field, 10, 64)
		_, list, _ := claimIDs(ids)
		valid := err == nil && first >= 0 && strconv.FormatInt(first, 10) == field && len(ids)%idLen == 0 && !list
		if !valid {
			if len(got) != 0 {
				t.Fatalf("record %q = %q read as %v", field, ids, got)
			}
			return
		}
		for i := len(ids) - idLen; i >= 0; i -= idLen {
			id := ids[i : i+idLen]
			if want := first + int64(i/idLen) + 1; got[id] != want && strings.Count(ids, id) == 1 {
				t.Fatalf("ID %q at %d: seq %d, want %d", id, i, got[id], want)
			}
		}
	})
}

// TestRecoveryReadsOlderPendingRecords: records written before claims kept
// their order in order records ("<seq>:<entry>", "<seq>+:<entry>") are
// put back with the new ones, in claim order, their deliveries counted as
// before.
func TestRecoveryReadsOlderPendingRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	mk := func(id string, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:3])}, deliveries)
	}
	idA, idB, idC := "aaa00000000000000000", "bbb00000000000000000", "ccc00000000000000000"
	s.do(t, "HSET", k.pending,
		idB, append([]byte("3:"), mk(idB, 0)...), // claimed second
		idA, append([]byte("2+:"), mk(idA, 2)...), // claimed first; its second delivery started
		idC, mk(idC, 0)) // claimed after the upgrade
	s.do(t, "HSET", k.claims, "9", idC)
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDs(pending))

	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims, k.dead))
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, []string{idA, idB, idC}, taskIDs(got))
	assert.Equal(t, []int{3, 1, 1}, taskAttempts(got), "only recorded deliveries count")
}

// TestRecoveryFollowsOrderRecords: the claim order comes from the order
// records, not from the task IDs (which sort by add time only for tasks of
// one producer): here the claims took the IDs in reverse order.
func TestRecoveryFollowsOrderRecords(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	q, s, k := deadQueue(t)
	ids := []string{"vvv00000000000000000", "uuu00000000000000000", "ttt00000000000000000", "sss00000000000000000"}
	for _, id := range ids {
		s.do(t, "HSET", k.pending, id, encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte("p")}, 0))
	}
	s.do(t, "HSET", k.claims, "4", ids[2]+ids[3], "1", ids[0]+ids[1])
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(pending))
	_, err = q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	assert.Equal(t, ids, readyIDs(t, s, k.ready), "back in claim order")
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}

// A claim-sequence record that does not decode (one stray byte) made
// recovery sort the tasks by ID, which is not the order Redis accepted
// them in across producers. Recovery no longer guesses: the tasks whose
// place is lost go to the dead-letter store, and the pool says so.
func TestRecoveryQuarantinesTasksWhoseSeqIsLost(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	// Two producers: IDs do not sort in the order the tasks were added.
	// Their claim, as an earlier release recorded it (the pending hash, and
	// a claim-sequence record of IDs), with one stray byte in that record.
	a2 := "aaa00000000000000000"
	a1 := "vvv00000000000000000"
	for _, id := range []string{a1, a2} {
		s.do(t, "HSET", k.pending, id, encodeTask(Task{ID: id, OrderID: 7, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:1])}, 0))
	}
	s.do(t, "HSET", k.claims, "0", a1+a2+"x")

	r := newRecorder()
	var errs errLog
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, OnError: errs.add}, r.fn(nil)))
	assert.Empty(t, r.order(7), "nothing runs in a guessed order")
	assert.Equal(t, 1, errs.count(ErrMalformed), "the pool reports it: %v", errs.all())
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 2)
	for _, d := range dead {
		assert.Nil(t, d.Raw, "a whole task, replayable")
		assert.Contains(t, d.LastError, "claim-sequence record")
	}
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
}

// A claim record whose sequence record was overwritten, field or value,
// still leads to its claim list: its tasks run, in claim order.
func TestRecoveryKeepsOrderOfAClaimRecordOverwritten(t *testing.T) {
	t.Parallel()
	for name, corrupt := range map[string]func(f, v string) (string, string){
		"stray byte":  func(f, v string) (string, string) { return f, v + "x" },
		"value empty": func(f, v string) (string, string) { return f, "" },
		"field":       func(f, v string) (string, string) { return "garbage", v },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			q, s, k := testQueue1(t)
			ctx := context.Background()
			a2 := "aaa00000000000000000"
			a1 := "vvv00000000000000000"
			for _, id := range []string{a1, a2} {
				s.do(t, "LPUSH", k.ready, encodeTask(Task{ID: id, OrderID: 7, AddedAt: time.UnixMilli(1000), Payload: []byte(id[:1])}, 0))
			}
			c, err := q.Consume(ctx, 0, ConsumerConfig{})
			require.NoError(t, err)
			got, err := c.Claim(ctx, 2)
			require.NoError(t, err)
			require.Equal(t, []string{a1, a2}, taskIDs(got))
			rec, err := redis.StringMap(s.do(t, "HGETALL", k.claims), nil)
			require.NoError(t, err)
			require.Len(t, rec, 1)
			for f, v := range rec {
				s.do(t, "HDEL", k.claims, f)
				f, v = corrupt(f, v)
				s.do(t, "HSET", k.claims, f, v)
			}
			lapse(t, s, k.lease) // the crash

			r := newRecorder()
			require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, r.fn(nil)))
			assert.Equal(t, []string{"v", "a"}, r.order(7), "in claim order")
			assert.Zero(t, stats0(t, q).Dead)
			assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims, claimListKey(k, "0"), claimDoneKey(k, "0")))
		})
	}
}

// Recovery charged a delivery to every pending task, started or not: with
// MaxAttempts 1, a lease lapse dead-lettered every task the owner had
// claimed. Now only recorded deliveries count.
func TestRecoveryChargesNoUnstartedTask(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(10, 1))
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 1})
	require.NoError(t, err)
	_, err = c.Claim(ctx, 10)
	require.NoError(t, err)
	lapse(t, s, k.lease) // the owner dies before starting any

	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true, MaxAttempts: 1}, r.fn(nil)))
	for _, id := range ids {
		assert.Equal(t, []int{1}, r.attemptsOf(id), "task %s", id)
	}
	st := stats0(t, q)
	assert.Zero(t, st.Dead)
	assert.EqualValues(t, 10, st.Processed)
}

// TestRecoveryOrdersAcrossClaims puts tasks of several claims back in claim
// order from the claims' order records, a task handed back and claimed
// again at its latest claim's place, and leaves no record behind.
func TestRecoveryOrdersAcrossClaims(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(2, 3)) // a0 b0 a1 b1 a2 b2
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	first, err := c.Claim(ctx, 3) // a0 b0 a1
	require.NoError(t, err)
	require.Equal(t, ids[:3], taskIDs(first))
	require.NoError(t, c.Requeue(ctx, first[1:]...)) // b0 a1 unstarted, a0 runs on
	again, err := c.Claim(ctx, 2)                    // b0 a1, claimed again
	require.NoError(t, err)
	require.Equal(t, ids[1:3], taskIDs(again))
	rest, err := c.Claim(ctx, 10) // b1 a2 b2
	require.NoError(t, err)
	require.Equal(t, ids[3:], taskIDs(rest))
	assert.EqualValues(t, 3, s.do(t, "HLEN", k.claims), "one claim record per claim with a task pending")
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(pending), "Pending lists in claim order")

	// The owner dies with everything pending; the next one puts it back.
	lapse(t, s, k.lease)
	c2, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	assert.Equal(t, ids, readyIDs(t, s, k.ready), "back in claim order")
	assert.Zero(t, s.do(t, "EXISTS", k.pending, k.claims))
	all, err := c2.Claim(ctx, 10)
	require.NoError(t, err)
	assert.Equal(t, ids, taskIDs(all))
	assert.Equal(t, []int{1, 1, 1, 1, 1, 1}, taskAttempts(all), "an interrupted delivery that was never recorded does not count")
	byID := pendingOf(t, s, k)
	for _, id := range ids {
		v := byID[id]
		require.NotEmpty(t, v)
		assert.True(t, strings.HasPrefix(v, "+\x01"), "the claim of a recovered task records its delivery: %q", v[:2])
	}
	_, err = c2.Ack(ctx, taskIDs(all)...)
	require.NoError(t, err)
	assert.Zero(t, s.do(t, "EXISTS", k.ready, k.pending, k.claims))
}

// lossyConn runs the claim script but reports an error instead of its
// reply, while drops lasts: Redis moved the tasks, the client never saw it.
// A pipelined claim (the pool reads its list in the same round trip) loses
// its reply as a plain one does.
type lossyConn struct {
	redis.Conn
	drops *atomic.Int64
	sent  []bool // for each pipelined command whose reply is unread: is it a claim?
}

// lose returns the error that replaces r, the reply of a claim, while
// drops lasts; nil otherwise.
func (c *lossyConn) lose(r any) error {
	if v, _ := redis.Values(r, nil); len(v) > 1 && c.drops.Add(-1) >= 0 {
		return errors.New("read: connection reset by peer (injected)")
	}
	return nil
}

func (c *lossyConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	r, err := redis.DoContext(c.Conn, ctx, cmd, args...)
	if err == nil && scriptOf(cmd, args) == claimScript.Hash() {
		if lerr := c.lose(r); lerr != nil {
			return nil, lerr
		}
	}
	return r, err
}

func (c *lossyConn) Send(cmd string, args ...any) error {
	if err := c.Conn.Send(cmd, args...); err != nil {
		return err
	}
	c.sent = append(c.sent, scriptOf(cmd, args) == claimScript.Hash())
	return nil
}

func (c *lossyConn) Receive() (any, error) { return c.ReceiveContext(context.Background()) }

func (c *lossyConn) ReceiveContext(ctx context.Context) (any, error) {
	r, err := redis.ReceiveContext(c.Conn, ctx)
	claim := len(c.sent) > 0 && c.sent[0]
	if len(c.sent) > 0 {
		c.sent = c.sent[1:]
	}
	if err == nil && claim {
		if lerr := c.lose(r); lerr != nil {
			return nil, lerr
		}
	}
	return r, err
}

// A claim whose reply was lost left its tasks pending for as long as the
// owner lived: the fault suite's connection resets left tasks stranded.
// The pool now puts them back, in order, before it claims anything else.
func TestPoolRecoversClaimWithLostReply(t *testing.T) {
	t.Parallel()
	_, servers := newTestQueue(t, 1, Config{})
	var drops atomic.Int64
	drops.Store(2)
	pool := servers[0].wrapPool(0, func(c redis.Conn) redis.Conn { return &lossyConn{Conn: c, drops: &drops} })
	defer pool.Close()
	q, err := New([]*redis.Pool{pool}, Config{Prefix: testPrefix(t)})
	require.NoError(t, err)
	ctx := context.Background()
	var tasks []Task
	for i := 0; i < 30; i++ {
		tasks = append(tasks, Task{OrderID: uint64(i % 3), Payload: []byte(strconv.Itoa(i))})
	}
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)

	var mu sync.Mutex
	got := map[uint64][]string{}
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 2, Prefetch: 4, ExitOnEmpty: true, OnError: func(error) {}},
		func(_ context.Context, task Task) error {
			mu.Lock()
			got[task.OrderID] = append(got[task.OrderID], string(task.Payload))
			mu.Unlock()
			return nil
		})
	require.NoError(t, err)
	assert.Less(t, drops.Load(), int64(0), "the claim replies were dropped")
	for o := uint64(0); o < 3; o++ {
		var want []string
		for i := int(o); i < 30; i += 3 {
			want = append(want, strconv.Itoa(i))
		}
		assert.Equal(t, want, got[o], "order %d: every task once, in order", o)
	}
	pending, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	assert.Empty(t, pending)
}

// A poison task that crashes its owner took the tasks claimed with it to
// the dead-letter store: recovery counted a delivery for every pending
// task, started or not. A redelivered task now records its delivery when
// it starts, and recovery counts none for one that never started.
func TestRecoveryChargesOnlyStartedRedeliveries(t *testing.T) {
	t.Parallel()
	q, servers := newTestQueue(t, 1, Config{})
	k := newQueueKeys(q.cfg.Prefix, 0, 0)
	ctx := context.Background()
	mk := func(id string, deliveries int) []byte {
		return encodeTask(Task{ID: id, OrderID: 1, AddedAt: time.UnixMilli(1000), Payload: []byte("p")}, deliveries)
	}
	unstarted, started := "aaa00000000000000000", "bbb00000000000000000"
	servers[0].do(t, "HSET", k.pending,
		unstarted, mk(unstarted, 1), // claimed for its second delivery, never started
		started, append([]byte{accountedMark}, mk(started, 2)...)) // its second delivery started, then the crash
	servers[0].do(t, "HSET", k.claims, "0", unstarted+started)
	c, err := q.Consume(ctx, 0, ConsumerConfig{MaxAttempts: 2})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 10)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, unstarted, got[0].ID)
	assert.Equal(t, 2, got[0].Attempt, "the delivery that never started is not counted")
	dead, err := q.Dead(ctx, 0)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, started, dead[0].ID)
	assert.Equal(t, 2, dead[0].Attempts)

	// The low-level API counts a claim of a redelivered task as its start.
	pend, err := q.Pending(ctx, 0)
	require.NoError(t, err)
	require.Len(t, pend, 1)
	assert.Equal(t, 2, pend[0].Attempt)
	v := pendingOf(t, servers[0], k)[unstarted]
	require.NotEmpty(t, v)
	assert.True(t, strings.HasPrefix(v, "+\x01"), "recorded as started: %q", v[:2])
}

// Tasks pending across an upgrade: records of an earlier release (a
// pending hash, and claim-sequence records of bare IDs) beside the claim
// records of this one go back together in claim order, each delivery
// count as recorded, and nothing of either is left.
func TestRecoveryAcrossTheUpgrade(t *testing.T) {
	t.Parallel()
	q, s, k := testQueue1(t)
	ctx := context.Background()
	ids := addAll(t, q, orderTasks(2, 3)) // a0 b0 a1 b1 a2 b2
	// The earlier release claimed a0 b0 (seqs 1, 2; b0's delivery
	// recorded) and a1 (seq 3), in two claims, then stopped with them
	// pending: its records are written here as it wrote them.
	ready := readyTasks(t, s, k)
	require.Equal(t, ids, taskIDs(ready))
	for range 3 {
		s.do(t, "RPOP", k.ready)
	}
	s.do(t, "HSET", k.pending,
		ids[0], encodeTask(ready[0], 0),
		ids[1], append([]byte{accountedMark}, encodeTask(ready[1], 1)...),
		ids[2], encodeTask(ready[2], 0))
	s.do(t, "HSET", k.claims, "0", ids[0]+ids[1], "2", ids[2])
	s.do(t, "HSET", k.meta, "seq", 3)

	// This release's Consumer puts them back at the consuming end, in
	// claim order, claims one (a0, into a claim record) and dies with it
	// pending.
	c, err := q.Consume(ctx, 0, ConsumerConfig{})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 1)
	require.NoError(t, err)
	assert.Equal(t, ids[0:1], taskIDs(got), "recovery put the old release's tasks back first")
	lapse(t, s, k.lease)

	// The next owner: everything back in claim order, then b2.
	r := newRecorder()
	require.NoError(t, q.AnalysePool(bounded(t), 0, PoolConfig{ExitOnEmpty: true}, r.fn(nil)))
	assert.Equal(t, []string{pl(0, 0), pl(0, 1), pl(0, 2)}, r.order(0))
	assert.Equal(t, []string{pl(1, 0), pl(1, 1), pl(1, 2)}, r.order(1))
	// a0: claimed by the Consumer, its delivery recorded, then the crash;
	// b0: its delivery recorded by the earlier release; a1: never started.
	assert.Equal(t, []int{2}, r.attemptsOf(ids[0]))
	assert.Equal(t, []int{2}, r.attemptsOf(ids[1]))
	assert.Equal(t, []int{1}, r.attemptsOf(ids[2]))
	assert.Zero(t, s.do(t, "EXISTS", k.ready, k.pending, k.claims))
	inClaims, _ := redis.Int64(s.do(t, "HGET", k.meta, "pending"), nil)
	assert.Zero(t, inClaims)
}
