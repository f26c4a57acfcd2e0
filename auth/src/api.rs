//! The auth contract: the `AuthApi` trait, its wire types and ids. Compiled without diesel or
//! actix, so any crate (or a remote client) can depend on it.

use crate::error::AuthError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared::{Page, PageRequest, Secret};
use std::net::IpAddr;
use utoipa::ToSchema;

shared::define_id!(
    /// A user account.
    UserId,
    "usr"
);
shared::define_id!(
    /// An organization: the unit that owns API keys, and later subscriptions and data.
    OrganizationId,
    "org"
);
shared::define_id!(
    /// A login session.
    SessionId,
    "ses"
);
shared::define_id!(
    /// An API key (the id, not the secret).
    ApiKeyId,
    "key"
);

/// A member's role in an organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "member" => Some(Self::Member),
            "admin" => Some(Self::Admin),
            "owner" => Some(Self::Owner),
            _ => None,
        }
    }

    /// Owners and admins manage members and API keys.
    pub fn can_manage(self) -> bool {
        self >= Self::Admin
    }
}

/// The scope that lets an API key manage its organization's members and keys, as an admin
/// would. Auth's own scope; every other scope is declared by the domain whose routes check it.
pub const ADMIN_SCOPE: &str = "admin";

/// The scopes the auth domain declares.
pub const SCOPES: &[shared::scope::ScopeDef] = &[shared::scope::ScopeDef {
    name: ADMIN_SCOPE,
    description: "Manage the organization's members and API keys, as an admin would. Effective only while \
                  the key's creator is still an owner or admin of the organization.",
    default: false,
}];

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Session,
    ApiKey,
}

/// The caller of a request, resolved from its bearer token by [`AuthApi::authenticate`].
///
/// A session principal is a user; an API key principal is an organization acting through one
/// of its keys. The token itself travels with the principal (never serialized) so that a remote
/// implementation can act on the caller's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The user, for a session.
    pub user_id: Option<UserId>,
    /// The session, for a session.
    pub session_id: Option<SessionId>,
    /// The key's organization, for an API key.
    pub organization_id: Option<OrganizationId>,
    /// The key, for an API key.
    pub api_key_id: Option<ApiKeyId>,
    /// The key's effective scopes, for an API key; empty for a session. `admin` is left out
    /// when the key's creator is no longer an owner or admin of the organization.
    pub scopes: Vec<String>,
    /// For an API key: the user who created it, on whose authority an `admin` key acts.
    pub key_created_by: Option<UserId>,
    /// For a session: whether the user is a platform administrator (`gateway admin grant-admin`).
    /// Always false for an API key.
    #[serde(default)]
    pub platform_admin: bool,
    #[serde(skip)]
    #[schema(ignore)]
    pub credential: Secret,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Where a request came from, for throttling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestContext {
    pub client_ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub id: OrganizationId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// An organization the caller belongs to, with the caller's role in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Membership {
    pub id: OrganizationId,
    pub name: String,
    pub role: Role,
}

/// A member of an organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    pub user: User,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignupRequest {
    pub email: String,
    /// 8 to 128 characters.
    pub password: Secret,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignupResponse {
    pub user: User,
    /// The personal organization created with the account; the user owns it.
    pub organization: Organization,
    /// A session token: send it as `Authorization: Bearer <token>`.
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub user: User,
    pub token: Secret,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: Secret,
    pub new_password: Secret,
}

/// The API key behind a request, as `GET /v1/auth/me` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyIdentity {
    pub id: ApiKeyId,
    pub name: String,
    pub prefix: String,
    /// The key's effective scopes (see `Principal::scopes`).
    pub scopes: Vec<String>,
}

/// The caller: a user with their organizations, or an organization acting through an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MeResponse {
    Session { user: User, organizations: Vec<Membership> },
    ApiKey { organization: Organization, api_key: KeyIdentity },
}

/// The role the caller acts with in an organization (`GET /v1/organizations/{org_id}/role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrganizationRole {
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateOrganizationRequest {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AddMemberRequest {
    /// The email of an existing account.
    pub email: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UpdateMemberRequest {
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateApiKeyRequest {
    pub name: String,
    /// Scopes declared by the served domains (`GET /openapi.json` lists them under the bearer
    /// scheme). Defaults to the scopes the domains mark as default.
    pub scopes: Option<Vec<String>>,
    /// When the key stops working; must be in the future.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A new API key. `key` is shown this once and cannot be recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: ApiKeyId,
    pub name: String,
    /// The visible, non-secret start of the key, for telling keys apart.
    pub prefix: String,
    pub key: Secret,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub prefix: String,
    /// The scopes the key was created with.
    pub scopes: Vec<String>,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Updated at most once a minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The auth domain's contract. Implemented in-process by `AuthService` and remotely by
/// `HttpAuthClient`; callers cannot tell which one they hold.
///
/// Every method that takes a `Principal` answers `NotFound` for an organization the caller
/// cannot see, never `PermissionDenied`, so ids of other tenants leak nothing.
#[async_trait]
pub trait AuthApi: Send + Sync {
    /// Creates a user and a personal organization they own, and opens a session.
    /// Errors: `Validation`, `EmailTaken`.
    async fn signup(&self, request: SignupRequest, context: RequestContext) -> Result<SignupResponse, AuthError>;

    /// Opens a session. Errors: `InvalidCredentials` (unknown email and wrong password alike),
    /// `TooManyAttempts` (account or client IP locked out; even with the right password), `Validation`.
    async fn login(&self, request: LoginRequest, context: RequestContext) -> Result<LoginResponse, AuthError>;

    /// Resolves a session token or an API key. Errors: `Unauthenticated` (unknown, expired, revoked).
    async fn authenticate(&self, token: &Secret) -> Result<Principal, AuthError>;

    /// Revokes the caller's session. Errors: `SessionRequired` for an API key.
    async fn logout(&self, principal: &Principal) -> Result<(), AuthError>;

    /// Changes the caller's password and revokes every other session of theirs.
    /// Errors: `SessionRequired`, `IncorrectPassword`, `TooManyAttempts`, `Validation`.
    async fn change_password(
        &self,
        principal: &Principal,
        request: ChangePasswordRequest,
        context: RequestContext,
    ) -> Result<(), AuthError>;

    /// The caller. Errors: `Unauthenticated` if the account or key is gone.
    async fn me(&self, principal: &Principal) -> Result<MeResponse, AuthError>;

    /// Creates an organization owned by the caller. Errors: `SessionRequired`, `Validation`.
    async fn create_organization(
        &self,
        principal: &Principal,
        request: CreateOrganizationRequest,
    ) -> Result<Organization, AuthError>;

    /// The caller's organizations (for an API key, its own). Errors: none beyond `Internal`/`Unavailable`.
    async fn list_organizations(&self, principal: &Principal, page: PageRequest)
    -> Result<Page<Membership>, AuthError>;

    /// The role the caller acts with in the organization, for other domains' permission checks:
    /// a session's membership role; for an API key of that organization, `admin` with the
    /// `admin` scope and `member` without. Errors: `OrganizationNotFound` (not a member, or a
    /// key of another organization).
    async fn organization_role(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Role, AuthError>;

    /// Members of an organization the caller belongs to. Errors: `OrganizationNotFound`.
    async fn list_members(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Member>, AuthError>;

    /// Adds an existing account. Only owners and admins; only owners grant `owner`.
    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `InsufficientScope`, `UserNotFound`, `AlreadyMember`.
    async fn add_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: AddMemberRequest,
    ) -> Result<Member, AuthError>;

    /// Changes a member's role. Only owners and admins; only owners touch `owner`.
    /// Errors: `OrganizationNotFound`, `MemberNotFound`, `PermissionDenied`, `InsufficientScope`, `LastOwner`.
    async fn update_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
        request: UpdateMemberRequest,
    ) -> Result<Member, AuthError>;

    /// Removes a member (a member may remove themself). Errors as for `update_member`.
    async fn remove_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
    ) -> Result<(), AuthError>;

    /// Creates an API key; the secret is in the answer only.
    /// Errors: `OrganizationNotFound`, `PermissionDenied`, `InsufficientScope`, `Validation`.
    async fn create_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey, AuthError>;

    /// The organization's live keys, without secrets. Errors as for `create_api_key`.
    async fn list_api_keys(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, AuthError>;

    /// Revokes a key at once. Errors: `OrganizationNotFound`, `ApiKeyNotFound`, `PermissionDenied`, `InsufficientScope`.
    async fn revoke_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        key_id: ApiKeyId,
    ) -> Result<(), AuthError>;

    /// Whether the service can serve requests (its database answers). Errors: `Unavailable`.
    async fn ready(&self) -> Result<(), AuthError>;
}
