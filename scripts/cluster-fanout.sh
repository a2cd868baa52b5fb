#!/usr/bin/env bash
# Fan-out on a Redis Cluster, three systems side by side, one invocation:
#
#   crier-cluster  one crier node with --redis-cluster on a 3-master Redis
#                  Cluster (ports 7201-7203, no replicas); crier-bench
#                  publishes to crier, which sends each SPUBLISH to its
#                  channel's master;
#   redis-cluster  the same cluster measured directly: crier-bench
#                  --target redis --redis-cluster subscribes with SSUBSCRIBE
#                  at each channel's master and publishes with SPUBLISH, each
#                  publisher over one connection per master (publisher
#                  connections = PUBLISHERS x masters, see crier-bench --help);
#   crier-redis    one crier node with --redis on one redis-server (port
#                  7210); crier-bench publishes to crier, as for crier-cluster.
#
# The cluster and the single redis-server are started once and serve every
# run; crier is started afresh for each of its runs. The systems alternate,
# RUNS rounds (default 3), each round measuring every S in $S in turn with
# the same bench flags: --subscribers S --channels CHANNELS --size SIZE
# --publishers PUBLISHERS --duration DURATION, publishers at full speed
# unless RATE (messages/s, all publishers together) is set.
#
#   scripts/cluster-fanout.sh [CHANNELS [SIZE]]   (defaults 6, 64)
#   env: RUNS=3 S="100 1000" PUBLISHERS=3 DURATION=5 RATE= OUT=...
#
# Appends one JSON line per run to $OUT (default
# target/cluster-fanout.jsonl): crier-bench's line with "label" and
# "system" in front, plus "servers_cpu_s", the CPU time of every server
# process of the system (crier and the Redis it uses) during the bench, and
# "server_pids". A run whose bench fails gets a line with "error" instead,
# and the script ends non-zero after the other runs.
# Needs redis-server, redis-cli and a release build of crier and crier-bench
# (in $CARGO_TARGET_DIR when set, else target/).
set -euo pipefail
cd "$(dirname "$0")/.."
channels=${1:-6}
size=${2:-64}
runs=${RUNS:-3}
read -r -a subscriber_counts <<<"${S:-${SUBS:-100 1000}}"
publishers=${PUBLISHERS:-3}
duration=${DURATION:-5}
out=${OUT:-target/cluster-fanout.jsonl}
bin=${CARGO_TARGET_DIR:-target}/release
crier=$bin/crier
bench=$bin/crier-bench
cluster_ports=(7201 7202 7203)
single_port=7210
crier_port=7370
ticks_per_s=$(getconf CLK_TCK)
for exe in "$crier" "$bench"; do
    [ -x "$exe" ] || { echo "no $exe: cargo build --release first" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
work=$(mktemp -d)
crier_pid=
failed=0

# Redis's settings, as scripts/bench-matrix.sh's redis mode: Pub/Sub
# clients (crier's connections, the bench's subscribers) may lag by 512 MB
# before Redis cuts them, so a burst at full speed is absorbed, not dropped.
redis_settings=(--bind 127.0.0.1 --save '' --appendonly no --maxclients 20000
    --client-output-buffer-limit "pubsub 512mb 128mb 60")

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_listening() {
    for _ in $(seq 200); do
        listening "$1" && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# A previous run's servers (this script's, killed without waiting, or
# another's) may still hold the ports: a new redis-server would then fail to
# bind after daemonizing, and the old nodes would be clustered again.
wait_free() {
    for _ in $(seq 300); do
        listening "$1" || return 0
        sleep 0.1
    done
    echo "port $1 is still taken after 30 s: another server runs there" >&2
    return 1
}

# stop_pid PID: ends it and waits until it is gone (its ports closed).
stop_pid() {
    local pid=$1
    [ -n "$pid" ] && [ -e "/proc/$pid" ] || return 0
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 300); do
        [ -e "/proc/$pid" ] || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    while [ -e "/proc/$pid" ]; do sleep 0.1; done
}

stop_crier() {
    if [ -n "$crier_pid" ]; then
        stop_pid "$crier_pid"
        wait "$crier_pid" 2>/dev/null || true
        crier_pid=
    fi
}

redis_pid() { cat "$work/redis-$1.pid"; }

cleanup() {
    stop_crier
    for port in "${cluster_ports[@]}" $single_port; do
        if [ -f "$work/redis-$port.pid" ]; then stop_pid "$(redis_pid "$port")"; fi
    done
    rm -rf "$work"
}
trap cleanup EXIT

# start_redis PORT [FLAGS...]: a fresh redis-server, once it listens.
start_redis() {
    local port=$1
    shift
    redis-server --port "$port" "${redis_settings[@]}" --dir "$work" --daemonize yes \
        --pidfile "$work/redis-$port.pid" --logfile "$work/redis-$port.log" "$@" >/dev/null
    wait_listening "$port"
    for _ in $(seq 100); do
        [ -s "$work/redis-$port.pid" ] && return 0
        sleep 0.05
    done
    echo "redis-server on port $port wrote no pid file" >&2
    return 1
}

# start_crier FLAGS...: a fresh crier node, once its Redis is connected.
start_crier() {
    wait_free $crier_port
    "$crier" serve --listen 127.0.0.1:$crier_port --no-http --max-connections 20000 "$@" \
        2>"$work/crier.log" &
    crier_pid=$!
    wait_listening $crier_port
    for _ in $(seq 200); do
        grep -q "redis: connected" "$work/crier.log" && return 0
        sleep 0.1
    done
    echo "crier did not connect to Redis:" >&2
    tail -5 "$work/crier.log" >&2
    return 1
}

# CPU time (user + system, clock ticks) of the processes given, together.
cpu_ticks() {
    local total=0 pid stat
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue # gone: not counted
        # The fields after the command name: state is the 1st, utime the 12th.
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

for port in "${cluster_ports[@]}" $single_port $crier_port; do wait_free "$port"; done
for port in "${cluster_ports[@]}"; do wait_free $((port + 10000)); done # cluster bus
for port in "${cluster_ports[@]}"; do
    start_redis "$port" --cluster-enabled yes --cluster-config-file "$work/nodes-$port.conf"
done
start_redis $single_port
redis-cli --cluster create "${cluster_ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null
for _ in $(seq 100); do
    ok=1
    for port in "${cluster_ports[@]}"; do
        redis-cli -p "$port" cluster info | grep -q cluster_state:ok || ok=0
    done
    [ $ok = 1 ] && break
    sleep 0.2
done
[ $ok = 1 ] || { echo "the cluster did not reach state ok" >&2; exit 1; }
cluster_pids=()
for port in "${cluster_ports[@]}"; do cluster_pids+=("$(redis_pid "$port")"); done
for c in $(seq 0 $((channels - 1))); do
    slot=$(redis-cli -p 7201 cluster keyslot "bench.$c")
    echo "bench.$c: slot $slot"
done

# run LABEL SYSTEM BENCH-FLAGS...: one measured run, one JSON line.
run() {
    local label=$1 system=$2
    shift 2
    local target=crier addr=127.0.0.1:$crier_port pids=() flags=()
    case $system in
    crier-cluster)
        start_crier --redis-cluster redis://127.0.0.1:${cluster_ports[0]}
        pids=("$crier_pid" "${cluster_pids[@]}")
        flags=(--server-pid "$crier_pid")
        ;;
    redis-cluster)
        target=redis addr=127.0.0.1:${cluster_ports[0]}
        pids=("${cluster_pids[@]}")
        flags=(--redis-cluster)
        ;;
    crier-redis)
        start_crier --redis redis://127.0.0.1:$single_port
        pids=("$crier_pid" "$(redis_pid $single_port)")
        flags=(--server-pid "$crier_pid")
        ;;
    esac
    local before after status=0
    before=$(cpu_ticks "${pids[@]}")
    "$bench" --target $target --addr "$addr" "${flags[@]}" "$@" >"$work/bench.out" \
        2>"$work/bench.err" || status=$?
    after=$(cpu_ticks "${pids[@]}")
    stop_crier
    local servers_cpu pid_list line
    servers_cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_s" 'BEGIN { printf "%.2f", t / hz }')
    pid_list=$(
        IFS=,
        echo "${pids[*]}"
    )
    line=$(tail -n 1 "$work/bench.out")
    if [ $status != 0 ] || [ "${line:0:1}" != "{" ]; then
        failed=1
        local why
        why=$(tail -n 1 "$work/bench.err" | tr -d '"\\\000-\037' | head -c 300)
        printf '{"label":"%s","system":"%s","error":"exit %s: %s"}\n' \
            "$label" "$system" "$status" "$why" >>"$out"
        echo "$label $system: FAILED (exit $status): $why" >&2
        return 0
    fi
    printf '{"label":"%s","system":"%s","servers_cpu_s":%s,"server_pids":"%s",%s\n' \
        "$label" "$system" "$servers_cpu" "$pid_list" "${line#\{}" >>"$out"
    python3 - "$label" "$system" "$servers_cpu" "$line" <<'EOF'
import json, sys
label, system, cpu, r = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(f"{label} {system}: {r['deliveries_per_s'] / 1e6:.2f} M deliveries/s, "
      f"published {r['published']} ({r['publish_rate'] / 1e3:.0f} k/s over {r['publish_conns']} conns), "
      f"received {r['received']} of {r['expected']}, lost {r['lost']} (gaps {r['gaps']}), "
      f"reordered {r['reordered']}, corrupt {r['corrupt']}, "
      f"sub errors {r['sub_errors']}, publish errors {r['publish_errors']}, "
      f"p50 {r['latency_p50_us'] / 1e3:.1f} ms p99 {r['latency_p99_us'] / 1e3:.1f} ms, "
      f"servers cpu {cpu} s, bench cpu {r['bench_cpu_s']:.2f} s")
for key in ("first_sub_error", "first_publish_error"):
    if r.get(key):
        print(f"  {key}: {r[key]}")
EOF
}

for round in $(seq "$runs"); do
    for subs in "${subscriber_counts[@]}"; do
        echo "== round $round of $runs: S=$subs channels=$channels size=$size publishers=$publishers"
        for system in crier-cluster redis-cluster crier-redis; do
            run "cluster-s$subs-c$channels-b$size" "$system" --subscribers "$subs" \
                --channels "$channels" --size "$size" --publishers "$publishers" \
                --duration "$duration" ${RATE:+--rate "$RATE"}
        done
    done
done
echo "results appended to $out"
exit $failed
