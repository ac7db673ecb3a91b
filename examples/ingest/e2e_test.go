package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/qugo/queue"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// End-to-end shape: R=2 partitions (two logical databases of one
// redis-server), Q=2 queues, so four analysers, served by two analyser
// processes of two queues each.
const (
	e2eOrders    = 100
	e2eTasks     = 10_000
	e2eBatch     = 100 // tasks per POST
	e2ePosters   = 4   // concurrent clients, each with its own orders
	e2eQueues    = 2
	e2ePrefix    = "e2e"
	e2eStatusers = 16 // concurrent status requests
)

// TestEndToEnd runs ingest -> queue -> analyser -> Postgres with real
// servers, killing one analyser process with SIGKILL mid-way.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	redisBin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("end-to-end test skipped: redis-server not found: %v", err)
	}
	initdb, postgres, err := postgresBins()
	if err != nil {
		t.Skipf("end-to-end test skipped: %v", err)
	}
	cred, err := pgCredential()
	if err != nil {
		t.Skipf("end-to-end test skipped: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Build first: the servers need not wait for the compiler.
	bin := filepath.Join(t.TempDir(), "analyser")
	build := exec.CommandContext(ctx, "go", "build", "-C", "../analyser", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "build the analyser: %s", out)

	redisAddr := startRedis(t, redisBin)
	pgURL := startPostgres(t, initdb, postgres, cred)
	redisURLs := []string{"redis://" + redisAddr + "/0", "redis://" + redisAddr + "/1"}

	// The ingest server, in process, wired as main wires it.
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	app, err := newApp(ctx, options{redis: redisURLs, queues: e2eQueues, prefix: e2ePrefix, pg: pgURL, maxBody: 1 << 20}, log)
	require.NoError(t, err)
	defer app.close()
	ts := httptest.NewServer(app.srv.handler())
	defer ts.Close()
	httpc := ts.Client()

	// Before the analysers create the schema, lookups read as not found.
	rec, err := app.srv.store.Lookup(ctx, "00000000000000000000")
	require.NoError(t, err)
	assert.Equal(t, storeRecord{}, rec)

	pg, err := pgxpool.New(ctx, pgURL)
	require.NoError(t, err)
	defer pg.Close()

	analyser := func(ids string) *proc {
		cmd := exec.Command(bin, "-id", ids, "-worker", "8", "-redis", strings.Join(redisURLs, ","),
			"-queues", fmt.Sprint(e2eQueues), "-prefix", e2ePrefix, "-pg", pgURL,
			"-metrics", "")
		return startProc(t, "analyser "+ids, cmd)
	}
	a := analyser("0-1")
	b := analyser("2-3")
	defer func() {
		for _, p := range []*proc{a, b} {
			if err := p.stop(syscall.SIGTERM, 20*time.Second); err != nil {
				t.Logf("%s exit: %v; output:\n%s", p.name, err, p.out)
			}
		}
	}()

	// Post the tasks in arrays from several clients, each with its own
	// orders so it knows their enqueue order, while the test kills one
	// analyser process once a fifth of the rows are in.
	var mu sync.Mutex
	posted := make(map[uint64][]string, e2eOrders) // order -> ids in enqueue order
	post := func(ctx context.Context, client int) error {
		var orders []uint64
		for o := uint64(client); o < e2eOrders; o += e2ePosters {
			orders = append(orders, o)
		}
		per := e2eBatch / len(orders) // tasks of each order in one array
		for seq := 0; seq < e2eTasks/e2eOrders; seq += per {
			var batch []map[string]any
			for _, o := range orders {
				for k := range per {
					batch = append(batch, map[string]any{"order_id": o, "payload": map[string]any{"order": o, "seq": seq + k}})
				}
			}
			ids, err := postBatch(ctx, httpc, ts.URL, batch)
			if err != nil {
				return err
			}
			mu.Lock()
			for i, task := range batch {
				o := task["order_id"].(uint64)
				posted[o] = append(posted[o], ids[i])
			}
			mu.Unlock()
			// Pace the clients a little, so that the kill lands while
			// tasks are still arriving.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	pctx, stopPosting := context.WithCancel(ctx)
	defer stopPosting()
	postErrs := make(chan error, e2ePosters)
	for c := range e2ePosters {
		go func() { postErrs <- post(pctx, c) }()
	}
	waitPosters := func() error {
		var first error
		for range e2ePosters {
			if err := <-postErrs; err != nil && first == nil {
				first = err
				stopPosting()
			}
		}
		return first
	}

	// Kill analyser process a (queues 0 and 1) by pid once a fifth of the
	// rows are in and it holds tasks, and start it again: it takes its
	// queues over when the lease expires, and redelivers those tasks.
	pending := 0
	if !assert.Eventually(t, func() bool {
		if countRows(ctx, pg) < e2eTasks/5 {
			return false
		}
		pending = pendingOf(ctx, app.srv.q, 0, 1)
		return pending > 0
	}, time.Minute, 5*time.Millisecond, "analysers made no progress; a:\n%s\nb:\n%s", a.out, b.out) {
		stopPosting()
		waitPosters()
		t.FailNow()
	}
	require.NoError(t, a.cmd.Process.Signal(syscall.SIGKILL))
	<-a.done
	// Count again now that it is dead: it may have acked those tasks
	// between the look and the kill.
	pending = pendingOf(ctx, app.srv.q, 0, 1)
	require.GreaterOrEqual(t, pending, 0, "read the pending tasks")
	t.Logf("killed analyser 0-1 (pid %d) with %d rows in and %d of its tasks pending", a.cmd.Process.Pid, countRows(ctx, pg), pending)
	a = analyser("0-1")

	// Mid-way, with the killed analyser's queues still unowned, every
	// status is one of the live ones.
	mu.Lock()
	var sample [][2]any // {id, order}
	for o, ids := range posted {
		for _, id := range ids[max(0, len(ids)-5):] {
			sample = append(sample, [2]any{id, o})
		}
	}
	mu.Unlock()
	seen := map[string]int{}
	for _, s := range sample {
		st, err := getStatus(ctx, httpc, ts.URL, s[0].(string), s[1].(uint64))
		require.NoError(t, err)
		seen[st.Status]++
	}
	t.Logf("statuses mid-way: %v", seen)
	assert.Subset(t, []string{"queued", "running", "done"}, slices.Collect(maps.Keys(seen)))

	require.NoError(t, waitPosters())
	total := 0
	for _, ids := range posted {
		total += len(ids)
	}
	require.Equal(t, e2eTasks, total)

	require.Eventually(t, func() bool { return countRows(ctx, pg) >= e2eTasks }, time.Minute, 50*time.Millisecond,
		"not every task reached Postgres: %d rows; a:\n%s\nb:\n%s", countRows(ctx, pg), a.out, b.out)

	t.Run("exactly one row per task, in enqueue order", func(t *testing.T) {
		rows, err := pg.Query(ctx, `SELECT task_id, order_id::text FROM tasks ORDER BY order_id, seq`)
		require.NoError(t, err)
		got := map[uint64][]string{}
		n := 0
		for rows.Next() {
			var id, oid string
			require.NoError(t, rows.Scan(&id, &oid))
			var o uint64
			_, err := fmt.Sscan(oid, &o)
			require.NoError(t, err)
			got[o] = append(got[o], id)
			n++
		}
		require.NoError(t, rows.Err())
		assert.Equal(t, e2eTasks, n, "rows in tasks")
		assert.Len(t, got, e2eOrders)
		for o := range uint64(e2eOrders) {
			assert.Equal(t, posted[o], got[o], "rows of order %d by insert order", o)
		}
		var failed int
		require.NoError(t, pg.QueryRow(ctx, `SELECT count(*) FROM failed_jobs`).Scan(&failed))
		assert.Zero(t, failed, "failed_jobs rows")
	})

	t.Run("status says done for every task", func(t *testing.T) {
		type job struct {
			id    string
			order uint64
		}
		jobs := make(chan job)
		var (
			smu    sync.Mutex
			counts = map[string]int{}
			bad    []string
		)
		var wg sync.WaitGroup
		for range e2eStatusers {
			wg.Go(func() {
				for j := range jobs {
					st, err := getStatus(ctx, httpc, ts.URL, j.id, j.order)
					smu.Lock()
					if err != nil {
						bad = append(bad, err.Error())
					} else {
						counts[st.Status]++
						if st.Status != "done" && len(bad) < 10 {
							bad = append(bad, fmt.Sprintf("%s: %+v", j.id, st))
						}
					}
					smu.Unlock()
				}
			})
		}
		for o, ids := range posted {
			for _, id := range ids {
				jobs <- job{id, o}
			}
		}
		close(jobs)
		wg.Wait()
		assert.Equal(t, map[string]int{"done": e2eTasks}, counts, "first problems: %v", bad)
	})

	t.Run("queues drained", func(t *testing.T) {
		stats, err := app.srv.q.Stats(ctx)
		require.NoError(t, err)
		var processed int64
		for _, s := range stats {
			assert.Zero(t, s.Ready, "ready of analyser %d", s.Analyser)
			assert.Zero(t, s.Dead, "dead of analyser %d", s.Analyser)
			processed += s.Processed
		}
		assert.GreaterOrEqual(t, processed, int64(e2eTasks), "acks, counting redeliveries")
		assert.GreaterOrEqual(t, stats[0].Redelivered+stats[1].Redelivered, int64(pending), "the killed analyser's pending tasks were redelivered")
		t.Logf("stats: %+v", stats)
	})

	t.Run("failed_jobs lookup", func(t *testing.T) {
		_, err := pg.Exec(ctx, `INSERT INTO failed_jobs (task_id, order_id, attempts, error, died_at, analyser)
			VALUES ('deadbeef000000000000', 3, 5, 'bad sku', now(), 3)`)
		require.NoError(t, err)
		st, err := getStatus(ctx, httpc, ts.URL, "deadbeef000000000000", 3)
		require.NoError(t, err)
		assert.Equal(t, taskStatus{ID: "deadbeef000000000000", OrderID: 3, Status: "failed", Attempts: 5, LastError: "bad sku"}, st)
	})
}

// countRows returns the number of rows in tasks, or -1 before the table
// exists.
func countRows(ctx context.Context, pg *pgxpool.Pool) int {
	var n int
	if err := pg.QueryRow(ctx, `SELECT count(*) FROM tasks`).Scan(&n); err != nil {
		return -1
	}
	return n
}

// pendingOf counts the tasks pending in the given analysers' queues, or
// returns -1 on an error.
func pendingOf(ctx context.Context, q *queue.Queue, analysers ...int) int {
	n := 0
	for _, a := range analysers {
		p, err := q.Pending(ctx, a)
		if err != nil {
			return -1
		}
		n += len(p)
	}
	return n
}

func postBatch(ctx context.Context, c *http.Client, base string, batch []map[string]any) ([]string, error) {
	body, err := json.Marshal(batch)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/tasks", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return nil, fmt.Errorf("POST /v1/tasks: %s: %s", resp.Status, raw)
	}
	var out struct{ IDs []string }
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, err
	}
	if len(out.IDs) != len(batch) {
		return nil, fmt.Errorf("POST /v1/tasks: %d ids for %d tasks", len(out.IDs), len(batch))
	}
	return out.IDs, nil
}

func getStatus(ctx context.Context, c *http.Client, base, id string, order uint64) (taskStatus, error) {
	var st taskStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/tasks/%s?order_id=%d", base, id, order), nil)
	if err != nil {
		return st, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET status of %s: %s: %s", id, resp.Status, raw)
	}
	return st, json.Unmarshal(raw, &st)
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
