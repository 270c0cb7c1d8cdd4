//! fugo (符号, "code") turns a person's My Number into **agency-specific
//! codes**, so that government agencies can link records about one person
//! without ever exchanging the number itself. Agencies call it over gRPC
//! with mutual TLS; a policy (the law's table 別表第二 as data) decides who may
//! ask whom for what; sealed tokens carry a person from one agency's codes to
//! another's without either learning the other's code. Every operation on
//! a person is recorded, before its answer leaves, in a tamper-evident log
//! (情報提供等記録) that the person can read through the citizen portal.
//!
//! ```text
//!  the fugo binary (src/main.rs, src/cli: flags → settings → commands)
//!    fugo serve | client | derive | audit | keygen | keys | policy | dev-certs
//!        │
//!        ▼
//!  fugo, this library: everything that touches a file, a socket, a clock
//!    service  edge (accept, TLS, limits) → identity → codes | audit → status
//!    audit    the recorder: one thread, group commit, checkpoints, fail closed
//!    client   one mTLS stream of batches · witness (kept checkpoint)
//!    bulk     one file engine: lines or CSV, encodings, local or remote work
//!    policy (TOML, located problems) · keyfile · certs · files · random
//!    custody  share files, sealed start, unseal socket · hardening
//!        │                                   │
//!        ▼                                   ▼
//!  fugo-core (crates/core: no I/O,        fugo-log (crates/log: the audit
//!  no clock, no OS randomness)            log, reviewable alone)
//!    exchange ─► policy model, token        record ─► merkle, checkpoint
//!      ─► batch ─► code ─► code_text        store (trait; redb backend)
//!    link · mynumber, keys, agency
//! ```
//!
//! The arrows run one way, and the two crates below do not know each other:
//! `fugo-core` depends on cryptographic and error crates only, so the compiler keeps files, threads, the network and the
//! command line out of it; the command line is the binary's, not library
//! API:
//!
//! ```compile_fail
//! fugo::cli::main(); // no such module: flags and messages are for people
//! ```
//!
//! The core's modules are re-exported here under their own names
//! (`fugo::keys`, `fugo::code`, …).
//!
//! **Nothing here logs or prints a secret.** [`mynumber::MyNumber`], the key
//! types and [`code::PersonHandle`] have no `Display`, print `[REDACTED]` in
//! `Debug` and are wiped on drop; codes print redacted in `Debug` too. Error
//! messages name a rule, a position or a line number, never an input value,
//! so logs and reject reports are safe to archive. `tests/no_leak.rs` proves
//! it by searching every output channel for every test number and code.

use fugo_core::hex;
pub use fugo_core::{
    agency, batch, code, code_text, exchange, generation, keyring, keys, link, mynumber, persons,
    shamir, token,
};

pub mod admin;
pub mod audit;
pub mod bulk;
pub mod certs;
pub mod client;
pub mod custody;
pub mod files;
pub mod hardening;
mod histogram;
pub mod keyfile;
pub mod policy;
pub mod proto;
pub mod random;
pub mod service;
pub mod witness;
