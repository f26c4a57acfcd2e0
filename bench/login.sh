#!/usr/bin/env bash
# POST /v1/auth/login throughput with the default argon2id parameters (m=19456 KiB, t=2, p=1).
# Every login is correct (no throttling) and opens a session.
# Usage: bench/login.sh   (KEEL_BENCH_LOGIN_CONCURRENCY=8, KEEL_BENCH_DURATION=10)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY=${KEEL_BENCH_LOGIN_CONCURRENCY:-8}
[[ "$CONCURRENCY" =~ ^[0-9]+$ ]] && ((CONCURRENCY >= 1 && CONCURRENCY <= 256)) || CONCURRENCY=8

ensure_tools
build_gateway
start_gateway
create_account_and_key

print_header "POST /v1/auth/login, default argon2id parameters, hash_concurrency = cores"
load "POST /v1/auth/login" "$CONCURRENCY" "$DURATION" /v1/auth/login POST "$(LOGIN_BODY)"
