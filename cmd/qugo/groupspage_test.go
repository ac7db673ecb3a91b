package main

import (
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGroupsPageWithoutGroups(t *testing.T) {
	t.Parallel()
	d := newDashboard(t, newFixture(t, 1, 1), serverConfig{})
	w := d.get(t, "/groups")
	assert.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), `id="group-form"`)
	assert.NotContains(t, w.Body.String(), `class="group"`)
	w = d.get(t, "/groups?name="+url.QueryEscape("a{b}"))
	assert.Equal(t, http.StatusBadRequest, w.Code)
	assert.Contains(t, w.Body.String(), `id="warning"`)
}

// The page shows what "qugo group" shows, and the workers of each
// member's pools, escaped.
func TestGroupsPage(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2, 2) // analysers 0..3
	hostile := `<i>m2</i>`
	f.join(t, "workers", "m1", 1)
	f.join(t, "workers", hostile, 3)
	f.waitSettled(t, "workers", hostile, "m1")
	d := newDashboard(t, f, serverConfig{groups: []string{"workers"}})
	var body string
	require.Eventually(t, func() bool {
		w := d.get(t, "/groups")
		body = w.Body.String()
		return w.Code == http.StatusOK && strings.Contains(rowOf(body, `data-member="m1"`), `data-workers="1"`) &&
			strings.Contains(rowOf(body, `data-member="`+html.EscapeString(hostile)+`"`), `data-workers="3"`)
	}, 10*time.Second, 20*time.Millisecond, "every pool records its workers")
	assert.Contains(t, body, `<section class="group" data-group="workers"`)
	m1 := rowOf(body, `data-member="m1"`)
	assert.Contains(t, m1, `data-weight="1"`)
	assert.Equal(t, attrAfter(m1, `data-member="m1"`, "data-assigned"), attrAfter(m1, `data-member="m1"`, "data-leases"))
	m2 := rowOf(body, `data-member="`+html.EscapeString(hostile)+`"`)
	assert.Contains(t, m2, `data-weight="3"`)
	assert.NotContains(t, body, hostile)
	assert.Contains(t, body, `data-unassigned="-"`)
	assert.NotContains(t, body, `class="grid mismatches"`)
	assert.Contains(t, body, `data-fragment="/groups?fragment=1"`)

	// Another group, looked up by name: no member ever joined it.
	body = d.get(t, "/groups?name=nobody").Body.String()
	assert.Contains(t, body, `<section class="group" data-group="workers"`)
	assert.Contains(t, body, `<section class="group" data-group="nobody" data-generation="0"`)
	assert.Contains(t, body, "No member has joined group nobody")
	assert.Contains(t, body, `value="nobody"`)
}

func TestGroupsPageRedisDown(t *testing.T) {
	t.Parallel()
	d := dashboardOf(t, envFor(closedURL(t), 1, "down"), serverConfig{groups: []string{"g"}, timeout: 300 * time.Millisecond})
	w := d.get(t, "/groups")
	assert.Equal(t, http.StatusServiceUnavailable, w.Code)
	assert.Contains(t, w.Body.String(), `id="error"`)
}
