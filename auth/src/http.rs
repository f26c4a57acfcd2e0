//! The auth domain's HTTP routes, over `web::Data<dyn AuthApi>`: the same handlers serve the
//! in-process service and, in a gateway that forwards, the remote client.

use crate::api::*;
use crate::error::AuthError;
use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use futures_util::future::LocalBoxFuture;
use shared::http::{ApiError, ClientIp, bearer_token};
use shared::{ErrorEnvelope, ErrorKind, Page, PageRequest};
use utoipa::OpenApi;

impl ApiError for AuthError {
    fn kind(&self) -> ErrorKind {
        AuthError::kind(self)
    }

    fn code(&self) -> &'static str {
        AuthError::code(self)
    }

    fn param(&self) -> Option<String> {
        AuthError::param(self).map(str::to_owned)
    }

    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = shared::http::error_response(self);
        if matches!(self, Self::Unauthenticated) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The authenticated caller of a request, from its `Authorization: Bearer` header.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = AuthError;
    type Future = LocalBoxFuture<'static, Result<Self, AuthError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let api = req.app_data::<web::Data<dyn AuthApi>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let api = api.ok_or_else(|| AuthError::Internal("AuthApi is not registered as app data".into()))?;
            let token = token.ok_or(AuthError::Unauthenticated)?;
            api.authenticate(&token).await.map(Caller)
        })
    }
}

type Api = web::Data<dyn AuthApi>;

fn context(ip: ClientIp) -> RequestContext {
    RequestContext { client_ip: ip.0 }
}

/// Registers every auth route. Expects `web::Data<dyn AuthApi>` in the app data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/auth/signup", web::post().to(signup))
        .route("/v1/auth/login", web::post().to(login))
        .route("/v1/auth/logout", web::post().to(logout))
        .route("/v1/auth/password", web::post().to(change_password))
        .route("/v1/auth/me", web::get().to(me))
        .route("/v1/auth/principal", web::get().to(principal))
        .route("/v1/organizations", web::post().to(create_organization))
        .route("/v1/organizations", web::get().to(list_organizations))
        .route("/v1/organizations/{org_id}/members", web::get().to(list_members))
        .route("/v1/organizations/{org_id}/members", web::post().to(add_member))
        .route("/v1/organizations/{org_id}/members/{user_id}", web::patch().to(update_member))
        .route("/v1/organizations/{org_id}/members/{user_id}", web::delete().to(remove_member))
        .route("/v1/organizations/{org_id}/api-keys", web::post().to(create_api_key))
        .route("/v1/organizations/{org_id}/api-keys", web::get().to(list_api_keys))
        .route("/v1/organizations/{org_id}/api-keys/{key_id}", web::delete().to(revoke_api_key));
}

/// The OpenAPI description of the auth routes.
#[derive(OpenApi)]
#[openapi(
    paths(
        signup, login, logout, change_password, me, principal, create_organization, list_organizations,
        list_members, add_member, update_member, remove_member, create_api_key, list_api_keys, revoke_api_key
    ),
    components(schemas(
        ErrorEnvelope, SignupRequest, SignupResponse, LoginRequest, LoginResponse, ChangePasswordRequest,
        MeResponse, Principal, User, Organization, Membership, Member, Role, Scope, KeyIdentity,
        CreateOrganizationRequest, AddMemberRequest, UpdateMemberRequest, CreateApiKeyRequest, CreatedApiKey, ApiKey,
        Page<Membership>, Page<Member>, Page<ApiKey>
    )),
    modifiers(&BearerAuth),
    tags((name = "auth", description = "Accounts and sessions"), (name = "organizations", description = "Organizations, members and API keys"))
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token (`keel_st_…`) or an API key (`keel_sk_…`)"))
                    .build(),
            ),
        );
    }
}

/// Create an account and its personal organization.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest, responses(
    (status = 201, body = SignupResponse),
    (status = 409, description = "`email_taken`", body = ErrorEnvelope),
    (status = 422, description = "`validation_failed`, `invalid_body`", body = ErrorEnvelope),
))]
async fn signup(api: Api, ip: ClientIp, body: web::Json<SignupRequest>) -> Result<HttpResponse, AuthError> {
    let response = api.signup(body.into_inner(), context(ip)).await?;
    Ok(HttpResponse::Created().json(response))
}

/// Open a session.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, body = LoginResponse),
    (status = 401, description = "`invalid_credentials`", body = ErrorEnvelope),
    (status = 429, description = "`too_many_attempts`, with `Retry-After`", body = ErrorEnvelope),
))]
async fn login(api: Api, ip: ClientIp, body: web::Json<LoginRequest>) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.login(body.into_inner(), context(ip)).await?))
}

/// Revoke the session used for this request.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204),
    (status = 401, body = ErrorEnvelope),
    (status = 403, description = "`session_required`", body = ErrorEnvelope),
))]
async fn logout(api: Api, caller: Caller) -> Result<HttpResponse, AuthError> {
    api.logout(&caller.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the password; every other session of the user is revoked.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest, responses(
    (status = 204),
    (status = 403, description = "`incorrect_password`, `session_required`", body = ErrorEnvelope),
    (status = 422, description = "`validation_failed`", body = ErrorEnvelope),
    (status = 429, description = "`too_many_attempts`", body = ErrorEnvelope),
))]
async fn change_password(
    api: Api,
    caller: Caller,
    ip: ClientIp,
    body: web::Json<ChangePasswordRequest>,
) -> Result<HttpResponse, AuthError> {
    api.change_password(&caller.0, body.into_inner(), context(ip)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller: a user and their organizations, or an API key and its organization.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = MeResponse),
    (status = 401, body = ErrorEnvelope),
))]
async fn me(api: Api, caller: Caller) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.me(&caller.0).await?))
}

/// The caller as the other services see it (used by remote clients of the auth service).
#[utoipa::path(get, path = "/v1/auth/principal", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, body = Principal),
    (status = 401, body = ErrorEnvelope),
))]
async fn principal(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(caller.0)
}

/// Create an organization owned by the caller.
#[utoipa::path(post, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), request_body = CreateOrganizationRequest, responses(
    (status = 201, body = Organization),
    (status = 403, description = "`session_required`", body = ErrorEnvelope),
    (status = 422, body = ErrorEnvelope),
))]
async fn create_organization(
    api: Api,
    caller: Caller,
    body: web::Json<CreateOrganizationRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.create_organization(&caller.0, body.into_inner()).await?))
}

/// The caller's organizations.
#[utoipa::path(get, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), params(PageRequest), responses(
    (status = 200, body = Page<Membership>),
))]
async fn list_organizations(
    api: Api,
    caller: Caller,
    page: web::Query<PageRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_organizations(&caller.0, page.into_inner()).await?))
}

/// Members of an organization the caller belongs to.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/members", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest), responses(
    (status = 200, body = Page<Member>),
    (status = 404, description = "`organization_not_found`", body = ErrorEnvelope),
))]
async fn list_members(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: web::Query<PageRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_members(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// Add an existing account to the organization (owners and admins).
#[utoipa::path(post, path = "/v1/organizations/{org_id}/members", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), request_body = AddMemberRequest, responses(
    (status = 201, body = Member),
    (status = 403, description = "`permission_denied`, `insufficient_scope`", body = ErrorEnvelope),
    (status = 404, description = "`organization_not_found`, `user_not_found`", body = ErrorEnvelope),
    (status = 409, description = "`already_member`", body = ErrorEnvelope),
))]
async fn add_member(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: web::Json<AddMemberRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.add_member(&caller.0, path.into_inner(), body.into_inner()).await?))
}

/// Change a member's role (owners and admins; only owners touch `owner`).
#[utoipa::path(patch, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("user_id" = UserId, Path)), request_body = UpdateMemberRequest, responses(
    (status = 200, body = Member),
    (status = 403, body = ErrorEnvelope),
    (status = 404, description = "`organization_not_found`, `member_not_found`", body = ErrorEnvelope),
    (status = 409, description = "`last_owner`", body = ErrorEnvelope),
))]
async fn update_member(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, UserId)>,
    body: web::Json<UpdateMemberRequest>,
) -> Result<HttpResponse, AuthError> {
    let (org, user) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.update_member(&caller.0, org, user, body.into_inner()).await?))
}

/// Remove a member (or leave, for oneself).
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("user_id" = UserId, Path)), responses(
    (status = 204),
    (status = 403, body = ErrorEnvelope),
    (status = 404, body = ErrorEnvelope),
    (status = 409, description = "`last_owner`", body = ErrorEnvelope),
))]
async fn remove_member(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, UserId)>,
) -> Result<HttpResponse, AuthError> {
    let (org, user) = path.into_inner();
    api.remove_member(&caller.0, org, user).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Create an API key; the full key is in this answer only.
#[utoipa::path(post, path = "/v1/organizations/{org_id}/api-keys", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), request_body = CreateApiKeyRequest, responses(
    (status = 201, body = CreatedApiKey),
    (status = 403, body = ErrorEnvelope),
    (status = 404, body = ErrorEnvelope),
    (status = 422, body = ErrorEnvelope),
))]
async fn create_api_key(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: web::Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.create_api_key(&caller.0, path.into_inner(), body.into_inner()).await?))
}

/// The organization's live API keys, without secrets.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/api-keys", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest), responses(
    (status = 200, body = Page<ApiKey>),
    (status = 403, body = ErrorEnvelope),
    (status = 404, body = ErrorEnvelope),
))]
async fn list_api_keys(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: web::Query<PageRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_api_keys(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// Revoke an API key at once.
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/api-keys/{key_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("key_id" = ApiKeyId, Path)), responses(
    (status = 204),
    (status = 403, body = ErrorEnvelope),
    (status = 404, description = "`organization_not_found`, `api_key_not_found`", body = ErrorEnvelope),
))]
async fn revoke_api_key(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, ApiKeyId)>,
) -> Result<HttpResponse, AuthError> {
    let (org, key) = path.into_inner();
    api.revoke_api_key(&caller.0, org, key).await?;
    Ok(HttpResponse::NoContent().finish())
}
