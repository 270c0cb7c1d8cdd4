//! What every call of every service shares: the exchange (keys, caches,
//! the re-issue tables), the policy in force, the audit recorder, the
//! quota counts, the metrics and the store's marks. Built once at start
//! (or at unseal), swapped into only by a policy reload.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::metrics::Metrics;
use super::quota::Quotas;
use crate::audit::Recorder;
use crate::exchange::Exchange;
use crate::policy::Policy;

/// Everything the service shares between calls.
pub(crate) struct State {
    pub(crate) exchange: Exchange,
    pub(crate) policy: RwLock<Arc<Policy>>,
    /// Where every batch is recorded before its response leaves.
    pub(crate) recorder: Arc<Recorder>,
    /// Every agency's quota use (one state for all its connections).
    pub(crate) quotas: Quotas,
    /// Counters for `/metrics`.
    pub(crate) metrics: Metrics,
    /// The store's high-water mark of epoch states as of the policy in
    /// force (`lifecycle`): a reload that moves one backwards is refused.
    pub(crate) marks: Mutex<fugo_log::store::Marks>,
}

impl State {
    /// The policy in force now (a reload swaps it atomically).
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The `/metrics` page now: the counters, today's quota counts and
    /// the recorder's commits, queue and disk.
    pub(crate) fn metrics_page(&self) -> String {
        self.metrics.render(&self.quotas, &self.recorder)
    }
}
