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
//!   checkpoint: origin, size, root ─► C2SP signed note ───────┘
//!               (Ed25519, verified with the log's public key)
//! ```
//!
//! [`verify`] checks a whole store against itself, the log's key and
//! checkpoints kept outside it (`fugo audit verify`).
//!
//! [`merkle`] and [`checkpoint`] are pure: no file, clock or randomness.
//! The signing key comes in as a seed from the caller (the server derives
//! it from its master key); [`checkpoint::LogSigner`] prints redacted in
//! `Debug` and wipes its seed on drop.
//!
//! The crate stands beside `fugo-core` and does not depend on it.
//!
//! The tree and the note format are our own code, checked in the tests
//! against the Certificate Transparency reference vectors, independent
//! Python implementations (tests/vectors/) and the crates `ct-merkle` and
//! `signed_note`. Those crates stay test dependencies: `ct-merkle` builds
//! proofs from its own in-memory layout rather than from a store's
//! `(level, index)` nodes, and `signed_note` brings a second Ed25519 stack
//! (ed25519-dalek) and older sha2/base64 beside the `ring` the service
//! already trusts.
//!
//! ```
//! use fugo_log::checkpoint::{Checkpoint, LogSigner, LogVerifier};
//! use fugo_log::merkle::{Frontier, leaf_hash, node_hash, verify_inclusion};
//!
//! let mut tree = Frontier::new();
//! let mut leaves = Vec::new();
//! for record in [&b"first"[..], b"second", b"third"] {
//!     tree.append(leaf_hash(record), |level, _, hash| {
//!         if level == 0 {
//!             leaves.push(*hash);
//!         }
//!     });
//! }
//! // Leaf 2 of 3: its sibling is the root of leaves 0 and 1.
//! let proof = [node_hash(&leaves[0], &leaves[1])];
//! verify_inclusion(&leaves[2], 2, 3, &proof, &tree.root())?;
//!
//! // The log signs its size and root; anyone with the public key checks it.
//! let signer = LogSigner::from_seed("audit.example/log", &[7; 32])?;
//! let published = signer.verifier().to_string();
//! let note = signer.sign(&Checkpoint {
//!     origin: "audit.example/log".into(),
//!     size: tree.size(),
//!     root: tree.root(),
//! })?;
//! let checkpoint = LogVerifier::parse(&published)?.open(&note)?;
//! assert_eq!((checkpoint.size, checkpoint.root), (3, tree.root()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod restore;
pub mod store;
pub mod verify;
