package prom

import (
	"context"
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/qugo/queue"
)

// groupDescs are the descriptors of the consumer group metrics.
type groupDescs struct {
	members, generation, unassigned           *prometheus.Desc // per group
	analysers, leases, heartbeat, sessionLeft *prometheus.Desc // per member
}

func newGroupDescs(opts Options) groupDescs {
	group := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, "group", name), help, []string{"group"}, opts.ConstLabels)
	}
	member := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(opts.Namespace, "group", name), help, []string{"group", "member"}, opts.ConstLabels)
	}
	return groupDescs{
		members:     group("members", "Live members of the consumer group."),
		generation:  group("generation", "Generation of the group's assignment: Redis's clock in milliseconds when it last changed; changes() counts rebalances."),
		unassigned:  group("unassigned", "Analysers of the group that no live member is given; 0 while a member lives."),
		analysers:   member("member_analysers", "Analysers (queues) assigned to the member."),
		leases:      member("member_leases_held", "Analysers whose lease the member holds (lease owner = member name); differs from member_analysers while a queue moves."),
		heartbeat:   member("member_heartbeat_age_seconds", "Time since the member's last heartbeat, by Redis's clock."),
		sessionLeft: member("member_session_left_seconds", "Time until the member's session ends unless it beats again; it leaves the group then."),
	}
}

func (d groupDescs) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.members, d.generation, d.unassigned, d.analysers, d.leases, d.heartbeat, d.sessionLeft} {
		ch <- x
	}
}

// collectGroups reads each group of Options.Groups and sends its metrics;
// stats (this scrape's) tell which leases each member holds, unless
// partial says some partitions were not read: the lease counts are then
// left out rather than sent short. It returns false when a group could
// not be read from Redis.
func (c *Collector) collectGroups(ctx context.Context, ch chan<- prometheus.Metric, stats []queue.AnalyserStats, partial bool) bool {
	if len(c.opts.Groups) == 0 {
		return true
	}
	held := map[string]int{}
	for _, s := range stats {
		if s.Owner != "" {
			held[s.Owner]++
		}
	}
	ok := true
	d := c.groups
	for _, name := range c.opts.Groups {
		st, err := c.q.GroupStatus(ctx, name)
		if err != nil {
			c.opts.Logger.Warn("prom: read consumer group", "group", name, "err", err)
			if !errors.Is(err, queue.ErrBadConfig) { // a bad name is not Redis's fault
				ok = false
			}
			continue
		}
		g := labelValue(name)
		ch <- prometheus.MustNewConstMetric(d.members, prometheus.GaugeValue, float64(len(st.Members)), g)
		ch <- prometheus.MustNewConstMetric(d.generation, prometheus.GaugeValue, float64(st.Generation), g)
		ch <- prometheus.MustNewConstMetric(d.unassigned, prometheus.GaugeValue, float64(len(st.Unassigned)), g)
		seen := map[string]bool{}
		for _, m := range st.Members {
			lv := []string{g, labelValue(m.Name)}
			if seen[lv[1]] {
				continue // unreachable but for names made alike by labelValue: one series each, or the scrape fails
			}
			seen[lv[1]] = true
			ch <- prometheus.MustNewConstMetric(d.analysers, prometheus.GaugeValue, float64(len(m.Analysers)), lv...)
			if !partial {
				ch <- prometheus.MustNewConstMetric(d.leases, prometheus.GaugeValue, float64(held[m.Name]), lv...)
			}
			ch <- prometheus.MustNewConstMetric(d.heartbeat, prometheus.GaugeValue, m.Heartbeat.Seconds(), lv...)
			ch <- prometheus.MustNewConstMetric(d.sessionLeft, prometheus.GaugeValue, m.Expires.Seconds(), lv...)
		}
	}
	return ok
}

// labelValue makes s a valid label value: group and member names may hold
// any byte but braces and control characters, and a label value that is
// not UTF-8 would make the client library refuse it (and Must… panic). A
// name that is not UTF-8 is shown Go-quoted ("m\xff"), as qugo shows it.
func labelValue(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strconv.Quote(s)
}

// uniqueGroups returns groups without repeats, in their first order: a
// group named twice would export every series twice, which a registry
// refuses.
func uniqueGroups(groups []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, g := range groups {
		if !seen[g] {
			seen[g] = true
			out = append(out, g)
		}
	}
	return out
}
