#!/usr/bin/env bash
# Issue 11's overload cell in a loop: crier on Redis, publishers writing
# through crier at full speed, so the node falls seconds behind and fans out
# a backlog. Each run: a fresh redis-server (Pub/Sub clients may lag 512 MB,
# as in bench-matrix.sh's redis mode) and a fresh node, then
#   crier-bench --subscribers 1000 --channels 6 --publishers P --size 64 --duration 5
# A run where a publisher's replies stopped coming (the stall fixed in
# session 6) ends with "replies missing" in first_publish_error.
#
#   scripts/overload-loop.sh [RUNS]        (default 12)
#   env: P=3 (publishers), CRIER=path (default: the release build), OUT=...
#
# Appends crier-bench's JSON line per run to $OUT (default
# target/overload-loop.jsonl), with "crier" (the binary) and "publishers_p"
# in front. Needs redis-server, redis-cli and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-12}
bin=${CARGO_TARGET_DIR:-target}/release
crier=${CRIER:-$bin/crier}
out=${OUT:-target/overload-loop.jsonl}
redis_port=7212
crier_port=7373
work=$(mktemp -d)
redis_pid= crier_pid=
stop() {
    for pid in $crier_pid $redis_pid; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; done
    redis_pid= crier_pid=
}
trap 'stop; rm -rf "$work"' EXIT
mkdir -p "$(dirname "$out")"
for run in $(seq "$runs"); do
    redis-server --port $redis_port --save '' --appendonly no --maxclients 20000 \
        --client-output-buffer-limit "pubsub 512mb 128mb 60" --logfile "$work/redis.log" &
    redis_pid=$!
    until redis-cli -p $redis_port ping >/dev/null 2>&1; do sleep 0.05; done
    "$crier" serve --listen 127.0.0.1:$crier_port --no-http --max-connections 20000 \
        --redis "redis://127.0.0.1:$redis_port" 2>"$work/crier.log" &
    crier_pid=$!
    until grep -q "redis: connected" "$work/crier.log"; do sleep 0.05; done
    line=$("$bin/crier-bench" --target crier --addr 127.0.0.1:$crier_port --server-pid "$crier_pid" \
        --subscribers 1000 --channels 6 --publishers "${P:-3}" --size 64 --duration 5 | tail -1)
    stop
    echo "{\"crier\":\"$crier\",\"publishers_p\":${P:-3},${line#\{}" >>"$out"
    echo "run $run: $(echo "$line" | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(d["published"], "published,", round(d["deliveries_per_s"]/1e6, 2), "M deliveries/s, lost", d["lost"], "-", d["first_publish_error"])')"
done
