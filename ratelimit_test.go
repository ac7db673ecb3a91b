package queue

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// t0 is the made-up clock's start in the limiter tests.
var t0 = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// maxOverBurst returns, over every span between two starts of sorted
// (both included), the most starts beyond what rate allows for its
// length: at most burst if the limit holds.
func maxOverBurst(sorted []time.Time, rate float64) float64 {
	worst, low := math.Inf(-1), math.Inf(1)
	for j, at := range sorted {
		f := float64(j) - at.Sub(t0).Seconds()*rate
		low = min(low, f) // the span starting at j itself holds one start
		worst = max(worst, f-low+1)
	}
	return worst
}

func TestLimiterBurstAfterIdle(t *testing.T) {
	t.Parallel()
	l := newLimiter(10, 5, t0)
	// Full at the start: Burst at once, then one every 100ms.
	for i := range 5 {
		assert.Equal(t, t0, l.reserve(t0), "token %d", i)
	}
	assert.Equal(t, t0.Add(100*time.Millisecond), l.reserve(t0))
	assert.Equal(t, t0.Add(200*time.Millisecond), l.reserve(t0))
	// A long idle spell refills the bucket to Burst, no more.
	now := t0.Add(time.Hour)
	for i := range 5 {
		assert.Equal(t, now, l.reserve(now), "token %d after an hour", i)
	}
	assert.Equal(t, now.Add(100*time.Millisecond), l.reserve(now))
	// 250ms idle after the debt is paid: 2.5 tokens, so two at once and the
	// third when the half token is whole.
	now = now.Add(100*time.Millisecond + 250*time.Millisecond)
	assert.Equal(t, now, l.reserve(now))
	assert.Equal(t, now, l.reserve(now))
	assert.Equal(t, now.Add(50*time.Millisecond), l.reserve(now))
}

// Takers that each start their task when its token is due, waking late
// by up to 1.5/rate, and run it in 50µs, with the whole process stalled
// once midway: while several takers hold reservations, a late one does
// not push the schedule back, and a stall is made up for, up to Burst
// tokens and the takers' reservations ahead; only a longer one is lost.
func TestLimiterLongRunRate(t *testing.T) {
	t.Parallel()
	const rate, n = 200.0, 4000
	perToken := time.Duration(float64(time.Second) / rate)
	for _, tc := range []struct {
		takers, burst int
		stall         time.Duration
		lost          time.Duration // at least this much of the stall is lost
	}{
		{2, 1, 0, 0},
		{8, 1, 0, 0},
		{8, 1, 25 * time.Millisecond, 0},   // under the reservations ahead, 7/rate
		{8, 20, 110 * time.Millisecond, 0}, // under (20+7)/rate
		{8, 1, 500 * time.Millisecond, 400 * time.Millisecond},
		{8, 20, 500 * time.Millisecond, 300 * time.Millisecond},
	} {
		name := fmt.Sprintf("takers=%d/burst=%d/stall=%v", tc.takers, tc.burst, tc.stall)
		l := newLimiter(rate, tc.burst, t0)
		rng := rand.New(rand.NewPCG(1, uint64(tc.takers)))
		stallFrom := t0.Add(n / 2 * perToken)
		stallTo := stallFrom.Add(tc.stall)
		// past returns at, or the stall's end when at falls in it.
		past := func(at time.Time) time.Time {
			if !at.Before(stallFrom) && at.Before(stallTo) {
				return stallTo
			}
			return at
		}
		wakes := make([]time.Time, tc.takers) // when each taker next asks
		for i := range wakes {
			wakes[i] = t0
		}
		starts := make([]time.Time, 0, n)
		for len(starts) < n {
			i := 0 // the taker that asks first
			for j := range wakes {
				if wakes[j].Before(wakes[i]) {
					i = j
				}
			}
			at := l.reserve(wakes[i])
			require.False(t, at.Before(wakes[i]), "%s: a token dated before it was asked for", name)
			start := past(at).Add(time.Duration(rng.Float64() * 1.5 * float64(perToken))) // a late wake-up
			starts = append(starts, start)
			wakes[i] = past(start.Add(50 * time.Microsecond)) // the task's run
		}
		slices.SortFunc(starts, time.Time.Compare)
		// The first Burst start at once, then one every 1/rate.
		want := time.Duration(n-tc.burst) * perToken
		got := starts[n-1].Sub(starts[0])
		if tc.lost == 0 {
			assert.InDelta(t, want, got, float64(2*perToken), "%s: the drain's length", name)
		} else {
			assert.Greater(t, got, want+tc.lost, "%s: the drain's length", name)
		}
	}
}

// Takers on many goroutines, each asking at a time of a shared made-up
// clock that moves on as they go: the tokens' times never give more than
// Burst + T*Rate in any span T, and none is before its request.
func TestLimiterConcurrentTakers(t *testing.T) {
	t.Parallel()
	for _, burst := range []int{1, 7} {
		const rate, goroutines, each = 1000.0, 16, 500
		l := newLimiter(rate, burst, t0)
		var clock atomic.Int64 // ns since t0
		var mu sync.Mutex
		var ats []time.Time
		var early atomic.Int64
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 2))
				mine := make([]time.Time, 0, each)
				for range each {
					now := t0.Add(time.Duration(clock.Add(rng.Int64N(int64(ms(0.2))))))
					at := l.reserve(now)
					if at.Before(now) {
						early.Add(1)
					}
					mine = append(mine, at)
				}
				mu.Lock()
				ats = append(ats, mine...)
				mu.Unlock()
			})
		}
		wg.Wait()
		require.Len(t, ats, goroutines*each)
		assert.Zero(t, early.Load(), "burst %d: tokens dated before their request", burst)
		slices.SortFunc(ats, time.Time.Compare)
		assert.LessOrEqual(t, maxOverBurst(ats, rate), float64(burst)+1e-3, "burst %d", burst)
		// Asked for faster than the limit, the tokens came at the limit.
		got := float64(len(ats)-1) / ats[len(ats)-1].Sub(ats[0]).Seconds()
		assert.InEpsilon(t, rate, got, 0.01, "burst %d", burst)
	}
}

// A session that ends leaves its workers' reservations behind; the next
// tenure's first start waits for one token, not for all of them.
func TestLimiterForgetsReservations(t *testing.T) {
	t.Parallel()
	l := newLimiter(1, 1, t0)
	assert.Equal(t, t0, l.reserve(t0))
	for i := 1; i <= 8; i++ { // eight workers waiting, the last for 8s
		assert.Equal(t, t0.Add(time.Duration(i)*time.Second), l.reserve(t0))
	}
	now := t0.Add(100 * time.Millisecond)
	l.forget(now)
	assert.Equal(t, now.Add(time.Second), l.reserve(now), "the forgotten debt still delays")
	// With no debt, forget keeps the tokens.
	l = newLimiter(1, 3, t0)
	l.reserve(t0)
	l.forget(t0.Add(500 * time.Millisecond))
	now = t0.Add(500 * time.Millisecond)
	assert.Equal(t, now, l.reserve(now))
	assert.Equal(t, now, l.reserve(now))
	assert.Equal(t, now.Add(500*time.Millisecond), l.reserve(now))
}

func TestPoolConfigRate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		rate        float64
		burst       int
		wantBurst   int
		wantBadConf bool
	}{
		{"no limit", 0, 0, 0, false},
		{"burst defaults to 1", 50, 0, 1, false},
		{"burst kept", 50, 20, 20, false},
		{"one a day", minRate, 0, 1, false},
		{"a million a second", maxRate, maxBurst, maxBurst, false},
		{"negative rate", -1, 0, 0, true},
		{"NaN rate", math.NaN(), 0, 0, true},
		{"infinite rate", math.Inf(1), 0, 0, true},
		{"under one a day", minRate / 2, 0, 0, true},
		{"over a million", 2e6, 0, 0, true},
		{"negative burst", 50, -1, 0, true},
		{"huge burst", 50, maxBurst + 1, 0, true},
		{"burst without rate", 0, 10, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PoolConfig{Rate: tc.rate, Burst: tc.burst}.withDefaults()
			if tc.wantBadConf {
				assert.ErrorIs(t, err, ErrBadConfig)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantBurst, got.Burst)
		})
	}
}

// A token given back (its task cancelled before its time) makes the next
// reservation come sooner, the ones already made keep their times, and
// the bucket never holds more than Burst.
func TestLimiterUnreserve(t *testing.T) {
	t.Parallel()
	l := newLimiter(10, 2, t0)
	assert.Equal(t, t0, l.reserve(t0))
	assert.Equal(t, t0, l.reserve(t0))
	assert.Equal(t, t0.Add(100*time.Millisecond), l.reserve(t0))
	assert.Equal(t, t0.Add(200*time.Millisecond), l.reserve(t0))
	l.unreserve(t0) // the 200ms one is not used
	assert.Equal(t, t0.Add(200*time.Millisecond), l.reserve(t0), "the next one takes the time given back")
	l.unreserve(t0)
	l.unreserve(t0)
	l.unreserve(t0)
	l.unreserve(t0) // more than were taken: the bucket holds Burst at most
	assert.Equal(t, t0, l.reserve(t0))
	assert.Equal(t, t0, l.reserve(t0))
	assert.Equal(t, t0.Add(100*time.Millisecond), l.reserve(t0))
}
