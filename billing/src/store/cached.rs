//! The statements of the settlement path written out, so that each connection prepares them once.
//!
//! diesel never caches a prepared UPDATE or upsert (`DO UPDATE`): a changeset with `Option`
//! fields leaves out the `None` ones, so the same query type can produce different SQL. These
//! statements have one SQL text each, and the lease flusher runs them several times per group
//! commit, every few milliseconds: re-preparing them cost about a fifth of a commit's CPU on
//! SQLite (bench/inference-results.md). A hold's open state is written as the literal `'open'`,
//! not a bound value: SQLite plans a query against the partial index `holds_open_expiry_idx`
//! only for that literal, and re-prepares a statement whose bound value the plan depended on
//! each time the value is bound again.
//!
//! Each type implements `QueryFragment` for any backend (the placeholders are the backend's) and
//! a static `QueryId`, which is what diesel's statement cache keys on.

use chrono::{NaiveDate, NaiveDateTime};
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Date, Text, Timestamp};
use diesel::{QueryResult, RunQueryDsl};
use shared::db::Conn;

/// Runs one of this module's statements on either engine; the number of rows it changed.
pub(crate) fn execute<Q>(conn: &mut Conn, statement: Q) -> QueryResult<usize>
where
    Q: QueryFragment<diesel::pg::Pg> + QueryFragment<diesel::sqlite::Sqlite> + QueryId,
    Q: RunQueryDsl<diesel::PgConnection> + RunQueryDsl<diesel::SqliteConnection>,
{
    match conn {
        Conn::Pg(c) => statement.execute(c),
        Conn::Sqlite(c) => statement.execute(c),
    }
}

/// `UPDATE holds SET state = state WHERE id = ?`: a no-op that takes the hold's row lock on
/// PostgreSQL (see `lock_hold`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LockHold<'a> {
    pub id: &'a str,
}

/// Draws from an open lease: what it charged grows by `amount`, its expiry moves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DrawFromHold<'a> {
    pub id: &'a str,
    pub amount: i64,
    pub expires_at: NaiveDateTime,
}

/// Adds a (signed) amount to an account's cached balance, without a cover check.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddToBalance<'a> {
    pub id: &'a str,
    pub amount: i64,
}

/// Adds usage to its day's rollup row, creating the row the first time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddToRollup<'a> {
    pub organization_id: &'a str,
    pub day: NaiveDate,
    pub model: &'a str,
    pub api_key_id: &'a str,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: i64,
}

impl<DB> QueryFragment<DB> for LockHold<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE holds SET state = state WHERE id = ");
        out.push_bind_param::<Text, _>(self.id)
    }
}

impl<DB> QueryFragment<DB> for DrawFromHold<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE holds SET charged = charged + ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(", expires_at = ");
        out.push_bind_param::<Timestamp, _>(&self.expires_at)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        out.push_sql(" AND state = 'open'");
        Ok(())
    }
}

impl<DB> QueryFragment<DB> for AddToBalance<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("UPDATE accounts SET balance = balance + ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(self.id)
    }
}

impl<DB> QueryFragment<DB> for AddToRollup<'_>
where
    DB: Backend,
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    NaiveDate: ToSql<Date, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO usage_daily \
             (organization_id, day, model, api_key_id, requests, input_tokens, output_tokens, cost) VALUES (",
        );
        out.push_bind_param::<Text, _>(self.organization_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Date, _>(&self.day)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.model)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.api_key_id)?;
        for value in [&self.requests, &self.input_tokens, &self.output_tokens, &self.cost] {
            out.push_sql(", ");
            out.push_bind_param::<BigInt, _>(value)?;
        }
        out.push_sql(
            ") ON CONFLICT (organization_id, day, model, api_key_id) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             input_tokens = usage_daily.input_tokens + excluded.input_tokens, \
             output_tokens = usage_daily.output_tokens + excluded.output_tokens, \
             cost = usage_daily.cost + excluded.cost",
        );
        Ok(())
    }
}

/// A static query id per statement type: what diesel's statement cache is keyed by.
macro_rules! static_query_id {
    ($($statement:ident),*) => {$(
        impl QueryId for $statement<'_> {
            type QueryId = $statement<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }
        impl<C> RunQueryDsl<C> for $statement<'_> {}
    )*};
}
static_query_id!(LockHold, DrawFromHold, AddToBalance, AddToRollup);

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::{Instrumentation, InstrumentationEvent};
    use diesel::prelude::*;
    use diesel::sqlite::SqliteConnection;
    use diesel_migrations::MigrationHarness;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts the statements a connection adds to its prepared-statement cache.
    struct CountCached(Arc<AtomicUsize>);

    impl Instrumentation for CountCached {
        fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
            if let InstrumentationEvent::CacheQuery { .. } = event {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn connection() -> (Conn, Arc<AtomicUsize>) {
        let mut sqlite = SqliteConnection::establish(":memory:").expect("sqlite in memory");
        sqlite.run_pending_migrations(crate::store::SQLITE_MIGRATIONS).expect("migrations");
        let cached = Arc::new(AtomicUsize::new(0));
        sqlite.set_instrumentation(CountCached(cached.clone()));
        (Conn::Sqlite(sqlite), cached)
    }

    fn hold(conn: &mut Conn, id: &str, state: &str) {
        let Conn::Sqlite(c) = conn else { unreachable!("the test connection is SQLite") };
        diesel::sql_query(format!(
            "INSERT INTO holds (id, organization_id, api_key_id, amount, idempotency_key, state, period_start, \
             charged, returned, created_at, expires_at, closed_at) \
             VALUES ('{id}', 'org', NULL, 100, '{id}', '{state}', '2026-11-01', 0, 0, \
             '2026-11-26 00:00:00', '2026-11-26 00:01:00', NULL)"
        ))
        .execute(c)
        .expect("insert hold");
    }

    #[test]
    fn each_statement_is_prepared_once_per_connection_and_does_what_it_says() {
        let (mut conn, cached) = connection();
        hold(&mut conn, "h1", "open");
        hold(&mut conn, "h2", "settled");
        let later = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).and_then(|d| d.and_hms_opt(0, 5, 0)).expect("date");
        let before = cached.load(Ordering::Relaxed);
        for _ in 0..3 {
            assert_eq!(execute(&mut conn, LockHold { id: "h1" }).expect("lock"), 1);
            let draw = DrawFromHold { id: "h1", amount: 7, expires_at: later };
            assert_eq!(execute(&mut conn, draw).expect("draw"), 1);
            // Only an open hold is drawn from.
            assert_eq!(execute(&mut conn, DrawFromHold { id: "h2", ..draw }).expect("draw closed"), 0);
        }
        // Two statement types, each prepared and cached on first use only.
        assert_eq!(cached.load(Ordering::Relaxed) - before, 2);

        let Conn::Sqlite(c) = &mut conn else { unreachable!() };
        use crate::store::schema::holds;
        let (charged, expires): (i64, NaiveDateTime) =
            holds::table.find("h1").select((holds::charged, holds::expires_at)).get_result(c).expect("hold");
        assert_eq!((charged, expires), (21, later));
        let untouched: i64 = holds::table.find("h2").select(holds::charged).get_result(c).expect("hold");
        assert_eq!(untouched, 0);
    }

    #[test]
    fn the_rollup_upsert_creates_the_row_then_adds_to_it() {
        let (mut conn, cached) = connection();
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 26).expect("date");
        let row = AddToRollup {
            organization_id: "org",
            day,
            model: "m",
            api_key_id: "",
            requests: 1,
            input_tokens: 10,
            output_tokens: 20,
            cost: 30,
        };
        let before = cached.load(Ordering::Relaxed);
        execute(&mut conn, row).expect("first");
        execute(&mut conn, AddToRollup { requests: 2, input_tokens: 1, output_tokens: 2, cost: 3, ..row })
            .expect("second");
        assert_eq!(cached.load(Ordering::Relaxed) - before, 1);
        assert_eq!(execute(&mut conn, AddToBalance { id: "nobody", amount: 5 }).expect("no such account"), 0);

        let Conn::Sqlite(c) = &mut conn else { unreachable!() };
        use crate::store::schema::usage_daily as u;
        let totals: (i64, i64, i64, i64) = u::table
            .select((u::requests, u::input_tokens, u::output_tokens, u::cost))
            .get_result(c)
            .expect("one rollup row");
        assert_eq!(totals, (3, 11, 22, 33));
    }
}
