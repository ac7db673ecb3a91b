package main

import (
	"context"
	"errors"
	"html"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// taskURL is the lookup of task id of order.
func taskURL(order, id string) string {
	return "/task?" + url.Values{"order": {order}, "id": {id}}.Encode()
}

func TestTaskPageForm(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	w := d.get(t, "/task")
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), `<form class="lookup" id="task-form" method="get" action="/task">`)
	assert.NotContains(t, w.Body.String(), `id="task"`)
	hostile := `"><script>alert(1)</script>`
	for _, tc := range []struct{ order, id, want string }{
		{"x", "0123456789abcdefghij", "not an OrderID"},
		{"-1", "0123456789abcdefghij", "not an OrderID"},
		{"18446744073709551616", "0123456789abcdefghij", "not an OrderID"},
		{"1", "short", "not a task ID"},
		{"1", "0123456789abcdefghiz", "not a task ID"},
		{"1", hostile, "not a task ID"},
		{hostile, "0123456789abcdefghij", "not an OrderID"},
	} {
		w := d.get(t, taskURL(tc.order, tc.id))
		assert.Equal(t, http.StatusBadRequest, w.Code, tc)
		body := w.Body.String()
		assert.Contains(t, body, tc.want, tc)
		assert.NotContains(t, body, "<script>alert", tc)
		assert.Contains(t, body, `value="`+html.EscapeString(tc.id)+`"`, "the form keeps what was typed, escaped")
	}
}

// The page tells what Status tells, through a task's life.
func TestTaskPageStates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	f := newFixture(t, 1, 1)
	// Acknowledgements keep a status with the queue's retention.
	kept, err := queue.Dial(ctx, f.urls, queue.Config{Prefix: f.prefix, Retention: time.Hour})
	require.NoError(t, err)
	t.Cleanup(func() { kept.Close() })
	ids := f.add(t, 1, 2, 3)
	later, err := f.q.AddTaskAt(ctx, 4, time.Now().Add(time.Hour), []byte("later"))
	require.NoError(t, err)
	c, err := kept.Consume(ctx, 0, queue.ConsumerConfig{Owner: `<b>owner</b>`, MaxAttempts: 1, LeaseTTL: time.Minute})
	require.NoError(t, err)
	t.Cleanup(func() { c.Release(context.Background()) })
	tasks, err := c.Claim(ctx, 2)
	require.NoError(t, err)
	require.Len(t, tasks, 2)
	_, err = c.Ack(ctx, tasks[0].ID)
	require.NoError(t, err)
	hostile := `<img src=x onerror=alert(1)>`
	_, err = c.Claim(ctx, 1) // order 3 is pending
	require.NoError(t, err)
	_, err = c.Fail(ctx, tasks[1], errors.New(hostile))
	require.NoError(t, err)
	d := newDashboard(t, f, serverConfig{})
	for _, tc := range []struct {
		order, id, state string
		want             []string
	}{
		{"1", ids[0], "done", []string{`id="history"`, "last delivery started", "finished: done"}},
		{"2", ids[1], "dead", []string{html.EscapeString(hostile), `data-attempt="1"`, "its queue's page"}},
		{"3", ids[2], "pending", []string{`data-owner="&lt;b&gt;owner&lt;/b&gt;"`, `data-attempt="1"`}},
		{"4", later, "scheduled", []string{"falls due"}},
		{"9", "0123456789abcdefghij", "unknown", []string{`id="unknown-note"`}},
	} {
		w := d.get(t, taskURL(tc.order, tc.id))
		require.Equal(t, http.StatusOK, w.Code, tc.state)
		body := w.Body.String()
		assert.Contains(t, body, `<section id="task" data-id="`+tc.id+`" data-order="`+tc.order+`" data-state="`+tc.state+`"`, tc.state)
		for _, want := range tc.want {
			assert.Contains(t, body, want, tc.state)
		}
		assert.NotContains(t, body, hostile)
		assert.NotContains(t, body, "<b>owner")
		assert.NotContains(t, body, `id="other-order"`, tc.state)
	}
	// The ID of order 3's task, asked for under order 5 (the same queue
	// on a 1x1 layout): the record says whose it is.
	body := d.get(t, taskURL("5", ids[2])).Body.String()
	assert.Contains(t, body, `id="other-order"`)
	assert.Contains(t, body, "This ID belongs to order 3, not 5")
}

func TestTaskPageRedisDown(t *testing.T) {
	t.Parallel()
	d := dashboardOf(t, envFor(closedURL(t), 1, "down"), serverConfig{timeout: 300 * time.Millisecond})
	w := d.get(t, taskURL("1", "0123456789abcdefghij"))
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), `id="error"`)
	assert.Contains(t, w.Body.String(), `id="task-form"`, "the form stays")
}
