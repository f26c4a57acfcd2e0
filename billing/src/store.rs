//! The billing domain's tables and the synchronous queries over them. Every function takes a
//! `&mut Conn` and is called from `Db::run`/`Db::transaction`, never on an async worker.
//!
//! Money moves only through [`post`]: one transfer row and its balanced entries, and the cached
//! balances of the accounts it touches, in the caller's transaction. A leg that takes money out
//! of an organization's available credit can require cover: a conditional update
//! (`balance >= amount`), so concurrent reservations can never take more than there is.

use crate::error::BillingError;
use chrono::{NaiveDate, NaiveDateTime};
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use shared::db::Conn;

mod cached;

pub(crate) const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");
pub(crate) const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

pub(crate) mod schema {
    diesel::table! {
        accounts (id) {
            id -> Text,
            organization_id -> Text,
            kind -> Text,
            balance -> BigInt,
        }
    }

    diesel::table! {
        transfers (id) {
            id -> Text,
            organization_id -> Text,
            kind -> Text,
            reference -> Nullable<Text>,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        entries (id) {
            id -> Text,
            transfer_id -> Text,
            account_id -> Text,
            organization_id -> Text,
            account_kind -> Text,
            transfer_kind -> Text,
            amount -> BigInt,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        holds (id) {
            id -> Text,
            organization_id -> Text,
            api_key_id -> Nullable<Text>,
            amount -> BigInt,
            idempotency_key -> Text,
            state -> Text,
            period_start -> Date,
            charged -> BigInt,
            returned -> BigInt,
            created_at -> Timestamp,
            expires_at -> Timestamp,
            closed_at -> Nullable<Timestamp>,
        }
    }

    diesel::table! {
        budgets (organization_id, scope) {
            organization_id -> Text,
            scope -> Text,
            limit_amount -> BigInt,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        budget_usage (organization_id, scope, period_start) {
            organization_id -> Text,
            scope -> Text,
            period_start -> Date,
            consumed -> BigInt,
        }
    }

    diesel::table! {
        usage_events (request_id) {
            request_id -> Text,
            organization_id -> Text,
            api_key_id -> Nullable<Text>,
            model -> Text,
            input_tokens -> BigInt,
            output_tokens -> BigInt,
            cost -> BigInt,
            hold_id -> Nullable<Text>,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        usage_daily (organization_id, day, model, api_key_id) {
            organization_id -> Text,
            day -> Date,
            model -> Text,
            api_key_id -> Text,
            requests -> BigInt,
            input_tokens -> BigInt,
            output_tokens -> BigInt,
            cost -> BigInt,
        }
    }

    diesel::table! {
        subscriptions (organization_id) {
            organization_id -> Text,
            plan -> Text,
            created_at -> Timestamp,
            updated_at -> Timestamp,
        }
    }

    diesel::table! {
        credit_grants (id) {
            id -> Text,
            organization_id -> Text,
            kind -> Text,
            amount -> BigInt,
            reason -> Text,
            period_start -> Nullable<Date>,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        idempotency_keys (organization_id, key) {
            organization_id -> Text,
            key -> Text,
            request_digest -> Text,
            response -> Text,
            created_at -> Timestamp,
        }
    }

    diesel::table! {
        invoices (id) {
            id -> Text,
            organization_id -> Text,
            period_start -> Date,
            period_end -> Date,
            plan -> Text,
            currency -> Text,
            lines -> Text,
            total_cents -> BigInt,
            created_at -> Timestamp,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(
        accounts,
        transfers,
        entries,
        holds,
        budgets,
        budget_usage,
        usage_events,
        usage_daily,
        subscriptions,
        credit_grants,
        idempotency_keys,
        invoices
    );
}

use schema::*;

shared::impl_from_db_errors!(BillingError);

/// The organization id of the system accounts.
pub(crate) const SYSTEM: &str = "";
/// Account kinds.
pub(crate) const AVAILABLE: &str = "available";
pub(crate) const HELD: &str = "held";
pub(crate) const SPENT: &str = "spent";
/// The system account granted credit comes from (its balance is minus everything issued).
pub(crate) const ISSUED: &str = "issued";

pub(crate) fn account_id(organization_id: &str, kind: &str) -> String {
    if organization_id.is_empty() { format!("system:{kind}") } else { format!("{organization_id}:{kind}") }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = accounts)]
pub(crate) struct AccountRow {
    pub id: String,
    pub organization_id: String,
    pub kind: String,
    pub balance: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = transfers)]
pub(crate) struct TransferRow {
    pub id: String,
    pub organization_id: String,
    pub kind: String,
    pub reference: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = entries)]
pub(crate) struct EntryRow {
    pub id: String,
    pub transfer_id: String,
    pub account_id: String,
    pub organization_id: String,
    pub account_kind: String,
    pub transfer_kind: String,
    pub amount: i64,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = holds)]
pub(crate) struct HoldRow {
    pub id: String,
    pub organization_id: String,
    pub api_key_id: Option<String>,
    pub amount: i64,
    pub idempotency_key: String,
    pub state: String,
    pub period_start: NaiveDate,
    pub charged: i64,
    pub returned: i64,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub closed_at: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = usage_events)]
pub(crate) struct UsageEventRow {
    pub request_id: String,
    pub organization_id: String,
    pub api_key_id: Option<String>,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: i64,
    pub hold_id: Option<String>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = usage_daily)]
pub(crate) struct UsageDailyRow {
    pub organization_id: String,
    pub day: NaiveDate,
    pub model: String,
    pub api_key_id: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = subscriptions)]
pub(crate) struct SubscriptionRow {
    pub organization_id: String,
    pub plan: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = credit_grants)]
pub(crate) struct CreditGrantRow {
    pub id: String,
    pub organization_id: String,
    pub kind: String,
    pub amount: i64,
    pub reason: String,
    pub period_start: Option<NaiveDate>,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub(crate) struct IdempotencyRow {
    pub organization_id: String,
    pub key: String,
    pub request_digest: String,
    pub response: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = invoices)]
pub(crate) struct InvoiceRow {
    pub id: String,
    pub organization_id: String,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub plan: String,
    pub currency: String,
    pub lines: String,
    pub total_cents: i64,
    pub created_at: NaiveDateTime,
}

// --- accounts and transfers ---

/// Creates the organization's accounts (and the system account) if they do not exist yet.
pub(crate) fn ensure_accounts(conn: &mut Conn, organization_id: &str) -> QueryResult<()> {
    let rows: Vec<AccountRow> = [AVAILABLE, HELD, SPENT]
        .iter()
        .map(|kind| (organization_id, *kind))
        .chain(std::iter::once((SYSTEM, ISSUED)))
        .map(|(org, kind)| AccountRow {
            id: account_id(org, kind),
            organization_id: org.to_owned(),
            kind: kind.to_owned(),
            balance: 0,
        })
        .collect();
    // One statement on PostgreSQL; SQLite's dialect has no multi-row insert with DEFAULT, and
    // its statements are local calls anyway.
    match conn {
        Conn::Pg(c) => {
            diesel::insert_into(accounts::table).values(&rows).on_conflict(accounts::id).do_nothing().execute(c)?;
        }
        Conn::Sqlite(c) => {
            for row in &rows {
                diesel::insert_into(accounts::table).values(row).on_conflict(accounts::id).do_nothing().execute(c)?;
            }
        }
    }
    Ok(())
}

/// One side of a transfer.
#[derive(Debug, Clone)]
pub(crate) struct Leg {
    pub organization_id: String,
    pub kind: &'static str,
    pub amount: i64,
    /// For a negative amount: only if the balance covers it (a conditional update).
    pub require_cover: bool,
}

impl Leg {
    pub fn org(organization_id: &str, kind: &'static str, amount: i64) -> Self {
        Self { organization_id: organization_id.to_owned(), kind, amount, require_cover: false }
    }

    pub fn system(kind: &'static str, amount: i64) -> Self {
        Self { organization_id: SYSTEM.to_owned(), kind, amount, require_cover: false }
    }

    pub fn covered(mut self) -> Self {
        self.require_cover = true;
        self
    }
}

/// A transfer that could not be written: a leg that requires cover found this balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uncovered {
    pub balance: i64,
    pub needed: i64,
}

/// Writes one transfer: the balances in lock order (a conditional leg that is not covered stops
/// there: the caller rolls back), then the transfer row and its entries. The legs must sum to
/// zero. Lock order across a transaction: budget usage rows, then accounts, then usage rows.
pub(crate) fn post(
    conn: &mut Conn,
    organization_id: &str,
    kind: &str,
    reference: Option<&str>,
    legs: &[Leg],
    now: NaiveDateTime,
) -> Result<Result<String, Uncovered>, BillingError> {
    let sum: i128 = legs.iter().map(|l| i128::from(l.amount)).sum();
    if sum != 0 || legs.len() < 2 {
        return Err(BillingError::Internal(format!("unbalanced transfer {kind}: legs sum to {sum}")));
    }
    // One lock order for every transaction: available, held, spent, then system accounts. A
    // reservation and a settlement of one organization then never wait on each other in a cycle.
    let mut ordered: Vec<&Leg> = legs.iter().filter(|l| l.amount != 0).collect();
    ordered.sort_by_key(|l| (lock_rank(l.kind), l.organization_id.clone()));
    for leg in ordered {
        let id = account_id(&leg.organization_id, leg.kind);
        if leg.require_cover && leg.amount < 0 {
            let need = -leg.amount;
            let updated = diesel::update(accounts::table.find(&id).filter(accounts::balance.ge(need)))
                .set(accounts::balance.eq(accounts::balance - need))
                .execute(conn)?;
            if updated == 0 {
                let balance =
                    accounts::table.find(&id).select(accounts::balance).first::<i64>(conn).optional()?.unwrap_or(0);
                return Ok(Err(Uncovered { balance, needed: need }));
            }
            continue;
        }
        let updated = cached::execute(conn, cached::AddToBalance { id: &id, amount: leg.amount })?;
        if updated == 0 {
            return Err(BillingError::Internal(format!("ledger account {id} does not exist")));
        }
    }
    let transfer_id = crate::api::TransferId::new().to_string();
    diesel::insert_into(transfers::table)
        .values(&TransferRow {
            id: transfer_id.clone(),
            organization_id: organization_id.to_owned(),
            kind: kind.to_owned(),
            reference: reference.map(str::to_owned),
            created_at: now,
        })
        .execute(conn)?;
    let rows: Vec<EntryRow> = legs
        .iter()
        .filter(|l| l.amount != 0)
        .map(|l| EntryRow {
            id: crate::api::EntryId::new().to_string(),
            transfer_id: transfer_id.clone(),
            account_id: account_id(&l.organization_id, l.kind),
            organization_id: l.organization_id.clone(),
            account_kind: l.kind.to_owned(),
            transfer_kind: kind.to_owned(),
            amount: l.amount,
            created_at: now,
        })
        .collect();
    insert_entries(conn, &rows)?;
    Ok(Ok(transfer_id))
}

/// Inserts entries: one statement on PostgreSQL, one per row on SQLite (local calls).
pub(crate) fn insert_entries(conn: &mut Conn, rows: &[EntryRow]) -> QueryResult<()> {
    match conn {
        Conn::Pg(c) => {
            diesel::insert_into(entries::table).values(rows).execute(c)?;
        }
        Conn::Sqlite(c) => {
            for row in rows {
                diesel::insert_into(entries::table).values(row).execute(c)?;
            }
        }
    }
    Ok(())
}

fn lock_rank(kind: &str) -> u8 {
    match kind {
        AVAILABLE => 0,
        HELD => 1,
        SPENT => 2,
        _ => 3,
    }
}

/// The organization's balances: (available, held, spent).
pub(crate) fn balances(conn: &mut Conn, organization_id: &str) -> QueryResult<(i64, i64, i64)> {
    let rows: Vec<(String, i64)> = accounts::table
        .filter(accounts::organization_id.eq(organization_id))
        .select((accounts::kind, accounts::balance))
        .load(conn)?;
    let of = |kind: &str| rows.iter().find(|(k, _)| k == kind).map_or(0, |(_, b)| *b);
    Ok((of(AVAILABLE), of(HELD), of(SPENT)))
}

/// Ledger entries of the organization, newest first, after the cursor.
pub(crate) fn ledger_page(
    conn: &mut Conn,
    organization_id: &str,
    before: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<EntryRow>> {
    let mut query = entries::table.filter(entries::organization_id.eq(organization_id)).into_boxed();
    if let Some(before) = before {
        query = query.filter(entries::id.lt(before.to_owned()));
    }
    query.order(entries::id.desc()).limit(limit).select(EntryRow::as_select()).load(conn)
}

// --- holds ---

/// Reads a hold under its row lock (PostgreSQL: a no-op update locks the row until commit;
/// SQLite's write transactions are serialised already: they begin with `BEGIN IMMEDIATE`, so
/// the update would only cost a statement per lease commit), so the amounts the caller computes
/// from cannot change under it. The first statement of every transaction that closes or draws
/// from a hold.
pub(crate) fn lock_hold(conn: &mut Conn, id: &str) -> QueryResult<Option<HoldRow>> {
    if matches!(conn, Conn::Pg(_)) {
        cached::execute(conn, cached::LockHold { id })?;
    }
    find_hold(conn, id)
}

/// By primary key, so at most one row: `get_result`, not `first`, whose `LIMIT ?` SQLite
/// re-prepares at every execution (its plan depends on the bound limit).
pub(crate) fn find_hold(conn: &mut Conn, id: &str) -> QueryResult<Option<HoldRow>> {
    holds::table.find(id).select(HoldRow::as_select()).get_result(conn).optional()
}

pub(crate) fn find_hold_by_key(conn: &mut Conn, organization_id: &str, key: &str) -> QueryResult<Option<HoldRow>> {
    holds::table
        .filter(holds::organization_id.eq(organization_id).and(holds::idempotency_key.eq(key)))
        .select(HoldRow::as_select())
        .first(conn)
        .optional()
}

/// Inserts the hold unless its idempotency key is taken; false when it is.
pub(crate) fn insert_hold_if_new(conn: &mut Conn, row: &HoldRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(holds::table)
        .values(row)
        .on_conflict((holds::organization_id, holds::idempotency_key))
        .do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

/// Moves the hold from one of `from` to `to`, recording the outcome; false when it was in
/// none of them. The conditional update is what makes a close happen once: concurrent closes
/// wait for the row lock (PostgreSQL) or the write lock (SQLite) and then find it moved.
pub(crate) fn close_hold(
    conn: &mut Conn,
    id: &str,
    from: &[&str],
    to: &str,
    charged: i64,
    returned: i64,
    now: NaiveDateTime,
) -> QueryResult<bool> {
    diesel::update(holds::table.find(id).filter(holds::state.eq_any(from)))
        .set((
            holds::state.eq(to),
            holds::charged.eq(charged),
            holds::returned.eq(returned),
            holds::closed_at.eq(Some(now)),
        ))
        .execute(conn)
        .map(|n| n == 1)
}

/// Draws `amount` from an open lease (what it charged so far grows) and moves its expiry;
/// false when it is not open.
pub(crate) fn draw_from_hold(conn: &mut Conn, id: &str, amount: i64, expires_at: NaiveDateTime) -> QueryResult<bool> {
    cached::execute(conn, cached::DrawFromHold { id, amount, expires_at }).map(|n| n == 1)
}

/// Adds `amount` to an open lease and moves its expiry; false when it is not open.
pub(crate) fn grow_hold(conn: &mut Conn, id: &str, amount: i64, expires_at: NaiveDateTime) -> QueryResult<bool> {
    diesel::update(holds::table.find(id).filter(holds::state.eq("open")))
        .set((holds::amount.eq(holds::amount + amount), holds::expires_at.eq(expires_at)))
        .execute(conn)
        .map(|n| n == 1)
}

pub(crate) fn expired_holds(conn: &mut Conn, now: NaiveDateTime, limit: i64) -> QueryResult<Vec<String>> {
    holds::table
        .filter(holds::state.eq("open").and(holds::expires_at.le(now)))
        .order(holds::expires_at.asc())
        .limit(limit)
        .select(holds::id)
        .load(conn)
}

// --- budgets ---

/// The caps that apply to a reservation: the organization's ('' scope) and the key's.
pub(crate) fn budget_limits(
    conn: &mut Conn,
    organization_id: &str,
    key: Option<&str>,
) -> QueryResult<Vec<(String, i64)>> {
    let scopes: Vec<&str> = std::iter::once("").chain(key).collect();
    budgets::table
        .filter(budgets::organization_id.eq(organization_id).and(budgets::scope.eq_any(scopes)))
        .order(budgets::scope.asc())
        .select((budgets::scope, budgets::limit_amount))
        .load(conn)
}

pub(crate) fn all_budgets(conn: &mut Conn, organization_id: &str) -> QueryResult<Vec<(String, i64)>> {
    budgets::table
        .filter(budgets::organization_id.eq(organization_id))
        .order(budgets::scope.asc())
        .select((budgets::scope, budgets::limit_amount))
        .load(conn)
}

pub(crate) fn consumed(
    conn: &mut Conn,
    organization_id: &str,
    scope: &str,
    period: NaiveDate,
) -> QueryResult<Option<i64>> {
    budget_usage::table.find((organization_id, scope, period)).select(budget_usage::consumed).first(conn).optional()
}

/// Creates the scope's usage row for the period with `initial` if there is none.
pub(crate) fn ensure_budget_usage(
    conn: &mut Conn,
    organization_id: &str,
    scope: &str,
    period: NaiveDate,
    initial: i64,
) -> QueryResult<()> {
    let insert = diesel::insert_into(budget_usage::table)
        .values((
            budget_usage::organization_id.eq(organization_id),
            budget_usage::scope.eq(scope),
            budget_usage::period_start.eq(period),
            budget_usage::consumed.eq(initial),
        ))
        .on_conflict((budget_usage::organization_id, budget_usage::scope, budget_usage::period_start))
        .do_nothing();
    match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(())
}

/// Adds `amount` to what the scope consumed in the period if that stays within `limit`
/// (a conditional update); `Err(consumed)` otherwise.
pub(crate) fn consume_within(
    conn: &mut Conn,
    organization_id: &str,
    scope: &str,
    period: NaiveDate,
    amount: i64,
    limit: i64,
) -> QueryResult<Result<(), i64>> {
    let updated = diesel::update(
        budget_usage::table.find((organization_id, scope, period)).filter(budget_usage::consumed.le(limit - amount)),
    )
    .set(budget_usage::consumed.eq(budget_usage::consumed + amount))
    .execute(conn)?;
    if updated == 1 {
        return Ok(Ok(()));
    }
    Ok(Err(consumed(conn, organization_id, scope, period)?.unwrap_or(0)))
}

/// Adds `delta` to the scope's consumption in the period, where it is tracked (a scope with a
/// cap, or that had one in the period).
pub(crate) fn add_consumed(
    conn: &mut Conn,
    organization_id: &str,
    scopes: &[&str],
    period: NaiveDate,
    delta: i64,
) -> QueryResult<()> {
    if delta == 0 {
        return Ok(());
    }
    // One statement per scope, in the given order (organization first): one lock order.
    for scope in scopes {
        diesel::update(budget_usage::table.find((organization_id, *scope, period)))
            .set(budget_usage::consumed.eq(budget_usage::consumed + delta))
            .execute(conn)?;
    }
    Ok(())
}

pub(crate) fn put_budget(
    conn: &mut Conn,
    organization_id: &str,
    scope: &str,
    limit: Option<i64>,
    now: NaiveDateTime,
) -> QueryResult<()> {
    diesel::delete(budgets::table.find((organization_id, scope))).execute(conn)?;
    if let Some(limit) = limit {
        diesel::insert_into(budgets::table)
            .values((
                budgets::organization_id.eq(organization_id),
                budgets::scope.eq(scope),
                budgets::limit_amount.eq(limit),
                budgets::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// What open holds of the scope reserved in the period, and what its usage cost in the days
/// `from..to` (the period so far): a budget set mid-period starts from there.
pub(crate) fn period_consumption(
    conn: &mut Conn,
    organization_id: &str,
    key: Option<&str>,
    period: NaiveDate,
    to: NaiveDate,
) -> QueryResult<i64> {
    let mut held = holds::table
        .filter(holds::organization_id.eq(organization_id).and(holds::state.eq("open")))
        .filter(holds::period_start.eq(period))
        .into_boxed();
    let mut used = usage_daily::table
        .filter(usage_daily::organization_id.eq(organization_id))
        .filter(usage_daily::day.ge(period).and(usage_daily::day.le(to)))
        .into_boxed();
    if let Some(key) = key {
        held = held.filter(holds::api_key_id.eq(key));
        used = used.filter(usage_daily::api_key_id.eq(key));
    }
    let held: Vec<i64> = held.select(holds::amount - holds::charged).load(conn)?;
    let used: Vec<i64> = used.select(usage_daily::cost).load(conn)?;
    Ok(held.iter().chain(used.iter()).sum())
}

// --- usage ---

/// Inserts the usage event unless its request id was recorded; false when it was.
pub(crate) fn insert_usage_if_new(conn: &mut Conn, row: &UsageEventRow) -> QueryResult<bool> {
    let insert =
        diesel::insert_into(usage_events::table).values(row).on_conflict(usage_events::request_id).do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

/// Which of these request ids were recorded already. Asked 1,000 at a time: on SQLite each id is
/// a bound value and one statement binds at most 32,766, while a lease's backlog can hold more
/// records than that (`billing.lease.max_unflushed` goes to 10M). PostgreSQL gets one array per
/// statement either way.
pub(crate) fn existing_usage(conn: &mut Conn, request_ids: &[String]) -> QueryResult<Vec<String>> {
    let mut existing = Vec::new();
    for chunk in request_ids.chunks(1_000) {
        let found: Vec<String> = usage_events::table
            .filter(usage_events::request_id.eq_any(chunk))
            .select(usage_events::request_id)
            .load(conn)?;
        existing.extend(found);
    }
    Ok(existing)
}

/// Inserts usage events none of which was recorded before (the caller checked, under the
/// lease's row lock); returns how many were inserted. One statement on PostgreSQL.
pub(crate) fn insert_usage_batch(conn: &mut Conn, rows: &[UsageEventRow]) -> QueryResult<usize> {
    match conn {
        Conn::Pg(c) => {
            let mut inserted = 0;
            for chunk in rows.chunks(1_000) {
                inserted += diesel::insert_into(usage_events::table)
                    .values(chunk)
                    .on_conflict(usage_events::request_id)
                    .do_nothing()
                    .execute(c)?;
            }
            Ok(inserted)
        }
        Conn::Sqlite(c) => {
            let mut inserted = 0;
            for row in rows {
                inserted += diesel::insert_into(usage_events::table)
                    .values(row)
                    .on_conflict(usage_events::request_id)
                    .do_nothing()
                    .execute(c)?;
            }
            Ok(inserted)
        }
    }
}

pub(crate) fn usage_exists(conn: &mut Conn, request_id: &str) -> QueryResult<bool> {
    usage_events::table
        .find(request_id)
        .select(usage_events::request_id)
        .first::<String>(conn)
        .optional()
        .map(|r| r.is_some())
}

/// Adds the event to its day's rollup (organization × day × model × key), in the event's
/// transaction.
pub(crate) fn add_to_rollup(conn: &mut Conn, row: &UsageDailyRow) -> QueryResult<()> {
    let statement = cached::AddToRollup {
        organization_id: &row.organization_id,
        day: row.day,
        model: &row.model,
        api_key_id: &row.api_key_id,
        requests: row.requests,
        input_tokens: row.input_tokens,
        output_tokens: row.output_tokens,
        cost: row.cost,
    };
    cached::execute(conn, statement).map(drop)
}

/// The rollups of the days `from..=to`.
pub(crate) fn rollups(
    conn: &mut Conn,
    organization_id: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> QueryResult<Vec<UsageDailyRow>> {
    usage_daily::table
        .filter(usage_daily::organization_id.eq(organization_id))
        .filter(usage_daily::day.ge(from).and(usage_daily::day.le(to)))
        .order((usage_daily::day.asc(), usage_daily::model.asc(), usage_daily::api_key_id.asc()))
        .select(UsageDailyRow::as_select())
        .load(conn)
}

// --- subscriptions and grants ---

pub(crate) fn find_subscription(conn: &mut Conn, organization_id: &str) -> QueryResult<Option<SubscriptionRow>> {
    subscriptions::table.find(organization_id).select(SubscriptionRow::as_select()).first(conn).optional()
}

pub(crate) fn put_subscription(
    conn: &mut Conn,
    organization_id: &str,
    plan: &str,
    now: NaiveDateTime,
) -> QueryResult<()> {
    let updated = diesel::update(subscriptions::table.find(organization_id))
        .set((subscriptions::plan.eq(plan), subscriptions::updated_at.eq(now)))
        .execute(conn)?;
    if updated == 0 {
        diesel::insert_into(subscriptions::table)
            .values(&SubscriptionRow {
                organization_id: organization_id.to_owned(),
                plan: plan.to_owned(),
                created_at: now,
                updated_at: now,
            })
            .execute(conn)?;
    }
    Ok(())
}

/// Subscribed organizations after `after`, by id.
pub(crate) fn subscriptions_page(conn: &mut Conn, after: &str, limit: i64) -> QueryResult<Vec<SubscriptionRow>> {
    subscriptions::table
        .filter(subscriptions::organization_id.gt(after))
        .order(subscriptions::organization_id.asc())
        .limit(limit)
        .select(SubscriptionRow::as_select())
        .load(conn)
}

/// Inserts a plan credit for its period unless there is one; false when there is.
pub(crate) fn insert_plan_credit_if_new(conn: &mut Conn, row: &CreditGrantRow) -> QueryResult<bool> {
    let exists = credit_grants::table
        .filter(credit_grants::organization_id.eq(&row.organization_id))
        .filter(credit_grants::kind.eq("plan_credit").and(credit_grants::period_start.eq(row.period_start)))
        .select(credit_grants::id)
        .first::<String>(conn)
        .optional()?;
    if exists.is_some() {
        return Ok(false);
    }
    diesel::insert_into(credit_grants::table).values(row).execute(conn)?;
    Ok(true)
}

pub(crate) fn insert_grant(conn: &mut Conn, row: &CreditGrantRow) -> QueryResult<()> {
    diesel::insert_into(credit_grants::table).values(row).execute(conn).map(drop)
}

pub(crate) fn grants_between(
    conn: &mut Conn,
    organization_id: &str,
    from: NaiveDateTime,
    to: NaiveDateTime,
) -> QueryResult<Vec<CreditGrantRow>> {
    credit_grants::table
        .filter(credit_grants::organization_id.eq(organization_id))
        .filter(credit_grants::created_at.ge(from).and(credit_grants::created_at.lt(to)))
        .order(credit_grants::id.asc())
        .select(CreditGrantRow::as_select())
        .load(conn)
}

// --- idempotency keys ---

pub(crate) fn find_idempotency(
    conn: &mut Conn,
    organization_id: &str,
    key: &str,
) -> QueryResult<Option<IdempotencyRow>> {
    idempotency_keys::table.find((organization_id, key)).select(IdempotencyRow::as_select()).first(conn).optional()
}

/// Claims the key; false when it was claimed already. The claim is the transaction's first
/// write, so a concurrent claim of the same key waits for this transaction (PostgreSQL's unique
/// index, SQLite's write lock) and then finds it taken.
pub(crate) fn claim_idempotency(conn: &mut Conn, row: &IdempotencyRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(idempotency_keys::table)
        .values(row)
        .on_conflict((idempotency_keys::organization_id, idempotency_keys::key))
        .do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

pub(crate) fn purge_idempotency(conn: &mut Conn, before: NaiveDateTime) -> QueryResult<usize> {
    diesel::delete(idempotency_keys::table.filter(idempotency_keys::created_at.lt(before))).execute(conn)
}

// --- invoices ---

pub(crate) fn insert_invoice_if_new(conn: &mut Conn, row: &InvoiceRow) -> QueryResult<bool> {
    let insert = diesel::insert_into(invoices::table)
        .values(row)
        .on_conflict((invoices::organization_id, invoices::period_start))
        .do_nothing();
    let inserted = match conn {
        Conn::Pg(c) => insert.execute(c)?,
        Conn::Sqlite(c) => insert.execute(c)?,
    };
    Ok(inserted == 1)
}

pub(crate) fn find_invoice(conn: &mut Conn, organization_id: &str, id: &str) -> QueryResult<Option<InvoiceRow>> {
    invoices::table
        .find(id)
        .filter(invoices::organization_id.eq(organization_id))
        .select(InvoiceRow::as_select())
        .first(conn)
        .optional()
}

pub(crate) fn find_invoice_for(
    conn: &mut Conn,
    organization_id: &str,
    period: NaiveDate,
) -> QueryResult<Option<InvoiceRow>> {
    invoices::table
        .filter(invoices::organization_id.eq(organization_id).and(invoices::period_start.eq(period)))
        .select(InvoiceRow::as_select())
        .first(conn)
        .optional()
}

pub(crate) fn invoices_page(
    conn: &mut Conn,
    organization_id: &str,
    before: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<InvoiceRow>> {
    let mut query = invoices::table.filter(invoices::organization_id.eq(organization_id)).into_boxed();
    if let Some(before) = before {
        query = query.filter(invoices::id.lt(before.to_owned()));
    }
    query.order(invoices::id.desc()).limit(limit).select(InvoiceRow::as_select()).load(conn)
}

/// Organizations with usage or grants in the period: those that get an invoice besides the
/// subscribed ones.
pub(crate) fn active_organizations(conn: &mut Conn, from: NaiveDate, to: NaiveDate) -> QueryResult<Vec<String>> {
    let mut orgs: Vec<String> = usage_daily::table
        .filter(usage_daily::day.ge(from).and(usage_daily::day.lt(to)))
        .select(usage_daily::organization_id)
        .distinct()
        .load(conn)?;
    let from_t = from.and_hms_opt(0, 0, 0).unwrap_or_default();
    let to_t = to.and_hms_opt(0, 0, 0).unwrap_or_default();
    let granted: Vec<String> = credit_grants::table
        .filter(credit_grants::created_at.ge(from_t).and(credit_grants::created_at.lt(to_t)))
        .select(credit_grants::organization_id)
        .distinct()
        .load(conn)?;
    orgs.extend(granted);
    orgs.sort();
    orgs.dedup();
    Ok(orgs)
}

// --- invariants ---

/// Everything the invariant check reads: accounts, every entry's (transfer, account, amount),
/// and open holds per organization. A full scan: for tests and operators, not requests.
pub(crate) type LedgerDump = (Vec<AccountRow>, Vec<(String, String, i64)>, Vec<(String, i64)>);

///
/// Read in one transaction that sees one snapshot (PostgreSQL: `REPEATABLE READ`, read only;
/// SQLite: a deferred transaction, whose first read fixes its WAL snapshot), so that a check on
/// a ledger being written never sees half of a transfer.
pub(crate) fn dump_ledger(conn: &mut Conn) -> QueryResult<LedgerDump> {
    conn.transaction(|conn| {
        if matches!(conn, Conn::Pg(_)) {
            diesel::sql_query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(conn)?;
        }
        let accounts = accounts::table.select(AccountRow::as_select()).load(conn)?;
        let entries = entries::table.select((entries::transfer_id, entries::account_id, entries::amount)).load(conn)?;
        let holds = holds::table
            .filter(holds::state.eq("open"))
            .select((holds::organization_id, holds::amount - holds::charged))
            .load(conn)?;
        Ok((accounts, entries, holds))
    })
}
