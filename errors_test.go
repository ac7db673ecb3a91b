package queue

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
)

// nilDerefError is an error type whose Error reads its receiver: returned
// as a nil *nilDerefError (the typed nil of "var e *nilDerefError;
// return e"), its Error panics.
type nilDerefError struct{ msg string }

func (e *nilDerefError) Error() string { return e.msg }

// boomError is an error whose Error panics.
type boomError struct{}

func (boomError) Error() string { panic("boom in Error") }

// wrapError is an error type with an Unwrap that, as its Error, reads its
// receiver: a nil *wrapError panics in both.
type wrapError struct{ err error }

func (e *wrapError) Error() string { return "wrapped: " + e.err.Error() }

func (e *wrapError) Unwrap() error { return e.err }

// badUnwrapError's Error works, its Unwrap panics.
type badUnwrapError struct{}

func (badUnwrapError) Error() string { return "fine text" }

func (badUnwrapError) Unwrap() error { panic("boom in Unwrap") }

// nilPanicError's Error panics with nil.
type nilPanicError struct{}

func (nilPanicError) Error() string { panic(nil) }

// TestCallerErr pins what a caller's error becomes before the package turns
// it into text or walks its chain.
func TestCallerErr(t *testing.T) {
	t.Parallel()
	plain := errors.New("plain")
	wrapped := fmt.Errorf("wrapped: %w", plain)
	var typedNil *nilDerefError
	var nilWrap *wrapError
	tests := []struct {
		name    string
		in      error
		same    bool   // returned as it is
		text    string // else the text
		reaches bool   // else: the original is reachable by errors.Is
	}{
		{name: "nil", in: nil, same: true},
		{name: "plain", in: plain, same: true},
		{name: "wrapped", in: wrapped, same: true},
		{name: "a non-nil pointer", in: &nilDerefError{msg: "set"}, same: true},
		{name: "typed nil", in: typedNil, reaches: true,
			text: "queue: error of type *queue.nilDerefError (a nil pointer): its Error method panicked: runtime error: invalid memory address or nil pointer dereference"},
		{name: "Error panics", in: boomError{}, reaches: true,
			text: "queue: error of type queue.boomError: its Error method panicked: boom in Error"},
		{name: "Error panics with nil", in: nilPanicError{}, reaches: true,
			text: "queue: error of type queue.nilPanicError: its Error method panicked: panic called with nil argument"},
		{name: "Unwrap panics", in: badUnwrapError{}, text: "fine text"},
		{name: "typed nil, Unwrap panics too", in: nilWrap,
			text: "queue: error of type *queue.wrapError (a nil pointer): its Error method panicked: runtime error: invalid memory address or nil pointer dereference"},
	}
	for _, tt := range tests {
		got := callerErr(tt.in)
		if tt.same {
			assert.Equal(t, tt.in, got, tt.name)
			continue
		}
		var ce *callerError
		if !assert.ErrorAs(t, got, &ce, tt.name) {
			continue
		}
		assert.Equal(t, tt.text, got.Error(), tt.name)
		assert.False(t, errors.Is(got, ErrLeaseLost), tt.name) // the walk does not panic
		assert.Equal(t, tt.reaches, errors.Is(got, tt.in), tt.name)
		te := &TaskError{ID: "x", Err: got}
		assert.Contains(t, te.Error(), tt.text, tt.name)
	}
	var ne *nilDerefError
	assert.ErrorAs(t, callerErr(typedNil), &ne, "errors.As finds the typed nil")
}
