#!/usr/bin/env bash
# Runs crier-bench against crier (embedded and on Redis), Redis and NATS, with
# a fresh server per run, and appends one JSON line per run to $OUT.
#
#   scripts/bench-matrix.sh fanout|latency|conns|core|partial|redis|web [RUNS]
#
# SYSTEMS overrides the systems measured (crier-auth: crier with auth on and
# everything allowed anonymously; crier-history: every channel keeping its
# last 1,000 messages; default: crier crier-redis redis
# nats; for web: crier nats); the system crier-base is the crier binary at
# $CRIER_BASE (an older build, for before/after figures), measured with the
# same load generator. web: the subscribers connect over WebSocket (crier's
# HTTP listener, NATS's websocket listener), the publisher over TCP; for
# crier also over Server-Sent Events (GET /sse on the same listener).
# Needs redis-server and nats-server (Debian packages) and a release build
# (in $CARGO_TARGET_DIR when set, else target/).
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?fanout, latency, conns, core, partial, redis or web}
runs=${2:-3}
out=${OUT:-target/bench-results.jsonl}
crier=${CARGO_TARGET_DIR:-target}/release/crier
bench=${CARGO_TARGET_DIR:-target}/release/crier-bench
work=$(mktemp -d)
# A failed run must not leave its server behind (the next would find the
# ports taken and measure the old one).
trap 'stop; rm -rf "$work"' EXIT

# Redis's settings, the same for crier's nodes and for Redis measured
# directly. In redis mode, Pub/Sub clients may lag by 512 MB before Redis
# cuts them (default 32 MB): a node fed by a publisher at full speed needs
# more than the default to absorb the burst (docs/operations.md).
redis_settings=(--save '' --appendonly no --maxclients 20000)
# In redis mode crier's nodes get the same per-client budget as Redis's
# Pub/Sub clients (--max-pending): the load generator's 1,000 readers fall
# behind at 1 KiB, and a neutral cell lets both servers buffer as much for
# them. With crier's default (8 MiB) they are cut as slow consumers.
crier_redis_settings=()
if [ "$what" = redis ]; then
    redis_settings+=(--client-output-buffer-limit "pubsub 512mb 128mb 60")
    crier_redis_settings+=(--max-pending $((512 * 1024 * 1024)))
fi

# start SYSTEM: starts a fresh server; sets PID (the server to measure),
# ADDR, TARGET and EXTRA (bench flags) for it. In web mode the server also
# listens for WebSocket (and crier SSE) clients, and EXTRA points the
# subscribers there, over $web_transport (ws or sse).
start() {
    local redis_port=16379 ws_port=17080
    EXTRA=()
    local binary=$crier
    case $1 in
    crier-base | crier-redis-base)
        binary=${CRIER_BASE:?CRIER_BASE names the older crier binary}
        set -- "${1%-base}"
        ;;
    esac
    case $1 in
    crier | crier-redis | crier-redis-history | crier-auth | crier-history)
        if [ "$1" = crier-redis-history ]; then
            # crier on Redis, every channel keeping its last 1,000 messages
            # in Redis (each publish is FCALL crier_publish).
            redis-server --port $redis_port "${redis_settings[@]}" --daemonize yes \
                --pidfile "$work/redis.pid" --logfile "$work/redis.log" >/dev/null
            wait_port $redis_port
            set -- crier --redis "redis://127.0.0.1:$redis_port" --history-size 1000 \
                "${crier_redis_settings[@]}"
            EXTRA=(--publish-redis "127.0.0.1:$redis_port" --publish-via-function)
        elif [ "$1" = crier-history ]; then
            # Every channel keeps its last 1,000 messages.
            set -- crier --history-size 1000
        elif [ "$1" = crier-auth ]; then
            # Auth on, every client allowed anonymously: the cost of the
            # permission checks on the fan-out path.
            set -- crier --auth-hmac-secret "a benchmark secret of at least thirty-two bytes" \
                --anonymous-subscribe '*' --anonymous-publish '*'
        elif [ "$1" = crier-redis ]; then
            redis-server --port $redis_port "${redis_settings[@]}" --daemonize yes \
                --pidfile "$work/redis.pid" --logfile "$work/redis.log" >/dev/null
            wait_port $redis_port
            set -- crier --redis "redis://127.0.0.1:$redis_port" "${crier_redis_settings[@]}"
            EXTRA=(--publish-redis "127.0.0.1:$redis_port")
        elif [ "$1" = crier ]; then
            set -- crier
        fi
        shift
        if [ "$what" = web ]; then
            set -- --http 127.0.0.1:$ws_port "$@"
            EXTRA+=(--transport "$web_transport" --ws-addr 127.0.0.1:$ws_port)
        fi
        $binary serve --listen 127.0.0.1:17070 --max-connections 20000 "$@" 2>"$work/crier.log" &
        PID=$!
        wait_port 17070
        if [ "$what" = web ]; then wait_port $ws_port; fi
        ADDR=127.0.0.1:17070 TARGET=crier
        ;;
    redis)
        redis-server --port $redis_port "${redis_settings[@]}" --daemonize yes \
            --pidfile "$work/redis.pid" --logfile "$work/redis.log" >/dev/null
        wait_port $redis_port
        PID=$(cat "$work/redis.pid") ADDR=127.0.0.1:$redis_port TARGET=redis
        ;;
    nats)
        if [ "$what" = web ]; then
            # No compression (the default): the bench offers none either.
            cat >"$work/nats.conf" <<EOF
listen: "127.0.0.1:14222"
websocket {
  host: "127.0.0.1"
  port: $ws_port
  no_tls: true
}
EOF
            nats-server -c "$work/nats.conf" >"$work/nats.log" 2>&1 &
            PID=$!
            wait_port 14222
            wait_port $ws_port
            EXTRA=(--transport ws --ws-addr 127.0.0.1:$ws_port)
        else
            nats-server -p 14222 >"$work/nats.log" 2>&1 &
            PID=$!
            wait_port 14222
        fi
        ADDR=127.0.0.1:14222 TARGET=nats
        ;;
    esac
}

stop() {
    if [ -f "$work/redis.pid" ]; then
        local redis_pid
        redis_pid=$(cat "$work/redis.pid")
        kill "$redis_pid" 2>/dev/null || true
        while [ -e "/proc/$redis_pid" ]; do sleep 0.1; done
        rm -f "$work/redis.pid"
    fi
    if [ -n "${PID:-}" ] && [ -e "/proc/$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=
}

wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# run LABEL SYSTEM BENCH-FLAGS...: one measured run, labelled in the JSON.
run() {
    local label=$1 system=$2
    shift 2
    start "$system"
    local line
    line=$($bench --target "$TARGET" --addr "$ADDR" --server-pid "$PID" "${EXTRA[@]}" "$@" | tail -n 1)
    stop
    printf '{"label":"%s","system":"%s",%s\n' "$label" "$system" "${line#\{}" >>"$out"
    echo "$label $system: $(echo "$line" | head -c 300)"
}

web_transport=ws
default_systems="crier crier-redis redis nats"
if [ "$what" = web ]; then default_systems="crier nats"; fi
read -r -a systems <<<"${SYSTEMS:-$default_systems}"
for _ in $(seq "$runs"); do
    for system in "${systems[@]}"; do
        case $what in
        fanout)
            for size in 64 1024; do
                for subs in 1 100 1000 10000; do
                    # A fixed amount of work (20 M deliveries, at most 2 M
                    # messages) rather than a fixed time: publishing straight
                    # into Redis outruns any subscriber, and a timed run would
                    # leave an unbounded backlog to drain.
                    messages=$((20000000 / subs))
                    [ "$messages" -gt 2000000 ] && messages=2000000
                    run "fanout-s$subs-b$size" "$system" --subscribers "$subs" --size "$size" \
                        --messages "$messages" --duration 30
                done
            done
            ;;
        latency)
            for rate in 100 1000; do
                run "latency-r$rate" "$system" --subscribers 1000 --rate "$rate" --duration 10
            done
            ;;
        core)
            for subs in 100 1000; do
                run "fanout-s$subs-b64" "$system" --subscribers "$subs" --size 64 \
                    --messages $((20000000 / subs)) --duration 30
            done
            # Four publishers, each on its own channel of 1,000 subscribers.
            run "fanout-p4-c4-s4000-b64" "$system" --publishers 4 --channels 4 \
                --subscribers 4000 --size 64 --messages 20000 --duration 30
            ;;
        partial)
            for partial in "" --partial-line; do
                run "conns-c5000${partial:+-partial}" "$system" --mode conns --conns 5000 \
                    --hold 2 $partial
            done
            ;;
        web)
            if [ "$system" = redis ]; then
                echo "web: redis has no WebSocket transport, skipped" >&2
                continue
            fi
            # The core cells with WebSocket subscribers, then idle WebSocket
            # connections (server memory per connection).
            for subs in 100 1000; do
                run "web-s$subs-b64" "$system" --subscribers "$subs" --size 64 \
                    --messages $((20000000 / subs)) --duration 30
            done
            run "web-conns-c10000" "$system" --mode conns --conns 10000 --hold 2
            # Server-Sent Events (crier only): fan-out at S = 1,000.
            if [ "$system" = crier ]; then
                web_transport=sse
                run "web-sse-s1000-b64" "$system" --subscribers 1000 --size 64 \
                    --messages 20000 --duration 30
                web_transport=ws
            fi
            ;;
        redis)
            # Issue 11's neutral cells: crier on Redis against Redis direct,
            # the load generator publishing straight into Redis at full speed.
            for size in 64 1024; do
                for subs in 1 100 1000; do
                    messages=$((20000000 / subs))
                    [ "$messages" -gt 2000000 ] && messages=2000000
                    run "redis-s$subs-b$size" "$system" --subscribers "$subs" --size "$size" \
                        --messages "$messages" --duration 30
                done
            done
            ;;
        conns)
            for conns in 1000 5000 15000; do
                run "conns-c$conns" "$system" --mode conns --conns "$conns" --hold 2
            done
            ;;
        esac
    done
done
