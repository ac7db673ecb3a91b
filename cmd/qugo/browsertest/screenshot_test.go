package browsertest

import (
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/qugo/queue"
)

// docsDir is the repository's docs/, where the READMEs find the pictures.
var docsDir = filepath.Join("..", "..", "..", "docs")

// TestScreenshots writes docs/dashboard-overview.png and
// docs/dashboard-queue.png, the dashboard as the READMEs show it, from a
// queue with some life in it. It runs only with QUGO_SCREENSHOTS=1, so
// that no other run rewrites them.
func TestScreenshots(t *testing.T) {
	if os.Getenv("QUGO_SCREENSHOTS") != "1" {
		t.Skip("QUGO_SCREENSHOTS=1 writes the screenshots in docs/")
	}
	s := newSetup(t, 2, 2)
	ctx := s.ctx

	// Analyser 3: dead letters, scheduled tasks, and a pool holding two
	// slow tasks.
	errs := []string{
		`postgres: insert order_events: ERROR: duplicate key value violates unique constraint "order_events_pkey" (SQLSTATE 23505)`,
		"inventory: reserve sku A-2291: context deadline exceeded (after 30s)",
		`decode event: invalid character 'x' looking for beginning of value`,
		"carrier API: 503 Service Unavailable",
	}
	for i, e := range errs {
		order := s.orderOf(3, 40+i)
		s.add(order, fmt.Sprintf(`{"order":%d,"event":"%s"}`, order, []string{"created", "reserved", "paid", "shipped"}[i]))
		s.drain(3, "analyser-b:5120", func(context.Context, queue.Task) error { return errors.New(e) })
	}
	for i := range 2 {
		s.schedule(s.orderOf(3, 60+i), time.Now().Add(time.Duration(5+20*i)*time.Minute),
			fmt.Sprintf(`{"order":%d,"event":"remind","channel":"email"}`, s.orderOf(3, 60+i)))
	}
	for i := range 2 {
		s.add(s.orderOf(3, 80+i), fmt.Sprintf(`{"order":%d,"event":"packed","sku":"B-%04d","qty":%d}`, s.orderOf(3, 80+i), 1000+37*i, i+1))
	}
	s.hold(3, "analyser-b:5120", 2)

	// Analyser 2: paused, with a backlog.
	require.NoError(t, s.q.Pause(ctx, queue.QueueOf(2)))
	var backlog []queue.Task
	for i := range 1284 {
		backlog = append(backlog, queue.Task{OrderID: s.orderOf(2, i%97), Payload: []byte(`{"event":"imported"}`)})
	}
	_, err := s.q.AddTasks(ctx, backlog)
	require.NoError(t, err)

	// Analysers 0 and 1: a producer and two pools at work, so that the
	// rate charts have something to draw.
	work := func(ctx context.Context, t queue.Task) error {
		select {
		case <-time.After(15 * time.Millisecond):
		case <-ctx.Done():
		}
		if strings.HasSuffix(string(t.Payload), `"bad"}`) {
			return fmt.Errorf("validate order %d: unknown customer", t.OrderID)
		}
		return nil
	}
	s.runPool(0, queue.PoolConfig{Workers: 4, Prefetch: 8, Rate: 30, MaxAttempts: 2, Owner: "analyser-a:4211"}, work)
	s.runPool(1, queue.PoolConfig{Workers: 4, Prefetch: 8, Rate: 18, MaxAttempts: 2, Owner: "analyser-b:5120"}, work)
	produce(t, s)

	d := s.serve(token, "-sample", "1s", "-window", "15s")
	// Let the sampler gather a chart's worth, while the pools go on.
	time.Sleep(16 * time.Second)
	p := s.open(d)
	p.do(chromedp.EmulateViewport(1280, 800))

	// The overview as anyone sees it; signed in, a column of Pause
	// buttons makes it wider than 1280 pixels.
	p.visit("")
	p.waitFor(`document.querySelectorAll('#overview svg.spark').length >= 4`, 10*time.Second, "the rate charts")
	shoot(t, p, "dashboard-overview.png")

	// The queue page, signed in: with its buttons.
	p.signIn(token)
	p.visit("queue/3")
	require.Equal(t, 4, p.count("table#dead tbody tr"))
	shoot(t, p, "dashboard-queue.png")
}

// produce adds tasks to analysers 0 and 1 at a steady pace until the
// test ends.
func produce(t *testing.T, s *setup) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			event := "shipped"
			if n%40 == 7 {
				event = "bad"
			}
			for _, a := range []int{0, 0, 1} {
				order := s.orderOf(a, n%50)
				if _, err := s.q.AddTask(ctx, order, fmt.Appendf(nil, `{"order":%d,"event":"%s"}`, order, event)); err != nil && ctx.Err() == nil {
					t.Errorf("add: %v", err)
					return
				}
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
}

// shoot saves the visible part of the page (1280 by 800) as docs/name.
func shoot(t *testing.T, p *page, name string) {
	t.Helper()
	buf, err := chromedp.Run(p.ctx, chromedp.CaptureScreenshot())
	require.NoError(t, err)
	img, err := png.Decode(strings.NewReader(string(buf)))
	require.NoError(t, err, "a PNG")
	assert.Equal(t, image.Pt(1280, 800), img.Bounds().Size())
	path := filepath.Join(docsDir, name)
	require.NoError(t, os.WriteFile(path, buf, 0o644))
	t.Logf("wrote %s (%d bytes, %v)", path, len(buf), img.Bounds().Size())
}
