package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// lockedBuffer collects a child process's output for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a child process the test started and stops by its pid.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // set when done is closed
}

// startProc starts cmd in its own process group, collecting its output.
func startProc(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	require.NoError(t, cmd.Start(), "start %s", name)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// stop sends sig to the process by its pid and waits up to grace for it to
// exit, then kills it. It returns the process's exit error.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

// startRedis starts a redis-server without persistence on a free loopback
// port and returns its address.
func startRedis(t *testing.T, bin string) string {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	_, port, _ := net.SplitHostPort(addr)
	p := startProc(t, "redis-server", exec.Command(bin,
		"--bind", "127.0.0.1", "--port", port, "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--databases", "4"))
	t.Cleanup(func() { p.stop(syscall.SIGTERM, 10*time.Second) })
	require.Eventually(t, func() bool {
		c, err := redis.Dial("tcp", addr, redis.DialConnectTimeout(time.Second))
		if err != nil {
			return false
		}
		defer c.Close()
		_, err = c.Do("PING")
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "redis-server did not start: %s", p.out)
	return addr
}

// postgresBins finds initdb and postgres: on the PATH, or in Debian's
// versioned directory.
func postgresBins() (initdb, postgres string, err error) {
	if i, err := exec.LookPath("initdb"); err == nil {
		if p, err := exec.LookPath("postgres"); err == nil {
			return i, p, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- { // the newest version first
		i, p := filepath.Join(dirs[i], "initdb"), filepath.Join(dirs[i], "postgres")
		if _, err := os.Stat(i); err == nil {
			if _, err := os.Stat(p); err == nil {
				return i, p, nil
			}
		}
	}
	return "", "", fmt.Errorf("initdb and postgres not found on the PATH or in /usr/lib/postgresql/*/bin")
}

// pgCredential is who runs PostgreSQL, which refuses to run as root: the
// current user, or "postgres" (else "nobody") when the test runs as root.
func pgCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var u *user.User
	var err error
	for _, name := range []string{"postgres", "nobody"} {
		if u, err = user.Lookup(name); err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("running as root and no postgres or nobody user to run PostgreSQL as: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// startPostgres initialises a throwaway cluster (no fsync) and starts it
// on a free loopback port, as a non-root user. It returns the URL of its
// "postgres" database.
func startPostgres(t *testing.T, initdb, postgres string, cred *syscall.Credential) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ingest-e2e-pg-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	require.NoError(t, os.Mkdir(sock, 0o700))
	if cred != nil {
		require.NoError(t, os.Chown(dir, int(cred.Uid), int(cred.Gid)))
		require.NoError(t, os.Chown(sock, int(cred.Uid), int(cred.Gid)))
	}
	as := &syscall.SysProcAttr{Credential: cred}

	initCmd := exec.Command(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
	initCmd.SysProcAttr = as
	initCmd.Dir = dir
	out, err := initCmd.CombinedOutput()
	require.NoError(t, err, "initdb: %s", out)

	port := freePort(t)
	cmd := exec.Command(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
		"-c", "full_page_writes=off", "-c", "max_connections=100")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = dir
	p := startProc(t, "postgres", cmd)
	// SIGINT is PostgreSQL's fast shutdown.
	t.Cleanup(func() { p.stop(syscall.SIGINT, 20*time.Second) })

	url := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return false
		}
		defer c.Close(ctx)
		return c.Ping(ctx) == nil
	}, 30*time.Second, 100*time.Millisecond, "postgres did not start: %s", p.out)
	return url
}
