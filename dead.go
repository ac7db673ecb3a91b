package queue

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gomodule/redigo/redis"
)

// DeadTask is a task in the dead-letter store: one that used up
// MaxAttempts deliveries (failed, or ended by a crash), one whose place in
// the claim sequence was lost, or a malformed record found in Redis.
type DeadTask struct {
	// Task is the task as it was last delivered. Its ID is the field the
	// record is stored under, which Replay and Purge take: the task's ID,
	// or "<ID>#2" ("#3", ...) for a second record of one task. For a
	// malformed record (one that does not decode, or holds a task other
	// than its field's) only ID is set.
	Task
	// Attempts is how many deliveries the task had.
	Attempts int
	// LastError is the text of the last delivery's error (or, for a
	// malformed record, of why it was quarantined), its first 4 KiB when
	// longer, with a note of its whole length.
	LastError string
	// DiedAt is when the task moved to the dead-letter store, by the
	// clock of the process that moved it, to the millisecond; of two tasks
	// of one OrderID that process moved within one millisecond, the later
	// is stamped a millisecond later, and an owner of the queue stamps its
	// deaths after every death recorded when it took the queue over (by a
	// clock behind the last owner's, say), so that Replay keeps their
	// order. A stamp may so run a little ahead of the clock.
	DiedAt time.Time
	// Raw holds the record's bytes as they were found when it could not be
	// decoded; it is nil for a task that decoded.
	Raw []byte
}

// TaskID is the ID of the task the record holds, for Status and State:
// ID, less the "#2" ("#3", ...) of a second record of one task.
func (d DeadTask) TaskID() string { return deadTaskID(d.ID) }

const deadVersion = 0x02

// A dead record is:
//
//	byte    0x02 (version)
//	uvarint attempts
//	uvarint died at, milliseconds since the Unix epoch
//	uvarint length of the error, then the error
//	rest    the encoded task, or the raw bytes of a malformed record
func encodeDead(raw []byte, attempts int, msg string, diedAt int64) []byte {
	msg = clipError(msg, maxDeadMsg)
	b := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(msg)+len(raw))
	b = append(b, deadVersion)
	b = binary.AppendUvarint(b, uint64(attempts))
	b = binary.AppendUvarint(b, uint64(max(diedAt, 0)))
	b = binary.AppendUvarint(b, uint64(len(msg)))
	b = append(b, msg...)
	return append(b, raw...)
}

// maxDeadMsg bounds the error text a dead record keeps: an error of any
// size (a body read into it, say) would otherwise be stored, listed and
// shown whole with every dead task.
const maxDeadMsg = 4096

// clipError returns msg cut to at most n bytes, at a character's start,
// saying where it was cut and how long it was.
func clipError(msg string, n int) string {
	if len(msg) <= n {
		return msg
	}
	tail := fmt.Sprintf(" [... %d bytes in all]", len(msg))
	if len(tail) > n {
		tail = "" // no room to say so
	}
	return msg[:runeCut(msg, n-len(tail))] + tail
}

// runeCut returns n, or less by up to a character's bytes, so that s[:n]
// does not end inside a character (bytes that are not UTF-8 are cut
// anywhere).
func runeCut(s string, n int) int {
	for i := n; i > max(n-utf8.UTFMax, 0); i-- {
		if utf8.RuneStart(s[i]) {
			return i
		}
	}
	return n
}

// decodeDead decodes a dead record stored under field. A record that is
// itself malformed comes back with Raw set and why in LastError, never as
// an error: the store must stay listable.
func decodeDead(field string, b []byte) DeadTask {
	bad := func(why string) DeadTask {
		return DeadTask{Task: Task{ID: field}, LastError: "malformed dead record: " + why, Raw: append([]byte{}, b...)}
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
	d := DeadTask{Attempts: int(f[0]), DiedAt: time.UnixMilli(int64(f[1])), LastError: string(rest[:f[2]])}
	raw := rest[f[2]:]
	t, _, err := decodeEntry(raw)
	if err != nil {
		d.Task = Task{ID: field}
		d.Raw = append([]byte{}, raw...) // never nil, even when empty: nil means decoded
		return d
	}
	if !ownDeadField(field, t.ID) {
		// A valid task, but not the one this field records (a pending
		// record quarantined because it held another task's): quarantined
		// as it is, so that it is listed, kept and purged under its field.
		d.Task = Task{ID: field}
		d.Raw = append([]byte{}, raw...)
		return d
	}
	t.Attempt = d.Attempts
	d.Task = t
	d.ID = field
	return d
}

// ownDeadField reports whether a dead record stored under field may hold
// task id: field is id, or "<id>#<k>", where buryScript keeps a second
// record of one ID.
func ownDeadField(field, id string) bool {
	k, ok := strings.CutPrefix(field, id+"#")
	if !ok {
		return field == id
	}
	_, err := strconv.ParseUint(k, 10, 32)
	return err == nil
}

// maxOtherRecords bounds the records of one task Replay looks for beside
// the ones it is given: "<id>", "<id>#2" ... "<id>#16" (bury takes the
// first free one, and a replay takes them all).
const maxOtherRecords = 16

// withOtherRecords returns the dead-record fields ids name, sorted, with
// the fields of the other records their tasks may have.
func withOtherRecords(ids []string) []string {
	var out []string
	for _, id := range ids {
		base := deadTaskID(id)
		out = append(out, id, base)
		for k := 2; k <= maxOtherRecords; k++ {
			out = append(out, base+"#"+strconv.Itoa(k))
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(out)))
}

// deadTaskID is the ID of the task a dead record under field holds, as
// ownDeadField allows it.
func deadTaskID(field string) string {
	id, _, _ := strings.Cut(field, "#")
	return id
}

// deadChunk bounds the records one command or script of Dead, Replay and
// Purge touches, and deadChunkBytes the encoded tasks one replay script
// carries (one record goes alone when it is larger): however large the
// dead-letter store, Redis runs nothing long for them, and other queues
// of the server, and leases, go on meanwhile.
const (
	deadChunk      = 512
	deadChunkBytes = 4 << 20
)

// scanDead calls f with every record of a dead-letter store, reading it
// with HSCAN, deadChunk at a time. A record changed or added meanwhile
// may come once, twice or not at all, as HSCAN promises.
func scanDead(ctx context.Context, p *partition, key, what string, f func(field string, v []byte)) error {
	_, err := onPartition(ctx, p, what, func(c redis.Conn) (struct{}, error) {
		cursor := "0"
		for {
			r, err := redis.Values(doContext(c, ctx, "HSCAN", key, cursor, "COUNT", deadChunk))
			if err != nil {
				return struct{}{}, err
			}
			var kv [][]byte
			if _, err := redis.Scan(r, &cursor, &kv); err != nil {
				return struct{}{}, err
			}
			for i := 0; i+1 < len(kv); i += 2 {
				f(string(kv[i]), kv[i+1])
			}
			if cursor == "0" {
				return struct{}{}, nil
			}
		}
	})
	return err
}

// sortDead sorts dead tasks oldest death first (ID breaks ties) and drops
// the second of two with the same ID and death.
func sortDead(out []DeadTask) []DeadTask {
	sort.Slice(out, func(i, j int) bool {
		if !out[i].DiedAt.Equal(out[j].DiedAt) {
			return out[i].DiedAt.Before(out[j].DiedAt)
		}
		return out[i].ID < out[j].ID
	})
	return slices.CompactFunc(out, func(a, b DeadTask) bool { return a.ID == b.ID && a.DiedAt.Equal(b.DiedAt) })
}

// Dead lists analyser's dead-letter store, oldest death first. It is safe
// for concurrent use and costs one round trip (HSCAN) per 512 records.
func (q *Queue) Dead(ctx context.Context, analyser int) ([]DeadTask, error) {
	p, k, err := q.verifiedKeys(ctx, analyser)
	if err != nil {
		return nil, err
	}
	var out []DeadTask
	err = scanDead(ctx, p, k.dead, fmt.Sprintf("list dead of analyser %d", analyser), func(field string, v []byte) {
		out = append(out, decodeDead(field, v))
	})
	if err != nil {
		return nil, err
	}
	return sortDead(out), nil
}

// getDead calls f with the records of a dead-letter store under ids that
// exist, in the order of ids, reading them with HMGET, deadChunk at a time.
func getDead(ctx context.Context, p *partition, key, what string, ids []string, f func(field string, v []byte)) error {
	_, err := onPartition(ctx, p, what, func(c redis.Conn) (struct{}, error) {
		for len(ids) > 0 {
			n := min(len(ids), deadChunk)
			args := make([]any, 0, n+1)
			args = append(args, key)
			for _, id := range ids[:n] {
				args = append(args, id)
			}
			vs, err := redis.ByteSlices(doContext(c, ctx, "HMGET", args...))
			if err != nil {
				return struct{}{}, err
			}
			for i, v := range vs {
				if v != nil {
					f(ids[i], v)
				}
			}
			ids = ids[n:]
		}
		return struct{}{}, nil
	})
	return err
}

// deadRef is what Replay keeps of a dead record to order the moves.
type deadRef struct {
	id     string
	diedAt int64    // milliseconds
	size   int      // bytes of the record
	drop   []string // the task's other records, deleted when this one moves
}

// Replay moves dead tasks (all of them when no ids are given) back to the
// ready list as new work, with their delivery count reset, behind the tasks
// already queued, oldest death first (an OrderID's tasks in the order they
// died: see DeadTask.DiedAt). A replayed task's AddedAt is the
// time it was replayed: it joins its OrderID's sequence then, after the
// scheduled tasks that fell due before (see AddTaskAt), as a task added
// then would. Malformed records are left in place, and so is a task
// another analyser serves (only a record written by hand holds one). A
// task with a second record (DeadTask.TaskID) is replayed once, from the
// record of its latest death, and its other records go with it (one
// task ID is never queued twice, by this Replay or the next).
// It returns how many moved. It is safe for concurrent use and needs no
// lease: a record is moved once however many Replays run. It reads and
// moves at most 512 records or 4 MiB at a time (one read and one script
// each), so Redis is never held long; tasks added meanwhile may come
// between replayed ones, and when it fails part way, what it moved stays
// moved.
func (q *Queue) Replay(ctx context.Context, analyser int, ids ...string) (int, error) {
	p, k, err := q.verifiedKeys(ctx, analyser)
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("replay dead of analyser %d", analyser)
	// First the order, from each record's ID, death and size: the tasks
	// themselves are read a chunk at a time, so a large store is never
	// held in memory.
	var order []deadRef
	layout := q.Layout()
	ours := func(d DeadTask) bool { // a record written by hand may hold another queue's task
		return d.Raw == nil && layout.AnalyserOf(d.OrderID) == analyser
	}
	keep := func(field string, v []byte) {
		if d := decodeDead(field, v); ours(d) {
			order = append(order, deadRef{id: d.ID, diedAt: d.DiedAt.UnixMilli(), size: len(v)})
		}
	}
	if len(ids) == 0 {
		err = scanDead(ctx, p, k.dead, what, keep)
	} else {
		err = getDead(ctx, p, k.dead, what, withOtherRecords(ids), keep)
	}
	if err != nil {
		return 0, err
	}
	slices.SortFunc(order, func(a, b deadRef) int {
		return cmp.Or(cmp.Compare(a.diedAt, b.diedAt), strings.Compare(a.id, b.id))
	})
	order = slices.CompactFunc(order, func(a, b deadRef) bool { return a.id == b.id })
	// A task with two records ("<id>" and "<id>#2") is replayed once, from
	// its latest death, and its other record goes with it: one task ID is
	// never queued twice, by this Replay or the next.
	latest := make(map[string]int, len(order))
	for i, d := range order {
		latest[deadTaskID(d.id)] = i
	}
	kept := order[:0:0]
	for i, d := range order {
		if j := latest[deadTaskID(d.id)]; j != i { // j > i: the latest comes later
			order[j].drop = append(order[j].drop, d.id)
			continue
		}
		kept = append(kept, d)
	}
	order = kept
	// Then the moves, in that order: a chunk is read again and moved by
	// one script, which skips an ID that is no longer dead (replayed or
	// purged meanwhile).
	moved := 0
	for len(order) > 0 {
		n, size, records := 0, 0, 0 // records: moved and dropped
		for n < len(order) && (n == 0 || records+1+len(order[n].drop) <= deadChunk && size+order[n].size <= deadChunkBytes) {
			size += order[n].size
			records += 1 + len(order[n].drop)
			n++
		}
		chunk := make([]string, n)
		drop := map[string][]string{}
		for i := range chunk {
			chunk[i] = order[i].id
			drop[chunk[i]] = order[i].drop
		}
		order = order[n:]
		args := []any{k.dead, k.ready, k.meta}
		now := time.Now()
		err := getDead(ctx, p, k.dead, what, chunk, func(field string, v []byte) {
			if d := decodeDead(field, v); ours(d) {
				t := d.Task
				t.ID = deadTaskID(field)
				t.AddedAt = now // new work, queued now (see Replay)
				args = append(args, field, encodeTask(t, 0))
				for _, f := range drop[field] {
					args = append(args, f, "")
				}
			}
		})
		if err == nil && len(args) > 3 {
			var m int
			m, err = onPartition(ctx, p, what, func(c redis.Conn) (int, error) {
				return redis.Int(runScript(ctx, replayScript, c, args...))
			})
			moved += m
		}
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// Purge deletes dead tasks (all of them when no ids are given) and returns
// how many records it deleted. A task's other records ("<ID>#2", ...) go
// with it, as Replay takes them: a purged task never comes back through a
// later Replay. It is safe for concurrent use. It deletes at most 512
// records per command (HSCAN and HDEL), so Redis is never held long; a
// record that dies while a Purge of all runs may be left.
func (q *Queue) Purge(ctx context.Context, analyser int, ids ...string) (int, error) {
	p, k, err := q.verifiedKeys(ctx, analyser)
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("purge dead of analyser %d", analyser)
	if len(ids) > 0 {
		ids = withOtherRecords(ids)
	} else {
		err = scanDead(ctx, p, k.dead, what, func(field string, _ []byte) { ids = append(ids, field) })
		if err != nil {
			return 0, err
		}
	}
	return onPartition(ctx, p, what, func(c redis.Conn) (int, error) {
		purged := 0
		for len(ids) > 0 {
			n := min(len(ids), deadChunk)
			args := make([]any, 0, n+1)
			args = append(args, k.dead)
			for _, id := range ids[:n] {
				args = append(args, id)
			}
			m, err := redis.Int(doContext(c, ctx, "HDEL", args...))
			purged += m
			if err != nil {
				return purged, err
			}
			ids = ids[n:]
		}
		return purged, nil
	})
}

// replayScript moves dead tasks back to the producing (left) end of the
// ready list, as new work.
//
//	KEYS[1] = dead hash, KEYS[2] = ready list, KEYS[3] = meta hash
//	ARGV[1...] = record field, encoded task, ...; a field with an empty
//	task is another record of the last task named, deleted if that moved
//
// Returns the number moved; a record no longer there is skipped. It
// counts the large entries it pushes (large.go).
var replayScript = newScript("replay", 3, typeCheck(listAt(2), hashAt(3))+luaLarge+`
local n, moved, large = 0, false, 0
for i = 1, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    if moved then redis.call('HDEL', KEYS[1], ARGV[i]) end
  elseif redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    if #ARGV[i + 1] > $largeEntry then large = large + 1 end
    n, moved = n + 1, true
  else
    moved = false
  end
end
addLarge(KEYS[3], KEYS[2], large)
return n
`)
