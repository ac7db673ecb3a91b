package browsertest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/qugo/queue"
)

// testTimeout bounds what one test does in its browser.
const testTimeout = 40 * time.Second

// token signs in to the dashboards that have one.
const token = "browser-test-token-0123456789"

// built is the qugo binary, built once for the whole run.
var built struct {
	once sync.Once
	dir  string // removed by TestMain
	bin  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// chromiumNames are the programs tried, in order, when $QUGO_CHROMIUM
// does not name one.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"}

// requirements skips t when this is not the run the browser tests belong
// to, or a program they need is missing, and returns the Chromium to run.
func requirements(t *testing.T) string {
	t.Helper()
	if os.Getenv("QUEUE_TEST_REDIS_URL") != "" {
		t.Skip("the browser tests start their own redis-server and run in the pass without QUEUE_TEST_REDIS_URL only")
	}
	missing := t.Skipf
	if os.Getenv("QUGO_BROWSER_TESTS") == "required" {
		missing = t.Fatalf // CI, which has installed them
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		missing("redis-server is not on the PATH (apt-get install redis-server)")
	}
	names := chromiumNames
	if c := os.Getenv("QUGO_CHROMIUM"); c != "" {
		names = []string{c}
	}
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	missing("no Chromium found (tried %s; apt-get install chromium, or set QUGO_CHROMIUM)", strings.Join(names, ", "))
	return ""
}

// qugoBinary builds cmd/qugo from this checkout, once.
func qugoBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "qugo-browsertest-")
		if built.err != nil {
			return
		}
		bin := filepath.Join(built.dir, "qugo")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = ".." // cmd/qugo, in the library's module
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build qugo: %v\n%s", err, out)
			return
		}
		built.bin = bin
	})
	require.NoError(t, built.err)
	return built.bin
}

// stopProcess asks cmd's process to stop with SIGTERM, waits for it (for
// at most grace, then kills it by pid) and returns what Wait returned.
func stopProcess(cmd *exec.Cmd, waited <-chan error, grace time.Duration) error {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-waited:
		return err
	case <-time.After(grace):
		cmd.Process.Kill()
		<-waited
		return fmt.Errorf("%s did not stop within %v of SIGTERM: killed", filepath.Base(cmd.Path), grace)
	}
}

// startRedis starts a redis-server of its own on a free loopback port,
// stopped by its pid when t ends, and returns its URL (without database).
func startRedis(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	var last error
	for try := 0; try < 5; try++ {
		port, err := freePort()
		require.NoError(t, err)
		var log bytes.Buffer
		cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", fmt.Sprint(port),
			"--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir,
			"--maxmemory-policy", "noeviction")
		cmd.Stdout, cmd.Stderr = &log, &log
		require.NoError(t, cmd.Start())
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		if last = awaitPing(addr, waited); last == nil {
			t.Cleanup(func() { stopProcess(cmd, waited, 5*time.Second) })
			return "redis://" + addr
		}
		stopProcess(cmd, waited, time.Second)
		last = fmt.Errorf("%w\n%s", last, log.String())
	}
	t.Fatalf("redis-server did not start: %v", last)
	return ""
}

// awaitPing waits until the server at addr answers PING, or its process
// has exited (most likely the port was taken meanwhile).
func awaitPing(addr string, exited <-chan error) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := redis.Dial("tcp", addr, redis.DialConnectTimeout(time.Second))
		if err == nil {
			_, err = c.Do("PING")
			c.Close()
			if err == nil {
				return nil
			}
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("redis-server on %s exited: %v", addr, werr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s does not answer: %w", addr, err)
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// setup is what every test starts with: a redis-server of its own and a
// queue on it of partitions servers (its databases 0, 1, ...) with
// queues queues each.
type setup struct {
	t      *testing.T
	chrome string       // the Chromium to run
	urls   []string     // one per partition
	queues int          // Q
	prefix string       // the queue's key prefix
	q      *queue.Queue // the library, to seed and to check
	ctx    context.Context
}

func newSetup(t *testing.T, partitions, queues int) *setup {
	t.Helper()
	chrome := requirements(t)
	base := startRedis(t)
	s := &setup{t: t, chrome: chrome, queues: queues, prefix: "bt"}
	for p := range partitions {
		s.urls = append(s.urls, fmt.Sprintf("%s/%d", base, p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	s.ctx = ctx
	q, err := queue.Dial(ctx, s.urls, queue.Config{Prefix: s.prefix, Queues: queues})
	require.NoError(t, err)
	t.Cleanup(func() { q.Close() })
	s.q = q
	return s
}

// stats is what the library reports now.
func (s *setup) stats() []queue.AnalyserStats {
	s.t.Helper()
	st, err := s.q.Stats(s.ctx)
	require.NoError(s.t, err)
	return st
}

// dashboard is a running qugo serve.
type dashboard struct {
	url    string // "http://127.0.0.1:PORT/"
	stderr *syncBuffer
}

// serve runs qugo serve for the setup's queue, with the token when it is
// not empty (read-only without), and stops it by pid when the test ends,
// checking that it exits 0. Its log is shown when the test fails.
func (s *setup) serve(token string, flags ...string) *dashboard {
	t := s.t
	t.Helper()
	args := []string{"-redis", strings.Join(s.urls, ","), "-queues", fmt.Sprint(s.queues), "-prefix", s.prefix,
		"serve", "-listen", "127.0.0.1:0"}
	if token != "" {
		args = append(args, "-token", token)
	}
	args = append(args, flags...)
	cmd := exec.Command(qugoBinary(t), args...)
	cmd.Env = append(os.Environ(), "QUGO_TOKEN=") // only -token gives one
	out, w, err := os.Pipe()
	require.NoError(t, err)
	d := &dashboard{stderr: &syncBuffer{}}
	cmd.Stdout, cmd.Stderr = w, d.stderr
	err = cmd.Start()
	w.Close()
	if err != nil {
		out.Close()
		t.Fatalf("start qugo serve: %v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	first := make(chan string, 1)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		r := bufio.NewReader(out)
		line, _ := r.ReadString('\n')
		first <- strings.TrimSpace(line)
		r.WriteTo(io.Discard) // until qugo exits
	}()
	t.Cleanup(func() {
		err := stopProcess(cmd, waited, 10*time.Second)
		<-drained
		out.Close()
		if t.Failed() {
			t.Logf("qugo serve log:\n%s", d.stderr)
		}
		if err != nil {
			t.Errorf("qugo serve: %v", err)
		}
	})
	select {
	case d.url = <-first:
	case <-time.After(20 * time.Second):
		t.Fatalf("qugo serve printed no URL within 20s:\n%s", d.stderr)
	}
	require.Regexp(t, `^http://127\.0\.0\.1:\d+/$`, d.url, "the first line of qugo serve's output; its log:\n%s", d.stderr)
	return d
}

// browser starts a headless Chromium with a fresh profile, stopped when
// the test ends, and returns a tab's context, bounded by the setup's.
func (s *setup) browser() context.Context {
	t := s.t
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(s.chrome),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.DisableGPU,
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1280, 800),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(s.ctx, opts...)
	var ended atomic.Bool // t.Logf must not be called once t has ended
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(format string, args ...any) {
		if !ended.Load() {
			t.Logf("chromedp: "+format, args...)
		}
	}))
	t.Cleanup(func() {
		ended.Store(true)
		cancel()
		cancelAlloc() // waits for the browser process
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", s.chrome, err)
	}
	return ctx
}

// syncBuffer is a bytes.Buffer safe for a process's output and a test's
// reads at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
