package browsertest

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The queue page pages through its lists, each on its own, with the
// pager's links.
func TestQueuePagePages(t *testing.T) {
	s := newSetup(t, 1, 1)
	dead := s.deadLetters(0, 4, "refused")
	due := time.Now().Add(time.Hour)
	var scheduled []string
	for i := range 7 {
		// Due a minute apart, added in reverse: the page lists them by due time.
		scheduled = append([]string{s.schedule(s.orderOf(0, 10+i), due.Add(time.Duration(6-i)*time.Minute), "later")}, scheduled...)
	}
	d := s.serve("")
	p := s.open(d)
	p.visit("queue/0?limit=3")
	require.True(t, p.has(`section#queue[data-analyser="0"]`))

	next := `#scheduled-heading ~ .pager a.next`
	prev := `#scheduled-heading ~ .pager a.prev`
	assert.Equal(t, scheduled[:3], p.ids("table#scheduled tbody tr"), "page 1, earliest due first")
	assert.Equal(t, "‹ Previous 1–3 of 7 Next ›", p.text(`#scheduled-heading ~ .pager`))
	assert.False(t, p.has(prev), "no previous page")
	assert.Equal(t, dead[:3], p.ids("table#dead tbody tr"), "the dead letters page on their own")

	p.click(next)
	assert.Contains(t, p.location(), "scheduled_offset=3")
	assert.Equal(t, scheduled[3:6], p.ids("table#scheduled tbody tr"), "page 2")
	assert.Equal(t, dead[:3], p.ids("table#dead tbody tr"), "the dead letters' page stays")

	p.click(next)
	assert.Equal(t, scheduled[6:], p.ids("table#scheduled tbody tr"), "page 3")
	assert.Equal(t, "‹ Previous 7–7 of 7 Next ›", p.text(`#scheduled-heading ~ .pager`))
	assert.False(t, p.has(next), "no next page")

	p.click(prev)
	assert.Equal(t, scheduled[3:6], p.ids("table#scheduled tbody tr"), "back to page 2")

	p.click(`#dead-heading ~ .pager a.next`)
	assert.Equal(t, dead[3:], p.ids("table#dead tbody tr"), "the dead letters' page 2")
	assert.Equal(t, scheduled[3:6], p.ids("table#scheduled tbody tr"), "the scheduled list's page stays")

	assert.True(t, p.has("#pending-empty"), "nothing pending")
}

// The lookup form finds a task by OrderID and ID and shows its state.
func TestTaskLookup(t *testing.T) {
	s := newSetup(t, 1, 2)
	deadOrder := s.orderOf(1, 0)
	deadID := s.deadLetters(1, 1, "card declined")[0]
	schedOrder := s.orderOf(0, 3)
	schedID := s.schedule(schedOrder, time.Now().Add(time.Hour), "later")
	d := s.serve("")
	p := s.open(d)

	lookup := func(order uint64, id string) {
		t.Helper()
		p.visit("")
		p.do(chromedp.SendKeys(chromedp.CSS(`form.lookup input[name=order]`), fmt.Sprint(order)),
			chromedp.SendKeys(chromedp.CSS(`form.lookup input[name=id]`), id))
		resp := p.click(`form.lookup button`)
		require.Equal(t, 200, int(resp.Status))
		require.True(t, p.has(fmt.Sprintf(`section#task[data-id=%q]`, id)), "the task's section")
	}

	lookup(schedOrder, schedID)
	assert.Equal(t, "scheduled", p.text("#task-state"))
	assert.True(t, p.has(`section#task[data-state="scheduled"][data-analyser="0"]`))

	lookup(deadOrder, deadID)
	assert.Equal(t, "dead", p.text("#task-state"))
	assert.True(t, p.has(`section#task[data-state="dead"][data-analyser="1"]`))
	assert.Contains(t, p.text("#last-error"), "card declined (0)")
	assert.True(t, p.has("#history li"), "a history")
	assert.True(t, p.has(`form#task-form`), "the form, to look up another")

	// In the form on the task page itself: an ID no queue knows, and
	// something that is no task ID.
	p.do(chromedp.SetValue(chromedp.CSS(`#task-form input[name=id]`), "00000000000000000000"))
	resp := p.click(`#task-form button`)
	assert.Equal(t, 200, int(resp.Status))
	assert.Equal(t, "unknown", p.text("#task-state"))
	assert.True(t, p.has("#unknown-note"))
	p.do(chromedp.SetValue(chromedp.CSS(`#task-form input[name=id]`), "nosuchtask"))
	resp = p.click(`#task-form button`)
	assert.Equal(t, 400, int(resp.Status))
	assert.Contains(t, p.text("#warning"), "not a task ID")
	assert.False(t, p.has("section#task"))
}
