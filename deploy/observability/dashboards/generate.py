#!/usr/bin/env python3
"""Writes Keel's Grafana dashboards (keel-*.json beside this file).

The JSON files are committed so that Grafana (compose provisioning, the Kubernetes dashboard
ConfigMap) reads them directly; this script is their source. Edit it, run it, commit both:

    python3 deploy/observability/dashboards/generate.py

`.ci/deploy-checks` runs it with `--check` and fails when a committed file differs from what it
generates. Only metric names of the platform's metric contract appear here (HELPERS.md, "Metric
names"); `.ci/check-metric-names` checks them against a scraped /metrics.

Standard library only. Every dashboard takes its Prometheus data source from the `datasource`
variable, so the same file works in compose and in any Grafana.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
# Routes that are not API traffic: kept out of the request-rate, error and latency views.
NOT_API = 'route!~"/healthz|/readyz|/metrics"'


class Board:
    """Lays panels out left to right, 24 columns wide, and numbers them."""

    def __init__(self, uid, title, description, variables):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels = []
        self.x = self.y = 0
        self.row_height = 0

    def row(self, title):
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_height
            self.x = self.row_height = 0

    def add(self, panel, w, h):
        if self.x + w > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += w
        self.row_height = max(self.row_height, h)

    def json(self):
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["keel"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "timezone": "browser",
            "time": {"from": "now-6h", "to": "now"},
            "refresh": "30s",
            "links": [
                {"type": "dashboards", "tags": ["keel"], "asDropdown": True, "title": "Keel dashboards",
                 "includeVars": True, "keepTime": True}
            ],
            "annotations": {"list": []},
            "templating": {"list": [datasource_var()] + self.variables},
            "panels": self.panels,
        }


def datasource_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
    }


def query_var(name, label, metric):
    query = f"label_values({metric}, {name})"
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
        "hide": 0,
    }


def targets(*queries):
    """queries: (expr, legend) pairs."""
    return [
        {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend, "range": True}
        for i, (expr, legend) in enumerate(queries)
    ]


def timeseries(title, description, unit, *queries, stack=False, max_value=None):
    defaults = {"unit": unit, "custom": {"fillOpacity": 10, "showPoints": "never"}}
    if stack:
        defaults["custom"]["stacking"] = {"mode": "normal", "group": "A"}
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max", "lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(*queries),
    }


def stat(title, description, unit, expr, thresholds=None):
    steps = [{"color": "green", "value": None}]
    for value, color in thresholds or []:
        steps.append({"color": color, "value": value})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "auto"},
        "targets": targets((expr, "")),
    }


def table(title, description, expr):
    panel = {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True},
        "transformations": [{"id": "labelsToFields", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True}}}],
        "targets": targets((expr, "")),
    }
    panel["targets"][0].update({"instant": True, "range": False, "format": "table"})
    return panel


def quantile(q, metric, by, selector):
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"


def http_board():
    sel = f'instance=~"$instance", route=~"$route", {NOT_API}'
    b = Board(
        "keel-http",
        "Keel / HTTP (RED)",
        "Rate, errors and duration of the API per route template (keel_http_*). Health and "
        "metrics endpoints are left out. SLOs: 99.9 % non-5xx, 99 % within 250 ms.",
        [query_var("instance", "Instance", "keel_build_info"),
         query_var("route", "Route", "keel_http_requests_total")],
    )
    b.row("Overview")
    b.add(stat("Requests/s", "All API requests per second.", "reqps",
               f"sum(rate(keel_http_requests_total{{{sel}}}[$__rate_interval]))"), 6, 4)
    b.add(stat("5xx ratio", "Share of API requests answered with a 5xx (objective: at most 0.1 %).",
               "percentunit",
               f'sum(rate(keel_http_requests_total{{{sel}, status=~"5.."}}[$__rate_interval])) / '
               f"sum(rate(keel_http_requests_total{{{sel}}}[$__rate_interval]))",
               [(0.001, "orange"), (0.01, "red")]), 6, 4)
    b.add(stat("Within 250 ms", "Share of API requests that completed within 250 ms "
               "(objective: at least 99 %).", "percentunit",
               f'sum(rate(keel_http_request_duration_seconds_bucket{{{sel}, le="0.25"}}[$__rate_interval])) / '
               f"sum(rate(keel_http_request_duration_seconds_count{{{sel}}}[$__rate_interval]))"), 6, 4)
    b.add(stat("p95 duration", "95th percentile of API request duration, all routes.", "s",
               f"histogram_quantile(0.95, sum by (le) (rate(keel_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))",
               [(0.1, "orange"), (0.25, "red")]), 6, 4)
    b.add(table("Running versions", "Gateways per version and commit (keel_build_info).",
                'count by (version, commit) (keel_build_info{instance=~"$instance"})'), 24, 5)
    b.row("Rate")
    b.add(timeseries("Requests/s by route", "Requests per second per route template.", "reqps",
                     (f"sum by (route) (rate(keel_http_requests_total{{{sel}}}[$__rate_interval]))", "{{route}}")),
          12, 8)
    b.add(timeseries("Responses/s by status", "Responses per second per HTTP status.", "reqps",
                     (f"sum by (status) (rate(keel_http_requests_total{{{sel}}}[$__rate_interval]))", "{{status}}"),
                     stack=True), 12, 8)
    b.row("Errors")
    b.add(timeseries("5xx ratio by route", "Share of each route's requests answered with a 5xx.", "percentunit",
                     (f'sum by (route) (rate(keel_http_requests_total{{{sel}, status=~"5.."}}[$__rate_interval])) / '
                      f"sum by (route) (rate(keel_http_requests_total{{{sel}}}[$__rate_interval]))", "{{route}}")),
          12, 8)
    b.add(timeseries("4xx/s by route and status", "Client errors per second: 401/403 point at credentials, "
                     "429 at rate limits, 422 at validation.", "reqps",
                     (f'sum by (route, status) (rate(keel_http_requests_total{{{sel}, status=~"4.."}}[$__rate_interval]))',
                      "{{route}} {{status}}")), 12, 8)
    b.row("Duration")
    for q in ("0.5", "0.95", "0.99"):
        b.add(timeseries(f"p{int(float(q) * 100)} duration by route",
                         f"{float(q) * 100:g}th percentile of request duration per route template.", "s",
                         (quantile(q, "keel_http_request_duration_seconds", "route", sel), "{{route}}")), 8, 8)
    b.add(timeseries("Requests within 250 ms by route", "Share of each route's requests within the latency "
                     "objective's bucket (le=0.25).", "percentunit",
                     (f'sum by (route) (rate(keel_http_request_duration_seconds_bucket{{{sel}, le="0.25"}}[$__rate_interval])) / '
                      f"sum by (route) (rate(keel_http_request_duration_seconds_count{{{sel}}}[$__rate_interval]))",
                      "{{route}}"), max_value=1), 24, 8)
    return b


def database_board():
    sel = 'instance=~"$instance", domain=~"$domain"'
    b = Board(
        "keel-database",
        "Keel / Database pools",
        "Connection pools per domain and pool (primary, replica), per gateway process "
        "(keel_db_*). A full pool makes requests wait; a wait past pool.connection_timeout_ms is a 503.",
        [query_var("instance", "Instance", "keel_db_pool_max_connections"),
         query_var("domain", "Domain", "keel_db_pool_max_connections")],
    )
    b.row("Saturation")
    b.add(timeseries("Pool utilisation", "Connections in use / pool maximum, per domain and pool, summed "
                     "over the selected processes.", "percentunit",
                     (f'sum by (domain, pool) (keel_db_pool_connections{{{sel}, state="in_use"}}) / '
                      f"sum by (domain, pool) (keel_db_pool_max_connections{{{sel}}})", "{{domain}} {{pool}}"),
                     max_value=1), 12, 8)
    b.add(timeseries("Busiest process", "The highest utilisation of any single process's pool: one process "
                     "can be saturated while the sum looks fine.", "percentunit",
                     (f'max by (domain, pool) (keel_db_pool_connections{{{sel}, state="in_use"}} / ignoring (state) '
                      f"keel_db_pool_max_connections{{{sel}}})", "{{domain}} {{pool}}"), max_value=1), 12, 8)
    b.add(timeseries("Connections by state", "Open connections per process, pool and state.", "short",
                     (f"sum by (instance, domain, pool, state) (keel_db_pool_connections{{{sel}}})",
                      "{{instance}} {{domain}} {{pool}} {{state}}"), stack=True), 12, 8)
    b.add(stat("Connections allowed to PostgreSQL", "Sum of the pool maxima over every process: keep it "
               "below the server's max_connections (docs/SCALING.md).", "short",
               f"sum(keel_db_pool_max_connections{{{sel}}})"), 12, 8)
    b.row("Waits and outages")
    b.add(timeseries("Waits/s", "Checkouts that had to wait for a free connection.", "ops",
                     (f"sum by (domain, pool) (rate(keel_db_pool_waits_total{{{sel}}}[$__rate_interval]))",
                      "{{domain}} {{pool}}")), 8, 8)
    b.add(timeseries("Wait duration p95", "95th percentile of the time spent waiting for a connection.", "s",
                     (quantile("0.95", "keel_db_pool_wait_duration_seconds", "domain, pool", sel),
                      "{{domain}} {{pool}}")), 8, 8)
    b.add(timeseries("Database unavailable/s", "Requests that found their database unreachable (503).", "ops",
                     (f"sum by (domain) (rate(keel_db_unavailable_total{{{sel}}}[$__rate_interval]))", "{{domain}}")),
          8, 8)
    return b


def cache_board():
    sel = 'instance=~"$instance", cache=~"$cache"'
    b = Board(
        "keel-cache",
        "Keel / Cache",
        "Two-layer cache (l1 in process, l2 Redis) per cache name (keel_cache_*).",
        [query_var("instance", "Instance", "keel_cache_requests_total"),
         query_var("cache", "Cache", "keel_cache_requests_total")],
    )
    b.row("Hit ratio")
    b.add(timeseries("Hit ratio by layer", "Hits / lookups per cache and layer.", "percentunit",
                     (f'sum by (cache, layer) (rate(keel_cache_requests_total{{{sel}, result="hit"}}[$__rate_interval])) / '
                      f"sum by (cache, layer) (rate(keel_cache_requests_total{{{sel}}}[$__rate_interval]))",
                      "{{cache}} {{layer}}"), max_value=1), 12, 8)
    b.add(timeseries("Served without a load", "1 - loads / l1 lookups: the share of lookups that neither layer "
                     "had to load from the source.", "percentunit",
                     (f"1 - sum by (cache) (rate(keel_cache_loads_total{{{sel}}}[$__rate_interval])) / "
                      f'sum by (cache) (rate(keel_cache_requests_total{{{sel}, layer="l1"}}[$__rate_interval]))',
                      "{{cache}}"), max_value=1), 12, 8)
    b.row("Traffic")
    b.add(timeseries("Lookups/s", "Lookups per second by cache, layer and result.", "ops",
                     (f"sum by (cache, layer, result) (rate(keel_cache_requests_total{{{sel}}}[$__rate_interval]))",
                      "{{cache}} {{layer}} {{result}}")), 8, 8)
    b.add(timeseries("Loads/s", "Loads from the source of truth (single-flight: one per key and miss burst).",
                     "ops", (f"sum by (cache) (rate(keel_cache_loads_total{{{sel}}}[$__rate_interval]))", "{{cache}}")),
          8, 8)
    b.add(timeseries("Invalidations/s", "Invalidations sent by writes.", "ops",
                     (f"sum by (cache) (rate(keel_cache_invalidations_total{{{sel}}}[$__rate_interval]))",
                      "{{cache}}")), 8, 8)
    return b


def ratelimit_board():
    sel = 'instance=~"$instance", class=~"$class"'
    b = Board(
        "keel-ratelimits",
        "Keel / Rate limits",
        "Rate-limit decisions per route class (keel_ratelimit_*) and the Redis fallback. While the "
        "fallback is active each process limits on its own.",
        [query_var("instance", "Instance", "keel_build_info"),
         query_var("class", "Class", "keel_ratelimit_decisions_total")],
    )
    b.row("Redis")
    b.add(stat("Processes on the fallback limiter", "Processes whose limiter decides in process because "
               "Redis is unreachable.", "short",
               'sum(keel_ratelimit_fallback_active{instance=~"$instance"})', [(1, "red")]), 8, 6)
    b.add(timeseries("Fallback active", "1 while the process's in-process limiter decides.", "short",
                     ('max by (instance) (keel_ratelimit_fallback_active{instance=~"$instance"})', "{{instance}}"),
                     max_value=1), 8, 6)
    b.add(timeseries("Redis up", "1 while the process reaches Redis.", "short",
                     ('min by (instance) (keel_redis_up{instance=~"$instance"})', "{{instance}}"), max_value=1), 8, 6)
    b.row("Decisions")
    b.add(timeseries("Decisions/s", "Allowed and rejected decisions per class.", "ops",
                     (f"sum by (class, result) (rate(keel_ratelimit_decisions_total{{{sel}}}[$__rate_interval]))",
                      "{{class}} {{result}}")), 12, 8)
    b.add(timeseries("Rejected ratio", "Rejected / all decisions per class (answered 429).", "percentunit",
                     (f'sum by (class) (rate(keel_ratelimit_decisions_total{{{sel}, result="rejected"}}[$__rate_interval])) / '
                      f"sum by (class) (rate(keel_ratelimit_decisions_total{{{sel}}}[$__rate_interval]))", "{{class}}"),
                     max_value=1), 12, 8)
    return b


def jobs_board():
    sel = 'domain=~"$domain", queue=~"$queue"'
    b = Board(
        "keel-jobs",
        "Keel / Jobs",
        "Durable job queues per domain and queue (keel_jobs_*). Queue depth and age describe the "
        "table that every process reads, so they are combined with max, not sum.",
        [query_var("domain", "Domain", "keel_jobs_queue_depth"),
         query_var("queue", "Queue", "keel_jobs_queue_depth")],
    )
    b.row("Backlog")
    b.add(timeseries("Queue depth by state", "Jobs per state (ready, scheduled, running, failed, discarded).",
                     "short", (f"max by (domain, queue, state) (keel_jobs_queue_depth{{{sel}}})",
                               "{{domain}}/{{queue}} {{state}}")), 12, 8)
    b.add(timeseries("Oldest ready job", "Age of the oldest job that is ready and not yet picked up "
                     "(the worker autoscaler's second signal; alert at 5 min).", "s",
                     (f"max by (domain, queue) (keel_jobs_oldest_ready_age_seconds{{{sel}}})", "{{domain}}/{{queue}}")),
          12, 8)
    b.row("Throughput")
    b.add(timeseries("Processed/s by outcome", "Completed, retried and discarded runs per second.", "ops",
                     (f"sum by (domain, queue, outcome) (rate(keel_jobs_processed_total{{{sel}}}[$__rate_interval]))",
                      "{{domain}}/{{queue}} {{outcome}}"), stack=True), 12, 8)
    b.add(timeseries("Failed and discarded jobs", "Jobs waiting for a retry (failed) and jobs out of "
                     "attempts (discarded, need a person).", "short",
                     (f'max by (domain, queue, state) (keel_jobs_queue_depth{{{sel}, state=~"failed|discarded"}})',
                      "{{domain}}/{{queue}} {{state}}")), 12, 8)
    b.row("Latency")
    b.add(timeseries("Pickup latency", "From run_at (or enqueue) to the start of the run.", "s",
                     (quantile("0.5", "keel_jobs_pickup_latency_seconds", "domain, queue", sel),
                      "p50 {{domain}}/{{queue}}"),
                     (quantile("0.99", "keel_jobs_pickup_latency_seconds", "domain, queue", sel),
                      "p99 {{domain}}/{{queue}}")), 12, 8)
    b.add(timeseries("Run duration", "Handler run time.", "s",
                     (quantile("0.5", "keel_jobs_run_duration_seconds", "domain, queue", sel),
                      "p50 {{domain}}/{{queue}}"),
                     (quantile("0.95", "keel_jobs_run_duration_seconds", "domain, queue", sel),
                      "p95 {{domain}}/{{queue}}")), 12, 8)
    return b


def inference_board():
    sel = 'instance=~"$instance", model=~"$model"'
    b = Board(
        "keel-inference",
        "Keel / Inference",
        "Model calls per public model and deployment (keel_inference_*): traffic, tokens and cost, "
        "time to first token, the gateway's own overhead, upstream errors, retries and circuits.",
        [query_var("instance", "Instance", "keel_build_info"),
         query_var("model", "Model", "keel_inference_requests_total")],
    )
    b.row("Traffic")
    b.add(timeseries("Calls/s by outcome", "Model calls answered per second, by model and outcome.", "ops",
                     (f"sum by (model, outcome) (rate(keel_inference_requests_total{{{sel}}}[$__rate_interval]))",
                      "{{model}} {{outcome}}"), stack=True), 8, 8)
    b.add(timeseries("Tokens/s", "Tokens billed per second, input and output.", "short",
                     (f"sum by (model, direction) (rate(keel_inference_tokens_total{{{sel}}}[$__rate_interval]))",
                      "{{model}} {{direction}}")), 8, 8)
    b.add(timeseries("Cost per hour", "Cost billed, in the billing currency (nano-units / 1e9).", "short",
                     (f"sum by (model) (rate(keel_inference_cost_nanos_total{{{sel}}}[$__rate_interval])) * 3600 / 1e9",
                      "{{model}}")), 8, 8)
    b.row("Latency")
    b.add(timeseries("Time to first token", "From the request to the provider's first token.", "s",
                     (quantile("0.5", "keel_inference_time_to_first_token_seconds", "model", sel), "p50 {{model}}"),
                     (quantile("0.95", "keel_inference_time_to_first_token_seconds", "model", sel), "p95 {{model}}")),
          8, 8)
    b.add(timeseries("Call duration", "From the request to the end of the provider's answer.", "s",
                     (quantile("0.5", "keel_inference_request_duration_seconds", "model", sel), "p50 {{model}}"),
                     (quantile("0.95", "keel_inference_request_duration_seconds", "model", sel), "p95 {{model}}")),
          8, 8)
    b.add(timeseries("Gateway overhead", "The gateway's own time per call (the whole call minus the wait "
                     "for the provider), by route.", "s",
                     (quantile("0.5", "keel_inference_overhead_seconds", "route", 'instance=~"$instance"'),
                      "p50 {{route}}"),
                     (quantile("0.99", "keel_inference_overhead_seconds", "route", 'instance=~"$instance"'),
                      "p99 {{route}}")), 8, 8)
    b.row("Upstreams")
    b.add(timeseries("Upstream errors/s by kind", "Failed provider attempts per deployment and kind.", "ops",
                     (f"sum by (deployment, kind) (rate(keel_inference_upstream_errors_total{{{sel}}}[$__rate_interval]))",
                      "{{deployment}} {{kind}}"), stack=True), 8, 8)
    b.add(timeseries("Retries/s", "Provider attempts after the first, per deployment.", "ops",
                     (f"sum by (deployment) (rate(keel_inference_retries_total{{{sel}}}[$__rate_interval]))",
                      "{{deployment}}")), 8, 8)
    b.add(timeseries("Circuit state", "0 closed, 1 open, 2 half-open (max over processes).", "short",
                     (f"max by (deployment) (keel_inference_circuit_state{{{sel}}})", "{{deployment}}"),
                     max_value=2), 8, 8)
    b.row("Capacity and cache")
    b.add(timeseries("Bulkhead slots in use", "Calls holding a slot of each deployment's bulkhead, as a share of "
                     "its max_concurrency (max over processes).", "percentunit",
                     (f"max by (deployment) (keel_inference_bulkhead_in_flight{{{sel}}} / "
                      f"keel_inference_bulkhead_capacity{{{sel}}})", "{{deployment}}"),
                     max_value=1), 8, 8)
    b.add(timeseries("Refused/s by reason", "Calls refused before any provider attempt: organization_concurrency "
                     "(429) or overloaded (every bulkhead full or circuit open; 503).", "ops",
                     (f"sum by (model, reason) (rate(keel_inference_refused_total{{{sel}}}[$__rate_interval]))",
                      "{{model}} {{reason}}"), stack=True), 8, 8)
    b.add(timeseries("Response cache hit ratio", "Hits over lookups of cacheable chat calls, per model.",
                     "percentunit",
                     (f'sum by (model) (rate(keel_inference_cache_lookups_total{{{sel}, result="hit"}}[$__rate_interval])) / '
                      f"sum by (model) (rate(keel_inference_cache_lookups_total{{{sel}}}[$__rate_interval]))",
                      "{{model}}"), max_value=1), 8, 8)
    return b


def billing_board():
    sel = 'instance=~"$instance"'
    rate = "[$__rate_interval]"
    b = Board(
        "keel-billing",
        "Keel / Billing",
        "The metering path (keel_billing_*): reserve, settle and release decisions, leased (in memory, "
        "in the caller's process) or direct (one transaction in the billing service); refusals; the "
        "leases, their slices and group commits; what a kill -9 would lose; the sweeper and invoices. "
        "Billing's jobs show on the Jobs board, its pool on the Database board.",
        [query_var("instance", "Instance", "keel_build_info")],
    )
    b.row("Decisions")
    b.add(timeseries("Decisions/s by path", "Reserve, settle and release per second, leased (against a lease, "
                     "no transaction) or direct (a transaction each).", "ops",
                     (f"sum by (op, path) (rate(keel_billing_decisions_total{{{sel}}}{rate}))", "{{op}} {{path}}"),
                     stack=True), 8, 8)
    b.add(timeseries("Direct share of reservations", "Reservations on the direct path over all reservations. "
                     "High while leases are refused (credit or a budget nearly spent) or turned off.",
                     "percentunit",
                     (f'sum(rate(keel_billing_decisions_total{{{sel}, op="reserve", path="direct"}}{rate})) / '
                      f'sum(rate(keel_billing_decisions_total{{{sel}, op="reserve"}}{rate}))', "direct"),
                     max_value=1), 8, 8)
    b.add(timeseries("Refusals and errors/s", "Reservations refused for budget, by the limit that refused them; "
                     "decisions that failed.", "ops",
                     (f"sum by (limit) (rate(keel_billing_budget_exceeded_total{{{sel}}}{rate}))",
                      "budget_exceeded {{limit}}"),
                     (f'sum by (op, path) (rate(keel_billing_decisions_total{{{sel}, outcome="error"}}{rate}))',
                      "error {{op}} {{path}}")), 8, 8)
    b.row("Leases")
    b.add(timeseries("Leases held", "Leases each process holds (one per organization and API key in use).",
                     "short", (f"sum by (instance) (keel_billing_leases{{{sel}}})", "{{instance}}")), 8, 8)
    b.add(timeseries("Credit held by leases", "Credit the processes' leases hold, in the billing currency "
                     "(nano-units / 1e9): returned when a lease goes idle, at a graceful stop, or by the "
                     "sweeper after its TTL when the process died.", "short",
                     (f"sum by (instance) (keel_billing_leased_credit_nanos{{{sel}}}) / 1e9", "{{instance}}")), 8, 8)
    b.add(timeseries("Lease slices/s", "Lease openings and top-ups, granted, refused (less spendable than "
                     "asked: the organization goes direct) or failed.", "ops",
                     (f"sum by (kind, outcome) (rate(keel_billing_lease_slices_total{{{sel}}}{rate}))",
                      "{{kind}} {{outcome}}"), stack=True), 8, 8)
    b.row("Group commits")
    b.add(timeseries("Commits/s by outcome", "One transaction per lease per flush; failed commits keep their "
                     "records for the next flush.", "ops",
                     (f"sum by (outcome) (rate(keel_billing_lease_commits_total{{{sel}}}{rate}))", "{{outcome}}")),
          6, 8)
    b.add(timeseries("Settlements per commit", "Records written by one commit.", "short",
                     (quantile("0.5", "keel_billing_lease_commit_batch_size", "instance", sel), "p50 {{instance}}"),
                     (quantile("0.99", "keel_billing_lease_commit_batch_size", "instance", sel), "p99 {{instance}}")),
          6, 8)
    b.add(timeseries("Commit duration", "Time to write one commit.", "s",
                     (quantile("0.5", "keel_billing_lease_commit_duration_seconds", "instance", sel),
                      "p50 {{instance}}"),
                     (quantile("0.99", "keel_billing_lease_commit_duration_seconds", "instance", sel),
                      "p99 {{instance}}")), 6, 8)
    b.add(timeseries("Unflushed settlements", "Settlements acknowledged and not yet committed: what a kill -9 "
                     "of that process would not charge. Given up: usage a process could not record at all (not charged).", "short",
                     (f"max by (instance) (keel_billing_settlements_unflushed{{{sel}}})", "{{instance}}"),
                     (f"sum(increase(keel_billing_usage_unrecorded_total{{{sel}}}{rate}))", "given up")), 6, 8)
    b.row("Sweeper and invoices")
    b.add(timeseries("Expired holds/s", "Holds the sweeper released past their TTL: holds of requests that "
                     "never settled, and leases of processes that stopped without returning them.", "ops",
                     (f"sum by (kind) (rate(keel_billing_holds_expired_total{{{sel}}}{rate}))", "{{kind}}")), 12, 8)
    b.add(timeseries("Invoices finalized", "Invoices written by the hourly invoice job (at the start of a "
                     "month).", "short",
                     (f"sum(increase(keel_billing_invoices_finalized_total{{{sel}}}[1h]))", "per hour")), 12, 8)
    return b


BOARDS = [http_board, database_board, cache_board, ratelimit_board, jobs_board, inference_board, billing_board]


def render():
    out = {}
    for make in BOARDS:
        board = make()
        out[f"{board.uid}.json"] = json.dumps(board.json(), indent=2, sort_keys=False) + "\n"
    return out


def main(argv):
    check = "--check" in argv
    stale = []
    for name, text in render().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("dashboards out of date (run deploy/observability/dashboards/generate.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
