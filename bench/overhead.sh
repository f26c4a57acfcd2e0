#!/usr/bin/env bash
# GET /healthz: requests/s and server CPU time per request of one or more gateway binaries, to
# measure what a layer costs per request (the metrics middleware, the OpenTelemetry layer). The
# server runs on core 0 with one worker, wrk on core 1; the binaries take turns, ROUNDS times, and
# the medians are printed. CPU µs/request (from /proc/PID/stat) holds up on a busy machine, where
# requests/s moves with whatever else runs on the cores.
#
# Usage: bench/overhead.sh BIN [BIN...]
#   e.g. build three commits' `target/release/gateway`, copy them aside, and pass all three.
# Settings: KEEL_BENCH_DURATION (10 s per run), KEEL_BENCH_ROUNDS (3), KEEL_BENCH_CONNECTIONS (32),
#   KEEL_BENCH_PORT (18090), KEEL_BENCH_ENV (extra KEY=VALUE words for the server, e.g.
#   "KEEL_TELEMETRY__OTLP_ENDPOINT=http://127.0.0.1:4318").
# All traffic stays on 127.0.0.1; each run is bounded by its duration.
set -euo pipefail

[ "$#" -ge 1 ] || { echo "usage: $0 BIN [BIN...]" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is needed (apt-get install -y wrk)" >&2; exit 1; }
command -v taskset >/dev/null || { echo "taskset is needed (util-linux)" >&2; exit 1; }

DURATION=${KEEL_BENCH_DURATION:-10}
ROUNDS=${KEEL_BENCH_ROUNDS:-3}
CONNECTIONS=${KEEL_BENCH_CONNECTIONS:-32}
PORT=${KEEL_BENCH_PORT:-18090}
[[ "$DURATION" =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 120)) || DURATION=10
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 10)) || ROUNDS=3

TMP=$(mktemp -d -t keel-overhead.XXXXXX)
SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap 'stop_server; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

# CPU time (user + system) of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Prints "REQUESTS_PER_SECOND CPU_MICROSECONDS_PER_REQUEST" of one run of BIN.
run() {
    local bin=$1
    # shellcheck disable=SC2086
    env -i PATH="$PATH" KEEL_HTTP__ADDR="127.0.0.1:$PORT" KEEL_HTTP__WORKERS=1 \
        KEEL_DATABASE__URL="sqlite://$TMP/data-$RANDOM" KEEL_TELEMETRY__FORMAT=json RUST_LOG=warn \
        ${KEEL_BENCH_ENV:-} taskset -c 0 "$bin" serve >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$PORT/healthz" && break
        sleep 0.1
    done
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d1s "http://127.0.0.1:$PORT/healthz" >/dev/null # warm-up
    local before after
    before=$(cpu_ticks "$SERVER_PID")
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PORT/healthz" >"$TMP/wrk.txt"
    after=$(cpu_ticks "$SERVER_PID")
    stop_server
    grep -E 'Non-2xx|Socket errors' "$TMP/wrk.txt" >&2 || true
    local requests rps
    requests=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
    rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/wrk.txt")
    awk -v r="$rps" -v n="$requests" -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "%s %.2f\n", r, t / hz * 1e6 / n}'
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A RPS CPU
for ((round = 1; round <= ROUNDS; round++)); do
    for bin in "$@"; do
        read -r rps cpu < <(run "$bin")
        RPS[$bin]+="$rps "
        CPU[$bin]+="$cpu "
        printf 'round %d  %-32s %10s req/s  %7s µs CPU/request\n' "$round" "$bin" "$rps" "$cpu" >&2
    done
done
for bin in "$@"; do
    # shellcheck disable=SC2086
    printf '%-32s median %10s req/s  %7s µs CPU/request   (CPU runs: %s)\n' \
        "$bin" "$(median ${RPS[$bin]})" "$(median ${CPU[$bin]})" "${CPU[$bin]% }"
done
