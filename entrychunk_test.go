package queue

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// AddTasks encodes its entries into chunks of entryChunk bytes, a larger
// entry into a buffer of its own: each entry comes back whole, capped at
// its length (so that nothing appended to one reaches the next), and
// none moves while later ones are encoded.
func TestEntryChunksKeepEveryEntry(t *testing.T) {
	var c entryChunks
	var got [][]byte
	var want [][]byte
	sizes := []int{1, 100, entryChunk - 10, 7, entryChunk, entryChunk + 1, 3 * entryChunk, 20000, 20000, 20000, 5}
	for i, n := range sizes {
		w := bytes.Repeat([]byte{byte('a' + i)}, n)
		e := c.add(n, func(b []byte) []byte { return append(b, w...) })
		require.Equal(t, len(e), cap(e), "entry %d is capped at its length", i)
		got, want = append(got, e), append(want, w)
	}
	for i := range got {
		assert.Equal(t, want[i], got[i], "entry %d of %d bytes", i, sizes[i])
	}
	c.release()
	assert.Nil(t, c.kept)
}
