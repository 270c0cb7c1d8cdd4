//! Quotas against bulk extraction: per agency and operation, a token
//! bucket (items per second with a burst) and a count per day.
//!
//! One [`Quotas`] per server holds every agency's state, so the limits hold
//! across an agency's calls, streams and connections. The limits come from
//! the policy in force at each call (a reload changes them at once; the
//! counts stay). A call is admitted whole or refused whole (D122): the
//! items of an admitted batch are counted before it runs, a refused one
//! counts nothing and runs nothing, and its answer says when to retry.
//!
//! Days run from 00:00 Japan Standard Time (UTC+9, no daylight saving;
//! D123). The day's counts are written to the audit store in the same
//! commit as the records of the calls that used them and read back when
//! the server starts, so a restart does not reset them; the token buckets
//! start full after a restart (they bound speed, the day count bounds the
//! total).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::agency::AgencyId;
use crate::policy::{Limit, Metered};
use fugo_log::store::Usage;

/// Japan Standard Time: UTC+9, all year.
const JST_OFFSET_MS: u64 = 9 * 3_600_000;
const DAY_MS: u64 = 86_400_000;

/// The day (days since 1970-01-01 in JST) of unix time `unix_ms`.
pub(crate) fn jst_day(unix_ms: u64) -> u64 {
    unix_ms.saturating_add(JST_OFFSET_MS) / DAY_MS
}

/// How long from `unix_ms` until the next 00:00 JST.
fn until_next_day(unix_ms: u64) -> Duration {
    let into_day = unix_ms.saturating_add(JST_OFFSET_MS) % DAY_MS;
    Duration::from_millis(DAY_MS - into_day)
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    /// The bucket holds too few items now; it will hold enough after
    /// `retry_after`.
    Rate {
        /// When the bucket holds enough.
        retry_after: Duration,
        /// The limit in force.
        limit: Limit,
    },
    /// The day's count would pass the limit: retry after 00:00 JST.
    Day {
        /// Until 00:00 JST.
        retry_after: Duration,
        /// The limit in force.
        limit: Limit,
    },
    /// The batch is larger than the bucket or the whole day's limit: no
    /// wait helps; it must be split.
    TooLarge {
        /// The batch's items.
        items: u64,
        /// The limit in force.
        limit: Limit,
    },
}

impl Exceeded {
    /// The limit's fixed name, for logs, metrics and the audit trail.
    pub(crate) fn which(&self) -> &'static str {
        match self {
            Exceeded::Rate { .. } => "rate",
            Exceeded::Day { .. } => "day",
            Exceeded::TooLarge { .. } => "batch",
        }
    }

    /// How long to wait before a retry can succeed (none for a batch that
    /// never can).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Exceeded::Rate { retry_after, .. } | Exceeded::Day { retry_after, .. } => {
                Some(*retry_after)
            }
            Exceeded::TooLarge { .. } => None,
        }
    }
}

/// A point in time, twice: monotonic for the bucket, unix for the day.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Moment {
    /// For the token bucket.
    pub(crate) instant: Instant,
    /// Unix milliseconds, for the day (JST).
    pub(crate) unix_ms: u64,
}

/// An admitted call's use: to be written with its records.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// What to add to the durable day count.
    pub(crate) usage: Usage,
    /// Set when this call crossed the warning share of the day's limit
    /// (once per agency, operation and day): the count after it.
    pub(crate) crossed: Option<u64>,
}

/// One agency's state for one operation.
struct Bucket {
    /// Items in the bucket; `None` until first used (a full bucket).
    tokens: Option<f64>,
    refilled: Instant,
    day: u64,
    used: u64,
    warned: bool,
}

/// Every agency's quota state (one per server).
#[derive(Default)]
pub(crate) struct Quotas {
    buckets: Mutex<HashMap<(AgencyId, Metered), Bucket>>,
}

impl Quotas {
    /// No use yet.
    pub(crate) fn new() -> Self {
        Quotas::default()
    }

    /// Takes the day's counts read back from the store (at start).
    pub(crate) fn restore(&self, usage: &[Usage], now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for used in usage {
            let (Ok(agency), Some(operation)) = (
                AgencyId::new(&used.agency),
                Metered::from_name(&used.operation),
            ) else {
                continue;
            };
            let bucket = buckets.entry((agency, operation)).or_insert(Bucket {
                tokens: None,
                refilled: now,
                day: used.day,
                used: 0,
                warned: false,
            });
            if bucket.day == used.day {
                bucket.used = bucket.used.saturating_add(used.count);
            }
        }
    }

    /// Admits `items` of `operation` for `agency` under `limit` at `at`,
    /// or refuses them all. `warn_percent`: the share of the day's limit
    /// whose crossing is reported once a day.
    pub(crate) fn admit(
        &self,
        agency: &AgencyId,
        operation: Metered,
        limit: Limit,
        warn_percent: u8,
        items: u64,
        at: Moment,
    ) -> Result<Admitted, Exceeded> {
        let (now, now_ms) = (at.instant, at.unix_ms);
        let day = jst_day(now_ms);
        if items > limit.burst || items > limit.per_day {
            return Err(Exceeded::TooLarge { items, limit });
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets
            .entry((agency.clone(), operation))
            .or_insert(Bucket {
                tokens: None,
                refilled: now,
                day,
                used: 0,
                warned: false,
            });
        if bucket.day != day {
            bucket.day = day;
            bucket.used = 0;
            bucket.warned = false;
        }
        let burst = limit.burst as f64;
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        let tokens = bucket
            .tokens
            .map_or(burst, |tokens| tokens + elapsed * limit.per_second as f64)
            .min(burst);
        bucket.tokens = Some(tokens);
        bucket.refilled = now;
        if bucket.used.saturating_add(items) > limit.per_day {
            return Err(Exceeded::Day {
                retry_after: until_next_day(now_ms),
                limit,
            });
        }
        let wanted = items as f64;
        if tokens < wanted {
            let seconds = (wanted - tokens) / limit.per_second as f64;
            // Whole milliseconds, rounded up, so a retry after the delay
            // finds enough.
            let retry_after = Duration::from_millis((seconds * 1000.0).ceil() as u64 + 1);
            return Err(Exceeded::Rate { retry_after, limit });
        }
        bucket.tokens = Some(tokens - wanted);
        bucket.used = bucket.used.saturating_add(items);
        let threshold = u128::from(limit.per_day) * u128::from(warn_percent);
        let crossed = if !bucket.warned && u128::from(bucket.used) * 100 >= threshold {
            bucket.warned = true;
            Some(bucket.used)
        } else {
            None
        };
        Ok(Admitted {
            usage: Usage {
                day,
                agency: agency.as_str().to_owned(),
                operation: operation.name().to_owned(),
                count: items,
            },
            crossed,
        })
    }

    /// Each agency's and operation's count today, for metrics.
    pub(crate) fn used_today(&self, now_ms: u64) -> Vec<(AgencyId, Metered, u64)> {
        let day = jst_day(now_ms);
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found: Vec<_> = buckets
            .iter()
            .filter(|(_, bucket)| bucket.day == day)
            .map(|((agency, operation), bucket)| (agency.clone(), *operation, bucket.used))
            .collect();
        found.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Limit = Limit {
        per_second: 10,
        burst: 20,
        per_day: 50,
    };

    /// 2026-11-28 12:00 JST in unix ms.
    const NOON_JST: u64 = 1_795_834_800_000;

    fn agency(name: &str) -> AgencyId {
        AgencyId::new(name).unwrap()
    }

    #[test]
    fn days_begin_at_midnight_in_japan() {
        // 2026-11-28 00:00 JST is 2026-11-27 15:00 UTC.
        let midnight = NOON_JST - 12 * 3_600_000;
        assert_eq!(jst_day(midnight), jst_day(NOON_JST));
        assert_eq!(jst_day(midnight - 1) + 1, jst_day(midnight));
        assert_eq!(until_next_day(NOON_JST), Duration::from_secs(12 * 3600));
        assert_eq!(until_next_day(midnight), Duration::from_secs(86_400));
        assert_eq!(until_next_day(midnight - 1), Duration::from_millis(1));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate_and_says_when() {
        let quotas = Quotas::new();
        let a = agency("a");
        let start = Instant::now();
        let admit = |items, after_ms| {
            quotas.admit(
                &a,
                Metered::Derive,
                LIMIT,
                80,
                items,
                Moment {
                    instant: start + Duration::from_millis(after_ms),
                    unix_ms: NOON_JST + after_ms,
                },
            )
        };
        assert!(admit(20, 0).is_ok());
        let refused = admit(5, 0).unwrap_err();
        // 5 items at 10 a second: half a second.
        assert_eq!(
            refused,
            Exceeded::Rate {
                retry_after: Duration::from_millis(501),
                limit: LIMIT
            }
        );
        assert!(admit(5, 499).is_err());
        assert!(admit(5, 501).is_ok());
        // Nothing refused was counted: 25 so far.
        assert!(admit(20, 10_000).is_ok());
        // 45 used; 10 more would pass the day's 50.
        let refused = admit(10, 20_000).unwrap_err();
        assert_eq!(refused.which(), "day");
        assert_eq!(
            refused.retry_after(),
            Some(Duration::from_millis(12 * 3_600_000 - 20_000))
        );
        assert!(admit(5, 20_000).is_ok());
        // A new day (JST) starts from zero.
        assert!(admit(20, 12 * 3_600_000).is_ok());
    }

    #[test]
    fn a_batch_larger_than_the_bucket_is_refused_without_a_delay() {
        let quotas = Quotas::new();
        let refused = quotas
            .admit(
                &agency("a"),
                Metered::Seal,
                LIMIT,
                80,
                21,
                Moment {
                    instant: Instant::now(),
                    unix_ms: NOON_JST,
                },
            )
            .unwrap_err();
        assert_eq!(refused.which(), "batch");
        assert_eq!(refused.retry_after(), None);
    }

    #[test]
    fn agencies_and_operations_count_apart_and_the_warning_fires_once() {
        let quotas = Quotas::new();
        let now = Instant::now();
        let (a, b) = (agency("a"), agency("b"));
        let admit = |who: &AgencyId, op, items, later: u64| {
            quotas.admit(
                who,
                op,
                LIMIT,
                80,
                items,
                Moment {
                    instant: now + Duration::from_secs(later),
                    unix_ms: NOON_JST + later * 1000,
                },
            )
        };
        assert_eq!(admit(&a, Metered::Derive, 20, 0).unwrap().crossed, None);
        assert!(admit(&b, Metered::Derive, 20, 0).is_ok());
        assert!(admit(&a, Metered::Redeem, 20, 0).is_ok());
        assert_eq!(
            admit(&a, Metered::Derive, 20, 10).unwrap().crossed,
            Some(40)
        );
        assert_eq!(admit(&a, Metered::Derive, 5, 20).unwrap().crossed, None);
        let today = quotas.used_today(NOON_JST);
        assert_eq!(
            today,
            vec![
                (a.clone(), Metered::Derive, 45),
                (a.clone(), Metered::Redeem, 20),
                (b, Metered::Derive, 20),
            ]
        );
    }

    #[test]
    fn restored_counts_hold_for_their_day_only() {
        let quotas = Quotas::new();
        let now = Instant::now();
        let a = agency("a");
        quotas.restore(
            &[Usage {
                day: jst_day(NOON_JST),
                agency: "a".into(),
                operation: "derive".into(),
                count: 45,
            }],
            now,
        );
        let admit = |items, unix_ms| {
            let at = Moment {
                instant: now,
                unix_ms,
            };
            quotas.admit(&a, Metered::Derive, LIMIT, 80, items, at)
        };
        assert_eq!(admit(10, NOON_JST).unwrap_err().which(), "day");
        assert!(admit(5, NOON_JST).is_ok());
        // The next day the count starts again (the bucket still holds 15).
        assert!(admit(15, NOON_JST + 12 * 3_600_000).is_ok());
    }
}
