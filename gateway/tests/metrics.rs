//! `/metrics` of the real gateway after traffic: route templates, statuses, the auth domain's
//! pool, the build, and billing's families at 0.

// The helpers below are test code too (clippy only exempts `#[test]` functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use gateway::{GatewayConfig, start};

/// Parses the Prometheus text with a grammar-based parser; returns the value of one series (a
/// histogram's count).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use openmetrics_parser::PrometheusValue;
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("invalid Prometheus text: {e:?}\n{text}"));
    let family = exposition.families.get(name)?;
    family.iter_samples().find_map(|sample| {
        let set = sample.get_labelset().unwrap();
        if !labels.iter().all(|(k, v)| set.get_label_value(k) == Some(*v)) {
            return None;
        }
        match &sample.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => Some(n.as_f64()),
            PrometheusValue::Counter(c) => Some(c.value.as_f64()),
            PrometheusValue::Histogram(h) => h.count.map(|c| c as f64),
            PrometheusValue::Summary(_) => None,
        }
    })
}

#[tokio::test]
async fn the_gateway_serves_metrics_for_its_routes_pools_and_build() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = GatewayConfig::default();
    config.http.addr = "127.0.0.1:0".into();
    config.database.url = format!("sqlite://{}", dir.path().display()).into();
    let gateway = start(config, None).await.unwrap();
    let http = reqwest::Client::new();

    for _ in 0..3 {
        assert_eq!(http.get(format!("{}/healthz", gateway.url())).send().await.unwrap().status(), 200);
    }
    let me = http.get(format!("{}/v1/auth/me", gateway.url())).bearer_auth("sk-nope").send().await.unwrap();
    assert_eq!(me.status(), 401);
    assert_eq!(http.get(format!("{}/no/such/route", gateway.url())).send().await.unwrap().status(), 404);

    let response = http.get(format!("{}/metrics", gateway.url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let text = response.text().await.unwrap();

    let requests = |route, status| {
        value(&text, "keel_http_requests_total", &[("method", "GET"), ("route", route), ("status", status)])
    };
    assert_eq!(requests("/healthz", "200"), Some(3.0), "{text}");
    assert_eq!(requests("/v1/auth/me", "401"), Some(1.0), "{text}");
    assert_eq!(requests("unmatched", "404"), Some(1.0), "{text}");
    let build = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value(&text, "keel_build_info", &build), Some(1.0), "{text}");
    let commit = text.lines().find(|l| l.starts_with("keel_build_info{")).unwrap();
    assert!(!commit.contains(r#"commit="""#), "{commit}");
    // The auth domain's pool is sampled at scrape time and its checkouts counted.
    let pool = [("domain", "auth"), ("pool", "primary")];
    assert!(value(&text, "keel_db_pool_max_connections", &pool).unwrap() >= 1.0, "{text}");
    let idle = value(&text, "keel_db_pool_connections", &[("domain", "auth"), ("pool", "primary"), ("state", "idle")]);
    assert!(idle.is_some(), "{text}");
    assert!(value(&text, "keel_db_pool_wait_duration_seconds", &pool).unwrap() >= 1.0, "{text}");

    // Billing's families exist from the start, at 0 (this traffic reserves nothing): dashboards
    // and alerts see a rate of 0, not an absent series. billing/tests/lease.rs sees them move.
    for (op, path, outcome) in
        [("reserve", "leased", "ok"), ("reserve", "direct", "budget_exceeded"), ("settle", "direct", "error")]
    {
        let labels = [("op", op), ("path", path), ("outcome", outcome)];
        assert_eq!(value(&text, "keel_billing_decisions_total", &labels), Some(0.0), "{labels:?} in {text}");
    }
    for (name, labels) in [
        ("keel_billing_budget_exceeded_total", &[("limit", "credit")][..]),
        ("keel_billing_lease_slices_total", &[("kind", "topup"), ("outcome", "refused")]),
        ("keel_billing_lease_commits_total", &[("outcome", "error")]),
        ("keel_billing_lease_commit_batch_size", &[]),
        ("keel_billing_lease_commit_duration_seconds", &[]),
        ("keel_billing_settlements_unflushed", &[]),
        ("keel_billing_leases", &[]),
        ("keel_billing_leased_credit_nanos", &[]),
        ("keel_billing_usage_unrecorded_total", &[]),
        ("keel_billing_holds_expired_total", &[("kind", "lease")]),
        ("keel_billing_invoices_finalized_total", &[]),
    ] {
        assert_eq!(value(&text, name, labels), Some(0.0), "{name} {labels:?} in {text}");
    }

    gateway.stop(true).await.unwrap();
}
