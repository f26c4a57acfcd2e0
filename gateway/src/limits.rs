//! Request rate limits in front of every domain's routes (`[rate_limits]`).
//!
//! Each request to a domain's route falls in a route class, the name of that domain (a class
//! without a quota of its own takes `default`'s), and belongs to a subject: the API key of its bearer token, else the
//! user of its session, else its client address. The platform limiter (GCRA, in-process or on
//! Redis) decides with the class's quota for the subject; no quota, no limit. A refused request
//! gets `429 rate_limited` in the envelope with `Retry-After`; every limited answer carries the
//! `RateLimit-Policy` and `RateLimit` headers (draft-ietf-httpapi-ratelimit-headers).
//!
//! The platform's own routes (`/healthz`, `/readyz`, `/metrics`, `/openapi.json`) are never
//! limited: probes and scrapes must not fail because a quota ran out.
//!
//! Resolving the subject authenticates the bearer token through `AuthApi` (from the credential
//! cache); the principal is left in the request for `auth::web::Caller`, so a request is
//! authenticated once.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};
use auth::{AuthApi, Principal, PrincipalKind};
use shared::ErrorKind;
use shared::http::{ClientIp, bearer_token, envelope_response};
use shared::metrics::Metrics;
use shared::ratelimit::{RateKey, RateLimitConfig, RateLimiter, Subject, insert_rate_limit_headers};
use std::collections::HashMap;
use std::sync::Arc;

/// The limiter, the quotas, and which route template belongs to which class.
#[derive(Clone)]
pub struct RateLimits {
    pub limiter: Arc<dyn RateLimiter>,
    pub config: RateLimitConfig,
    /// Route template (`/v1/organizations/{org_id}/members`) → class (its domain).
    pub classes: HashMap<String, &'static str>,
    pub metrics: Metrics,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RateLimits {
    /// Whether any quota is configured at all; without one the middleware does nothing.
    pub fn active(&self) -> bool {
        self.config.enabled && (!self.config.classes.is_empty() || !self.config.overrides.is_empty())
    }
}

/// The middleware: `App::wrap(from_fn(rate_limit))`, with `web::Data<RateLimits>` registered.
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let limits = req.app_data::<web::Data<RateLimits>>().cloned().filter(|l| l.active());
    let Some(limits) = limits else { return next.call(req).await.map(ServiceResponse::map_into_boxed_body) };
    let Some(class) = shared::http::route_template(&req).and_then(|route| limits.classes.get(&*route).copied()) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let subject = subject(&req).await;
    let key = RateKey::new(class, subject);
    let Some(quota) = limits.config.quota_for(&key) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let decision = limits.limiter.check(&key, quota, 1).await;
    limits.metrics.ratelimit().class(class).record(decision.allowed);
    if !decision.allowed {
        let mut response = envelope_response(
            ErrorKind::RateLimited,
            "rate_limited",
            "Too many requests; retry after the time in Retry-After.",
            None,
        );
        insert_rate_limit_headers(response.headers_mut(), class, quota, &decision);
        return Ok(req.into_response(response).map_into_boxed_body());
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    insert_rate_limit_headers(response.headers_mut(), class, quota, &decision);
    Ok(response)
}

/// Who the request counts against: its API key, its user, else its client address. A token
/// that does not authenticate counts as the address (the route answers 401 anyway).
async fn subject(req: &ServiceRequest) -> Subject {
    let auth = req.app_data::<web::Data<dyn AuthApi>>().cloned();
    if let (Some(auth), Some(token)) = (auth, bearer_token(req.request()))
        && let Ok(principal) = auth.authenticate(&token).await
    {
        let subject = match (&principal.kind, principal.api_key_id, principal.user_id) {
            (PrincipalKind::ApiKey, Some(key), _) => Some(Subject::ApiKey(key.to_string())),
            (PrincipalKind::Session, _, Some(user)) => Some(Subject::User(user.to_string())),
            _ => None,
        };
        req.extensions_mut().insert::<Principal>(principal);
        if let Some(subject) = subject {
            return subject;
        }
    }
    let ip = <ClientIp as actix_web::FromRequest>::extract(req.request()).await.ok().and_then(|ip| ip.0);
    Subject::ClientIp(ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
}
