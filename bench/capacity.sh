#!/usr/bin/env bash
# The capacity model's per-request inputs (docs/SCALING.md, section 1): `GET /v1/auth/me` with a
# cached API key through the whole edge (rate-limit decision included), the gateway pinned to one
# core and wrk to the other. For each run it prints requests/s and latency, then what each request
# cost: gateway CPU µs, PostgreSQL transactions, Redis commands, and the gateway's RSS.
# Usage: KEEL_BENCH_SERVER_CPUS=0 KEEL_BENCH_LOAD_CPUS=1 bench/capacity.sh
#   KEEL_BENCH_DATABASE_URL (default postgres://root@127.0.0.1:5432/keel_bench, created if missing)
#   KEEL_BENCH_REDIS_URL    (default redis://127.0.0.1:6379; the run uses its own key prefix)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export KEEL_BENCH_DATABASE_URL=${KEEL_BENCH_DATABASE_URL:-postgres://root@127.0.0.1:5432/keel_bench}
REDIS_URL=${KEEL_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
PREFIX="keel-bench-$$"
command -v psql >/dev/null 2>&1 || die "psql is needed to count PostgreSQL transactions"
command -v redis-cli >/dev/null 2>&1 || die "redis-cli is needed to count Redis commands"
db_name=${KEEL_BENCH_DATABASE_URL##*/}
db_name=${db_name%%\?*}
psql "${KEEL_BENCH_DATABASE_URL%/*}/postgres" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$db_name'" | grep -q 1 ||
    psql "${KEEL_BENCH_DATABASE_URL%/*}/postgres" -qc "CREATE DATABASE \"$db_name\"" >/dev/null

xacts() { psql "$KEEL_BENCH_DATABASE_URL" -Atqc "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"; }
redis_calls() { redis-cli -u "$REDIS_URL" info commandstats | awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" { n += $3 } END { print n + 0 }'; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status"; }

# measure LABEL CONCURRENCY: one load line, then the per-request costs of that run.
measure() {
    local label=$1 concurrency=$2 line x0 r0 c0 x1 r1 c1 requests hz
    hz=$(getconf CLK_TCK)
    x0=$(xacts) r0=$(redis_calls) c0=$(cpu_ticks)
    line=$(load "$label" "$concurrency" "$DURATION" /v1/auth/me GET "" "$API_KEY")
    x1=$(xacts) r1=$(redis_calls) c1=$(cpu_ticks)
    echo "$line"
    requests=$(awk -v rps="$(awk '{ for (i = 1; i <= NF; i++) if ($i == "req/s") print $(i - 1) }' <<<"$line")" -v d="$DURATION" 'BEGIN { printf "%d", rps * d }')
    [ "$requests" -gt 0 ] || die "no requests counted for $label"
    awk -v n="$requests" -v dx=$((x1 - x0)) -v dr=$((r1 - r0)) -v dc=$((c1 - c0)) -v hz="$hz" -v rss="$(rss_kib)" 'BEGIN {
        printf "%-34s        gateway CPU %6.1f µs/req   PostgreSQL xacts %.4f/req   Redis cmds %.3f/req   RSS %.1f MiB\n",
            "", dc / hz * 1e6 / n, dx / n, dr / n, rss / 1024 }'
}

ensure_tools
build_gateway

run() {
    local title=$1
    start_gateway
    create_account_and_key
    print_header "$title"
    load "warm-up" 10 2 /v1/auth/me GET "" "$API_KEY" >/dev/null
    measure "GET /v1/auth/me (api key)" 10
    measure "GET /v1/auth/me (api key)" 64
    cleanup
    trap cleanup EXIT
}

# A quota no run reaches, so each request takes a real limiter decision and none is refused.
LIMITS="KEEL_RATE_LIMITS__CLASSES__AUTH__LIMIT=100000000 KEEL_RATE_LIMITS__CLASSES__AUTH__PERIOD_SECS=60"
BENCH_EMAIL="bench-$$-a@example.com"
KEEL_BENCH_GATEWAY_ENV="$LIMITS" run "in-process limiter and cache, PostgreSQL"
BENCH_EMAIL="bench-$$-b@example.com"
KEEL_BENCH_GATEWAY_ENV="$LIMITS KEEL_REDIS__URL=$REDIS_URL KEEL_REDIS__KEY_PREFIX=$PREFIX" run "Redis limiter and cache, PostgreSQL"
