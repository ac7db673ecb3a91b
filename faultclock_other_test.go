//go:build !linux

package queue

// hostMono: no clock shared by the host's processes is read here; the
// suite's clock falls back to each process's wall clock at its anchor.
func hostMono() (int64, bool) { return 0, false }
