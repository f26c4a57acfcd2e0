//! `LeasedBilling`: the fast path, on the caller's side of `BillingApi`.
//!
//! It wraps any `BillingApi` (the in-process service or `HttpBillingClient`, so it works with
//! billing remote too) and answers `reserve`, `settle` and `release` from memory:
//!
//! - **Leases.** Per organization and API key, it reserves a slice of spendable credit as one
//!   hold (one ledger transfer, with the same conditional updates as any reservation, budgets
//!   included), then authorizes requests against that slice in memory. It tops the lease up in
//!   the background (`extend_lease`) before it runs dry, sizing slices from the recent spend rate
//!   (`horizon_ms` of spend, within `min_slice`..`max_slice`), never above what is spendable: a
//!   refused slice is retried at half of what was spendable, and below that the request takes
//!   the direct path (one transaction, exact).
//! - **Group commits.** Settlements are acknowledged at once and written every
//!   `flush_interval_ms`, one `commit_lease` transaction per lease for everything settled since
//!   the last one (idempotent by request id, so a retried commit charges nothing twice).
//! - **Return.** A lease idle for `idle_release_ms` is committed and closed (its rest goes back
//!   to available credit); `shutdown()` does that for all; a lease whose process died is
//!   released by the billing service's sweeper once its TTL (`lease_ttl_ms`, pushed forward by
//!   each commit) passes.
//!
//! Bounds (docs/BILLING.md): the ledger never lends out more than is spendable, so N processes
//! cannot overshoot a budget by more than the direct path does (each request's cost above its
//! own hold). A `kill -9` loses the settlements of at most the last flush interval (the
//! customer is not charged for them) and nothing else: the lease's rest returns by expiry.

use crate::api::*;
use crate::config::LeaseConfig;
use crate::error::BillingError;
use async_trait::async_trait;
use shared::metrics::{BillingMetrics, BillingOp, BillingOutcome, BillingPath, SliceKind, SliceOutcome};
use shared::{Page, PageRequest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

type SlotKey = (OrganizationId, Option<ApiKeyId>);

/// `BillingApi` with caller-side leases and group-committed settlements.
pub struct LeasedBilling {
    shared: Arc<Shared>,
    /// Tells the flusher to stop once its current pass is done.
    stop: tokio::sync::watch::Sender<bool>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// With the flusher on the background runtime, what looks after it (`Shared::watch`).
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for LeasedBilling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeasedBilling").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl Drop for LeasedBilling {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            ticker.abort();
        }
        if let Some(watcher) = self.watcher.get_mut().unwrap_or_else(PoisonError::into_inner).take() {
            watcher.abort();
        }
    }
}

struct Shared {
    inner: Arc<dyn BillingApi>,
    /// Woken when a lease is opened or topped up (or the attempt failed).
    changed: tokio::sync::Notify,
    /// Set, under the state's lock, while the flusher sleeps because there is nothing to look
    /// after (no slot, local hold or settle answer): an idle process does not wake every flush
    /// interval. A reservation that finds it set wakes the flusher through `wake`.
    parked: AtomicBool,
    wake: tokio::sync::Notify,
    /// The same for the watch (`Shared::watch`).
    watch_wake: tokio::sync::Notify,
    config: LeaseConfig,
    state: Mutex<State>,
    stats: Counters,
    /// `keel_billing_*`: the leased path, slices, commits, what is unflushed.
    metrics: BillingMetrics,
    /// The runtime the leases were made on: commits at the ordinary priority run there (the
    /// flusher itself may run on the background runtime).
    ordinary: tokio::runtime::Handle,
    /// Set while a catch-up pass runs (see `catch_up`); `shutdown` waits for it.
    catching_up: AtomicBool,
    catch_up_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Counters {
    leased: AtomicU64,
    direct: AtomicU64,
    lease_opens: AtomicU64,
    lease_extends: AtomicU64,
    commits: AtomicU64,
    committed_records: AtomicU64,
    passes: AtomicU64,
    catch_ups: AtomicU64,
}

/// What this process's leases did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Reservations authorized in memory, against a lease.
    pub leased: u64,
    /// Reservations that took the direct path.
    pub direct: u64,
    pub lease_opens: u64,
    pub lease_extends: u64,
    /// `commit_lease` calls (group commits).
    pub commits: u64,
    pub committed_records: u64,
    /// Passes over the leases: the flusher's, one per `flush_interval_ms` while there is
    /// something to look after and none while there is not, and those of `flush`/`shutdown`.
    pub passes: u64,
    /// Passes the watch made because the flusher on the background runtime had fallen four
    /// flush intervals behind (a busy core gives it little); counted in `passes` too.
    pub catch_ups: u64,
}

#[derive(Default)]
struct State {
    slots: HashMap<SlotKey, Slot>,
    holds: HashMap<HoldId, LocalHold>,
    keys: HashMap<(OrganizationId, String), HoldId>,
    /// Recent answers of settles, so a retried settle replays its answer. A retry after they
    /// are forgotten is passed to the wrapped service, which does not know the local hold and
    /// answers `hold_not_found`: never a second charge.
    settled: Replay,
}

/// Settle answers (charged, returned) by hold, in two generations: an answer goes into
/// `current`; every `settle_replay_ms` `current` becomes `previous` and the old `previous` is
/// dropped. So an answer is kept at least `settle_replay_ms` and at most twice that, forgetting
/// is one drop per window instead of work per answer, and an answer costs one map entry (about
/// 33 bytes; a queue of settle times beside the map doubled that).
#[derive(Default)]
struct Replay {
    current: HashMap<HoldId, (Money, Money)>,
    previous: HashMap<HoldId, (Money, Money)>,
    /// When `current` began.
    since: Option<Instant>,
}

impl Replay {
    fn get(&self, hold: &HoldId) -> Option<(Money, Money)> {
        self.current.get(hold).or_else(|| self.previous.get(hold)).copied()
    }

    fn is_empty(&self) -> bool {
        self.current.is_empty() && self.previous.is_empty()
    }

    fn insert(&mut self, hold: HoldId, answer: (Money, Money)) {
        self.since.get_or_insert_with(Instant::now);
        self.current.insert(hold, answer);
    }

    /// Drops the older generation once the current one is a window old.
    fn expire(&mut self, now: Instant, window: Duration) {
        let Some(since) = self.since else { return };
        if now.duration_since(since) < window {
            return;
        }
        // At a steady rate the next generation holds as many answers: sized once, it does not
        // grow by doubling (each doubling leaves the old table to the allocator).
        let next = HashMap::with_capacity(self.current.len());
        self.previous = std::mem::replace(&mut self.current, next);
        self.since = Some(now);
    }
}

struct Slot {
    /// The lease (a hold in the ledger), when there is one.
    lease: Option<HoldId>,
    /// What can still be authorized against it, in nano-units (below zero after an overshoot).
    remaining: i64,
    /// Settled usage not yet committed.
    pending: Vec<UsageRecord>,
    /// Since when `pending` has held records (None while empty): how far behind the flusher is.
    pending_since: Option<Instant>,
    /// Local holds authorized against the current lease and not yet settled or released.
    outstanding: usize,
    opening: bool,
    refilling: bool,
    /// No lease (or no more of one) until then: what is spendable is too small.
    starved_until: Option<Instant>,
    last_used: Instant,
    last_commit: Instant,
    /// Spend rate estimate, nano-units per second (authorized amounts).
    rate: f64,
    window_start: Instant,
    window_spend: i64,
}

impl Slot {
    fn new(now: Instant) -> Self {
        Self {
            lease: None,
            remaining: 0,
            pending: Vec::new(),
            pending_since: None,
            outstanding: 0,
            opening: false,
            refilling: false,
            starved_until: None,
            last_used: now,
            last_commit: now,
            rate: 0.0,
            window_start: now,
            window_spend: 0,
        }
    }

    fn note_spend(&mut self, amount: i64, now: Instant) {
        self.last_used = now;
        self.window_spend += amount;
        let elapsed = now.duration_since(self.window_start).as_secs_f64();
        if elapsed >= 0.1 {
            let sample = self.window_spend as f64 / elapsed;
            self.rate = if self.rate == 0.0 { sample } else { 0.7 * self.rate + 0.3 * sample };
            self.window_start = now;
            self.window_spend = 0;
        }
    }

    fn starved(&self, now: Instant) -> bool {
        self.starved_until.is_some_and(|t| now < t)
    }
}

struct LocalHold {
    slot: SlotKey,
    lease: HoldId,
    amount: i64,
    idempotency_key: String,
    expires: Instant,
    expires_at: chrono::DateTime<chrono::Utc>,
}

enum Step {
    Authorized(Hold, Option<(HoldId, i64)>),
    Open(i64),
    /// A lease is being opened or topped up: wait for it rather than take the direct path.
    Wait(Option<(HoldId, i64)>),
    Direct,
}

/// The metrics' outcome of a lease request.
fn slice_outcome<T>(result: &Result<T, BillingError>) -> SliceOutcome {
    match result {
        Ok(_) => SliceOutcome::Granted,
        Err(BillingError::BudgetExceeded { .. }) => SliceOutcome::Refused,
        Err(_) => SliceOutcome::Error,
    }
}

/// How many times a reservation waits for a lease to be opened or topped up before it takes
/// the direct path, and how long each wait lasts at most.
const WAITS: usize = 40;
const WAIT: Duration = Duration::from_millis(50);

impl LeasedBilling {
    /// Wraps `inner`; starts the background flusher on the current tokio runtime. Records into
    /// `metrics` (the process's `keel_billing_*` families).
    pub fn new(inner: Arc<dyn BillingApi>, config: LeaseConfig, metrics: BillingMetrics) -> Self {
        let shared = Arc::new(Shared {
            inner,
            changed: tokio::sync::Notify::new(),
            parked: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            watch_wake: tokio::sync::Notify::new(),
            config,
            state: Mutex::new(State::default()),
            stats: Counters::default(),
            metrics,
            ordinary: tokio::runtime::Handle::current(),
            catching_up: AtomicBool::new(false),
            catch_up_task: Mutex::new(None),
        });
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let run = Shared::run(Arc::downgrade(&shared), stopped);
        // With background commits the whole flusher steps aside: its timer and the end of each
        // commit would otherwise wake an ordinary thread on the worker's core 100 times a second.
        let (ticker, watcher) = if shared.config.background_commits {
            let watch = Shared::watch(Arc::downgrade(&shared), stop.subscribe());
            (shared::db::spawn_background(run), Some(tokio::spawn(watch)))
        } else {
            (tokio::spawn(run), None)
        };
        Self { shared, stop, ticker: Mutex::new(Some(ticker)), watcher: Mutex::new(watcher) }
    }

    pub fn stats(&self) -> LeaseStats {
        let s = &self.shared.stats;
        LeaseStats {
            leased: s.leased.load(Ordering::Relaxed),
            direct: s.direct.load(Ordering::Relaxed),
            lease_opens: s.lease_opens.load(Ordering::Relaxed),
            lease_extends: s.lease_extends.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            committed_records: s.committed_records.load(Ordering::Relaxed),
            passes: s.passes.load(Ordering::Relaxed),
            catch_ups: s.catch_ups.load(Ordering::Relaxed),
        }
    }

    /// Writes every pending settlement now (without closing leases).
    pub async fn flush(&self) {
        self.shared.tick(false, false).await;
    }

    /// Writes every pending settlement and returns every lease: for a graceful stop. Local holds
    /// still open lose their lease; their settlements are then charged with `record_usage`.
    ///
    /// The flusher is stopped between two passes, never aborted: an aborted pass would drop the
    /// commit it has in flight, whose records are already taken from the queue (lost, with
    /// billing remote; written but not counted in [`LeaseStats`], in-process).
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        let ticker = self.ticker.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(ticker) = ticker {
            let _ = ticker.await;
        }
        // Likewise a catch-up pass: its records are off the queue too (the watch starts none
        // after it has stopped).
        let watcher = self.watcher.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(watcher) = watcher {
            let _ = watcher.await;
        }
        let catch_up = self.shared.catch_up_task.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(task) = catch_up {
            let _ = task.await;
        }
        self.shared.tick(true, false).await;
    }
}

impl State {
    /// Keeps a settle's answer for retries (see `settled`).
    fn remember(&mut self, answer: Settlement) {
        self.settled.insert(answer.hold_id, (answer.charged, answer.returned));
    }
}

/// A ticker for the flusher and the watch: the first tick one `period` from now (there is
/// nothing to write at the start, and a pass at once would, on the background runtime, race
/// with the first calls); a late tick delays the next ones instead of bunching them.
fn ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Waits for `event`; false if a stop (or the stop sender gone) comes first.
async fn unless_stopped<F: std::future::Future>(stop: &mut tokio::sync::watch::Receiver<bool>, event: F) -> bool {
    tokio::select! {
        biased;
        _ = stop.wait_for(|stopped| *stopped) => false,
        _ = event => true,
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(weak: std::sync::Weak<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let config = weak.upgrade().map_or_else(LeaseConfig::default, |s| s.config.clone());
        let interval = Duration::from_millis(config.flush_interval_ms.max(1));
        let mut ticker = ticker(interval);
        let mut background = config.background_commits;
        // A stop (or the sender gone) ends the loop between passes only.
        while unless_stopped(&mut stop, ticker.tick()).await {
            let Some(shared) = weak.upgrade() else { return };
            let started = Instant::now();
            shared.tick(false, background).await;
            // A pass longer than the interval: the background pool is not keeping up (a busy
            // core gives it little), so the next pass commits at the ordinary priority.
            background = config.background_commits && started.elapsed() <= interval;
            if shared.park_if_idle() {
                if !unless_stopped(&mut stop, shared.wake.notified()).await {
                    return;
                }
                shared.parked.store(false, Ordering::Relaxed);
                // The first pass one interval after the wake-up, as if it had ticked all along.
                ticker.reset();
            }
        }
    }

    /// Whether the flusher may sleep until the next reservation: nothing is left to commit,
    /// close, keep alive, expire or forget. Decided under the state's lock, so a reservation
    /// either changed the state first (not idle) or finds `parked` set afterwards and wakes
    /// the flusher (`unpark`).
    fn park_if_idle(&self) -> bool {
        let state = self.lock();
        let idle = state.slots.is_empty() && state.holds.is_empty() && state.settled.is_empty();
        if idle {
            self.parked.store(true, Ordering::Relaxed);
        }
        idle
    }

    /// After a reservation changed the state: wakes a parked flusher. A wake-up that finds the
    /// flusher running leaves a permit, which costs one idle pass later at most.
    fn unpark(&self) {
        if self.parked.load(Ordering::Relaxed) {
            self.wake.notify_one();
            self.watch_wake.notify_one();
        }
    }

    /// Looks after a flusher on the background runtime, at the ordinary priority: every four
    /// flush intervals, if a lease's oldest unwritten settlement is older than that (a busy core
    /// gives a background thread little), a pass of its own. So what a crash can lose stays
    /// within a few intervals whatever the load, for 12 wake-ups a second at the default
    /// interval instead of the flusher's 100; none while the flusher sleeps.
    async fn watch(weak: std::sync::Weak<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(period) = weak.upgrade().map(|s| s.catch_up_after()) else { return };
        let mut ticker = ticker(period);
        while unless_stopped(&mut stop, ticker.tick()).await {
            let Some(shared) = weak.upgrade() else { return };
            if shared.parked.load(Ordering::Relaxed) {
                if !unless_stopped(&mut stop, shared.watch_wake.notified()).await {
                    return;
                }
                ticker.reset();
                continue;
            }
            let now = Instant::now();
            let behind =
                shared.lock().slots.values().any(|s| s.pending_since.is_some_and(|t| now.duration_since(t) > period));
            if behind {
                shared.catch_up();
            }
        }
    }

    /// How far behind a flusher on the background runtime may fall before the watch makes a
    /// pass itself: four flush intervals.
    fn catch_up_after(&self) -> Duration {
        Duration::from_millis(self.config.flush_interval_ms.max(1).saturating_mul(4))
    }

    /// A pass at the ordinary priority on the caller's runtime, unless one is running.
    fn catch_up(self: &Arc<Self>) {
        if self.catching_up.swap(true, Ordering::AcqRel) {
            return;
        }
        self.stats.catch_ups.fetch_add(1, Ordering::Relaxed);
        let shared = self.clone();
        let task = tokio::spawn(async move {
            shared.tick(false, false).await;
            shared.catching_up.store(false, Ordering::Release);
        });
        *self.catch_up_task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    fn slice_for(&self, slot: &Slot, amount: i64) -> i64 {
        let wanted = (slot.rate * self.config.horizon_ms as f64 / 1000.0) as i64;
        // At least a few requests' worth per slice.
        wanted
            .clamp(self.config.min_slice.0, self.config.max_slice.0.max(self.config.min_slice.0))
            .max(amount.saturating_mul(4))
    }

    /// One flusher pass: commits pending usage, closes idle leases (or all, with `close_all`),
    /// keeps busy leases alive, forgets local holds past their TTL and old settle answers. With
    /// `background`, the commits run on the database's background pool.
    async fn tick(&self, close_all: bool, background: bool) {
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let idle = Duration::from_millis(self.config.idle_release_ms);
        let keep_alive = self.ttl() / 3;
        let mut work: Vec<(SlotKey, HoldId, Vec<UsageRecord>, bool)> = Vec::new();
        {
            let mut state = self.lock();
            // Local holds past their TTL give their amount back to the slot.
            let expired: Vec<HoldId> =
                state.holds.iter().filter(|(_, h)| h.expires <= now).map(|(id, _)| *id).collect();
            for id in expired {
                if let Some(h) = state.holds.remove(&id) {
                    state.keys.remove(&(h.slot.0, h.idempotency_key.clone()));
                    if let Some(slot) = state.slots.get_mut(&h.slot)
                        && slot.lease == Some(h.lease)
                    {
                        slot.remaining += h.amount;
                        slot.outstanding = slot.outstanding.saturating_sub(1);
                    }
                }
            }
            state.settled.expire(now, Duration::from_millis(self.config.settle_replay_ms));
            for (key, slot) in state.slots.iter_mut() {
                let Some(lease) = slot.lease else { continue };
                let close = close_all || (slot.outstanding == 0 && now.duration_since(slot.last_used) >= idle);
                let stale = now.duration_since(slot.last_commit) >= keep_alive;
                if slot.pending.is_empty() && !close && !stale {
                    continue;
                }
                // A closing commit takes everything (in several transactions if need be).
                let take = if close { slot.pending.len() } else { slot.pending.len().min(self.config.max_batch) };
                let usage: Vec<UsageRecord> = slot.pending.drain(..take).collect();
                slot.pending_since = (!slot.pending.is_empty()).then_some(now);
                if close {
                    // No more authorizations against it from here on.
                    slot.lease = None;
                    slot.remaining = 0;
                    slot.outstanding = 0;
                }
                slot.last_commit = now;
                work.push((*key, lease, usage, close));
            }
            // What this process's leases hold: unauthorized, authorized and unsettled, settled
            // and uncommitted (batches being written included).
            let mut leases = 0;
            let mut credit: i64 = state.holds.values().map(|h| h.amount).sum();
            for slot in state.slots.values().filter(|s| s.lease.is_some()) {
                leases += 1;
                credit += slot.remaining.max(0) + slot.pending.iter().map(|u| u.cost.0).sum::<i64>();
            }
            credit += work.iter().filter(|w| !w.3).flat_map(|w| w.2.iter()).map(|u| u.cost.0).sum::<i64>();
            self.metrics.set_leases(leases, credit);
            state.slots.retain(|_, s| {
                s.lease.is_some()
                    || s.opening
                    || s.refilling
                    || !s.pending.is_empty()
                    || now.duration_since(s.last_used) < idle
            });
        }
        let commits =
            work.into_iter().map(|(key, lease, usage, close)| self.commit(key, lease, usage, close, background));
        futures_util::future::join_all(commits).await;
    }

    async fn commit(&self, key: SlotKey, lease: HoldId, mut usage: Vec<UsageRecord>, close: bool, background: bool) {
        // Batches of at most `max_batch`; only the last one closes.
        while usage.len() > self.config.max_batch {
            let rest = usage.split_off(self.config.max_batch);
            let batch = std::mem::replace(&mut usage, rest);
            Box::pin(self.commit(key, lease, batch, false, background)).await;
        }
        let count = usage.len() as u64;
        let request = CommitLeaseRequest { hold_id: lease, usage: usage.clone(), close, ttl: self.ttl() };
        let started = Instant::now();
        let inner = self.inner.clone();
        let committing = async move { inner.commit_lease(request).await };
        let result = if background {
            shared::db::in_background(committing).await
        } else {
            // On the runtime the leases were made on: this pass may run on the background one.
            self.ordinary
                .spawn(committing)
                .await
                .unwrap_or_else(|e| Err(BillingError::Unavailable(format!("lease commit did not run: {e}"))))
        };
        self.metrics.commit(result.is_ok(), usage.len(), started.elapsed());
        match result {
            Ok(done) => {
                self.metrics.flushed(usage.len());
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.committed_records.fetch_add(count, Ordering::Relaxed);
                if done.closed && !close {
                    // The lease had expired (a long pause): the batch was charged from available.
                    let mut state = self.lock();
                    if let Some(slot) = state.slots.get_mut(&key)
                        && slot.lease == Some(lease)
                    {
                        slot.lease = None;
                        slot.remaining = 0;
                        slot.outstanding = 0;
                    }
                }
            }
            Err(BillingError::HoldNotFound) => {
                // The lease is gone: charge each record on its own (idempotent by request id).
                for u in usage {
                    let (id, cost) = (u.request_id.clone(), u.cost.0);
                    let request = RecordUsageRequest { organization_id: key.0, usage: u };
                    if let Err(e) = self.inner.record_usage(request).await {
                        self.metrics.unrecorded();
                        tracing::error!(error = %e, request.id = %id, cost_nanos = cost, "usage of a vanished lease could not be recorded");
                    }
                    self.metrics.flushed(1);
                }
            }
            Err(e) => {
                // Unavailable: keep the records for the next pass (a retry charges nothing
                // twice). A close that failed leaves the rest to the sweeper (at expiry) and
                // retries the records as plain usage, so none is lost.
                tracing::warn!(error = %e, records = count, "lease commit failed; retrying");
                if close {
                    for u in usage {
                        let (id, cost) = (u.request_id.clone(), u.cost.0);
                        let request = RecordUsageRequest { organization_id: key.0, usage: u };
                        if let Err(e) = self.inner.record_usage(request).await {
                            self.metrics.unrecorded();
                            tracing::error!(error = %e, request.id = %id, cost_nanos = cost, "usage of a lease that could not be closed was not recorded");
                        }
                        self.metrics.flushed(1);
                    }
                    return;
                }
                let mut state = self.lock();
                let slot = state.slots.entry(key).or_insert_with(|| Slot::new(Instant::now()));
                if slot.lease == Some(lease) {
                    let mut usage = usage;
                    usage.append(&mut slot.pending);
                    slot.pending = usage;
                    // Retried by the next pass: counted as behind from now, so an outage does
                    // not make every settle start a pass of its own.
                    slot.pending_since = Some(Instant::now());
                } else {
                    drop(state);
                    self.requeue_elsewhere(key, usage);
                }
            }
        }
    }

    /// Records whose lease has moved on: charged one by one in the background.
    fn requeue_elsewhere(&self, key: SlotKey, usage: Vec<UsageRecord>) {
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            for u in usage {
                let (id, cost) = (u.request_id.clone(), u.cost.0);
                let request = RecordUsageRequest { organization_id: key.0, usage: u };
                if let Err(e) = inner.record_usage(request).await {
                    metrics.unrecorded();
                    tracing::error!(error = %e, request.id = %id, cost_nanos = cost, "usage of a replaced lease could not be recorded");
                }
                metrics.flushed(1);
            }
        });
    }

    /// Reserves a new lease of about `size` for the slot; on a refusal, once more at half of
    /// what was spendable. Returns whether the slot has a lease now.
    async fn open(&self, key: SlotKey, size: i64, min_useful: i64) -> bool {
        let mut size = size;
        for _ in 0..2 {
            let request = ReserveRequest {
                organization_id: key.0,
                api_key_id: key.1,
                amount: Money(size),
                idempotency_key: format!("{LEASE_KEY_PREFIX}{}", HoldId::new()),
                ttl: self.ttl(),
            };
            let result = self.inner.reserve(request).await;
            self.metrics.slice(SliceKind::Open, slice_outcome(&result));
            match result {
                Ok(hold) => {
                    self.stats.lease_opens.fetch_add(1, Ordering::Relaxed);
                    let mut state = self.lock();
                    let slot = state.slots.entry(key).or_insert_with(|| Slot::new(Instant::now()));
                    slot.opening = false;
                    slot.lease = Some(hold.id);
                    slot.remaining += size;
                    slot.outstanding = 0;
                    slot.last_commit = Instant::now();
                    drop(state);
                    self.changed.notify_waiters();
                    return true;
                }
                Err(BillingError::BudgetExceeded { short_by, .. }) => {
                    let spendable = size - short_by;
                    size = spendable / 2;
                    if size < min_useful {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a lease could not be opened; taking the direct path");
                    break;
                }
            }
        }
        {
            let mut state = self.lock();
            if let Some(slot) = state.slots.get_mut(&key) {
                slot.opening = false;
                slot.starved_until = Some(Instant::now() + Duration::from_millis(self.config.starved_retry_ms));
            }
        }
        self.changed.notify_waiters();
        false
    }

    /// Tops the lease up in the background; on a refusal, once more at half of what was
    /// spendable.
    async fn refill(self: Arc<Self>, key: SlotKey, lease: HoldId, size: i64, min_useful: i64) {
        let mut size = size;
        let mut topped = false;
        for _ in 0..2 {
            let request = ExtendLeaseRequest { hold_id: lease, amount: Money(size), ttl: self.ttl() };
            let result = self.inner.extend_lease(request).await;
            self.metrics.slice(SliceKind::TopUp, slice_outcome(&result));
            match result {
                Ok(_) => {
                    self.stats.lease_extends.fetch_add(1, Ordering::Relaxed);
                    topped = true;
                    break;
                }
                Err(BillingError::BudgetExceeded { short_by, .. }) => {
                    size = (size - short_by) / 2;
                    if size < min_useful {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a lease could not be topped up; it serves what it has left");
                    break;
                }
            }
        }
        {
            let mut state = self.lock();
            if let Some(slot) = state.slots.get_mut(&key) {
                slot.refilling = false;
                if slot.lease == Some(lease) {
                    if topped {
                        slot.remaining += size;
                    } else {
                        slot.starved_until = Some(Instant::now() + Duration::from_millis(self.config.starved_retry_ms));
                    }
                }
            }
        }
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl BillingApi for LeasedBilling {
    async fn reserve(&self, request: ReserveRequest) -> Result<Hold, BillingError> {
        let shared = &self.shared;
        let amount = request.amount.0;
        let key: SlotKey = (request.organization_id, request.api_key_id);
        if amount <= 0 || request.ttl.is_zero() {
            return shared.inner.reserve(request).await;
        }
        for _ in 0..WAITS {
            let now = Instant::now();
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let plan = {
                let mut state = shared.lock();
                if let Some(id) = state.keys.get(&(request.organization_id, request.idempotency_key.clone())).copied()
                    && let Some(h) = state.holds.get(&id)
                {
                    shared.metrics.decision(BillingOp::Reserve, BillingPath::Leased, BillingOutcome::Ok);
                    return Ok(Hold {
                        id,
                        organization_id: h.slot.0,
                        api_key_id: h.slot.1,
                        amount: Money(h.amount),
                        expires_at: h.expires_at,
                    });
                }
                let slot = state.slots.entry(key).or_insert_with(|| Slot::new(now));
                if slot.pending.len() >= shared.config.max_unflushed {
                    // The commits are behind: back-pressure through the direct path.
                    Step::Direct
                } else if let Some(lease) = slot.lease.filter(|_| slot.remaining >= amount) {
                    slot.remaining -= amount;
                    slot.outstanding += 1;
                    slot.note_spend(amount, now);
                    let size = shared.slice_for(slot, amount);
                    let refill = (slot.remaining < size / 2 && !slot.refilling && !slot.starved(now)).then(|| {
                        slot.refilling = true;
                        (lease, size)
                    });
                    let id = HoldId::new();
                    let expires_at = chrono::Utc::now()
                        + chrono::Duration::milliseconds(
                            i64::try_from(request.ttl.as_millis()).unwrap_or(i64::MAX / 2),
                        );
                    state.holds.insert(
                        id,
                        LocalHold {
                            slot: key,
                            lease,
                            amount,
                            idempotency_key: request.idempotency_key.clone(),
                            expires: now + request.ttl,
                            expires_at,
                        },
                    );
                    state.keys.insert((request.organization_id, request.idempotency_key.clone()), id);
                    let hold = Hold {
                        id,
                        organization_id: request.organization_id,
                        api_key_id: request.api_key_id,
                        amount: request.amount,
                        expires_at,
                    };
                    Step::Authorized(hold, refill)
                } else if slot.lease.is_none() && !slot.opening && !slot.starved(now) {
                    slot.opening = true;
                    slot.note_spend(amount, now);
                    Step::Open(shared.slice_for(slot, amount))
                } else if slot.starved(now) {
                    Step::Direct
                } else if let Some(lease) = slot.lease.filter(|_| !slot.refilling) {
                    // The lease is short of this request: top it up and wait for it.
                    slot.refilling = true;
                    Step::Wait(Some((lease, shared.slice_for(slot, amount))))
                } else {
                    Step::Wait(None)
                }
            };
            shared.unpark();
            match plan {
                Step::Authorized(hold, refill) => {
                    shared.stats.leased.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.decision(BillingOp::Reserve, BillingPath::Leased, BillingOutcome::Ok);
                    if let Some((lease, size)) = refill {
                        tokio::spawn(shared.clone().refill(key, lease, size, amount.saturating_mul(4)));
                    }
                    return Ok(hold);
                }
                Step::Open(size) => {
                    if shared.open(key, size, amount.saturating_mul(4)).await {
                        continue;
                    }
                    break;
                }
                Step::Wait(refill) => {
                    if let Some((lease, size)) = refill {
                        tokio::spawn(shared.clone().refill(key, lease, size, amount.saturating_mul(4)));
                    }
                    let _ = tokio::time::timeout(WAIT, changed).await;
                }
                Step::Direct => break,
            }
        }
        shared.stats.direct.fetch_add(1, Ordering::Relaxed);
        shared.inner.reserve(request).await
    }

    async fn settle(&self, request: SettleRequest) -> Result<Settlement, BillingError> {
        let shared = &self.shared;
        if request.usage.cost < Money::ZERO || request.usage.request_id.is_empty() || request.usage.model.is_empty() {
            return shared.inner.settle(request).await;
        }
        enum Outcome {
            Done(Settlement),
            Remote,
            Orphan(OrganizationId, Settlement, LocalHold),
        }
        let outcome = {
            let mut state = shared.lock();
            if let Some((charged, returned)) = state.settled.get(&request.hold_id) {
                Outcome::Done(Settlement { hold_id: request.hold_id, charged, returned })
            } else if let Some(hold) = state.holds.remove(&request.hold_id) {
                state.keys.remove(&(hold.slot.0, hold.idempotency_key.clone()));
                let cost = request.usage.cost.0;
                let answer = Settlement {
                    hold_id: request.hold_id,
                    charged: request.usage.cost,
                    returned: Money((hold.amount - cost).max(0)),
                };
                match state.slots.get_mut(&hold.slot) {
                    Some(slot) if slot.lease == Some(hold.lease) => {
                        slot.remaining += hold.amount - cost;
                        slot.outstanding = slot.outstanding.saturating_sub(1);
                        let now = Instant::now();
                        slot.last_used = now;
                        slot.pending_since.get_or_insert(now);
                        slot.pending.push(request.usage.clone());
                        shared.metrics.acknowledged();
                        state.remember(answer.clone());
                        Outcome::Done(answer)
                    }
                    _ => Outcome::Orphan(hold.slot.0, answer, hold),
                }
            } else {
                Outcome::Remote
            }
        };
        let (organization_id, answer, hold) = match outcome {
            Outcome::Done(answer) => {
                shared.metrics.decision(BillingOp::Settle, BillingPath::Leased, BillingOutcome::Ok);
                return Ok(answer);
            }
            Outcome::Remote => return shared.inner.settle(request).await,
            Outcome::Orphan(org, answer, hold) => (org, answer, hold),
        };
        // The lease was returned while this request ran: charge it on its own (idempotent by
        // request id). Only a recorded charge is remembered as settled; after a failure the
        // hold is put back, so the caller's retry records it again instead of being told it
        // was settled.
        let recorded = shared.inner.record_usage(RecordUsageRequest { organization_id, usage: request.usage }).await;
        let outcome = if recorded.is_ok() { BillingOutcome::Ok } else { BillingOutcome::Error };
        shared.metrics.decision(BillingOp::Settle, BillingPath::Leased, outcome);
        let mut state = shared.lock();
        match recorded {
            Ok(_) => {
                state.remember(answer.clone());
                Ok(answer)
            }
            Err(error) => {
                state.keys.insert((hold.slot.0, hold.idempotency_key.clone()), request.hold_id);
                state.holds.insert(request.hold_id, hold);
                Err(error)
            }
        }
    }

    async fn release(&self, hold_id: HoldId) -> Result<(), BillingError> {
        let shared = &self.shared;
        {
            let mut state = shared.lock();
            if state.settled.get(&hold_id).is_some() {
                shared.metrics.decision(BillingOp::Release, BillingPath::Leased, BillingOutcome::Ok);
                return Ok(());
            }
            if let Some(hold) = state.holds.remove(&hold_id) {
                shared.metrics.decision(BillingOp::Release, BillingPath::Leased, BillingOutcome::Ok);
                state.keys.remove(&(hold.slot.0, hold.idempotency_key.clone()));
                if let Some(slot) = state.slots.get_mut(&hold.slot)
                    && slot.lease == Some(hold.lease)
                {
                    slot.remaining += hold.amount;
                    slot.outstanding = slot.outstanding.saturating_sub(1);
                }
                return Ok(());
            }
        }
        shared.inner.release(hold_id).await
    }

    async fn record_usage(&self, request: RecordUsageRequest) -> Result<Recorded, BillingError> {
        self.shared.inner.record_usage(request).await
    }

    async fn extend_lease(&self, request: ExtendLeaseRequest) -> Result<Hold, BillingError> {
        self.shared.inner.extend_lease(request).await
    }

    async fn commit_lease(&self, request: CommitLeaseRequest) -> Result<LeaseCommitted, BillingError> {
        self.shared.inner.commit_lease(request).await
    }

    async fn limits(&self, organization_id: OrganizationId) -> Result<PlanLimits, BillingError> {
        self.shared.inner.limits(organization_id).await
    }

    async fn plans(&self) -> Result<Vec<Plan>, BillingError> {
        self.shared.inner.plans().await
    }

    async fn subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
    ) -> Result<Subscription, BillingError> {
        self.shared.inner.subscription(principal, organization_id).await
    }

    async fn put_subscription(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        request: PutSubscriptionRequest,
    ) -> Result<Subscription, BillingError> {
        self.shared.inner.put_subscription(principal, organization_id, request).await
    }

    async fn grant_credit(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        idempotency_key: &str,
        request: GrantCreditRequest,
    ) -> Result<CreditGrant, BillingError> {
        self.shared.inner.grant_credit(principal, organization_id, idempotency_key, request).await
    }

    async fn budgets(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Budgets, BillingError> {
        self.shared.inner.budgets(principal, organization_id).await
    }

    async fn put_budget(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        api_key_id: Option<ApiKeyId>,
        request: PutBudgetRequest,
    ) -> Result<Budget, BillingError> {
        self.shared.inner.put_budget(principal, organization_id, api_key_id, request).await
    }

    async fn balance(&self, principal: &Principal, organization_id: OrganizationId) -> Result<Balance, BillingError> {
        self.shared.inner.balance(principal, organization_id).await
    }

    async fn usage(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        query: UsageQuery,
    ) -> Result<UsageReport, BillingError> {
        self.shared.inner.usage(principal, organization_id, query).await
    }

    async fn ledger(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<LedgerEntry>, BillingError> {
        self.shared.inner.ledger(principal, organization_id, page).await
    }

    async fn invoices(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        page: PageRequest,
    ) -> Result<Page<Invoice>, BillingError> {
        self.shared.inner.invoices(principal, organization_id, page).await
    }

    async fn invoice(
        &self,
        principal: &Principal,
        organization_id: OrganizationId,
        invoice_id: InvoiceId,
    ) -> Result<Invoice, BillingError> {
        self.shared.inner.invoice(principal, organization_id, invoice_id).await
    }

    async fn ready(&self) -> Result<(), BillingError> {
        self.shared.inner.ready().await
    }
}

#[cfg(test)]
mod replay_tests {
    use super::*;

    #[test]
    fn an_answer_is_kept_one_window_at_least_and_two_at_most() {
        let window = Duration::from_secs(10);
        let mut replay = Replay::default();
        let (a, b) = (HoldId::new(), HoldId::new());
        replay.insert(a, (Money(3), Money(7)));
        let start = replay.since.unwrap();
        replay.expire(start + window - Duration::from_millis(1), window);
        assert_eq!(replay.get(&a), Some((Money(3), Money(7))), "younger than the window");
        replay.expire(start + window, window);
        assert_eq!(replay.get(&a), Some((Money(3), Money(7))), "one window old: in the older generation");
        replay.insert(b, (Money(1), Money(0)));
        replay.expire(start + window * 2, window);
        assert_eq!(replay.get(&a), None, "two windows old: forgotten");
        assert_eq!(replay.get(&b), Some((Money(1), Money(0))), "the answer after the turn stays a window more");
        replay.expire(start + window * 3, window);
        assert_eq!(replay.get(&b), None);
    }
}
