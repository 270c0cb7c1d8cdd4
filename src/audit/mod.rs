//! The audit trail (情報提供等記録) as the server and the CLI use it.
//!
//! ```text
//!  service batch ─► entries (one per person, tallies for no-one) ─► Append
//!                                                                     │
//!  Recorder: one thread ◄─────────────── record(Append).await ───────┘
//!    ├─ group commit: every waiting Append, one fsync, then the answers
//!    ├─ signs a checkpoint ≤ 1 s after the tree grows (C2SP, Ed25519)
//!    ├─ builds the person index when idle, and every 100 ms under traffic
//!    │  (disclosure trails by a fraction of a second)
//!    └─ fails closed: a failed write → UNAVAILABLE, health NOT_SERVING,
//!       the store opened again until a commit succeeds
//!  fugo-log (crates/log): records, Merkle tree, checkpoints, redb store
//! ```
//!
//! A response leaves the server only after its records are committed.

pub mod entries;
pub mod export;
pub mod persons;
pub mod recorder;

pub use recorder::{Disk, Recorder, RecorderError, STORE_FILE, Settings, Signed};

/// The log's name (C2SP origin) when `[audit] origin` is not set:
/// `fugo.local/audit/<master key fingerprint>`. The server and the offline
/// `fugo derive` name a new log the same way.
pub fn default_origin(fingerprint: &crate::keys::Fingerprint) -> String {
    format!("fugo.local/audit/{fingerprint}")
}

/// The log's name: `configured` (`[audit] origin`), or the
/// [`default_origin`] of `keys`.
pub fn origin(configured: Option<&str>, keys: &crate::keys::KeyHierarchy) -> String {
    configured.map_or_else(|| default_origin(&keys.fingerprint()), str::to_owned)
}

/// The log's signing key, from the master key (so it needs no file and is
/// as safe as the master key), named `origin` or by [`default_origin`].
pub fn log_signer(
    origin: Option<&str>,
    keys: &crate::keys::KeyHierarchy,
) -> Result<fugo_log::checkpoint::LogSigner, fugo_log::checkpoint::NoteError> {
    fugo_log::checkpoint::LogSigner::from_seed(
        &self::origin(origin, keys),
        &keys.log_signing_seed(),
    )
}
