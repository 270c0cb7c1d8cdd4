//! A latency histogram of fixed buckets made of atomic counters: observing
//! a duration is a short scan of 14 bounds and two relaxed `fetch_add`s, no
//! lock, so it can sit on the hot path of every call and every commit.
//! `/metrics` renders it as a Prometheus histogram (cumulative buckets in
//! seconds, `_sum`, `_count`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 0.5 ms to 10 s, the
/// range between a small in-place batch and a commit timeout's worst case.
pub(crate) const BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Durations counted into [`BOUNDS_MICROS`] buckets (plus one above the
/// last bound), and their sum.
#[derive(Default)]
pub(crate) struct Histogram {
    /// Per bucket, not cumulative: bucket `i` counts durations in
    /// `(BOUNDS[i-1], BOUNDS[i]]`; the last counts those above every bound.
    buckets: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Cumulative counts: `cumulative[i]` durations were at most
    /// `BOUNDS_MICROS[i]`; the last entry is the total (`+Inf`).
    pub(crate) cumulative: [u64; BOUNDS_MICROS.len() + 1],
    /// The sum of every duration, in microseconds.
    pub(crate) sum_micros: u64,
}

impl Histogram {
    /// Counts one duration.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BOUNDS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts now (each bucket read once; a duration observed
    /// meanwhile may be in the buckets and not yet in the sum).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut cumulative = [0u64; BOUNDS_MICROS.len() + 1];
        let mut total = 0u64;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            total = total.saturating_add(bucket.load(Ordering::Relaxed));
            *slot = total;
        }
        Snapshot {
            cumulative,
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_micros(501));
        histogram.observe(Duration::from_millis(30));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.cumulative[0], 1, "500 µs is inside le=0.0005");
        assert_eq!(snapshot.cumulative[1], 2);
        assert_eq!(snapshot.cumulative[5], 2, "30 ms is above 25 ms");
        assert_eq!(snapshot.cumulative[6], 3);
        assert_eq!(snapshot.cumulative[13], 3, "60 s is above every bound");
        assert_eq!(snapshot.cumulative[14], 4);
        assert_eq!(snapshot.sum_micros, 500 + 501 + 30_000 + 60_000_000);
    }
}
