#!/usr/bin/env python3
"""Starts a real gateway, drives enough traffic that every metric family it exports has samples,
scrapes /metrics, and stops it; then does the same for `gateway worker`.

    python3 deploy/checks/live_gateway.py --gateway target/debug/gateway --out DIR [--redis URL]

Writes DIR/metrics.prom (Prometheus text 0.0.4) and DIR/metrics.openmetrics (what Prometheus
itself asks for) for `.ci/check-metric-names`, and DIR/worker-metrics.prom. `.ci/deploy-checks`
runs it against the debug build: the dashboards, rules and autoscalers are then checked against
what the gateway really exports, not against a hand-written sample.

The gateway runs as the artifacts run it, in miniature: `gateway serve` on 127.0.0.1:0 with its
SQLite files in a temporary directory, Redis (`--redis`, default KEEL_TEST_REDIS_URL, else
redis://127.0.0.1:6379) under a key prefix of its own so that no other run's buckets or cache
entries are seen (every key it writes expires by itself, the last after the 15-minute window of
the login throttle), JSON logs, and a quota on the `auth` route class so that rate-limit decisions
(allowed and rejected) are counted. Argon2 is set to its cheapest parameters: the debug build
would otherwise spend seconds per password hash.

Traffic: /healthz, /readyz, a signup, an API key and one chat completion with the echo model, a
wrong login (401), a login, /v1/auth/me twice (a cache
load, then an L1 hit), an unmatched route (404), a logout (a cache invalidation), then
unauthenticated /v1/auth/me until the `auth` quota answers 429. Every answer's status is checked.

The process is stopped with SIGTERM and must exit with status 0 within --stop-timeout seconds.
Exit status: 0 when everything above held, 1 otherwise (the reason and the gateway's last log
lines are printed). Standard library only.
"""

import argparse
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

AUTH_LIMIT = 6  # the `auth` class quota per subject and minute, set below
PROMETHEUS_ACCEPT = "text/plain; version=0.0.4"
# What Prometheus 2.x and 3.x send by default: OpenMetrics first.
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"


class Failure(Exception):
    pass


class Gateway:
    """One gateway process whose JSON log lines are read in the background."""

    def __init__(self, binary, args, env, start_timeout):
        self.lines = queue.Queue()
        self.log = []
        self.proc = subprocess.Popen(
            [binary, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()
        self.base = "http://" + self._wait_listening(start_timeout)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _wait_listening(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure(f"no 'gateway listening' log line within {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise Failure(f"the gateway exited with status {self.proc.wait()} before listening")
            self.log.append(line.rstrip("\n"))
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not a JSON line (a panic message, say): kept for the report
            if event.get("message") == "gateway listening":
                addr = event.get("http.addr")
                if not addr:
                    raise Failure(f"'gateway listening' without http.addr: {line.strip()}")
                return addr

    def request(self, method, path, body=None, token=None, accept=None, expect=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        if expect is not None and status != expect:
            raise Failure(f"{method} {path}: expected {expect}, got {status}: {text[:300]}")
        return status, text

    def stop(self, timeout):
        """SIGTERM, then wait; the exit status must be 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise Failure(f"still running {timeout}s after SIGTERM (killed)")
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.log.append(line.rstrip("\n"))
        if status != 0:
            raise Failure(f"exited with status {status} after SIGTERM")

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def base_env(data_dir, redis_url, prefix):
    # The caller's KEEL_* (KEEL_TEST_* included) and RUST_LOG must not leak into the gateway.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k != "RUST_LOG"}
    env.update({
        "KEEL_HTTP__ADDR": "127.0.0.1:0",
        "KEEL_HTTP__SHUTDOWN_TIMEOUT_SECS": "5",
        "KEEL_DATABASE__URL": f"sqlite://{data_dir}",
        "KEEL_REDIS__URL": redis_url,
        "KEEL_REDIS__KEY_PREFIX": prefix,
        "KEEL_TELEMETRY__FORMAT": "json",
        "KEEL_TELEMETRY__FILTER": "info",
        "KEEL_AUTH__ARGON2__MEMORY_KIB": "64",
        "KEEL_AUTH__ARGON2__ITERATIONS": "1",
        "KEEL_RATE_LIMITS__CLASSES__AUTH__LIMIT": str(AUTH_LIMIT),
        "KEEL_RATE_LIMITS__CLASSES__AUTH__PERIOD_SECS": "60",
    })
    return env


def drive(gw):
    """The traffic described in the module's docstring."""
    gw.request("GET", "/healthz", expect=200)
    gw.request("GET", "/readyz", expect=200)
    email = f"ci-{secrets.token_hex(4)}@example.com"
    password = "correct horse battery"
    _, text = gw.request("POST", "/v1/auth/signup", {"email": email, "password": password, "name": "CI"},
                         expect=201)
    signup = json.loads(text)
    if not signup.get("token"):
        raise Failure("signup answered no token")
    # A model call through the built-in echo model: the keel_inference_* series, overhead included.
    _, text = gw.request("POST", f"/v1/organizations/{signup['organization']['id']}/api-keys", {"name": "ci"},
                         token=signup["token"], expect=201)
    key = json.loads(text)["key"]
    gw.request("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
               token=key, expect=200)
    gw.request("POST", "/v1/auth/login", {"email": email, "password": "wrong password!"}, expect=401)
    _, text = gw.request("POST", "/v1/auth/login", {"email": email, "password": password}, expect=200)
    token = json.loads(text)["token"]
    gw.request("GET", "/v1/auth/me", token=token, expect=200)
    gw.request("GET", "/v1/auth/me", token=token, expect=200)
    gw.request("GET", "/v1/no-such-route", expect=404)
    gw.request("POST", "/v1/auth/logout", token=token, expect=204)
    # The client address has used 3 of its AUTH_LIMIT requests (signup, two logins); the bucket
    # refills one request per 60 s / AUTH_LIMIT, so a slow machine may see a few more 401s.
    statuses = []
    while 429 not in statuses and len(statuses) < 2 * AUTH_LIMIT:
        statuses.append(gw.request("GET", "/v1/auth/me")[0])
    if statuses[-1] != 429 or any(s != 401 for s in statuses[:-1]):
        raise Failure(f"expected 401s, then 429 from the auth quota; got {statuses}")


def families(text):
    """Metric names with at least one sample, and names declared by # TYPE."""
    sampled, declared = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
        elif line and not line.startswith("#"):
            sampled.add(line.split("{")[0].split(" ")[0])
    return sampled, declared


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="the gateway binary")
    parser.add_argument("--out", required=True, help="directory for the scraped texts")
    parser.add_argument("--redis", default=os.environ.get("KEEL_TEST_REDIS_URL") or "redis://127.0.0.1:6379")
    parser.add_argument("--start-timeout", type=float, default=60)
    parser.add_argument("--stop-timeout", type=float, default=20)
    args = parser.parse_args(argv)
    binary = os.path.abspath(args.gateway)
    os.makedirs(args.out, exist_ok=True)
    prefix = f"keel-ci-{secrets.token_hex(6)}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="keel-live-") as data_dir:
        env = base_env(data_dir, args.redis, prefix)
        gw = None
        try:
            gw = Gateway(binary, ["serve"], env, args.start_timeout)
            drive(gw)
            _, text = gw.request("GET", "/metrics", accept=PROMETHEUS_ACCEPT, expect=200)
            _, om = gw.request("GET", "/metrics", accept=OPENMETRICS_ACCEPT, expect=200)
            if not om.rstrip().endswith("# EOF"):
                raise Failure("the OpenMetrics answer does not end with # EOF")
            if "\nkeel_redis_up 1\n" not in text:
                raise Failure(f"keel_redis_up is not 1: Redis at {args.redis} did not answer the gateway")
            gw.stop(args.stop_timeout)
            with open(os.path.join(args.out, "metrics.prom"), "w", encoding="utf-8") as f:
                f.write(text)
            with open(os.path.join(args.out, "metrics.openmetrics"), "w", encoding="utf-8") as f:
                f.write(om)
            sampled, declared = families(text)
            print(f"live-gateway: serve on {gw.base}: {len(sampled)} sampled names, "
                  f"{len(declared)} declared families")
            for name in sorted(declared):
                has = any(s == name or s.startswith(name + "_") for s in sampled)
                print(f"  {'sampled ' if has else 'NO SAMPLE'} {name}")

            # The worker role the artifacts run: health, readiness and metrics on http.addr.
            gw = Gateway(binary, ["worker"], env, args.start_timeout)
            gw.request("GET", "/healthz", expect=200)
            gw.request("GET", "/readyz", expect=200)
            gw.request("GET", "/v1/auth/me", expect=404)  # no API route in a worker
            _, text = gw.request("GET", "/metrics", expect=200)
            gw.stop(args.stop_timeout)
            with open(os.path.join(args.out, "worker-metrics.prom"), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"live-gateway: worker on {gw.base}: /healthz, /readyz, /metrics answered; stopped by SIGTERM")
        except (Failure, OSError) as e:
            print(f"live-gateway: FAILED: {e}", file=sys.stderr)
            if gw is not None:
                gw.kill()
                print("last log lines:\n  " + "\n  ".join(gw.log[-15:]), file=sys.stderr)
            return 1
    print(f"live-gateway: done in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
