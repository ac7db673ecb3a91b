package queue

import (
	"syscall"
	"unsafe"
)

// hostMono reads the host's CLOCK_MONOTONIC, which every process on the
// host reads alike and which no change of the wall clock moves.
func hostMono() (int64, bool) {
	var ts syscall.Timespec
	const clockMonotonic = 1
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockMonotonic, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		return 0, false
	}
	return ts.Nano(), true
}
