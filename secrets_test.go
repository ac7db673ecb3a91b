package queue

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sentinelPassword must never appear in an error. Its pieces must not
// either: the "%zz" one does not parse, and a parser could quote it.
const sentinelPassword = "Sentinel-Pw-7f3a"

// assertNoSecret fails if s holds the sentinel password or a recognisable
// piece of it.
func assertNoSecret(t *testing.T, s string, msgAndArgs ...any) {
	t.Helper()
	for _, piece := range []string{sentinelPassword, "Sentinel", "7f3a"} {
		assert.NotContains(t, s, piece, msgAndArgs...)
	}
}

// TestDialErrorsHoldNoPassword runs every way Dial can fail with a URL
// that holds the sentinel password, and checks that no error quotes it.
func TestDialErrorsHoldNoPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pw := sentinelPassword
	down := closedAddr(t)
	wrongPw := miniredis.RunT(t)
	wrongPw.RequireAuth("another-password")
	plain := miniredis.RunT(t) // no TLS: a rediss:// handshake fails
	tests := []struct {
		name string
		url  string
		cfg  Config
	}{
		{"bad escape", "redis://:" + pw + "%zz@" + down, Config{}},
		{"bad escape in user", "redis://" + pw + "%zz:x@" + down, Config{}},
		{"http scheme", "http://:" + pw + "@" + down, Config{}},
		{"no scheme, user:password", "user:" + pw + "@" + down, Config{}},
		{"opaque", "redis:" + pw + "@" + down, Config{}},
		{"bad database", "redis://:" + pw + "@" + down + "/db" + pw, Config{}},
		{"bad port", "redis://:" + pw + "@127.0.0.1:" + pw, Config{}},
		{"space in host", "redis://:" + pw + "@bad host:1", Config{}},
		{"unreachable", "redis://:" + pw + "@" + down, Config{DialTimeout: 2 * time.Second}},
		{"unreachable, upper-case scheme", "REDIS://:" + pw + "@" + down, Config{DialTimeout: 2 * time.Second}},
		{"wrong password", "redis://:" + pw + "@" + wrongPw.Addr(), Config{}},
		{"wrong user and password", "redis://someone:" + pw + "@" + wrongPw.Addr(), Config{}},
		{"password as user", "redis://" + pw + "@" + wrongPw.Addr(), Config{}},
		{"tls to a plain server", "rediss://:" + pw + "@" + plain.Addr(), Config{DialTimeout: 2 * time.Second}},
		{"tls config with redis://", "redis://:" + pw + "@" + down, Config{TLSConfig: &tls.Config{}}},
		{"sentinel: no primary name", "redis+sentinel://:" + pw + "@" + down + "?sentinel_password=" + pw, Config{}},
		{"sentinel: unknown query parameter", "redis+sentinel://" + down + "/mp?password=" + pw, Config{}},
		{"sentinel: bad escape in its password", "redis+sentinel://" + down + "/mp?sentinel_password=" + pw + "%zz", Config{DialTimeout: 2 * time.Second}},
		{"sentinels unreachable", "redis+sentinel://:" + pw + "@" + down + "," + down + "/mp?sentinel_password=" + pw, Config{DialTimeout: 2 * time.Second}},
		{"wrong sentinel password", "redis+sentinel://" + wrongPw.Addr() + "/mp?sentinel_user=u&sentinel_password=" + pw, Config{}},
		{"wrong password of the primary", "redis+sentinel://u:" + pw + "@" + newFakeSentinel(t, "mp", wrongPw.Addr()).Addr() + "/mp", Config{}},
		{"sentinel tls to a plain server", "rediss+sentinel://" + plain.Addr() + "/mp?sentinel_password=" + pw, Config{DialTimeout: 2 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := Dial(ctx, []string{tt.url}, tt.cfg)
			require.Error(t, err)
			assert.Nil(t, q)
			assertNoSecret(t, err.Error())
			assert.Contains(t, err.Error(), "partition 0")
			if tt.cfg.TLSConfig != nil {
				return // refused for the first partition already
			}
			// And as the second of two partitions.
			_, err = Dial(ctx, []string{"redis://" + plain.Addr(), tt.url}, tt.cfg)
			require.Error(t, err)
			assertNoSecret(t, err.Error())
			assert.Contains(t, err.Error(), "partition 1")
		})
	}
}

// TestRunningQueueErrorsHoldNoPassword checks the errors of a queue whose
// server went away after Dial: adds, listings, replays, purges.
func TestRunningQueueErrorsHoldNoPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := miniredis.RunT(t)
	m.RequireAuth(sentinelPassword)
	q, err := Dial(ctx, []string{"redis://:" + sentinelPassword + "@" + m.Addr()}, Config{Prefix: testPrefix(t), DialTimeout: 2 * time.Second})
	require.NoError(t, err)
	defer q.Close()
	_, err = q.AddTask(ctx, 1, []byte("x"))
	require.NoError(t, err)
	m.Close()
	var errs []error
	_, err = q.AddTask(ctx, 1, []byte("x"))
	errs = append(errs, err)
	_, err = q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("x")}})
	errs = append(errs, err)
	_, err = q.Dead(ctx, 0)
	errs = append(errs, err)
	_, err = q.Replay(ctx, 0)
	errs = append(errs, err)
	_, err = q.Purge(ctx, 0)
	errs = append(errs, err)
	errs = append(errs, q.Ping(ctx))
	for i, err := range errs {
		require.Error(t, err, "call %d", i)
		assertNoSecret(t, err.Error(), "call %d", i)
	}
}

// TestDialSchemeCaseInsensitive checks that REDIS:// and Rediss:// are
// read as redis:// and rediss://, with a password.
func TestDialSchemeCaseInsensitive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	m := miniredis.RunT(t)
	m.RequireAuth(sentinelPassword)
	for _, scheme := range []string{"REDIS", "Redis", "redis"} {
		q, err := Dial(ctx, []string{scheme + "://:" + sentinelPassword + "@" + m.Addr()}, Config{Prefix: testPrefix(t)})
		require.NoError(t, err, scheme)
		_, err = q.AddTask(ctx, 1, []byte("x"))
		assert.NoError(t, err, scheme)
		require.NoError(t, q.Close())
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it.
func testCA(t *testing.T) (*x509.CertPool, tls.Certificate) {
	t.Helper()
	_, roots, cert := testCAWithDER(t)
	return roots, cert
}

// testCAWithDER is testCA that also returns the CA's certificate (DER),
// for servers that read it from a file.
func testCAWithDER(t *testing.T) ([]byte, *x509.CertPool, tls.Certificate) {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		return k
	}
	caKey, srvKey := key(), key()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "queue test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, caCert, &srvKey.PublicKey, caKey)
	require.NoError(t, err)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	return caDER, roots, tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
}

// TestDialTLS checks rediss:// against a TLS server: refused under the
// system roots (which do not know the test CA: the server is verified),
// accepted with Config.TLSConfig naming the CA, scheme in any case.
func TestDialTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	roots, cert := testCA(t)
	m, err := miniredis.RunTLS(&tls.Config{Certificates: []tls.Certificate{cert}})
	require.NoError(t, err)
	t.Cleanup(m.Close)
	m.RequireAuth(sentinelPassword)
	u := "rediss://:" + sentinelPassword + "@" + m.Addr()

	_, err = Dial(ctx, []string{u}, Config{DialTimeout: 5 * time.Second})
	require.Error(t, err, "a server the system roots do not trust")
	assert.Contains(t, err.Error(), "certificate")
	assertNoSecret(t, err.Error())

	for _, url := range []string{u, "REDISS" + strings.TrimPrefix(u, "rediss")} {
		q, err := Dial(ctx, []string{url}, Config{Prefix: testPrefix(t), TLSConfig: &tls.Config{RootCAs: roots}})
		require.NoError(t, err)
		id, err := q.AddTask(ctx, 3, []byte("over tls"))
		require.NoError(t, err)
		dead, err := q.Dead(ctx, 0)
		require.NoError(t, err)
		assert.Empty(t, dead)
		assert.Len(t, id, 20)
		require.NoError(t, q.Close())
	}
}

// TestParseRedisURL pins what Dial reads from a URL.
func TestParseRedisURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want redisURL
		bad  bool
	}{
		{in: "redis://h", want: redisURL{addr: "h:6379"}},
		{in: "redis://", want: redisURL{addr: "localhost:6379"}},
		{in: "REDISS://h:7000/3", want: redisURL{addr: "h:7000", tls: true, db: 3}},
		{in: "redis://:pw@h:1/", want: redisURL{addr: "h:1", password: "pw"}},
		{in: "redis://u:p%40w@h:1", want: redisURL{addr: "h:1", user: "u", password: "p@w"}},
		{in: "redis://pw@[::1]:1", want: redisURL{addr: "[::1]:1", password: "pw"}},
		{in: "redis://h/x", bad: true},
		{in: "redis://h/-1", bad: true},
		{in: "valkey://h", bad: true},
		{in: "", bad: true},
		{in: "h:6379", bad: true},
		{in: "redis+sentinel://a,b:2/mp/2?sentinel_user=su&sentinel_password=s%40p", want: redisURL{topo: sentinel,
			addrs: []string{"a:26379", "b:2"}, primary: "mp", db: 2, sentinelUser: "su", sentinelPassword: "s@p"}},
		{in: "Rediss+Sentinel://u:p@h/mp", want: redisURL{topo: sentinel, addrs: []string{"h:26379"}, primary: "mp",
			tls: true, user: "u", password: "p"}},
		{in: "redis+sentinel://h", bad: true},
		{in: "redis+sentinel://h/", bad: true},
		{in: "redis+sentinel://h/mp/x", bad: true},
		{in: "redis://:12#34@h", bad: true}, // else localhost:12, no password
		{in: "redis+sentinel://h,/mp", bad: true},
		{in: "redis+sentinel://h/mp?sentinel_password=%zz", bad: true},
		{in: "redis+sentinel://h/mp?db=1", bad: true},
		{in: "redis://h?sentinel_user=u", bad: true},
		{in: "redis+cluster://a:7000,b,c:7002", want: redisURL{topo: cluster, addrs: []string{"a:7000", "b:6379", "c:7002"}}},
		{in: "REDISS+CLUSTER://u:p@a:7000/0", want: redisURL{topo: cluster, addrs: []string{"a:7000"}, tls: true, user: "u", password: "p"}},
		{in: "redis+sentinel://:pw@s1,s2:26380/mymaster/3?sentinel_password=spw",
			want: redisURL{topo: sentinel, addrs: []string{"s1:26379", "s2:26380"}, primary: "mymaster", db: 3, password: "pw", sentinelPassword: "spw"}},
		{in: "redis+sentinel://s1/mymaster", want: redisURL{topo: sentinel, addrs: []string{"s1:26379"}, primary: "mymaster"}},
		{in: "redis+sentinel://a:1,b/mp", want: redisURL{topo: sentinel, addrs: []string{"a:1", "b:26379"}, primary: "mp"}},
		{in: "redis+cluster://[::1]:7000,[::1]", want: redisURL{topo: cluster, addrs: []string{"[::1]:7000", "[::1]:6379"}}},
		{in: "redis+cluster://a:7000/1", bad: true},      // a cluster has db 0 only
		{in: "redis+sentinel://s1", bad: true},           // no primary name
		{in: "redis+sentinel://s1/", bad: true},          // no primary name
		{in: "redis://a:1,b:2", bad: true},               // several hosts, standalone
		{in: "redis+cluster://a:1,,b:2", bad: true},      // an empty host
		{in: "redis+valkey://a", bad: true},              // unknown topology
		{in: "redis://a?sentinel_password=x", bad: true}, // a query standalone does not read
		{in: "redis+cluster://a?password=x", bad: true},  // unknown parameter
	}
	for _, tt := range tests {
		got, err := parseRedisURL(tt.in)
		if tt.bad {
			assert.Error(t, err, tt.in)
			continue
		}
		require.NoError(t, err, tt.in)
		assert.Equal(t, tt.want, got, tt.in)
	}
	// A host:port without a scheme, as redis-cli takes it, is told how to
	// write it, without quoting it.
	for _, in := range []string{"127.0.0.1:6379", "h:6379", "s3cret@h:6379", ""} {
		_, err := parseRedisURL(in)
		require.Error(t, err, in)
		assert.Contains(t, err.Error(), "no scheme: write redis://host:port", in)
		if in != "" {
			assert.NotContains(t, err.Error(), in)
		}
	}
}
