package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// unreplicated is what a waitConn hands out for the reply r, err of cmd
// when WAIT found too few replicas: a write's reply that says it changed
// something becomes ErrNotReplicated; reads, error replies, empty pops and
// the 0 of the scripts that say so by it pass as they came (see
// waitConn.readThrough).
func unreplicated(cmd string, args []any, r any, err error) (any, error) {
	kind := classify(cmd, args)
	if err != nil || kind == sentRead || kind == sentPop && r == nil || kind == sentZero && unchangedZero(r) {
		return r, err
	}
	return nil, &notReplicated{acked: 0, want: 1, timeout: lateReadTimeout}
}

// The harness's unreplicated fault is what a waitConn makes of a write
// that no replica acknowledged.
func TestUnreplicatedFault(t *testing.T) {
	for _, tc := range []struct {
		cmd   string
		args  []any
		r     any
		unrep bool
	}{
		{"GET", []any{"k"}, []byte("v"), false},
		{"SET", []any{"k", "v"}, "OK", true},
		{"RPOP", []any{"k"}, nil, false},
		{"RPOP", []any{"k"}, []byte("v"), true},
		{"EVALSHA", []any{renewScript.Hash(), 1, "k"}, int64(0), false},
		{"EVALSHA", []any{renewScript.Hash(), 1, "k"}, int64(1), true},
		{"EVALSHA", []any{ackScript.Hash(), 7}, int64(0), true},
	} {
		_, err := unreplicated(tc.cmd, tc.args, tc.r, nil)
		assert.Equal(t, tc.unrep, err != nil && isReplyError(err), "%s %v -> %v", tc.cmd, tc.r, err)
	}
}
