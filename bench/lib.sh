#!/usr/bin/env bash
# Shared by the bench scripts (sourced, not run). Builds the release gateway, starts it on the
# loopback with a throw-away SQLite directory, creates an account and an API key, and runs
# bounded loads with oha (if installed) or wrk. Every target is 127.0.0.1.

set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

PORT=${KEEL_BENCH_PORT:-18080}
BASE="http://127.0.0.1:$PORT"
# Seconds per measurement, clamped to 1..120 so no run goes on unbounded.
DURATION=${KEEL_BENCH_DURATION:-10}
[[ "$DURATION" =~ ^[0-9]+$ ]] || DURATION=10
((DURATION < 1)) && DURATION=1
((DURATION > 120)) && DURATION=120

BENCH_EMAIL="bench-$$@example.com"
BENCH_PASSWORD="bench-password-$$-correct-horse"

SERVER_PID=""
BENCH_TMP=""
# KEEL_BENCH_SERVER_CPUS / KEEL_BENCH_LOAD_CPUS pin the gateway and the load tool (taskset -c
# lists), so that on a small machine they do not compete for the same core.
SERVER_PIN=()
LOAD_PIN=()
[ -n "${KEEL_BENCH_SERVER_CPUS:-}" ] && SERVER_PIN=(taskset -c "$KEEL_BENCH_SERVER_CPUS")
[ -n "${KEEL_BENCH_LOAD_CPUS:-}" ] && LOAD_PIN=(taskset -c "$KEEL_BENCH_LOAD_CPUS")
BG_PIDS=()

log() { printf '%s\n' "$*" >&2; }
die() {
    log "bench: $*"
    exit 1
}

cleanup() {
    local status=$?
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        # Graceful shutdown first; bounded, then forced.
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$BENCH_TMP" ]; then
        if [ "$status" -ne 0 ] && [ -f "$BENCH_TMP/gateway.log" ]; then
            log "bench: failed; the last lines of the gateway log:"
            tail -n 20 "$BENCH_TMP/gateway.log" >&2 || true
        fi
        rm -rf "$BENCH_TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The load tool: oha if installed, else wrk (installed from Debian's packages when missing).
ensure_tools() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v jq >/dev/null 2>&1 || missing+=(jq)
    if command -v oha >/dev/null 2>&1; then
        LOAD_TOOL=oha
    else
        command -v wrk >/dev/null 2>&1 || missing+=(wrk)
        LOAD_TOOL=wrk
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]} (apt-get)"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo=sudo
        DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    log "load tool: $LOAD_TOOL ($($LOAD_TOOL --version 2>&1 | head -n 1))"
}

build_gateway() {
    # KEEL_BENCH_GATEWAY names a prebuilt binary, e.g. an older release to compare with.
    if [ -n "${KEEL_BENCH_GATEWAY:-}" ]; then
        GATEWAY_BIN=$KEEL_BENCH_GATEWAY
        [ -x "$GATEWAY_BIN" ] || die "no binary at $GATEWAY_BIN"
        return 0
    fi
    log "building the release gateway"
    (cd "$REPO_DIR" && cargo build --release -p gateway)
    local target_dir
    target_dir=$(cd "$REPO_DIR" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    GATEWAY_BIN="$target_dir/release/gateway"
    [ -x "$GATEWAY_BIN" ] || die "no binary at $GATEWAY_BIN"
}

# Starts the gateway with default settings except: loopback port, a temporary SQLite directory
# (or KEEL_BENCH_DATABASE_URL), JSON logs at warn level to a file.
start_gateway() {
    if curl -s -o /dev/null --max-time 1 "$BASE/healthz"; then
        die "something already answers on $BASE; set KEEL_BENCH_PORT"
    fi
    BENCH_TMP=$(mktemp -d -t keel-bench.XXXXXX)
    local database_url=${KEEL_BENCH_DATABASE_URL:-"sqlite://$BENCH_TMP/data"}
    # Every other KEEL_* variable is dropped: the gateway refuses unknown keys, and the bench
    # measures the defaults.
    local -a clean_env=()
    local var
    while IFS= read -r var; do
        clean_env+=(-u "$var")
    done < <(compgen -e | grep '^KEEL_' || true)
    # KEEL_BENCH_GATEWAY_ENV adds settings on purpose, e.g. "KEEL_REDIS__URL=redis://…".
    local -a extra_env=()
    [ -n "${KEEL_BENCH_GATEWAY_ENV:-}" ] && read -r -a extra_env <<<"$KEEL_BENCH_GATEWAY_ENV"
    env "${clean_env[@]}" ${extra_env[@]+"${extra_env[@]}"} \
        KEEL_HTTP__ADDR="127.0.0.1:$PORT" \
        KEEL_DATABASE__URL="$database_url" \
        KEEL_TELEMETRY__FORMAT=json \
        RUST_LOG="${KEEL_BENCH_RUST_LOG:-warn}" \
        ${SERVER_PIN[@]+"${SERVER_PIN[@]}"} "$GATEWAY_BIN" serve >"$BENCH_TMP/gateway.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        if curl -s -o /dev/null --max-time 1 "$BASE/readyz"; then
            log "gateway pid $SERVER_PID on $BASE (data: ${database_url%%\?*})"
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "the gateway exited during start-up"
        sleep 0.2
    done
    die "the gateway did not answer within 20s"
}

# POST JSON; prints the body; fails on a non-2xx answer.
post_json() {
    local path=$1 body=$2 token=${3:-}
    local -a auth=()
    [ -n "$token" ] && auth=(-H "Authorization: Bearer $token")
    curl -sS --fail-with-body --max-time 30 -H 'Content-Type: application/json' "${auth[@]}" \
        -d "$body" "$BASE$path"
}

# Creates an account (SESSION_TOKEN, ORG_ID) and an API key of its organization (API_KEY).
create_account_and_key() {
    local signup key
    signup=$(post_json /v1/auth/signup "{\"email\":\"$BENCH_EMAIL\",\"password\":\"$BENCH_PASSWORD\"}") ||
        die "signup failed: $signup"
    SESSION_TOKEN=$(jq -r .token <<<"$signup")
    ORG_ID=$(jq -r .organization.id <<<"$signup")
    key=$(post_json "/v1/organizations/$ORG_ID/api-keys" '{"name":"bench"}' "$SESSION_TOKEN") ||
        die "creating the API key failed: $key"
    API_KEY=$(jq -r .key <<<"$key")
    [[ "$API_KEY" == keel_sk_* ]] || die "unexpected API key answer: $key"
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $API_KEY" "$BASE/v1/auth/me")
    [ "$status" = 200 ] || die "GET /v1/auth/me with the new key answered $status"
    log "account $BENCH_EMAIL, organization $ORG_ID, API key ${API_KEY:0:24}…"
}

LOGIN_BODY() { printf '{"email":"%s","password":"%s"}' "$BENCH_EMAIL" "$BENCH_PASSWORD"; }

# load LABEL CONCURRENCY SECONDS PATH [METHOD [BODY [TOKEN]]]
# Prints one line: label, concurrency, requests/s, p50 and p99 in ms, non-2xx answers, errors.
load() {
    local label=$1 concurrency=$2 seconds=$3 path=$4 method=${5:-GET} body=${6:-} token=${7:-}
    local url="$BASE$path" out
    out=$(mktemp -p "$BENCH_TMP" load.XXXXXX)
    local rps p50 p99 bad errors
    if [ "$LOAD_TOOL" = oha ]; then
        local -a args=(--no-tui --output-format json -z "${seconds}s" -w -c "$concurrency" -t 60s -m "$method")
        [ -n "$body" ] && args+=(-d "$body" -T application/json)
        [ -n "$token" ] && args+=(-H "Authorization: Bearer $token")
        timeout $((seconds + 90)) ${LOAD_PIN[@]+"${LOAD_PIN[@]}"} oha "${args[@]}" "$url" >"$out" || die "oha failed for $label"
        read -r rps p50 p99 bad errors < <(jq -r '[
            (.summary.requestsPerSec // 0),
            ((.latencyPercentiles.p50 // 0) * 1000),
            ((.latencyPercentiles.p99 // 0) * 1000),
            ([.statusCodeDistribution | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0),
            ([.errorDistribution[]] | add // 0)
        ] | @tsv' "$out")
    else
        local threads=$((concurrency < 2 ? concurrency : 2))
        BENCH_METHOD=$method BENCH_BODY=$body BENCH_TOKEN=$token \
            timeout $((seconds + 90)) ${LOAD_PIN[@]+"${LOAD_PIN[@]}"} wrk -t "$threads" -c "$concurrency" -d "${seconds}s" --timeout 60s \
            -s "$BENCH_DIR/wrk.lua" "$url" >"$out" || die "wrk failed for $label"
        read -r rps p50 p99 bad errors < <(awk '$1 == "RESULT" { print $2, $3, $4, $5, $6 }' "$out")
        [ -n "${rps:-}" ] || die "wrk printed no RESULT line for $label: $(cat "$out")"
    fi
    printf '%-34s c=%-4s %10.1f req/s   p50 %9.2f ms   p99 %9.2f ms   non-2xx %s   errors %s\n' \
        "$label" "$concurrency" "$rps" "$p50" "$p99" "$bad" "$errors"
}

print_header() {
    printf '\n# %s\n' "$1"
    printf '# %s, %s cores, %s, %ss per measurement, load tool %s\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(nproc)" "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?')" \
        "$DURATION" "$LOAD_TOOL"
}
