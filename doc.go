// Package queue implements partitioned, per-key-ordered, at-least-once task
// queues on Redis.
//
// Producers enqueue a payload for an OrderID with [Queue.AddTask] (or many
// at once with [Queue.AddTasks]) and get back a task ID. Analyser processes
// run [Queue.AnalysePool], which calls an [AnalyseFunc] for every task:
// returning nil acknowledges the task, an error or a panic retries it. All
// tasks of one OrderID are analysed by one worker goroutine, one at a time,
// in the order Redis accepted them; different OrderIDs run in parallel.
//
// A [Queue] is made with [New] from redigo pools the caller owns, or with
// [Dial] from redis:// URLs (rediss:// for TLS, verified against the
// system's roots or [Config].TLSConfig). Both start no goroutine and make no
// connection; a Queue is safe for concurrent use. Everything that can block
// takes a context.Context. For callers who drive consumption themselves,
// [Queue.Consume] returns a [Consumer], the low-level API (claim, ack, fail,
// requeue) that AnalysePool is built on.
//
// # Partitions
//
// A queue spans R Redis servers ("partitions": the pools or URLs, in order)
// with Q queues each ([Config].Queues). The mapping is a compatibility
// contract and never changes:
//
//   - A task with OrderID id goes to partition id % R, queue (id / R) % Q
//     ([Queue.Route]).
//   - Analyser a, for 0 <= a < R*Q, serves partition a % R, queue a / R; so
//     OrderID id is served by analyser id % (R*Q) ([Queue.AnalyserOf],
//     [Queue.Analysers]).
//   - Inside an analyser, OrderID id runs on worker hash(id) % Workers.
//   - String keys become OrderIDs through [KeyID], FNV-1a 64, frozen.
//
// Scale out by adding servers, queues or analyser processes: start one
// AnalysePool per analyser id, anywhere. Each server records R, Q and its
// own index at first use (a producer's first task or an analyser's start);
// a process configured otherwise (another R or Q, or the URLs in another
// order) gets a [*LayoutError] (errors.Is [ErrLayoutMismatch]) and writes
// nothing. [Queue.CheckLayout] makes the same check without recording
// anything. Changing R or Q means draining the queues and starting afresh
// under another [Config].Prefix.
//
// # Guarantees
//
//  1. At least once. Every task whose AddTask returned nil reaches the
//     analyse function, unless Redis itself loses the write (see
//     Durability). A task is never outside Redis: the claim is one atomic
//     script that moves it from the ready list into the pending record.
//     There is no pop-then-record window.
//  2. Per-OrderID order, across crashes and retries. Tasks of one OrderID
//     start in the order Redis accepted them, and a task does not start
//     before the previous task of its OrderID has finished: its analyse
//     call returned nil and its ack is queued for the pool's batched acker,
//     or it was written to the dead-letter store. A retried or recovered
//     task runs before any later task of its OrderID. (Acks reach Redis a
//     batch at a time; when a process dies with an ack not yet written,
//     both tasks are pending and the next owner runs them again in claim
//     order, so the order holds and the earlier task runs twice.)
//  3. One live owner per queue. An analyser holds a lease on its queue: a
//     Redis key with a PX expiry, so that Redis's clock decides, holding a
//     fencing token. A second AnalysePool with the same analyser id waits
//     as a hot standby and takes over when the lease is released or
//     expires. Claims, acks, retries and dead letters check the token
//     inside their script: a stale owner's late ack is refused with
//     [ErrLeaseLost], and its pool stops its work and goes back to
//     standby.
//  4. Fast recovery, position kept. When an owner takes a queue over, it
//     first puts every pending task back at the consuming end, in claim
//     order, before taking new work. The time from kill -9 to redelivery
//     is the lease's remaining time, at most [PoolConfig].LeaseTTL (5s by
//     default), plus the standby's takeover and recovery: about LeaseTTL
//     + 0.1s in the fault suite (1.02-1.11s with a 1s lease), more on a
//     loaded machine or with many pending tasks.
//  5. Bounded duplicates. After a crash, only tasks that were pending can
//     run twice. After a graceful stop, none: claimed-but-unstarted tasks go
//     back at the consuming end at once, in order, and running tasks that
//     finish within [PoolConfig].ShutdownTimeout are acknowledged before
//     the lease is released. A task still running when ShutdownTimeout ends
//     has its ctx cancelled and is handed back as well; it runs again.
//  6. A failing task holds back only its own OrderID. Retries with backoff
//     ([PoolConfig].Backoff) happen in place; other OrderIDs, on the same
//     worker too, keep flowing. After [PoolConfig].MaxAttempts deliveries
//     (also counting deliveries that ended in a crash, so a poison task
//     cannot crash-loop a process forever) the task moves to the
//     dead-letter store with its payload, attempts and last error, and the
//     OrderID continues. [Queue.Dead], [Queue.Replay] and [Queue.Purge]
//     list, replay and purge dead tasks.
//  7. Bad input gets a clear error and loses nothing: invalid URLs, an R/Q
//     mismatch, a nil callback, an empty or oversized payload
//     ([Config].MaxPayload), an analyser id out of range. Malformed records
//     found in Redis are quarantined to the dead-letter store with their
//     raw bytes, never a panic. When Redis is down, calls return the error,
//     and AnalysePool, at start as while running, reports it through
//     [PoolConfig].OnError and retries with capped backoff.
//  8. Durability is Redis's. What is lost under each persistence setting is
//     listed under Durability. AnalysePool warns through its logger at
//     start when the server's maxmemory-policy is not noeviction, and goes
//     on when CONFIG is refused.
//
// A task that was pending when its pool lost the lease (guarantee 3) runs
// again under the next owner. The pool cancels the ctx of its running tasks
// a fifth of LeaseTTL before the lease would end, so an analyse function
// that honours ctx does not overlap with the next owner's run of the same
// task.
// Make the effect of a task idempotent (a unique task ID in the target
// table, say) to turn at-least-once delivery into exactly-once effects.
//
// # Task lifecycle
//
// One queue, from producer to acknowledgement:
//
//	AddTask ──LPUSH──▶ ready (list) ──claim script──▶ pending (hash, claim order kept)
//	                                                     │
//	               dispatcher: worker = hash(OrderID) % W (same OrderID, same goroutine)
//	                                                     │
//	                         analyse fn ── nil ──▶ ack (pending entry deleted, counters)
//	                                     └─ error/panic/timeout ──▶ retry in place
//	                                                     └─ attempts exhausted ──▶ dead
//
// AddTask costs about one LPUSH: concurrent calls to one partition share
// pipelined round trips. AddTasks sends one pipeline per partition. A task
// is added at the producing (left) end of its queue's ready list; claims
// take from the consuming (right) end.
//
// A pool claims up to [PoolConfig].Prefetch tasks per round trip and keeps
// at most Prefetch tasks claimed and not finished; it claims again when a
// quarter of the window is free. An idle pool waits in a blocking command
// (BLMOVE on the ready list, which moves nothing), so a new task starts as
// soon as it is pushed, without sleep-polling. The dispatcher hands each
// task to its OrderID's worker. A worker runs each OrderID's tasks one at a
// time with [PoolConfig].TaskTimeout on each delivery; while one OrderID
// waits out a retry's backoff, the worker goes on with its other OrderIDs.
// A panic becomes a [*PanicError] with its stack, a timeout an error that
// says so, and every failed delivery reaches OnError as a [*TaskError].
//
// Acks are batched: a worker queues the task's ID and moves on, and one
// acker goroutine acknowledges everything queued by then in one script
// call, which deletes the pending records and counts them as processed. A
// failed delivery is recorded in the pending record at once (so a crash
// counts it), and the task is retried in place with its Attempt one higher.
// The last failed delivery moves it to the dead-letter store; its OrderID
// waits until that write is done.
//
// [Queue.Replay] moves dead tasks back to the producing end of the ready
// list as new work, with their delivery count reset: a replayed task runs
// after the tasks already queued, including later tasks of its own OrderID.
//
// Graceful stop: when the ctx given to AnalysePool ends, the pool stops
// claiming, hands claimed-but-unstarted tasks back at the consuming end in
// claim order (their delivery not counted), gives running tasks
// ShutdownTimeout and then cancels their ctx, hands back the interrupted
// ones (their delivery counted) ahead of the rest, writes the remaining
// acks, releases the lease (waking a standby at once) and returns nil.
// With [PoolConfig].ExitOnEmpty it does the same as soon as the ready list
// is empty and nothing is in flight.
//
// [Queue.Stats] shows each queue's ready, pending and dead counts, the
// processed, failed and redelivered counters and the lease holder;
// [Queue.Pending] lists pending tasks; [Queue.State] says whether one task
// is pending or dead. [Queue.AddTaskOnce] deduplicates enqueues by an
// idempotency key within a time window.
//
// # Crash recovery
//
// The lease of a queue is a Redis string holding "<fencing token>:<owner>"
// with a PX expiry of LeaseTTL. Taking it increments the queue's fence
// counter, so every tenure has a new token. The pool renews it every third
// of LeaseTTL, and every fenced script extends it too. When renewal has not
// succeeded by LeaseTTL less a fifth, or a script refuses the token, the
// pool treats the lease as lost: it stops claiming, cancels its running
// tasks' ctx, drops the tasks it holds in memory (they are still pending in
// Redis), reports [ErrLeaseLost] through OnError, and waits as a standby
// again. A lost lease never makes AnalysePool return: it returns when its
// ctx ends or, with ExitOnEmpty, once the queue is drained.
//
// A standby blocks in Redis until the lease is released (a wake-up list is
// pushed) or its remaining time runs out, then takes it. The new owner
// reads the pending hash and puts every task back at the consuming end in
// claim order, counting the interrupted delivery, before its first claim.
// So recovered tasks run first, in the order they were first claimed, each
// before the later tasks of its OrderID. A task that has now had
// MaxAttempts deliveries goes to the dead-letter store instead, with the
// error "delivered N times without finishing"; a pending record that does
// not decode goes there with its raw bytes.
//
// Redis expires the lease by its own wall clock, so a forward jump of the
// Redis host's clock by more than the lease's remaining time ends the
// lease at once: a standby takes over, and the old owner's next claim,
// ack or renewal is refused. Nothing is lost and no two owners write,
// but the tasks the old owner was running may run again on the new one
// while they finish (for up to a third of LeaseTTL, until its renewal is
// refused). A backward jump lengthens the lease, and so the time to
// recover from a crash. The pool's own deadlines use its process's
// monotonic clock, so a jump of the analyser host's clock changes nothing.
//
// [Queue.Consume] does the same waiting and recovery for a [Consumer]. A
// Consumer's calls are fenced like the pool's, and extend the lease; one
// left idle longer than LeaseTTL loses it.
//
// # Durability
//
// The queue is exactly as durable as the Redis servers under it. Per
// persistence setting, what a crash loses:
//
//   - No persistence (save "" and appendonly no): a restart of
//     redis-server, for whatever reason, loses everything in it: queued
//     tasks, pending records, dead letters, counters, leases and the layout
//     record. Use it for work that can be produced again.
//   - RDB snapshots only (save ...): a crash takes Redis back to its last
//     snapshot. Tasks added since are lost even though AddTask returned nil;
//     tasks acknowledged since come back and run again; dead letters since
//     are lost or come back as work.
//   - AOF with appendfsync everysec (the AOF default): every write reaches
//     the operating system before Redis replies, so a crash of
//     redis-server alone normally loses nothing; a crash of the machine
//     (power, kernel) loses about the last second of writes, with the same
//     effects as above on a smaller scale.
//   - AOF with appendfsync always: a write is on disk before its reply, so
//     nothing that Redis acknowledged is lost, at the cost of a disk sync
//     per write batch.
//
// Replication is asynchronous: a failover to a replica can lose the
// primary's last writes in the same way, whatever the persistence setting.
//
// Set maxmemory-policy to noeviction on every server. Under any other
// policy a full Redis evicts whole keys: a ready list with all its tasks, a
// pending hash, a dead-letter store, the layout record, or (under the
// volatile-* policies too) a queue's lease, which lets a standby take over
// from a live owner. Under noeviction a full Redis refuses new tasks
// instead: AddTask returns an error that wraps [ErrRedisOOM], nothing is
// lost, and analysers keep draining (they can still take a lease, claim and
// acknowledge) until memory falls and writes succeed again. AnalysePool checks the policy at start and logs a warning when
// it is not noeviction; where CONFIG is forbidden (many managed services)
// it logs at debug level and goes on.
//
// # Redis keys
//
// With P the [Config].Prefix ("qugo" by default), p a partition index and q
// a queue index, the keys of one queue share the hash tag {P:p.q}:
//
//	{P:p.q}:ready   list    encoded tasks, LPUSHed by producers, claimed from the right
//	{P:p.q}:pending hash    task ID -> encoded task ("+" first once a delivery is recorded): claimed, not finished
//	{P:p.q}:order   hash    claim seq -> the claim's task IDs back to back, while one of them is pending
//	{P:p.q}:dead    hash    task ID -> dead record (attempts, time, last error, task)
//	{P:p.q}:lease   string  "<fencing token>:<owner>" with a PX expiry: the queue's owner
//	{P:p.q}:meta    hash    fence (last token), seq (last claim), processed, failed, redelivered
//	{P:p.q}:wake    list    at most one element, pushed when a lease is released, to wake a standby
//	{P:p.q}:dedup:<OrderID>:<key>
//	                string  task ID of an AddTaskOnce call, with the dedup window as PX expiry
//	P:layout        hash    partitions (R), queues (Q) and this server's index
//
// An encoded task is a version byte (0x01), the 20-character task ID, the
// OrderID, AddedAt (Unix milliseconds) and the delivery count as uvarints,
// then the payload: about 30 bytes over the payload. Per task Redis holds
// the payload and one list entry or hash field (and, while it is pending,
// its ID in its claim's order record, which recovery reads to put tasks
// back in claim order); after a drain nothing per task is left, only the few fixed keys above (and dead letters and dedup
// keys until they are purged or expire). Every key a script touches is
// passed in KEYS.
//
// A key holding a value of the wrong Redis type (something else wrote it),
// or a lease with no expiry, makes every call that would write it fail
// with [ErrWrongType] before it changes anything (Redis does not roll a
// failed script back, so the scripts check first): AddTask returns the
// error, a pool reports it through OnError and retries with capped
// backoff, and both go on once the key holds a valid value again or is
// deleted. Records that do not decode are never an error: those in the
// ready list or the pending hash are quarantined in the dead-letter store
// with their raw bytes (when claimed, or when a new owner recovers the
// pending hash; under their field, or "<field>#2", "#3", ... when a dead
// record holds it already), and those in the dead-letter store are listed
// with them.
//
// Redis 6.2 or later is needed (RPOP with a count, BLMOVE).
//
// # Testing
//
// The package's tests run against the Redis protocol, never mocks: each
// test starts its own miniredis, or, when QUEUE_TEST_REDIS_URL names a real
// server (redis://host:port), uses its logical databases 0..R-1 as
// partitions. Every test has its own key prefix, so tests run in parallel
// on one server. goleak checks that no goroutine is left behind.
//
//	go test -race ./...
//	QUEUE_TEST_REDIS_URL=redis://127.0.0.1:6379 go test -race ./...
//
// Code that uses this package can be tested the same way: pass a pool for
// a github.com/alicebob/miniredis/v2 server to [New], as the examples do.
// miniredis runs the package's Lua scripts, but its clock moves only when
// told: keys with an expiry (the lease) lapse after Miniredis.FastForward,
// not by themselves.
package queue
