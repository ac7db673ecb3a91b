package queue

import (
	"context"
	"errors"

	"github.com/gomodule/redigo/redis"
)

// newSentinelPool makes the pool of a partition whose primary Sentinel
// watches. stop, when not nil, ends what the pool runs in the background.
func newSentinelPool(ctx context.Context, u redisURL, cfg Config, onDial func(context.Context, redis.Conn) error) (p *redis.Pool, stop func() error, err error) {
	return nil, nil, errors.New("redis+sentinel:// is not supported yet")
}
