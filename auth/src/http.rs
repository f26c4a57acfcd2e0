//! The auth domain's HTTP routes, over `web::Data<dyn AuthApi>`: the same handlers serve the
//! in-process service and, in a gateway that forwards, the remote client.

use crate::api::*;
use crate::error::AuthError;
pub use crate::web::Caller;
use actix_web::{HttpResponse, web};
use shared::http::{ClientIp, Json, Query, Resource};
use shared::{Page, PageRequest};
use utoipa::OpenApi;

type Api = web::Data<dyn AuthApi>;

fn context(ip: ClientIp) -> RequestContext {
    RequestContext { client_ip: ip.0 }
}

/// Registers every auth route. Expects `web::Data<dyn AuthApi>` in the app data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    Resource::new("/v1/auth/signup").post(signup).register(cfg);
    Resource::new("/v1/auth/login").post(login).register(cfg);
    Resource::new("/v1/auth/logout").post(logout).register(cfg);
    Resource::new("/v1/auth/password").post(change_password).register(cfg);
    Resource::new("/v1/auth/me").get(me).register(cfg);
    Resource::new("/v1/auth/principal").get(principal).register(cfg);
    Resource::new("/v1/organizations").get(list_organizations).post(create_organization).register(cfg);
    Resource::new("/v1/organizations/{org_id}/role").get(organization_role).register(cfg);
    Resource::new("/v1/organizations/{org_id}/members").get(list_members).post(add_member).register(cfg);
    Resource::new("/v1/organizations/{org_id}/members/{user_id}")
        .patch(update_member)
        .delete(remove_member)
        .register(cfg);
    Resource::new("/v1/organizations/{org_id}/api-keys").get(list_api_keys).post(create_api_key).register(cfg);
    Resource::new("/v1/organizations/{org_id}/api-keys/{key_id}").delete(revoke_api_key).register(cfg);
}

/// The codes of `AuthError` each operation can answer with, beyond what the platform adds to
/// every operation of its shape (see `shared::openapi`).
pub const ROUTE_ERRORS: &[(&str, &[&str])] = &[
    ("signup", &["validation_failed", "email_taken"]),
    ("login", &["validation_failed", "invalid_credentials", "too_many_attempts"]),
    ("logout", &["session_required"]),
    ("change_password", &["validation_failed", "session_required", "incorrect_password", "too_many_attempts"]),
    ("me", &[]),
    ("principal", &[]),
    ("create_organization", &["validation_failed", "session_required"]),
    ("list_organizations", &["validation_failed"]),
    ("organization_role", &["organization_not_found"]),
    ("list_members", &["validation_failed", "organization_not_found"]),
    (
        "add_member",
        &[
            "validation_failed",
            "organization_not_found",
            "permission_denied",
            "insufficient_scope",
            "user_not_found",
            "already_member",
        ],
    ),
    (
        "update_member",
        &["organization_not_found", "member_not_found", "permission_denied", "insufficient_scope", "last_owner"],
    ),
    (
        "remove_member",
        &["organization_not_found", "member_not_found", "permission_denied", "insufficient_scope", "last_owner"],
    ),
    ("create_api_key", &["validation_failed", "organization_not_found", "permission_denied", "insufficient_scope"]),
    ("list_api_keys", &["validation_failed", "organization_not_found", "permission_denied", "insufficient_scope"]),
    ("revoke_api_key", &["organization_not_found", "api_key_not_found", "permission_denied", "insufficient_scope"]),
];

/// The OpenAPI description of the auth routes, with their error codes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let unresolved = shared::openapi::domain_errors::<AuthError>(&mut doc, ROUTE_ERRORS);
    debug_assert!(unresolved.is_empty(), "{unresolved:?}");
    doc
}

#[derive(OpenApi)]
#[openapi(
    paths(
        signup, login, logout, change_password, me, principal, create_organization, list_organizations,
        organization_role, list_members, add_member, update_member, remove_member, create_api_key, list_api_keys, revoke_api_key
    ),
    components(schemas(
        SignupRequest, SignupResponse, LoginRequest, LoginResponse, ChangePasswordRequest,
        MeResponse, Principal, User, Organization, Membership, Member, Role, OrganizationRole, KeyIdentity,
        CreateOrganizationRequest, AddMemberRequest, UpdateMemberRequest, CreateApiKeyRequest, CreatedApiKey, ApiKey,
        Page<Membership>, Page<Member>, Page<ApiKey>
    )),
    tags((name = "auth", description = "Accounts and sessions"), (name = "organizations", description = "Organizations, members and API keys"))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// Create an account and its personal organization.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest, responses(
    (status = 201, description = "The account, its personal organization and a session.", body = SignupResponse),
))]
async fn signup(api: Api, ip: ClientIp, body: Json<SignupRequest>) -> Result<HttpResponse, AuthError> {
    let response = api.signup(body.into_inner(), context(ip)).await?;
    Ok(HttpResponse::Created().json(response))
}

/// Open a session.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest, responses(
    (status = 200, description = "A new session.", body = LoginResponse),
))]
async fn login(api: Api, ip: ClientIp, body: Json<LoginRequest>) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.login(body.into_inner(), context(ip)).await?))
}

/// Revoke the session used for this request.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])), responses(
    (status = 204, description = "Done."),
))]
async fn logout(api: Api, caller: Caller) -> Result<HttpResponse, AuthError> {
    api.logout(&caller.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the password; every other session of the user is revoked.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", security(("bearer" = [])), request_body = ChangePasswordRequest, responses(
    (status = 204, description = "Done."),
))]
async fn change_password(
    api: Api,
    caller: Caller,
    ip: ClientIp,
    body: Json<ChangePasswordRequest>,
) -> Result<HttpResponse, AuthError> {
    api.change_password(&caller.0, body.into_inner(), context(ip)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The caller: a user and their organizations, or an API key and its organization.
#[utoipa::path(get, path = "/v1/auth/me", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "The caller.", body = MeResponse),
))]
async fn me(api: Api, caller: Caller) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.me(&caller.0).await?))
}

/// The caller as the other services see it (used by remote clients of the auth service).
#[utoipa::path(get, path = "/v1/auth/principal", tag = "auth", security(("bearer" = [])), responses(
    (status = 200, description = "The caller's principal.", body = Principal),
))]
async fn principal(caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(caller.0)
}

/// Create an organization owned by the caller.
#[utoipa::path(post, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), request_body = CreateOrganizationRequest, responses(
    (status = 201, description = "The new organization.", body = Organization),
))]
async fn create_organization(
    api: Api,
    caller: Caller,
    body: Json<CreateOrganizationRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.create_organization(&caller.0, body.into_inner()).await?))
}

/// The caller's organizations.
#[utoipa::path(get, path = "/v1/organizations", tag = "organizations", security(("bearer" = [])), params(PageRequest), responses(
    (status = 200, description = "A page of the caller's organizations.", body = Page<Membership>),
))]
async fn list_organizations(api: Api, caller: Caller, page: Query<PageRequest>) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_organizations(&caller.0, page.into_inner()).await?))
}

/// Members of an organization the caller belongs to.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/members", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest), responses(
    (status = 200, description = "A page of members.", body = Page<Member>),
))]
async fn list_members(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: Query<PageRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_members(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// The role the caller acts with in the organization (other domains check permissions with it).
#[utoipa::path(get, path = "/v1/organizations/{org_id}/role", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), responses(
    (status = 200, description = "The caller's role.", body = OrganizationRole),
))]
async fn organization_role(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
) -> Result<HttpResponse, AuthError> {
    let role = api.organization_role(&caller.0, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(OrganizationRole { role }))
}

/// Add an existing account to the organization (owners and admins).
#[utoipa::path(post, path = "/v1/organizations/{org_id}/members", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path)), request_body = AddMemberRequest, responses(
    (status = 201, description = "The new member.", body = Member),
))]
async fn add_member(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: Json<AddMemberRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.add_member(&caller.0, path.into_inner(), body.into_inner()).await?))
}

/// Change a member's role (owners and admins; only owners touch `owner`).
#[utoipa::path(patch, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("user_id" = UserId, Path)), request_body = UpdateMemberRequest, responses(
    (status = 200, description = "The member with their new role.", body = Member),
))]
async fn update_member(
    api: Api,
    caller: Caller,
    path: web::Path<(OrganizationId, UserId)>,
    body: Json<UpdateMemberRequest>,
) -> Result<HttpResponse, AuthError> {
    let (org, user) = path.into_inner();
    Ok(HttpResponse::Ok().json(api.update_member(&caller.0, org, user, body.into_inner()).await?))
}

/// Remove a member (or leave, for oneself).
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/members/{user_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("user_id" = UserId, Path)), responses(
    (status = 204, description = "Done."),
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
    (status = 201, description = "The new key; `key` is shown this once.", body = CreatedApiKey),
))]
async fn create_api_key(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    body: Json<CreateApiKeyRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Created().json(api.create_api_key(&caller.0, path.into_inner(), body.into_inner()).await?))
}

/// The organization's live API keys, without secrets.
#[utoipa::path(get, path = "/v1/organizations/{org_id}/api-keys", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), PageRequest), responses(
    (status = 200, description = "A page of live keys.", body = Page<ApiKey>),
))]
async fn list_api_keys(
    api: Api,
    caller: Caller,
    path: web::Path<OrganizationId>,
    page: Query<PageRequest>,
) -> Result<HttpResponse, AuthError> {
    Ok(HttpResponse::Ok().json(api.list_api_keys(&caller.0, path.into_inner(), page.into_inner()).await?))
}

/// Revoke an API key at once.
#[utoipa::path(delete, path = "/v1/organizations/{org_id}/api-keys/{key_id}", tag = "organizations", security(("bearer" = [])),
    params(("org_id" = OrganizationId, Path), ("key_id" = ApiKeyId, Path)), responses(
    (status = 204, description = "Done."),
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
