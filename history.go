package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Finished tasks' history (Config.Retention): when a task finishes (done,
// or cancelled), the script that finishes it writes its status record
// into the history hash of the current time bucket of its queue
// ("<tag>:done:<bucket>"), and sets that hash to expire Retention after
// the bucket ends. Redis's expiry trims the history a bucket at a time,
// so that nothing scans it; Status reads the buckets of the window, one
// pipelined round trip. A bucket lasts Retention/8 (at least a second, at
// most an hour), so a record is kept for Retention to Retention plus an
// eighth.
//
// Every byte counts, since a busy queue keeps millions: the field is the
// task ID packed in 13 bytes (its 20 base32 digits), and the record, about
// 10 bytes, is uvarints: the attempts (times 2, plus 1 when cancelled),
// then in ms the finish time less the bucket's start (signed), the run time plus
// one (0: it never ran), and the wait from added to started (or to
// finished, when it never ran). Both fit Redis's 16-byte allocations; with
// the hash entry and its slot, a kept task costs about 75 bytes of Redis
// memory (BenchmarkRetention reports it as retained-bytes/task).

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

// encode encodes r for the bucket that starts at start (ms).
func (r historyRecord) encode(start int64) string {
	var b [4 * binary.MaxVarintLen64]byte
	n := 0
	put := func(v int64) { n += binary.PutUvarint(b[n:], uint64(max(v, 0))) }
	a := int64(r.attempts) * 2
	if r.state == StateCancelled {
		a++
	}
	fin := r.finished.UnixMilli()
	put(a)
	n += binary.PutVarint(b[n:], fin-start) // an ack sent just after the bucket began may hold one finished before
	ref := fin
	if r.started.IsZero() {
		put(0)
	} else {
		ref = r.started.UnixMilli()
		put(fin - ref + 1)
	}
	put(ref - r.added.UnixMilli())
	return string(b[:n])
}

// decodeHistory decodes a status record of the bucket that starts at
// start (ms).
func decodeHistory(s string, start int64) (historyRecord, error) {
	var f [4]uint64
	var off int64
	rest := []byte(s)
	for i := range f {
		var n int
		if i == 1 {
			off, n = binary.Varint(rest)
			f[i] = uint64(max(off, -off))
		} else {
			f[i], n = uvarint(rest)
		}
		if n <= 0 || f[i] > 1<<53 {
			return historyRecord{}, fmt.Errorf("%w: status record %q", ErrMalformed, s)
		}
		rest = rest[n:]
	}
	if len(rest) != 0 || f[0]/2 > 1<<31 {
		return historyRecord{}, fmt.Errorf("%w: status record %q", ErrMalformed, s)
	}
	r := historyRecord{state: StateDone, attempts: int(f[0] / 2)}
	if f[0]%2 == 1 {
		r.state = StateCancelled
	}
	fin := start + off
	r.finished = time.UnixMilli(fin)
	ref := fin
	if f[2] > 0 {
		ref = fin - int64(f[2]) + 1
		r.started = time.UnixMilli(ref)
	}
	r.added = time.UnixMilli(ref - int64(f[3]))
	return r, nil
}

// packID packs a task ID's 20 base32 digits (100 bits) into 13 bytes, the
// field of its status record.
func packID(id string) string {
	var hi, lo uint64 // 36 and 64 bits
	for i := 0; i < len(id); i++ {
		c := id[i]
		var v uint64
		if c <= '9' {
			v = uint64(c - '0')
		} else {
			v = uint64(c-'a') + 10
		}
		hi = hi<<5 | lo>>59
		lo = lo<<5 | v
	}
	var b [13]byte
	b[0] = byte(hi >> 32)
	binary.BigEndian.PutUint32(b[1:5], uint32(hi))
	binary.BigEndian.PutUint64(b[5:], lo)
	return string(b[:])
}

// historyKey names the history hash of bucket b of the queue of k.
func (k queueKeys) historyKey(b int64) string { return k.history + strconv.FormatInt(b, 10) }

// bucketAt returns the history hash for a record written at t, with
// retention, when it expires and when it starts (ms since the epoch);
// with no retention, a key of the queue that is never written and expiry
// 0.
func bucketAt(k queueKeys, retention time.Duration, t time.Time) (key string, expiry, start int64) {
	if retention <= 0 {
		return k.historyKey(0), 0, 0
	}
	w := historyWidth(retention).Milliseconds()
	b := t.UnixMilli() / w
	return k.historyKey(b), (b+1)*w + retention.Milliseconds(), b * w
}

// historyBucket is bucketAt for the store's queue.
func (s *store) historyBucket(t time.Time) (key string, expiry, start int64) {
	return bucketAt(s.keys, s.retention, t)
}

// luaHistory defines history(key), which reports whether the history
// bucket key may take records: it is a hash, or does not exist. A bucket
// of another type (written by hand, say) costs the history its records,
// and never the script that finishes a task: the history is a record of
// what happened, and no task may pay for it.
const luaHistory = `
local function history(key)
  local t = redis.call('TYPE', key).ok
  return t == 'hash' or t == 'none'
end
`

// historyScript writes one status record and its bucket's expiry, at
// once: a bucket never outlives its expiry for a reply lost between the
// two. It records the retention in the meta hash when none is, so that a
// reader without Config.Retention (qugo) finds the record; one recorded
// (by the queue's owner, whose acks write it) is left as it is.
//
//	KEYS[1] = history bucket, KEYS[2] = meta hash
//	ARGV[1] = packed task ID, ARGV[2] = status record, ARGV[3] = expiry (ms since the epoch),
//	ARGV[4] = the writer's Config.Retention, ms
//
// Returns 1, or 0 when the bucket holds another type (nothing written).
var historyScript = newScript("history", 2, luaHistory+typeCheck(hashAt(2))+`
if not history(KEYS[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
redis.call('HSETNX', KEYS[2], 'retention', ARGV[4])
return 1
`)

// recordHistory writes rec as the status of task id (outside a pool's
// scripts: a scheduled task cancelled), in the bucket of the retention the
// queue's owner recorded, as readers look it up, or else of this Queue's
// Config.Retention; with neither, nothing is written. One round trip more
// than the record.
func (q *Queue) recordHistory(ctx context.Context, p *partition, k queueKeys, id string, rec historyRecord) error {
	_, err := onPartition(ctx, p, "record status of task "+id, func(c redis.Conn) (any, error) {
		retention := q.cfg.Retention
		if ms, err := redis.Int64(doContext(c, ctx, "HGET", k.meta, "retention")); err == nil && ms > 0 && ms <= maxRetention.Milliseconds() {
			retention = time.Duration(ms) * time.Millisecond
		}
		key, expiry, start := bucketAt(k, retention, rec.finished)
		if expiry == 0 {
			return nil, nil
		}
		return runScript(ctx, historyScript, c, key, k.meta, packID(id), rec.encode(start), expiry, retention.Milliseconds())
	})
	return err
}

// sendHistoryReads sends the reads of task id's status record in every
// bucket of the window, oldest first, and returns the buckets' starts
// (ms).
func sendHistoryReads(c redis.Conn, k queueKeys, retention time.Duration, id string, now time.Time) []int64 {
	if retention <= 0 {
		return nil
	}
	w := historyWidth(retention).Milliseconds()
	last := now.UnixMilli() / w
	first := (now.UnixMilli() - retention.Milliseconds() - w) / w
	field := packID(id)
	var starts []int64
	for b := first; b <= last; b++ {
		c.Send("HGET", k.historyKey(b), field)
		starts = append(starts, b*w)
	}
	return starts
}
