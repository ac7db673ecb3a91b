package queue

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
)

// The call-fault harness names the calls it counts: a script by the name
// it was made with, anything else by its command.

// scriptNames maps a script's SHA1 to its name. Scripts met only through
// EVAL are learnt under "script:<sha>" (learnScript).
var scriptNames = struct {
	sync.Mutex
	m map[string]string
}{m: map[string]string{}}

// knownScripts are the scripts the harness preloads and names: every
// script of the package, under the name it was made with (newScript).
func knownScripts() map[string]*redis.Script {
	m := make(map[string]*redis.Script, len(scriptSources))
	for name, src := range scriptSources {
		m[name] = redis.NewScript(0, src)
	}
	return m
}

func init() {
	for name, s := range knownScripts() {
		scriptNames.m[s.Hash()] = name
	}
}

// preloadScripts loads every known script into the server, so that no
// EVALSHA of a run meets NOSCRIPT (which would add a round trip to some
// runs and not to others).
func preloadScripts(t testing.TB, p *redis.Pool) {
	t.Helper()
	load := func(c redis.Conn) {
		defer c.Close()
		for _, s := range knownScripts() {
			require.NoError(t, s.Load(c))
		}
	}
	r := routerOf(p)
	if r == nil {
		load(p.Get())
		return
	}
	// On a cluster, SCRIPT LOAD reaches one primary: load on every one.
	for _, addr := range r.slots.Load().primaries {
		c, err := r.nodeConn(context.Background(), addr)
		require.NoError(t, err)
		load(c)
	}
}

// commandName names one command: a script by its name, anything else by
// the command itself. known is false for an EVALSHA of a script the
// harness cannot name (it may meet NOSCRIPT, and is neither counted nor
// faulted).
func commandName(cmd string, args []any) (name string, known bool) {
	cmd = strings.ToUpper(cmd)
	switch cmd {
	case "EVALSHA", "EVAL":
		sha := scriptOf(cmd, args)
		scriptNames.Lock()
		defer scriptNames.Unlock()
		if n, ok := scriptNames.m[sha]; ok {
			return n, true
		}
		if cmd == "EVAL" && sha != "" {
			n := "script:" + sha[:8]
			scriptNames.m[sha] = n
			return n, true
		}
		return "evalsha:" + sha, false
	}
	return cmd, true
}
