package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// accountedRecord is the pending record of t after a recorded delivery,
// as retryScript writes it: the entry with deliveries as its count (not
// marked recovered: the delivery is recorded), behind a '+'.
func accountedRecord(t Task, deliveries int) []byte {
	h, _ := headersSize(t.Headers)
	buf := make([]byte, 1, 1+entryCap(h, len(t.Payload)))
	buf[0] = accountedMark
	return appendEntry(buf, 0, t.ID, t.OrderID, t.AddedAt.UnixMilli(), deliveries, t.Headers, t.Payload)
}

// failedRecord is the pending record of t after its delivery attempt
// failed, as failScript writes it: with inPlace, the retry's delivery
// recorded ahead (see store.fail); else the entry with its failed
// deliveries as its count, unmarked.
func failedRecord(t Task, attempt int, inPlace bool) []byte {
	if inPlace {
		return accountedRecord(t, attempt+1)
	}
	return encodeTask(t, attempt)
}

// recordOf returns the one entry of task id in the lists of k's queue
// (its claim lists, or the ready list's end for claims in place).
func recordOf(t *testing.T, srv *testServer, k queueKeys, id string) []byte {
	t.Helper()
	tag := strings.TrimSuffix(k.ready, "ready")
	keys, err := redis.Strings(srv.do(t, "KEYS", tag+"*"), nil)
	require.NoError(t, err)
	var found [][]byte
	for _, key := range keys {
		if typ, _ := redis.String(srv.do(t, "TYPE", key), nil); typ != "list" {
			continue
		}
		entries, err := redis.ByteSlices(srv.do(t, "LRANGE", key, 0, -1), nil)
		require.NoError(t, err)
		for _, e := range entries {
			body := bytes.TrimPrefix(e, []byte{accountedMark})
			if len(body) > entryHeader && string(body[1:entryHeader]) == id {
				found = append(found, e)
			}
		}
	}
	require.Len(t, found, 1, "entries of task %s", id)
	return found[0]
}

// TestRecordsRewrittenInRedisMatchTheirEncoding checks that the records
// a recorded delivery and a failed one leave, rewritten by their scripts
// from the entry Redis holds (the caller sends the task's ID and count
// only), are what the package's own encoding writes: for tasks with and
// without headers, payloads of one byte to 70 KB, OrderIDs and counts
// whose uvarints take one to ten bytes, an entry marked recovered, and
// records already behind a '+'. A record for another task's entry
// changes nothing.
func TestRecordsRewrittenInRedisMatchTheirEncoding(t *testing.T) {
	for _, inPlace := range []bool{false, true} {
		t.Run(fmt.Sprintf("inPlace=%v", inPlace), func(t *testing.T) {
			q, srv, k := testQueue1(t)
			ctx := context.Background()
			recovered := Task{ID: "0123456789abcdefghij", OrderID: 9, Payload: []byte("recovered"),
				AddedAt: time.UnixMilli(1_700_000_000_123)}
			srv.do(t, "LPUSH", k.ready, encodeEntry(recovered, 2, entryRecovered))
			addAll(t, q, []Task{
				{OrderID: 1, Payload: []byte("x")},
				{OrderID: 1<<63 + 5, Payload: bytes.Repeat([]byte{0xff, 0x80}, 150)},
				{OrderID: 300, Payload: []byte("with headers"),
					Headers: map[string]string{"a": "1", "traceparent": strings.Repeat("z", 200)}},
				{OrderID: 2, Payload: bytes.Repeat([]byte("p"), 70_000)},
			})
			var c *Consumer
			if inPlace {
				c = inPlaceConsumer(t, q, 0)
				c.st.entrySize.Store(64)
			} else {
				var err error
				c, err = q.Consume(ctx, 0, ConsumerConfig{})
				require.NoError(t, err)
				t.Cleanup(func() { c.Release(context.Background()) })
			}
			c.st.maxAttempts = 1 << 41 // no failure here dead-letters
			got, err := c.st.claim(ctx, 10, 1<<30, false, nil)
			require.NoError(t, err)
			require.Len(t, got, 5)
			require.True(t, got[0].recovered, "the entry marked recovered is claimed as such")
			for _, ct := range got {
				for _, n := range []int{1, 127, 128, 16_384, 1<<31 - 1, 1 << 40} {
					ct.Attempt = n
					require.NoError(t, c.st.recordDelivery(ctx, ct))
					require.Equal(t, accountedRecord(ct.Task, n), recordOf(t, srv, k, ct.ID), "recorded delivery %d", n)
					for _, ahead := range []bool{false, true} {
						_, err := c.st.fail(ctx, ct, errors.New("no"), time.Time{}, ahead)
						require.NoError(t, err)
						require.Equal(t, failedRecord(ct.Task, n, ahead), recordOf(t, srv, k, ct.ID),
							"failed delivery %d, the retry recorded ahead: %v", n, ahead)
					}
				}
			}

			// A record naming another task's entry leaves it as it is.
			other := got[1]
			before := recordOf(t, srv, k, other.ID)
			stray := got[2]
			stray.claim, stray.place = other.claim, other.place
			stray.Attempt = 77
			require.NoError(t, c.st.recordDelivery(ctx, stray))
			_, err = c.st.fail(ctx, stray, errors.New("no"), time.Time{}, false)
			require.NoError(t, err)
			require.Equal(t, before, recordOf(t, srv, k, other.ID))
		})
	}
}
