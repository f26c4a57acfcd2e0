//! The database's part of the metrics: pool sizes sampled at scrape time, and each checkout
//! (`pool.get()`) timed and counted.

use super::{Db, Inner, Manager};
use crate::metrics::{DbMetrics, PoolHandle, PoolRole, PoolSample, PoolSource};
use diesel::r2d2::{Pool, PoolError, PooledConnection};
use std::sync::{Arc, Weak};
use std::time::Instant;

/// The checkout handles of a domain's pools, once [`Db::observe`] attached them.
pub(super) struct Checkouts {
    primary: PoolHandle,
    replica: Option<PoolHandle>,
}

impl Db {
    /// Reports this database's pools in `metrics`: their sizes at each scrape, and every
    /// checkout's wait. Call once, at start-up; later calls do nothing.
    pub fn observe(&self, metrics: &DbMetrics) {
        let domain = &self.inner.domain;
        let checkouts = Checkouts {
            primary: metrics.pool(domain, PoolRole::Primary),
            replica: self.inner.replica.as_ref().map(|_| metrics.pool(domain, PoolRole::Replica)),
        };
        if self.inner.metrics.set(checkouts).is_ok() {
            let source: Weak<Inner> = Arc::downgrade(&self.inner);
            metrics.watch(source);
        }
    }
}

impl Inner {
    /// `pool.get()`, timed and counted when metrics are attached. A checkout that finds no idle
    /// connection (`try_get` fails) counts as a wait, then blocks in `get` as before.
    pub(super) fn checkout(&self, pool: &Pool<Manager>, replica: bool) -> Result<PooledConnection<Manager>, PoolError> {
        let Some(checkouts) = self.metrics.get() else { return pool.get() };
        let handle = match (&checkouts.replica, replica) {
            (Some(replica), true) => replica,
            _ => &checkouts.primary,
        };
        let started = Instant::now();
        if let Some(conn) = pool.try_get() {
            handle.record_checkout(false, started.elapsed(), true);
            return Ok(conn);
        }
        let result = pool.get();
        handle.record_checkout(true, started.elapsed(), result.is_ok());
        result
    }
}

impl PoolSource for Inner {
    fn sample(&self, out: &mut Vec<PoolSample>) {
        let pools = std::iter::once((PoolRole::Primary, &self.primary))
            .chain(self.replica.as_ref().map(|replica| (PoolRole::Replica, replica)));
        for (role, pool) in pools {
            let state = pool.state();
            out.push(PoolSample {
                domain: self.domain.clone(),
                role,
                connections: state.connections,
                idle: state.idle_connections,
                max_size: pool.max_size(),
            });
        }
    }
}
