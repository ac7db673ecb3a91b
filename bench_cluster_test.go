package queue

import (
	"context"
	"os/exec"
	"testing"
)

// BenchmarkCluster measures the end-to-end run of BenchmarkDrain (one
// AddTasks call, then a pool of 64 workers per analyser) on a Redis
// Cluster of 3 primaries against the same work on 3 standalone servers,
// in one run: 24 analysers each way (3 servers x 8 queues, or one cluster
// partition of 24 queues spread over the primaries by slot), 10,000 tasks
// each.
// It starts its own servers on free loopback ports (skipped without
// redis-server and redis-cli, or with QUEUE_FAULT_SUITE=off). The ratio
// of the two tasks/s figures is the router's cost.
//
//	go test -run '^$' -bench Cluster -count 6 | tee cluster.txt
func BenchmarkCluster(b *testing.B) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		b.Skip("redis-server is not on the PATH")
	}
	requireCluster(b)
	servers := startRedisServers(b, bin, 3)
	c := startCluster(b, 3, 0)
	const queues = 8
	dial := func(b *testing.B, urls []string, q int) *Queue {
		qq, err := Dial(context.Background(), urls, Config{Prefix: testPrefix(b), Queues: q, MaxIdle: 128})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() {
			dropQueueKeys(qq)
			qq.Close()
		})
		return qq
	}
	b.Run("topology=standalone3", func(b *testing.B) {
		benchDrain(b, dial(b, servers, queues), PoolConfig{Workers: 64}, clusterBenchTasks, nil)
	})
	b.Run("topology=cluster3", func(b *testing.B) {
		benchDrain(b, dial(b, []string{c.url()}, 3*queues), PoolConfig{Workers: 64}, clusterBenchTasks, nil)
	})
}

// clusterBenchTasks is the tasks per analyser of BenchmarkCluster.
const clusterBenchTasks = 10000
