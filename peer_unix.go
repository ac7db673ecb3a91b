//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package queue

import (
	"net"
	"syscall"
)

// peerClosed reports whether the server has closed c (or reset it, or sent
// bytes nobody asked for), without reading anything or waiting: it peeks
// at the socket. A connection that says nothing is taken to be alive.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	closed := false
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// Go's sockets are non-blocking: EAGAIN means nothing to read.
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		switch {
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		case err != nil: // reset
			closed = true
		default: // 0 bytes: the server's FIN; any byte: no reply is due on an idle connection
			closed = true
		}
		return true // done: never wait for the socket to become readable
	})
	return closed || err != nil
}
