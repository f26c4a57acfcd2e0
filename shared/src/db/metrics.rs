//! The database's part of the metrics: pool sizes sampled at scrape time, and each checkout
//! (`pool.get()`) timed and counted.

use super::{Db, Inner};
use crate::metrics::{DbMetrics, PoolHandle, PoolRole, PoolSample, PoolSource};
use std::sync::{Arc, Weak};
use std::time::Duration;

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
    /// Counts one checkout: whether it had to wait for a connection, how long it took, and
    /// whether it got one.
    pub(super) fn record_checkout(&self, replica: bool, waited: bool, elapsed: Duration, ok: bool) {
        let Some(checkouts) = self.metrics.get() else { return };
        let handle = match (&checkouts.replica, replica) {
            (Some(replica), true) => replica,
            _ => &checkouts.primary,
        };
        handle.record_checkout(waited, elapsed, ok);
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
