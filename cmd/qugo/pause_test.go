package main

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// paused returns which analysers Stats reports paused.
func (f *fixture) paused(t *testing.T) []bool {
	t.Helper()
	stats, err := f.q.Stats(context.Background())
	require.NoError(t, err)
	out := make([]bool, len(stats))
	for i, s := range stats {
		out[i] = s.Paused
	}
	return out
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2) // analyser a serves partition a%2, queue a/2
	f.add(t, 0, 1)           // records the layout on both servers

	doc := qugoJSON[pauseDoc](t, f.args("pause", "-a", "3", "-json")...)
	assert.Equal(t, pauseDoc{Paused: true, Analysers: []int{3}}, doc)
	assert.Equal(t, []bool{false, false, false, true}, f.paused(t))

	doc = qugoJSON[pauseDoc](t, f.args("pause", "-partition", "0", "-json")...)
	assert.Equal(t, pauseDoc{Paused: true, Analysers: []int{0, 2}}, doc)
	assert.Equal(t, []bool{true, false, true, true}, f.paused(t))

	code, out, errOut := qugo(t, f.args("resume", "-a", "2")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "resumed analyser 2\n", out)
	assert.Equal(t, []bool{true, false, false, true}, f.paused(t))

	code, out, errOut = qugo(t, f.args("pause", "-all")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Contains(t, out, "paused all queues: analysers 0-3; a paused pool finishes the tasks it holds")
	assert.Equal(t, []bool{true, true, true, true}, f.paused(t))

	doc = qugoJSON[pauseDoc](t, f.args("resume", "-all", "-json")...)
	assert.Equal(t, pauseDoc{Paused: false, Analysers: []int{0, 1, 2, 3}}, doc)
	assert.Equal(t, []bool{false, false, false, false}, f.paused(t))

	code, out, errOut = qugo(t, f.args("resume", "-partition", "1")...)
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, "resumed partition 1: analysers 1,3\n", out, "resuming queues that run is no error")
}

// A paused queue's pool claims nothing; resumed, it drains what waited.
func TestPauseStopsAConsumer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	f.add(t, 1, 2)
	code, _, errOut := qugo(t, f.args("pause", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	c := f.consume(t, 0)
	tasks, err := c.Claim(context.Background(), 10)
	require.NoError(t, err)
	assert.Empty(t, tasks, "a paused queue hands out nothing")
	code, _, errOut = qugo(t, f.args("resume", "-a", "0")...)
	require.Equal(t, exitOK, code, errOut)
	tasks, err = c.Claim(context.Background(), 10)
	require.NoError(t, err)
	assert.Len(t, tasks, 2)
}

// Pause writes: under a prefix no producer or analyser has used (a typo,
// most likely) it refuses, and writes nothing, layout included.
func TestPauseRefusesAnUnusedPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	for _, args := range [][]string{{"pause", "-all"}, {"resume", "-a", "0"}} {
		code, out, errOut := qugo(t, f.args(args...)...)
		assert.Equal(t, exitRuntime, code, args)
		assert.Empty(t, out, args)
		assert.Contains(t, errOut, "qugo: no producer or analyser has used prefix", args)
		assert.Contains(t, errOut, "refusing to write", args)
	}
	keys, err := f.do(t, 0, "KEYS", "*"+f.prefix+"*")
	require.NoError(t, err)
	assert.Empty(t, keys)
}
