package queue

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/gomodule/redigo/redis"
)

// topology is the kind of Redis a URL names.
type topology int

const (
	standalone topology = iota // one server: redis://, rediss://
	cluster                    // a Redis Cluster: redis+cluster://, rediss+cluster://
	sentinel                   // a primary watched by Sentinel: redis+sentinel://, rediss+sentinel://
)

// redisURL is what Dial reads from a URL.
type redisURL struct {
	topo           topology
	addr           string   // standalone: host:port
	addrs          []string // cluster: seed nodes; sentinel: the sentinels
	primary        string   // sentinel: the name the sentinels know the primary by
	tls            bool
	user, password string
	db             int
	// The sentinels' own credentials (sentinel_user, sentinel_password in
	// the query): none when unset, as sentinels often have none.
	sentinelUser, sentinelPassword string
}

// parseRedisURL reads a URL of one of the forms Dial takes (scheme in any
// case):
//
//	redis://[[user]:password@]host[:port][/db]          rediss:// for TLS
//	redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]
//	redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/primary[/db][?sentinel_user=u&sentinel_password=p]
//
// Its errors never quote the URL or any part of it: the URL may hold a
// password, and so may a piece of one that does not parse.
func parseRedisURL(raw string) (redisURL, error) {
	var r redisURL
	if !strings.Contains(raw, "://") { // host:port, as redis-cli takes it
		return r, errors.New("URL has no scheme: write redis://host:port (rediss:// for TLS, redis+cluster:// or redis+sentinel://)")
	}
	u, hosts, err := parseHostList(raw)
	if err != nil {
		return r, errors.New("URL does not parse")
	}
	scheme := strings.ToLower(u.Scheme) // url.Parse lowers it; be sure
	base, kind, _ := strings.Cut(scheme, "+")
	switch base {
	case "redis":
	case "rediss":
		r.tls = true
	default:
		return r, errors.New("URL is not redis://, rediss://, redis+cluster:// or redis+sentinel://")
	}
	defaultPort := "6379"
	switch kind {
	case "":
		if strings.Contains(scheme, "+") {
			return r, errors.New("URL is not redis://, rediss://, redis+cluster:// or redis+sentinel://")
		}
	case "cluster":
		r.topo = cluster
	case "sentinel":
		r.topo, defaultPort = sentinel, "26379"
	default:
		return r, errors.New("URL is not redis://, rediss://, redis+cluster:// or redis+sentinel://")
	}
	if u.Opaque != "" {
		return r, errors.New("URL has no host")
	}
	if strings.Contains(raw, "#") {
		// A Redis URL has no fragment: a '#' is a password's, not
		// percent-encoded, which cut the URL short where it stands.
		return r, errors.New("URL has a '#': percent-encode it (%23) in a password")
	}
	for _, h := range strings.Split(hosts, ",") {
		if strings.ContainsFunc(h, func(c rune) bool { return unicode.IsControl(c) || unicode.IsSpace(c) }) {
			// A name lookup would stop at a NUL, or fail far from here.
			return r, errors.New("URL's host has a control character or a space")
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil { // no port, or more than one ':' outside brackets
			host, port = h, defaultPort
			switch {
			case len(h) > 1 && h[0] == '[' && h[len(h)-1] == ']':
				host = h[1 : len(h)-1] // an IPv6 address; a lone bracket is refused below
			case strings.Contains(h, ":"):
				// redis://::1:6394 would be the host "::1:6394" on port
				// 6379, its port silently dropped.
				return r, errors.New("URL's host has a ':' outside brackets: write an IPv6 address in brackets, as in redis://[::1]:6379")
			}
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "" || strings.ContainsAny(host, "[]/@") {
			return r, errors.New("URL has a host or port that does not parse")
		}
		if host == "" {
			if r.topo != standalone {
				return r, errors.New("URL has an empty host in its list")
			}
			host = "localhost"
		}
		r.addrs = append(r.addrs, net.JoinHostPort(host, port))
	}
	if r.topo == standalone {
		if len(r.addrs) != 1 {
			return r, errors.New("URL names several hosts: use redis+cluster:// or redis+sentinel://")
		}
		r.addr, r.addrs = r.addrs[0], nil
	}
	if u.User != nil {
		pw, set := u.User.Password()
		r.user, r.password = u.User.Username(), pw
		if !set { // redis://secret@host, as redis-cli reads it
			r.user, r.password = "", r.user
		}
	}
	path := strings.TrimPrefix(u.Path, "/")
	if r.topo == sentinel {
		r.primary, path, _ = strings.Cut(path, "/")
		if r.primary == "" {
			return r, errors.New("URL names no primary: redis+sentinel://host:port/name")
		}
	}
	if path != "" {
		db, err := strconv.Atoi(path)
		if err != nil || db < 0 {
			return r, errors.New("URL's path is not a database number")
		}
		if r.topo == cluster && db != 0 {
			return r, errors.New("a Redis Cluster has database 0 only")
		}
		r.db = db
	}
	query, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return r, errors.New("URL's query does not parse")
	}
	for k := range query {
		switch {
		case r.topo == sentinel && (k == "sentinel_user" || k == "sentinel_password"):
		default:
			return r, errors.New("URL has an unknown query parameter (only redis+sentinel:// takes any: sentinel_user, sentinel_password)")
		}
	}
	r.sentinelUser, r.sentinelPassword = query.Get("sentinel_user"), query.Get("sentinel_password")
	return r, nil
}

// CheckURL reports whether Dial can read url, without contacting it. Its
// error wraps [ErrBadConfig], as Dial's does, and never quotes the URL or a
// piece of it.
func CheckURL(url string) error {
	if _, err := parseRedisURL(url); err != nil {
		return fmt.Errorf("%w: %w", ErrBadConfig, err)
	}
	return nil
}

// SplitURLs splits a comma-separated list of URLs, as the -redis flags of
// the commands take it, into one URL per partition. A piece without a
// scheme ("host:port") continues the host list of the URL before it, so
// "redis+cluster://a:7000,b:7001,redis://c:6379" is two URLs. Pieces are
// trimmed of spaces; an empty one is kept, for the caller to refuse.
func SplitURLs(list string) []string {
	var out []string
	for _, piece := range strings.Split(list, ",") {
		piece = strings.TrimSpace(piece)
		if len(out) > 0 && piece != "" && !strings.Contains(piece, "://") {
			out[len(out)-1] += "," + piece
			continue
		}
		out = append(out, piece)
	}
	return out
}

// parseHostList parses a URL whose host may be a comma-separated list of
// host[:port], which url.Parse does not take (it reads all after the last
// ':' as the port): the list is set aside, the rest parsed, and the list
// returned as it was written.
func parseHostList(raw string) (*url.URL, string, error) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		u, err := url.Parse(raw)
		return u, "", err
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority := rest[:end]
	userinfo, hosts := "", authority
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		userinfo, hosts = authority[:at+1], authority[at+1:]
	}
	u, err := url.Parse(scheme + "://" + userinfo + "h" + rest[end:])
	if err != nil {
		return nil, "", err
	}
	u.Host = ""
	return u, hosts, nil
}

// RedactURL returns a Redis URL as it may be shown in a log line or an
// error: without its user name and password. A URL that Dial would refuse
// is not shown at all: a password holding a '/', '?' or '#' that is not
// percent-encoded ends the URL's authority early, so that a piece of it
// would be shown as a host or a path. It is what this package's own
// errors do, for callers that name their servers too.
func RedactURL(raw string) string {
	u, hosts, err := parseHostList(raw)
	if err != nil || CheckURL(raw) != nil {
		return "(a URL that Dial refuses)"
	}
	u.User, u.Host = nil, hosts
	if q := u.Query(); q.Has("sentinel_password") || q.Has("sentinel_user") {
		for _, k := range []string{"sentinel_user", "sentinel_password"} {
			if q.Has(k) {
				q.Set(k, "redacted")
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

// idleCheck is how long a connection must have been idle before a borrow
// also PINGs it; a closed connection is found without it (peerClosed).
const idleCheck = time.Minute

// newPool makes the pool of one server for Dial. onDial, when set, is
// called with every new connection before it is used; an error fails the
// dial. With cfg.WaitReplicas, its connections wait for replicas after
// every write (waitConn); onDial's writes are covered by the next WAIT.
func newPool(u redisURL, cfg Config, onDial func(context.Context, redis.Conn) error) *redis.Pool {
	d := newServerDialer(cfg, u.tls, u.user, u.password, u.db, cfg.ReadTimeout)
	return poolOf(cfg, func(ctx context.Context) (*watchedConn, error) { return d.dial(ctx, u.addr) }, onDial, nil)
}

// serverDialer connects to Redis servers with a Config's timeouts and TLS
// settings, as one user.
type serverDialer struct {
	opts   []redis.DialOption
	dialer net.Dialer
	tls    bool // rediss://: the handshake's failures get a hint
	// wrap, when set, wraps every connection under its watchedConn: the
	// fault suite's recording connection.
	wrap func(redis.Conn) redis.Conn
}

// newServerDialer returns a dialer whose connections log in as user (the
// default user when empty) with password, select database db, and wait
// readTimeout for a reply.
func newServerDialer(cfg Config, useTLS bool, user, password string, db int, readTimeout time.Duration) *serverDialer {
	return &serverDialer{
		opts: []redis.DialOption{
			redis.DialReadTimeout(readTimeout),
			redis.DialWriteTimeout(readTimeout),
			redis.DialUseTLS(useTLS),
			redis.DialTLSConfig(cfg.TLSConfig),
			redis.DialTLSHandshakeTimeout(cfg.DialTimeout),
			redis.DialUsername(user),
			redis.DialPassword(password),
			redis.DialDatabase(db),
		},
		dialer: net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 5 * time.Minute},
		tls:    useTLS,
	}
}

// dial connects to addr, host:port. Under TLS the server's certificate is
// verified for addr's host unless Config.TLSConfig names another.
func (d *serverDialer) dial(ctx context.Context, addr string) (*watchedConn, error) {
	var tcp *bufferedReader // the TCP connection, under TLS if any, as redigo reads it
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tcp = &bufferedReader{Conn: c, r: bufio.NewReaderSize(c, readBuffer)}
		return tcp, nil
	}
	c, err := redis.DialContext(ctx, "tcp", addr, append(d.opts[:len(d.opts):len(d.opts)], redis.DialContextFunc(dial))...)
	if err != nil {
		if d.tls && tlsRefused(err) {
			err = fmt.Errorf("%w (is TLS enabled on that port? rediss:// is for TLS, redis:// for plain connections)", err)
		}
		return nil, err
	}
	if d.wrap != nil {
		c = d.wrap(c)
	}
	return &watchedConn{Conn: c, tcp: tcp, addr: addr, tappable: !d.tls}, nil
}

// readBuffer is how much a connection made by Dial reads at once. redigo
// reads through a buffer of 4 KiB, a system call each time it empties: a
// claim's reply of thousands of entries, a few hundred KiB, took a
// hundred reads of the socket; it takes a dozen through this one.
const readBuffer = 32 << 10

// bufferedReader is a connection read through a buffer of readBuffer
// bytes; its deadlines and writes are the connection's own.
type bufferedReader struct {
	net.Conn
	r   *bufio.Reader
	tap *replyTap // armed for a call's reply (replytap.go); nil otherwise
}

func (c *bufferedReader) Read(p []byte) (int, error) {
	if t := c.tap; t != nil {
		n, finished, err := t.read(c.r, p)
		if finished {
			c.tap = nil
		}
		if n > 0 || err != nil {
			return n, err
		}
	}
	return c.r.Read(p)
}

// tlsRefused reports whether a dial's error says the TLS handshake got no
// TLS answer: a plain Redis server waits for the end of a command line
// that never comes (a handshake timeout), another server answers in its
// own protocol (not a TLS record).
func tlsRefused(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || err.Error() == "TLS handshake timeout" // redigo's, unexported
}

// poolOf makes a pool for Dial whose connections dial makes. onDial, when
// set, is called with every new connection before it is used; an error
// fails the dial. stale, when set, is asked about every idle connection a
// borrow takes: an error drops the connection, and the borrow takes
// another or dials.
func poolOf(cfg Config, dial func(context.Context) (*watchedConn, error), onDial func(context.Context, redis.Conn) error, stale func(*watchedConn) error) *redis.Pool {
	return &redis.Pool{
		MaxIdle:     cfg.MaxIdle,
		IdleTimeout: 4 * time.Minute,
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			c, err := dial(ctx)
			if err != nil {
				return nil, err
			}
			if onDial != nil {
				if err := onDial(ctx, c); err != nil {
					c.Close()
					return nil, err
				}
			}
			if cfg.WaitReplicas > 0 {
				return newWaitConn(c, cfg), nil
			}
			if c.tappable {
				noteBorrowed(ctx, c.tcp)
			}
			return c, nil
		},
		TestOnBorrowContext: func(ctx context.Context, c redis.Conn, idleSince time.Time) error {
			_, waits := c.(*waitConn) // its WAITs slip replies in: never tapped
			if waits {
				c = c.(*waitConn).Conn
			}
			w := c.(*watchedConn) // as DialContext made it
			if stale != nil {
				if err := stale(w); err != nil {
					return err
				}
			}
			// A connection the server closed while it sat idle (a restart,
			// a timeout, CLIENT KILL) is dropped before anything is
			// written on it, so the caller's command goes on a new one:
			// it cannot have reached Redis, so no retry can duplicate it.
			if peerClosed(w.tcp.Conn) || w.tcp.r.Buffered() > 0 || w.tcp.tap != nil {
				return errPeerClosed // bytes read ahead are no reply due either
			}
			if time.Since(idleSince) >= idleCheck {
				if _, err := doContext(c, ctx, "PING"); err != nil {
					return err
				}
			}
			if !waits && w.tappable {
				noteBorrowed(ctx, w.tcp)
			}
			return nil
		},
	}
}

var errPeerClosed = errors.New("queue: connection closed by the server while idle")

// watchedConn is a connection of a pool made by Dial, with its TCP
// connection, so that a borrow can see whether the server closed it, and
// the address it was dialled at.
type watchedConn struct {
	redis.Conn
	tcp  *bufferedReader // its TCP connection (Conn), read through a buffer
	addr string
	// tappable says that tcp's stream is the connection's replies, as
	// redigo reads them: no TLS (see replyTap).
	tappable bool
	// lost, when set, is told once of the failure that makes the
	// connection useless where it stands: a connection error, or a
	// READONLY reply (the server is a replica now). Err then reports it,
	// so that the pool drops the connection when it is put back.
	lost     func(addr string)
	told     atomic.Bool
	readOnly atomic.Bool
}

var errReadOnlyConn = errors.New("queue: the server became a read-only replica")

// judge looks at the outcome of a call on c and returns it unchanged.
func (c *watchedConn) judge(reply any, err error) (any, error) {
	if err == nil || c.lost == nil {
		return reply, err
	}
	switch {
	case isReadOnly(err):
		c.readOnly.Store(true)
	case !isConnErr(err):
		return reply, err
	}
	if !c.told.Swap(true) {
		c.lost(c.addr)
	}
	return reply, err
}

// Err reports a connection that failed, or that found its server a replica.
func (c *watchedConn) Err() error {
	if c.readOnly.Load() {
		return errReadOnlyConn
	}
	return c.Conn.Err()
}

func (c *watchedConn) Do(cmd string, args ...any) (any, error) {
	return c.judge(c.Conn.Do(cmd, args...))
}

func (c *watchedConn) Flush() error {
	_, err := c.judge(nil, c.Conn.Flush())
	return err
}

func (c *watchedConn) Receive() (any, error) {
	return c.judge(c.Conn.Receive())
}

func (c *watchedConn) DoContext(ctx context.Context, cmd string, args ...any) (any, error) {
	return c.judge(redis.DoContext(c.Conn, ctx, cmd, args...))
}

func (c *watchedConn) DoWithTimeout(d time.Duration, cmd string, args ...any) (any, error) {
	return c.judge(redis.DoWithTimeout(c.Conn, d, cmd, args...))
}

func (c *watchedConn) ReceiveContext(ctx context.Context) (any, error) {
	return c.judge(redis.ReceiveContext(c.Conn, ctx))
}

func (c *watchedConn) ReceiveWithTimeout(d time.Duration) (any, error) {
	return c.judge(redis.ReceiveWithTimeout(c.Conn, d))
}
