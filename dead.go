package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"github.com/gomodule/redigo/redis"
)

// DeadTask is a task in the dead-letter store: one that failed MaxAttempts
// deliveries, or a malformed record found in Redis.
type DeadTask struct {
	// Task is the task as it was last delivered. For a malformed record
	// only ID is set (to the field it was stored under).
	Task
	// Attempts is how many deliveries the task had.
	Attempts int
	// Err is the error of the last delivery.
	Err string
	// DiedAt is when the task moved to the dead-letter store.
	DiedAt time.Time
	// Raw holds the record's bytes as they were found when it could not be
	// decoded; it is nil for a task that decoded.
	Raw []byte
}

const deadVersion = 0x02

// A dead record is:
//
//	byte    0x02 (version)
//	uvarint attempts
//	uvarint died at, milliseconds since the Unix epoch
//	uvarint length of the error, then the error
//	rest    the encoded task, or the raw bytes of a malformed record
func encodeDead(raw []byte, attempts int, msg string) []byte {
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(msg)+len(raw))
	b = append(b, deadVersion)
	b = binary.AppendUvarint(b, uint64(attempts))
	b = binary.AppendUvarint(b, uint64(time.Now().UnixMilli()))
	b = binary.AppendUvarint(b, uint64(len(msg)))
	b = append(b, msg...)
	return append(b, raw...)
}

// decodeDead decodes a dead record stored under field. A record that is
// itself malformed comes back with Raw set and an error in Err, never as
// an error: the store must stay listable.
func decodeDead(field string, b []byte) DeadTask {
	bad := func(why string) DeadTask {
		return DeadTask{Task: Task{ID: field}, Err: "malformed dead record: " + why, Raw: append([]byte{}, b...)}
	}
	if len(b) == 0 || b[0] != deadVersion {
		return bad("bad header")
	}
	rest := b[1:]
	var f [3]uint64
	for i := range f {
		v, n := uvarint(rest)
		if n <= 0 {
			return bad("truncated")
		}
		f[i], rest = v, rest[n:]
	}
	if f[0] > 1<<31 || f[1] > 1<<53 || f[2] > uint64(len(rest)) {
		return bad("field out of range")
	}
	d := DeadTask{Attempts: int(f[0]), DiedAt: time.UnixMilli(int64(f[1])), Err: string(rest[:f[2]])}
	raw := rest[f[2]:]
	t, _, err := decodeEntry(raw)
	if err != nil {
		d.Task = Task{ID: field}
		d.Raw = append([]byte{}, raw...) // never nil, even when empty: nil means decoded
		return d
	}
	t.Attempt = d.Attempts
	d.Task = t
	return d
}

// analyserKeys returns the partition and keys of analyser a's queue.
func (q *Queue) analyserKeys(a int) (*partition, queueKeys, error) {
	pi, qi, err := q.Layout().Serves(a)
	if err != nil {
		return nil, queueKeys{}, err
	}
	return q.parts[pi], newQueueKeys(q.cfg.Prefix, pi, qi), nil
}

// writerKeys is analyserKeys for a call that changes only what is already
// there (dead letters): it verifies the layout, so that a process that
// disagrees with it touches nothing, and records none on an unused server.
func (q *Queue) writerKeys(ctx context.Context, a int) (*partition, queueKeys, error) {
	p, k, err := q.analyserKeys(a)
	if err == nil {
		err = q.verifyLayout(ctx, p)
	}
	return p, k, err
}

// Dead lists analyser's dead-letter store, oldest death first. It is safe
// for concurrent use and costs one round trip (HGETALL).
func (q *Queue) Dead(ctx context.Context, analyser int) ([]DeadTask, error) {
	p, k, err := q.analyserKeys(analyser)
	if err != nil {
		return nil, err
	}
	m, err := onPartition(ctx, p, fmt.Sprintf("list dead of analyser %d", analyser), func(c redis.Conn) (map[string]string, error) {
		return redis.StringMap(redis.DoContext(c, ctx, "HGETALL", k.dead))
	})
	if err != nil {
		return nil, err
	}
	out := make([]DeadTask, 0, len(m))
	for field, v := range m {
		out = append(out, decodeDead(field, []byte(v)))
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].DiedAt.Equal(out[j].DiedAt) {
			return out[i].DiedAt.Before(out[j].DiedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Replay moves dead tasks (all of them when no ids are given) back to the
// ready list as new work, with their delivery count reset, behind the tasks
// already queued. Malformed records are left in place. It returns how many
// moved. It is safe for concurrent use and needs no lease.
func (q *Queue) Replay(ctx context.Context, analyser int, ids ...string) (int, error) {
	p, k, err := q.writerKeys(ctx, analyser)
	if err != nil {
		return 0, err
	}
	dead, err := q.Dead(ctx, analyser)
	if err != nil {
		return 0, err
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	args := []any{k.dead, k.ready}
	for _, d := range dead {
		if d.Raw != nil || len(ids) > 0 && !want[d.ID] {
			continue
		}
		args = append(args, d.ID, encodeTask(d.Task, 0))
	}
	if len(args) == 2 {
		return 0, nil
	}
	return onPartition(ctx, p, fmt.Sprintf("replay dead of analyser %d", analyser), func(c redis.Conn) (int, error) {
		return redis.Int(replayScript.DoContext(ctx, c, args...))
	})
}

// Purge deletes dead tasks (all of them when no ids are given) and returns
// how many it deleted. It is safe for concurrent use.
func (q *Queue) Purge(ctx context.Context, analyser int, ids ...string) (int, error) {
	p, k, err := q.writerKeys(ctx, analyser)
	if err != nil {
		return 0, err
	}
	return onPartition(ctx, p, fmt.Sprintf("purge dead of analyser %d", analyser), func(c redis.Conn) (int, error) {
		if len(ids) > 0 {
			args := []any{k.dead}
			for _, id := range ids {
				args = append(args, id)
			}
			return redis.Int(redis.DoContext(c, ctx, "HDEL", args...))
		}
		return redis.Int(purgeAllScript.DoContext(ctx, c, k.dead))
	})
}

// replayScript moves dead tasks back to the producing (left) end of the
// ready list, as new work.
//
//	KEYS[1] = dead hash, KEYS[2] = ready list
//	ARGV[1...] = task ID, encoded task, ...
//
// Returns the number moved; an ID no longer dead is skipped.
var replayScript = newScript("replay", 2, typeCheck(listAt(2))+`
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
`)

// purgeAllScript deletes a dead-letter store.
//
//	KEYS[1] = dead hash
//
// Returns the number of records it held.
var purgeAllScript = newScript("purge-all", 1, `
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return n
`)
