package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A queue of someone else's tasks: bench refuses it without advising a
// verify, and a verify refuses to drain it. Not one task is touched.
func TestBenchLeavesTasksNotItsOwn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ids := f.add(t, 1, 2, 3)
	code, out, errOut := qugo(t, f.args("bench", "-n", "10")...)
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Equal(t, "qugo: bench: analyser 0's queue holds 3 tasks that are not bench's (the next one, task "+ids[0]+
		" (OrderID 1), is not one qugo bench adds): give another -prefix\n", errOut)

	for _, args := range [][]string{{"bench", "-verify", "-partial"}, {"bench", "-verify"}} {
		code, out, errOut = qugo(t, f.args(args...)...)
		assert.Equal(t, exitRuntime, code, args)
		assert.Empty(t, out, args)
		assert.Contains(t, errOut, "qugo: bench: analyser 0's queue holds tasks that are not bench's (the next one, task "+ids[0]+" (OrderID 1)", args)
		assert.Contains(t, errOut, "nothing was drained; give another -prefix", args)
	}
	st, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	assert.EqualValues(t, 3, st[0].Ready)
	assert.Zero(t, st[0].Pending)
	assert.Zero(t, st[0].Processed)
	assert.Zero(t, st[0].Dead)
	for i, id := range ids {
		state, err := f.q.State(context.Background(), uint64(i+1), id)
		require.NoError(t, err)
		assert.Equal(t, queue.StateUnknown, state, "in the ready list, never claimed for good")
	}
}

// A task that is not bench's behind bench's own: the verify stops when
// it meets it, and hands it back unacknowledged.
func TestBenchVerifyStopsAtTaskNotItsOwn(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ctx := context.Background()
	ids, err := f.q.AddTasks(ctx, []queue.Task{
		{OrderID: 1, Payload: benchPayload(2, 1)},
		{OrderID: 2, Payload: []byte("someone else's task")},
		{OrderID: 1, Payload: benchPayload(2, 2)},
	})
	require.NoError(t, err)
	code, out, errOut := qugo(t, f.args("bench", "-verify", "-json")...)
	assert.Equal(t, exitRuntime, code)
	var doc benchDoc
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, benchForeignStop, doc.Stopped)
	require.NotNil(t, doc.Check)
	assert.False(t, doc.Check.OK)
	assert.EqualValues(t, 1, doc.Check.Foreign)
	assert.Equal(t, "qugo: bench: met 1 task that qugo bench did not add: "+ids[1]+" (OrderID 2); stopped, and left it queued, unacknowledged: "+
		"the queue under prefix \""+f.prefix+"\" is not bench's alone: give another -prefix\n", errOut)

	st, err := f.q.Stats(ctx)
	require.NoError(t, err)
	assert.Zero(t, st[0].Pending)
	assert.Zero(t, st[0].Dead)
	assert.Equal(t, doc.Check.Handled, st[0].Processed)
	assert.Equal(t, 3-doc.Check.Handled, st[0].Ready)
	// It is still there, to be claimed.
	c, err := f.q.Consume(ctx, 0, queue.ConsumerConfig{LeaseTTL: time.Minute})
	require.NoError(t, err)
	defer c.Release(ctx)
	got, err := c.Claim(ctx, 3)
	require.NoError(t, err)
	var left []string
	for _, task := range got {
		left = append(left, string(task.Payload))
	}
	assert.Contains(t, left, "someone else's task")
}

// Tasks pending with no one holding their queue (a drain that died with
// them claimed) are a drain's tail too: a verify without -partial
// refuses them, and takes nothing.
func TestBenchVerifyRefusesPendingLeftByADrain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	if f.minis == nil {
		t.Skip("lets the lease run out by moving miniredis's clock")
	}
	ctx := context.Background()
	var tasks []queue.Task
	for place := uint32(1); place <= 3; place++ {
		tasks = append(tasks, queue.Task{OrderID: 1, Payload: benchPayload(3, place)})
	}
	_, err := f.q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	c, err := f.q.Consume(ctx, 0, queue.ConsumerConfig{LeaseTTL: time.Second})
	require.NoError(t, err)
	got, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, got, 2)
	_, err = c.Ack(ctx, got[0].ID)
	require.NoError(t, err)
	f.minis[0].FastForward(time.Minute) // the consumer died: its lease runs out
	st, err := f.q.Stats(ctx)
	require.NoError(t, err)
	require.Empty(t, st[0].Owner)
	require.EqualValues(t, 1, st[0].Pending)

	code, out, errOut := qugo(t, f.args("bench", "-verify")...)
	assert.Equal(t, exitRuntime, code)
	assert.Empty(t, out)
	assert.Equal(t, "qugo: bench: analyser 0's queue holds 2 tasks, and some were handled before (1 task pending with no one holding the queue: "+
		"by a bench or verify stopped part way, or by analysers): a full check would count those as missing; "+
		"nothing was drained: drain them with qugo bench -verify -partial\n", errOut)
	after, err := f.q.Stats(ctx)
	require.NoError(t, err)
	assert.EqualValues(t, 2, after[0].Ready+after[0].Pending)
	assert.EqualValues(t, 1, after[0].Processed, "the dead drain's only")
}
