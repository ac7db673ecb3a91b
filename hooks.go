package queue

import "time"

// The caller's hooks (OnError, Backoff, OnAssign, and OnDone on the path
// of a delivery that called runtime.Goexit) run where a runtime.Goexit in
// one ends no goroutine of the pool: a test's require inside a hook calls
// it (t.FailNow). A goroutine the pool needs that ended there would leave
// its work undone for good, such as a task never settled, its OrderID held.
// A panic in a hook is not recovered: it ends the process, as a panic on
// any goroutine does, and the guarantees are those after a crash.

// callHook runs f, a call of the caller's hooks off the hot path, on a
// goroutine of its own and waits for it, whether f returns or calls
// runtime.Goexit.
func callHook(f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	<-done
}

// hookBackoff is a caller's Backoff called through callHook: one that
// calls runtime.Goexit gives the default wait.
func hookBackoff(backoff func(int) time.Duration) func(int) time.Duration {
	return func(attempt int) time.Duration {
		d := defaultBackoff(attempt)
		callHook(func() { d = backoff(attempt) })
		return d
	}
}
