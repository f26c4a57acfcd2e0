//! The auth domain's tables and the synchronous queries over them. Every function takes a
//! `&mut Conn` and is called from `Db::run`/`Db::transaction`, never on an async worker.

use crate::error::AuthError;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use serde::{Deserialize, Serialize};
use shared::db::Conn;

pub(crate) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

pub(crate) mod schema {
    diesel::table! {
        users (id) {
            id -> Text,
            email -> Text,
            name -> Nullable<Text>,
            password_hash -> Text,
            created_at -> Timestamp,
            updated_at -> Timestamp,
            platform_admin -> Bool,
        }
    }

    diesel::table! {
        organizations (id) {
            id -> Text,
            name -> Text,
            created_at -> Timestamp,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        memberships (organization_id, user_id) {
            organization_id -> Text,
            user_id -> Text,
            role -> Text,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        sessions (id) {
            id -> Text,
            user_id -> Text,
            token_digest -> Text,
            created_at -> Timestamp,
            expires_at -> Timestamp,
            revoked_at -> Nullable<Timestamp>,
        }
    }

    diesel::table! {
        api_keys (id) {
            id -> Text,
            organization_id -> Text,
            created_by -> Nullable<Text>,
            name -> Text,
            lookup -> Text,
            secret_digest -> Text,
            scopes -> Text,
            created_at -> Timestamp,
            expires_at -> Nullable<Timestamp>,
            last_used_at -> Nullable<Timestamp>,
            revoked_at -> Nullable<Timestamp>,
        }
    }

    diesel::joinable!(memberships -> users (user_id));
    diesel::joinable!(sessions -> users (user_id));
    diesel::joinable!(memberships -> organizations (organization_id));
    diesel::allow_tables_to_appear_in_same_query!(users, organizations, memberships, sessions, api_keys);
}

use schema::{api_keys, memberships, organizations, sessions, users};

shared::impl_from_db_errors!(AuthError);

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub(crate) struct UserRow {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub password_hash: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub platform_admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = organizations)]
pub(crate) struct OrganizationRow {
    pub id: String,
    pub name: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = memberships)]
pub(crate) struct MembershipRow {
    pub organization_id: String,
    pub user_id: String,
    pub role: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = sessions)]
pub(crate) struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub token_digest: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, Serialize, Deserialize)]
#[diesel(table_name = api_keys)]
pub(crate) struct ApiKeyRow {
    pub id: String,
    pub organization_id: String,
    pub created_by: Option<String>,
    pub name: String,
    pub lookup: String,
    pub secret_digest: String,
    pub scopes: String,
    pub created_at: NaiveDateTime,
    pub expires_at: Option<NaiveDateTime>,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
}

// --- users ---

/// Inserts the user unless the email is taken; false when it is. `ON CONFLICT DO NOTHING`
/// rather than a caught unique violation, because PostgreSQL writes the duplicate key (the
/// email) into its server log with every unique-violation error.
pub(crate) fn insert_user_if_new(conn: &mut Conn, row: &UserRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(users::table).values(row).on_conflict(users::email).do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

pub(crate) fn find_user_by_email(conn: &mut Conn, email: &str) -> QueryResult<Option<UserRow>> {
    users::table.filter(users::email.eq(email)).select(UserRow::as_select()).first(conn).optional()
}

pub(crate) fn find_user(conn: &mut Conn, id: &str) -> QueryResult<Option<UserRow>> {
    users::table.find(id).select(UserRow::as_select()).first(conn).optional()
}

/// Flags or unflags the account with this email as a platform administrator; false when
/// there is no such account.
pub(crate) fn set_platform_admin(conn: &mut Conn, email: &str, admin: bool, now: NaiveDateTime) -> QueryResult<bool> {
    diesel::update(users::table.filter(users::email.eq(email)))
        .set((users::platform_admin.eq(admin), users::updated_at.eq(now)))
        .execute(conn)
        .map(|n| n == 1)
}

pub(crate) fn update_password_hash(conn: &mut Conn, id: &str, hash: &str, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(users::table.find(id))
        .set((users::password_hash.eq(hash), users::updated_at.eq(now)))
        .execute(conn)
        .map(drop)
}

// --- organizations and memberships ---

pub(crate) fn insert_organization(conn: &mut Conn, row: &OrganizationRow) -> QueryResult<()> {
    diesel::insert_into(organizations::table).values(row).execute(conn).map(drop)
}

pub(crate) fn find_organization(conn: &mut Conn, id: &str) -> QueryResult<Option<OrganizationRow>> {
    organizations::table.find(id).select(OrganizationRow::as_select()).first(conn).optional()
}

/// Writes the organization row first thing in a transaction. PostgreSQL then holds its row
/// lock and SQLite its write lock until commit, so two concurrent role changes cannot both
/// see "two owners left" and leave none.
pub(crate) fn lock_organization(conn: &mut Conn, id: &str, now: NaiveDateTime) -> QueryResult<bool> {
    diesel::update(organizations::table.find(id)).set(organizations::updated_at.eq(now)).execute(conn).map(|n| n == 1)
}

pub(crate) fn insert_membership(conn: &mut Conn, row: &MembershipRow) -> QueryResult<()> {
    diesel::insert_into(memberships::table).values(row).execute(conn).map(drop)
}

/// Inserts the membership unless the user is already a member; false when they are.
pub(crate) fn insert_membership_if_new(conn: &mut Conn, row: &MembershipRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(memberships::table)
        .values(row)
        .on_conflict((memberships::organization_id, memberships::user_id))
        .do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

pub(crate) fn find_role(conn: &mut Conn, organization_id: &str, user_id: &str) -> QueryResult<Option<String>> {
    memberships::table.find((organization_id, user_id)).select(memberships::role).first(conn).optional()
}

pub(crate) fn find_member(
    conn: &mut Conn,
    organization_id: &str,
    user_id: &str,
) -> QueryResult<Option<(MembershipRow, UserRow)>> {
    memberships::table
        .inner_join(users::table)
        .filter(memberships::organization_id.eq(organization_id))
        .filter(memberships::user_id.eq(user_id))
        .select((MembershipRow::as_select(), UserRow::as_select()))
        .first(conn)
        .optional()
}

/// Up to `limit` members after `after` (a user id), in user id order: one query, one join.
pub(crate) fn list_members(
    conn: &mut Conn,
    organization_id: &str,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<(MembershipRow, UserRow)>> {
    let mut query = memberships::table
        .inner_join(users::table)
        .filter(memberships::organization_id.eq(organization_id))
        .select((MembershipRow::as_select(), UserRow::as_select()))
        .order(memberships::user_id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(memberships::user_id.gt(after.to_owned()));
    }
    query.load(conn)
}

/// The organizations of a user, with their role, in organization id order.
pub(crate) fn list_memberships(
    conn: &mut Conn,
    user_id: &str,
    after: Option<&str>,
    limit: Option<i64>,
) -> QueryResult<Vec<(MembershipRow, OrganizationRow)>> {
    let mut query = memberships::table
        .inner_join(organizations::table)
        .filter(memberships::user_id.eq(user_id))
        .select((MembershipRow::as_select(), OrganizationRow::as_select()))
        .order(memberships::organization_id.asc())
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(memberships::organization_id.gt(after.to_owned()));
    }
    if let Some(limit) = limit {
        query = query.limit(limit);
    }
    query.load(conn)
}

pub(crate) fn count_owners(conn: &mut Conn, organization_id: &str) -> QueryResult<i64> {
    memberships::table
        .filter(memberships::organization_id.eq(organization_id))
        .filter(memberships::role.eq("owner"))
        .count()
        .get_result(conn)
}

pub(crate) fn update_role(conn: &mut Conn, organization_id: &str, user_id: &str, role: &str) -> QueryResult<()> {
    diesel::update(memberships::table.find((organization_id, user_id)))
        .set(memberships::role.eq(role))
        .execute(conn)
        .map(drop)
}

pub(crate) fn delete_membership(conn: &mut Conn, organization_id: &str, user_id: &str) -> QueryResult<()> {
    diesel::delete(memberships::table.find((organization_id, user_id))).execute(conn).map(drop)
}

// --- sessions ---

pub(crate) fn insert_session(conn: &mut Conn, row: &SessionRow) -> QueryResult<()> {
    diesel::insert_into(sessions::table).values(row).execute(conn).map(drop)
}

/// The session with this token digest and whether its user is a platform administrator.
pub(crate) fn find_session_by_digest(conn: &mut Conn, digest: &str) -> QueryResult<Option<(SessionRow, bool)>> {
    sessions::table
        .inner_join(users::table)
        .filter(sessions::token_digest.eq(digest))
        .select((SessionRow::as_select(), users::platform_admin))
        .first(conn)
        .optional()
}

pub(crate) fn revoke_session(conn: &mut Conn, id: &str, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(sessions::table.find(id).filter(sessions::revoked_at.is_null()))
        .set(sessions::revoked_at.eq(now))
        .execute(conn)
        .map(drop)
}

/// Revokes every live session of a user except `keep`; returns their token digests (to drop
/// them from the credential cache). Run it in a transaction.
pub(crate) fn revoke_other_sessions(
    conn: &mut Conn,
    user_id: &str,
    keep: &str,
    now: NaiveDateTime,
) -> QueryResult<Vec<String>> {
    let live = sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::id.ne(keep))
        .filter(sessions::revoked_at.is_null());
    let digests = live.select(sessions::token_digest).load(conn)?;
    diesel::update(live).set(sessions::revoked_at.eq(now)).execute(conn)?;
    Ok(digests)
}

/// The token digests of a user's live sessions.
pub(crate) fn live_session_digests(conn: &mut Conn, user_id: &str) -> QueryResult<Vec<String>> {
    sessions::table
        .filter(sessions::user_id.eq(user_id))
        .filter(sessions::revoked_at.is_null())
        .select(sessions::token_digest)
        .load(conn)
}

/// The lookup parts of the live keys a user created in an organization: the keys whose
/// effective scopes follow that user's role there.
pub(crate) fn key_lookups_created_by(
    conn: &mut Conn,
    organization_id: &str,
    user_id: &str,
) -> QueryResult<Vec<String>> {
    api_keys::table
        .filter(api_keys::organization_id.eq(organization_id))
        .filter(api_keys::created_by.eq(user_id))
        .filter(api_keys::revoked_at.is_null())
        .select(api_keys::lookup)
        .load(conn)
}

// --- API keys ---

pub(crate) fn insert_api_key(conn: &mut Conn, row: &ApiKeyRow) -> QueryResult<()> {
    diesel::insert_into(api_keys::table).values(row).execute(conn).map(drop)
}

/// The key with this lookup part, and its creator's current role in the key's organization
/// (none when the creator left it or was deleted): one query.
pub(crate) fn find_api_key_by_lookup(
    conn: &mut Conn,
    lookup: &str,
) -> QueryResult<Option<(ApiKeyRow, Option<String>)>> {
    api_keys::table
        .left_join(
            memberships::table.on(memberships::organization_id
                .eq(api_keys::organization_id)
                .and(api_keys::created_by.eq(memberships::user_id.nullable()))),
        )
        .filter(api_keys::lookup.eq(lookup))
        .select((ApiKeyRow::as_select(), memberships::role.nullable()))
        .first(conn)
        .optional()
}

/// Up to `limit` live (unrevoked) keys of an organization after `after`, in id order.
pub(crate) fn list_api_keys(
    conn: &mut Conn,
    organization_id: &str,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<ApiKeyRow>> {
    let mut query = api_keys::table
        .filter(api_keys::organization_id.eq(organization_id))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKeyRow::as_select())
        .order(api_keys::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(api_keys::id.gt(after.to_owned()));
    }
    query.load(conn)
}

/// Revokes a live key of the organization; its lookup part, or none when there is no such key.
/// Run it in a transaction.
pub(crate) fn revoke_api_key(
    conn: &mut Conn,
    organization_id: &str,
    id: &str,
    now: NaiveDateTime,
) -> QueryResult<Option<String>> {
    let live = api_keys::table
        .filter(api_keys::id.eq(id))
        .filter(api_keys::organization_id.eq(organization_id))
        .filter(api_keys::revoked_at.is_null());
    let Some(lookup) = live.select(api_keys::lookup).first::<String>(conn).optional()? else { return Ok(None) };
    diesel::update(live).set(api_keys::revoked_at.eq(now)).execute(conn)?;
    Ok(Some(lookup))
}

pub(crate) fn touch_api_key(conn: &mut Conn, id: &str, now: NaiveDateTime) -> QueryResult<()> {
    diesel::update(api_keys::table.find(id)).set(api_keys::last_used_at.eq(now)).execute(conn).map(drop)
}
