//! The actix application: app data, the gateway's own routes (`/healthz`, `/readyz`,
//! `/openapi.json`), each served domain's routes, request ids, and the 404 fallback.

use crate::compose::Built;
use crate::error::GatewayError;
use crate::limits::{RateLimits, rate_limit};
use crate::middleware::request_id;
use crate::openapi;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse};
use serde::{Deserialize, Serialize};
use shared::config::HttpConfig;
use shared::http::{BodyLimit, Resource, TrustedProxies, envelope_response, not_found, path_config};
use shared::module::Component;
use shared::scope::Scopes;
use shared::{ErrorEnvelope, ErrorKind};
use std::sync::Arc;
use utoipa::ToSchema;

/// Everything the application factory needs; cloned into each worker.
#[derive(Debug, Clone)]
pub struct AppState {
    built: Vec<Built>,
    /// The domains whose routes are served.
    served: Vec<&'static str>,
    trusted_proxies: TrustedProxies,
    body_limit: BodyLimit,
    openapi_json: Bytes,
    /// `/readyz` reports every built domain, not only the served ones (worker processes).
    ready_all: bool,
    metrics: shared::metrics::Metrics,
    rate_limits: Option<Arc<RateLimits>>,
}

impl AppState {
    /// `served` names the domains whose routes are served (see [`select`]).
    pub fn new(built: Vec<Built>, served: Vec<&'static str>, http: &HttpConfig) -> Result<Self, GatewayError> {
        let scopes = Scopes::new(built.iter().flat_map(|b| b.module.scopes().iter().copied()).collect());
        let modules: Vec<_> = built.iter().filter(|b| served.contains(&b.module.name())).map(|b| &b.module).collect();
        let document = openapi::document(&modules, &scopes);
        let openapi_json = document.to_json().map_err(|e| GatewayError::OpenApi(e.to_string()))?;
        Ok(Self {
            built,
            served,
            trusted_proxies: TrustedProxies(http.trusted_proxies.clone()),
            body_limit: BodyLimit(http.body_limit_bytes),
            openapi_json: Bytes::from(openapi_json),
            ready_all: false,
            metrics: crate::metrics::registry(),
            rate_limits: None,
        })
    }

    /// Applies `limits` to every route; its classes are the served domains' routes.
    pub fn with_rate_limits(mut self, limits: Arc<RateLimits>) -> Self {
        let mut limits = Arc::unwrap_or_clone(limits);
        for built in self.built.iter().filter(|b| self.served.contains(&b.module.name())) {
            for path in built.module.openapi().paths.paths.keys() {
                limits.classes.insert(path.clone(), built.module.name());
            }
        }
        self.rate_limits = Some(Arc::new(limits));
        self
    }

    /// Serves `metrics` (the registry the domains record into) instead of a fresh one.
    pub fn with_metrics(mut self, metrics: shared::metrics::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A worker process's app: no domain routes, and `/readyz` reports every in-process domain.
    pub fn for_workers(built: Vec<Built>, http: &HttpConfig) -> Result<Self, GatewayError> {
        let mut state = Self::new(built, Vec::new(), http)?;
        state.ready_all = true;
        Ok(state)
    }

    pub fn served(&self) -> &[&'static str] {
        &self.served
    }

    fn serves(&self, built: &Built) -> bool {
        self.served.contains(&built.module.name())
    }
}

/// The domains to serve: `only` when given and non-empty, otherwise every registered domain;
/// in registration order, without duplicates.
pub fn select(only: Option<Vec<String>>) -> Result<Vec<&'static str>, GatewayError> {
    let names = crate::config::DOMAIN_NAMES;
    let Some(only) = only.filter(|o| !o.is_empty()) else { return Ok(names.to_vec()) };
    if let Some(unknown) = only.iter().find(|o| !names.contains(&o.as_str())) {
        return Err(GatewayError::UnknownDomain(unknown.clone()));
    }
    Ok(names.iter().copied().filter(|n| only.iter().any(|o| o == n)).collect())
}

/// The served domains whose readiness `/readyz` reports.
struct Readiness(Vec<(&'static str, Arc<dyn Component>)>);

/// The gateway's application, for `HttpServer::new` and for `actix_web::test::init_service`.
pub fn app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let readiness = Readiness(
        state
            .built
            .iter()
            .filter(|b| state.ready_all || state.serves(b))
            .map(|b| (b.module.name(), b.component.clone()))
            .collect(),
    );
    let mut app = App::new()
        .app_data(web::Data::new(state.trusted_proxies.clone()))
        .app_data(web::Data::new(state.body_limit))
        .app_data(web::Data::new(readiness))
        .app_data(web::Data::new(OpenApiJson(state.openapi_json.clone())))
        .app_data(path_config())
        .app_data(shared::http::StaticRoutes::default())
        .configure(|cfg| {
            Resource::new("/healthz").get(healthz).register(cfg);
            Resource::new("/readyz").get(readyz).register(cfg);
            Resource::new("/openapi.json").get(openapi_json).register(cfg);
            Resource::new("/metrics").get(shared::metrics::metrics_endpoint).register(cfg);
        })
        .app_data(web::Data::new(state.metrics.clone()));
    if let Some(limits) = &state.rate_limits {
        app = app.app_data(web::Data::from(limits.clone()));
    }
    // Every domain's contract is app data, served or not: other domains' routes use them.
    for built in &state.built {
        let component = built.component.clone();
        app = app.configure(move |cfg| component.app_data(cfg));
    }
    // actix tries routes in the order they were registered, running a regular expression for
    // each dynamic one it passes. The domains are built in dependency order, so the last one
    // (inference) carries the AI calls, the hot path: its routes go first, and a chat call
    // passes no other domain's routes. Routes of different domains never overlap, so the
    // order changes nothing else.
    for built in state.built.iter().rev().filter(|b| state.serves(b)) {
        let module = built.module.clone();
        app = app.configure(move |cfg| module.routes(cfg));
    }
    app.default_service(web::to(not_found))
        .wrap(from_fn(rate_limit))
        .wrap(state.metrics.http().middleware())
        .wrap(from_fn(request_id))
}

/// The answer of the health routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// Always `ok`.
    pub status: String,
}

impl HealthResponse {
    fn ok() -> Self {
        Self { status: "ok".to_owned() }
    }
}

/// Liveness: the process is up and answering. Checks nothing else.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process is alive.", body = HealthResponse))
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(HealthResponse::ok())
}

/// Readiness: every served domain can serve requests (its database, or its remote service,
/// answers).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready to serve.", body = HealthResponse),
        (status = 503, description = "`not_ready`: a served domain cannot serve requests.", body = ErrorEnvelope),
    )
)]
async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    for (domain, component) in &readiness.0 {
        if let Err(cause) = component.ready().await {
            tracing::warn!(domain, error.cause = %cause, "not ready");
            return envelope_response(
                ErrorKind::Unavailable,
                "not_ready",
                format!("Not ready: the {domain} domain is unavailable."),
                None,
            );
        }
    }
    HttpResponse::Ok().json(HealthResponse::ok())
}

/// The serialized OpenAPI document, built once at start-up.
struct OpenApiJson(Bytes);

/// This OpenAPI 3.1 document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of every route served.", content_type = "application/json", body = Object))
)]
async fn openapi_json(document: web::Data<OpenApiJson>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document.0.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::REQUEST_ID_HEADER;
    use actix_web::test::{TestRequest, call_service, init_service, read_body_json};
    use auth::*;
    use serde_json::{Value, json};
    use shared::module::Contract;
    use shared::{Page, PageRequest, Secret};

    /// An auth domain whose only working method is `ready`.
    struct FakeAuth {
        ready: Result<(), AuthError>,
    }

    fn nope<T>() -> Result<T, AuthError> {
        Err(AuthError::Internal("not part of this fake".into()))
    }

    #[async_trait::async_trait]
    impl AuthApi for FakeAuth {
        async fn signup(&self, _: SignupRequest, _: RequestContext) -> Result<SignupResponse, AuthError> {
            nope()
        }
        async fn login(&self, _: LoginRequest, _: RequestContext) -> Result<LoginResponse, AuthError> {
            nope()
        }
        async fn authenticate(&self, _: &Secret) -> Result<Principal, AuthError> {
            Err(AuthError::Unauthenticated)
        }
        async fn logout(&self, _: &Principal) -> Result<(), AuthError> {
            nope()
        }
        async fn change_password(
            &self,
            _: &Principal,
            _: ChangePasswordRequest,
            _: RequestContext,
        ) -> Result<(), AuthError> {
            nope()
        }
        async fn me(&self, _: &Principal) -> Result<MeResponse, AuthError> {
            nope()
        }
        async fn create_organization(
            &self,
            _: &Principal,
            _: CreateOrganizationRequest,
        ) -> Result<Organization, AuthError> {
            nope()
        }
        async fn list_organizations(&self, _: &Principal, _: PageRequest) -> Result<Page<Membership>, AuthError> {
            nope()
        }
        async fn organization_role(&self, _: &Principal, _: OrganizationId) -> Result<Role, AuthError> {
            nope()
        }
        async fn list_members(
            &self,
            _: &Principal,
            _: OrganizationId,
            _: PageRequest,
        ) -> Result<Page<Member>, AuthError> {
            nope()
        }
        async fn add_member(&self, _: &Principal, _: OrganizationId, _: AddMemberRequest) -> Result<Member, AuthError> {
            nope()
        }
        async fn update_member(
            &self,
            _: &Principal,
            _: OrganizationId,
            _: UserId,
            _: UpdateMemberRequest,
        ) -> Result<Member, AuthError> {
            nope()
        }
        async fn remove_member(&self, _: &Principal, _: OrganizationId, _: UserId) -> Result<(), AuthError> {
            nope()
        }
        async fn create_api_key(
            &self,
            _: &Principal,
            _: OrganizationId,
            _: CreateApiKeyRequest,
        ) -> Result<CreatedApiKey, AuthError> {
            nope()
        }
        async fn list_api_keys(
            &self,
            _: &Principal,
            _: OrganizationId,
            _: PageRequest,
        ) -> Result<Page<ApiKey>, AuthError> {
            nope()
        }
        async fn revoke_api_key(&self, _: &Principal, _: OrganizationId, _: ApiKeyId) -> Result<(), AuthError> {
            nope()
        }
        async fn ready(&self) -> Result<(), AuthError> {
            self.ready.clone()
        }
    }

    fn state(ready: Result<(), AuthError>) -> AppState {
        let api: Arc<dyn AuthApi> = Arc::new(FakeAuth { ready });
        let component = Contract::new(api, |api| Box::pin(async move { api.ready().await.map_err(|e| e.to_string()) }));
        let built = vec![Built { module: Arc::new(AuthModule::default()), component }];
        AppState::new(built, select(None).unwrap(), &HttpConfig::default()).unwrap()
    }

    fn request_id(response: &ServiceResponse<impl MessageBody>) -> String {
        response.headers().get(REQUEST_ID_HEADER).expect("x-request-id").to_str().unwrap().to_owned()
    }

    #[actix_web::test]
    async fn healthz_answers_ok_with_a_generated_request_id() {
        let service = init_service(app(state(Ok(())))).await;
        let response = call_service(&service, TestRequest::get().uri("/healthz").to_request()).await;
        assert_eq!(response.status(), 200);
        let id = request_id(&response);
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7, "{id}");
        let body: Value = read_body_json(response).await;
        assert_eq!(body, json!({"status": "ok"}));
    }

    #[actix_web::test]
    async fn a_sane_request_id_is_echoed_and_an_odd_one_replaced() {
        let service = init_service(app(state(Ok(())))).await;
        let request = TestRequest::get().uri("/healthz").insert_header(("x-request-id", "trace-42")).to_request();
        assert_eq!(request_id(&call_service(&service, request).await), "trace-42");

        let long = "x".repeat(129);
        let request = TestRequest::get().uri("/healthz").insert_header(("x-request-id", long.as_str())).to_request();
        let id = request_id(&call_service(&service, request).await);
        assert_ne!(id, long);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }

    #[actix_web::test]
    async fn an_unknown_route_is_a_404_envelope_with_a_request_id() {
        let service = init_service(app(state(Ok(())))).await;
        let request = TestRequest::post().uri("/v1/nothing/here").insert_header(("x-request-id", "r-1")).to_request();
        let response = call_service(&service, request).await;
        assert_eq!(response.status(), 404);
        assert_eq!(request_id(&response), "r-1");
        let body: Value = read_body_json(response).await;
        assert_eq!(
            body,
            json!({"error": {"message": "No such route.", "type": "not_found_error", "code": "not_found", "param": null}})
        );
    }

    #[actix_web::test]
    async fn readyz_reports_the_served_domains() {
        let service = init_service(app(state(Ok(())))).await;
        let response = call_service(&service, TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(response.status(), 200);
        let body: Value = read_body_json(response).await;
        assert_eq!(body, json!({"status": "ok"}));

        let service = init_service(app(state(Err(AuthError::Unavailable("database down".into()))))).await;
        let response = call_service(&service, TestRequest::get().uri("/readyz").to_request()).await;
        assert_eq!(response.status(), 503);
        let body: Value = read_body_json(response).await;
        assert_eq!(
            body,
            json!({"error": {
                "message": "Not ready: the auth domain is unavailable.",
                "type": "service_unavailable_error",
                "code": "not_ready",
                "param": null
            }}),
            "the cause stays in the log"
        );
    }

    #[actix_web::test]
    async fn auth_routes_are_mounted_and_answer_through_the_contract() {
        let service = init_service(app(state(Ok(())))).await;
        let response = call_service(&service, TestRequest::get().uri("/v1/auth/me").to_request()).await;
        assert_eq!(response.status(), 401);
        let body: Value = read_body_json(response).await;
        assert_eq!(body["error"]["code"], "unauthenticated");
    }

    #[actix_web::test]
    async fn openapi_json_is_3_1_and_covers_the_gateway_and_auth_routes() {
        let service = init_service(app(state(Ok(())))).await;
        let response = call_service(&service, TestRequest::get().uri("/openapi.json").to_request()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers().get("content-type").unwrap(), "application/json");
        let body: Value = read_body_json(response).await;
        assert!(body["openapi"].as_str().unwrap().starts_with("3.1."), "{}", body["openapi"]);
        let paths = body["paths"].as_object().unwrap();
        for path in ["/healthz", "/readyz", "/openapi.json", "/v1/auth/signup", "/v1/organizations/{org_id}/members"] {
            assert!(paths.contains_key(path), "{path} missing from {:?}", paths.keys().collect::<Vec<_>>());
        }
    }
}
