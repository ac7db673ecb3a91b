// Package pgtest starts a throwaway PostgreSQL server for tests: initdb
// into a temporary directory, postgres on a free loopback port, stopped by
// pid. It is meant for tests only.
//
// Tests that need a server call Start, or share one from TestMain with Run
// and Stop, and take a fresh database each with NewDatabase:
//
//	srv := pgtest.Start(t)      // skips t in -short mode or without PostgreSQL
//	url := srv.NewDatabase(t)   // postgres://postgres@127.0.0.1:PORT/test_N?sslmode=disable
//
// The binaries are taken from $PGTEST_BIN, else the newest
// /usr/lib/postgresql/*/bin (Debian's postgresql package), else $PATH.
// PostgreSQL refuses to run as root, so as root the server runs as the
// postgres user (or nobody), which owns the temporary directory. When
// $QUEUE_TEST_PG_URL names a server, Start uses it and starts nothing.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrUnavailable is returned by Run when no PostgreSQL binaries are found
// or no user can run them.
var ErrUnavailable = errors.New("pgtest: postgresql unavailable")

// Server is a PostgreSQL server started for tests.
type Server struct {
	// URL connects as the superuser "postgres" (trust auth, no TLS) to
	// the "postgres" database.
	URL string
	// Pid is the postmaster's process id; zero for an external server.
	Pid int

	dir    string        // temporary directory (data, socket, log)
	cmd    *exec.Cmd     // the postmaster
	exited chan struct{} // closed when the postmaster has exited
	dbs    atomic.Int64
}

// Start returns a server for tb, stopped when tb's cleanup runs. It skips
// tb in -short mode and when PostgreSQL is unavailable, saying why.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if u := os.Getenv("QUEUE_TEST_PG_URL"); u != "" {
		return &Server{URL: u}
	}
	if testing.Short() {
		tb.Skip("pgtest: not starting PostgreSQL in -short mode")
	}
	s, err := Run()
	if errors.Is(err, ErrUnavailable) {
		tb.Skipf("%v (apt-get install postgresql)", err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

// Run starts a server; the caller stops it with Stop. It returns an error
// wrapping ErrUnavailable when PostgreSQL cannot be run here.
func Run() (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	s := &Server{dir: dir}
	if err := s.initdb(bin, cred); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	// Another process may take the free port before postgres binds it.
	for try := 0; ; try++ {
		err = s.start(bin, cred)
		if err == nil || try == 2 {
			break
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// binDir finds the directory holding initdb and postgres.
func binDir() (string, error) {
	if d := os.Getenv("PGTEST_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("%w: no initdb in /usr/lib/postgresql/*/bin or $PATH", ErrUnavailable)
}

// version returns the major version in a path like /usr/lib/postgresql/15/bin.
func version(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// credential returns the user to run PostgreSQL as: nil (this process's)
// unless this process is root.
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, fmt.Errorf("%w: running as root and no postgres or nobody user", ErrUnavailable)
}

func (s *Server) command(bin string, cred *syscall.Credential, name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(bin, name), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "TZ=UTC")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	return cmd
}

func (s *Server) initdb(bin string, cred *syscall.Credential) error {
	out, err := s.command(bin, cred, "initdb", "-D", filepath.Join(s.dir, "data"),
		"-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgtest: initdb: %v\n%s", err, out)
	}
	return nil
}

// start runs the postmaster on a free loopback port and waits until it
// accepts connections.
func (s *Server) start(bin string, cred *syscall.Credential) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := s.command(bin, cred, "postgres", "-D", filepath.Join(s.dir, "data"),
		"-p", strconv.Itoa(port), "-k", s.dir, "-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off", "-c", "max_connections=200")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s.cmd, s.Pid, s.exited = cmd, cmd.Process.Pid, make(chan struct{})
	go func() {
		cmd.Wait()
		close(s.exited)
	}()
	s.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgx.Connect(ctx, s.URL)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("pgtest: postgres exited at start:\n%s", log)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("pgtest: postgres not ready after 30s: %v\n%s", err, log)
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

// Stop stops the server by its pid (a fast shutdown: SIGINT, then SIGKILL
// to its process group after 20s) and removes its directory. It does
// nothing for an external server.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	var err error
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		syscall.Kill(-s.Pid, syscall.SIGKILL)
		<-s.exited
		err = fmt.Errorf("pgtest: postgres (pid %d) did not stop in 20s; killed", s.Pid)
	}
	s.cmd = nil
	return errors.Join(err, os.RemoveAll(s.dir))
}

// NewDatabase creates an empty database for tb (dropped by tb's cleanup)
// and returns its URL, so tests can share one server.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	name := fmt.Sprintf("test_%d_%d", os.Getpid(), s.dbs.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.URL)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.URL)
		if err != nil {
			tb.Errorf("pgtest: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database: %v", err)
		}
	})
	u, err := url.Parse(s.URL)
	if err != nil {
		tb.Fatalf("pgtest: server URL: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}
