package main

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// routeOf must agree with a Queue's routing, which is the contract.
func TestRouteOfMatchesQueue(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1, 1)
	ids := []uint64{0, 1, 2, 3, 7, 42, 1000, 123456789, 1 << 32, 1<<63 + 5, math.MaxUint64 - 1, math.MaxUint64}
	for _, layout := range [][2]int{{1, 1}, {1, 4}, {2, 1}, {2, 3}, {3, 2}, {4, 4}, {5, 7}} {
		r, n := layout[0], layout[1]
		// Route needs no server: one URL r times is a queue of r partitions.
		urls := make([]string, r)
		for i := range urls {
			urls[i] = f.urls[0]
		}
		q, err := queue.Dial(context.Background(), urls, queue.Config{Prefix: f.prefix, Queues: n})
		require.NoError(t, err)
		for _, id := range ids {
			got := routeOf(id, r, n)
			pi, qi := q.Route(id)
			a := q.AnalyserOf(id)
			assert.Equal(t, route{OrderID: id, Partition: pi, Queue: qi, Analyser: a}, got, "R=%d Q=%d id=%d", r, n, id)
			spi, sqi, err := queue.Layout{Partitions: r, Queues: n}.Serves(a)
			require.NoError(t, err)
			assert.Equal(t, [2]int{pi, qi}, [2]int{spi, sqi}, "analyser %d serves the queue of id %d", a, id)
		}
		require.NoError(t, q.Close())
	}
}

// route works with every server down: it needs only R and Q.
func TestRouteOffline(t *testing.T) {
	t.Parallel()
	urls := strings.Join([]string{closedURL(t), closedURL(t), closedURL(t)}, ",")
	code, out, errOut := qugo(t, "-redis", urls, "-queues", "2", "route", "0", "1", "7", "-key", "order-42")
	require.Equal(t, exitOK, code, errOut)
	assert.Empty(t, errOut)
	k := queue.KeyID("order-42")
	kr := routeOf(k, 3, 2)
	assert.Equal(t, [][]string{
		{"KEY", "ORDER", "ID", "PARTITION", "QUEUE", "ANALYSER"},
		{"-", "0", "0", "0", "0"},
		{"-", "1", "1", "0", "1"},
		{"-", "7", "1", "0", "1"},
		{`"order-42"`, fmt.Sprint(k), fmt.Sprint(kr.Partition), fmt.Sprint(kr.Queue), fmt.Sprint(kr.Analyser)},
	}, tableRows(out))

	code, out, errOut = qugo(t, "-redis", urls, "route", "5")
	require.Equal(t, exitOK, code, errOut)
	assert.Equal(t, [][]string{{"ORDER", "ID", "PARTITION", "QUEUE", "ANALYSER"}, {"5", "2", "0", "2"}}, tableRows(out))
}

func TestRouteJSON(t *testing.T) {
	t.Parallel()
	doc := qugoJSON[routeDoc](t, "-redis", "redis://a,redis://b", "-queues", "3", "route", "-json", "11", "-key", "")
	empty := ""
	k := routeOf(queue.KeyID(""), 2, 3)
	k.Key = &empty
	assert.Equal(t, routeDoc{Partitions: 2, Queues: 3, Routes: []route{
		{OrderID: 11, Partition: 1, Queue: 2, Analyser: 5},
		k,
	}}, doc)

	code, out, _ := qugo(t, "-redis", "redis://a", "route", "-json", "3")
	require.Equal(t, exitOK, code)
	assert.Equal(t, `{"partitions":1,"queues":1,"routes":[{"order_id":3,"partition":0,"queue":0,"analyser":0}]}`+"\n", out)
}
