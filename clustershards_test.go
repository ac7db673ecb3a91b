package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestParseClusterShardsIntegerFields reads a CLUSTER SHARDS reply as
// Redis 7.0 sends it: a node's port and replication-offset are integers,
// its other fields bulk strings.
func TestParseClusterShardsIntegerFields(t *testing.T) {
	node := func(id string, port int64, role, health string) []any {
		return []any{[]byte("id"), []byte(id), []byte("port"), port, []byte("ip"), []byte("127.0.0.1"),
			[]byte("endpoint"), []byte("127.0.0.1"), []byte("role"), []byte(role),
			[]byte("replication-offset"), int64(28), []byte("health"), []byte(health)}
	}
	// Redis 7.0 says "fail" of a failed node, its documentation "failed";
	// the failed one is listed before the online one, or after.
	for _, failed := range []string{"failed", "fail"} {
		for _, after := range []bool{false, true} {
			nodes := []any{node("c", 7001, "master", failed), node("d", 7004, "master", "online")}
			if after {
				nodes[0], nodes[1] = nodes[1], nodes[0]
			}
			reply := []any{
				[]any{[]byte("slots"), []any{int64(0), int64(8191)},
					[]byte("nodes"), []any{node("a", 7000, "master", "online"), node("b", 7003, "replica", "online")}},
				[]any{[]byte("slots"), []any{int64(8192), int64(16383)}, []byte("nodes"), nodes},
			}
			m, err := parseClusterShards(reply, "127.0.0.1:7000", false)
			require.NoError(t, err)
			assert.Equal(t, "127.0.0.1:7000", m.addrOf(0))
			assert.Equal(t, "127.0.0.1:7000", m.addrOf(8191))
			assert.Equal(t, "127.0.0.1:7004", m.addrOf(8192), "the online primary, not the %s one", failed)
			assert.Equal(t, "127.0.0.1:7004", m.addrOf(16383))
			assert.NotContains(t, m.primaries, "127.0.0.1:7001")
		}
	}
}
