//! The OpenAPI 3.1 document of a gateway: its own routes merged with each served domain's, and
//! the error responses every operation can get, added from one place (`shared::openapi`).

use shared::module::Module;
use shared::scope::Scopes;
use std::sync::Arc;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel",
        description = "Keel: an open-source backend for AI products. Errors use one envelope: \
                       `{\"error\": {\"message\", \"type\", \"code\", \"param\"}}`."
    ),
    paths(crate::app::healthz, crate::app::readyz, crate::app::openapi_json),
    components(schemas(crate::app::HealthResponse)),
    tags((name = "health", description = "Liveness, readiness and this document."))
)]
struct GatewayDoc;

/// The document covering the gateway's routes and those of `served`.
pub fn document(served: &[&Arc<dyn Module>], scopes: &Scopes) -> utoipa::openapi::OpenApi {
    let mut document = GatewayDoc::openapi();
    for module in served {
        document.merge(module.openapi());
    }
    shared::openapi::platform_errors(&mut document, scopes);
    document
}
