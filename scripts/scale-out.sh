#!/usr/bin/env bash
# Scale-out behind one Redis (issue 11): NODES crier nodes on this machine
# (default 4), CONNS idle subscribers on each (default 15,000: the open-file
# cap is per process), one broadcast published into Redis reaching them all.
# One crier-bench process per node (each holds its node's connections);
# the last one publishes once the others are ready, and every one times the
# broadcast on the machine's monotonic clock.
#
#   scripts/scale-out.sh [RUNS]
#
# Appends one JSON line per run to $OUT (default target/scale-out.jsonl):
# per node, the broadcast time, server memory per connection, losses.
# Needs redis-server and a release build (in $CARGO_TARGET_DIR when set).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
nodes=${NODES:-4}
conns=${CONNS:-15000}
out=${OUT:-target/scale-out.jsonl}
crier=${CARGO_TARGET_DIR:-target}/release/crier
bench=${CARGO_TARGET_DIR:-target}/release/crier-bench
work=$(mktemp -d)
redis_port=16379
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() {
    for _ in $(seq 1200); do
        [ -e "$1" ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}

for run in $(seq "$runs"); do
    pids=()
    rm -f "$work"/*
    redis-server --port $redis_port --save '' --appendonly no --daemonize yes \
        --logfile "$work/redis.log" >/dev/null
    until redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.05; done
    node_pids=()
    for n in $(seq "$nodes"); do
        $crier serve --listen "127.0.0.1:$((17070 + n))" --no-http --max-connections 20000 \
            --redis "redis://127.0.0.1:$redis_port" 2>"$work/crier-$n.log" &
        node_pids+=($!)
        pids+=($!)
    done
    for n in $(seq "$nodes"); do
        until grep -q "redis: connected" "$work/crier-$n.log"; do sleep 0.05; done
    done
    # Every node but the last: hold the connections, wait for the broadcast.
    for n in $(seq $((nodes - 1))); do
        $bench --target crier --addr "127.0.0.1:$((17070 + n))" --mode conns --conns "$conns" \
            --server-pid "${node_pids[$((n - 1))]}" --ready-file "$work/ready-$n" --receive-only \
            >"$work/bench-$n.json" 2>"$work/bench-$n.log" &
        pids+=($!)
    done
    for n in $(seq $((nodes - 1))); do wait_for "$work/ready-$n"; done
    # The last node's bench publishes the one broadcast, into Redis.
    $bench --target crier --addr "127.0.0.1:$((17070 + nodes))" --mode conns --conns "$conns" \
        --server-pid "${node_pids[$((nodes - 1))]}" --ready-file "$work/ready-$nodes" \
        --publish-redis "127.0.0.1:$redis_port" >"$work/bench-$nodes.json" 2>"$work/bench-$nodes.log"
    wait "${pids[@]:$nodes}" 2>/dev/null || true
    python3 - "$work" "$nodes" "$conns" "$run" <<'PY' | tee -a "$out"
import json, sys
work, nodes, conns, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(open(f"{work}/bench-{n}.json").read().strip().splitlines()[-1]) for n in range(1, nodes + 1)]
print(json.dumps({
    "label": f"scale-out-n{nodes}-c{conns}", "run": run, "nodes": nodes, "conns_per_node": conns,
    "received": sum(r["received"] for r in rows), "expected": sum(r["expected"] for r in rows),
    "lost": sum(r["lost"] for r in rows),
    "broadcast_ms_per_node": [round(r["broadcast_us"] / 1000, 1) if r["broadcast_us"] else None for r in rows],
    "broadcast_ms": round(max((r["broadcast_us"] or 0) for r in rows) / 1000, 1),
    "rss_bytes_per_conn_per_node": [round(r["server_rss_bytes_per_conn"] or 0) for r in rows],
    "setup_s_per_node": [round(r["setup_s"], 1) for r in rows],
    "bench_cpu_s": round(sum(r["bench_cpu_s"] for r in rows), 2),
}))
PY
    cleanup_nodes=("${node_pids[@]}")
    for pid in "${cleanup_nodes[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${cleanup_nodes[@]}"; do wait "$pid" 2>/dev/null || true; done
    redis-cli -p $redis_port shutdown nosave >/dev/null 2>&1 || true
    while redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.05; done
done
