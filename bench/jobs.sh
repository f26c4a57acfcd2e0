#!/usr/bin/env bash
# Background jobs on PostgreSQL, release build: no-op jobs per second with 1 and 2 worker
# processes, and enqueue-to-start latency (p50/p99) with LISTEN/NOTIFY waking an idle worker.
#
# Usage: bench/jobs.sh
#   KEEL_BENCH_DATABASE_URL  a PostgreSQL URL whose role may CREATE DATABASE
#                            (default postgres://root@127.0.0.1:5432/test); each run works in a
#                            scratch database that it drops at the end
#   KEEL_BENCH_JOBS          jobs per throughput run (default 50000)
#   KEEL_BENCH_CONCURRENCY   concurrent jobs per worker process (default 16, the default config)
#   KEEL_BENCH_BATCH         jobs per claim (default 64, the default config)
#   KEEL_BENCH_LATENCY_JOBS  jobs in the latency run (default 1000)
# Every run is bounded (300 s) and all traffic stays on this machine.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

URL=${KEEL_BENCH_DATABASE_URL:-postgres://root@127.0.0.1:5432/test}
JOBS=${KEEL_BENCH_JOBS:-50000}
CONCURRENCY=${KEEL_BENCH_CONCURRENCY:-16}
BATCH=${KEEL_BENCH_BATCH:-64}
LATENCY_JOBS=${KEEL_BENCH_LATENCY_JOBS:-1000}

printf 'building the release benchmark (shared, example jobs_bench)\n' >&2
cargo build --release --quiet -p shared --example jobs_bench --features server,bundled-libpq
BIN="$REPO_DIR/target/release/examples/jobs_bench"

printf '\n# Keel background jobs, PostgreSQL %s, %s cores\n' \
    "$(psql "$URL" -Atqc 'SHOW server_version' 2>/dev/null || echo '?')" "$(nproc)"
for workers in 1 2; do
    timeout 400 "$BIN" throughput --url "$URL" --jobs "$JOBS" --workers "$workers" \
        --concurrency "$CONCURRENCY" --batch "$BATCH"
done
timeout 400 "$BIN" latency --url "$URL" --jobs "$LATENCY_JOBS" --gap-ms 5
