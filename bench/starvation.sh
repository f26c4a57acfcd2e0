#!/usr/bin/env bash
# Does a login flood starve the other requests? Latency of GET /healthz and GET /v1/auth/me
# (API key) at concurrency 1, first idle, then while 200 concurrent logins are in flight.
# Usage: bench/starvation.sh   (KEEL_BENCH_DURATION=10 seconds per probe)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

FLOOD_CONCURRENCY=200

ensure_tools
build_gateway
start_gateway
create_account_and_key

print_header "latency idle vs. under $FLOOD_CONCURRENCY concurrent logins"
load "warm-up" 4 2 /v1/auth/me GET "" "$API_KEY" >/dev/null
load "idle: GET /healthz" 1 "$DURATION" /healthz
load "idle: GET /v1/auth/me (api key)" 1 "$DURATION" /v1/auth/me GET "" "$API_KEY"

# The flood outlasts both probes: 5 s to fill the queue, two probes, 5 s of margin.
flood_seconds=$((2 * DURATION + 10))
flood_out="$BENCH_TMP/flood.txt"
load "flood: POST /v1/auth/login" "$FLOOD_CONCURRENCY" "$flood_seconds" /v1/auth/login POST "$(LOGIN_BODY)" \
    >"$flood_out" &
flood_pid=$!
BG_PIDS+=("$flood_pid")
sleep 5
load "flood: GET /healthz" 1 "$DURATION" /healthz
load "flood: GET /v1/auth/me (api key)" 1 "$DURATION" /v1/auth/me GET "" "$API_KEY"
wait "$flood_pid" || die "the login flood failed"
cat "$flood_out"
