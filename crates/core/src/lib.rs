//! fugo-core: the part of fugo a security reviewer audits. It turns a
//! person's My Number into agency-specific codes, seals one agency's code
//! into a token only another agency can open, and decides every exchange
//! under the policy (別表第二 as data).
//!
//! ```text
//!   exchange: derive / seal / redeem / reidentify / rekey / migrate on
//!      │  batches, typed outcomes (time and randomness come in from the caller)
//!      ├─► policy (agencies, epochs bound to generations, affairs, rules,
//!      │           delegations, mergers; who may ask whom for what)
//!      ├─► persons (re-issued numbers and suspensions: keyed references,
//!      │            sealed values)
//!      ├─► token (AES-256-GCM per addressee, generation, key window, key index)
//!      ├─► link (the audit trail's person links, audit generation)
//!      ├─► keyring (the master keys held, one hierarchy per generation)
//!      └─► batch ─► code ─► code_text (29-character base32 + Luhn mod 32)
//!                    │
//!          mynumber ─┴─ keys (HKDF-SHA256 hierarchy) ─ generation ─ agency (ids, epochs)
//!                         └─► shamir (GF(256) secret sharing: custodians' shares)
//!
//!   number ──parse──► B = n ‖ "fugo-pn1" ──AES(K_person)──► handle h
//!          ──AES(K_agency(a,e))──► code c ──base32+Luhn──► "1" e c… check
//! ```
//!
//! A module only uses those below it. The crate depends on cryptographic
//! and error crates only: it opens no file, socket or thread, reads no
//! clock and draws no randomness of its own ([`exchange::RandomSource`] is
//! passed in). Everything else — the service, the client, files, the
//! policy's TOML form, the CLI — lives in the `fugo` package.
//!
//! **Nothing here logs or prints a secret.** [`mynumber::MyNumber`], the key
//! types and [`code::PersonHandle`] have no `Display`, print `[REDACTED]` in
//! `Debug` and are wiped on drop; codes print redacted in `Debug` too. Error
//! messages name a rule, a position or an index, never an input value.
//!
//! ```
//! use fugo_core::agency::{AgencyId, Epoch};
//! use fugo_core::code::{AgencyCode, Coder};
//! use fugo_core::keys::{KeyHierarchy, MasterKey};
//! use fugo_core::mynumber::MyNumber;
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
pub mod code;
pub mod code_text;
pub mod exchange;
pub mod generation;
pub mod hex;
pub mod keyring;
pub mod keys;
pub mod link;
pub mod mynumber;
pub mod persons;
pub mod policy;
pub mod shamir;
pub mod token;
