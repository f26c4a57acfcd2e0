//! The retrieval tables and the synchronous queries over them. Every function takes a
//! `&mut Conn` and runs inside `Db::run`/`Db::transaction`, never on an async worker.
//!
//! Every change to indexed chunks writes a row of `rag_changes` in the same transaction
//! ([`log_change`]); the processes' indexes follow that log by sequence number.
//!
//! The chunks of an ingestion in progress wait in `rag_staged_chunks`, which no search, rebuild
//! or catch-up reads; the ingestion's index step moves them to `rag_chunks` (the last section).

use crate::error::InferenceError;
use diesel::prelude::*;
use shared::db::{Conn, Db, DbError};

pub(crate) mod schema {
    diesel::table! {
        rag_files (id) {
            id -> Text,
            organization_id -> Text,
            filename -> Text,
            purpose -> Text,
            content_type -> Nullable<Text>,
            bytes -> BigInt,
            sha256 -> Text,
            content -> Binary,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        rag_vector_stores (id) {
            id -> Text,
            organization_id -> Text,
            name -> Nullable<Text>,
            metadata -> Text,
            expires_after_days -> Nullable<Integer>,
            last_active_at -> BigInt,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        rag_store_files (vector_store_id, file_id) {
            vector_store_id -> Text,
            file_id -> Text,
            organization_id -> Text,
            api_key_id -> Nullable<Text>,
            status -> Text,
            last_error_code -> Nullable<Text>,
            last_error_message -> Nullable<Text>,
            attributes -> Text,
            max_chunk_size_tokens -> Integer,
            chunk_overlap_tokens -> Integer,
            content_hash -> Nullable<Text>,
            embedding_model -> Nullable<Text>,
            usage_bytes -> BigInt,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        rag_chunks (id) {
            id -> Text,
            organization_id -> Text,
            vector_store_id -> Text,
            file_id -> Text,
            ordinal -> Integer,
            text -> Text,
            tokens -> Integer,
            embedding -> Nullable<Binary>,
            content_hash -> Text,
        }
    }

    diesel::table! {
        rag_changes (seq) {
            seq -> BigInt,
            organization_id -> Text,
            vector_store_id -> Text,
            file_id -> Nullable<Text>,
            kind -> Text,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        rag_staged_chunks (vector_store_id, file_id, ordinal) {
            vector_store_id -> Text,
            file_id -> Text,
            ordinal -> Integer,
            embed_batch -> Integer,
            id -> Text,
            organization_id -> Text,
            text -> Text,
            tokens -> Integer,
            embedding -> Nullable<Binary>,
            content_hash -> Text,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(
        rag_files,
        rag_vector_stores,
        rag_store_files,
        rag_chunks,
        rag_changes,
        rag_staged_chunks
    );
}

use schema::*;

/// What a database closure of the retrieval code fails with: the domain's error, mapped once
/// (a lost database is `Unavailable`, anything else `Internal`). Not a `From` on
/// `InferenceError` itself, which would make the remote client's error types ambiguous.
#[derive(Debug)]
pub(crate) struct Fail(pub InferenceError);

impl From<InferenceError> for Fail {
    fn from(e: InferenceError) -> Self {
        Self(e)
    }
}

impl From<DbError> for Fail {
    fn from(e: DbError) -> Self {
        Self(e.into_error())
    }
}

impl From<diesel::result::Error> for Fail {
    fn from(e: diesel::result::Error) -> Self {
        Self(DbError::from(e).into_error())
    }
}

/// `Db::run` for the retrieval code.
pub(crate) async fn run<T, F>(db: &Db, f: F) -> Result<T, InferenceError>
where
    F: FnOnce(&mut Conn) -> Result<T, Fail> + Send + 'static,
    T: Send + 'static,
{
    db.run(f).await.map_err(|Fail(e)| e)
}

/// `Db::transaction` for the retrieval code.
pub(crate) async fn transaction<T, F>(db: &Db, f: F) -> Result<T, InferenceError>
where
    F: FnOnce(&mut Conn) -> Result<T, Fail> + Send + 'static,
    T: Send + 'static,
{
    db.transaction(f).await.map_err(|Fail(e)| e)
}

/// Vector-store file states.
pub(crate) const IN_PROGRESS: &str = "in_progress";
pub(crate) const COMPLETED: &str = "completed";
pub(crate) const FAILED: &str = "failed";

/// Change kinds.
pub(crate) const FILE_INDEXED: &str = "file_indexed";
pub(crate) const FILE_REMOVED: &str = "file_removed";
pub(crate) const STORE_REMOVED: &str = "store_removed";

/// A file without its content (what lists and lookups need).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rag_files)]
pub(crate) struct FileMeta {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub content_type: Option<String>,
    pub bytes: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = rag_files)]
pub(crate) struct NewFileRow {
    pub id: String,
    pub organization_id: String,
    pub filename: String,
    pub purpose: String,
    pub content_type: Option<String>,
    pub bytes: i64,
    pub sha256: String,
    pub content: Vec<u8>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = rag_vector_stores)]
#[diesel(treat_none_as_null = true)]
pub(crate) struct StoreRow {
    pub id: String,
    pub organization_id: String,
    pub name: Option<String>,
    pub metadata: String,
    pub expires_after_days: Option<i32>,
    pub last_active_at: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = rag_store_files)]
pub(crate) struct StoreFileRow {
    pub vector_store_id: String,
    pub file_id: String,
    pub organization_id: String,
    pub api_key_id: Option<String>,
    pub status: String,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub attributes: String,
    pub max_chunk_size_tokens: i32,
    pub chunk_overlap_tokens: i32,
    pub content_hash: Option<String>,
    pub embedding_model: Option<String>,
    pub usage_bytes: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = rag_chunks)]
pub(crate) struct ChunkRow {
    pub id: String,
    pub organization_id: String,
    pub vector_store_id: String,
    pub file_id: String,
    pub ordinal: i32,
    pub text: String,
    pub tokens: i32,
    pub embedding: Option<Vec<u8>>,
    pub content_hash: String,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = rag_changes)]
pub(crate) struct ChangeRow {
    pub seq: i64,
    pub organization_id: String,
    pub vector_store_id: String,
    pub file_id: Option<String>,
    pub kind: String,
}

/// A page request in query terms: the keyset bound and the direction the rows are read in.
/// The service turns OpenAI's `order`/`after`/`before` into this, and reverses the rows when
/// it read them against the requested order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keyset {
    /// Read ascending by id (else descending).
    pub ascending: bool,
    /// Only ids after this one in the reading direction.
    pub from: Option<String>,
    /// Rows to read (the page size plus one, to learn `has_more`).
    pub limit: i64,
}

macro_rules! keyset {
    ($query:ident, $column:expr, $keyset:expr) => {{
        let k = $keyset;
        if let Some(from) = &k.from {
            $query = if k.ascending {
                $query.filter($column.gt(from.clone()))
            } else {
                $query.filter($column.lt(from.clone()))
            };
        }
        $query = if k.ascending { $query.order($column.asc()) } else { $query.order($column.desc()) };
        $query.limit(k.limit)
    }};
}

// --- files ---

pub(crate) fn insert_file(conn: &mut Conn, row: &NewFileRow) -> QueryResult<()> {
    diesel::insert_into(rag_files::table).values(row).execute(conn).map(drop)
}

pub(crate) fn find_file(conn: &mut Conn, organization_id: &str, id: &str) -> QueryResult<Option<FileMeta>> {
    rag_files::table
        .find(id)
        .filter(rag_files::organization_id.eq(organization_id))
        .select(FileMeta::as_select())
        .first(conn)
        .optional()
}

pub(crate) fn file_content(
    conn: &mut Conn,
    organization_id: &str,
    id: &str,
) -> QueryResult<Option<(FileMeta, Vec<u8>)>> {
    rag_files::table
        .find(id)
        .filter(rag_files::organization_id.eq(organization_id))
        .select((FileMeta::as_select(), rag_files::content))
        .first(conn)
        .optional()
}

pub(crate) fn files_page(
    conn: &mut Conn,
    organization_id: &str,
    purpose: Option<&str>,
    keyset: &Keyset,
) -> QueryResult<Vec<FileMeta>> {
    let mut query = rag_files::table.filter(rag_files::organization_id.eq(organization_id)).into_boxed();
    if let Some(purpose) = purpose {
        query = query.filter(rag_files::purpose.eq(purpose.to_owned()));
    }
    keyset!(query, rag_files::id, keyset).select(FileMeta::as_select()).load(conn)
}

/// Deletes a file: its chunks, its attachments (a `file_removed` change for each store) and
/// the file. False when the organization has no such file.
pub(crate) fn delete_file(conn: &mut Conn, organization_id: &str, id: &str, now: i64) -> QueryResult<bool> {
    let stores: Vec<String> = rag_store_files::table
        .filter(rag_store_files::file_id.eq(id).and(rag_store_files::organization_id.eq(organization_id)))
        .select(rag_store_files::vector_store_id)
        .load(conn)?;
    let deleted = diesel::delete(rag_files::table.find(id).filter(rag_files::organization_id.eq(organization_id)))
        .execute(conn)?;
    if deleted == 0 {
        return Ok(false);
    }
    diesel::delete(rag_chunks::table.filter(rag_chunks::file_id.eq(id))).execute(conn)?;
    diesel::delete(rag_store_files::table.filter(rag_store_files::file_id.eq(id))).execute(conn)?;
    for store in stores {
        log_change(conn, organization_id, &store, Some(id), FILE_REMOVED, now)?;
    }
    Ok(true)
}

// --- vector stores ---

pub(crate) fn insert_store(conn: &mut Conn, row: &StoreRow) -> QueryResult<()> {
    diesel::insert_into(rag_vector_stores::table).values(row).execute(conn).map(drop)
}

pub(crate) fn find_store(conn: &mut Conn, organization_id: &str, id: &str) -> QueryResult<Option<StoreRow>> {
    rag_vector_stores::table
        .find(id)
        .filter(rag_vector_stores::organization_id.eq(organization_id))
        .select(StoreRow::as_select())
        .first(conn)
        .optional()
}

pub(crate) fn update_store(conn: &mut Conn, row: &StoreRow) -> QueryResult<()> {
    diesel::update(rag_vector_stores::table.find(&row.id)).set(row).execute(conn).map(drop)
}

/// Moves `last_active_at` forward (never back).
pub(crate) fn touch_store(conn: &mut Conn, id: &str, now: i64) -> QueryResult<()> {
    diesel::update(rag_vector_stores::table.find(id).filter(rag_vector_stores::last_active_at.lt(now)))
        .set(rag_vector_stores::last_active_at.eq(now))
        .execute(conn)
        .map(drop)
}

/// Sets `last_active_at`; false when the store is gone. In a transaction, the row stays locked
/// until the commit, so the purge (which re-tests the expiry as it deletes) keeps it.
pub(crate) fn mark_active(conn: &mut Conn, id: &str, at: i64) -> QueryResult<bool> {
    diesel::update(rag_vector_stores::table.find(id))
        .set(rag_vector_stores::last_active_at.eq(at))
        .execute(conn)
        .map(|n| n == 1)
}

/// A store's expiry has passed at the bound time: `last_active_at + days <= now`. SQL of both
/// backends (NULL days: never).
const EXPIRED_AT: &str = "last_active_at + CAST(expires_after_days AS BIGINT) * 86400 <= ";

/// Stores whose expiry passed at `now`, oldest activity first, at most `limit`:
/// (organization, id).
pub(crate) fn expired_stores(conn: &mut Conn, now: i64, limit: i64) -> QueryResult<Vec<(String, String)>> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Bool};
    rag_vector_stores::table
        .filter(rag_vector_stores::expires_after_days.is_not_null())
        // The shortest expiry is a day: the range the expiry index serves.
        .filter(rag_vector_stores::last_active_at.le(now - 86_400))
        .filter(sql::<Bool>(EXPIRED_AT).bind::<BigInt, _>(now))
        .order((rag_vector_stores::last_active_at.asc(), rag_vector_stores::id.asc()))
        .limit(limit)
        .select((rag_vector_stores::organization_id, rag_vector_stores::id))
        .load(conn)
}

pub(crate) fn stores_page(conn: &mut Conn, organization_id: &str, keyset: &Keyset) -> QueryResult<Vec<StoreRow>> {
    let mut query =
        rag_vector_stores::table.filter(rag_vector_stores::organization_id.eq(organization_id)).into_boxed();
    keyset!(query, rag_vector_stores::id, keyset).select(StoreRow::as_select()).load(conn)
}

/// Deletes a store, its attachments and its chunks, with a `store_removed` change. False
/// when the organization has no such store.
pub(crate) fn delete_store(conn: &mut Conn, organization_id: &str, id: &str, now: i64) -> QueryResult<bool> {
    let deleted = diesel::delete(
        rag_vector_stores::table.find(id).filter(rag_vector_stores::organization_id.eq(organization_id)),
    )
    .execute(conn)?;
    remove_contents(conn, organization_id, id, deleted, now)
}

/// [`delete_store`] if the store's expiry has passed at `now`. The condition is tested by the
/// delete itself, so a store used since it was found expired (a file attached in a transaction
/// that locked its row) is kept.
pub(crate) fn delete_expired_store(conn: &mut Conn, organization_id: &str, id: &str, now: i64) -> QueryResult<bool> {
    use diesel::dsl::sql;
    use diesel::sql_types::{BigInt, Bool};
    let deleted = diesel::delete(
        rag_vector_stores::table
            .find(id)
            .filter(rag_vector_stores::organization_id.eq(organization_id))
            .filter(sql::<Bool>(EXPIRED_AT).bind::<BigInt, _>(now)),
    )
    .execute(conn)?;
    remove_contents(conn, organization_id, id, deleted, now)
}

/// What follows the delete of a store's row (`deleted` rows): its chunks, its attachments and a
/// `store_removed` change. False when no row was deleted.
fn remove_contents(conn: &mut Conn, organization_id: &str, id: &str, deleted: usize, now: i64) -> QueryResult<bool> {
    if deleted == 0 {
        return Ok(false);
    }
    diesel::delete(rag_chunks::table.filter(rag_chunks::vector_store_id.eq(id))).execute(conn)?;
    diesel::delete(rag_store_files::table.filter(rag_store_files::vector_store_id.eq(id))).execute(conn)?;
    log_change(conn, organization_id, id, None, STORE_REMOVED, now)?;
    Ok(true)
}

/// Per store of `ids` and status: the number of files and their usage bytes, in one query.
pub(crate) fn file_counts(conn: &mut Conn, ids: &[String]) -> QueryResult<Vec<(String, String, i64, i64)>> {
    use diesel::dsl::{count_star, sql};
    use diesel::sql_types::BigInt;
    rag_store_files::table
        .filter(rag_store_files::vector_store_id.eq_any(ids))
        .group_by((rag_store_files::vector_store_id, rag_store_files::status))
        // `SUM` of a BIGINT is NUMERIC on PostgreSQL: cast back, on both backends.
        .select((
            rag_store_files::vector_store_id,
            rag_store_files::status,
            count_star(),
            sql::<BigInt>("CAST(COALESCE(SUM(usage_bytes), 0) AS BIGINT)"),
        ))
        .load(conn)
}

// --- vector-store files ---

/// Inserts the attachment unless the file is attached already; false when it was.
pub(crate) fn insert_store_file_if_new(conn: &mut Conn, row: &StoreFileRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(rag_store_files::table)
        .values(row)
        .on_conflict((rag_store_files::vector_store_id, rag_store_files::file_id))
        .do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

pub(crate) fn find_store_file(conn: &mut Conn, store: &str, file: &str) -> QueryResult<Option<StoreFileRow>> {
    rag_store_files::table.find((store, file)).select(StoreFileRow::as_select()).first(conn).optional()
}

/// A page of a store's files by attachment time, the file id breaking ties (OpenAI lists them
/// by `created_at`). None when the cursor is not a file of this store (any more): the position
/// it stood for is unknown.
pub(crate) fn store_files_page(
    conn: &mut Conn,
    store: &str,
    status: Option<&str>,
    keyset: &Keyset,
) -> QueryResult<Option<Vec<StoreFileRow>>> {
    use rag_store_files::{created_at, file_id};
    let mut query = rag_store_files::table.filter(rag_store_files::vector_store_id.eq(store.to_owned())).into_boxed();
    if let Some(status) = status {
        query = query.filter(rag_store_files::status.eq(status.to_owned()));
    }
    if let Some(from) = &keyset.from {
        let Some(cursor) = find_store_file(conn, store, from)? else {
            return Ok(None);
        };
        let (at, id) = (cursor.created_at, from.clone());
        query = if keyset.ascending {
            query.filter(created_at.gt(at).or(created_at.eq(at).and(file_id.gt(id))))
        } else {
            query.filter(created_at.lt(at).or(created_at.eq(at).and(file_id.lt(id))))
        };
    }
    query = if keyset.ascending {
        query.order((created_at.asc(), file_id.asc()))
    } else {
        query.order((created_at.desc(), file_id.desc()))
    };
    query.limit(keyset.limit).select(StoreFileRow::as_select()).load(conn).map(Some)
}

/// Detaches a file from a store and deletes its chunks there, with a `file_removed` change.
/// False when it was not attached.
pub(crate) fn detach(conn: &mut Conn, organization_id: &str, store: &str, file: &str, now: i64) -> QueryResult<bool> {
    let deleted = diesel::delete(rag_store_files::table.find((store, file))).execute(conn)?;
    if deleted == 0 {
        return Ok(false);
    }
    delete_chunks(conn, store, file)?;
    log_change(conn, organization_id, store, Some(file), FILE_REMOVED, now)?;
    Ok(true)
}

/// Marks an ingestion failed, if it is still in progress.
/// `attached_at`: only that attachment of the file (a step of an earlier one, detached and
/// attached again since, must not fail the new one); None: whichever is in progress.
pub(crate) fn fail_store_file(
    conn: &mut Conn,
    store: &str,
    file: &str,
    attached_at: Option<i64>,
    code: &str,
    message: &str,
) -> QueryResult<bool> {
    let target = rag_store_files::table.find((store, file)).filter(rag_store_files::status.eq(IN_PROGRESS));
    let failed = (
        rag_store_files::status.eq(FAILED),
        rag_store_files::last_error_code.eq(Some(code)),
        rag_store_files::last_error_message.eq(Some(message)),
    );
    match attached_at {
        Some(at) => diesel::update(target.filter(rag_store_files::created_at.eq(at))).set(failed).execute(conn),
        None => diesel::update(target).set(failed).execute(conn),
    }
    .map(|n| n == 1)
}

/// Marks an ingestion completed with its hash, embedder and size, if it is still in progress.
pub(crate) fn complete_store_file(
    conn: &mut Conn,
    store: &str,
    file: &str,
    hash: &str,
    embedding_model: Option<&str>,
    usage_bytes: i64,
) -> QueryResult<bool> {
    diesel::update(rag_store_files::table.find((store, file)).filter(rag_store_files::status.eq(IN_PROGRESS)))
        .set((
            rag_store_files::status.eq(COMPLETED),
            rag_store_files::content_hash.eq(Some(hash)),
            rag_store_files::embedding_model.eq(embedding_model),
            rag_store_files::usage_bytes.eq(usage_bytes),
            rag_store_files::last_error_code.eq(None::<String>),
            rag_store_files::last_error_message.eq(None::<String>),
        ))
        .execute(conn)
        .map(|n| n == 1)
}

/// A completed ingestion of the organization with this hash and embedder, to copy from.
pub(crate) fn completed_with_hash(
    conn: &mut Conn,
    organization_id: &str,
    hash: &str,
    embedding_model: Option<&str>,
) -> QueryResult<Option<(String, String)>> {
    let mut query = rag_store_files::table
        .filter(rag_store_files::organization_id.eq(organization_id).and(rag_store_files::content_hash.eq(hash)))
        .filter(rag_store_files::status.eq(COMPLETED))
        .into_boxed();
    query = match embedding_model {
        Some(model) => query.filter(rag_store_files::embedding_model.eq(model.to_owned())),
        None => query.filter(rag_store_files::embedding_model.is_null()),
    };
    query.select((rag_store_files::vector_store_id, rag_store_files::file_id)).first(conn).optional()
}

/// Completed attachments after `(store, file)`, by key: the rebuild's pages.
pub(crate) fn completed_after(
    conn: &mut Conn,
    after: Option<(&str, &str)>,
    limit: i64,
) -> QueryResult<Vec<StoreFileRow>> {
    let mut query = rag_store_files::table.filter(rag_store_files::status.eq(COMPLETED)).into_boxed();
    if let Some((store, file)) = after {
        query = query.filter(rag_store_files::vector_store_id.gt(store.to_owned()).or(
            rag_store_files::vector_store_id.eq(store.to_owned()).and(rag_store_files::file_id.gt(file.to_owned())),
        ));
    }
    query
        .order((rag_store_files::vector_store_id.asc(), rag_store_files::file_id.asc()))
        .limit(limit)
        .select(StoreFileRow::as_select())
        .load(conn)
}

// --- chunks ---

pub(crate) fn chunks_of(conn: &mut Conn, store: &str, file: &str) -> QueryResult<Vec<ChunkRow>> {
    rag_chunks::table
        .filter(rag_chunks::vector_store_id.eq(store).and(rag_chunks::file_id.eq(file)))
        .order(rag_chunks::ordinal.asc())
        .select(ChunkRow::as_select())
        .load(conn)
}

pub(crate) fn delete_chunks(conn: &mut Conn, store: &str, file: &str) -> QueryResult<usize> {
    diesel::delete(rag_chunks::table.filter(rag_chunks::vector_store_id.eq(store).and(rag_chunks::file_id.eq(file))))
        .execute(conn)
}

/// Inserts chunks: batched statements on PostgreSQL, one per row on SQLite (local calls).
pub(crate) fn insert_chunks(conn: &mut Conn, rows: &[ChunkRow]) -> QueryResult<()> {
    match conn {
        Conn::Pg(c) => {
            for batch in rows.chunks(500) {
                diesel::insert_into(rag_chunks::table).values(batch).execute(c)?;
            }
        }
        Conn::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(rag_chunks::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

/// The chunks of these ids that belong to the store (what a search shows).
pub(crate) fn chunks_by_id(conn: &mut Conn, store: &str, ids: &[String]) -> QueryResult<Vec<(ChunkRow, String)>> {
    rag_chunks::table
        .inner_join(rag_files::table.on(rag_files::id.eq(rag_chunks::file_id)))
        .filter(rag_chunks::id.eq_any(ids).and(rag_chunks::vector_store_id.eq(store)))
        .select((ChunkRow::as_select(), rag_files::filename))
        .load(conn)
}

/// The attributes of these files in the store.
pub(crate) fn attributes_of(conn: &mut Conn, store: &str, files: &[String]) -> QueryResult<Vec<(String, String)>> {
    rag_store_files::table
        .filter(rag_store_files::vector_store_id.eq(store).and(rag_store_files::file_id.eq_any(files)))
        .select((rag_store_files::file_id, rag_store_files::attributes))
        .load(conn)
}

// --- the change log ---

/// Appends a change. On PostgreSQL the transaction first takes an advisory lock that every
/// writer of the log takes, so sequence numbers are committed in the order they are drawn and
/// a reader that saw `seq = n` can never later find a committed `seq < n` it skipped. SQLite
/// has one writer at a time already.
pub(crate) fn log_change(
    conn: &mut Conn,
    organization_id: &str,
    store: &str,
    file: Option<&str>,
    kind: &str,
    now: i64,
) -> QueryResult<()> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(7393142)").execute(c)?;
    }
    diesel::insert_into(rag_changes::table)
        .values((
            rag_changes::organization_id.eq(organization_id),
            rag_changes::vector_store_id.eq(store),
            rag_changes::file_id.eq(file),
            rag_changes::kind.eq(kind),
            rag_changes::created_at.eq(now),
        ))
        .execute(conn)
        .map(drop)
}

/// Changes after `seq`, oldest first.
pub(crate) fn changes_after(conn: &mut Conn, seq: i64, limit: i64) -> QueryResult<Vec<ChangeRow>> {
    rag_changes::table
        .filter(rag_changes::seq.gt(seq))
        .order(rag_changes::seq.asc())
        .limit(limit)
        .select(ChangeRow::as_select())
        .load(conn)
}

/// The last sequence number written (0 for none).
pub(crate) fn last_change(conn: &mut Conn) -> QueryResult<i64> {
    rag_changes::table.select(diesel::dsl::max(rag_changes::seq)).first::<Option<i64>>(conn).map(|s| s.unwrap_or(0))
}

// --- staged chunks: the ingestion's steps ---

/// A chunk of an ingestion in progress, not searchable until the index step moves it to
/// `rag_chunks`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = rag_staged_chunks)]
pub(crate) struct StagedChunkRow {
    pub vector_store_id: String,
    pub file_id: String,
    pub ordinal: i32,
    pub embed_batch: i32,
    pub id: String,
    pub organization_id: String,
    pub text: String,
    pub tokens: i32,
    pub embedding: Option<Vec<u8>>,
    pub content_hash: String,
}

impl From<StagedChunkRow> for ChunkRow {
    fn from(c: StagedChunkRow) -> Self {
        Self {
            id: c.id,
            organization_id: c.organization_id,
            vector_store_id: c.vector_store_id,
            file_id: c.file_id,
            ordinal: c.ordinal,
            text: c.text,
            tokens: c.tokens,
            embedding: c.embedding,
            content_hash: c.content_hash,
        }
    }
}

/// Whether this attachment (attached at `attached_at`) is still in progress, holding its row
/// until the commit: a no-op update, so that steps of one ingestion that write in the same
/// moment take turns (a row lock on PostgreSQL; SQLite has one writer already) and each sees
/// what the one before it committed.
pub(crate) fn hold_in_progress(conn: &mut Conn, store: &str, file: &str, attached_at: i64) -> QueryResult<bool> {
    diesel::update(
        rag_store_files::table
            .find((store, file))
            .filter(rag_store_files::status.eq(IN_PROGRESS))
            .filter(rag_store_files::created_at.eq(attached_at)),
    )
    .set(rag_store_files::status.eq(IN_PROGRESS))
    .execute(conn)
    .map(|n| n == 1)
}

/// Stages chunks: batched statements on PostgreSQL, one per row on SQLite (local calls).
pub(crate) fn stage_chunks(conn: &mut Conn, rows: &[StagedChunkRow]) -> QueryResult<()> {
    match conn {
        Conn::Pg(c) => {
            for batch in rows.chunks(500) {
                diesel::insert_into(rag_staged_chunks::table).values(batch).execute(c)?;
            }
        }
        Conn::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(rag_staged_chunks::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

/// How many chunks of the attachment are staged; with `unembedded`, only those without a vector.
pub(crate) fn count_staged(conn: &mut Conn, store: &str, file: &str, unembedded: bool) -> QueryResult<i64> {
    let mut query = rag_staged_chunks::table
        .filter(rag_staged_chunks::vector_store_id.eq(store.to_owned()))
        .filter(rag_staged_chunks::file_id.eq(file.to_owned()))
        .into_boxed();
    if unembedded {
        query = query.filter(rag_staged_chunks::embedding.is_null());
    }
    query.count().get_result(conn)
}

/// The (id, text) of a batch's staged chunks that have no vector yet, in order.
pub(crate) fn unembedded_batch(
    conn: &mut Conn,
    store: &str,
    file: &str,
    batch: i32,
) -> QueryResult<Vec<(String, String)>> {
    rag_staged_chunks::table
        .filter(rag_staged_chunks::vector_store_id.eq(store).and(rag_staged_chunks::file_id.eq(file)))
        .filter(rag_staged_chunks::embed_batch.eq(batch))
        .filter(rag_staged_chunks::embedding.is_null())
        .order(rag_staged_chunks::ordinal.asc())
        .select((rag_staged_chunks::id, rag_staged_chunks::text))
        .load(conn)
}

/// The batches of the attachment's staged chunks that still have chunks without a vector.
pub(crate) fn unembedded_batches(conn: &mut Conn, store: &str, file: &str) -> QueryResult<Vec<i32>> {
    rag_staged_chunks::table
        .filter(rag_staged_chunks::vector_store_id.eq(store).and(rag_staged_chunks::file_id.eq(file)))
        .filter(rag_staged_chunks::embedding.is_null())
        .select(rag_staged_chunks::embed_batch)
        .distinct()
        .order(rag_staged_chunks::embed_batch.asc())
        .load(conn)
}

/// Writes a staged chunk's vector.
pub(crate) fn set_staged_embedding(
    conn: &mut Conn,
    store: &str,
    file: &str,
    id: &str,
    vector: &[u8],
) -> QueryResult<()> {
    diesel::update(
        rag_staged_chunks::table
            .filter(rag_staged_chunks::vector_store_id.eq(store).and(rag_staged_chunks::file_id.eq(file)))
            .filter(rag_staged_chunks::id.eq(id)),
    )
    .set(rag_staged_chunks::embedding.eq(Some(vector)))
    .execute(conn)
    .map(drop)
}

/// The attachment's staged chunks, in order.
pub(crate) fn staged_chunks(conn: &mut Conn, store: &str, file: &str) -> QueryResult<Vec<StagedChunkRow>> {
    rag_staged_chunks::table
        .filter(rag_staged_chunks::vector_store_id.eq(store).and(rag_staged_chunks::file_id.eq(file)))
        .order(rag_staged_chunks::ordinal.asc())
        .select(StagedChunkRow::as_select())
        .load(conn)
}

pub(crate) fn delete_staged(conn: &mut Conn, store: &str, file: &str) -> QueryResult<usize> {
    diesel::delete(
        rag_staged_chunks::table
            .filter(rag_staged_chunks::vector_store_id.eq(store).and(rag_staged_chunks::file_id.eq(file))),
    )
    .execute(conn)
}

// --- file batches ---
//
// A batch is a row of `rag_file_batches` and a membership row per file; its status and counts
// are read from the attachments themselves (`rag_store_files.status`), never stored twice.

pub(crate) mod batch_schema {
    use super::schema::rag_store_files;

    diesel::table! {
        rag_file_batches (id) {
            id -> Text,
            vector_store_id -> Text,
            organization_id -> Text,
            created_at -> BigInt,
        }
    }

    diesel::table! {
        rag_file_batch_files (batch_id, file_id) {
            batch_id -> Text,
            vector_store_id -> Text,
            file_id -> Text,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(rag_file_batches, rag_file_batch_files, rag_store_files);
}

use batch_schema::{rag_file_batch_files, rag_file_batches};

/// The state a batch's cancel moves its unfinished files to.
pub(crate) const CANCELLED: &str = "cancelled";

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = rag_file_batches)]
pub(crate) struct BatchRow {
    pub id: String,
    pub vector_store_id: String,
    pub organization_id: String,
    pub created_at: i64,
}

/// The ids among `ids` of the organization's files (one query for a whole batch).
pub(crate) fn owned_file_ids(conn: &mut Conn, organization_id: &str, ids: &[String]) -> QueryResult<Vec<String>> {
    rag_files::table
        .filter(rag_files::organization_id.eq(organization_id).and(rag_files::id.eq_any(ids)))
        .select(rag_files::id)
        .load(conn)
}

/// Inserts the batch and its memberships (the attachments exist already, in this transaction).
pub(crate) fn insert_batch(conn: &mut Conn, row: &BatchRow, files: &[String]) -> QueryResult<()> {
    diesel::insert_into(rag_file_batches::table).values(row).execute(conn)?;
    for file in files {
        diesel::insert_into(rag_file_batch_files::table)
            .values((
                rag_file_batch_files::batch_id.eq(row.id.as_str()),
                rag_file_batch_files::vector_store_id.eq(row.vector_store_id.as_str()),
                rag_file_batch_files::file_id.eq(file.as_str()),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// The batch, if it belongs to this store of this organization.
pub(crate) fn find_batch(
    conn: &mut Conn,
    organization_id: &str,
    store: &str,
    id: &str,
) -> QueryResult<Option<BatchRow>> {
    rag_file_batches::table
        .find(id)
        .filter(rag_file_batches::vector_store_id.eq(store).and(rag_file_batches::organization_id.eq(organization_id)))
        .select(BatchRow::as_select())
        .first(conn)
        .optional()
}

/// The number of the batch's files in each status, in one query.
pub(crate) fn batch_counts(conn: &mut Conn, batch: &str) -> QueryResult<Vec<(String, i64)>> {
    use diesel::dsl::count_star;
    rag_file_batch_files::table
        .inner_join(
            rag_store_files::table.on(rag_store_files::vector_store_id
                .eq(rag_file_batch_files::vector_store_id)
                .and(rag_store_files::file_id.eq(rag_file_batch_files::file_id))),
        )
        .filter(rag_file_batch_files::batch_id.eq(batch))
        .group_by(rag_store_files::status)
        .select((rag_store_files::status, count_star()))
        .load(conn)
}

/// A page of the batch's attachments by file id, optionally of one status (the primary key
/// `(batch_id, file_id)` serves the order).
pub(crate) fn batch_files_page(
    conn: &mut Conn,
    batch: &str,
    status: Option<&str>,
    keyset: &Keyset,
) -> QueryResult<Vec<StoreFileRow>> {
    let mut query = rag_file_batch_files::table
        .inner_join(
            rag_store_files::table.on(rag_store_files::vector_store_id
                .eq(rag_file_batch_files::vector_store_id)
                .and(rag_store_files::file_id.eq(rag_file_batch_files::file_id))),
        )
        .filter(rag_file_batch_files::batch_id.eq(batch.to_owned()))
        .into_boxed();
    if let Some(status) = status {
        query = query.filter(rag_store_files::status.eq(status.to_owned()));
    }
    keyset!(query, rag_file_batch_files::file_id, keyset).select(StoreFileRow::as_select()).load(conn)
}

/// Cancels the batch's files still `in_progress`: each moves to `cancelled` by an update
/// conditional on `in_progress`, so a file whose ingestion committed meanwhile stays
/// `completed`, and an ingestion that commits later finds it no longer in progress and writes
/// nothing. Chunks of a cancelled file are deleted (with a `file_removed` change when there
/// were any), so none can ever be searched. Returns how many files were cancelled.
///
/// Every row lock is taken before the change log's lock, the order an ingestion takes them
/// in, so a cancel and an ingestion never wait for each other in a cycle.
pub(crate) fn cancel_batch(conn: &mut Conn, organization_id: &str, batch: &str, now: i64) -> QueryResult<usize> {
    let members: Vec<(String, String)> = rag_file_batch_files::table
        .inner_join(
            rag_store_files::table.on(rag_store_files::vector_store_id
                .eq(rag_file_batch_files::vector_store_id)
                .and(rag_store_files::file_id.eq(rag_file_batch_files::file_id))),
        )
        .filter(rag_file_batch_files::batch_id.eq(batch).and(rag_store_files::status.eq(IN_PROGRESS)))
        .select((rag_file_batch_files::vector_store_id, rag_file_batch_files::file_id))
        .load(conn)?;
    let mut cancelled = Vec::with_capacity(members.len());
    for (store, file) in members {
        let moved = diesel::update(
            rag_store_files::table
                .find((store.as_str(), file.as_str()))
                .filter(rag_store_files::status.eq(IN_PROGRESS)),
        )
        .set(rag_store_files::status.eq(CANCELLED))
        .execute(conn)?;
        if moved == 1 {
            cancelled.push((store, file));
        }
    }
    for (store, file) in &cancelled {
        // The staged chunks of its ingestion go too; the next step would find them otherwise.
        delete_staged(conn, store, file)?;
        if delete_chunks(conn, store, file)? > 0 {
            log_change(conn, organization_id, store, Some(file.as_str()), FILE_REMOVED, now)?;
        }
    }
    Ok(cancelled.len())
}
