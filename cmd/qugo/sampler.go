package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qugo/queue"
)

// The overview's rate charts come from a ring of Stats samples that the
// server's sampler goroutine takes every -sample (5s), over the last
// -window (10m); pages read the ring and never wait for a sample.
//
// The processing rate of a queue is the growth of its processed counter
// (tasks acknowledged) between two samples, divided by the time between
// them. The adding rate is the growth of what the queue has accounted
// for: ready + scheduled + pending + dead + processed + cancelled. Every
// move inside a queue keeps that sum (a claim, a retry, a dead letter, a
// replay, a scheduled task falling due, a cancel), so it grows by the
// tasks added (AddTask, AddTasks, AddTaskAt) and by nothing else. Two
// moves change it without an add: a purge of dead tasks lowers it, and
// counters deleted by hand reset it; such a drop shows as a rate of 0,
// never a negative one. Stats reads a server's queues in one pipeline,
// not one snapshot, so a rate over one interval can be off by the tasks
// that moved while it was read; the next interval makes up for it.

// sample is one Stats reading, reduced to what the charts need.
type sample struct {
	at        time.Time
	processed []int64 // per analyser
	accounted []int64 // per analyser: ready+scheduled+pending+dead+processed+cancelled
}

func newSample(at time.Time, stats []queue.AnalyserStats) sample {
	s := sample{at: at, processed: make([]int64, len(stats)), accounted: make([]int64, len(stats))}
	for i, a := range stats {
		s.processed[i] = a.Processed
		s.accounted[i] = a.Ready + a.Scheduled + a.Pending + a.Dead + a.Processed + a.Cancelled
	}
	return s
}

// history is a ring of samples, safe for concurrent use.
type history struct {
	mu   sync.Mutex
	buf  []sample
	next int  // where the next sample goes
	full bool // buf has wrapped
}

func newHistory(n int) *history { return &history{buf: make([]sample, max(n, 2))} }

func (h *history) add(s sample) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf[h.next] = s
	h.next = (h.next + 1) % len(h.buf)
	h.full = h.full || h.next == 0
}

// samples returns the samples held, oldest first. Samples are never
// changed once added, so the copy shares their slices.
func (h *history) samples() []sample {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.full {
		return append([]sample(nil), h.buf[:h.next]...)
	}
	return append(append([]sample(nil), h.buf[h.next:]...), h.buf[:h.next]...)
}

// ratePoint is the rates over the interval that ends at at.
type ratePoint struct {
	at        time.Time
	processed float64 // tasks per second
	added     float64 // tasks per second
}

// rates returns the rates between consecutive samples for the analysers
// in which (all of them when nil), summed.
func rates(samples []sample, which []int) []ratePoint {
	var out []ratePoint
	for i := 1; i < len(samples); i++ {
		prev, cur := samples[i-1], samples[i]
		dt := cur.at.Sub(prev.at).Seconds()
		if dt <= 0 || len(prev.processed) != len(cur.processed) {
			continue
		}
		var dp, da int64
		add := func(a int) {
			dp += max(cur.processed[a]-prev.processed[a], 0)
			da += max(cur.accounted[a]-prev.accounted[a], 0)
		}
		if which == nil {
			for a := range cur.processed {
				add(a)
			}
		} else {
			for _, a := range which {
				if a < len(cur.processed) {
					add(a)
				}
			}
		}
		out = append(out, ratePoint{at: cur.at, processed: float64(dp) / dt, added: float64(da) / dt})
	}
	return out
}

// Size of a sparkline, in SVG user units (the stylesheet scales it).
const (
	sparkW = 120
	sparkH = 24
)

// spark is one sparkline: an SVG polyline and the figures beside it.
type spark struct {
	Points string  // the polyline's points; "" while fewer than two rates are known
	Last   float64 // the latest rate
	Max    float64 // the highest rate in the window
}

// sparkOf draws the rates val picks from pts, placed by time over the
// window that ends at now, scaled to their maximum.
func sparkOf(pts []ratePoint, val func(ratePoint) float64, now time.Time, window time.Duration) spark {
	var s spark
	for _, p := range pts {
		s.Max = max(s.Max, val(p))
	}
	if len(pts) == 0 {
		return s
	}
	s.Last = val(pts[len(pts)-1])
	if len(pts) < 2 {
		return s
	}
	var b strings.Builder
	for i, p := range pts {
		x := sparkW * (1 - now.Sub(p.at).Seconds()/window.Seconds())
		x = min(max(x, 0), sparkW)
		y := float64(sparkH - 1)
		if s.Max > 0 {
			y -= (sparkH - 2) * val(p) / s.Max
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.FormatFloat(x, 'f', 1, 64))
		b.WriteByte(',')
		b.WriteString(strconv.FormatFloat(y, 'f', 1, 64))
	}
	s.Points = b.String()
	return s
}

func processedOf(p ratePoint) float64 { return p.processed }
func addedOf(p ratePoint) float64     { return p.added }

// sampleLoop takes a sample at once and then every -sample until ctx
// ends.
func (s *server) sampleLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.sample)
	defer t.Stop()
	for {
		s.sampleOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sampleOnce reads Stats into the history, and while the prefix looks
// unused, looks again. It logs a failure when the previous sample
// succeeded, and the recovery, not every failure.
func (s *server) sampleOnce(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, s.cfg.timeout)
	defer cancel()
	err := s.be.recheck(ctx)
	var q *queue.Queue
	if err == nil {
		q, err = s.be.get(ctx)
	}
	var stats []queue.AnalyserStats
	if err == nil {
		stats, err = q.Stats(ctx)
	}
	if err == nil {
		s.hist.add(newSample(time.Now(), stats))
		if !s.be.used.Load() {
			_, err = s.be.prefixUsed(ctx)
		}
	}
	if parent.Err() != nil {
		return err // shutting down: nothing to report
	}
	failing := err != nil
	if was := s.sampleFailing.Swap(failing); was != failing {
		if failing {
			s.cfg.log.Warn("statistics sample failed; retrying every -sample", "err", err)
		} else {
			s.cfg.log.Info("statistics sample succeeded again")
		}
	}
	return err
}
