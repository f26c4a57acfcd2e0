//! The rate-limit response headers, rendered one way for every limited route.
//!
//! Syntax of draft-ietf-httpapi-ratelimit-headers-09 (March 2025): both fields are Structured
//! Field lists of one item, the policy name as an sf-string with parameters:
//! - `RateLimit-Policy: "default";q=600;w=60`: quota `q` units per window `w` seconds;
//! - `RateLimit: "default";r=42;t=5`: `r` units remaining now, `t` seconds until the quota is
//!   fully available again.
//!
//! A refusal (429) also gets `Retry-After` (RFC 9110), in whole seconds, rounded up.

use super::gcra::{Decision, Quota};
use std::time::Duration;

pub const RATELIMIT_POLICY: &str = "ratelimit-policy";
pub const RATELIMIT: &str = "ratelimit";
pub const RETRY_AFTER: &str = "retry-after";

/// Whole seconds, rounded up; at least 1 when the duration is not zero.
fn ceil_secs(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 { secs + 1 } else { secs }
}

/// The policy name as an sf-string: printable ASCII, with `"` and `\` escaped.
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// The headers of an answer that `decision` (under `quota`, whose policy is called `policy`,
/// usually the route class) limited: `RateLimit-Policy` and `RateLimit` always, and
/// `Retry-After` when refused.
pub fn rate_limit_headers(policy: &str, quota: Quota, decision: &Decision) -> Vec<(&'static str, String)> {
    let name = sf_string(policy);
    let mut headers = vec![
        (RATELIMIT_POLICY, format!("{name};q={};w={}", quota.limit, quota.period().as_secs())),
        (RATELIMIT, format!("{name};r={};t={}", decision.remaining, ceil_secs(decision.reset))),
    ];
    if !decision.allowed {
        let retry = decision.retry_after.unwrap_or(quota.period());
        headers.push((RETRY_AFTER, ceil_secs(retry).max(1).to_string()));
    }
    headers
}

/// Adds [`rate_limit_headers`] to an actix response's headers.
pub fn insert_rate_limit_headers(
    map: &mut actix_web::http::header::HeaderMap,
    policy: &str,
    quota: Quota,
    decision: &Decision,
) {
    use actix_web::http::header::{HeaderName, HeaderValue};
    for (name, value) in rate_limit_headers(policy, quota, decision) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_answers_carry_policy_and_state() {
        let quota = Quota::new(600, 60);
        let d = Decision {
            allowed: true,
            limit: 600,
            remaining: 599,
            reset: Duration::from_millis(100),
            retry_after: None,
        };
        assert_eq!(
            rate_limit_headers("default", quota, &d),
            vec![
                ("ratelimit-policy", "\"default\";q=600;w=60".to_owned()),
                ("ratelimit", "\"default\";r=599;t=1".to_owned())
            ]
        );
    }

    #[test]
    fn refusals_add_retry_after_rounded_up() {
        let quota = Quota::new(10, 60);
        let d = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(60_000),
            retry_after: Some(Duration::from_millis(5_001)),
        };
        let headers = rate_limit_headers("auth \"x\"\n", quota, &d);
        assert_eq!(headers[0].1, "\"auth \\\"x\\\"_\";q=10;w=60");
        assert_eq!(headers[1].1, "\"auth \\\"x\\\"_\";r=0;t=60");
        assert_eq!(headers[2], ("retry-after", "6".to_owned()));

        let mut map = actix_web::http::header::HeaderMap::new();
        insert_rate_limit_headers(&mut map, "auth", quota, &d);
        assert_eq!(map.get("retry-after").unwrap(), "6");
        assert_eq!(map.get("ratelimit").unwrap(), "\"auth\";r=0;t=60");
    }
}
