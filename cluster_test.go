package queue

import (
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestKeySlot pins the hash slot of keys against what redis-server's
// CLUSTER KEYSLOT answers for them.
func TestKeySlot(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]int{
		"foo":                  12182,
		"123456789":            12739,
		"{user1000}.following": 3443,
		"{}x":                  10595, // an empty tag: the whole key
		"a{}{b}":               15033,
		"{qt:0.3}:ready":       13954,
		"x{a}y{b}":             15495,
	} {
		assert.Equal(t, want, keySlot(key), key)
	}
	// Every key of a queue shares its slot.
	k := newQueueKeys("p", 2, 7)
	for _, key := range []string{k.pending, k.claims, k.dead, k.lease, k.meta, k.wake, k.dedup(1, "x")} {
		assert.Equal(t, keySlot(k.ready), keySlot(key), key)
	}
}

func TestCommandKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		cmd         string
		args        []any
		key         string
		keyless, ok bool
	}{
		{"EVALSHA", []any{"sha", 2, "{q}:a", "{q}:b", "x"}, "{q}:a", false, true},
		{"eval", []any{"src", "1", []byte("k"), "x"}, "k", false, true},
		{"EVALSHA", []any{"sha", 0, "x"}, "", true, true},
		{"LPUSH", []any{"k", "v"}, "k", false, true},
		{"BLMOVE", []any{"k", "k", "RIGHT", "RIGHT", "1"}, "k", false, true},
		{"PING", nil, "", true, true},
		{"CONFIG", []any{"GET", "x"}, "", true, true},
		{"CLIENT", []any{"ID"}, "", false, false},
		{"MULTI", nil, "", false, false},
		{"SUBSCRIBE", []any{"ch"}, "", false, false},
		{"GET", nil, "", false, false},
	}
	for _, tt := range tests {
		key, keyless, ok := commandKey(tt.cmd, tt.args)
		assert.Equal(t, []any{tt.key, tt.keyless, tt.ok}, []any{key, keyless, ok}, tt.cmd)
	}
}

func TestParseRedirect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err  error
		kind redirect
		slot int
		addr string
	}{
		{redis.Error("MOVED 3999 127.0.0.1:6381"), movedTo, 3999, "127.0.0.1:6381"},
		{redis.Error("ASK 12 10.0.0.2:7000"), askTo, 12, "10.0.0.2:7000"},
		{redis.Error("MOVED 1 :7000"), movedTo, 1, ":7000"},
		{redis.Error("TRYAGAIN Multiple keys request during rehashing of slot"), tryAgain, 0, ""},
		{redis.Error("CLUSTERDOWN The cluster is down"), tryAgain, 0, ""},
		{redis.Error("LOADING Redis is loading the dataset in memory"), tryAgain, 0, ""},
		{redis.Error("UNBLOCKED force unblock from blocking operation"), tryAgain, 0, ""},
		{redis.Error("MOVED 16384 h:1"), noRedirect, 0, ""},
		{redis.Error("MOVED x h:1"), noRedirect, 0, ""},
		{redis.Error("ERR wrong number of arguments"), noRedirect, 0, ""},
		{redis.Error("QUGOSTALE lease lost"), noRedirect, 0, ""},
		{assert.AnError, noRedirect, 0, ""},
	}
	for _, tt := range tests {
		kind, slot, addr := parseRedirect(tt.err)
		assert.Equal(t, []any{tt.kind, tt.slot, tt.addr}, []any{kind, slot, addr}, tt.err.Error())
	}
}

// TestParseClusterShards reads a CLUSTER SHARDS reply as redis-server 7
// sends it (ports as integers), with a failed primary skipped.
func TestParseClusterShards(t *testing.T) {
	t.Parallel()
	node := func(port int64, role, health string) any {
		return []any{[]byte("id"), []byte("x"), []byte("port"), port, []byte("tls-port"), port + 1000, []byte("ip"), []byte("10.0.0.1"),
			[]byte("endpoint"), []byte("10.0.0.1"), []byte("role"), []byte(role), []byte("replication-offset"), int64(7),
			[]byte("health"), []byte(health)}
	}
	reply := []any{
		[]any{[]byte("slots"), []any{int64(0), int64(99), int64(200), int64(16383)},
			[]byte("nodes"), []any{node(7000, "master", "online"), node(7003, "replica", "online")}},
		[]any{[]byte("slots"), []any{int64(100), int64(199)},
			[]byte("nodes"), []any{node(7001, "master", "failed"), node(7004, "replica", "online")}},
	}
	m, err := parseClusterShards(reply, "10.0.0.1:7000", false)
	require.NoError(t, err)
	assert.Equal(t, []string{"10.0.0.1:7000"}, m.primaries)
	assert.Equal(t, "10.0.0.1:7000", m.addrOf(0))
	assert.Equal(t, "10.0.0.1:7000", m.addrOf(16383))
	assert.Equal(t, "", m.addrOf(150), "the slots of a failed primary have no owner until its replica takes over")

	m, err = parseClusterShards(reply, "10.0.0.1:7000", true)
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.1:8000", m.addrOf(0), "a TLS client takes the tls-port")

	_, err = parseClusterShards([]any{}, "h:1", false)
	assert.Error(t, err)
}

func TestParseClusterSlots(t *testing.T) {
	t.Parallel()
	reply := []any{
		[]any{int64(0), int64(8191), []any{[]byte(""), int64(7000), []byte("id")}, []any{[]byte("10.0.0.9"), int64(7003)}},
		[]any{int64(8192), int64(16383), []any{[]byte("10.0.0.2"), int64(7001), []byte("id")}},
	}
	m, err := parseClusterSlots(reply, "10.0.0.1:7000")
	require.NoError(t, err)
	assert.Equal(t, "10.0.0.1:7000", m.addrOf(5), "an empty host is the node asked")
	assert.Equal(t, "10.0.0.2:7001", m.addrOf(16000))
	_, err = parseClusterSlots([]any{[]any{int64(5), int64(1), []any{[]byte("h"), int64(1)}}}, "h:1")
	assert.Error(t, err, "a range that ends before it starts")
}

func TestSplitURLs(t *testing.T) {
	t.Parallel()
	assert.Equal(t, []string{"redis://a:1", "rediss://b:2/3"}, SplitURLs("redis://a:1, rediss://b:2/3"))
	assert.Equal(t, []string{"redis+cluster://a:1,b:2,c:3", "redis://d:4"}, SplitURLs("redis+cluster://a:1,b:2,c:3,redis://d:4"))
	assert.Equal(t, []string{"redis+sentinel://:pw@a,b:26380/mymaster/2"}, SplitURLs("redis+sentinel://:pw@a,b:26380/mymaster/2"))
	assert.Equal(t, []string{"redis://a", ""}, SplitURLs("redis://a,"))
}
