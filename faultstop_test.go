package queue

import (
	"bytes"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/stretchr/testify/require"
)

// Freezing a child of the fault suite: SIGSTOP, then SIGCONT, each
// recorded as a harness event for the checker, which cuts stopped time
// out of the runs.

// stop freezes c with SIGSTOP and records it once the process is stopped.
func (e *faultEnv) stop(c *child) {
	e.t.Helper()
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGSTOP))
	require.Eventually(e.t, func() bool { return procState(c.pid()) == 'T' }, 5*time.Second, time.Millisecond)
	e.event(faultEvent{Ev: evStop, Pid: c.pid()})
}

// cont resumes c with SIGCONT, recording it first.
func (e *faultEnv) cont(c *child) {
	e.t.Helper()
	e.event(faultEvent{Ev: evCont, Pid: c.pid()})
	require.NoError(e.t, c.cmd.Process.Signal(syscall.SIGCONT))
}

// procState returns the state letter of process pid ('T' when stopped).
func procState(pid int) byte {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}
