//! The OpenAPI 3.1 document of a gateway: its own routes merged with each served domain's.

use crate::domain::Domain;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel",
        description = "Keel: an open-source backend for AI products. Errors use one envelope: \
                       `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`."
    ),
    paths(crate::app::healthz, crate::app::readyz, crate::app::openapi_json),
    components(schemas(crate::app::HealthResponse, shared::ErrorEnvelope, shared::ErrorBody)),
    tags((name = "health", description = "Liveness, readiness and this document."))
)]
struct GatewayDoc;

/// The document covering the gateway's routes and those of `domains`.
pub fn document(domains: &[Domain]) -> utoipa::openapi::OpenApi {
    let mut document = GatewayDoc::openapi();
    for domain in domains {
        match domain {
            Domain::Auth => document.merge(auth::http::ApiDoc::openapi()),
        }
    }
    document
}
