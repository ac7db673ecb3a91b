package main

import (
	"net/http"
	"time"

	"github.com/qugo/queue"
)

// overviewData is the Overview page: every queue, totals per server and
// in all, with their rate charts.
type overviewData struct {
	Rows    []overviewRow
	Servers []totalRow // one per partition
	Total   totalRow
	Window  time.Duration // what the charts span
	Sample  time.Duration // the time between two of their points
}

// overviewRow is one analyser's queue.
type overviewRow struct {
	queue.AnalyserStats
	LeaseAge   time.Duration // since the lease was taken (or re-fenced); 0 when unknown
	Processing spark
	Adding     spark
}

// totalRow sums the queues of one server, or of all.
type totalRow struct {
	Partition                                                     int    // -1 for all servers
	Server                                                        string // its URL, without a password
	Queues                                                        int
	Ready, Scheduled, Pending, Dead, Processed, Failed, Cancelled int64
	Paused                                                        int // queues paused
	Owned                                                         int // queues with a lease holder
	Workers                                                       int
	Processing                                                    spark
	Adding                                                        spark
}

func (s *server) overview(w http.ResponseWriter, r *http.Request) {
	v := s.newView(r, "Overview", "overview")
	v.refreshing(r)
	ctx, cancel := s.redisContext(r)
	defer cancel()
	status := http.StatusOK
	var data overviewData
	q, err := s.be.get(ctx)
	var stats []queue.AnalyserStats
	if err == nil {
		stats, err = q.Stats(ctx)
	}
	if err != nil {
		status = s.failure(v, err)
	} else {
		data = s.overviewOf(stats, v.Servers, time.Now())
	}
	s.render(w, r, status, "overview", v, data)
}

// overviewOf builds the page from a Stats reading and the history.
func (s *server) overviewOf(stats []queue.AnalyserStats, servers []string, now time.Time) overviewData {
	samples := s.hist.samples()
	d := overviewData{Window: s.cfg.window, Sample: s.cfg.sample, Rows: make([]overviewRow, len(stats))}
	chart := func(which []int) (spark, spark) {
		pts := rates(samples, which)
		return sparkOf(pts, processedOf, now, s.cfg.window), sparkOf(pts, addedOf, now, s.cfg.window)
	}
	parts := len(servers)
	d.Servers = make([]totalRow, parts)
	byPart := make([][]int, parts)
	for p := range d.Servers {
		d.Servers[p] = totalRow{Partition: p, Server: servers[p]}
	}
	d.Total = totalRow{Partition: -1}
	for i, st := range stats {
		row := overviewRow{AnalyserStats: st}
		if st.Owner != "" && st.Token > 0 {
			if held := now.Sub(time.UnixMicro(st.Token)); held > 0 {
				row.LeaseAge = held
			}
		}
		row.Processing, row.Adding = chart([]int{st.Analyser})
		d.Rows[i] = row
		if st.Partition < parts {
			d.Servers[st.Partition].add(st)
			byPart[st.Partition] = append(byPart[st.Partition], st.Analyser)
		}
		d.Total.add(st)
	}
	for p := range d.Servers {
		d.Servers[p].Processing, d.Servers[p].Adding = chart(byPart[p])
	}
	d.Total.Processing, d.Total.Adding = chart(nil)
	return d
}

func (t *totalRow) add(st queue.AnalyserStats) {
	t.Queues++
	t.Ready += st.Ready
	t.Scheduled += st.Scheduled
	t.Pending += st.Pending
	t.Dead += st.Dead
	t.Processed += st.Processed
	t.Failed += st.Failed
	t.Cancelled += st.Cancelled
	t.Workers += st.Workers
	if st.Paused {
		t.Paused++
	}
	if st.Owner != "" {
		t.Owned++
	}
}
