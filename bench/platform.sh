#!/usr/bin/env bash
# Cache and rate-limiter figures (issue 6): cache L1 and L2 get latency, limiter decisions per
# second in process and on Redis. Builds shared's example in release mode and runs it once; every
# loop inside is bounded (count and 5 s). Redis: KEEL_BENCH_REDIS_URL, default
# redis://127.0.0.1:6379 (keys under a throw-away prefix, with TTLs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo run --quiet --release -p shared --features server --example platform_bench
