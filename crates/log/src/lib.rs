//! fugo-log: the audit log of fugo — what was asked, by whom, under which
//! policy — as an append-only RFC 6962 Merkle tree whose signed checkpoints
//! let anyone holding the log's public key check that no record was changed,
//! removed or reordered after the fact.
//!
//! ```text
//!   fugo (service, CLI)
//!      │  groups of records (one call's batch)        checkpoints, proofs
//!      ▼                                                      ▲
//!   store: the Store trait; RedbStore (redb) ─────────────────┤
//!      │  leaf bytes of each record                           │
//!      ▼                                                      │
//!   record: record types, canonical encoding, leaf bytes      │
//!      │                                                      │
//!      ▼                                                      │
//!   merkle: leaf_hash ─► Frontier (append, root)              │
//!           NodeSource ─► inclusion / consistency proofs ─────┤
//!      │                                                      │
//!      ▼                                                      │
//!   checkpoint (next): origin, size, root ─► C2SP signed note ───────┘
//!               (Ed25519, verified with the log's public key)
//! ```
//!
//! [`merkle`] is pure: no file, clock or randomness. `checkpoint` (next)
//! will be too.
//!
//! The crate stands beside `fugo-core` and does not depend on it.

pub mod merkle;
pub mod record;
pub mod store;
