#!/usr/bin/env bash
# Retrieval benchmarks (issue 9): the vector index at N vectors of 384 dimensions, the ANN library
# comparison, ingestion (parse + chunk + BM25) and the local embedder. Release build of bench/ann
# (its own crate, outside the workspace), pinned with taskset: one-thread latency on core 0, QPS
# and builds on cores 0-1. Needs ~4 GiB of RAM at 1M (the data, the graph and the exact-search
# ground truth, cached in target/ann-cache). No network, no server.
#
#   bench/search.sh                 everything at 1M (about 20 minutes on 2 cores)
#   bench/search.sh index 1000000   one part: index N | compare LIB N | ingest DOCS | embed CHUNKS
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"
export ANN_CACHE="$REPO_DIR/target/ann-cache"
features=""
if [ "${1:-all}" = "all" ] || [ "${1:-}" = "embed" ]; then
    bash search/scripts/fetch-test-model.sh >/dev/null
    features="--features local-embedder"
fi
# shellcheck disable=SC2086
nice -n 10 cargo build --release --manifest-path bench/ann/Cargo.toml --target-dir target $features
bin="$REPO_DIR/target/release/ann-bench"
model="$REPO_DIR/target/models/all-minilm-l6-v2"
pin_all="taskset -c 0,1"
echo "# $(date -u +%FT%TZ) $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
case "${1:-all}" in
    all)
        $pin_all "$bin" index 1000000
        for lib in usearch hnsw_rs instant-distance; do $pin_all "$bin" compare "$lib" 100000; done
        $pin_all "$bin" compare usearch 1000000
        $pin_all "$bin" compare hnsw_rs 1000000
        taskset -c 0 "$bin" ingest 2000
        $pin_all "$bin" embed 512 "$model"
        ;;
    embed) $pin_all "$bin" embed "${2:-512}" "$model" ;;
    ingest) taskset -c 0 "$bin" ingest "${2:-2000}" ;;
    *) $pin_all "$bin" "$@" ;;
esac
