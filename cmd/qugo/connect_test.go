package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGlobalsValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		g     globals
		urls  []string
		parts int
		bad   string // in the error; "" for valid
	}{
		{"one", globals{"redis://h:1", 1, "qugo"}, []string{"redis://h:1"}, 1, ""},
		{"spaces trimmed", globals{" redis://a , rediss://b/2", 4, "p"}, []string{"redis://a", "rediss://b/2"}, 2, ""},
		{"empty URL", globals{"redis://a,", 1, "p"}, nil, 0, "URL 1"},
		{"no URL", globals{"", 1, "p"}, nil, 0, "URL 0"},
		{"other scheme", globals{"tcp://a", 1, "p"}, nil, 0, "not redis://"},
		{"zero queues", globals{"redis://a", 0, "p"}, nil, 0, "-queues 0"},
		{"empty prefix", globals{"redis://a", 1, ""}, nil, 0, "-prefix"},
		{"brace in prefix", globals{"redis://a", 1, "a}"}, nil, 0, "-prefix"},
	} {
		err := tc.g.validate()
		if tc.bad != "" {
			var ue *usageError
			if assert.ErrorAs(t, err, &ue, tc.name) {
				assert.Contains(t, err.Error(), tc.bad, tc.name)
			}
			continue
		}
		require.NoError(t, err, tc.name)
		urls, err := tc.g.urls()
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.urls, urls, tc.name)
		assert.Equal(t, tc.parts, tc.g.partitions(), tc.name)
	}
}

func TestCheckAnalyser(t *testing.T) {
	t.Parallel()
	g := globals{redis: "redis://a,redis://b,redis://c", queues: 2, prefix: "p"}
	for a, ok := range map[int]bool{-1: false, -2: false, 0: true, 5: true, 6: false} {
		err := g.checkAnalyser(a)
		if ok {
			assert.NoError(t, err, a)
		} else {
			var ue *usageError
			assert.ErrorAs(t, err, &ue, a)
		}
	}
	assert.EqualError(t, g.checkAnalyser(6), "-a 6: analysers are 0 to 5 (3 servers x 2 queues)")
	assert.EqualError(t, g.checkAnalyser(-1), "-a is required")
}
