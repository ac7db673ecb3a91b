package queue

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkDispatch is the fetcher's hand-over of one claim to its
// workers under DispatchByOrder: 2,900 tasks of 1,000 OrderIDs to 64
// workers' sets, whose lines are emptied between claims (not timed).
func BenchmarkDispatch(b *testing.B) {
	const workers, orders, claim = 64, 1000, 2900
	s := &session{cfg: PoolConfig{MaxWorkers: workers, Prefetch: 4096}, n: workers}
	for i := range workers {
		s.workers = append(s.workers, &worker{s: s, index: i, set: newLineSet(s, false)})
	}
	tasks := make([]claimed, claim)
	for i := range tasks {
		tasks[i] = claimed{Task: Task{ID: "01234567890123456789", OrderID: uint64(i % orders), Payload: benchPayload}, seq: int64(i + 1)}
	}
	empty := func() {
		for _, w := range s.workers {
			ls := w.set
			for _, o := range ls.orders {
				clear(o.tasks)
				o.tasks, o.head, o.state = o.tasks[:0], 0, lineIdle
			}
			clear(ls.runnable)
			ls.runnable, ls.runHead = ls.runnable[:0], 0
		}
		s.lines.Store(0)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.dispatch(tasks)
		b.StopTimer()
		empty()
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*claim), "ns/task")
}

// BenchmarkClaimRead is the fetcher's read of one claim in place of 2,900
// tasks of 64-byte payloads, made into claimed tasks: the entries' reply
// taken off the stream as from a connection made by Dial, into the
// chunks of a 64-worker pool's (chunk=1024) or the largest (8192), or
// read through redigo (chunk=redigo), as from a pool a caller made.
func BenchmarkClaimRead(b *testing.B) {
	const claim = 2900
	var reply bytes.Buffer
	fmt.Fprintf(&reply, "*%d\r\n", claim)
	for i := range claim {
		e := encodeEntry(Task{ID: fmt.Sprintf("%020d", i), OrderID: uint64(i % 1000), AddedAt: time.UnixMilli(1e12), Payload: benchPayload}, 0, 0)
		fmt.Fprintf(&reply, "$%d\r\n%s\r\n", len(e), e)
	}
	stream := reply.Bytes()
	cfg, err := PoolConfig{Workers: 64}.withDefaults()
	if err != nil {
		b.Fatal(err)
	}
	for _, chunk := range []int{heldChunk(cfg), tapChunk, -1} {
		name := fmt.Sprintf("chunk=%d", chunk)
		if chunk < 0 {
			name = "chunk=redigo"
		}
		b.Run(name, func(b *testing.B) {
			st := &store{analysers: 1, tapChunk: chunk}
			var dst []claimed
			b.ReportAllocs()
			for b.Loop() {
				c, tcp := tapStream(stream, readBuffer, false)
				var tap *replyTap
				if chunk >= 0 {
					tap = (&tapHolder{conn: tcp}).arm(0, st.tapChunk, st.entryList())
				}
				entries, err := tap.entriesOf(c.Receive())
				if err != nil {
					b.Fatal(err)
				}
				if dst, _, err = st.takeClaimed(context.Background(), entries, 0, true, nil, dst, nil); err != nil || len(dst) != claim {
					b.Fatal(err, len(dst))
				}
				st.doneWith(entries)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*claim), "ns/task")
		})
	}
}
