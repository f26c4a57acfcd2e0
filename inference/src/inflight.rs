//! The per-organization bulkhead: how many model calls each organization has in flight in this
//! process. A call takes a slot at admission and gives it back when it ends (a stream, when the
//! stream ends or its client goes away), so a tenant that floods the gateway with slow calls is
//! refused at its own limit while the deployments' bulkheads keep room for the others.

use auth::OrganizationId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug)]
pub(crate) struct InFlight {
    limit: u32,
    /// Only organizations with a call in flight: an entry is removed when its count returns to 0.
    counts: Mutex<HashMap<OrganizationId, u32>>,
}

/// One call's slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct InFlightSlot {
    owner: Arc<InFlight>,
    organization: OrganizationId,
}

impl InFlight {
    pub(crate) fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// The counts; a panic while they were held cannot leave them torn (each change is one
    /// statement), so a poisoned lock is used as is.
    fn counts(&self) -> MutexGuard<'_, HashMap<OrganizationId, u32>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `organization`, or `None` when it already has `limit` calls in flight.
    pub(crate) fn try_enter(self: &Arc<Self>, organization: OrganizationId) -> Option<InFlightSlot> {
        let mut counts = self.counts();
        let count = counts.entry(organization).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(InFlightSlot { owner: self.clone(), organization })
    }

    #[cfg(test)]
    fn in_flight(&self, organization: OrganizationId) -> u32 {
        self.counts().get(&organization).copied().unwrap_or(0)
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        if let Some(count) = counts.get_mut(&self.organization) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.organization);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_organization_has_its_own_limit_and_slots_come_back_when_dropped() {
        let inflight = InFlight::new(2);
        let (a, b) = (OrganizationId::new(), OrganizationId::new());
        let first = inflight.try_enter(a).unwrap();
        let second = inflight.try_enter(a).unwrap();
        assert!(inflight.try_enter(a).is_none(), "a third call of the same organization is refused");
        let other = inflight.try_enter(b);
        assert!(other.is_some(), "another organization is not affected");
        drop(first);
        assert_eq!(inflight.in_flight(a), 1);
        let third = inflight.try_enter(a);
        assert!(third.is_some());
        drop((second, third, other));
        assert_eq!(inflight.in_flight(a), 0);
        assert!(inflight.counts().is_empty(), "idle organizations leave no entry behind");
    }
}
