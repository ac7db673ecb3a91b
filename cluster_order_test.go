package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/gomodule/redigo/redis"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// refusingConn is a node connection whose node refuses the next LPUSH
// once refuse is set, with CLUSTERDOWN, and runs the commands after it:
// what a node does when its cluster state turns ok between two commands
// of one pipeline (a failover settling, a slot served again).
type refusingConn struct {
	redis.Conn
	refuse  *atomic.Bool
	refused []bool // per command sent and not answered: refused (no reply comes)
}

func (c *refusingConn) Send(cmd string, args ...any) error {
	refuse := strings.EqualFold(cmd, "LPUSH") && c.refuse.CompareAndSwap(true, false)
	c.refused = append(c.refused, refuse)
	if refuse {
		return nil
	}
	return c.Conn.Send(cmd, args...)
}

func (c *refusingConn) Receive() (any, error) {
	if len(c.refused) > 0 {
		refused := c.refused[0]
		c.refused = c.refused[1:]
		if refused {
			return nil, redis.Error("CLUSTERDOWN The cluster is down")
		}
	}
	return c.Conn.Receive()
}

func (c *refusingConn) ReceiveContext(context.Context) (any, error) { return c.Receive() }

func (c *refusingConn) Do(cmd string, args ...any) (any, error) {
	if cmd == "" {
		for len(c.refused) > 0 {
			c.Receive()
		}
		return c.Conn.Do("")
	}
	if err := c.Send(cmd, args...); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	return c.Receive()
}

func (c *refusingConn) DoContext(_ context.Context, cmd string, args ...any) (any, error) {
	return c.Do(cmd, args...)
}

// AddTasks of more than one LPUSH to a queue on a Redis Cluster, whose
// node refuses the first LPUSH and would run the second: the router sends
// a refused command again only after the later ones of its pipeline ran,
// so the queue's second LPUSH must wait for the first one's reply. The
// tasks come out in slice order.
func TestAddTasksOnAClusterKeepsOrderThroughARefusal(t *testing.T) {
	t.Parallel()
	m := miniredis.RunT(t)
	var refuse atomic.Bool
	r := oneNodeRouter(t, m.Addr(), func(c redis.Conn) redis.Conn { return &refusingConn{Conn: c, refuse: &refuse} })
	q := queueOnPool(t, r.partitionPool(nil))
	require.NotNil(t, q.parts[0].router)
	ctx := context.Background()
	_, err := q.AddTasks(ctx, []Task{{OrderID: 1, Payload: []byte("layout")}})
	require.NoError(t, err)

	// Two LPUSHes: a third would only add to miniredis's cost of an
	// LPUSH, which copies the whole list for each entry it prepends.
	tasks := make([]Task, maxPushArgs+10)
	for i := range tasks {
		tasks[i] = Task{OrderID: 1, Payload: []byte(strconv.Itoa(i))}
	}
	refuse.Store(true)
	_, err = q.AddTasks(ctx, tasks)
	require.NoError(t, err)
	require.False(t, refuse.Load(), "an LPUSH was refused")

	conn, err := redis.Dial("tcp", m.Addr())
	require.NoError(t, err)
	defer conn.Close()
	_, qi := q.Route(1)
	entries, err := redis.ByteSlices(conn.Do("LRANGE", q.ready[0][qi], 0, -1))
	require.NoError(t, err)
	var got []string
	for i := len(entries) - 1; i >= 0; i-- { // taken from the right
		task, _, err := decodeEntry(entries[i])
		require.NoError(t, err)
		got = append(got, string(task.Payload))
	}
	want := []string{"layout"}
	for i := range tasks {
		want = append(want, fmt.Sprint(i))
	}
	assert.Equal(t, want, got)
}
