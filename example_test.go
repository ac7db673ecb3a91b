package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"

	"github.com/qugo/queue"
)

// newPool returns a redigo pool for one Redis server. Any pool works: the
// queue only borrows connections from it.
func newPool(addr string) *redis.Pool {
	return &redis.Pool{
		MaxIdle: 16,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialContext(ctx, "tcp", addr)
		},
	}
}

// This is the quick start of the README, run against an embedded miniredis:
// a producer adds tasks, and an analyser pool drains them and returns.
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	url := "redis://" + mr.Addr() // e.g. "redis://127.0.0.1:6379"

	// Ctrl-C or SIGTERM (systemd, Docker, Kubernetes) ends ctx: the pool
	// then stops gracefully (unstarted tasks go back to Redis in order,
	// running ones finish).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	q, err := queue.Dial(ctx, []string{url}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	// Producer: tasks of one OrderID are analysed in this order.
	for i := 1; i <= 3; i++ {
		if _, err := q.AddTask(ctx, 42, fmt.Appendf(nil, "event %d", i)); err != nil {
			log.Fatal(err)
		}
	}

	// Analyser 0 (the only one with one server and one queue). ExitOnEmpty
	// returns once the queue is drained; without it the pool runs until
	// ctx ends.
	err = q.AnalysePool(ctx, 0, queue.PoolConfig{Workers: 4, ExitOnEmpty: true},
		func(ctx context.Context, t queue.Task) error {
			fmt.Printf("order %d: %s\n", t.OrderID, t.Payload)
			return nil // nil acknowledges the task; an error retries it
		})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// order 42: event 1
	// order 42: event 2
	// order 42: event 3
}

// New takes one redigo pool per Redis server ("partition"), in partition
// order; the caller keeps and closes the pools. AddTask returns the new
// task's ID once the task is stored in Redis.
func ExampleNew() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()

	q, err := queue.New([]*redis.Pool{pool}, queue.Config{Prefix: "shop", Queues: 2})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	id, err := q.AddTask(ctx, 7, []byte(`{"sku":"A-100","qty":2}`))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("task id length:", len(id))

	stats, err := q.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range stats {
		fmt.Printf("analyser %d (partition %d, queue %d): %d ready\n", s.Analyser, s.Partition, s.Queue, s.Ready)
	}
	// Output:
	// task id length: 20
	// analyser 0 (partition 0, queue 0): 0 ready
	// analyser 1 (partition 0, queue 1): 1 ready
}

// AddTasks enqueues a batch with one pipelined round trip per partition.
func ExampleQueue_AddTasks() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	batch := []queue.Task{
		{OrderID: 1, Payload: []byte("created")},
		{OrderID: 2, Payload: []byte("created")},
		{OrderID: 1, Payload: []byte("paid")},
	}
	ids, err := q.AddTasks(ctx, batch)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ids:", len(ids))
	stats, err := q.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready:", stats[0].Ready)
	// Output:
	// ids: 3
	// ready: 3
}

// AnalysePool runs one analyser's queue on several workers. All tasks of
// one OrderID run on one worker, one at a time, in the order they were
// added; other OrderIDs run in parallel. Counters counts each worker's
// tasks.
func ExampleQueue_AnalysePool() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	var batch []queue.Task
	for step := 1; step <= 4; step++ {
		for order := uint64(1); order <= 3; order++ {
			batch = append(batch, queue.Task{OrderID: order, Payload: fmt.Appendf(nil, "step %d", step)})
		}
	}
	if _, err := q.AddTasks(ctx, batch); err != nil {
		log.Fatal(err)
	}

	var (
		mu   sync.Mutex
		seen = map[uint64][]string{}
	)
	var counters queue.Counters
	cfg := queue.PoolConfig{
		Workers:     4,
		TaskTimeout: 10 * time.Second,
		Counters:    &counters,
		ExitOnEmpty: true, // return once drained; omit to run until ctx ends
	}
	err = q.AnalysePool(ctx, 0, cfg, func(ctx context.Context, t queue.Task) error {
		mu.Lock()
		defer mu.Unlock()
		seen[t.OrderID] = append(seen[t.OrderID], string(t.Payload))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	for order := uint64(1); order <= 3; order++ {
		fmt.Printf("order %d: %q\n", order, seen[order])
	}
	var total int64
	for _, n := range counters.Processed() {
		total += n
	}
	fmt.Println("processed by all workers:", total)
	// Output:
	// order 1: ["step 1" "step 2" "step 3" "step 4"]
	// order 2: ["step 1" "step 2" "step 3" "step 4"]
	// order 3: ["step 1" "step 2" "step 3" "step 4"]
	// processed by all workers: 12
}

// String keys are hashed to an OrderID with KeyID, a frozen FNV-1a hash.
// Route and AnalyserOf tell where a key's tasks go: with R = 2 servers and
// Q = 3 queues each there are 6 analysers.
func ExampleKeyID() {
	servers := make([]*miniredis.Miniredis, 2)
	pools := make([]*redis.Pool, 2)
	for i := range servers {
		mr, err := miniredis.Run()
		if err != nil {
			log.Fatal(err)
		}
		defer mr.Close()
		servers[i], pools[i] = mr, newPool(mr.Addr())
		defer pools[i].Close()
	}
	q, err := queue.New(pools, queue.Config{Queues: 3})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	for _, key := range []string{"warehouse-17/order-981", "customer:alice"} {
		id := queue.KeyID(key)
		partition, qi := q.Route(id)
		fmt.Printf("%s -> OrderID %d, partition %d, queue %d, analyser %d\n",
			key, id, partition, qi, q.AnalyserOf(id))
		if _, err := q.AddTask(ctx, id, []byte("hello")); err != nil {
			log.Fatal(err)
		}
	}

	stats, err := q.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range stats {
		if s.Ready > 0 {
			fmt.Printf("analyser %d has %d ready\n", s.Analyser, s.Ready)
		}
	}
	// Output:
	// warehouse-17/order-981 -> OrderID 9560661952465679985, partition 1, queue 1, analyser 3
	// customer:alice -> OrderID 10753388885065749475, partition 1, queue 0, analyser 1
	// analyser 1 has 1 ready
	// analyser 3 has 1 ready
}

// A Consumer is the low-level API that AnalysePool is built on. Here one
// claims two tasks and "crashes" without finishing them: they stay in the
// pending record in Redis. When its lease lapses, the next owner puts them
// back first, in claim order, so they run before the later tasks of their
// OrderID, with their interrupted delivery counted in Attempt.
func ExampleQueue_Consume() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	for _, p := range []string{"a", "b", "c", "d"} {
		if _, err := q.AddTask(ctx, 9, []byte(p)); err != nil {
			log.Fatal(err)
		}
	}

	const leaseTTL = 200 * time.Millisecond
	c, err := q.Consume(ctx, 0, queue.ConsumerConfig{LeaseTTL: leaseTTL})
	if err != nil {
		log.Fatal(err)
	}
	claimed, err := c.Claim(ctx, 2)
	if err != nil {
		log.Fatal(err)
	}
	for _, t := range claimed {
		fmt.Printf("claimed %s, attempt %d\n", t.Payload, t.Attempt)
	}
	pending, err := q.Pending(ctx, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("pending after the crash:", len(pending))

	// The consumer is gone without Ack or Release. A real server expires
	// the lease after LeaseTTL; miniredis's clock moves only when told to.
	// Nothing recorded that a and b started, so their interrupted delivery
	// is not counted: the next owner records theirs before they start, so
	// that a task that keeps crashing its owner is counted from its second
	// crash on.
	mr.FastForward(leaseTTL)

	err = q.AnalysePool(ctx, 0, queue.PoolConfig{ExitOnEmpty: true},
		func(ctx context.Context, t queue.Task) error {
			fmt.Printf("analysed %s, attempt %d\n", t.Payload, t.Attempt)
			return nil
		})
	if err != nil {
		log.Fatal(err)
	}

	// The old consumer's lease is gone: Redis refuses its late ack.
	_, err = c.Ack(ctx, claimed[0].ID)
	fmt.Println("late ack refused:", errors.Is(err, queue.ErrLeaseLost))

	stats, err := q.Stats(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("processed %d, redelivered %d, pending %d\n", stats[0].Processed, stats[0].Redelivered, stats[0].Pending)
	// Output:
	// claimed a, attempt 1
	// claimed b, attempt 1
	// pending after the crash: 2
	// analysed a, attempt 1
	// analysed b, attempt 1
	// analysed c, attempt 1
	// analysed d, attempt 1
	// late ack refused: true
	// processed 4, redelivered 2, pending 0
}

// RemoveTask takes the next task of the queue a Consumer holds, into the
// pending record, and returns ErrNoTask when there is none; Wait waits
// for one without polling. A caller that drives consumption itself
// finishes each task with Ack, or Fail to retry it in place, in the order
// RemoveTask handed them out.
func ExampleConsumer_RemoveTask() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	for _, p := range []string{"ok", "flaky", "ok again"} {
		if _, err := q.AddTask(ctx, 7, []byte(p)); err != nil {
			log.Fatal(err)
		}
	}
	c, err := q.Consume(ctx, 0, queue.ConsumerConfig{}) // waits for analyser 0's lease
	if err != nil {
		log.Fatal(err)
	}
	defer c.Release(ctx)
	for {
		t, err := c.RemoveTask(ctx)
		if errors.Is(err, queue.ErrNoTask) {
			if ready, err := c.Wait(ctx, 100*time.Millisecond); err != nil || !ready {
				break // a real consumer waits again, until its ctx ends
			}
			continue
		}
		if err != nil {
			// ErrLeaseLost: another owner has the queue. Any other error
			// (Redis failed) may be retried: the next Claim settles it.
			log.Fatal(err)
		}
		if string(t.Payload) == "flaky" && t.Attempt == 1 {
			fmt.Printf("%s failed, attempt %d\n", t.Payload, t.Attempt)
			if _, err := c.Fail(ctx, t, errors.New("try again")); err != nil {
				log.Fatal(err)
			}
			t.Attempt++ // retried in place: no later task of its OrderID runs first
		}
		fmt.Printf("%s done, attempt %d\n", t.Payload, t.Attempt)
		if _, err := c.Ack(ctx, t.ID); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// ok done, attempt 1
	// flaky failed, attempt 1
	// flaky done, attempt 2
	// ok again done, attempt 1
}

// A task whose analyse function keeps failing moves to the dead-letter
// store after MaxAttempts deliveries, and its OrderID goes on. Dead tasks
// can be listed, replayed (as new work) and purged.
func ExampleQueue_Dead() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	pool := newPool(mr.Addr())
	defer pool.Close()
	q, err := queue.New([]*redis.Pool{pool}, queue.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	ctx := context.Background()
	for _, p := range []string{"ok-1", "bad", "ok-2"} {
		if _, err := q.AddTask(ctx, 5, []byte(p)); err != nil {
			log.Fatal(err)
		}
	}
	var (
		mu  sync.Mutex
		ran []string
	)
	cfg := queue.PoolConfig{
		MaxAttempts: 3,
		Backoff:     func(attempt int) time.Duration { return time.Millisecond },
		OnError:     func(error) {}, // failed deliveries are reported here
		ExitOnEmpty: true,
	}
	analyse := func(ctx context.Context, t queue.Task) error {
		mu.Lock()
		ran = append(ran, fmt.Sprintf("%s#%d", t.Payload, t.Attempt))
		mu.Unlock()
		if string(t.Payload) == "bad" {
			return errors.New("cannot parse")
		}
		return nil
	}
	if err := q.AnalysePool(ctx, 0, cfg, analyse); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ran:", ran)

	dead, err := q.Dead(ctx, 0)
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range dead {
		fmt.Printf("dead: %s after %d attempts: %s\n", d.Payload, d.Attempts, d.LastError)
	}

	n, err := q.Replay(ctx, 0, dead[0].ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("replayed:", n)
	ran = nil
	cfg.MaxAttempts = 1
	if err := q.AnalysePool(ctx, 0, cfg, analyse); err != nil {
		log.Fatal(err)
	}
	fmt.Println("ran:", ran)
	n, err = q.Purge(ctx, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("purged:", n)
	// Output:
	// ran: [ok-1#1 bad#1 bad#2 bad#3 ok-2#1]
	// dead: bad after 3 attempts: cannot parse
	// replayed: 1
	// ran: [bad#1]
	// purged: 1
}

// Two members of a consumer group share a queue's four analysers: each
// runs a pool on the two it is given, and when one leaves, the other
// takes its two over, with their tasks, in order.
func ExampleQueue_JoinGroup() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	ctx := context.Background()
	q, err := queue.Dial(ctx, []string{"redis://" + mr.Addr()}, queue.Config{Queues: 4})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	var mu sync.Mutex
	ran := map[string]int{} // tasks run, by member
	join := func(member string) (leave func()) {
		ctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- q.JoinGroup(ctx, "billing", queue.GroupConfig{Member: member},
				func(ctx context.Context, t queue.Task) error {
					mu.Lock()
					ran[member]++
					mu.Unlock()
					return nil
				})
		}()
		return func() {
			cancel() // leaves the group, stops its pools gracefully
			if err := <-done; err != nil {
				log.Fatal(err)
			}
		}
	}
	waitFor := func(members int) queue.GroupStatus {
		for {
			st, err := q.GroupStatus(ctx, "billing")
			if err != nil {
				log.Fatal(err)
			}
			if len(st.Members) == members && len(st.Unassigned) == 0 {
				return st
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	leaveA := join("a")
	waitFor(1) // a has all four
	leaveB := join("b")
	for _, m := range waitFor(2).Members {
		fmt.Println(m.Name, "has analysers", m.Analysers)
	}
	leaveA()
	for _, m := range waitFor(1).Members {
		fmt.Println(m.Name, "has analysers", m.Analysers)
	}
	for order := uint64(0); order < 8; order++ {
		if _, err := q.AddTask(ctx, order, []byte("x")); err != nil {
			log.Fatal(err)
		}
	}
	for {
		mu.Lock()
		n := ran["b"]
		mu.Unlock()
		if n == 8 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	leaveB()
	fmt.Println("b ran", ran["b"], "tasks")
	// Output:
	// a has analysers [0 1]
	// b has analysers [2 3]
	// b has analysers [0 1 2 3]
	// b ran 8 tasks
}
