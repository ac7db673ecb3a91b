package queue

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faultProxy forwards TCP connections from a loopback port to a Redis
// server. It can reset every open connection, and cut the reply to a
// matching command in half (forward part of it, then close), so that Redis
// has run the command and the client never learns the result.
type faultProxy struct {
	t      testing.TB
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	pairs map[*proxyPair]struct{}

	cutMu  sync.Mutex
	cutSub []byte // a client write containing this arms a cut of the reply
	cutMin int    // only replies of at least this many bytes are cut
	cutsLe int    // cuts left to make

	resets atomic.Int64 // connections reset
	cuts   atomic.Int64 // replies cut
	quota  atomic.Int64 // bytes a connection carries either way before it is cut (0: no bound)
	spent  atomic.Int64 // connections cut at their quota
	down   atomic.Bool  // Redis is "unreachable": new connections are reset at once

	held sync.RWMutex // write-locked while what servers send is held back (holdReplies)
}

// proxyPair is one proxied connection.
type proxyPair struct {
	client, server net.Conn
	armed          atomic.Bool // the next reply is to be cut
	carried        int64       // bytes of replies forwarded (pumpDown's)
	sent           int64       // bytes of commands forwarded (pumpUp's)
	once           sync.Once
}

// close closes both ends; with reset, the client gets a TCP RST.
func (pp *proxyPair) close(reset bool) {
	pp.once.Do(func() {
		if reset {
			if tc, ok := pp.client.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
		}
		pp.client.Close()
		pp.server.Close()
	})
}

// startProxy starts a proxy to target ("host:port") and stops it, closing
// every connection, at the end of the test.
func startProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &faultProxy{t: t, ln: ln, target: target, pairs: map[*proxyPair]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr returns the proxy's listening address.
func (p *faultProxy) Addr() string { return p.ln.Addr().String() }

func (p *faultProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.down.Load() {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
			continue
		}
		s, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		pp := &proxyPair{client: c, server: s}
		p.mu.Lock()
		p.pairs[pp] = struct{}{}
		p.mu.Unlock()
		// An outage may have begun since the check above, its resets
		// missing this pair: the check again, after it is registered,
		// closes that gap (setDown sets down before it resets).
		p.wg.Add(2)
		if p.down.Load() {
			pp.close(true)
		}
		go p.pumpUp(pp)
		go p.pumpDown(pp)
	}
}

func (p *faultProxy) forget(pp *proxyPair) {
	p.mu.Lock()
	delete(p.pairs, pp)
	p.mu.Unlock()
}

// pumpUp copies client to server, arming a cut when a write matches.
func (p *faultProxy) pumpUp(pp *proxyPair) {
	defer p.wg.Done()
	defer pp.close(false)
	buf := make([]byte, 64<<10)
	for {
		n, err := pp.client.Read(buf)
		if n > 0 {
			if p.down.Load() {
				pp.close(true)
				return
			}
			p.cutMu.Lock()
			if p.cutsLe > 0 && len(p.cutSub) > 0 && bytes.Contains(buf[:n], p.cutSub) {
				pp.armed.Store(true)
			}
			p.cutMu.Unlock()
			if q := p.quota.Load(); q > 0 && pp.sent+int64(n) > q {
				pp.server.Write(buf[:q-pp.sent])
				p.spent.Add(1)
				return // cut at its quota, in the middle of a command
			}
			pp.sent += int64(n)
			if _, werr := pp.server.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pumpDown copies server to client, cutting an armed reply in half.
func (p *faultProxy) pumpDown(pp *proxyPair) {
	defer p.wg.Done()
	defer p.forget(pp)
	defer pp.close(false)
	buf := make([]byte, 64<<10)
	for {
		n, err := pp.server.Read(buf)
		if n > 0 {
			if p.down.Load() {
				pp.close(true)
				return
			}
			if pp.armed.Swap(false) && p.takeCut(n) {
				pp.client.Write(buf[:n/2])
				p.cuts.Add(1)
				return // the deferred close ends the connection after half the reply
			}
			if q := p.quota.Load(); q > 0 && pp.carried+int64(n) > q {
				pp.client.Write(buf[:q-pp.carried])
				p.spent.Add(1)
				return // cut at its quota, in the middle of a reply
			}
			pp.carried += int64(n)
			p.held.RLock()
			_, werr := pp.client.Write(buf[:n])
			p.held.RUnlock()
			if werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// holdReplies holds back what the servers send until release is called
// (at the latest when the test ends): it is forwarded then, unless its
// connection was reset meanwhile, which loses it, as a link that fails
// before delivery does.
func (p *faultProxy) holdReplies() (release func()) {
	p.held.Lock()
	release = sync.OnceFunc(p.held.Unlock)
	p.t.Cleanup(release)
	return release
}

// takeCut reports whether a reply of n bytes is to be cut, counting it.
func (p *faultProxy) takeCut(n int) bool {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	if p.cutsLe <= 0 || n < p.cutMin {
		return false
	}
	p.cutsLe--
	return true
}

// cutReplies arms n cuts: the reply to the next client write containing
// sub, when it is at least minLen bytes, is cut in half.
func (p *faultProxy) cutReplies(sub string, n, minLen int) {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	p.cutSub, p.cutsLe, p.cutMin = []byte(sub), n, minLen
}

// cutsLeft returns how many armed cuts have not happened yet.
func (p *faultProxy) cutsLeft() int {
	p.cutMu.Lock()
	defer p.cutMu.Unlock()
	return p.cutsLe
}

// limitLink cuts every connection, new or open, once it has carried
// quota bytes of commands or of replies, in the middle of the one that
// passes it (0: no bound): a link that drops long exchanges, on which no
// command or reply longer than quota ever arrives.
func (p *faultProxy) limitLink(quota int64) { p.quota.Store(quota) }

// resetAll resets every open connection and returns how many it reset.
func (p *faultProxy) resetAll() int {
	p.mu.Lock()
	pairs := make([]*proxyPair, 0, len(p.pairs))
	for pp := range p.pairs {
		pairs = append(pairs, pp)
	}
	p.mu.Unlock()
	for _, pp := range pairs {
		pp.close(true)
	}
	p.resets.Add(int64(len(pairs)))
	return len(pairs)
}

// setDown makes Redis unreachable through the proxy (every connection
// reset, new ones too) or reachable again: an outage without restarting the
// server behind it. The outage begins for every connection at once: the
// resets take their turn, but from the moment down is set nothing more is
// forwarded either way, so no call is answered on a connection whose reset
// is still to come.
func (p *faultProxy) setDown(down bool) {
	p.down.Store(down)
	if down {
		p.resetAll()
	}
}

func (p *faultProxy) close() {
	p.ln.Close()
	p.resetAll()
	p.wg.Wait()
}

func TestFaultProxyResetAndCut(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode: the proxy is exercised by the fault suite")
	}
	// The proxy is tested against a fake server that answers every write
	// with a fixed reply, so it needs no Redis.
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var srvWG sync.WaitGroup
	srvWG.Add(1)
	go func() {
		defer srvWG.Done()
		var connWG sync.WaitGroup
		defer connWG.Wait()
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			connWG.Add(1)
			go func() {
				defer connWG.Done()
				defer c.Close()
				buf := make([]byte, 1024)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
					// A RESP bulk string of 40 bytes.
					if _, err := c.Write([]byte("$40\r\n0123456789012345678901234567890123456789\r\n")); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { srv.Close(); srvWG.Wait() })
	p := startProxy(t, srv.Addr().String())

	dial := func() redis.Conn {
		c, err := redis.Dial("tcp", p.Addr(), redis.DialReadTimeout(2*time.Second))
		require.NoError(t, err)
		return c
	}
	c := dial()
	defer c.Close()
	v, err := redis.String(c.Do("GET", "a"))
	require.NoError(t, err)
	assert.Len(t, v, 40)

	// A cut reply reaches the client in part, then the connection ends.
	p.cutReplies("MARK", 1, 10)
	_, err = c.Do("GET", "MARK")
	require.Error(t, err)
	assert.EqualValues(t, 1, p.cuts.Load())
	assert.Zero(t, p.cutsLeft())

	// A reset ends every open connection.
	c2 := dial()
	defer c2.Close()
	_, err = c2.Do("GET", "MARK") // no cuts left: answered in full
	require.NoError(t, err)
	assert.Eventually(t, func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.pairs) == 1
	}, 2*time.Second, 5*time.Millisecond)
	assert.Equal(t, 1, p.resetAll())
	_, err = c2.Do("GET", "b")
	assert.Error(t, err, "a reset connection must fail")

	// Down: nothing goes through, on a new connection either; up again:
	// calls are answered.
	p.setDown(true)
	if c3, err := redis.Dial("tcp", p.Addr(), redis.DialReadTimeout(2*time.Second)); err == nil {
		_, err = c3.Do("GET", "c")
		assert.Error(t, err, "no answer while down")
		c3.Close()
	}
	p.setDown(false)
	c4 := dial()
	defer c4.Close()
	_, err = c4.Do("GET", "d")
	assert.NoError(t, err)
}
