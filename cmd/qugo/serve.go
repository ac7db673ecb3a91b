package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/qugo/queue"
)

// tokenEnv names the environment variable that gives the token when
// -token is not: a flag shows in the process list, the environment does
// not.
const tokenEnv = "QUGO_TOKEN"

func serveFlags(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	listen := fs.String("listen", defaultListen, "serve on `ADDRESS`, host:port (port 0: any free port); a loopback address unless you mean it")
	token := fs.String("token", "", "the `TOKEN` that signs in to act (replay, purge, pause, resume, cancel), "+
		fmt.Sprintf("at least %d characters; if not given, $%s; with neither the dashboard is read-only", minTokenLen, tokenEnv))
	timeout := fs.Duration("timeout", defaultTimeout, "bound the Redis calls of a page to `DURATION` (at most 1m); a server slower than that shows as an error")
	sample := fs.Duration("sample", defaultSample, "read the statistics for the rate charts every `DURATION` (at least 1s)")
	window := fs.Duration("window", defaultWindow, "the rate charts show the last `DURATION` (at least twice -sample)")
	var groups groupNames
	fs.Var(&groups, "group", "show consumer group `NAME` on the Groups page (repeat for more)")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("serve takes no arguments, got %q", args[0])
		}
		tok := *token
		if !e.set["token"] {
			tok = os.Getenv(tokenEnv)
		}
		switch {
		case tok != "" && len(tok) < minTokenLen:
			return usagef("-token (or $%s): at least %d characters, got %d", tokenEnv, minTokenLen, len(tok))
		case *timeout <= 0 || *timeout > time.Minute:
			return usagef("-timeout %v: must be above 0 and at most 1m", *timeout)
		case *sample < time.Second:
			return usagef("-sample %v: must be at least 1s", *sample)
		case *window < 2**sample:
			return usagef("-window %v: must be at least twice -sample (%v)", *window, *sample)
		}
		for _, g := range groups {
			if err := e.checkGroupName(g); err != nil {
				return err
			}
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		defer ln.Close()
		addr := ln.Addr().(*net.TCPAddr)
		log := slog.New(slog.NewTextHandler(e.stderr, nil))
		s, err := newServer(e, serverConfig{
			token: tok, timeout: *timeout, sample: *sample, window: *window, groups: unique(groups),
			loopback: addr.IP.IsLoopback(), log: log,
		})
		if err != nil {
			return err
		}
		// One try at once: a layout that disagrees with the flags stops
		// here, as it does every command; a server that does not answer
		// yet is tried again by every page.
		cctx, cancel := context.WithTimeout(ctx, *timeout)
		_, err = s.be.get(cctx)
		cancel()
		if _, ok := errors.AsType[*queue.LayoutError](err); ok {
			return err
		}
		switch {
		case err != nil && authRefused(err):
			log.Error("Redis refused the credentials; this does not clear by itself: fix the -redis URL (or the user's ACL); "+
				"the pages say so until then", "err", s.explain(err))
		case err != nil:
			log.Warn("Redis does not answer yet; the pages say so until it does", "err", s.explain(err))
		}
		if !addr.IP.IsLoopback() {
			log.Warn("LISTENING BEYOND THIS MACHINE: anyone who reaches "+addr.String()+
				" reads every queue's task data (payloads, errors); put an authenticating proxy or an SSH tunnel in front, "+
				"or listen on 127.0.0.1", "actions", map[bool]string{true: "need the token", false: "none (read-only)"}[tok != ""])
		}
		log.Info("serving", "url", serveURL(addr), "prefix", e.prefix, "servers", strings.Join(redacted(e), ","),
			"queues", e.queues, "read_only", tok == "")
		// The URL last: whoever waits for it finds the log lines written.
		fmt.Fprintln(e.stdout, serveURL(addr))
		if err := s.run(ctx, ln); err != nil {
			return err
		}
		// SIGINT or SIGTERM: the requests in flight have finished.
		log.Info("stopped serving", "url", serveURL(addr))
		return nil
	}
}

// serveURL is the address a browser opens: on an address that means
// every interface, the loopback one.
func serveURL(addr *net.TCPAddr) string {
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, fmt.Sprint(addr.Port)) + "/"
}

// redacted returns the -redis URLs without passwords.
func redacted(e *env) []string {
	urls, _ := e.urls()
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = queue.RedactURL(u)
	}
	return out
}

// groupNames is the value of -group, which may be given more than once.
type groupNames []string

func (g *groupNames) String() string {
	if g == nil {
		return ""
	}
	return strings.Join(*g, ",")
}

func (g *groupNames) Set(v string) error {
	*g = append(*g, v)
	return nil
}
