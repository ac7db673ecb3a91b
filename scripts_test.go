package queue

import (
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var updateScripts = flag.Bool("update-scripts", false, "rewrite testdata/scripts from the rendered scripts")

// TestScriptsGolden pins the exact text of every script that runs: the
// files under testdata/scripts are what Redis is sent, with the Go
// constants filled in. After changing a script, run
//
//	go test -run TestScriptsGolden -update-scripts
//
// and read the diff of the rendered text.
func TestScriptsGolden(t *testing.T) {
	dir := filepath.Join("testdata", "scripts")
	if *updateScripts {
		require.NoError(t, os.RemoveAll(dir))
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for name, text := range scriptSources {
			require.NoError(t, os.WriteFile(filepath.Join(dir, name+".lua"), []byte(strings.TrimPrefix(text, "\n")), 0o644))
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.lua"))
	require.NoError(t, err)
	var onDisk []string
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".lua")
		onDisk = append(onDisk, name)
		want, err := os.ReadFile(f)
		require.NoError(t, err)
		assert.Equal(t, string(want), strings.TrimPrefix(scriptSources[name], "\n"), "script %s differs from %s", name, f)
	}
	var names []string
	for name := range scriptSources {
		names = append(names, name)
	}
	sort.Strings(names)
	assert.Equal(t, names, onDisk, "every script has a file under %s, and every file a script", dir)
}

// The numbers a script reads records with are the Go constants, not copies.
func TestScriptsUseGoConstants(t *testing.T) {
	claim := scriptSources["claim"]
	assert.Contains(t, claim, "size >= 21 and v <= 7 and v % 2 == 1", "entryHeader, entryFlags and entryTask")
	// The script's test (the low bit set, no bit above entryFlags) is
	// isEntryStart's for every byte.
	assert.Equal(t, 1, entryTask)
	assert.Equal(t, 7, entryFlags)
	for c := range 256 {
		assert.Equal(t, c <= entryFlags && c%2 == entryTask, isEntryStart(byte(c)), "byte %#x", c)
	}
	assert.Contains(t, claim, "sub(e, 2, 21)")
	assert.Contains(t, claim, "'"+seqFiller+"'")
	assert.Equal(t, idLen, len(seqFiller))
	assert.Equal(t, 1+idLen, entryHeader)
	for name, text := range scriptSources {
		assert.False(t, unrendered.MatchString(text), "script %s has a name left unrendered", name)
	}
	assert.Contains(t, scriptSources["ack"], "redis.error_reply('"+staleReply+" lease lost')")
}
