// Command quickstart shows the queue end to end: it enqueues a few hundred
// tasks over a handful of OrderIDs, drains them with an analyser pool, and
// checks that every OrderID's tasks ran once each, in the order they were
// added. It prints each OrderID's result and each worker's count.
//
// It uses the Redis server in REDIS_URL, or an embedded miniredis when
// REDIS_URL is unset:
//
//	go run ./examples/quickstart
//	REDIS_URL=redis://127.0.0.1:6379 go run ./examples/quickstart -tasks 1000
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/qugo/queue"
)

func main() {
	var (
		orders  = flag.Int("orders", 8, "number of OrderIDs")
		tasks   = flag.Int("tasks", 400, "number of tasks in all, spread over the OrderIDs")
		workers = flag.Int("workers", 4, "analyser worker goroutines")
		prefix  = flag.String("prefix", "quickstart", "Redis key prefix")
		work    = flag.Duration("work", time.Millisecond, "most time one task pretends to work")
	)
	flag.Parse()
	log.SetFlags(0)
	if err := checkFlags(*orders, *tasks, *workers, *work); err != nil {
		log.Fatal("quickstart: ", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *orders, *tasks, *workers, *prefix, *work); err != nil {
		log.Fatal("quickstart: ", err)
	}
}

// checkFlags refuses flags the run cannot use.
func checkFlags(orders, tasks, workers int, work time.Duration) error {
	if orders < 1 || tasks < 1 || workers < 1 {
		return errors.New("-orders, -tasks and -workers must be at least 1")
	}
	if work < 0 {
		return fmt.Errorf("-work %v: must not be negative", work)
	}
	return nil
}

// run adds the tasks, drains them and checks them, printing to out.
func run(ctx context.Context, out io.Writer, orders, tasks, workers int, prefix string, work time.Duration) error {
	if orders > tasks {
		// OrderIDs without a task would only be listed as 0 of 0.
		fmt.Fprintf(out, "-orders %d is more than -tasks %d: using %d OrderIDs, one task each\n", orders, tasks, tasks)
		orders = tasks
	}
	url := os.Getenv("REDIS_URL")
	if url == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		url = "redis://" + mr.Addr()
		fmt.Fprintln(out, "REDIS_URL is not set: using an embedded miniredis")
	} else {
		fmt.Fprintln(out, "using", queue.RedactURL(url)) // never its password
	}

	q, err := queue.Dial(ctx, []string{url}, queue.Config{Prefix: prefix})
	if err != nil {
		return err
	}
	defer q.Close()

	// Each payload carries this run's number and the task's position in its
	// OrderID, so that the check below can tell the order tasks ran in (and
	// ignore tasks an earlier, interrupted run left behind).
	runID := rand.Uint64()
	batch := make([]queue.Task, tasks)
	for i := range batch {
		orderID := uint64(1000 + i%orders)
		payload := binary.BigEndian.AppendUint64(nil, runID)
		payload = binary.BigEndian.AppendUint64(payload, uint64(i/orders))
		batch[i] = queue.Task{OrderID: orderID, Payload: payload}
	}
	start := time.Now()
	if _, err := q.AddTasks(ctx, batch); err != nil {
		return err
	}
	fmt.Fprintf(out, "added %s over %s in %v\n", plural(tasks, "task"), plural(orders, "OrderID"), time.Since(start).Round(time.Microsecond))

	var (
		mu       sync.Mutex
		seen     = map[uint64][]uint64{} // OrderID -> positions, in the order they ran
		running  = map[uint64]bool{}
		overlaps int
		earlier  int
	)
	analyse := func(ctx context.Context, t queue.Task) error {
		if len(t.Payload) != 16 || binary.BigEndian.Uint64(t.Payload) != runID {
			mu.Lock()
			earlier++
			mu.Unlock()
			return nil // left by an earlier run: acknowledge it
		}
		mu.Lock()
		if running[t.OrderID] {
			overlaps++
		}
		running[t.OrderID] = true
		seen[t.OrderID] = append(seen[t.OrderID], binary.BigEndian.Uint64(t.Payload[8:]))
		mu.Unlock()

		// Pretend to work; a real analyser would write to a database here.
		select {
		case <-time.After(rand.N(work + 1)):
		case <-ctx.Done():
			return ctx.Err()
		}

		mu.Lock()
		running[t.OrderID] = false
		mu.Unlock()
		return nil
	}

	var counters queue.Counters
	cfg := queue.PoolConfig{Workers: workers, Counters: &counters, ExitOnEmpty: true}
	start = time.Now()
	// One server and one queue: analyser 0 serves every OrderID.
	if err := q.AnalysePool(ctx, 0, cfg, analyse); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errors.New("interrupted; the tasks not analysed stay in Redis for the next run")
	}
	fmt.Fprintf(out, "analysed in %v\n", time.Since(start).Round(time.Microsecond))

	var reordered, missing int
	for o := 0; o < orders; o++ {
		orderID := uint64(1000 + o)
		want := uint64(tasks / orders)
		if o < tasks%orders {
			want++
		}
		got := seen[orderID]
		// In order: each task's position no lower than the one before
		// (a task run again right after itself, at least once, is in
		// order); missing: positions never seen.
		inOrder, ran := true, map[uint64]bool{}
		for i, pos := range got {
			if i > 0 && pos < got[i-1] {
				inOrder = false
			}
			ran[pos] = true
		}
		verdict := "in order"
		if !inOrder {
			verdict = "NOT IN ORDER"
			reordered++
		}
		if lost := int(want) - len(ran); lost > 0 {
			verdict += fmt.Sprintf(", %d MISSING", lost)
			missing += lost
		}
		fmt.Fprintf(out, "order %d: %d of %s ran, %s\n", orderID, len(got), plural(int(want), "task"), verdict)
	}
	for w, n := range counters.Processed() {
		fmt.Fprintf(out, "worker %d: %s\n", w, plural(int(n), "task"))
	}
	if earlier > 0 {
		fmt.Fprintf(out, "also acknowledged %s left by an earlier run\n", plural(earlier, "task"))
	}
	if overlaps > 0 || reordered > 0 || missing > 0 {
		msg := fmt.Sprintf("order check failed: %d overlapping runs of one OrderID, %d OrderIDs out of order, %s missing", overlaps, reordered, plural(missing, "task"))
		if missing > 0 {
			msg += " (tasks added are lost only with Redis's data: did it restart without persistence?)"
		}
		return errors.New(msg)
	}
	return nil
}

// plural says n of a thing in words: "1 task", "2 tasks".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
