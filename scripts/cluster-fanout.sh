#!/bin/bash
# Cluster fan-out across 3 masters: a 3-master Redis Cluster (no replicas,
# ports 7201-7203), one crier node with --redis-cluster, crier-bench
# publishing through crier (crier-bench speaks PUBLISH to crier; crier
# routes each SPUBLISH to its channel's master).
# Usage: scripts/cluster-fanout.sh [CHANNELS [SIZE]]  (SUBS="100 1000", RATE=N)
# Needs a release build: cargo build --release (CARGO_TARGET_DIR honoured).
set -e
T=${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/release
D=/tmp/clb; rm -rf $D; mkdir -p $D; cd $D
for p in 7201 7202 7203; do redis-server --cluster-enabled yes --cluster-config-file $D/nodes-$p.conf --port $p --save '' --appendonly no --bind 127.0.0.1 --dir $D --daemonize yes --logfile $D/$p.log --pidfile $D/$p.pid; done
sleep 0.5
redis-cli --cluster create 127.0.0.1:7201 127.0.0.1:7202 127.0.0.1:7203 --cluster-yes >/dev/null
until redis-cli -p 7201 cluster info | grep -q cluster_state:ok; do sleep 0.2; done
for c in 0 1 2 3 4 5; do echo "bench.$c slot $(redis-cli -p 7201 cluster keyslot bench.$c)"; done
$T/crier serve --redis-cluster redis://127.0.0.1:7201 --listen 127.0.0.1:7370 --no-http 2> $D/crier.log &
CRIER=$!
until grep -q "redis: connected" $D/crier.log; do sleep 0.2; done
for S in ${SUBS:-100 1000}; do
  echo "== S=$S channels=$1 size=${2:-64}"
  $T/crier-bench --target crier --addr 127.0.0.1:7370 --subscribers $S --channels ${1:-6} --publishers 3 --size ${2:-64} --duration 5 ${RATE:+--rate $RATE} --server-pid $CRIER 2>&1 | tail -15
done
kill $CRIER
for p in 7201 7202 7203; do kill $(cat $D/$p.pid); done
