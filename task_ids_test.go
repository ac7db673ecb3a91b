package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIDSourceNextN(t *testing.T) {
	t.Parallel()
	t.Run("matches next", func(t *testing.T) {
		var a, b idSource
		a.next() // draws the node
		b.node, b.n = a.node, a.n
		got := a.nextN(3)
		want := []string{b.next(), b.next(), b.next()}
		assert.Equal(t, want, got)
		assert.Equal(t, b.n, a.n)
		assert.Empty(t, a.nextN(0))
	})
	t.Run("carries as next does", func(t *testing.T) {
		for _, start := range []struct {
			node uint64
			n    uint32
		}{{0, 1}, {7, 30}, {1 << 40, 1<<10 - 5}, {^uint64(0) >> 1, 1<<20 - 700}, {0x9e3779b97f4a7c15, 1<<30 - 3}} {
			a := idSource{node: start.node, n: start.n}
			b := idSource{node: start.node, n: start.n}
			got := a.nextN(2000)
			for i, id := range got {
				if want := b.next(); id != want {
					t.Fatalf("node %x from %d: ID %d is %s, want %s", start.node, start.n, i, id, want)
				}
			}
		}
	})
	t.Run("draws a new node at the wrap", func(t *testing.T) {
		s := idSource{node: 42, n: 1<<32 - 2}
		ids := s.nextN(4)
		require.Len(t, ids, 4)
		assert.Equal(t, []string{formatID(42, 1<<32-2), formatID(42, 1<<32-1)}, ids[:2])
		assert.Equal(t, uint32(2), s.n)
		assert.Equal(t, []string{formatID(s.node, 0), formatID(s.node, 1)}, ids[2:])
		seen := map[string]bool{}
		for _, id := range append(ids, s.nextN(100)...) {
			assert.Len(t, id, idLen)
			for i := 0; i < len(id); i++ {
				assert.True(t, isIDChar(id[i]), id)
			}
			assert.False(t, seen[id], id)
			seen[id] = true
		}
	})
}

// BenchmarkNextIDs is the IDs of a 100,000-task AddTasks call.
func BenchmarkNextIDs(b *testing.B) {
	var s idSource
	b.ReportAllocs()
	for b.Loop() {
		if ids := s.nextN(100_000); len(ids) != 100_000 {
			b.Fatal(len(ids))
		}
	}
}
