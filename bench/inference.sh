#!/usr/bin/env bash
# Inference gateway overhead: the fake upstream alone versus through Keel, on one machine.
#
#   bash bench/inference.sh            # builds the release gateway first
#   SKIP_BUILD=1 DURATION=10 bash bench/inference.sh
#
# - Upstream: nginx with fixed bodies (a chat completion, an SSE stream of 3 chunks + [DONE],
#   an embedding), on 127.0.0.1:9101 (JSON) and :9102 (SSE).
# - Keel: the release gateway, one worker, pinned to CPU 0 (taskset), SQLite under a temp dir,
#   governance on: API key, plan limits through the rate limiter, a billing hold and a
#   settlement per call (prices are non-zero).
# - Load: wrk pinned to CPU 1, concurrency 1, 10 and 64, each scenario direct and through Keel.
# Prints one line per run: RPS and latency percentiles; then Keel's CPU seconds and RSS.
# Needs: wrk, nginx, curl, jq, taskset. Leaves nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
PORT=${PORT:-9100}
WORK=$(mktemp -d)
NGINX_PID=""
KEEL_PID=""
cleanup() {
    [ -n "$KEEL_PID" ] && kill "$KEEL_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk nginx curl jq taskset; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p gateway
fi

CHAT='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}'
CHUNK='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}'
LAST='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
EMBED='{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}],"model":"e","usage":{"prompt_tokens":4,"total_tokens":4}}'
SSE="data: $CHUNK\n\ndata: $CHUNK\n\ndata: $CHUNK\n\ndata: $LAST\n\ndata: [DONE]\n\n"

cat >"$WORK/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/body;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:9101;
        location /v1/chat/completions { default_type application/json; return 200 '$CHAT'; }
        location /v1/embeddings { default_type application/json; return 200 '$EMBED'; }
    }
    server {
        listen 127.0.0.1:9102;
        location /v1/chat/completions { default_type text/event-stream; return 200 '$SSE'; }
    }
}
EOF
taskset -c 1 nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX_PID=$!

cat >"$WORK/keel.toml" <<EOF
[http]
addr = "127.0.0.1:$PORT"
workers = 1

[database]
url = "sqlite://$WORK/data"

[telemetry]
filter = "warn"

[billing.plans.bench]
name = "Bench"
included_credit = 1000000000000000
requests_per_minute = 100000000
tokens_per_minute = 1000000000

[inference.echo]
enabled = false

[inference.providers.json]
base_url = "http://127.0.0.1:9101/v1"
max_concurrency = 1024

[inference.providers.sse]
base_url = "http://127.0.0.1:9102/v1"
max_concurrency = 1024

[inference.models.bench-chat]
max_output_tokens = 256
deployments = [{ provider = "json", model = "m", input_nanos_per_million = 150000000, output_nanos_per_million = 600000000 }]

[inference.models.bench-stream]
max_output_tokens = 256
deployments = [{ provider = "sse", model = "m", input_nanos_per_million = 150000000, output_nanos_per_million = 600000000 }]

[inference.models.bench-embed]
kind = "embedding"
deployments = [{ provider = "json", model = "e", input_nanos_per_million = 20000000 }]
EOF
mkdir -p "$WORK/data"
taskset -c 0 "${CARGO_TARGET_DIR:-target}/release/gateway" --config "$WORK/keel.toml" serve >"$WORK/keel.log" 2>&1 &
KEEL_PID=$!
API=http://127.0.0.1:$PORT
for _ in $(seq 1 100); do curl -sf "$API/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$API/healthz" >/dev/null || { cat "$WORK/keel.log"; exit 1; }

SIGNUP=$(curl -sS -H 'content-type: application/json' \
    -d '{"email":"bench@example.com","password":"correct horse battery"}' "$API/v1/auth/signup")
TOKEN=$(jq -r .token <<<"$SIGNUP")
ORG=$(jq -r .organization.id <<<"$SIGNUP")
curl -sSf -X PUT -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"plan":"bench"}' "$API/v1/organizations/$ORG/subscription" >/dev/null
KEY=$(curl -sS -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"name":"bench"}' "$API/v1/organizations/$ORG/api-keys" | jq -r .key)

body() {
    case $1 in
    chat) echo '{"model":"bench-chat","max_tokens":64,"messages":[{"role":"user","content":"Say hello in a friendly way."}]}' ;;
    stream) echo '{"model":"bench-stream","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello in a friendly way."}]}' ;;
    embed) echo '{"model":"bench-embed","input":"a short sentence to embed"}' ;;
    esac
}
script() { # script BODY AUTH
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$1'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%.0f p50=%.3f p90=%.3f p99=%.3f errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
}
run() { # run NAME URL BODY AUTH CONCURRENCY
    script "$3" "$4"
    local out
    out=$(taskset -c 1 wrk -t1 -c"$5" -d"${DURATION}s" -s "$WORK/post.lua" "$2" | grep '^RESULT' | cut -d' ' -f2-)
    printf '%-22s c=%-3s %s (latency ms)\n' "$1" "$5" "$out"
}
cpu_secs() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$KEEL_PID/stat"; }

# Warm up (connections, caches).
script "$(body chat)" "$KEY"
taskset -c 1 wrk -t1 -c8 -d2s -s "$WORK/post.lua" "$API/v1/chat/completions" >/dev/null

echo "upstream: nginx on CPU 1; Keel: 1 worker on CPU 0; wrk on CPU 1; ${DURATION}s per run"
CPU0=$(cpu_secs)
for c in 1 10 64; do
    run "chat direct" "http://127.0.0.1:9101/v1/chat/completions" "$(body chat)" none "$c"
    run "chat keel" "$API/v1/chat/completions" "$(body chat)" "$KEY" "$c"
    run "stream direct" "http://127.0.0.1:9102/v1/chat/completions" "$(body stream)" none "$c"
    run "stream keel" "$API/v1/chat/completions" "$(body stream)" "$KEY" "$c"
    run "embeddings direct" "http://127.0.0.1:9101/v1/embeddings" "$(body embed)" none "$c"
    run "embeddings keel" "$API/v1/embeddings" "$(body embed)" "$KEY" "$c"
done
# The platform's own floor: an authenticated, non-AI route of the same gateway (API key from the
# credential cache, no billing, no upstream).
for c in 1 10 64; do
    out=$(taskset -c 1 wrk -t1 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer $KEY" "$API/v1/auth/me" |
        awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} END {print "rps=" rps " p50=" p50 " p90=" p90 " p99=" p99}')
    printf '%-22s c=%-3s %s\n' "auth/me keel (GET)" "$c" "$out"
done
CPU1=$(cpu_secs)
echo "keel: cpu ${CPU0}s -> ${CPU1}s over the runs; $(grep VmRSS "/proc/$KEEL_PID/status"); $(grep VmHWM "/proc/$KEEL_PID/status")"
echo "keel overhead histogram (x-keel-overhead-ms as measured inside the gateway):"
curl -s "$API/metrics" | grep -E '^keel_inference_overhead_seconds_(sum|count)'
