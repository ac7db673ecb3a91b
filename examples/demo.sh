#!/usr/bin/env bash
# demo.sh runs the whole qugo system on this machine and checks its
# promises: it starts Redis and PostgreSQL (or uses $REDIS_URL, once it
# answers, and $DATABASE_URL), builds the ingest, the analyser and qugo
# once, starts the ingest and two analyser processes (one owner, one hot
# standby), posts tasks through the HTTP API, kills the owner with kill -9
# midway, and prints what arrived in Postgres: rows, duplicates, order per
# OrderID and the time the standby took to take over. Everything it started listens on
# 127.0.0.1 on a free port and is stopped, by pid, when it exits. On a
# Redis of yours ($REDIS_URL) it works under a prefix of its own and
# deletes that prefix's keys when it ends, normally or on Ctrl-C (with
# redis-cli; without it, or for redis+cluster:// and redis+sentinel://
# URLs, it says which keys are left and how to delete them). It exits
# non-zero when a check fails.
#
#	bash examples/demo.sh                 # from a checkout; needs Go, redis-server, PostgreSQL
#	TASKS=20000 ORDERS=500 bash examples/demo.sh
#	KEEP=1 bash examples/demo.sh          # keep the logs and data directories (and the keys on $REDIS_URL)
#	PORTS=40000-40999 bash examples/demo.sh   # pick its ports from this range (default 20000-31999)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
tasks=${TASKS:-4000}
orders=${ORDERS:-100}
posts=40 # POSTs of tasks/posts tasks each; the owner is killed after half

say() { printf '%s  %s\n' "$(date +%T)" "$*"; }
fail() {
	printf 'demo: %s\n' "$*" >&2
	# Say why: the end of every log of this run (they go with the run
	# unless KEEP is set).
	if [[ -n ${work:-} && -d $work ]]; then
		for log in "$work"/*.log; do
			[[ -e $log ]] || continue
			printf -- '--- %s (last lines)\n' "${log##*/}" >&2
			tail -n 15 "$log" >&2
		done
	fi
	exit 1
}
((tasks % (orders * posts) == 0)) || fail "TASKS must be a multiple of ORDERS x $posts"

work=$(mktemp -d "${TMPDIR:-/tmp}/qugo-demo.XXXXXX")
# A prefix of this run's own: other queues on the same Redis are left
# alone, and on a Redis of yours drop_keys deletes this run's keys by it.
prefix=demo-$$-$RANDOM
pids=()
cleanup() {
	local pid
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do # the last started first
		pid=${pids[i]}
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -9 "$pid" 2>/dev/null || true
	done
	drop_keys # once nothing that writes them runs
	if [[ -n ${KEEP:-} ]]; then
		echo "logs kept in $work"
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT
# Ctrl-C and kill end the run through the EXIT trap too (bash runs it on
# neither by itself when it dies of the signal).
trap 'exit 130' INT
trap 'exit 143' TERM

# drop_keys deletes, from a Redis of yours ($REDIS_URL), every key of this
# run's prefix: the queue's ({<prefix>:<partition>.<queue>}:..., among
# them a wake key that would expire in about a minute, and
# <prefix>:layout) and the ingest's records of the ids it issued
# (<prefix>:ingest:issued:<hour>, about 300 KB that would expire in 24h).
# It finds them with redis-cli's SCAN by the prefix, which no other run
# shares, and deletes nothing else. A Redis the demo started goes with its
# directory.
drop_keys() {
	[[ -n ${REDIS_URL:-} && -n ${keyed:-} ]] || return 0
	local patterns=("{$prefix:*" "$prefix:*") urls url pattern keys deleted=0 n
	local left="the keys of prefix $prefix are left on $(redact "$redis_url")"
	local how="delete every key matching '${patterns[0]}' or '${patterns[1]}' on each server (SCAN MATCH, then DEL)"
	if [[ -n ${KEEP:-} ]]; then
		echo "$left (KEEP is set): $how"
		return 0
	fi
	if ! command -v redis-cli >/dev/null; then
		echo "demo: $left, as there is no redis-cli here: $how" >&2
		return 0
	fi
	if [[ $redis_url == *+cluster://* || $redis_url == *+sentinel://* || $redis_url == *\?* ]]; then
		echo "demo: $left, as redis-cli does not read its URL (a cluster, a sentinel or URL parameters): $how" >&2
		return 0
	fi
	IFS=, read -ra urls <<<"$redis_url"
	for url in "${urls[@]}"; do
		url=${url// /}
		[[ -n $url ]] || continue
		# redis-cli sends AUTH with an empty user for redis://:password@;
		# the library sends the password alone, which is the default user.
		url=${url/:\/\/:/:\/\/default:}
		for pattern in "${patterns[@]}"; do
			if ! keys=$(redis-cli --no-auth-warning -u "$url" --scan --pattern "$pattern" 2>"$work/redis-cli.err"); then
				echo "demo: $left, as listing them failed ($(head -c 300 "$work/redis-cli.err")): $how" >&2
				return 0
			fi
			# Only what starts with the prefix (letters, digits and dashes),
			# whatever the server answered.
			keys=$(grep -E "^(\{$prefix:|$prefix:)" <<<"$keys") || continue
			n=$(xargs -d '\n' -n 100 redis-cli --no-auth-warning -u "$url" DEL <<<"$keys" | awk '{ n += $1 } END { print n + 0 }') || n=0
			deleted=$((deleted + n))
		done
	done
	echo "deleted the $deleted keys of prefix $prefix from $(redact "$redis_url")"
}

# free_port prints a loopback TCP port nothing listens on, from $PORTS
# (low-high); by default below Linux's range of ephemeral ports (32768 and
# up), so that it is not the local port of a connection some process has
# open either.
ports=${PORTS:-20000-31999}
[[ $ports =~ ^([0-9]+)-([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 1024 && BASH_REMATCH[1] <= BASH_REMATCH[2] && BASH_REMATCH[2] <= 65535)) ||
	fail "PORTS=$ports: want low-high, within 1024-65535"
port_low=${BASH_REMATCH[1]}
port_span=$((BASH_REMATCH[2] - BASH_REMATCH[1] + 1))
free_port() {
	local port
	for _ in $(seq 100); do
		port=$((port_low + (RANDOM * 32768 + RANDOM) % port_span))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			return 0
		fi
	done
	fail "no free loopback port"
}

# wait_for [-p PID] SECS WHAT COMMAND... runs COMMAND every 0.1s until it
# succeeds, for at most SECS seconds. With -p it gives up as soon as
# process PID, the one it waits for, has exited: that one will not come up.
wait_for() {
	local pid=
	if [[ $1 == -p ]]; then
		pid=$2
		shift 2
	fi
	local secs=$1 what=$2
	shift 2
	for _ in $(seq $((secs * 10))); do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
			fail "$what exited before it came up (rerun with KEEP=1 to keep the logs)"
		fi
		sleep 0.1
	done
	fail "$what did not come up within ${secs}s (rerun with KEEP=1 to keep the logs)"
}

# redact prints URL $1 without its user, password and password parameters.
redact() { sed -E 's#://[^@/]*@#://#; s#(password=)[^&]*#\1redacted#g' <<<"$1"; }

# redis_answers succeeds when the server of Redis URL $1 (the first host
# of its first URL) takes a connection within 3s and, without TLS, answers
# a PING; a refusal such as NOAUTH is an answer too. It prints that
# host:port.
redis_answers() {
	local url=${1%%,redis*} scheme rest hostport host port=6379
	scheme=${url%%://*}
	scheme=${scheme,,}
	rest=${url#*://}
	rest=${rest%%[/?]*}
	rest=${rest##*@}
	hostport=${rest%%,*}
	[[ $scheme == *+sentinel ]] && port=26379
	if [[ $hostport == \[* ]]; then # [IPv6]:port
		host=${hostport#[}
		host=${host%%]*}
		[[ $hostport == *]:* ]] && port=${hostport##*]:}
	else
		host=${hostport%%:*}
		[[ $hostport == *:* ]] && port=${hostport##*:}
	fi
	host=${host:-localhost}
	if [[ $host == *:* ]]; then echo "[$host]:$port"; else echo "$host:$port"; fi
	timeout 3 bash -c '
		exec 3<>"/dev/tcp/$1/$2" || exit 1
		[[ $3 == rediss* ]] && exit 0 # TLS: a connection is all a shell can see
		printf "PING\r\n" >&3
		IFS= read -r -t 2 reply <&3 && [[ $reply == [+-]* ]]' _ "$host" "$port" "$scheme" 2>/dev/null
}

# --- Redis --------------------------------------------------------------------

if [[ -n ${REDIS_URL:-} ]]; then
	redis_url=$REDIS_URL
	[[ $redis_url == *://* ]] || fail "REDIS_URL has no scheme: write redis://host:port (rediss:// for TLS)"
	# Fail now rather than after the build, when the analysers die of it.
	at=$(redis_answers "$redis_url") || fail "REDIS_URL: no Redis answers at $at; start one, or unset REDIS_URL to let the demo start its own"
	say "Redis: $(redact "$redis_url") (from REDIS_URL)"
else
	command -v redis-server >/dev/null || fail "redis-server is not installed (apt-get install redis-server), and REDIS_URL is not set"
	port=$(free_port)
	redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$work" \
		--maxmemory-policy noeviction >"$work/redis.log" 2>&1 &
	pids+=($!)
	redis_url=redis://127.0.0.1:$port
	wait_for -p "${pids[-1]}" 10 "redis-server" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'PING\r\n' >&3 && head -c5 <&3 | grep -q PONG"
	say "Redis: started redis-server pid ${pids[-1]} at $redis_url"
fi

# --- PostgreSQL ---------------------------------------------------------------

psql_bin=$(command -v psql || compgen -G '/usr/lib/postgresql/*/bin/psql' | sort -V | tail -1 || true)
[[ -n $psql_bin ]] || fail "psql is not installed (apt-get install postgresql-client)"
if [[ -n ${DATABASE_URL:-} ]]; then
	pg_url=$DATABASE_URL
	say "PostgreSQL: $(redact "$pg_url") (from DATABASE_URL)"
else
	bin=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1 || command -v initdb || echo .)")
	[[ -x $bin/initdb ]] || fail "PostgreSQL is not installed (apt-get install postgresql), and DATABASE_URL is not set"
	as=()
	if [[ $(id -u) == 0 ]]; then # PostgreSQL refuses to run as root
		id postgres >/dev/null 2>&1 || fail "running as root and there is no postgres user to run PostgreSQL as"
		chown postgres: "$work"
		as=(setpriv --reuid=postgres --regid="$(id -g postgres)" --init-groups)
	fi
	"${as[@]}" "$bin/initdb" -D "$work/pg" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$work/initdb.log" 2>&1 ||
		fail "initdb failed: $(cat "$work/initdb.log")"
	port=$(free_port)
	"${as[@]}" "$bin/postgres" -D "$work/pg" -p "$port" -k "$work" -c listen_addresses=127.0.0.1 -c fsync=off \
		>"$work/postgres.log" 2>&1 &
	pids+=($!)
	pg_url=postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable
	wait_for -p "${pids[-1]}" 30 "postgres" "$psql_bin" "$pg_url" -c 'SELECT 1'
	say "PostgreSQL: started postgres pid ${pids[-1]} at $pg_url"
fi
sql() { "$psql_bin" "$pg_url" -X -qAt -v ON_ERROR_STOP=1 -c "$1"; }

# --- build once ---------------------------------------------------------------

say "building the ingest, the analyser and qugo (the first build takes a minute)"
mkdir -p "$work/bin"
(cd examples/ingest && go build -o "$work/bin/ingest" .)
(cd examples/analyser && go build -o "$work/bin/analyser" .)
go build -o "$work/bin/qugo" ./cmd/qugo

# --- start the system ---------------------------------------------------------

run=$prefix
flags=(-redis "$redis_url" -queues 2 -prefix "$prefix")
qugo() { "$work/bin/qugo" "${flags[@]}" "$@"; }

http_port=$(free_port)
keyed=1 # from here on there are keys under the prefix
"$work/bin/ingest" "${flags[@]}" -pg "$pg_url" -listen "127.0.0.1:$http_port" >"$work/ingest.log" 2>&1 &
pids+=($!)
ingest=$!
api=http://127.0.0.1:$http_port

# analyser NAME starts one analyser process serving both queues (ids 0-1).
analyser() {
	local mport
	mport=$(free_port)
	"$work/bin/analyser" "${flags[@]}" -id 0-1 -worker 16 -pg "$pg_url" -metrics "127.0.0.1:$mport" -log-every 1s \
		>"$work/$1.log" 2>&1 &
	pids+=($!)
	wait_for -p "${pids[-1]}" 60 "analyser $1" curl -fsS "http://127.0.0.1:$mport/metrics"
}

# owners prints the lease owner of each queue, one line each.
owners() { qugo stats -json 2>/dev/null | grep -o '"owner":"[^"]*"' | cut -d'"' -f4; }
# owns_both succeeds when process $1 holds the lease of both queues.
owns_both() { [[ $(owners | grep -c ":$1\$") == 2 ]]; }

analyser first
first=${pids[-1]}
wait_for -p "$first" 30 "the first analyser's leases" owns_both "$first"
analyser second
second=${pids[-1]}
wait_for -p "$ingest" 30 "ingest" curl -fsS "$api/healthz"
say "ingest pid $ingest at $api; analyser pid $first owns both queues, pid $second waits as a hot standby"

# --- post the tasks, kill the owner midway ------------------------------------

say "posting $tasks tasks over $orders OrderIDs in $posts POSTs"
per_post=$((tasks / posts))
for ((p = 0; p < posts; p++)); do
	body=$(awk -v p="$p" -v n="$per_post" -v orders="$orders" -v run="$run" 'BEGIN {
		printf "["
		for (i = 0; i < n; i++) {
			seq = p * (n / orders) + int(i / orders)
			printf "%s{\"order_id\":%d,\"payload\":{\"run\":\"%s\",\"n\":%d}}", (i ? "," : ""), 1000 + i % orders, run, seq
		}
		printf "]" }')
	curl -fsS -XPOST "$api/v1/tasks" -H 'Content-Type: application/json' -d "$body" >"$work/last-post.json" ||
		fail "POST $p failed"
	if ((p == posts / 2)); then
		kill -9 "$first"
		killed_at=$(date +%s.%N)
		wait "$first" 2>/dev/null || true
		say "kill -9 $first (the owner) after $(((p + 1) * per_post)) tasks"
		# Watch for the takeover while the posts go on, so that its time
		# is the standby's, whatever the posting's: until the standby
		# holds both leases (15s at most).
		(
			for _ in $(seq 300); do
				if owns_both "$second"; then
					date +%s.%N >"$work/took-over"
					exit 0
				fi
				sleep 0.05
			done
		) &
		watcher=$!
		pids+=("$watcher")
	fi
	sleep 0.05
done
say "posted; waiting for the standby to take over and for every row"

# Takeover: from the kill until the standby held both leases.
wait "$watcher" || true
[[ -s $work/took-over ]] || fail "the standby did not take over within 15s"
took_over=$(<"$work/took-over")
takeover=$(awk -v a="$killed_at" -v b="$took_over" 'BEGIN { printf "%.1f", b - a }')

where="WHERE convert_from(payload, 'UTF8')::jsonb->>'run' = '$run'"
for _ in $(seq 600); do
	[[ $(sql "SELECT count(*) FROM tasks $where") -ge $tasks ]] && break
	sleep 0.1
done

# --- verify -------------------------------------------------------------------

rows=$(sql "SELECT count(*) FROM tasks $where")
distinct=$(sql "SELECT count(DISTINCT (order_id, convert_from(payload, 'UTF8')::jsonb->>'n')) FROM tasks $where")
# Tasks the standby took over from the killed owner (claimed or running
# there): Stats' redelivered, summed over the queues.
redelivered=$(qugo stats -json | grep -o '"redelivered":[0-9]*' | cut -d: -f2 | awk '{ n += $1 } END { print n + 0 }')
out_of_order=$(sql "SELECT count(*) FROM (
	SELECT (convert_from(payload, 'UTF8')::jsonb->>'n')::int AS n,
	       lag((convert_from(payload, 'UTF8')::jsonb->>'n')::int) OVER (PARTITION BY order_id ORDER BY seq) AS prev
	FROM tasks $where) r WHERE prev IS NOT NULL AND n <> prev + 1")
bad_start=$(sql "SELECT count(*) FROM (SELECT DISTINCT ON (order_id) (convert_from(payload, 'UTF8')::jsonb->>'n')::int AS n
	FROM tasks $where ORDER BY order_id, seq) f WHERE n <> 0")
id=$(grep -o '"ids":\["[^"]*' "$work/last-post.json" | cut -d'"' -f4) # the first task of the last POST
order=1000
status=$(curl -sS "$api/v1/tasks/$id?order_id=$order" | grep -o '"status":"[a-z]*"' | cut -d'"' -f4 || true)
unknown=$(curl -sS -o /dev/null -w '%{http_code}' "$api/v1/tasks/ID?order_id=$order")

echo
echo "tasks posted:                 $tasks over $orders OrderIDs"
echo "rows in Postgres:             $rows (want $tasks)"
echo "duplicate rows:               $((rows - distinct)) (want 0)"
echo "missing tasks:                $((tasks - distinct)) (want 0)"
echo "rows out of order per order:  $((out_of_order + bad_start)) (want 0)"
echo "tasks redelivered:            $redelivered (claimed by the killed owner, handed to the standby; rows still one per task)"
echo "kill -9 to takeover:          ${takeover}s (lease TTL 5s)"
echo "GET of a task of the last POST: $status (want done); of an unknown id: $unknown (want 404)"
echo

[[ $rows == "$tasks" && $distinct == "$tasks" && $out_of_order == 0 && $bad_start == 0 && $status == done && $unknown == 404 ]] ||
	fail "verification FAILED (rerun with KEEP=1 to keep the logs)"
echo "verification passed"
qugo stats
