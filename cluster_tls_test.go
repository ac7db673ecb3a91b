package queue

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClusterTLSAndACL runs a queue on a cluster that takes TLS only (its
// bus too) and an ACL user only: rediss+cluster:// with the user and
// Config.TLSConfig naming the private CA reaches every primary, and a
// wrong password, a plain connection or an unknown CA fail without the
// password in the error.
func TestClusterTLSAndACL(t *testing.T) {
	requireCluster(t)
	ctx := context.Background()
	caDER, roots, cert := testCAWithDER(t)
	dir := t.TempDir()
	writePEM := func(name, kind string, der []byte) string {
		f := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600))
		return f
	}
	certFile := writePEM("node.crt", "CERTIFICATE", cert.Certificate[0])
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	require.NoError(t, err)
	keyFile := writePEM("node.key", "PRIVATE KEY", keyDER)
	caFile := writePEM("ca.crt", "CERTIFICATE", caDER)

	const user, pw = "queue-user", "Cluster-Pw-5e1b"
	var ports []string
	for range 3 {
		port := clusterPort(t)
		nd := t.TempDir()
		cmd := exec.Command("redis-server", "--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile,
			"--tls-auth-clients", "no", "--tls-cluster", "yes", "--tls-replication", "yes",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
			"--dir", nd, "--logfile", filepath.Join(dir, "redis-"+strconv.Itoa(port)+".log"),
			"--user", "default", "off", "--user", user, "on", ">"+pw, "~*", "&*", "+@all")
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		ports = append(ports, strconv.Itoa(port))
	}
	cli := func(args ...string) ([]byte, error) {
		base := []string{"--tls", "--cacert", caFile, "--user", user, "--pass", pw, "--no-auth-warning"}
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return exec.CommandContext(ctx, "redis-cli", append(base, args...)...).CombinedOutput()
	}
	for _, p := range ports {
		if !assert.Eventually(t, func() bool {
			out, err := cli("-p", p, "PING")
			return err == nil && strings.TrimSpace(string(out)) == "PONG"
		}, 10*time.Second, 20*time.Millisecond, "node %s did not start", p) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis-"+p+".log"))
			t.Fatalf("its log:\n%s", log)
		}
	}
	var addrs []string
	for _, p := range ports {
		addrs = append(addrs, "127.0.0.1:"+p)
	}
	out, err := cli(append(append([]string{"--cluster", "create"}, addrs...), "--cluster-yes")...)
	require.NoError(t, err, "%s", out)
	require.Eventually(t, func() bool {
		for _, p := range ports {
			out, err := cli("-p", p, "CLUSTER", "INFO")
			if err != nil || !strings.Contains(string(out), "cluster_state:ok") {
				return false
			}
		}
		return true
	}, 20*time.Second, 50*time.Millisecond, "the TLS cluster did not settle")

	url := "rediss+cluster://" + user + ":" + pw + "@" + strings.Join(addrs, ",")
	tlsCfg := &tls.Config{RootCAs: roots}
	q, err := Dial(ctx, []string{url}, Config{Prefix: testPrefix(t), Queues: 12, TLSConfig: tlsCfg})
	require.NoError(t, err)
	defer q.Close()
	ids := addAll(t, q, orderTasks(24, 5))
	st, err := q.Stats(ctx)
	require.NoError(t, err)
	var ready int64
	for _, s := range st {
		ready += s.Ready
	}
	assert.EqualValues(t, len(ids), ready)
	// Every node holds some of the queues: the keys reached all three over TLS.
	for _, p := range ports {
		out, err := cli("-p", p, "DBSIZE")
		require.NoError(t, err)
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		assert.Positive(t, n, "node %s holds no key", p)
	}
	got := drainAll(t, q)
	assert.ElementsMatch(t, ids, got)

	for name, tc := range map[string]struct {
		url string
		cfg Config
	}{
		"wrong password": {strings.Replace(url, pw, "not-"+pw, 1), Config{TLSConfig: tlsCfg}},
		"unknown CA":     {url, Config{}},
		"plain":          {"redis+cluster://" + user + ":" + pw + "@" + addrs[0], Config{DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second}},
	} {
		_, err := Dial(ctx, []string{tc.url}, tc.cfg)
		require.Error(t, err, name)
		assert.NotContains(t, err.Error(), pw, name)
	}
}

// drainAll runs every analyser of q until its queue is empty and returns
// the IDs of the tasks handled.
func drainAll(t *testing.T, q *Queue) []string {
	t.Helper()
	var mu sync.Mutex
	var ids []string
	errs := make(chan error, q.Layout().Analysers())
	for a := range q.Layout().Analysers() {
		go func() {
			errs <- q.AnalysePool(context.Background(), a, PoolConfig{Workers: 4, ExitOnEmpty: true},
				func(_ context.Context, task Task) error {
					mu.Lock()
					ids = append(ids, task.ID)
					mu.Unlock()
					return nil
				})
		}()
	}
	for range q.Layout().Analysers() {
		require.NoError(t, <-errs)
	}
	return ids
}
