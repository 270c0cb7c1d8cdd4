//! fugo (符号, "code") turns a person's My Number into **agency-specific
//! codes**, so that government agencies can link records about one person
//! without ever exchanging the number itself. Agencies call it over gRPC
//! with mutual TLS; a policy (the law's table 別表第二 as data) decides who may
//! ask whom for what; sealed tokens carry a person from one agency's codes to
//! another's without either learning the other's code. The audit trail is
//! not built yet.
//!
//! ```text
//!  cli ─ fugo serve | client | derive | keygen | keys | policy | dev-certs
//!   │
//!   ├─ service: mTLS identity → fugo.v1.Codes → status (one error mapping)
//!   │     └─ exchange: derive / seal / redeem / reidentify on batches
//!   ├─ client: streaming batches over one connection
//!   ├─ bulk: ordered parallel pipeline for files (fugo derive)
//!   ├─ keyfile, certs, files: files on disk (regular, bounded)
//!   │
//!   core (no I/O, no threads, reviewable alone)
//!     mynumber ─► batch ─► code ─► code_text        policy (TOML, located problems)
//!     agency  ──►  keys ──┴─► token (AES-256-GCM per addressee and day)
//!
//!   number ──parse──► B = n ‖ "fugo-pn1" ──AES(K_person)──► handle h
//!          ──AES(K_agency(a,e))──► code c ──base32+Luhn──► "1" e c… check
//! ```
//!
//! A lower layer never imports a higher one: the core modules (`mynumber`,
//! `agency`, `keys`, `code`, `code_text`, `batch`, `token`, `policy`) know
//! nothing of files, threads, the network or the command line.
//!
//! **Nothing here logs or prints a secret.** [`mynumber::MyNumber`], the key
//! types and [`code::PersonHandle`] have no `Display`, print `[REDACTED]` in
//! `Debug` and are wiped on drop; codes print redacted in `Debug` too. Error
//! messages name a rule, a position or a line number, never an input value,
//! so logs and reject reports are safe to archive. `tests/no_leak.rs` proves
//! it by searching every output channel for every test number and code.
//!
//! ```
//! use fugo::agency::{AgencyId, Epoch};
//! use fugo::code::{AgencyCode, Coder};
//! use fugo::keys::{KeyHierarchy, MasterKey};
//! use fugo::mynumber::MyNumber;
//!
//! // The public demo key 00 01 02 … 1f (keys-example/master.key).
//! let master = MasterKey::from_bytes(std::array::from_fn(|i| i as u8));
//! let keys = KeyHierarchy::new(&master);
//! assert_eq!(keys.fingerprint().to_string(), "34391a36deac07213d13a6753154bf16");
//!
//! let shinjuku = Coder::new(&keys, AgencyId::new("city-shinjuku")?, Epoch::new(1)?);
//! let number = MyNumber::parse(b"123456789018")?;
//! let code = shinjuku.derive(&number);
//! assert_eq!(&code.to_text(), b"117SQFZDBBY20YB707P62RD1R8FGJ");
//!
//! // Only fugo, holding the keys, can open a code again.
//! let reread = AgencyCode::parse(b"117s-qfzd-bby2-0yb7-07p6-2rd1-r8fgj")?;
//! assert_eq!(shinjuku.reidentify(&reread)?.expose_value(), 123_456_789_018);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod agency;
pub mod batch;
pub mod bulk;
pub mod certs;
pub mod cli;
pub mod client;
pub mod code;
pub mod code_text;
pub mod exchange;
pub mod files;
mod hex;
pub mod keyfile;
pub mod keys;
pub mod mynumber;
pub mod policy;
pub mod proto;
pub mod service;
pub mod token;
