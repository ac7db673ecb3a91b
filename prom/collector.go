// Package prom exports the state of a [queue.Queue] as Prometheus metrics.
//
// It lives in its own module so that the queue module depends on redigo
// only. A [Collector] reads every analyser's queue at scrape time and keeps
// a handler latency histogram that analyser pools feed through
// [queue.PoolConfig.OnDone]:
//
//	c := prom.NewCollector(q, prom.Options{})
//	prometheus.MustRegister(c)
//	err := q.AnalysePool(ctx, a, queue.PoolConfig{OnDone: c.OnDone(a)}, fn)
//
// # Metrics
//
// Per analyser, labelled analyser, partition and queue (read at scrape
// time from [queue.Queue.Stats]):
//
//	qugo_queue_ready                        gauge    tasks waiting to be claimed (queue depth)
//	qugo_queue_scheduled                    gauge    tasks waiting for their due time (AddTaskAt)
//	qugo_queue_paused                       gauge    1 while the queue is paused (Queue.Pause), else 0
//	qugo_queue_pending                      gauge    tasks claimed and not finished
//	qugo_queue_dead                         gauge    tasks in the dead-letter store
//	qugo_queue_oldest_pending_age_seconds   gauge    age (since enqueue) of the oldest pending task; 0 when none
//	qugo_queue_lease_held                   gauge    1 when a process (with Options.Owner: this one) holds the lease
//	qugo_queue_workers                      gauge    worker goroutines of the lease holder's pool (elastic pools resize); 0 when none
//	qugo_queue_processed_total              counter  tasks acknowledged
//	qugo_queue_failed_total                 counter  tasks moved to the dead-letter store
//	qugo_queue_redelivered_total            counter  pending tasks put back by a new owner
//	qugo_queue_cancelled_total              counter  tasks cancelled (Queue.Cancel)
//	qugo_queue_lease_acquisitions_total     counter  leases taken: starts, takeovers and returns after a lost lease
//
// # Several processes
//
// Every process reads the same Redis, so without Options.Owner every
// collector exports every queue's series, and a sum over processes counts
// each queue once per process. Set Options.Owner to the PoolConfig.Owner
// of the process's pools: its collector then exports a queue's series only
// while that owner holds the queue's lease, so sums are right, and its
// qugo_queue_lease_held is 1 only for the leases it holds, so that
// sum by (analyser) (qugo_queue_lease_held) counts each queue's owners:
// 0 is a queue no process serves. See README.md for PromQL and alerts.
//
// Per analyser and outcome (ok or error), fed by the hooks of OnDone, or
// by Observe for a pool config that serves several analysers (a consumer
// group member's):
//
//	qugo_handler_duration_seconds           histogram  time an AnalyseFunc took, buckets from 1ms
//
// Per consumer group named in Options.Groups (read at scrape time from
// [queue.Queue.GroupStatus]), labelled group, and per live member,
// labelled group and member:
//
//	qugo_group_members                      gauge  live members
//	qugo_group_generation                   gauge  the assignment's generation: Redis's clock in ms at its last change
//	qugo_group_unassigned                   gauge  analysers no live member is given
//	qugo_group_member_analysers             gauge  analysers assigned to the member
//	qugo_group_member_leases_held           gauge  analysers whose lease the member holds (owner = member name)
//	qugo_group_member_heartbeat_age_seconds gauge  time since the member's last heartbeat
//	qugo_group_member_session_left_seconds  gauge  time until its session ends without another heartbeat
//
// A member's series go when it leaves the group or its session runs out.
// Every process that names a group exports the same series for it; use
// max by (group) or max by (group, member) across processes, or name the
// groups in one process only.
//
// And qugo_up, 1 when the last scrape read every partition (and every
// group), else 0.
//
// # Cost
//
// A scrape costs one pipelined round trip per partition with seven
// constant-time commands per queue, plus, for each queue that has pending
// tasks, one HGETALL of its pending hash (bounded by the pool's
// MaxHeldTasks and MaxHeldBytes)
// to find the oldest. Options.SkipOldestPending drops the latter. Each
// group of Options.Groups adds one pipelined round trip to partition 0.
package prom

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qugo/queue"
)

// Options holds the settings of a Collector. The zero value works.
type Options struct {
	// Namespace starts every metric name. If empty, "qugo" is used.
	Namespace string
	// ConstLabels are added to every metric, e.g. to tell two queues with
	// different prefixes apart in one registry: give every collector of
	// the registry the same label names, each with values of its own (a
	// registry refuses a metric name with two sets of label names, and
	// two collectors with the same labels). If nil, none are added.
	ConstLabels prometheus.Labels
	// Timeout bounds the Redis reads of one scrape. If zero, 5s is used.
	Timeout time.Duration
	// Buckets are the handler latency histogram's upper bounds, in seconds.
	// If nil, 1ms doubling up to about 33s (16 buckets) is used.
	Buckets []float64
	// Owner is the lease owner name of this process's pools
	// (PoolConfig.Owner). When set, the per-queue series are exported only
	// for the queues whose lease Owner holds, and lease_held is 1 only for
	// those, so that sums over every process are right. If empty, every
	// queue's series are exported and lease_held says whether anyone holds
	// the lease: right for a single exporter.
	Owner string
	// Groups names the consumer groups (Queue.JoinGroup) whose members and
	// assignment are exported; a name given twice counts once. A name
	// JoinGroup would refuse is logged at every scrape and exports nothing.
	// If nil, no group is exported.
	Groups []string
	// SkipOldestPending leaves out the oldest pending age, saving one
	// round trip per queue with pending tasks. If false, it is read.
	SkipOldestPending bool
	// Logger receives scrape errors. If nil, slog.Default() is used.
	Logger *slog.Logger
	// Now returns the current time, for the oldest pending age.
	// If nil, time.Now is used.
	Now func() time.Time
}

// DefaultBuckets are the handler latency buckets used when Options.Buckets
// is nil: 1ms, 2ms, 4ms, ... up to about 33s.
var DefaultBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

// Collector is a prometheus.Collector over a *queue.Queue. It is safe for
// concurrent use; register it once per queue.
type Collector struct {
	q    *queue.Queue
	opts Options

	up                                            *prometheus.Desc
	ready, pending, dead, oldest, leased, workers *prometheus.Desc
	scheduled, paused                             *prometheus.Desc
	processed, failed, redelivered, cancelled     *prometheus.Desc
	acquired                                      *prometheus.Desc
	groups                                        groupDescs
	latency                                       *prometheus.HistogramVec
}

// queueLabels are the variable labels of the per-analyser metrics.
var queueLabels = []string{"analyser", "partition", "queue"}

// NewCollector returns a Collector over q. It makes no Redis call; every
// scrape reads Redis afresh.
func NewCollector(q *queue.Queue, opts Options) *Collector {
	if opts.Namespace == "" {
		opts.Namespace = "qugo"
	}
	if opts.Timeout == 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Buckets == nil {
		opts.Buckets = DefaultBuckets
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	opts.Groups = uniqueGroups(opts.Groups)
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, "queue", name), help, queueLabels, opts.ConstLabels)
	}
	return &Collector{
		q:    q,
		opts: opts,
		up: prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, "", "up"),
			"1 when the last scrape read every Redis partition, else 0.", nil, opts.ConstLabels),
		ready:       desc("ready", "Tasks waiting to be claimed (queue depth)."),
		scheduled:   desc("scheduled", "Tasks waiting for their due time, not yet in the ready list."),
		paused:      desc("paused", "1 while the queue is paused: its pool claims nothing new; else 0."),
		pending:     desc("pending", "Tasks claimed and not finished."),
		dead:        desc("dead", "Tasks in the dead-letter store."),
		oldest:      desc("oldest_pending_age_seconds", "Age since enqueue of the oldest pending task; 0 when none is pending."),
		leased:      desc("lease_held", "1 when a process holds the queue's lease, else 0."),
		workers:     desc("workers", "Worker goroutines of the pool holding the queue's lease (an elastic pool resizes); 0 when none does."),
		processed:   desc("processed_total", "Tasks acknowledged."),
		failed:      desc("failed_total", "Tasks moved to the dead-letter store."),
		redelivered: desc("redelivered_total", "Pending tasks put back by a new owner after a crash or a lost lease."),
		cancelled:   desc("cancelled_total", "Tasks cancelled."),
		acquired:    desc("lease_acquisitions_total", "Leases of the queue taken so far: each start, takeover and return after a lost lease adds one."),
		groups:      newGroupDescs(opts),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace:   opts.Namespace,
			Name:        "handler_duration_seconds",
			Help:        "Time an AnalyseFunc took per delivery, by outcome (ok or error).",
			ConstLabels: opts.ConstLabels,
			Buckets:     opts.Buckets,
		}, []string{"analyser", "outcome"}),
	}
}

// Describe sends the descriptors of every metric of the collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.ready, c.scheduled, c.pending, c.dead, c.oldest, c.leased, c.workers, c.paused,
		c.processed, c.failed, c.redelivered, c.cancelled, c.acquired} {
		ch <- d
	}
	c.groups.describe(ch)
	c.latency.Describe(ch)
}

// Collect reads every analyser's queue, and every group of Options.Groups,
// and sends their metrics. A Redis error is logged and reported as qugo_up
// 0; the histogram is sent all the same, and so are the queues of the
// partitions that answered and the groups that could be read. (A partition
// that hangs holds the scrape until Timeout, after which reads left, the
// oldest pending tasks and the groups among them, fail too.)
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.latency.Collect(ch)
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	up := 1.0
	stats, err := c.q.Stats(ctx)
	var failed []int // partitions not read: their queues' series are left out
	if err != nil {
		c.opts.Logger.Warn("prom: read queue stats", "err", err)
		up = 0
		if failed = queue.FailedPartitions(err); len(failed) == 0 {
			ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
			return // not a partition's failure: nothing was read
		}
	}
	now := c.opts.Now()
	for _, s := range stats {
		if slices.Contains(failed, s.Partition) {
			continue
		}
		lv := []string{strconv.Itoa(s.Analyser), strconv.Itoa(s.Partition), strconv.Itoa(s.Queue)}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
		}
		counter := func(d *prometheus.Desc, v int64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
		}
		if c.opts.Owner != "" {
			gauge(c.leased, boolFloat(s.Owner == c.opts.Owner))
			if s.Owner != c.opts.Owner {
				continue // the holder exports the queue, or no one does
			}
		} else {
			gauge(c.leased, boolFloat(s.Owner != ""))
		}
		gauge(c.workers, float64(s.Workers))
		gauge(c.ready, float64(s.Ready))
		gauge(c.scheduled, float64(s.Scheduled))
		gauge(c.pending, float64(s.Pending))
		gauge(c.dead, float64(s.Dead))
		gauge(c.paused, boolFloat(s.Paused))
		if s.Owner != "" {
			counter(c.acquired, s.Leases)
		}
		counter(c.processed, s.Processed)
		counter(c.failed, s.Failed)
		counter(c.redelivered, s.Redelivered)
		counter(c.cancelled, s.Cancelled)
		if c.opts.SkipOldestPending {
			continue
		}
		age, err := c.oldestPendingAge(ctx, s, now)
		if err != nil {
			c.opts.Logger.Warn("prom: read oldest pending task", "analyser", s.Analyser, "err", err)
			up = 0
			continue
		}
		gauge(c.oldest, age.Seconds())
	}
	if !c.collectGroups(ctx, ch, stats, len(failed) > 0) {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
}

// oldestPendingAge returns how long ago the oldest pending task of s's
// queue was enqueued, reading the pending hash only when Stats saw tasks
// in it.
func (c *Collector) oldestPendingAge(ctx context.Context, s queue.AnalyserStats, now time.Time) (time.Duration, error) {
	if s.Pending == 0 {
		return 0, nil
	}
	tasks, err := c.q.Pending(ctx, s.Analyser)
	if err != nil {
		return 0, err
	}
	var oldest time.Time
	for _, t := range tasks {
		if oldest.IsZero() || t.AddedAt.Before(oldest) {
			oldest = t.AddedAt
		}
	}
	if oldest.IsZero() {
		return 0, nil // finished since Stats ran
	}
	return max(now.Sub(oldest), 0), nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// OnDone returns a hook for the PoolConfig.OnDone of analyser's pool: it
// observes each delivery's duration in qugo_handler_duration_seconds with
// outcome "ok" or "error". The hook is safe for concurrent use and does
// not allocate.
func (c *Collector) OnDone(analyser int) func(queue.Task, time.Duration, error) {
	a := strconv.Itoa(analyser)
	ok := c.latency.WithLabelValues(a, "ok")
	failed := c.latency.WithLabelValues(a, "error")
	return func(_ queue.Task, took time.Duration, err error) {
		if err != nil {
			failed.Observe(took.Seconds())
			return
		}
		ok.Observe(took.Seconds())
	}
}

// Observe is a PoolConfig.OnDone hook for pools of any analyser: it
// observes each delivery's duration in qugo_handler_duration_seconds
// under the analyser that serves the task's OrderID. Use it where one
// PoolConfig serves several queues, as a consumer group member's
// (GroupConfig.Pool) does; OnDone(a) files every delivery under a. It is
// safe for concurrent use.
func (c *Collector) Observe(t queue.Task, took time.Duration, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	c.latency.WithLabelValues(strconv.Itoa(c.q.AnalyserOf(t.OrderID)), outcome).Observe(took.Seconds())
}
