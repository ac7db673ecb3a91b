package queue

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Finished tasks' history (Config.Retention): when a task finishes (done,
// or cancelled), the script that finishes it writes its status record
// into the history hash of the current time bucket of its queue
// ("<tag>:done:<bucket>", task ID -> record), and sets that hash to expire
// Retention after the bucket ends. Redis's expiry trims the history a
// bucket at a time, so that nothing scans it; Status reads the buckets of
// the window, one pipelined round trip. A bucket lasts Retention/8 (at
// least a second, at most an hour), so a record is kept for Retention to
// Retention plus an eighth.
//
// A record is text: a state letter (d done, c cancelled), then added,
// started less added and finished less added, in ms, then the attempts,
// comma separated; started is empty when the task never ran. It is about
// 25 bytes, kept in a hash field under the task ID: with Redis's own
// overhead, about 60 bytes per kept task besides the ID
// (BenchmarkRetention measures it).

// maxRetention bounds Config.Retention.
const maxRetention = 90 * 24 * time.Hour

// historyWidth is the time span of one history bucket.
func historyWidth(retention time.Duration) time.Duration {
	return min(max(retention/8, time.Second), time.Hour)
}

// historyRecord is a finished task's status.
type historyRecord struct {
	state                    TaskState // StateDone or StateCancelled
	added, started, finished time.Time // started is zero when the task never ran
	attempts                 int
}

func (r historyRecord) encode() string {
	var b strings.Builder
	b.Grow(32)
	if r.state == StateCancelled {
		b.WriteByte('c')
	} else {
		b.WriteByte('d')
	}
	added := r.added.UnixMilli()
	b.WriteString(strconv.FormatInt(added, 10))
	b.WriteByte(',')
	if !r.started.IsZero() {
		b.WriteString(strconv.FormatInt(max(r.started.UnixMilli()-added, 0), 10))
	}
	b.WriteByte(',')
	b.WriteString(strconv.FormatInt(max(r.finished.UnixMilli()-added, 0), 10))
	b.WriteByte(',')
	b.WriteString(strconv.Itoa(r.attempts))
	return b.String()
}

// decodeHistory decodes a status record.
func decodeHistory(s string) (historyRecord, error) {
	bad := fmt.Errorf("%w: status record %q", ErrMalformed, s)
	if len(s) < 2 {
		return historyRecord{}, bad
	}
	var r historyRecord
	switch s[0] {
	case 'd':
		r.state = StateDone
	case 'c':
		r.state = StateCancelled
	default:
		return historyRecord{}, bad
	}
	f := strings.Split(s[1:], ",")
	if len(f) != 4 {
		return historyRecord{}, bad
	}
	added, err1 := strconv.ParseInt(f[0], 10, 64)
	fin, err2 := strconv.ParseInt(f[2], 10, 64)
	att, err3 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil || err3 != nil {
		return historyRecord{}, bad
	}
	r.added, r.finished, r.attempts = time.UnixMilli(added), time.UnixMilli(added+fin), att
	if f[1] != "" {
		st, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return historyRecord{}, bad
		}
		r.started = time.UnixMilli(added + st)
	}
	return r, nil
}

// historyKey names the history hash of bucket b of the queue of k.
func (k queueKeys) historyKey(b int64) string { return k.history + strconv.FormatInt(b, 10) }

// bucketAt returns the history hash for a record written at t, with
// retention, and when it expires (ms since the epoch); with no retention,
// a key of the queue that is never written and expiry 0.
func bucketAt(k queueKeys, retention time.Duration, t time.Time) (key string, expiry int64) {
	if retention <= 0 {
		return k.historyKey(0), 0
	}
	w := historyWidth(retention).Milliseconds()
	b := t.UnixMilli() / w
	return k.historyKey(b), (b+1)*w + retention.Milliseconds()
}

// historyBucket is bucketAt for the store's queue.
func (s *store) historyBucket(t time.Time) (string, int64) {
	return bucketAt(s.keys, s.retention, t)
}

// recordHistory writes rec as the status of task id (outside a pool's
// scripts: a scheduled task cancelled).
func (q *Queue) recordHistory(ctx context.Context, p *partition, k queueKeys, id string, rec historyRecord) error {
	key, expiry := bucketAt(k, q.cfg.Retention, rec.finished)
	if expiry == 0 {
		return nil
	}
	_, err := onPartition(ctx, p, "record status of task "+id, func(c redis.Conn) (any, error) {
		c.Send("HSET", key, id, rec.encode())
		c.Send("PEXPIREAT", key, expiry)
		if err := c.Flush(); err != nil {
			return nil, err
		}
		for range 2 {
			if _, err := receiveContext(c, ctx); err != nil {
				return nil, err
			}
		}
		return nil, nil
	})
	return err
}

// sendHistoryReads sends the reads of task id's status record in every bucket
// of the window (oldest first) and returns how many it sent.
func sendHistoryReads(c redis.Conn, k queueKeys, retention time.Duration, id string, now time.Time) int {
	if retention <= 0 {
		return 0
	}
	w := historyWidth(retention).Milliseconds()
	last := now.UnixMilli() / w
	first := (now.UnixMilli() - retention.Milliseconds() - w) / w
	n := 0
	for b := first; b <= last; b++ {
		c.Send("HGET", k.historyKey(b), id)
		n++
	}
	return n
}
