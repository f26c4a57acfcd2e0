//! The jobs tables and the synchronous statements over them. Every statement that a worker uses
//! to change a job it claimed checks the claim's lease token (fencing), so a worker that lost
//! its lease changes nothing.

use crate::db::Conn;
use chrono::NaiveDateTime;
use diesel::expression::SqlLiteral;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Integer, Nullable, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

pub(crate) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/jobs/postgres");
pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/jobs/sqlite");

pub(crate) mod schema {
    diesel::table! {
        keel_jobs (id) {
            id -> Text,
            queue -> Text,
            kind -> Text,
            payload -> Text,
            state -> Text,
            attempt -> Integer,
            max_attempts -> Integer,
            run_at -> Timestamp,
            created_at -> Timestamp,
            dedupe_key -> Nullable<Text>,
            lease_token -> Nullable<Text>,
            locked_by -> Nullable<Text>,
            lease_expires_at -> Nullable<Timestamp>,
            attempted_at -> Nullable<Timestamp>,
            finished_at -> Nullable<Timestamp>,
            last_error -> Nullable<Text>,
        }
    }

    diesel::table! {
        keel_job_schedules (name) {
            name -> Text,
            last_tick -> Timestamp,
        }
    }
}

use schema::{keel_job_schedules, keel_jobs};

pub(crate) const AVAILABLE: &str = "available";
pub(crate) const RUNNING: &str = "running";
pub(crate) const FAILED: &str = "failed";
pub(crate) const DISCARDED: &str = "discarded";
pub(crate) const CANCELLED: &str = "cancelled";

/// `state = '<state>'` as a literal, not a bind parameter: the partial indexes (one per state)
/// serve only queries whose condition names the state itself, also under a generic plan.
fn state_is(state: &'static str) -> SqlLiteral<Bool> {
    diesel::dsl::sql::<Bool>(&format!("state = '{state}'"))
}

/// The states in which a job still runs: the scope of a dedupe key (the predicate of
/// `keel_jobs_dedupe_idx`).
fn live() -> SqlLiteral<Bool> {
    diesel::dsl::sql::<Bool>("state IN ('available', 'running', 'failed')")
}

fn finished() -> SqlLiteral<Bool> {
    diesel::dsl::sql::<Bool>("state IN ('discarded', 'cancelled')")
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = keel_jobs, treat_none_as_default_value = false)]
pub(crate) struct NewJobRow {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub payload: String,
    pub state: &'static str,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub dedupe_key: Option<String>,
}

/// A job as a worker receives it from a claim.
#[derive(Debug, Clone, QueryableByName)]
pub(crate) struct ClaimedRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = Integer)]
    pub max_attempts: i32,
    #[diesel(sql_type = Timestamp)]
    pub run_at: NaiveDateTime,
    #[diesel(sql_type = Timestamp)]
    pub created_at: NaiveDateTime,
}

/// A job as the admin API shows it (without its payload, which may hold personal data).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = keel_jobs)]
pub(crate) struct JobRow {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub dedupe_key: Option<String>,
    pub attempted_at: Option<NaiveDateTime>,
    pub finished_at: Option<NaiveDateTime>,
    pub last_error: Option<String>,
}

/// Inserts jobs; a job whose dedupe key a live job holds is skipped. Returns how many were
/// inserted. On PostgreSQL, a notification for each queue that got a job is sent on commit.
pub(crate) fn insert(conn: &mut Conn, rows: &[NewJobRow]) -> QueryResult<usize> {
    let mut inserted = 0;
    // Well below both engines' bind-parameter limits (10 columns per row).
    for chunk in rows.chunks(500) {
        inserted += match conn {
            Conn::Pg(c) => diesel::insert_into(keel_jobs::table).values(chunk).on_conflict_do_nothing().execute(c)?,
            Conn::Sqlite(c) => {
                diesel::insert_into(keel_jobs::table).values(chunk).on_conflict_do_nothing().execute(c)?
            }
        };
    }
    if inserted > 0
        && let Conn::Pg(c) = conn
    {
        let mut queues: Vec<&str> = rows.iter().map(|r| r.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        for queue in queues {
            notify(c, queue)?;
        }
    }
    Ok(inserted)
}

/// `NOTIFY keel_jobs_<schema>, '<queue>'`, delivered when the transaction commits.
fn notify(conn: &mut PgConnection, queue: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify('keel_jobs_' || current_schema(), $1)").bind::<Text, _>(queue).execute(conn)?;
    Ok(())
}

/// The notification channel of a domain's jobs.
pub(crate) fn channel(domain: &str) -> String {
    format!("keel_jobs_{domain}")
}

/// One claim: what a worker asks for.
pub(crate) struct Claim<'a> {
    pub queue: &'a str,
    pub kinds: &'a [String],
    pub limit: u32,
    pub token: &'a str,
    pub worker: &'a str,
    pub now: NaiveDateTime,
    pub lease_until: NaiveDateTime,
}

/// Takes up to `limit` due jobs of the queue, oldest first, and marks them running under
/// `token`. On PostgreSQL, `SKIP LOCKED` lets concurrent claims take disjoint jobs without
/// waiting; on SQLite the caller holds the process's write lock.
pub(crate) fn claim(conn: &mut Conn, claim: &Claim<'_>) -> QueryResult<Vec<ClaimedRow>> {
    if claim.kinds.is_empty() || claim.limit == 0 {
        return Ok(Vec::new());
    }
    match conn {
        // One statement, in its own implicit transaction, committed without waiting for the WAL
        // flush (`set_config(…, true)` lasts until that commit): see `Jobs::bookkeeping` for why
        // a claim may be lost in a server crash. It saves the BEGIN, SET LOCAL and COMMIT round
        // trips of an explicit transaction on the hottest path.
        Conn::Pg(c) => diesel::sql_query(
            "UPDATE keel_jobs SET state = 'running', attempt = attempt + 1, lease_token = $1, locked_by = $2, \
                 lease_expires_at = $3, attempted_at = $4 \
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit \
             WHERE id IN (SELECT id FROM keel_jobs \
                 WHERE queue = $5 AND state IN ('available', 'failed') AND run_at <= $4 AND kind = ANY($6) \
                 ORDER BY run_at, id LIMIT $7 FOR UPDATE SKIP LOCKED) \
             RETURNING keel_jobs.id, kind, payload, attempt, max_attempts, run_at, created_at",
        )
        .bind::<Text, _>(claim.token)
        .bind::<Text, _>(claim.worker)
        .bind::<Timestamp, _>(claim.lease_until)
        .bind::<Timestamp, _>(claim.now)
        .bind::<Text, _>(claim.queue)
        .bind::<Array<Text>, _>(claim.kinds)
        .bind::<BigInt, _>(i64::from(claim.limit))
        .load(c),
        Conn::Sqlite(c) => {
            let placeholders = vec!["?"; claim.kinds.len()].join(", ");
            let sql = format!(
                "UPDATE keel_jobs SET state = 'running', attempt = attempt + 1, lease_token = ?, locked_by = ?, \
                     lease_expires_at = ?, attempted_at = ? \
                 WHERE id IN (SELECT id FROM keel_jobs \
                     WHERE queue = ? AND state IN ('available', 'failed') AND run_at <= ? AND kind IN ({placeholders}) \
                     ORDER BY run_at, id LIMIT ?) \
                 RETURNING id, kind, payload, attempt, max_attempts, run_at, created_at"
            );
            let mut query = diesel::sql_query(sql)
                .into_boxed()
                .bind::<Text, _>(claim.token)
                .bind::<Text, _>(claim.worker)
                .bind::<Timestamp, _>(claim.lease_until)
                .bind::<Timestamp, _>(claim.now)
                .bind::<Text, _>(claim.queue)
                .bind::<Timestamp, _>(claim.now);
            for kind in claim.kinds {
                query = query.bind::<Text, _>(kind);
            }
            query.bind::<BigInt, _>(i64::from(claim.limit)).load(c)
        }
    }
}

/// Deletes the finished jobs among `ids` that `token` still holds; returns how many.
pub(crate) fn complete(conn: &mut Conn, token: &str, ids: &[String]) -> QueryResult<usize> {
    diesel::delete(
        keel_jobs::table
            .filter(keel_jobs::lease_token.eq(token))
            .filter(state_is(RUNNING))
            .filter(keel_jobs::id.eq_any(ids)),
    )
    .execute(conn)
}

/// Records a failed attempt: `failed` with a retry at `run_at`, or `discarded`. Fenced.
pub(crate) fn fail(
    conn: &mut Conn,
    id: &str,
    token: &str,
    discard: bool,
    run_at: NaiveDateTime,
    error: &str,
    now: NaiveDateTime,
) -> QueryResult<usize> {
    diesel::update(
        keel_jobs::table
            .filter(keel_jobs::id.eq(id))
            .filter(keel_jobs::lease_token.eq(token))
            .filter(state_is(RUNNING)),
    )
    .set((
        keel_jobs::state.eq(if discard { DISCARDED } else { FAILED }),
        keel_jobs::run_at.eq(run_at),
        keel_jobs::last_error.eq(error),
        keel_jobs::finished_at.eq(discard.then_some(now)),
        keel_jobs::lease_token.eq(None::<String>),
        keel_jobs::locked_by.eq(None::<String>),
        keel_jobs::lease_expires_at.eq(None::<NaiveDateTime>),
    ))
    .execute(conn)
}

/// Gives jobs back without counting the attempt (a shutdown that could not wait for them). Fenced.
pub(crate) fn release(conn: &mut Conn, token: &str, ids: &[String], now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(
        keel_jobs::table
            .filter(keel_jobs::lease_token.eq(token))
            .filter(state_is(RUNNING))
            .filter(keel_jobs::id.eq_any(ids)),
    )
    .set((
        keel_jobs::state.eq(AVAILABLE),
        keel_jobs::attempt.eq(keel_jobs::attempt - 1),
        keel_jobs::run_at.eq(now),
        keel_jobs::lease_token.eq(None::<String>),
        keel_jobs::locked_by.eq(None::<String>),
        keel_jobs::lease_expires_at.eq(None::<NaiveDateTime>),
    ))
    .execute(conn)
}

/// Extends the leases of every running job held under one of `tokens`. On PostgreSQL it skips
/// rows that another transaction holds (the completer deleting a finished job): a heartbeat
/// never waits for, nor deadlocks with, an outcome being written. A row skipped while its
/// outcome rolls back is renewed at the next heartbeat.
pub(crate) fn heartbeat(conn: &mut Conn, tokens: &[String], until: NaiveDateTime) -> QueryResult<usize> {
    match conn {
        Conn::Pg(c) => diesel::sql_query(
            "UPDATE keel_jobs SET lease_expires_at = $1 WHERE id IN (SELECT id FROM keel_jobs \
             WHERE state = 'running' AND lease_token = ANY($2) FOR UPDATE SKIP LOCKED)",
        )
        .bind::<Timestamp, _>(until)
        .bind::<Array<Text>, _>(tokens)
        .execute(c),
        Conn::Sqlite(c) => {
            diesel::update(keel_jobs::table.filter(state_is(RUNNING)).filter(keel_jobs::lease_token.eq_any(tokens)))
                .set(keel_jobs::lease_expires_at.eq(until))
                .execute(c)
        }
    }
}

#[derive(Debug, QueryableByName)]
pub(crate) struct ReapedRow {
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = Text)]
    pub state: String,
}

/// Jobs whose lease expired (their worker died or hung): retried at once, or discarded when that
/// was their last attempt. The lease duration is the back-off of a job that crashes its worker.
/// On PostgreSQL, rows another transaction holds (a late outcome being written, a heartbeat)
/// are skipped rather than waited for.
pub(crate) fn reap(conn: &mut Conn, now: NaiveDateTime) -> QueryResult<Vec<ReapedRow>> {
    const SET: &str = "UPDATE keel_jobs \
         SET state = CASE WHEN attempt >= max_attempts THEN 'discarded' ELSE 'failed' END, \
         last_error = 'lease expired: the worker stopped renewing it during attempt ' || attempt, \
         run_at = {now}, finished_at = CASE WHEN attempt >= max_attempts THEN {now} ELSE NULL END, \
         lease_token = NULL, locked_by = NULL, lease_expires_at = NULL";
    const EXPIRED: &str = "state = 'running' AND lease_expires_at < {now}";
    match conn {
        Conn::Pg(c) => diesel::sql_query(
            format!("{SET} WHERE id IN (SELECT id FROM keel_jobs WHERE {EXPIRED} FOR UPDATE SKIP LOCKED) RETURNING queue, state")
                .replace("{now}", "$1"),
        )
        .bind::<Timestamp, _>(now)
        .load(c),
        Conn::Sqlite(c) => diesel::sql_query(format!("{SET} WHERE {EXPIRED} RETURNING queue, state").replace("{now}", "?1"))
            .bind::<Timestamp, _>(now)
            .load(c),
    }
}

/// Deletes discarded and cancelled jobs that finished before `before`.
pub(crate) fn purge(conn: &mut Conn, before: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(keel_jobs::table.filter(finished()).filter(keel_jobs::finished_at.lt(before))).execute(conn)
}

/// Records that `tick` of schedule `name` is enqueued; false when another process already did
/// (or enqueued a later tick). One conditional write, so exactly one caller wins per tick.
pub(crate) fn claim_tick(conn: &mut Conn, name: &str, tick: NaiveDateTime) -> QueryResult<bool> {
    let row = (keel_job_schedules::name.eq(name), keel_job_schedules::last_tick.eq(tick));
    let inserted = match conn {
        Conn::Pg(c) => {
            diesel::insert_into(keel_job_schedules::table).values(row).on_conflict_do_nothing().execute(c)?
        }
        Conn::Sqlite(c) => {
            diesel::insert_into(keel_job_schedules::table).values(row).on_conflict_do_nothing().execute(c)?
        }
    };
    if inserted == 1 {
        return Ok(true);
    }
    let updated = diesel::update(
        keel_job_schedules::table
            .filter(keel_job_schedules::name.eq(name))
            .filter(keel_job_schedules::last_tick.lt(tick)),
    )
    .set(keel_job_schedules::last_tick.eq(tick))
    .execute(conn)?;
    Ok(updated == 1)
}

/// Cancels a live job: it will not run again, and a running attempt's outcome is ignored.
pub(crate) fn cancel(conn: &mut Conn, id: &str, now: NaiveDateTime) -> QueryResult<bool> {
    let updated = diesel::update(keel_jobs::table.filter(keel_jobs::id.eq(id)).filter(live()))
        .set(cancelled(now))
        .execute(conn)?;
    Ok(updated == 1)
}

/// Cancels the live job holding a dedupe key.
pub(crate) fn cancel_by_key(conn: &mut Conn, key: &str, now: NaiveDateTime) -> QueryResult<bool> {
    let updated = diesel::update(keel_jobs::table.filter(keel_jobs::dedupe_key.eq(key)).filter(live()))
        .set(cancelled(now))
        .execute(conn)?;
    Ok(updated == 1)
}

#[allow(clippy::type_complexity)]
fn cancelled(
    now: NaiveDateTime,
) -> (
    diesel::dsl::Eq<keel_jobs::state, &'static str>,
    diesel::dsl::Eq<keel_jobs::finished_at, Option<NaiveDateTime>>,
    diesel::dsl::Eq<keel_jobs::lease_token, Option<String>>,
    diesel::dsl::Eq<keel_jobs::locked_by, Option<String>>,
    diesel::dsl::Eq<keel_jobs::lease_expires_at, Option<NaiveDateTime>>,
) {
    (
        keel_jobs::state.eq(CANCELLED),
        keel_jobs::finished_at.eq(Some(now)),
        keel_jobs::lease_token.eq(None),
        keel_jobs::locked_by.eq(None),
        keel_jobs::lease_expires_at.eq(None),
    )
}

/// Puts a discarded or cancelled job back in its queue with a fresh set of attempts.
pub(crate) fn retry(conn: &mut Conn, id: &str, now: NaiveDateTime) -> QueryResult<usize> {
    diesel::update(keel_jobs::table.filter(keel_jobs::id.eq(id)).filter(finished()))
        .set((
            keel_jobs::state.eq(AVAILABLE),
            keel_jobs::attempt.eq(0),
            keel_jobs::run_at.eq(now),
            keel_jobs::finished_at.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)
}

pub(crate) fn find(conn: &mut Conn, id: &str) -> QueryResult<Option<JobRow>> {
    keel_jobs::table.filter(keel_jobs::id.eq(id)).select(JobRow::as_select()).first(conn).optional()
}

/// One page of the jobs in `state`, by id (creation order), after `after`.
pub(crate) fn list(conn: &mut Conn, state: &'static str, after: Option<&str>, limit: u32) -> QueryResult<Vec<JobRow>> {
    let mut query = keel_jobs::table.filter(state_is(state)).select(JobRow::as_select()).into_boxed();
    if let Some(after) = after {
        query = query.filter(keel_jobs::id.gt(after.to_owned()));
    }
    query.order(keel_jobs::id.asc()).limit(i64::from(limit) + 1).load(conn)
}

#[derive(Debug, QueryableByName)]
pub(crate) struct DepthRow {
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
}

/// Jobs per queue and state, with `available` split into `ready` and `scheduled` at `now`.
pub(crate) fn depths(conn: &mut Conn, now: NaiveDateTime) -> QueryResult<Vec<DepthRow>> {
    const SQL: &str = "SELECT queue, CASE WHEN state = 'available' AND run_at <= {now} THEN 'ready' \
             WHEN state = 'available' THEN 'scheduled' ELSE state END AS state, COUNT(*) AS count \
         FROM keel_jobs GROUP BY 1, 2 ORDER BY 1, 2";
    match conn {
        Conn::Pg(c) => diesel::sql_query(SQL.replace("{now}", "$1")).bind::<Timestamp, _>(now).load(c),
        Conn::Sqlite(c) => diesel::sql_query(SQL.replace("{now}", "?1")).bind::<Timestamp, _>(now).load(c),
    }
}

#[derive(Debug, QueryableByName)]
pub(crate) struct OldestRow {
    #[diesel(sql_type = Text)]
    pub queue: String,
    #[diesel(sql_type = Nullable<Timestamp>)]
    pub oldest: Option<NaiveDateTime>,
}

/// The earliest `run_at` of the jobs due at `now`, per queue (ready jobs and due retries).
pub(crate) fn oldest_due(conn: &mut Conn, now: NaiveDateTime) -> QueryResult<Vec<OldestRow>> {
    const SQL: &str = "SELECT queue, MIN(run_at) AS oldest FROM keel_jobs \
         WHERE state IN ('available', 'failed') AND run_at <= {now} GROUP BY queue ORDER BY queue";
    match conn {
        Conn::Pg(c) => diesel::sql_query(SQL.replace("{now}", "$1")).bind::<Timestamp, _>(now).load(c),
        Conn::Sqlite(c) => diesel::sql_query(SQL.replace("{now}", "?1")).bind::<Timestamp, _>(now).load(c),
    }
}
