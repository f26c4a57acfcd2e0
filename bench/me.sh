#!/usr/bin/env bash
# GET /v1/auth/me with an API key, at concurrency 10 and 64: requests/s, p50, p99.
# Usage: bench/me.sh   (KEEL_BENCH_DURATION=10 seconds per run, KEEL_BENCH_PORT=18080)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_tools
build_gateway
start_gateway
create_account_and_key

print_header "GET /v1/auth/me with an API key"
load "me (api key), warm-up" 10 2 /v1/auth/me GET "" "$API_KEY" >/dev/null
load "GET /v1/auth/me (api key)" 10 "$DURATION" /v1/auth/me GET "" "$API_KEY"
load "GET /v1/auth/me (api key)" 64 "$DURATION" /v1/auth/me GET "" "$API_KEY"
