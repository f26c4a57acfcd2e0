#!/usr/bin/env bash
# Inference gateway overhead: the fake upstream alone versus through Keel, on one machine.
#
#   bash bench/inference.sh            # builds the release gateway first
#   SKIP_BUILD=1 DURATION=10 bash bench/inference.sh
#   LITELLM=/path/to/venv/bin/litellm bash bench/inference.sh   # and LiteLLM beside it
#   HALT_POLL_NS=500000 bash bench/inference.sh   # the guest's halt polling on (root, VMs)
#
# - Upstream: nginx with fixed bodies (a chat completion, an SSE stream of 3 chunks + [DONE],
#   an embedding), on 127.0.0.1:9101 (JSON) and :9102 (SSE).
# - Keel: the release gateway, one worker, pinned to CPU 0 (taskset), SQLite under a temp dir,
#   governance on: API key, plan limits through the rate limiter, a billing hold and a
#   settlement per call (prices are non-zero).
# - Load: wrk pinned to CPU 1, concurrency 1, 10 and 64, each scenario direct and through Keel.
# - Open loop: the closed-loop runs above saturate Keel's one core at c=10 (latency = c /
#   throughput, queueing), so latency below saturation comes from bench/openloop (built here):
#   RATE requests/s (default: 40 % of Keel's slowest closed-loop c=10 throughput) in all over
#   10 connections, Poisson arrivals, each latency measured from the request's scheduled send
#   time (no coordinated omission), pinned to CPU 1 like wrk.
#   Each scenario direct and through Keel, then an "overhead" line: keel minus direct, at p50 and
#   p99. The generator's stderr line says how late its own timers fired (part of every latency).
# - Concurrency 10 against a model-like upstream: bench/openloop's `upstream` (built here) answers
#   the same bodies after DELAY_MS (10), on CPU 1 at :9103; wrk at c=10 direct, through nginx and
#   through Keel, and the overhead of each hop (minus direct, p50 and p99). Ten calls in flight
#   then wait on the upstream instead of queueing for Keel's core, as they do in production.
# - Reference: nginx as a plain reverse proxy, one worker on CPU 0 like Keel (no key, limits,
#   billing or body parsing): the floor of any proxy hop on this machine. Chat at c=1, 10, 64 and
#   the delayed runs.
# - LiteLLM (when LITELLM names its CLI, from `pip install 'litellm[proxy]'`): its proxy with the
#   same three models on the same upstream, no database (so no virtual keys, budgets or spend
#   tracking: only its master key), one worker, pinned to CPU 0 like Keel, after Keel has stopped.
# Prints one line per run: RPS and latency percentiles; then each gateway's CPU seconds and RSS,
# and the in-gateway overhead histogram's p50/p90/p99 bucket bounds per route, for the open-loop
# runs, for the delayed runs and for the whole run.
# - HALT_POLL_NS (on a VM whose kernel has cpuidle-haltpoll, as root): how long an idle vCPU
#   polls before it halts, for the whole run; the previous value is put back at the end. A
#   halted vCPU wakes in tens of microseconds (an exit to the hypervisor), and a call through a
#   gateway wakes the other core twice more than a direct call does; docs/OPERATIONS.md.
# Needs: wrk, nginx, curl, jq, taskset, cargo. Leaves nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-10}
PORT=${PORT:-9100}
WORK=$(mktemp -d)
NGINX_PID=""
PROXY_PID=""
UPSTREAM_PID=""
KEEL_PID=""
LITELLM_PID=""
HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_BEFORE=""
cleanup() {
    [ -n "$HALT_POLL_BEFORE" ] && echo "$HALT_POLL_BEFORE" >"$HALT_POLL" 2>/dev/null || true
    [ -n "$KEEL_PID" ] && kill "$KEEL_PID" 2>/dev/null || true
    [ -n "$LITELLM_PID" ] && kill "$LITELLM_PID" 2>/dev/null || true
    [ -n "$NGINX_PID" ] && kill "$NGINX_PID" 2>/dev/null || true
    [ -n "$UPSTREAM_PID" ] && kill "$UPSTREAM_PID" 2>/dev/null || true
    [ -n "$PROXY_PID" ] && kill "$PROXY_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk nginx curl jq taskset; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing" >&2; exit 1; }
done
if [ -n "${HALT_POLL_NS:-}" ]; then
    [ -w "$HALT_POLL" ] || { echo "bench: HALT_POLL_NS needs root and a kernel with cpuidle-haltpoll ($HALT_POLL)" >&2; exit 1; }
    HALT_POLL_BEFORE=$(cat "$HALT_POLL")
    echo "$HALT_POLL_NS" >"$HALT_POLL"
fi
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p gateway
fi
# The open-loop generator, a crate outside the workspace; its own target dir whatever
# CARGO_TARGET_DIR says, so its path is known.
OPENLOOP=bench/openloop/target/release/openloop
UPSTREAM=bench/openloop/target/release/upstream
if [ -z "${SKIP_BUILD:-}" ] || [ ! -x "$OPENLOOP" ] || [ ! -x "$UPSTREAM" ]; then
    cargo build --release --manifest-path bench/openloop/Cargo.toml --target-dir bench/openloop/target
fi

CHAT='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":10,"total_tokens":22}}'
CHUNK='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hello"},"finish_reason":null}]}'
LAST='{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}'
EMBED='{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8]}],"model":"e","usage":{"prompt_tokens":4,"total_tokens":4}}'
SSE="data: $CHUNK\n\ndata: $CHUNK\n\ndata: $CHUNK\n\ndata: $LAST\n\ndata: [DONE]\n\n"

nginx_conf() { # nginx_conf NAME: writes $WORK/NAME/nginx.conf, one worker; stdin is the http block
    mkdir -p "$WORK/$1"
    {
        cat <<EOF
daemon off;
worker_processes 1;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/$1/body;
    proxy_temp_path $WORK/$1/proxy;
    keepalive_requests 1000000;
EOF
        cat
        echo "}"
    } >"$WORK/$1/nginx.conf"
}
nginx_conf upstream <<EOF
    server {
        listen 127.0.0.1:9101;
        location /v1/chat/completions { default_type application/json; return 200 '$CHAT'; }
        location /v1/embeddings { default_type application/json; return 200 '$EMBED'; }
    }
    server {
        listen 127.0.0.1:9102;
        location /v1/chat/completions { default_type text/event-stream; return 200 '$SSE'; }
    }
EOF
taskset -c 1 nginx -c "$WORK/upstream/nginx.conf" -p "$WORK/upstream" &
NGINX_PID=$!
# The floor of any proxy hop on this machine, for reference: nginx as a plain reverse proxy
# (keep-alive to the upstream; no key, no limits, no billing, no body parsing), one worker on
# CPU 0 as Keel is; :9104 to the upstream above, :9105 to the delayed one further down.
nginx_conf proxy <<EOF
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    upstream fast { server 127.0.0.1:9101; keepalive 64; }
    upstream delayed { server 127.0.0.1:9103; keepalive 64; }
    server { listen 127.0.0.1:9104; location / { proxy_pass http://fast; } }
    server { listen 127.0.0.1:9105; location / { proxy_pass http://delayed; } }
EOF
taskset -c 0 nginx -c "$WORK/proxy/nginx.conf" -p "$WORK/proxy" &
PROXY_PID=$!

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

[inference.providers.slow]
base_url = "http://127.0.0.1:9103/v1"
max_concurrency = 1024

[inference.models.bench-chat]
max_output_tokens = 256
deployments = [{ provider = "json", model = "m", input_nanos_per_million = 150000000, output_nanos_per_million = 600000000 }]

[inference.models.bench-chat-slow]
max_output_tokens = 256
deployments = [{ provider = "slow", model = "m", input_nanos_per_million = 150000000, output_nanos_per_million = 600000000 }]

[inference.models.bench-stream]
max_output_tokens = 256
deployments = [{ provider = "sse", model = "m", input_nanos_per_million = 150000000, output_nanos_per_million = 600000000 }]

[inference.models.bench-embed]
kind = "embedding"
deployments = [{ provider = "json", model = "e", input_nanos_per_million = 20000000 }]

[inference.models.bench-embed-slow]
kind = "embedding"
deployments = [{ provider = "slow", model = "e", input_nanos_per_million = 20000000 }]
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

body() { # body chat|stream|embed [slow]: the request; "slow" names the models on the delayed upstream
    local chat=bench-chat stream=bench-stream embed=bench-embed
    # The delayed upstream answers a streaming request with its SSE body, so one model serves both.
    [ "${2:-}" = slow ] && chat=bench-chat-slow stream=bench-chat-slow embed=bench-embed-slow
    case $1 in
    chat) echo '{"model":"'$chat'","max_tokens":64,"messages":[{"role":"user","content":"Say hello in a friendly way."}]}' ;;
    stream) echo '{"model":"'$stream'","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello in a friendly way."}]}' ;;
    embed) echo '{"model":"'$embed'","input":"a short sentence to embed"}' ;;
    esac
}
script() { # script BODY AUTH [PACE_MS]
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
$([ -n "${3:-}" ] && echo "delay = function() return $3 end")
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
run() { # run NAME URL BODY AUTH CONCURRENCY [PACE_MS]
    script "$3" "$4" "${6:-}"
    local out
    out=$(taskset -c 1 wrk -t1 -c"$5" -d"${DURATION}s" -s "$WORK/post.lua" "$2" | grep '^RESULT' | cut -d' ' -f2-)
    printf '%-22s c=%-3s %s (latency ms)\n' "$1" "$5" "$out"
    LAST_OUT=$out
    LAST_RPS=$(sed -n 's/^rps=\([0-9]*\).*/\1/p' <<<"$out")
}
cpu_secs() { # cpu_secs PID: user + system CPU of the process and of its children that ended
    awk '{printf "%.2f", ($14 + $15 + $16 + $17) / 100}' "/proc/$1/stat"
}

# Warm up (connections, caches).
script "$(body chat)" "$KEY"
taskset -c 1 wrk -t1 -c8 -d2s -s "$WORK/post.lua" "$API/v1/chat/completions" >/dev/null

echo "upstream: nginx on CPU 1; Keel: 1 worker on CPU 0; wrk on CPU 1; ${DURATION}s per run; guest halt polling: $(cat "$HALT_POLL" 2>/dev/null || echo n/a) ns"
CPU0=$(cpu_secs "$KEEL_PID")
for c in 1 10 64; do
    run "chat direct" "http://127.0.0.1:9101/v1/chat/completions" "$(body chat)" none "$c"
    run "chat nginx proxy" "http://127.0.0.1:9104/v1/chat/completions" "$(body chat)" none "$c"
    run "chat keel" "$API/v1/chat/completions" "$(body chat)" "$KEY" "$c"
    if [ "$c" = 10 ]; then SATURATED=$LAST_RPS; fi
    run "stream direct" "http://127.0.0.1:9102/v1/chat/completions" "$(body stream)" none "$c"
    run "stream keel" "$API/v1/chat/completions" "$(body stream)" "$KEY" "$c"
    if [ "$c" = 10 ] && [ "$LAST_RPS" -lt "$SATURATED" ]; then SATURATED=$LAST_RPS; fi
    run "embeddings direct" "http://127.0.0.1:9101/v1/embeddings" "$(body embed)" none "$c"
    run "embeddings keel" "$API/v1/embeddings" "$(body embed)" "$KEY" "$c"
    if [ "$c" = 10 ] && [ "$LAST_RPS" -lt "$SATURATED" ]; then SATURATED=$LAST_RPS; fi
done
# Latency below saturation: an open loop at RATE requests/s (by default 40 % of the slowest
# scenario's closed-loop c=10 throughput through Keel just measured, so the load is the same
# fraction of the core whatever the machine), Poisson arrivals over 10 connections, latency from
# the scheduled send time; see bench/openloop/src/main.rs for why not wrk. The in-gateway histogram
# is read before and after, so its figures below are those of these runs alone.
RATE=${RATE:-$((SATURATED * 40 / 100))}
openloop() { # openloop NAME URL BODY AUTH: prints a line, leaves the RESULT fields in $OUT
    OUT=$(taskset -c 1 "$OPENLOOP" --url "$2" --rate "$RATE" --connections 10 --duration "$DURATION" \
        --warmup 1 --method POST --body "$3" --header "Authorization: Bearer $4" | grep '^RESULT' | cut -d' ' -f2-)
    printf '%-22s c=10  %s (latency ms)\n' "$1 open" "$OUT"
}
field() { # field FIELDS NAME: the value of NAME=… among FIELDS
    tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"
}
curl -s "$API/metrics" >"$WORK/metrics.before"
echo "open loop: rate=$RATE/s, 10 connections, Poisson arrivals, ${DURATION}s per run after 1s of warm-up, on CPU 1"
for name in chat stream embeddings; do
    case $name in chat) b=chat ;; stream) b=stream ;; embeddings) b=embed ;; esac
    port=9101
    [ "$name" = stream ] && port=9102
    path=/v1/chat/completions
    [ "$name" = embeddings ] && path=/v1/embeddings
    openloop "$name direct" "http://127.0.0.1:$port$path" "$(body $b)" none
    direct=$OUT
    openloop "$name keel" "$API$path" "$(body $b)" "$KEY"
    awk -v d50="$(field "$direct" p50)" -v d99="$(field "$direct" p99)" \
        -v k50="$(field "$OUT" p50)" -v k99="$(field "$OUT" p99)" -v name="$name overhead" \
        'BEGIN { printf "%-22s c=10  p50=%.3f p99=%.3f (keel minus direct, ms)\n", name, k50 - d50, k99 - d99 }'
done
curl -s "$API/metrics" >"$WORK/metrics.open"
# Concurrency 10 as callers of a model make it: the same closed loop, against an upstream that
# answers after DELAY_MS as a model does (bench/openloop's `upstream`, on CPU 1 with wrk). Ten
# calls in flight then spend their time waiting on it rather than queueing for Keel's core, and
# keel minus direct is what the gateway adds to each call at concurrency 10.
DELAY_MS=${DELAY_MS:-10}
taskset -c 1 "$UPSTREAM" --listen 127.0.0.1:9103 --delay-ms "$DELAY_MS" \
    --chat "$CHAT" --sse "$SSE" --embedding "$EMBED" &
UPSTREAM_PID=$!
for _ in $(seq 1 50); do curl -sf -o /dev/null -d '{}' http://127.0.0.1:9103/v1/embeddings && break; sleep 0.1; done
script "$(body chat slow)" "$KEY"
taskset -c 1 wrk -t1 -c10 -d1s -s "$WORK/post.lua" "$API/v1/chat/completions" >/dev/null
echo "closed loop against an upstream answering after ${DELAY_MS} ms, c=10, ${DURATION}s per run"
for name in chat stream embeddings; do
    case $name in chat) b=chat ;; stream) b=stream ;; embeddings) b=embed ;; esac
    path=/v1/chat/completions
    [ "$name" = embeddings ] && path=/v1/embeddings
    run "$name direct delayed" "http://127.0.0.1:9103$path" "$(body $b slow)" none 10
    direct=$LAST_OUT
    run "$name nginx delayed" "http://127.0.0.1:9105$path" "$(body $b slow)" none 10
    proxy=$LAST_OUT
    run "$name keel delayed" "$API$path" "$(body $b slow)" "$KEY" 10
    for through in nginx keel; do
        [ "$through" = nginx ] && out=$proxy || out=$LAST_OUT
        awk -v d50="$(field "$direct" p50)" -v d99="$(field "$direct" p99)" \
            -v k50="$(field "$out" p50)" -v k99="$(field "$out" p99)" -v name="$name overhead" -v through="$through" \
            'BEGIN { printf "%-22s c=10  p50=%.3f p99=%.3f (%s minus direct, ms)\n", name, k50 - d50, k99 - d99, through }'
    done
done
kill "$UPSTREAM_PID"
UPSTREAM_PID=""
curl -s "$API/metrics" >"$WORK/metrics.delayed"
# The platform's own floor: an authenticated, non-AI route of the same gateway (API key from the
# credential cache, no billing, no upstream).
for c in 1 10 64; do
    out=$(taskset -c 1 wrk -t1 -c"$c" -d"${DURATION}s" --latency -H "Authorization: Bearer $KEY" "$API/v1/auth/me" |
        awk '/Requests\/sec/ {rps=$2} /^ +50%/ {p50=$2} /^ +90%/ {p90=$2} /^ +99%/ {p99=$2} END {print "rps=" rps " p50=" p50 " p90=" p90 " p99=" p99}')
    printf '%-22s c=%-3s %s\n' "auth/me keel (GET)" "$c" "$out"
done
CPU1=$(cpu_secs "$KEEL_PID")
echo "keel: cpu ${CPU0}s -> ${CPU1}s over the runs; $(grep VmRSS "/proc/$KEEL_PID/status"); $(grep VmHWM "/proc/$KEEL_PID/status")"
echo "keel overhead histogram (x-keel-overhead-ms as measured inside the gateway):"
curl -s "$API/metrics" >"$WORK/metrics.end"
grep -E '^keel_inference_overhead_seconds_(sum|count)' "$WORK/metrics.end"
# quantiles BEFORE AFTER: per route, the upper bound of the first bucket of the histogram
# (AFTER minus BEFORE) whose cumulative count reaches 50, 90 and 99 % of the calls.
quantiles() {
    awk '
        !/^keel_inference_overhead_seconds_bucket\{/ { next }
        {
            route = $0; sub(/.*route="/, "", route); sub(/".*/, "", route)
            le = $0; sub(/.*le="/, "", le); sub(/".*/, "", le)
            key = route SUBSEP le
            if (FILENAME == ARGV[1]) { before[key] = $NF; next }
            if (!(route in n)) { routes[++nroutes] = route }
            bound[route, ++n[route]] = le
            count[route, n[route]] = $NF - before[key]
        }
        END {
            for (r = 1; r <= nroutes; r++) {
                route = routes[r]; total = count[route, n[route]]
                line = sprintf("%-12s calls=%d", route, total)
                split("50 90 99", qs, " ")
                for (q = 1; q <= 3; q++) {
                    for (i = 1; i <= n[route]; i++) if (total > 0 && count[route, i] >= total * qs[q] / 100) break
                    le = bound[route, i]
                    if (total == 0) shown = "=-"
                    else if (le == "+Inf") shown = sprintf(">%gus", bound[route, i - 1] * 1e6)
                    else shown = sprintf("<=%gus", le * 1e6)
                    line = line " p" qs[q] shown
                }
                print "  " line
            }
        }' "$1" "$2"
}
echo "in-gateway overhead, bucket upper bounds (25, 50, 100, 250, 500 us, 1 ms, ...), open-loop runs only:"
quantiles "$WORK/metrics.before" "$WORK/metrics.open"
echo "the same, delayed-upstream runs at c=10 only:"
quantiles "$WORK/metrics.open" "$WORK/metrics.delayed"
echo "the same over the whole run (warm-up, closed-loop and open-loop runs):"
quantiles /dev/null "$WORK/metrics.end"

[ -n "${LITELLM:-}" ] || exit 0
kill "$KEEL_PID"
wait "$KEEL_PID" 2>/dev/null || true
KEEL_PID=""
cat >"$WORK/litellm.yaml" <<EOF
model_list:
  - model_name: bench-chat
    litellm_params: { model: openai/m, api_base: "http://127.0.0.1:9101/v1", api_key: none }
  - model_name: bench-stream
    litellm_params: { model: openai/m, api_base: "http://127.0.0.1:9102/v1", api_key: none }
  - model_name: bench-embed
    litellm_params: { model: openai/e, api_base: "http://127.0.0.1:9101/v1", api_key: none }
general_settings:
  master_key: sk-bench
EOF
LITELLM_PORT=$((PORT + 10))
LITELLM_LOG=ERROR taskset -c 0 "$LITELLM" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
    --num_workers 1 >"$WORK/litellm.log" 2>&1 &
LITELLM_PID=$!
LAPI=http://127.0.0.1:$LITELLM_PORT
for _ in $(seq 1 600); do curl -sf "$LAPI/health/liveliness" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$LAPI/health/liveliness" >/dev/null || { tail -20 "$WORK/litellm.log"; exit 1; }
script "$(body chat)" sk-bench
taskset -c 1 wrk -t1 -c8 -d2s -s "$WORK/post.lua" "$LAPI/v1/chat/completions" >/dev/null
echo "LiteLLM $("$LITELLM" --version 2>/dev/null | grep -o '[0-9][0-9.]*' | head -1): 1 worker on CPU 0, master key, no database"
CPU0=$(cpu_secs "$LITELLM_PID")
for c in 1 10 64; do
    run "chat litellm" "$LAPI/v1/chat/completions" "$(body chat)" sk-bench "$c"
    run "stream litellm" "$LAPI/v1/chat/completions" "$(body stream)" sk-bench "$c"
    run "embeddings litellm" "$LAPI/v1/embeddings" "$(body embed)" sk-bench "$c"
done
CPU1=$(cpu_secs "$LITELLM_PID")
RSS=$(ps -o rss= --ppid "$LITELLM_PID" -p "$LITELLM_PID" | awk '{s += $1} END {print s}')
echo "litellm: cpu ${CPU0}s -> ${CPU1}s over the runs (the process and its workers); RSS ${RSS} kB in all"
