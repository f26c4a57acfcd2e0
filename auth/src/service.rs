//! `AuthService`: the auth domain's business rules, in-process.

use crate::api::*;
use crate::config::AuthConfig;
use crate::credentials::Credentials;
use crate::error::AuthError;
use crate::password::{Hasher, MAX_PASSWORD_CHARS, Verified, validate_new_password};
use crate::store::{self, ApiKeyRow, MembershipRow, OrganizationRow, SessionRow, UserRow};
use crate::token;
use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use shared::db::{Db, DbError};
use shared::module::Platform;
use shared::ratelimit::{Attempt, FailureLimiter, FailurePolicy};
use shared::scope::Scopes;
use shared::text::{self, TextError};
use shared::{Clock, Page, PageRequest, Secret};
use std::sync::Arc;

const MAX_EMAIL_CHARS: usize = 254;
const MAX_NAME_CHARS: usize = 200;

pub struct AuthService {
    db: Db,
    config: AuthConfig,
    clock: Arc<dyn Clock>,
    limiter: Arc<dyn FailureLimiter>,
    scopes: Scopes,
    hasher: Hasher,
    credentials: Credentials,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").field("db", &self.db).finish_non_exhaustive()
    }
}

impl AuthService {
    /// Applies the domain's pending migrations. Blocking.
    pub fn migrate(db: &Db) -> Result<usize, DbError> {
        db.migrate(store::POSTGRES_MIGRATIONS, store::SQLITE_MIGRATIONS)
    }

    /// Builds the service over its (migrated) database. Computes one password hash (the dummy
    /// used for unknown accounts) on the hashing threads, so it takes a few milliseconds.
    pub async fn new(db: Db, config: AuthConfig, platform: &Platform) -> Result<Self, AuthError> {
        let hasher = Hasher::new(&config.argon2, config.hash_concurrency).await?;
        let credentials = Credentials::new(db.clone(), &config.cache, platform);
        Ok(Self {
            credentials,
            db,
            config,
            clock: platform.clock.clone(),
            limiter: platform.failure_limiter.clone(),
            scopes: platform.scopes.clone(),
            hasher,
        })
    }

    /// Flags (or unflags) the account with `email` as a platform administrator: the operator's
    /// `gateway admin grant-admin EMAIL`, run where the auth domain's database is. Not part of
    /// `AuthApi`: no HTTP route grants it. Errors: `UserNotFound`.
    /// The user's cached sessions are invalidated through `platform` (every process, when Redis
    /// is configured; otherwise they pick the change up within `auth.cache.l1_ttl_ms`).
    pub async fn set_platform_admin(
        db: &Db,
        platform: &Platform,
        config: &AuthConfig,
        email: &str,
        admin: bool,
    ) -> Result<User, AuthError> {
        let email = normalize_email(email)?;
        let now = platform.clock.now().naive_utc();
        let (user, sessions) = db
            .transaction(move |conn| {
                if !store::set_platform_admin(conn, &email, admin, now)? {
                    return Err(AuthError::UserNotFound);
                }
                let user = store::find_user_by_email(conn, &email)?.ok_or(AuthError::UserNotFound)?;
                let sessions = store::live_session_digests(conn, &user.id)?;
                Ok((user, sessions))
            })
            .await?;
        Credentials::new(db.clone(), &config.cache, platform).forget_sessions(&sessions).await;
        tracing::info!(user.id = %user.id, platform_admin = admin, "platform administrator flag changed");
        user_of(&user)
    }

    fn now(&self) -> NaiveDateTime {
        self.clock.now().naive_utc()
    }

    fn policy(&self, max_failures: u32) -> FailurePolicy {
        FailurePolicy { max_failures, window: Duration::seconds(self.config.throttle.window_secs as i64) }
    }

    fn account_key(email: &str) -> String {
        format!("login:account:{}", token::digest(email))
    }

    /// Reserves one password check on the account and the client address, in one atomic step:
    /// `TooManyAttempts` while either is locked out. The reservation counts as a failure until
    /// [`AuthService::settle_attempt`] says otherwise, so a concurrent burst cannot verify more
    /// passwords than the limits allow.
    async fn reserve_attempt(&self, account: &str, context: &RequestContext) -> Result<Attempt, AuthError> {
        let throttle = self.config.throttle;
        let mut keys = vec![(account.to_owned(), self.policy(throttle.max_failures_per_account))];
        if let Some(ip) = context.client_ip {
            keys.push((format!("login:ip:{ip}"), self.policy(throttle.max_failures_per_ip)));
        }
        self.limiter.reserve(&keys).await.map_err(|retry| AuthError::TooManyAttempts { retry_after_secs: retry.secs() })
    }

    /// Keeps the reserved attempt as a failure when the password was wrong; otherwise releases
    /// it, and after a success forgets the account's failures.
    async fn settle_attempt<T>(&self, attempt: Attempt, account: &str, outcome: &Result<T, AuthError>) {
        match outcome {
            Err(AuthError::InvalidCredentials | AuthError::IncorrectPassword) => {}
            Err(_) => self.limiter.release(&attempt).await,
            Ok(_) => {
                self.limiter.release(&attempt).await;
                self.limiter.clear(account).await;
            }
        }
    }

    fn new_session(&self, user_id: &str) -> Result<(SessionRow, Secret), AuthError> {
        let (token, digest) = token::new_session_token()?;
        let now = self.now();
        let ttl = Duration::seconds(self.config.session_ttl_secs.min(i64::MAX as u64) as i64);
        let row = SessionRow {
            id: SessionId::new().to_string(),
            user_id: user_id.to_owned(),
            token_digest: digest,
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        Ok((row, token))
    }

    /// What the caller may do in an organization; `OrganizationNotFound` when it cannot see it.
    async fn access(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Access, AuthError> {
        match principal.kind {
            PrincipalKind::Session => {
                let user_id = principal.user_id.ok_or(AuthError::Unauthenticated)?;
                let (org, user) = (organization_id.to_string(), user_id.to_string());
                let role = self
                    .db
                    .run(move |conn| store::find_role(conn, &org, &user).map_err(AuthError::from))
                    .await?
                    .and_then(|r| Role::parse(&r))
                    .ok_or(AuthError::OrganizationNotFound)?;
                Ok(Access::User { user_id, role })
            }
            PrincipalKind::ApiKey => {
                if principal.organization_id != Some(organization_id) {
                    return Err(AuthError::OrganizationNotFound);
                }
                Ok(Access::Key { admin: principal.has_scope(ADMIN_SCOPE), created_by: principal.key_created_by })
            }
        }
    }

    fn session_user(principal: &Principal) -> Result<(UserId, SessionId), AuthError> {
        match (principal.kind, principal.user_id, principal.session_id) {
            (PrincipalKind::Session, Some(user), Some(session)) => Ok((user, session)),
            _ => Err(AuthError::SessionRequired),
        }
    }

    async fn authenticate_session(&self, token: &str) -> Result<Principal, AuthError> {
        let digest = token::digest(token);
        let row = self.credentials.session(&digest).await?.ok_or(AuthError::Unauthenticated)?;
        if !token::digests_match(&row.token_digest, &digest) || row.revoked || row.expires_at <= self.now() {
            return Err(AuthError::Unauthenticated);
        }
        Ok(Principal {
            kind: PrincipalKind::Session,
            user_id: Some(parse_id(&row.user_id)?),
            session_id: Some(parse_id(&row.id)?),
            organization_id: None,
            api_key_id: None,
            scopes: Vec::new(),
            key_created_by: None,
            platform_admin: row.platform_admin,
            credential: Secret::new(token),
        })
    }

    async fn authenticate_api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let (lookup, secret) = token::parse_api_key(key).ok_or(AuthError::Unauthenticated)?;
        let cached = self.credentials.api_key(lookup).await?.ok_or(AuthError::Unauthenticated)?;
        let (row, creator_role) = (&cached.row, &cached.creator_role);
        let now = self.now();
        if !token::digests_match(&row.secret_digest, &token::digest(secret))
            || row.revoked_at.is_some()
            || row.expires_at.is_some_and(|at| at <= now)
        {
            return Err(AuthError::Unauthenticated);
        }
        self.credentials.touch(row, now);
        // An `admin` key acts on its creator's authority: it stops granting admin rights when
        // the creator is no longer an owner or admin of the organization.
        let creator_manages = creator_role.as_deref().and_then(Role::parse).is_some_and(Role::can_manage);
        let scopes = parse_scopes(&row.scopes).into_iter().filter(|s| s != ADMIN_SCOPE || creator_manages).collect();
        Ok(Principal {
            kind: PrincipalKind::ApiKey,
            user_id: None,
            session_id: None,
            organization_id: Some(parse_id(&row.organization_id)?),
            api_key_id: Some(parse_id(&row.id)?),
            scopes,
            key_created_by: row.created_by.as_deref().map(parse_id).transpose()?,
            platform_admin: false,
            credential: Secret::new(key),
        })
    }

    /// Looks the account up and verifies its password, against a dummy hash when there is no
    /// such account so that both cost the same. Returns the user, the password and whether the
    /// stored hash needs upgrading.
    async fn check_password(&self, email: String, password: Secret) -> Result<(UserRow, Secret, bool), AuthError> {
        // An email Keel would never store has no account: no query (PostgreSQL refuses NUL bytes).
        let storable = email.chars().all(text::is_allowed);
        let user = match storable {
            true => self.db.run(move |conn| store::find_user_by_email(conn, &email).map_err(AuthError::from)).await?,
            false => None,
        };
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        match self.hasher.verify(password.clone(), hash).await? {
            Verified::Yes { rehash } => Ok((user.ok_or(AuthError::InvalidCredentials)?, password, rehash)),
            Verified::No => {
                tracing::info!("login failed");
                Err(AuthError::InvalidCredentials)
            }
        }
    }
}

/// What a caller may do in one organization.
#[derive(Debug, Clone, Copy)]
enum Access {
    User {
        user_id: UserId,
        role: Role,
    },
    /// An API key; `created_by` is the user on whose authority it acts.
    Key {
        admin: bool,
        created_by: Option<UserId>,
    },
}

impl Access {
    /// The role the caller acts with; an `admin`-scoped key acts as an admin.
    fn role(self) -> Role {
        match self {
            Self::User { role, .. } => role,
            Self::Key { admin: true, .. } => Role::Admin,
            Self::Key { admin: false, .. } => Role::Member,
        }
    }

    fn require_manage(self) -> Result<(), AuthError> {
        match self {
            Self::Key { admin: false, .. } => Err(AuthError::InsufficientScope(ADMIN_SCOPE.into())),
            _ if self.role().can_manage() => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    fn require_owner(self) -> Result<(), AuthError> {
        if self.role() == Role::Owner { Ok(()) } else { Err(AuthError::PermissionDenied) }
    }

    fn user_id(self) -> Option<UserId> {
        match self {
            Self::User { user_id, .. } => Some(user_id),
            Self::Key { .. } => None,
        }
    }

    /// The user a new API key is created on behalf of: the caller, or a key's own creator.
    fn creator(self) -> Option<UserId> {
        match self {
            Self::User { user_id, .. } => Some(user_id),
            Self::Key { created_by, .. } => created_by,
        }
    }
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T, AuthError> {
    s.parse().map_err(|_| AuthError::Internal(format!("malformed id {s:?} in the database")))
}

fn parse_role(s: &str) -> Result<Role, AuthError> {
    Role::parse(s).ok_or_else(|| AuthError::Internal(format!("unknown role {s:?} in the database")))
}

/// Scopes are stored space-separated. A scope no registered domain declares any more stays on
/// the key (it is shown as created) and simply grants nothing.
fn parse_scopes(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn utc(at: NaiveDateTime) -> DateTime<Utc> {
    at.and_utc()
}

fn user_of(row: &UserRow) -> Result<User, AuthError> {
    Ok(User {
        id: parse_id(&row.id)?,
        email: row.email.clone(),
        name: row.name.clone(),
        created_at: utc(row.created_at),
    })
}

fn organization_of(row: &OrganizationRow) -> Result<Organization, AuthError> {
    Ok(Organization { id: parse_id(&row.id)?, name: row.name.clone(), created_at: utc(row.created_at) })
}

fn member_of((membership, user): &(MembershipRow, UserRow)) -> Result<Member, AuthError> {
    Ok(Member { user: user_of(user)?, role: parse_role(&membership.role)?, joined_at: utc(membership.created_at) })
}

fn membership_of((membership, org): &(MembershipRow, OrganizationRow)) -> Result<Membership, AuthError> {
    Ok(Membership { id: parse_id(&org.id)?, name: org.name.clone(), role: parse_role(&membership.role)? })
}

fn api_key_of(row: &ApiKeyRow) -> Result<ApiKey, AuthError> {
    Ok(ApiKey {
        id: parse_id(&row.id)?,
        name: row.name.clone(),
        prefix: token::prefix_of(&row.lookup),
        scopes: parse_scopes(&row.scopes),
        created_by: row.created_by.as_deref().map(parse_id).transpose()?,
        created_at: utc(row.created_at),
        expires_at: row.expires_at.map(utc),
        last_used_at: row.last_used_at.map(utc),
    })
}

/// Trims and lowercases an email, and checks its shape loosely (one `@`, a dot in the domain,
/// no whitespace, control or bidirectional formatting characters).
fn normalize_email(email: &str) -> Result<String, AuthError> {
    let email = email.trim().to_lowercase();
    let valid = email.chars().count() <= MAX_EMAIL_CHARS
        && email.chars().all(|c| text::is_allowed(c) && !c.is_whitespace())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid { Ok(email) } else { Err(AuthError::validation("email", "A valid email address is required.")) }
}

/// Trims a display name and checks it (see `shared::text`); empty means none.
fn clean_name(field: &str, name: &str, required: bool) -> Result<Option<String>, AuthError> {
    match text::clean(name, MAX_NAME_CHARS) {
        Ok(None) if required => Err(text_error(field, TextError::Empty)),
        Ok(name) => Ok(name),
        Err(e) => Err(text_error(field, e)),
    }
}

fn text_error(field: &str, error: TextError) -> AuthError {
    AuthError::validation(field, format!("`{field}` {error}."))
}

fn page_cursor<T: std::str::FromStr>(page: &PageRequest) -> Result<Option<String>, AuthError> {
    page.after_id::<T>().map_err(|e| AuthError::validation("after", e.to_string()))
}

#[async_trait]
impl AuthApi for AuthService {
    #[tracing::instrument(skip_all, fields(user.id))]
    async fn signup(&self, request: SignupRequest, _context: RequestContext) -> Result<SignupResponse, AuthError> {
        let email = normalize_email(&request.email)?;
        validate_new_password("password", &request.password)?;
        let name = clean_name("name", request.name.as_deref().unwrap_or_default(), false)?;
        let password_hash = self.hasher.hash(request.password).await?;

        let now = self.now();
        let user_id = UserId::new();
        tracing::Span::current().record("user.id", tracing::field::display(user_id));
        let display = name.clone().unwrap_or_else(|| email.split('@').next().unwrap_or_default().to_owned());
        let user = UserRow {
            id: user_id.to_string(),
            email,
            name,
            password_hash,
            created_at: now,
            updated_at: now,
            platform_admin: false,
        };
        let org = OrganizationRow {
            id: OrganizationId::new().to_string(),
            name: format!("{display}'s organization"),
            created_at: now,
            updated_at: now,
        };
        let membership = MembershipRow {
            organization_id: org.id.clone(),
            user_id: user.id.clone(),
            role: "owner".into(),
            created_at: now,
        };
        let (session, token) = self.new_session(&user.id)?;
        let expires_at = utc(session.expires_at);
        let (user, org) = self
            .db
            .transaction(move |conn| {
                if !store::insert_user_if_new(conn, &user)? {
                    return Err(AuthError::EmailTaken);
                }
                store::insert_organization(conn, &org)?;
                store::insert_membership(conn, &membership)?;
                store::insert_session(conn, &session)?;
                Ok::<_, AuthError>((user, org))
            })
            .await?;
        tracing::info!("account created");
        Ok(SignupResponse { user: user_of(&user)?, organization: organization_of(&org)?, token, expires_at })
    }

    #[tracing::instrument(skip_all, fields(user.id))]
    async fn login(&self, request: LoginRequest, context: RequestContext) -> Result<LoginResponse, AuthError> {
        if request.password.expose().chars().count() > MAX_PASSWORD_CHARS {
            return Err(AuthError::validation(
                "password",
                format!("Passwords are at most {MAX_PASSWORD_CHARS} characters."),
            ));
        }
        let email = request.email.trim().to_lowercase();
        let account_key = Self::account_key(&email);
        let attempt = self.reserve_attempt(&account_key, &context).await?;
        let outcome = self.check_password(email, request.password).await;
        self.settle_attempt(attempt, &account_key, &outcome).await;
        let (user, password, rehash) = outcome?;
        tracing::Span::current().record("user.id", user.id.as_str());

        let new_hash = if rehash { Some(self.hasher.hash(password).await?) } else { None };
        let (session, token) = self.new_session(&user.id)?;
        let expires_at = utc(session.expires_at);
        let now = self.now();
        let user_id = user.id.clone();
        self.db
            .transaction(move |conn| {
                if let Some(hash) = new_hash {
                    store::update_password_hash(conn, &user_id, &hash, now)?;
                }
                store::insert_session(conn, &session).map_err(AuthError::from)
            })
            .await?;
        if rehash {
            tracing::info!("password hash upgraded to the current parameters");
        }
        Ok(LoginResponse { user: user_of(&user)?, token, expires_at })
    }

    async fn authenticate(&self, token: &Secret) -> Result<Principal, AuthError> {
        let token = token.expose();
        // Anything else cannot be a token Keel issued: no query for it.
        if token::is_session_token(token) {
            self.authenticate_session(token).await
        } else if token.starts_with(token::API_KEY_PREFIX) {
            self.authenticate_api_key(token).await
        } else {
            Err(AuthError::Unauthenticated)
        }
    }

    #[tracing::instrument(skip_all, fields(user.id))]
    async fn logout(&self, principal: &Principal) -> Result<(), AuthError> {
        let (user_id, session_id) = Self::session_user(principal)?;
        tracing::Span::current().record("user.id", tracing::field::display(user_id));
        let now = self.now();
        self.db
            .run(move |conn| store::revoke_session(conn, &session_id.to_string(), now).map_err(AuthError::from))
            .await?;
        self.credentials.forget_sessions(&[token::digest(principal.credential.expose())]).await;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(user.id))]
    async fn change_password(
        &self,
        principal: &Principal,
        request: ChangePasswordRequest,
        context: RequestContext,
    ) -> Result<(), AuthError> {
        let (user_id, session_id) = Self::session_user(principal)?;
        tracing::Span::current().record("user.id", tracing::field::display(user_id));
        if request.current_password.expose().chars().count() > MAX_PASSWORD_CHARS {
            return Err(AuthError::IncorrectPassword);
        }
        validate_new_password("new_password", &request.new_password)?;
        let id = user_id.to_string();
        let user = self
            .db
            .run(move |conn| store::find_user(conn, &id).map_err(AuthError::from))
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        let account_key = Self::account_key(&user.email);
        let attempt = self.reserve_attempt(&account_key, &context).await?;
        let outcome = match self.hasher.verify(request.current_password, Some(user.password_hash.clone())).await {
            Ok(Verified::No) => Err(AuthError::IncorrectPassword),
            Ok(Verified::Yes { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        self.settle_attempt(attempt, &account_key, &outcome).await;
        outcome?;
        let hash = self.hasher.hash(request.new_password).await?;
        let now = self.now();
        let revoked = self
            .db
            .transaction(move |conn| {
                store::update_password_hash(conn, &user.id, &hash, now)?;
                store::revoke_other_sessions(conn, &user.id, &session_id.to_string(), now).map_err(AuthError::from)
            })
            .await?;
        self.credentials.forget_sessions(&revoked).await;
        tracing::info!(sessions.revoked = revoked.len(), "password changed");
        Ok(())
    }

    async fn me(&self, principal: &Principal) -> Result<MeResponse, AuthError> {
        match principal.kind {
            PrincipalKind::Session => {
                let user_id = principal.user_id.ok_or(AuthError::Unauthenticated)?.to_string();
                let (user, memberships) = self
                    .db
                    .run(move |conn| {
                        let user = store::find_user(conn, &user_id)?;
                        let memberships = store::list_memberships(conn, &user_id, None, None)?;
                        Ok::<_, AuthError>((user, memberships))
                    })
                    .await?;
                let user = user.ok_or(AuthError::Unauthenticated)?;
                Ok(MeResponse::Session {
                    user: user_of(&user)?,
                    organizations: memberships.iter().map(membership_of).collect::<Result<_, _>>()?,
                })
            }
            PrincipalKind::ApiKey => {
                // Both from the credential cache: a key's /me costs no query when it is warm.
                let (lookup, _) =
                    token::parse_api_key(principal.credential.expose()).ok_or(AuthError::Unauthenticated)?;
                let org_id = principal.organization_id.ok_or(AuthError::Unauthenticated)?.to_string();
                let key = self.credentials.api_key(lookup).await?.map(|k| k.row);
                let org = self.credentials.organization(&org_id).await?;
                let (key, org) =
                    key.zip(org).filter(|(k, _)| k.revoked_at.is_none()).ok_or(AuthError::Unauthenticated)?;
                Ok(MeResponse::ApiKey {
                    organization: organization_of(&org)?,
                    api_key: KeyIdentity {
                        id: parse_id(&key.id)?,
                        name: key.name.clone(),
                        prefix: token::prefix_of(&key.lookup),
                        scopes: principal.scopes.clone(),
                    },
                })
            }
        }
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn organization_role(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Role, AuthError> {
        Ok(self.access(principal, organization_id).await?.role())
    }

    #[tracing::instrument(skip_all, fields(user.id, organization.id))]
    async fn create_organization(
        &self,
        principal: &Principal,
        request: CreateOrganizationRequest,
    ) -> Result<Organization, AuthError> {
        let (user_id, _) = Self::session_user(principal)?;
        let name = clean_name("name", &request.name, true)?.unwrap_or_default();
        let now = self.now();
        let org = OrganizationRow { id: OrganizationId::new().to_string(), name, created_at: now, updated_at: now };
        let span = tracing::Span::current();
        span.record("user.id", tracing::field::display(user_id));
        span.record("organization.id", org.id.as_str());
        let membership = MembershipRow {
            organization_id: org.id.clone(),
            user_id: user_id.to_string(),
            role: "owner".into(),
            created_at: now,
        };
        let org = self
            .db
            .transaction(move |conn| {
                store::insert_organization(conn, &org)?;
                store::insert_membership(conn, &membership)?;
                Ok::<_, AuthError>(org)
            })
            .await?;
        organization_of(&org)
    }

    async fn list_organizations(
        &self,
        principal: &Principal,
        page: PageRequest,
    ) -> Result<Page<Membership>, AuthError> {
        let after = page_cursor::<OrganizationId>(&page)?;
        let limit = page.limit();
        match principal.kind {
            PrincipalKind::Session => {
                let user_id = principal.user_id.ok_or(AuthError::Unauthenticated)?.to_string();
                let rows = self
                    .db
                    .run(move |conn| {
                        store::list_memberships(conn, &user_id, after.as_deref(), Some(i64::from(limit) + 1))
                            .map_err(AuthError::from)
                    })
                    .await?;
                let page = Page::from_overfetch(rows, limit, |(_, org)| org.id.clone());
                page.try_map(|row| membership_of(&row))
            }
            PrincipalKind::ApiKey => {
                let org_id = principal.organization_id.ok_or(AuthError::Unauthenticated)?;
                let role = Access::Key { admin: principal.has_scope(ADMIN_SCOPE), created_by: None }.role();
                let id = org_id.to_string();
                let org = match after {
                    Some(after) if after >= id => None,
                    _ => self.credentials.organization(&id).await?,
                };
                let data = org.map(|o| Membership { id: org_id, name: o.name, role }).into_iter().collect();
                Ok(Page { data, has_more: false, next_after: None })
            }
        }
    }

    async fn list_members(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Member>, AuthError> {
        self.access(principal, organization_id).await?;
        let after = page_cursor::<UserId>(&page)?;
        let limit = page.limit();
        let org = organization_id.to_string();
        let rows = self
            .db
            .run(move |conn| {
                store::list_members(conn, &org, after.as_deref(), i64::from(limit) + 1).map_err(AuthError::from)
            })
            .await?;
        let page = Page::from_overfetch(rows, limit, |(m, _)| m.user_id.clone());
        page.try_map(|row| member_of(&row))
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id))]
    async fn add_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: AddMemberRequest,
    ) -> Result<Member, AuthError> {
        let access = self.access(principal, organization_id).await?;
        access.require_manage()?;
        if request.role == Role::Owner {
            access.require_owner()?;
        }
        let email = normalize_email(&request.email)?;
        let now = self.now();
        let org = organization_id.to_string();
        let role = request.role.as_str().to_owned();
        let row = self
            .db
            .transaction(move |conn| {
                let user = store::find_user_by_email(conn, &email)?.ok_or(AuthError::UserNotFound)?;
                let membership =
                    MembershipRow { organization_id: org, user_id: user.id.clone(), role, created_at: now };
                if !store::insert_membership_if_new(conn, &membership)? {
                    return Err(AuthError::AlreadyMember);
                }
                let keys = store::key_lookups_created_by(conn, &membership.organization_id, &user.id)?;
                Ok::<_, AuthError>(((membership, user), keys))
            })
            .await?;
        let (row, keys) = row;
        // Keys the user created here before leaving act on their authority again.
        self.credentials.forget_api_keys(&keys).await;
        member_of(&row)
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id, member.id = %user_id))]
    async fn update_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
        request: UpdateMemberRequest,
    ) -> Result<Member, AuthError> {
        let access = self.access(principal, organization_id).await?;
        access.require_manage()?;
        let actor_is_owner = access.role() == Role::Owner;
        let new_role = request.role;
        let now = self.now();
        let (org, user) = (organization_id.to_string(), user_id.to_string());
        let row = self
            .db
            .transaction(move |conn| {
                store::lock_organization(conn, &org, now)?;
                let (mut membership, user_row) =
                    store::find_member(conn, &org, &user)?.ok_or(AuthError::MemberNotFound)?;
                let current = parse_role(&membership.role)?;
                if (current == Role::Owner || new_role == Role::Owner) && !actor_is_owner {
                    return Err(AuthError::PermissionDenied);
                }
                if current == Role::Owner && new_role != Role::Owner && store::count_owners(conn, &org)? <= 1 {
                    return Err(AuthError::LastOwner);
                }
                store::update_role(conn, &org, &user, new_role.as_str())?;
                membership.role = new_role.as_str().to_owned();
                let keys = store::key_lookups_created_by(conn, &org, &user)?;
                Ok(((membership, user_row), keys))
            })
            .await?;
        let (row, keys) = row;
        self.credentials.forget_api_keys(&keys).await;
        member_of(&row)
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id, member.id = %user_id))]
    async fn remove_member(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        user_id: UserId,
    ) -> Result<(), AuthError> {
        let access = self.access(principal, organization_id).await?;
        let leaving = access.user_id() == Some(user_id);
        if !leaving {
            access.require_manage()?;
        }
        let actor_is_owner = access.role() == Role::Owner;
        let now = self.now();
        let (org, user) = (organization_id.to_string(), user_id.to_string());
        let keys = self
            .db
            .transaction(move |conn| {
                store::lock_organization(conn, &org, now)?;
                let role = store::find_role(conn, &org, &user)?.ok_or(AuthError::MemberNotFound)?;
                if parse_role(&role)? == Role::Owner {
                    if !leaving && !actor_is_owner {
                        return Err(AuthError::PermissionDenied);
                    }
                    if store::count_owners(conn, &org)? <= 1 {
                        return Err(AuthError::LastOwner);
                    }
                }
                store::delete_membership(conn, &org, &user)?;
                store::key_lookups_created_by(conn, &org, &user).map_err(AuthError::from)
            })
            .await?;
        // The user's admin keys here stop granting admin at once.
        self.credentials.forget_api_keys(&keys).await;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id, api_key.id))]
    async fn create_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: CreateApiKeyRequest,
    ) -> Result<CreatedApiKey, AuthError> {
        let access = self.access(principal, organization_id).await?;
        access.require_manage()?;
        let name = clean_name("name", &request.name, true)?.unwrap_or_default();
        let mut scopes = request.scopes.unwrap_or_else(|| self.scopes.defaults());
        scopes.sort();
        scopes.dedup();
        if let Some(unknown) = scopes.iter().find(|s| !self.scopes.contains(s)) {
            let known = self.scopes.all().iter().map(|d| d.name).collect::<Vec<_>>().join(", ");
            return Err(AuthError::validation(
                "scopes",
                format!("Unknown scope {unknown:?}; the scopes are: {known}."),
            ));
        }
        let now = self.clock.now();
        if request.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::validation("expires_at", "`expires_at` must be in the future."));
        }
        let generated = token::new_api_key()?;
        let id = ApiKeyId::new();
        tracing::Span::current().record("api_key.id", tracing::field::display(id));
        let row = ApiKeyRow {
            id: id.to_string(),
            organization_id: organization_id.to_string(),
            created_by: access.creator().map(|u| u.to_string()),
            name: name.clone(),
            lookup: generated.lookup,
            secret_digest: generated.secret_digest,
            scopes: scopes.join(" "),
            created_at: now.naive_utc(),
            expires_at: request.expires_at.map(|at| at.naive_utc()),
            last_used_at: None,
            revoked_at: None,
        };
        let created_at = utc(row.created_at);
        let expires_at = row.expires_at.map(utc);
        self.db.run(move |conn| store::insert_api_key(conn, &row).map_err(AuthError::from)).await?;
        tracing::info!("api key created");
        Ok(CreatedApiKey { id, name, prefix: generated.prefix, key: generated.key, scopes, created_at, expires_at })
    }

    async fn list_api_keys(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<ApiKey>, AuthError> {
        self.access(principal, organization_id).await?.require_manage()?;
        let after = page_cursor::<ApiKeyId>(&page)?;
        let limit = page.limit();
        let org = organization_id.to_string();
        let rows = self
            .db
            .run(move |conn| {
                store::list_api_keys(conn, &org, after.as_deref(), i64::from(limit) + 1).map_err(AuthError::from)
            })
            .await?;
        let page = Page::from_overfetch(rows, limit, |row| row.id.clone());
        page.try_map(|row| api_key_of(&row))
    }

    #[tracing::instrument(skip_all, fields(organization.id = %organization_id, api_key.id = %key_id))]
    async fn revoke_api_key(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        key_id: ApiKeyId,
    ) -> Result<(), AuthError> {
        self.access(principal, organization_id).await?.require_manage()?;
        let now = self.now();
        let (org, key) = (organization_id.to_string(), key_id.to_string());
        let lookup = self
            .db
            .transaction(move |conn| store::revoke_api_key(conn, &org, &key, now).map_err(AuthError::from))
            .await?
            .ok_or(AuthError::ApiKeyNotFound)?;
        self.credentials.forget_api_keys(&[lookup]).await;
        tracing::info!("api key revoked");
        Ok(())
    }

    async fn ready(&self) -> Result<(), AuthError> {
        self.db.ping().await.map_err(AuthError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(normalize_email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in [
            "",
            "ada",
            "@example.com",
            "ada@",
            "ada@example",
            "a b@example.com",
            "a@b@example.com",
            "ada@.com",
            "ada\u{0}@example.com",
            "ada@exam\u{202E}ple.com",
            "ada\u{1}@example.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(clean_name("name", "  Acme  ", true).unwrap().as_deref(), Some("Acme"));
        assert!(clean_name("name", "   ", true).is_err());
        assert_eq!(clean_name("name", "", false).unwrap(), None);
        assert!(clean_name("name", &"x".repeat(201), false).is_err());
        assert!(clean_name("name", "a\u{0}b", false).is_err());
        assert!(clean_name("name", "a\u{202E}b", false).is_err());
    }

    #[test]
    fn access_rules() {
        let user = UserId::new();
        assert!(Access::User { user_id: user, role: Role::Member }.require_manage().is_err());
        assert!(Access::User { user_id: user, role: Role::Admin }.require_manage().is_ok());
        assert!(Access::User { user_id: user, role: Role::Admin }.require_owner().is_err());
        let key = |admin| Access::Key { admin, created_by: Some(user) };
        assert_eq!(key(false).require_manage(), Err(AuthError::InsufficientScope("admin".into())));
        assert!(key(true).require_manage().is_ok());
        assert!(key(true).require_owner().is_err());
        assert_eq!(key(true).creator(), Some(user));
    }
}
