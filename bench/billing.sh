#!/usr/bin/env bash
# Billing's metering path, release build: reserve+settle pairs per second through `BillingApi`
# in-process at concurrency 64, on the direct path (a transaction per call) and the leased path
# (`LeasedBilling`: leases and group commits), with p50/p99 of one `reserve` and the database
# work per 1,000 pairs (statements of the domain's pool; PostgreSQL transactions from
# pg_stat_database). Ends with the ledger check and "every acknowledged settlement charged once".
#
# Usage: bench/billing.sh
#   KEEL_TEST_DATABASE_URL   PostgreSQL whose role may CREATE DATABASE (default
#                            postgres://root@127.0.0.1:5432/test; a scratch database per run);
#                            set it to the empty string for SQLite
#   KEEL_BENCH_CONCURRENCY   concurrent callers (default 64)
#   KEEL_BENCH_SECONDS       seconds per path (default 10)
#   KEEL_BENCH_MODES         direct, leased or both (default)
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
export KEEL_TEST_DATABASE_URL=${KEEL_TEST_DATABASE_URL-postgres://root@127.0.0.1:5432/test}
[ -n "$KEEL_TEST_DATABASE_URL" ] || unset KEEL_TEST_DATABASE_URL

printf 'building the release benchmark (billing, example billing_bench)\n' >&2
cargo build --release --quiet -p billing --example billing_bench
timeout 600 "$REPO_DIR/target/release/examples/billing_bench"
