package main

import (
	"context"
	"flag"
	"strconv"
	"strings"

	"github.com/qugo/queue"
)

// routeDoc is the JSON output of route.
type routeDoc struct {
	Partitions int     `json:"partitions"` // R
	Queues     int     `json:"queues"`     // Q
	Routes     []route `json:"routes"`     // order IDs first, then keys, as given
}

// route is where the tasks of one OrderID go.
type route struct {
	Key       *string `json:"key,omitempty"` // the -key given; absent for an order ID
	OrderID   uint64  `json:"order_id"`
	Partition int     `json:"partition"` // index into -redis
	Queue     int     `json:"queue"`
	Analyser  int     `json:"analyser"`
}

// routeOf routes id with the queue package's own arithmetic (queue.Layout),
// so that route needs no server.
func routeOf(id uint64, r, q int) route {
	l := queue.Layout{Partitions: r, Queues: q}
	pi, qi := l.Route(id)
	return route{OrderID: id, Partition: pi, Queue: qi, Analyser: l.AnalyserOf(id)}
}

// layout is the layout the flags describe.
func (e *env) layout() queue.Layout {
	return queue.Layout{Partitions: e.partitions(), Queues: e.queues}
}

func routeFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	var keys []string
	fs.Func("key", "route the string `KEY` (hashed as queue.KeyID does); may be repeated", func(s string) error {
		keys = append(keys, s)
		return nil
	})
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	return func(_ context.Context, e *env, args []string) error {
		if len(args) == 0 && len(keys) == 0 {
			return usagef("route needs an ORDER-ID or -key STRING")
		}
		r := e.partitions()
		doc := routeDoc{Partitions: r, Queues: e.queues}
		for _, a := range args {
			id, err := strconv.ParseUint(a, 10, 64)
			if err != nil && strings.HasPrefix(a, "-") {
				return usagef("route: %q is not an order ID: order IDs are unsigned (0 to 18446744073709551615)", a)
			}
			if err != nil {
				return usagef("route: %q is not an order ID (0 to 18446744073709551615); use -key for a string", a)
			}
			doc.Routes = append(doc.Routes, routeOf(id, r, e.queues))
		}
		for _, k := range keys {
			rt := routeOf(queue.KeyID(k), r, e.queues)
			rt.Key = &k
			doc.Routes = append(doc.Routes, rt)
		}
		if *asJSON {
			return writeJSON(e.stdout, doc)
		}
		header := []string{"ORDER ID", "PARTITION", "QUEUE", "ANALYSER"}
		if len(keys) > 0 {
			header = append([]string{"KEY"}, header...)
		}
		t := newTable(e.stdout, header...)
		for _, rt := range doc.Routes {
			row := []string{strconv.FormatUint(rt.OrderID, 10), strconv.Itoa(rt.Partition), strconv.Itoa(rt.Queue), strconv.Itoa(rt.Analyser)}
			if len(keys) > 0 {
				k := none
				if rt.Key != nil {
					k = strconv.Quote(*rt.Key)
				}
				row = append([]string{k}, row...)
			}
			t.row(row...)
		}
		return t.flush()
	}
}
