//! Credentials served from the platform cache, so that an authenticated request whose
//! credential is cached makes no database query.
//!
//! What is cached, by what key, and what invalidates it:
//! - a session, by its token's digest: logout (that session), a password change (the user's
//!   other sessions), a platform-administrator change (the user's sessions);
//! - an API key, by its lookup part: its revocation, and any change of its creator's membership
//!   in its organization (which decides whether an `admin` key grants admin);
//! - an organization's name, by id (organizations are never renamed or deleted today).
//!
//! Unknown digests and lookups are cached too (as `None`): a random token costs one query per
//! cache lifetime, not one per request. Keys are derived from the secret itself (digest or
//! lookup), which is unique across tenants. Expiry is checked on every read. The staleness bounds
//! are those of `shared::cache` with `auth.cache` (docs/PLATFORM.md): the process that revokes
//! refuses at once, other processes as soon as the invalidation reaches them, and in every case
//! within `auth.cache.l1_ttl_ms`.

use crate::error::AuthError;
use crate::store::{self, ApiKeyRow, OrganizationRow};
use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use shared::cache::{Cache, CacheKey};
use shared::db::Db;
use shared::module::Platform;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

/// `last_used_at` of an API key is written at most this often, so that a busy key does not
/// turn every request into a write.
pub(crate) const LAST_USED_RESOLUTION: chrono::Duration = chrono::Duration::seconds(60);

/// A session as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CachedSession {
    pub id: String,
    pub user_id: String,
    pub token_digest: String,
    pub expires_at: NaiveDateTime,
    pub revoked: bool,
    pub platform_admin: bool,
}

/// An API key as the cache holds it, with its creator's role in the key's organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CachedKey {
    pub row: ApiKeyRow,
    pub creator_role: Option<String>,
}

/// An organization as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CachedOrganization {
    pub row: OrganizationRow,
}

pub(crate) struct Credentials {
    db: Db,
    sessions: Cache<Option<CachedSession>>,
    keys: Cache<Option<CachedKey>>,
    organizations: Cache<Option<CachedOrganization>>,
    /// When (service time) this process last wrote each key's `last_used_at`.
    touched: Mutex<HashMap<String, NaiveDateTime>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("sessions", &self.sessions).field("keys", &self.keys).finish()
    }
}

fn cache<V>(name: &str, config: &shared::cache::CacheConfig, platform: &Platform) -> Cache<V>
where
    V: Clone + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    Cache::new(name, config.clone(), platform.cache_backplane.clone(), platform.clock.clone())
        .observe(platform.metrics.cache())
}

fn session_key(digest: &str) -> CacheKey {
    CacheKey::global("sessions", digest)
}

fn api_key_key(lookup: &str) -> CacheKey {
    CacheKey::global("api_keys", lookup)
}

impl Credentials {
    pub(crate) fn new(db: Db, config: &shared::cache::CacheConfig, platform: &Platform) -> Self {
        Self {
            db,
            sessions: cache("auth.sessions", config, platform),
            keys: cache("auth.api_keys", config, platform),
            organizations: cache("auth.organizations", config, platform),
            touched: Mutex::new(HashMap::new()),
        }
    }

    /// The session whose token has this digest, if any.
    pub(crate) async fn session(&self, digest: &str) -> Result<Option<CachedSession>, AuthError> {
        let db = self.db.clone();
        let lookup = digest.to_owned();
        self.sessions
            .get_or_load(&session_key(digest), || async move {
                let found =
                    db.run(move |conn| store::find_session_by_digest(conn, &lookup).map_err(AuthError::from)).await?;
                Ok(found.map(|(row, platform_admin)| CachedSession {
                    id: row.id,
                    user_id: row.user_id,
                    token_digest: row.token_digest,
                    expires_at: row.expires_at,
                    revoked: row.revoked_at.is_some(),
                    platform_admin,
                }))
            })
            .await
    }

    /// The API key with this lookup part, if any.
    pub(crate) async fn api_key(&self, lookup: &str) -> Result<Option<CachedKey>, AuthError> {
        let db = self.db.clone();
        let lookup = lookup.to_owned();
        self.keys
            .get_or_load(&api_key_key(&lookup.clone()), || async move {
                let found =
                    db.run(move |conn| store::find_api_key_by_lookup(conn, &lookup).map_err(AuthError::from)).await?;
                Ok(found.map(|(row, creator_role)| CachedKey { row, creator_role }))
            })
            .await
    }

    /// The organization with this id, if any.
    pub(crate) async fn organization(&self, id: &str) -> Result<Option<OrganizationRow>, AuthError> {
        let db = self.db.clone();
        let id = id.to_owned();
        let key = CacheKey::organization(&id, "organizations", &id);
        let found = self
            .organizations
            .get_or_load(&key, || async move {
                let row = db.run(move |conn| store::find_organization(conn, &id).map_err(AuthError::from)).await?;
                Ok::<_, AuthError>(row.map(|row| CachedOrganization { row }))
            })
            .await?;
        Ok(found.map(|o| o.row))
    }

    /// Records the key's use, at most once per [`LAST_USED_RESOLUTION`] per process, in the
    /// background: the request does not wait for the write.
    pub(crate) fn touch(&self, key: &ApiKeyRow, now: NaiveDateTime) -> Option<tokio::task::JoinHandle<()>> {
        let recent = |at: &NaiveDateTime| now - *at < LAST_USED_RESOLUTION;
        if key.last_used_at.as_ref().is_some_and(recent) {
            return None;
        }
        {
            let mut touched = self.touched.lock().unwrap_or_else(PoisonError::into_inner);
            if touched.get(&key.id).is_some_and(recent) {
                return None;
            }
            if touched.len() > 100_000 {
                touched.retain(|_, at| recent(at));
            }
            touched.insert(key.id.clone(), now);
        }
        let db = self.db.clone();
        let id = key.id.clone();
        Some(tokio::spawn(async move {
            let written = db.run(move |conn| store::touch_api_key(conn, &id, now).map_err(AuthError::from)).await;
            if let Err(error) = written {
                tracing::warn!(error.cause = %error, "cannot record an API key's last use");
            }
        }))
    }

    pub(crate) async fn forget_sessions(&self, digests: &[String]) {
        for digest in digests {
            self.sessions.invalidate(&session_key(digest)).await;
        }
    }

    pub(crate) async fn forget_api_keys(&self, lookups: &[String]) {
        for lookup in lookups {
            self.keys.invalidate(&api_key_key(lookup)).await;
        }
    }
}
