// Package queue implements partitioned, per-key-ordered, at-least-once task
// queues on Redis.
//
// Producers enqueue a payload for an OrderID with [Queue.AddTask] (or many
// at once with [Queue.AddTasks]) and get back a task ID. Analyser processes
// run [Queue.AnalysePool], which calls an [AnalyseFunc] for every task:
// returning nil acknowledges the task, an error or a panic retries it. The
// tasks of one OrderID are analysed one at a time, in the order Redis
// accepted them, by default all on one worker goroutine; different
// OrderIDs run in parallel (see Workers and dispatch).
//
// A [Queue] is made with [New] from redigo pools the caller owns, or with
// [Dial] from URLs: redis:// (rediss:// for TLS, verified against the
// system's roots or [Config].TLSConfig), redis+cluster:// for a Redis
// Cluster, redis+sentinel:// for a primary watched by Sentinel. New starts
// no goroutine; Dial starts one per partition behind Sentinel, and a
// cluster's router reads its slot map again in the background after a
// redirection; Close joins them. A Queue
// is safe for concurrent use; after [Queue.Close] every call that would use
// Redis returns [ErrClosed], and a pool or group member still running stops
// and returns it. Everything that can block takes a
// context.Context. [Queue.Consume] returns a [Consumer], the low-level API
// (claim, ack, fail, requeue) over the same store, for callers who drive
// consumption themselves.
//
// # Partitions
//
// A queue spans R Redis servers ("partitions": the pools or URLs, in order)
// with Q queues each ([Config].Queues). [Queue.Layout] returns the [Layout]
// value whose methods are the routing contract, which never changes:
//
//   - A task with OrderID id goes to partition id % R, queue (id / R) % Q
//     ([Layout.Route]).
//   - Analyser a, for 0 <= a < R*Q, serves partition a % R, queue a / R
//     ([Layout.Serves]); so OrderID id is served by analyser id % (R*Q)
//     ([Layout.AnalyserOf], [Layout.Analysers]).
//   - Inside an analyser, the pool's dispatch mode decides which worker
//     runs an OrderID's tasks (see Workers and dispatch).
//   - String keys become OrderIDs through [KeyID], FNV-1a 64, frozen.
//
// Scale out by adding analyser processes (one AnalysePool per analyser id,
// anywhere), queues or servers. Each server records R, Q and its own index
// at first use: before a process first writes to any partition, it reads
// the layout of every one, and records it on each that answers and has
// none. A process configured otherwise (another R or Q, or the URLs in
// another order) gets a [*LayoutError] (errors.Is [ErrLayoutMismatch])
// whichever partition it writes to first, even one whose index happens to
// match, and writes nothing; so does one given one server as two
// partitions (each partition about to be recorded first writes its index
// under a key of the process's own and reads it back). The calls that
// only read ([Queue.Stats], [Queue.Status], [Queue.State],
// [Queue.Scheduled], [Queue.Pending], [Queue.Dead], [Queue.GroupStatus])
// check the layout the same way, once per partition, and refuse with
// the same error rather than read another layout's queues under the
// names of their own; they record none, and a server with none recorded
// passes (and is read again at the next call). A server that does not
// answer fails only the calls that use it, which check it again next
// time. [Queue.CheckLayout] checks every partition without recording.
// A server that lost its data (a restart without persistence) is laid
// out again by the first process to write to it; a pool still running
// that then meets another layout stops as when its ctx ends and
// [Queue.AnalysePool] returns the [*LayoutError].
// Changing R or Q means draining the queues and starting afresh under
// another [Config].Prefix.
//
// # Redis Cluster
//
// [Dial] takes a Redis Cluster as redis+cluster://[[user]:password@]host:port[,host:port...]
// (rediss+cluster:// for TLS), naming one or more seed nodes. That URL is
// one partition whose Q queues are spread over the cluster's primaries by
// their hash slots ({P:p.q}); list it R times for R partitions on one
// cluster (they share one router). Usually R stays 1 and Q grows with
// the load: 64 queues land on every primary of a 3-primary cluster.
//
// The router (cluster.go) reads the slot map with CLUSTER SHARDS (CLUSTER
// SLOTS on 6.2), keeps one pool per primary, and sends every command,
// pipelined ones too, to the primary of its key's slot: a pipeline that
// spans slots is split over the primaries and its replies come back in
// order. It follows MOVED (the map takes the new owner and is read again,
// one reading at a time) and ASK (the command goes to the migration's
// target once, after ASKING), and sends a command again after a capped
// backoff when a node refused it before running it (TRYAGAIN, CLUSTERDOWN,
// LOADING, UNBLOCKED; the idle pool's blocking wait ends with MOVED when
// its slot moves, and follows it). It never sends again a command whose
// reply was lost: that stays an uncertain reply, handled as on one server.
// A failover shows as a connection error (the map is read again), then as
// refusals until a replica is promoted, then as MOVED to it: a command
// that could not reach the failed primary is sent again (it did not run)
// until the map names the new one, up to 20 s per call, and producers and
// pools go on. In a pipeline (AddTask calls that share a round trip,
// AddTasks, Stats), a primary that cannot be reached fails its own
// commands only, at once and without sending them again: the others get
// their replies, and an add that failed so may have landed (its reply is
// uncertain: see [Queue.AddTask]). rediss+cluster:// takes each node's TLS
// port and verifies its certificate for the address the cluster announces
// (an IP address unless it announces host names), or for
// [Config].TLSConfig's ServerName when set.
//
// A failover without [Config].WaitReplicas can lose the old primary's
// last writes, and a cluster hides it: a primary that stalled (a long
// pause, a stopped VM) until its replica took over wakes believing it
// is still the primary, runs the commands it had queued and answers
// them, then becomes the new primary's replica and drops them; the next
// commands get MOVED and follow it without an error. A live owner would
// not read its pending tasks again until the queue changed owner, maybe
// at the next deploy, and the tasks whose acks were lost would wait
// until then. So the router counts, per slot, the times another primary
// came to serve it, and a pool looks after each claim (an atomic load):
// when another primary served its queue's slot since its tenure began,
// it reports it through [PoolConfig].OnError, ends the tenure as a
// graceful stop does (running tasks finish, their ctx cancelled after
// [PoolConfig].ShutdownTimeout, when they run again; the others stay
// pending) and takes the queue again at once, checking the layout and
// putting every pending task back in claim order, as a takeover does:
// those tasks run again then. A [Consumer]'s next Claim resyncs the same
// way. A slot migration (resharding) changes the slot's primary too,
// with nothing lost: each queue it moves costs one such resync, and a
// task running longer than ShutdownTimeout then is cancelled and runs
// again.
//
// On a cluster the layout is recorded once per partition (P:layout:p), not
// per server: the cluster is one keyspace, and the check does not repeat on
// every new connection. Idle pools wait with blocking commands (the shared
// waiter needs a server's connection state), and [New] is for one server
// per pool: a cluster comes through [Dial].
//
// # Consumer groups
//
// Instead of naming its analysers, a process can join a group with
// [Queue.JoinGroup]: the group's live members share all R*Q analysers,
// each in proportion to its [GroupConfig].Weight (⌊N/M⌋ or ⌈N/M⌉ each
// with equal weights), and each member runs a pool on every analyser it
// is given. Members heartbeat every fifth of [GroupConfig].SessionTTL
// into the group's keys on partition 0; every heartbeat, join and leave
// is one script that also drops members whose session ran out and, when
// membership changed, computes the next assignment from the last one, so
// all members read one assignment and no leader is needed. The assignment
// is sticky: a queue stays with its member up to that member's share, so
// a join takes about N/(M+1) queues from the members that hold the most,
// a leave or a crash moves only the queues of the member gone, and every
// other queue runs on without a pause.
//
// A queue that moves is stopped by its old member with the pool's graceful
// stop and released with a wake-up; its new member, already waiting on the
// lease, takes it at once, so a planned move runs no task twice. When a
// member dies, the survivors are given its queues as soon as its session
// runs out and take each when its lease does: with the defaults (5s
// each), within about 5s of the crash, pending tasks first, in claim
// order. A member that restarts with the same [GroupConfig].Member within
// its session gets the same queues back, once their leases run out, and
// no other queue moves. The assignment only decides which member tries to
// run a queue; the queue's fenced lease still decides which one does, so
// every guarantee below holds through joins, leaves, crashes and pauses,
// and a paused member that wakes up (SIGSTOP, a long GC) runs nothing it
// lost. [Queue.GroupStatus] (and "qugo group NAME") shows members,
// heartbeats, weights and the assignment.
//
// # Guarantees
//
//  1. At least once. Every task whose AddTask returned nil reaches the
//     analyse function, unless Redis itself loses the write (see
//     Durability). The claim is one atomic script that makes ready tasks a
//     claim record's (where they are, at the ready list's consuming end,
//     or in a list of the claim's own): there is no pop-then-record window,
//     and every script checks the keys and values it reads before its first
//     write, so a script that fails has changed nothing.
//  2. Per-OrderID order, across crashes and retries. Tasks of one OrderID
//     start in the order Redis accepted them, and a task does not start
//     before the previous task of its OrderID has finished: its analyse
//     call returned nil and its ack is queued for the pool's batched acker,
//     or it was written to the dead-letter store. A retried or recovered
//     task runs before any later task of its OrderID. (When a process dies
//     with an ack not yet written, both tasks are pending and the next
//     owner runs them again in claim order: the earlier one runs twice.)
//  3. One live owner per queue. An analyser holds a lease on its queue (a
//     key with a PX expiry, so that Redis's clock decides, holding a value
//     unique to the tenure). Another AnalysePool with the same analyser id
//     waits as a hot standby and takes over when the lease is released or
//     expires. Every script that changes pending work checks the lease
//     value inside Redis: a stale owner's late call is refused with
//     [ErrLeaseLost], and its pool stops and goes back to standby.
//  4. Fast recovery, position kept. A new owner first puts every pending
//     task back at the consuming end, in claim order, before taking new
//     work. From kill -9 to redelivery takes the lease's remaining time (at
//     most [PoolConfig].LeaseTTL, 5s by default) plus takeover and
//     recovery: about LeaseTTL + 0.1s in the fault suite, more on a loaded
//     machine or with many pending tasks.
//  5. Bounded duplicates. After a crash, only tasks that were pending can
//     run twice. After a graceful stop, none but the tasks still running
//     when [PoolConfig].ShutdownTimeout ends: their ctx is cancelled and
//     they run again. Unstarted tasks go back at the consuming end in
//     claim order, at once or, after a Redis error, through the next
//     owner's recovery; tasks that finish in time are acknowledged before
//     the lease is released (unless Redis refuses the acks through the
//     whole stop: see [PoolConfig].ShutdownTimeout; they run again then).
//  6. A failing task holds back only its own OrderID. Retries with backoff
//     ([PoolConfig].Backoff) happen in place. A task waiting out its
//     backoff, and the tasks queued behind a retrying or slow task of
//     their OrderID, count against [PoolConfig].MaxHeldTasks and
//     MaxHeldBytes, not Prefetch, so other OrderIDs keep flowing while
//     that backlog fits in them. After
//     [PoolConfig].MaxAttempts deliveries the task moves to the dead-letter
//     store with its payload, attempts and last error, and the OrderID
//     continues. A delivery that crashes its owner counts once it was
//     recorded as started; first deliveries are not recorded (it would cost
//     a round trip per task), so a poison task that kills its process is
//     dead-lettered after at most MaxAttempts+1 crashes, and tasks claimed
//     with it lose nothing (with MaxAttempts 1, whose first redelivery is a
//     task's last, the tasks a crash left pending start one at a time
//     after it, each once the one before is settled).
//     [Queue.Dead], [Queue.Replay] and [Queue.Purge]
//     list, replay and purge dead tasks.
//  7. Bad input gets a clear error and loses nothing: invalid URLs or
//     settings ([ErrBadConfig]), an R/Q mismatch, a nil callback, an empty
//     or oversized payload, an analyser id out of range. Records that do
//     not decode, and pending tasks whose place in the claim sequence is
//     lost, go to the dead-letter store: never a panic, never a guess. When
//     Redis is down, calls return the error; AnalysePool reports it
//     through [PoolConfig].OnError and retries with capped backoff.
//  8. Durability is Redis's: see Durability. AnalysePool warns at start
//     when the server's maxmemory-policy is not noeviction.
//
// A pool cancels its running tasks' ctx a fifth of LeaseTTL before its
// lease would end, so an analyse function that honours ctx does not
// overlap with the next owner's run of the same task, whether the pool
// lost Redis (a network partition) or its renewals came too late. One
// that ignores its ctx runs on while the next owner runs the task again:
// nothing outside the process can stop it, and a process stopped whole
// (SIGSTOP, a VM paused) cannot cancel anything until it runs again. Make the effect of a
// task idempotent (a unique task ID in the target table, say) to turn
// at-least-once delivery into exactly-once effects.
//
// # Task lifecycle
//
//	AddTask ─LPUSH─▶ ready (list) ─claim script─▶ claim record (in place, or a list) ─▶ the OrderID's worker
//	analyse fn ─ nil ─▶ ack (batched, a bitmap per claim; a claim's record goes with its last task)
//	           └ error/panic/timeout ─▶ retry in place ─ MaxAttempts ─▶ dead-letter store
//
// AddTask costs about one LPUSH (concurrent calls to one partition share
// pipelined round trips) and returns when its ctx ends; AddTasks sends one
// pipeline per partition. [PoolConfig].Prefetch bounds the OrderIDs a pool
// claims with a task running or about to run (those waiting out a retry's
// backoff do not count while they wait), and so what one claim takes;
// MaxHeldTasks and MaxHeldBytes bound all the tasks it holds (a task
// larger than MaxHeldBytes is still claimed, alone). A pool's claim is made
// in place: the claimed entries stay at the ready list's consuming end,
// none copied and none passing through Lua, a claim record and the meta
// hash saying whose they are, and an LRANGE reads them, in the same
// pipeline as the script once the last read saw what is past the end; a
// finished claim leaves the list once the claims before it have. Such a
// claim takes up to 4000 tasks, and no entry over 8 KiB: every write of a
// larger one counts it in the meta hash, and while one is counted the
// script claims through Lua, counting bytes, so that no claim reads much
// past MaxHeldBytes (docs/reliability.md, "Large entries").
// While a cancel mark or a due scheduled task waits, the claimed end is
// first moved into lists of the claims' own (SORT ... STORE where an ACL
// allows it) and the script takes up to 1000 tasks itself; so is it
// before a task of it is handed back, retried, dead-lettered or
// cancelled, and by a new owner before its recovery. An idle
// pool is woken as soon as a task is pushed (see Idle pools). Each delivery
// gets [PoolConfig].TaskTimeout (one that returns after it, even nil,
// fails as timed out); a panic becomes a [*PanicError], a call
// of runtime.Goexit (t.FailNow in a test) [ErrGoexit], the worker going on
// either way (a Goexit in OnDone, OnError or Backoff ends no goroutine
// of the pool either; a panic there is not recovered), and every failed
// delivery reaches OnError as a [*TaskError] and is recorded in the
// pending record at once. An error whose Error method panics (a typed
// nil: "var e *myErr; return e") fails its delivery as any error does;
// its text, wherever the package shows it, says that its Error method
// panicked and names its type, and errors.Is and errors.As still find it. [Queue.Replay] puts dead tasks back at
// the producing end as new work, behind the tasks already queued, their
// delivery count reset, an OrderID's in the order they died, whichever
// owner of the queue moved them (see [DeadTask].DiedAt).
//
// Graceful stop: when AnalysePool's ctx ends, the pool stops claiming
// and starting tasks (each worker checks ctx's deadline, if it has one,
// before it starts a task), hands unstarted tasks back in claim order
// (uncounted), gives running
// tasks ShutdownTimeout, cancels the ctx of those still running and hands
// them back too (counted), writes the remaining acks (retrying refused
// ones for ShutdownTimeout plus the longer of ShutdownTimeout and 5s from
// the stop's start, then leaving those tasks pending), releases the lease
// (waking a standby at once) and returns nil. After a failed hand-back, or while a
// claim's reply is lost, it hands back nothing more: the next owner puts
// those tasks back with the rest, in claim order. [PoolConfig].ExitOnEmpty
// stops the same way once the queue is drained.
//
// # Scheduling, cancelling, pausing and status
//
// [Queue.AddTaskAt] keeps a task in its queue's scheduled set until it is
// due. The claim script of the queue's owner, fenced by its lease, merges
// the due tasks with the ready list by time, reading only the heads of
// both: a due task goes to the consuming end once every ready task added
// before its due time has been claimed, ahead of those added after. So a
// scheduled task joins its OrderID's sequence at its due time, however
// late the owner gets to it (none held the lease then, or it was paused
// or busy): tasks of its OrderID added before that run before it, tasks
// added after run after it; scheduled tasks due in the same millisecond
// join in the order Redis accepted them (up to 1024 a millisecond). A
// claim moves at most 8 MiB of due tasks (at least one); the rest follow
// with the next claims. Due times and the times tasks were added are the
// producers' clocks: keep them in sync. An idle pool's wait ends at the next due time, and,
// through the waiter, when a task is scheduled sooner (a pool that waits
// on its own connection learns of it within a second). Nothing moves
// while a queue is paused. [PoolConfig].ExitOnEmpty does not wait for
// tasks not yet due, and a paused queue with nothing ready or due reads
// as empty.
//
// [Queue.Cancel] removes a scheduled task. Any other task gets a mark in
// its queue's cancels hash; a claim reports the marked tasks it takes,
// and the pool finishes them as cancelled without running them. The
// queue's owner reads the marks of the tasks it holds every 200ms while
// it holds tasks (all of the queue's when they are no more than it
// holds), hands them to its workers, then marks them seen, and Cancel of
// a task it holds returns once its mark is seen: a held task not started
// by then never starts. A marked task that runs has its ctx cancelled,
// and is finished as cancelled, not retried, unless it returns nil; one
// waiting out a retry's backoff is finished at once.
// Either way the OrderID goes on with its next task, as after an ack.
// [Consumer.Claim] never returns a marked task. A mark goes with its task
// when the task is acknowledged or dead-lettered (its cancel came too
// late; a replay runs it again); marks of tasks that are nowhere any more
// are dropped, up to 1000 a claim, once every task that was queued when
// they were set has been claimed, or a claim finds the ready list empty.
//
// [Queue.Pause] sets a field of each named queue's meta hash, which the
// claim script reads: a paused pool claims nothing (it looks again every
// 250ms), while its lease, renewals, running tasks and acks go on.
//
// [Queue.Status] reads, in one pipelined round trip (two for a task a
// claim record names: the second reads its place, then the rest again,
// so that a task finished between the two is seen finished), the
// pending record (with the retries hash, written when a delivery fails:
// last error and next attempt), the scheduled set, the dead-letter store, the cancel
// marks and, with [Config].Retention, the history: a hash per time bucket
// of an eighth of the retention, task ID (packed in 13 bytes) -> about 10
// bytes of varints, which the ack and cancel scripts write and Redis
// expires. A task still in the ready list reads as [StateUnknown].
//
// # Headers
//
// A task may carry headers, a small string map for what travels beside
// the payload (trace context, a tenant, a content type): [WithHeaders] for
// [Queue.AddTask] and [Queue.AddTaskOnce], [Task].Headers for
// [Queue.AddTasks]. They come back in [Task].Headers with every delivery,
// retry and recovery, and in the dead-letter store and its replays. At
// most 64, keys not empty, 8 KiB encoded in all, checked with the payload
// before anything is written ([ErrBadHeaders]). They are stored in the
// task's entry, after its delivery count, keys sorted, with a flag in the
// entry's first byte; a task without headers is encoded as before headers
// existed, so it costs nothing more, and entries already in Redis read
// unchanged. Analysers of a release before headers quarantine a task with
// headers as malformed: upgrade analysers before producers set them. The
// module github.com/qugo/queue/otel propagates OpenTelemetry trace
// context through headers and records a span per delivery; the order of
// an OrderID's tasks does not depend on their headers.
//
// # Workers and dispatch
//
// A pool runs its tasks on worker goroutines: [PoolConfig].Workers of
// them, or, in an elastic pool, between MinWorkers and MaxWorkers. In
// every mode and through every resize, the tasks of one OrderID run one at
// a time, in claim order, each on one goroutine: an OrderID's next task
// starts only after the previous one finished. [PoolConfig].Dispatch
// decides which worker runs them:
//
//   - [DispatchByOrder] (the default): the tasks of an OrderID go to the
//     worker its hash picks among the n workers (a hash of the OrderID
//     modulo n), and stay on that worker while the pool holds any task of
//     the OrderID (claimed and not finished), whatever n becomes
//     meanwhile. Only an OrderID the pool holds no task of is placed anew,
//     by the n of the moment. So in a fixed pool an OrderID always runs on
//     the same worker; in an elastic pool it may move after a pause in its
//     tasks, and state a worker keeps per OrderID must allow for that. An
//     OrderID shares its worker with others: a slow task delays the
//     OrderIDs behind it on its worker, even while other workers are idle.
//   - [DispatchFree]: the workers share one list of OrderIDs with a task
//     ready, oldest first. An OrderID is bound to a worker only while one
//     of its tasks runs; then it goes to the back of the list, and its
//     next task runs on whichever worker is free first. An OrderID never
//     waits behind another OrderID's task while a worker is idle. The cost:
//     every worker takes and settles its tasks under the shared list's one
//     lock, where DispatchByOrder's workers each have their own.
//
// An elastic pool starts with MinWorkers. When tasks have waited for a
// worker for 10ms while every worker was busy, it adds one, up to
// MaxWorkers (under DispatchByOrder the new worker takes only OrderIDs
// placed from then on: under a backlog of OrderIDs the pool always holds
// tasks of, none is placed anew, so the worker added stays idle, the pool
// grows no further and retires it after ScaleDownAfter; DispatchFree
// spreads such a backlog over every worker it grows to). Every [PoolConfig].ScaleDownAfter, it retires as
// many workers as stayed idle all that time, down to MinWorkers, the last
// started first. A retiring worker takes no new OrderID and never drops a
// task: it ends once it holds none; under DispatchByOrder, once the pool
// holds no task of the OrderIDs it had (their tasks claimed meanwhile
// included), under DispatchFree after its running task. The pool logs at
// debug level "queue: workers grown" when a worker starts and "queue:
// workers shrunk" when a retiring one ends, with the live worker count,
// and "queue: workers retiring" when it decides to shrink, with the count
// it shrinks to; [Counters].Workers and [AnalyserStats].Workers report the
// live count.
//
// # Rate limits
//
// [PoolConfig].Rate caps the tasks a pool starts a second, across all its
// workers, with a token bucket of [PoolConfig].Burst tokens (1 by
// default), one a start: in any span of T seconds it gives at most Burst +
// T*Rate tokens. (A start never comes before its token; starts held up by
// a stalled process come together after it.) Retries and redeliveries take a token like first deliveries; a
// task moved to the dead-letter store without running takes none. Order
// is kept: a worker waits for the limit holding the task it is to start,
// its OrderID's next, so no later task of that OrderID can pass it. The
// lease is renewed meanwhile, however slow the rate; a stop or a lost
// lease ends the wait at once, and the task does not start (a graceful
// stop hands it back uncounted). The limit is per pool, so per analyser
// and per process: ten analysers with Rate 50 start up to 500 tasks a
// second in all. A limit across processes would need a limiter shared in
// Redis, which this package does not have. Claims are not slowed: a pool
// draining slowly holds tasks of up to Prefetch OrderIDs pending
// meanwhile (and of those waiting out a retry's backoff), and a lower
// Prefetch keeps fewer. An elastic pool does not
// grow while its workers wait for the limit.
//
// # Crash recovery
//
// A lease value is "<fencing token>.<nonce>:<owner>": the token is Redis's
// clock in microseconds (or the last token plus one), the nonce random, so
// no two tenures share a value, even after Redis lost writes. The pool
// renews it every third of LeaseTTL (fenced scripts extend it too). When
// renewal has not succeeded by LeaseTTL less a fifth, counted from when the
// last renewal that did (or the acquisition) was sent, or a script refuses
// the value, the pool stops claiming, cancels its tasks' ctx, drops what
// it holds (still pending in Redis), reports [ErrLeaseLost] through
// OnError and waits as a standby again.
//
// A standby waits until the lease is released or runs out, takes it, and
// puts every pending task back at the consuming end in claim order
// before its first claim. It counts only recorded deliveries: a failure
// (with the retry it schedules), and the start of every delivery but a
// first one. A task whose only delivery was a first one goes back
// uncounted but marked, so that its next delivery is recorded before it
// starts. To the dead-letter store go instead a task with MaxAttempts
// recorded deliveries ("delivered N times without finishing"), a record
// that does not decode (with its raw bytes), and a task whose
// claim-sequence record is lost, its place among its OrderID's tasks
// unknown (the pool reports [ErrMalformed] through OnError).
//
// An acquisition whose reply does not arrive may have taken the lease all
// the same: the next try, which carries the same nonce, takes such a lease
// as its own (a try that arrives late changes nothing), and a pool
// stopped meanwhile, or a Consume that returns the error, gives it up
// with a wake-up, so no lease is held by a process that does not know
// it. A new fencing token whose reply does not arrive is asked for again,
// with the same nonce, before the next call that needs the lease.
//
// A claim whose reply does not arrive (a reset connection, or no reply
// within the read timeout, [Config].ReadTimeout for Dial's pools) may have
// been made all the same. The pool then claims nothing more until its
// tasks in hand are finished and acknowledged, gives its lease a new
// fencing token, so that the claim is refused if it is still on its way,
// and puts what is pending back in claim order. A [Consumer] does the same
// at its next Claim or Requeue, for the tasks it has not handed out, and
// after a Requeue that failed, whose tasks it then hands back first.
//
// Redis expires the lease by its own wall clock. A forward jump of the
// Redis host's clock ends it early: a standby takes over, and tasks the old
// owner is running may run again meanwhile, until its next renewal (at
// most a third of LeaseTTL later) is refused; nothing is lost. A backward
// jump delays recovery from a crash. The pool's own deadlines use its
// process's monotonic clock.
//
// # Idle pools
//
// The idle pools of one process on one server wait through two shared
// connections, not a blocking connection each: 64 idle pools hold the
// two, plus their pool's idle connections, and a new task still starts
// within a millisecond or so. The two use Redis's client-side caching
// protocol (CLIENT TRACKING, Redis 6 and later), in its default mode over
// RESP2: one subscribes to __redis__:invalidate, the other has tracking
// redirected to it and reads the key a pool waits on (LLEN of the ready
// list; PTTL of the lease, for a standby). Redis then sends that key's
// name once, when it is next written, deleted or expires, and the pools
// waiting on it wake. Producers change nothing: their LPUSH is the write.
// Every watched key is read again each second in one pipeline (a lost
// message costs at most that), a wait whose read goes unanswered ends
// and its pool looks for itself, a lost connection wakes every wait, and
// a flush wakes them all. A standby keeps a timer at the lease's time
// left too: Redis may tell of an untouched key's expiry up to ~100ms
// late. The two connections are dialled with the partition's pool's dial
// function (so its options and authentication apply), outside its
// MaxActive, named qugo-waiter in CLIENT LIST, made when a pool first
// waits and closed when the last AnalysePool on the partition returns (or
// at [Queue.Close]).
//
// A server that refuses tracking (a proxy that does not pass CLIENT
// TRACKING or SUBSCRIBE through, an ACL that forbids them, miniredis), or
// a pool whose connections cannot wait for a reply without a read
// deadline (redigo's own can), makes every pool of the partition wait on
// a blocking command of its own instead (BLMOVE on the ready list, BLPOP
// on the lease's wake list), waking to look again each second, as
// before; the waiter asks again a minute later. A [Consumer] always
// waits on a connection of its own.
//
// # Durability
//
// The queue is exactly as durable as the Redis servers under it. Without
// persistence a restart of redis-server loses everything in it. With RDB
// snapshots only, a crash takes Redis back to its last snapshot: tasks
// added since are lost though AddTask returned nil, tasks acknowledged
// since run again. With AOF and appendfsync everysec, a crash of
// redis-server alone normally loses nothing, one of the machine about the
// last second of writes; with appendfsync always, nothing Redis
// acknowledged is lost. Replication is asynchronous: a failover can lose
// the primary's last writes in the same way, and with them tasks whose
// AddTask returned nil, acks (those tasks run again: on a Redis Cluster
// or behind Sentinel as soon as the owner sees its queue served by the
// new primary, see Redis Cluster and Sentinel; on one server at the
// pool's next resync after a claim that failed, or when the queue next
// changes owner) and a lease's
// fencing token. [Config].WaitReplicas closes that gap for the pools [Dial] makes:
// every call that changes a queue's state then waits, with Redis's WAIT,
// until that many replicas have the write before it reports success, so
// with 1 an acknowledged AddTask survives a failover to that replica (on
// standalone, Sentinel and Redis Cluster primaries alike). A write the
// replicas do not acknowledge within [Config].WaitTimeout is reported as
// [ErrNotReplicated]: made on the primary, not known to survive it, like
// a lost reply. Each writing round trip then costs the replicas'
// acknowledgement too (BenchmarkWaitReplicas measures it), and while fewer
// replicas than asked are connected, writes fail. It covers one failure:
// after a failover the new primary holds the only copy until a replica
// has synced from it, and a failed primary brought back empty as a
// replica must not be promoted before its first sync ends (start it with
// replica-priority 0, or cluster-replica-no-failover yes, until then),
// or every queued task is lost with the new primary. WAIT does not make
// Redis synchronous: a primary that fails before the wait ends may still
// have the write, and the replica's own persistence settings decide what
// a crash of the replica loses. Set maxmemory-policy to
// noeviction: any other policy lets a full Redis evict a ready list, a
// claim record or a lease. Under noeviction a full Redis refuses new tasks
// ([ErrRedisOOM]) and analysers keep draining it. A pool that takes its
// queue again and finds that its Redis lost the layout record (a restart
// without persistence) says so at Warn through [PoolConfig].Logger: the
// tasks Redis held then are lost. So does a pool of a queue made by
// [Dial], whose new connections record the layout again first.
//
// # Sentinel
//
// A partition may be a primary watched by Redis Sentinel. Give [Dial]
//
//	redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/name[/db][?sentinel_user=u&sentinel_password=p]
//
// with the sentinels' addresses (port 26379 by default) and the name they
// know the primary by; rediss+sentinel:// uses TLS for the sentinels and
// the primary alike. The user and password before the hosts are the
// primary's; sentinel_user and sentinel_password are the sentinels' own,
// when they require any. Under TLS the primary's certificate is verified
// for the host the sentinels name (an IP address unless they announce
// host names), or for [Config].TLSConfig's ServerName when set. The
// sentinels are asked in turn, the one that
// answered last first; one that is down, or does not answer within
// [Config].DialTimeout, is skipped. Every new connection checks ROLE and
// refuses a server that is not a primary: right after a failover a
// sentinel may still name the old one.
//
// At a failover, producers and pools go on without a restart. A
// connection that fails, or gets a READONLY reply from a demoted primary,
// is dropped and makes the next connection ask the sentinels again; one
// goroutine per partition, joined by [Queue.Close], follows +switch-master
// on a sentinel and takes the new primary at once, and idle connections to
// the old one are dropped when next borrowed. A lookup asks every sentinel
// and takes the address most name: during a failover the leader names the
// promoted replica before the others, and a process that took its word
// would run queues on a second primary. A SENTINEL FAILOVER leaves the old
// primary taking writes until +switch-master, seconds later; what it
// takes then is lost at its demotion, unless WaitReplicas is the replica
// count (the README says more). Calls in flight at the
// failover fail as on a standalone server: a write refused with READONLY
// did not run ([ErrReadOnly]); one whose connection broke may or may not
// have run (see Crash recovery). AddTask returns the error to its caller;
// a pool retries with backoff, and its lease lapses if the failover takes
// longer than the lease. Replication is asynchronous, so writes the old
// primary acknowledged just before it died can be lost with it (see
// Durability). Acks among them would leave their tasks pending, unseen,
// while their owner lives: a pool whose partition's sentinels named
// another primary during its lease does what one on a cluster does when
// its slot moves (see Redis Cluster): it says so, ends its tenure and
// takes the queue again at once, putting every pending task back; a
// [Consumer] resyncs at its next Claim.
//
// # Redis keys
//
// With P the [Config].Prefix ("qugo" by default), p a partition index and q
// a queue index, the keys of one queue share the hash tag {P:p.q}; a
// consumer group G keeps its state under {P:group:G} on partition 0.
// docs/redis-keys.md lists every key, and says what an upgrade must
// respect: upgrades go one way (an earlier release cannot take over a
// queue from a crashed owner of this one), so read it before running two
// releases on one queue. A key holding what this package did not write
// fails the calls that would write it with [ErrWrongType], changing
// nothing. Redis 6.2 or later is needed.
//
// # Testing
//
// Test code that uses this package can run it on miniredis: pass a pool for a
// github.com/alicebob/miniredis/v2 server to [New], or its address to
// [Dial], as the examples do.
// miniredis runs the package's scripts, but its clock moves only when told:
// a lease lapses after Miniredis.FastForward, not by itself.
package queue
