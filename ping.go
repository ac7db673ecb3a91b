package queue

import (
	"context"
	"fmt"
	"strings"

	"github.com/gomodule/redigo/redis"
)

// Ping checks that every partition answers, for health checks: on a Redis
// Cluster, every primary that serves one of its queues. It is safe for
// concurrent use and costs one round trip per partition (per primary on a
// cluster).
func (q *Queue) Ping(ctx context.Context) error {
	if q.closed.Load() {
		return ErrClosed
	}
	for _, p := range q.parts {
		var err error
		if p.router != nil {
			err = q.pingQueues(ctx, p)
		} else {
			err = ping(ctx, p.pool)
		}
		if err != nil {
			return redisErr(fmt.Sprintf("ping partition %d", p.index), err)
		}
	}
	return nil
}

// pingQueues checks that the primaries serving the queues of partition p
// answer: on a Redis Cluster a PING reaches one node, so it reads one key
// of every queue instead (one pipeline, split over the primaries).
func (q *Queue) pingQueues(ctx context.Context, p *partition) error {
	conn, err := getConn(ctx, p.pool)
	if err != nil {
		return err
	}
	defer conn.Close()
	for qi := range q.cfg.Queues {
		if err := conn.Send("EXISTS", newQueueKeys(q.cfg.Prefix, p.index, qi).lease); err != nil {
			return err
		}
	}
	if err := conn.Flush(); err != nil {
		return err
	}
	var first error
	for range q.cfg.Queues {
		if _, err := receiveContext(conn, ctx); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// pingServer is ping for the server a redis:// URL names, which must not
// be a Redis Cluster node: there, such a URL half works (the keys of the
// slots that node serves go to it, every other call gets MOVED).
func pingServer(ctx context.Context, p *redis.Pool) error {
	if err := ping(ctx, p); err != nil {
		return err
	}
	conn, err := getConn(ctx, p) // the connection ping gave back
	if err != nil {
		return err
	}
	defer conn.Close()
	// A server that refuses INFO (an ACL) or knows no such section is
	// taken for what the URL says.
	info, err := redis.String(doContext(conn, ctx, "INFO", "cluster"))
	if err == nil && strings.Contains(info, "cluster_enabled:1") {
		return fmt.Errorf("%w: the server is a Redis Cluster node: reach a cluster with a redis+cluster:// URL (redis+cluster://host:port, any of its nodes)", ErrBadConfig)
	}
	return nil
}

func ping(ctx context.Context, p *redis.Pool) error {
	conn, err := getConn(ctx, p)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = doContext(conn, ctx, "PING")
	return err
}
