package browsertest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// seedOverview gives each of the 4 queues of a 2x2 layout something else
// to show, and leaves the counts still: analyser 0 ready and scheduled
// tasks, 1 processed and dead ones, 2 a paused backlog, 3 tasks held
// pending by a running pool.
func seedOverview(s *setup) {
	s.t.Helper()
	for i := range 3 {
		s.add(s.orderOf(0, i), "ready")
	}
	for i := range 2 {
		s.schedule(s.orderOf(0, i), time.Now().Add(time.Hour), "later")
	}
	for i := range 5 {
		payload := "ok"
		if i%2 == 1 {
			payload = failPrefix + "boom"
		}
		s.add(s.orderOf(1, i), payload)
	}
	s.drain(1, "seeder", failByPayload)
	require.NoError(s.t, s.q.Pause(s.ctx, queue.QueueOf(2)))
	for i := range 4 {
		s.add(s.orderOf(2, i), "waits for resume")
	}
	for i := range 2 {
		s.add(s.orderOf(3, i), "held")
	}
	s.hold(3, "holder-1", 2)
}

// The overview shows, for every analyser, what Stats reports, in the
// raw attributes and in the text a reader sees; the totals add them up.
func TestOverviewShowsStats(t *testing.T) {
	s := newSetup(t, 2, 2)
	seedOverview(s)
	d := s.serve("")
	p := s.open(d)
	p.visit("")

	want := s.stats()
	rows := p.rows("table#overview tbody tr[data-analyser]")
	require.Len(t, rows, len(want), "one row per analyser")
	for i, st := range want {
		r := rows[i]
		t.Run(fmt.Sprint("analyser ", st.Analyser), func(t *testing.T) {
			assert.Equal(t, fmt.Sprint(st.Analyser), r["analyser"])
			assert.Equal(t, fmt.Sprint(st.Partition), r["partition"])
			assert.Equal(t, fmt.Sprint(st.Queue), r["queue"])
			for name, n := range map[string]int64{
				"ready": st.Ready, "scheduled": st.Scheduled, "pending": st.Pending, "dead": st.Dead,
				"processed": st.Processed, "failed": st.Failed, "cancelled": st.Cancelled,
			} {
				assert.Equal(t, strconv.FormatInt(n, 10), r[name], name)
				// What a reader sees: the counts here are below 1,000.
				cell := fmt.Sprintf(`tr[data-analyser="%d"] td[data-%s]`, st.Analyser, name)
				assert.Equal(t, strconv.FormatInt(n, 10), p.text(cell), name+" as shown")
			}
			assert.Equal(t, strconv.FormatBool(st.Paused), r["paused"])
			assert.Equal(t, st.Owner, r["owner"])
			assert.Equal(t, fmt.Sprint(st.Workers), r["workers"])
		})
	}
	// The seed is what the rows show, not only what Stats says.
	assert.Equal(t, []int64{3, 0, 4, 0}, []int64{want[0].Ready, want[1].Ready, want[2].Ready, want[3].Ready}, "ready")
	assert.Equal(t, int64(2), want[0].Scheduled)
	assert.Equal(t, []int64{3, 2, 2}, []int64{want[1].Processed, want[1].Dead, want[1].Failed}, "processed, dead, failed of 1")
	assert.True(t, want[2].Paused)
	assert.Equal(t, int64(2), want[3].Pending)

	assert.Equal(t, "paused", p.text(`tr[data-analyser="2"] td[data-paused] .badge`))
	assert.Equal(t, "owned", p.text(`tr[data-analyser="3"] td[data-paused] .badge`))
	assert.Equal(t, "no owner", p.text(`tr[data-analyser="0"] td[data-paused] .badge`))
	assert.Equal(t, "holder-1", p.text(`tr[data-analyser="3"] td[data-owner]`))

	// Totals: per server (partition), and of all.
	servers := p.rows("table#servers tbody tr[data-partition]")
	require.Len(t, servers, 2)
	total := p.rows("table#servers tr[data-total]")
	require.Len(t, total, 1)
	sum := func(partition int, f func(queue.AnalyserStats) int64) string {
		var n int64
		for _, st := range want {
			if partition < 0 || st.Partition == partition {
				n += f(st)
			}
		}
		return strconv.FormatInt(n, 10)
	}
	counts := map[string]func(queue.AnalyserStats) int64{
		"ready":     func(st queue.AnalyserStats) int64 { return st.Ready },
		"scheduled": func(st queue.AnalyserStats) int64 { return st.Scheduled },
		"pending":   func(st queue.AnalyserStats) int64 { return st.Pending },
		"dead":      func(st queue.AnalyserStats) int64 { return st.Dead },
		"processed": func(st queue.AnalyserStats) int64 { return st.Processed },
		"paused": func(st queue.AnalyserStats) int64 {
			if st.Paused {
				return 1
			}
			return 0
		},
	}
	for name, f := range counts {
		for pi, r := range servers {
			assert.Equal(t, fmt.Sprint(pi), r["partition"])
			assert.Equal(t, sum(pi, f), r[name], "server %d: %s", pi, name)
		}
		assert.Equal(t, sum(-1, f), total[0][name], "total: %s", name)
	}
}

// With JavaScript off, the overview is the same table, and the page
// reloads itself (a meta refresh inside <noscript>) to stay current.
func TestOverviewWithoutJavaScript(t *testing.T) {
	s := newSetup(t, 1, 2)
	s.add(s.orderOf(0, 0), "one")
	s.deadLetters(1, 1, "broken")
	d := s.serve("")
	p := s.open(d)
	_, err := chromedp.Call(p.ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
	require.NoError(t, err)
	p.visit("")

	// A page that runs scripts reads <noscript> as text; this one parsed
	// the meta refresh inside it as an element.
	require.True(t, p.has(`noscript > meta[http-equiv="refresh"]`), "scripts are off in the page")
	rows := p.rows("table#overview tbody tr[data-analyser]")
	require.Len(t, rows, 2)
	assert.Equal(t, "1", rows[0]["ready"])
	assert.Equal(t, "1", rows[1]["dead"])
	assert.Equal(t, "1", p.text(`tr[data-analyser="1"] td[data-dead]`))
	assert.True(t, p.has(`a.queue-link[href="/queue/1"]`))

	// The meta refresh reloads the page, which then shows what changed.
	eval[any](p, `window.__loaded = 'before'`)
	s.add(s.orderOf(0, 1), "two")
	p.waitFor(`window.__loaded === undefined && document.querySelector('tr[data-analyser="0"] td[data-ready="2"]')`,
		15*time.Second, "the page reloaded itself and shows the new task")
	assert.True(t, p.has(`noscript > meta[http-equiv="refresh"]`), "still without scripts")
}

// With JavaScript on, the page fetches its content every few seconds and
// swaps it in: a count changes and the page is not reloaded.
func TestOverviewRefreshesInPlace(t *testing.T) {
	s := newSetup(t, 1, 1)
	s.add(s.orderOf(0, 0), "one")
	d := s.serve("")
	p := s.open(d)
	p.visit("")
	require.False(t, p.has(`noscript > meta`), "scripts are on: <noscript> is text")
	require.Equal(t, "1", p.text(`tr[data-analyser="0"] td[data-ready]`))
	readAt := eval[string](p, `document.getElementById('read-at').getAttribute('datetime')`)

	eval[any](p, `window.__marker = 'kept'`)
	s.add(s.orderOf(0, 1), "two")
	_, err := chromedp.Run(p.ctx, chromedp.Poll[bool](
		`document.querySelector('tr[data-analyser="0"] td[data-ready]').dataset.ready === '2'`,
		chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
	require.NoError(t, err, "the ready count changes within a refresh (5s), in the same document")
	assert.Equal(t, "kept", eval[string](p, `String(window.__marker)`), "no reload: the window's state survived")
	assert.Equal(t, "2", p.text(`tr[data-analyser="0"] td[data-ready]`))
	assert.NotEqual(t, readAt, eval[string](p, `document.getElementById('read-at').getAttribute('datetime')`), "the read time moved on")
	assert.Empty(t, eval[string](p, `document.getElementById('refresh-state').textContent`), "no refresh failed")
}
