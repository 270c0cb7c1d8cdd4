//! The record a restore from backup starts a new log origin with.
//!
//! A restored log never silently rolls back. Restoring a backup taken at
//! signed checkpoint `N` (of origin `P`) keeps records `0..N` and appends,
//! as record `N`, one [`Operation::Restored`](crate::record::Operation::Restored)
//! record whose note reads
//!
//! ```text
//! restored from checkpoint N of P; records after N lost
//! ```
//!
//! From record `N` on, checkpoints are signed under a NEW origin (same key,
//! new name), so no two different trees are ever signed under one name: a
//! client holding a checkpoint of `P` larger than `N` finds its origin
//! ended at `N` and this record saying so. [`crate::verify`] reads these
//! records to know which origin signs which sizes.

use std::fmt;

/// What a `Restored` record says, parsed from (and printed as) its note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreNote {
    /// The size of the signed checkpoint the backup held: records `0..size`
    /// were restored; the Restored record itself is record `size`.
    pub checkpoint: u64,
    /// The origin that signed that checkpoint (and every size up to it
    /// since the previous restore).
    pub previous_origin: String,
}

impl fmt::Display for RestoreNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "restored from checkpoint {n} of {origin}; records after {n} lost",
            n = self.checkpoint,
            origin = self.previous_origin
        )
    }
}

impl RestoreNote {
    /// Parses a note written by [`Display`](fmt::Display); `None` if it is
    /// not one.
    pub fn parse(note: &str) -> Option<Self> {
        let rest = note.strip_prefix("restored from checkpoint ")?;
        let (size, rest) = rest.split_once(" of ")?;
        let (origin, rest) = rest.split_once("; records after ")?;
        let lost = rest.strip_suffix(" lost")?;
        if size != lost
            || origin.is_empty()
            || origin.chars().any(char::is_whitespace)
            || size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(RestoreNote {
            checkpoint: size.parse().ok()?,
            previous_origin: origin.to_owned(),
        })
    }
}

/// The origin a log restored at checkpoint `checkpoint` at `time_s` (unix
/// seconds) is signed under: the base origin (the configured one, without
/// any earlier restore suffix) with `/restored-<N>-<time>`. The time keeps
/// two restores of the same backup apart (each continues differently).
pub fn restored_origin(base: &str, checkpoint: u64, time_s: u64) -> String {
    format!("{}/restored-{checkpoint}-{time_s}", base_origin(base))
}

/// `origin` without a `/restored-…` suffix: the configured origin.
pub fn base_origin(origin: &str) -> &str {
    match origin.find("/restored-") {
        Some(at) => &origin[..at],
        None => origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_reads_back() {
        let note = RestoreNote {
            checkpoint: 42,
            previous_origin: "fugo.example/audit".into(),
        };
        let text = note.to_string();
        assert_eq!(
            text,
            "restored from checkpoint 42 of fugo.example/audit; records after 42 lost"
        );
        assert_eq!(RestoreNote::parse(&text), Some(note));
        assert_eq!(
            RestoreNote::parse("restored from checkpoint 42 of a; records after 41 lost"),
            None
        );
        assert_eq!(RestoreNote::parse("policy 1 in force"), None);
    }

    #[test]
    fn restored_origins_stay_one_level_deep() {
        let once = restored_origin("fugo.local/audit/ab", 10, 1_700_000_000);
        assert_eq!(once, "fugo.local/audit/ab/restored-10-1700000000");
        let twice = restored_origin(&once, 20, 1_700_000_100);
        assert_eq!(twice, "fugo.local/audit/ab/restored-20-1700000100");
        assert_eq!(base_origin(&twice), "fugo.local/audit/ab");
    }
}
