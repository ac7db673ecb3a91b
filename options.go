package queue

import (
	"maps"
	"time"
)

// AddOption sets an optional property of a task added with AddTask or
// AddTaskOnce. Calls without options cost nothing more.
type AddOption func(*addOptions)

// addOptions holds what AddOptions set.
type addOptions struct {
	headers map[string]string // the task's headers; nil for none
	at      time.Time         // when the task is due (At); zero: now
}

// newAddOptions applies opts (nil ones are skipped) in order. Callers
// call it only when given options: o escapes through the calls, and so
// costs an allocation.
func newAddOptions(opts []AddOption) addOptions {
	var o addOptions
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	return o
}

// WithHeaders gives the task the headers h (see Task.Headers for what is
// stored and the limits, which AddTask checks before it writes anything).
// Several WithHeaders add up; for a key given twice the later value wins.
// The map is read when the task is added, and neither kept nor changed.
func WithHeaders(h map[string]string) AddOption {
	return func(o *addOptions) {
		switch {
		case len(h) == 0:
		case o.headers == nil:
			o.headers = h
		default:
			m := make(map[string]string, len(o.headers)+len(h))
			maps.Copy(m, o.headers)
			maps.Copy(m, h)
			o.headers = m
		}
	}
}
