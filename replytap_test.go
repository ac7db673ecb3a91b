package queue

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// streamConn is a net.Conn whose reads come from r and whose writes go
// nowhere: a server that has already answered.
type streamConn struct {
	r io.Reader
}

func (c *streamConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)        { return len(p), nil }
func (c *streamConn) Close() error                       { return nil }
func (c *streamConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *streamConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (c *streamConn) SetDeadline(time.Time) error        { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error    { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error   { return nil }
func (c *streamConn) SetReadBufferSize(bytes int) error  { return nil }
func (c *streamConn) SetWriteBufferSize(bytes int) error { return nil }

// tapStream returns a redigo connection reading stream, through a
// bufferedReader of bufSize bytes over reads of at most one byte when
// slow, and that reader.
func tapStream(stream []byte, bufSize int, slow bool) (redis.Conn, *bufferedReader) {
	var r io.Reader = bytes.NewReader(stream)
	if slow {
		r = iotest.OneByteReader(r)
	}
	tcp := &bufferedReader{Conn: &streamConn{r: r}, r: bufio.NewReaderSize(r, bufSize)}
	return redis.NewConn(tcp, time.Second, time.Second), tcp
}

// bulkArray is the RESP of an array of bulk strings.
func bulkArray(es ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(es))
	for _, e := range es {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(e), e)
	}
	return b.String()
}

func TestAppendReplyIsTheReplyByteForByte(t *testing.T) {
	replies := []string{
		"+OK\r\n",
		"-ERR no such key\r\n",
		":-42\r\n",
		"$-1\r\n",
		"$0\r\n\r\n",
		"$5\r\na\r\nbc\r\n", // CRLF inside the bulk string
		"*-1\r\n",
		"*0\r\n",
		"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n*0\r\n$3\r\nend\r\n",
		"+" + strings.Repeat("long status ", 40) + "\r\n", // longer than the buffer
		bulkArray(strings.Repeat("y", 100), "", "z"),
	}
	stream := strings.Join(replies, "")
	for _, slow := range []bool{false, true} {
		r := bufio.NewReaderSize(iotestReader(stream, slow), 16)
		for _, want := range replies {
			got, err := appendReply(r, nil)
			require.NoError(t, err)
			assert.Equal(t, want, string(got))
		}
		_, err := appendReply(r, nil)
		assert.ErrorIs(t, err, io.EOF)
	}
}

func iotestReader(s string, slow bool) io.Reader {
	if slow {
		return iotest.OneByteReader(strings.NewReader(s))
	}
	return strings.NewReader(s)
}

func TestAppendReplyRefusesWhatIsNoReply(t *testing.T) {
	for _, bad := range []string{"?what\r\n", "$x\r\n", "*12345678901\r\n", "$\r\n", "+OK\n", "$3\r\nab"} {
		_, err := appendReply(bufio.NewReader(strings.NewReader(bad)), nil)
		assert.Error(t, err, "%q", bad)
	}
}

func TestTapTakesTheReplyAfterTheSkippedOnes(t *testing.T) {
	entries := []string{"first", strings.Repeat("b", tapChunk/4+1), "", strings.Repeat("c", 300), "\r\n$3\r\n"}
	for _, skip := range []int{0, 1, 3} {
		for _, slow := range []bool{false, true} {
			for _, bufSize := range []int{16, 64, readBuffer} {
				t.Run(fmt.Sprintf("skip=%d/slow=%v/buf=%d", skip, slow, bufSize), func(t *testing.T) {
					before := []string{"*3\r\n:-3\r\n:12\r\n$2\r\nok\r\n", "-NOSCRIPT no script\r\n", bulkArray("not", "this")}[:skip]
					after := []string{":7\r\n", bulkArray("after")}
					stream := strings.Join(before, "") + bulkArray(entries...) + strings.Join(after, "")
					c, tcp := tapStream([]byte(stream), bufSize, slow)
					tap := (&tapHolder{conn: tcp}).arm(skip, tapChunk, nil)
					for i := range before {
						v, err := c.Receive()
						if i == 1 {
							assert.Equal(t, redis.Error("NOSCRIPT no script"), err)
							continue
						}
						require.NoError(t, err)
						assert.NotNil(t, v)
					}
					got, err := tap.entriesOf(c.Receive())
					require.NoError(t, err)
					require.Len(t, got, len(entries))
					for i, e := range entries {
						assert.Equal(t, e, string(got[i]))
					}
					assert.True(t, tap.taken)
					assert.Nil(t, tcp.tap, "the tap is done with the stream")
					// Each entry is its own: appending to one does not
					// touch the next in its chunk.
					_ = append(got[0], 'X')
					assert.Equal(t, entries[1], string(got[1]))
					n, err := redis.Int(c.Receive())
					require.NoError(t, err)
					assert.Equal(t, 7, n)
					vs, err := redis.Strings(c.Receive())
					require.NoError(t, err)
					assert.Equal(t, []string{"after"}, vs)
				})
			}
		}
	}
}

func TestTapHandsOverAReplyThatIsNoArray(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  any
	}{
		{"-WRONGTYPE not a list\r\n", redis.Error("WRONGTYPE not a list")},
		{"*-1\r\n", nil},
		{":3\r\n", int64(3)},
	} {
		c, tcp := tapStream([]byte(tc.reply+"+OK\r\n"), 64, false)
		tap := (&tapHolder{conn: tcp}).arm(0, tapChunk, nil)
		v, err := c.Receive()
		if e, ok := tc.want.(redis.Error); ok {
			assert.Equal(t, e, err)
		} else {
			require.NoError(t, err)
			assert.Equal(t, tc.want, v)
		}
		assert.False(t, tap.taken, "%q", tc.reply)
		_, terr := tap.entriesOf(v, err)
		assert.Error(t, terr, "no entries from %q", tc.reply)
		s, err := redis.String(c.Receive())
		require.NoError(t, err)
		assert.Equal(t, "OK", s, "the stream goes on after %q", tc.reply)
	}
}

func TestTapRefusesAnArrayOfOtherThanBulkStrings(t *testing.T) {
	for _, bad := range []string{
		"*2\r\n$1\r\na\r\n:1\r\n",
		"*2\r\n$1\r\na\r\n$-1\r\n",
		"*2\r\n$1\r\na\r\n$3\r\nabcXY\r\n", // no CRLF after its bytes
		"*1\r\n$x\r\nabc\r\n",
		"*1\r\n$3\nabc\r\n",
	} {
		for _, bufSize := range []int{16, readBuffer} {
			c, tcp := tapStream([]byte(bad+"+OK\r\n"), bufSize, false)
			tap := (&tapHolder{conn: tcp}).arm(0, tapChunk, nil)
			_, err := tap.entriesOf(c.Receive())
			assert.Error(t, err, "%q", bad)
			assert.Error(t, c.Err(), "the connection is broken: its stream is lost")
		}
	}
}

// bulkIn reads only a bulk string whole and well formed in its buffer.
func TestBulkIn(t *testing.T) {
	for _, tc := range []struct {
		b        string
		size, at int
		ok       bool
	}{
		{"$3\r\nabc\r\n", 3, 4, true},
		{"$0\r\n\r\n$1", 0, 4, true},
		{"$12\r\n0123456789ab\r\n", 12, 5, true},
		{"$3\r\nabc\r", 0, 0, false}, // not whole
		{"$3\r\nab", 0, 0, false},
		{"$3\r", 0, 0, false},
		{"$-1\r\n", 0, 0, false},
		{"$\r\n\r\n", 0, 0, false},
		{"$3\r\nabcde", 0, 0, false},
		{":3\r\n", 0, 0, false},
		{"$99999999999\r\n", 0, 0, false},
	} {
		size, at, ok := bulkIn([]byte(tc.b))
		assert.Equal(t, tc.ok, ok, "%q", tc.b)
		if ok {
			assert.Equal(t, tc.size, size, "%q", tc.b)
			assert.Equal(t, tc.at, at, "%q", tc.b)
		}
	}
}

// A stream cut anywhere fails the read it cuts, and never yields a reply
// it does not hold whole.
func TestTapStreamCutAnywhere(t *testing.T) {
	head := "*5\r\n:-3\r\n:3\r\n:100\r\n:0\r\n:100\r\n"
	entries := bulkArray("one", "two", strings.Repeat("3", 50))
	tail := ":9\r\n*3\r\n$-1\r\n$1\r\n0\r\n$-1\r\n"
	stream := head + entries + tail
	for cut := 0; cut < len(stream); cut++ {
		c, tcp := tapStream([]byte(stream[:cut]), 16, cut%2 == 0)
		tap := (&tapHolder{conn: tcp}).arm(1, tapChunk, nil)
		_, err1 := c.Receive()
		es, err2 := tap.entriesOf(c.Receive())
		_, err3 := c.Receive()
		_, err4 := c.Receive()
		switch {
		case cut < len(head):
			assert.Error(t, err1, "cut at %d", cut)
		case cut < len(head)+len(entries):
			require.NoError(t, err1, "cut at %d", cut)
			assert.Error(t, err2, "cut at %d", cut)
			assert.Nil(t, es, "cut at %d", cut)
		default:
			require.NoError(t, err1, "cut at %d", cut)
			require.NoError(t, err2, "cut at %d", cut)
			assert.Len(t, es, 3)
			assert.Error(t, errors.Join(err3, err4), "cut at %d", cut)
		}
	}
}

// A claim through the pools tests use, as through Dial's, reads its
// entries through the tap; a drain of them still runs every task once, in
// order.
func TestClaimReadsItsEntriesThroughTheTap(t *testing.T) {
	if testOnCluster {
		t.Skip("a cluster's routed connections are read through redigo")
	}
	q, _ := newTestQueue(t, 1, Config{})
	ctx := context.Background()
	const n = 3000
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{OrderID: uint64(i % 7), Payload: []byte(fmt.Sprintf("payload %d", i))}
	}
	_, err := q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	before := tapsTaken.Load()
	var mu sync.Mutex
	last := map[uint64]int{}
	seen := 0
	err = q.AnalysePool(ctx, 0, PoolConfig{Workers: 4, ExitOnEmpty: true}, func(ctx context.Context, task Task) error {
		var i int
		_, err := fmt.Sscanf(string(task.Payload), "payload %d", &i)
		assert.NoError(t, err)
		assert.Equal(t, task.OrderID, uint64(i%7))
		mu.Lock()
		defer mu.Unlock()
		if p, ok := last[task.OrderID]; ok {
			assert.Greater(t, i, p, "OrderID %d in order", task.OrderID)
		}
		last[task.OrderID] = i
		seen++
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, n, seen)
	assert.Greater(t, tapsTaken.Load(), before, "claims read their entries through the tap")
}

// A pool reads a claim into chunks of at most MaxHeldBytes / MaxHeldTasks
// bytes: a held task keeps at most one such chunk besides its own bytes.
func TestHeldChunk(t *testing.T) {
	for _, tc := range []struct {
		cfg  PoolConfig
		want int
	}{
		{PoolConfig{Workers: 64}, 1024}, // 64 MiB over 16 x 4096 tasks
		{PoolConfig{Workers: 1}, 4096},  // 64 MiB over 16 x 1024 tasks
		{PoolConfig{Workers: 4, MaxHeldTasks: 1024}, tapChunk},
		{PoolConfig{Workers: 4, MaxHeldBytes: 1 << 20}, 64},
	} {
		cfg, err := tc.cfg.withDefaults()
		require.NoError(t, err)
		assert.Equal(t, tc.want, heldChunk(cfg), "%+v", tc.cfg)
	}
}

func TestTapChunks(t *testing.T) {
	es := make([]string, 3000)
	for i := range es {
		es[i] = strings.Repeat("e", 90)
	}
	es[7] = strings.Repeat("L", 300) // more than a quarter of 1 KiB: its own
	stream := []byte(bulkArray(es...))
	allocs := func(chunk int) float64 {
		return testing.AllocsPerRun(5, func() {
			c, tcp := tapStream(stream, readBuffer, false)
			tap := (&tapHolder{conn: tcp}).arm(0, chunk, nil)
			got, err := tap.entriesOf(c.Receive())
			if err != nil || len(got) != len(es) || string(got[7]) != es[7] || string(got[2999]) != es[2999] {
				t.Fatal("bad read", err, len(got))
			}
		})
	}
	shared, own := allocs(1024), allocs(0)
	assert.Less(t, shared, float64(3000*90/1024+50), "entries share 1 KiB chunks")
	assert.Greater(t, shared, float64(3000*90/1024), "at most 1 KiB a chunk")
	assert.GreaterOrEqual(t, own, float64(3000), "an allocation each")
}

// A WaitReplicas connection slips WAIT replies into the stream: a borrow
// never names one for a tap, dialled or taken idle.
func TestTapNeverOnWaitConn(t *testing.T) {
	skipOnCluster(t, "a pool of one server's connections")
	s := newTestServers(t, 1)[0]
	u, err := parseRedisURL(s.url)
	require.NoError(t, err)
	for _, wait := range []int{0, 1} {
		cfg := Config{WaitReplicas: wait}
		if wait > 0 {
			cfg.WaitTimeout = 10 * time.Millisecond
		}
		cfg, err := cfg.withDefaults()
		require.NoError(t, err)
		pool := newPool(u, cfg, nil)
		for _, how := range []string{"dialled", "idle"} {
			var h tapHolder
			c, err := pool.GetContext(withTapHolder(context.Background(), &h))
			require.NoError(t, err)
			_, err = c.Do("PING")
			require.NoError(t, err)
			require.NoError(t, c.Close())
			assert.Equal(t, wait == 0, h.conn != nil, "WaitReplicas %d, %s: tapped", wait, how)
		}
		pool.Close()
	}
}

// randReply returns a random RESP2 reply (nested arrays, nil bulk, nil
// array, errors, ints, bulk strings with CRLF inside, long lines).
func randReply(r *rand.Rand, depth int) string {
	switch k := r.Intn(9); {
	case k == 0:
		return "+" + strings.Repeat("s", r.Intn(3)*r.Intn(40000)) + "\r\n"
	case k == 1:
		return "-ERR " + strings.Repeat("e", r.Intn(100)) + "\r\n"
	case k == 2:
		return fmt.Sprintf(":%d\r\n", r.Int63()-r.Int63())
	case k == 3:
		return "$-1\r\n"
	case k == 4:
		return "*-1\r\n"
	case k == 5 || depth > 3:
		return respBulk(randBytes(r))
	default:
		n := r.Intn(6)
		var b strings.Builder
		fmt.Fprintf(&b, "*%d\r\n", n)
		for i := 0; i < n; i++ {
			b.WriteString(randReply(r, depth+1))
		}
		return b.String()
	}
}

func respBulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

func randBytes(r *rand.Rand) string {
	var n int
	switch r.Intn(4) {
	case 0:
		n = 0
	case 1:
		n = r.Intn(30)
	case 2:
		n = r.Intn(tapChunk)
	default:
		n = r.Intn(70000)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = "ab\r\n$*:-+\x00"[r.Intn(10)]
	}
	return string(b)
}

// The tap, against redigo's own parse of the same stream: every reply
// before and after the tapped one is the same, the tapped one's entries
// too, whatever the replies, buffer sizes and read sizes.
func TestTapAgainstRedigo(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for iter := 0; iter < 150; iter++ {
		skip := r.Intn(4)
		var before, after []string
		for i := 0; i < skip; i++ {
			before = append(before, randReply(r, 0))
		}
		var entries []string
		for i, n := 0, r.Intn(50); i < n; i++ {
			entries = append(entries, randBytes(r))
		}
		tapped := "*" + fmt.Sprint(len(entries)) + "\r\n"
		for _, e := range entries {
			tapped += respBulk(e)
		}
		for i, n := 0, r.Intn(3); i < n; i++ {
			after = append(after, randReply(r, 0))
		}
		stream := strings.Join(before, "") + tapped + strings.Join(after, "")
		bufSize := []int{16, 100, 4096, readBuffer}[r.Intn(4)]
		slow := r.Intn(4) == 0

		plain := redis.NewConn(&streamConn{r: bytes.NewReader([]byte(stream))}, time.Second, time.Second)
		c, tcp := tapStream([]byte(stream), bufSize, slow)
		chunk := []int{0, 64, 1024, tapChunk}[r.Intn(4)]
		tap := (&tapHolder{conn: tcp}).arm(skip, chunk, nil)
		for i := range before {
			wv, werr := plain.Receive()
			gv, gerr := c.Receive()
			require.Equal(t, werr, gerr, "iter %d reply %d", iter, i)
			require.Equal(t, wv, gv, "iter %d reply %d", iter, i)
		}
		wes, werr := bulkStrings(plain.Receive())
		ges, gerr := tap.entriesOf(c.Receive())
		require.NoError(t, werr)
		require.NoError(t, gerr, "iter %d", iter)
		require.True(t, tap.taken)
		require.Equal(t, len(wes), len(ges))
		for i := range wes {
			require.Equal(t, string(wes[i]), string(ges[i]), "iter %d entry %d", iter, i)
			require.Equal(t, len(ges[i]), cap(ges[i]), "entry capped")
		}
		for i := range after {
			wv, werr := plain.Receive()
			gv, gerr := c.Receive()
			require.Equal(t, werr, gerr, "iter %d after %d", iter, i)
			require.Equal(t, wv, gv, "iter %d after %d", iter, i)
		}
		require.Nil(t, tcp.tap)
	}
}

// A claim's read reuses the entry list the last claim emptied, and the
// list kept between claims holds no entry: it must not keep a task's
// chunk alive once the task is done.
func TestTapReusesTheEntryList(t *testing.T) {
	st := &store{tapChunk: tapChunk}
	assert.Nil(t, st.entryList(), "none before the first claim")
	read := func(es ...string) [][]byte {
		c, tcp := tapStream([]byte(bulkArray(es...)), 4096, false)
		entries, err := (&tapHolder{conn: tcp}).arm(0, st.tapChunk, st.entryList()).entriesOf(c.Receive())
		require.NoError(t, err)
		require.Len(t, entries, len(es))
		for i, e := range es {
			assert.Equal(t, e, string(entries[i]))
		}
		return entries
	}
	first := read("a", "bb", "ccc")
	st.doneWith(first)
	kept := st.entryList()
	require.Len(t, kept, 3)
	for _, e := range kept {
		assert.Nil(t, e, "the kept list holds no entry")
	}
	st.doneWith(kept)
	second := read("dd", "e")
	assert.Same(t, &first[0], &second[0], "the second read fills the first's list")
	assert.Nil(t, st.entryList(), "taken by the read")
	st.doneWith(second)
	third := read("f", "g", "h", "i", "j") // longer than the kept list
	assert.NotSame(t, &first[0], &third[0])
}
