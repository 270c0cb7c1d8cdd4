//! The gRPC service agencies call (`fugo serve`).
//!
//! ```text
//!  agency ──TCP──► edge (connection cap, TLS handshake under a timeout,
//!                  │     idle timeout; limits from [limits])
//!                  └─► identity (the one Common Name, parsed once per connection)
//!                        └─► codes::admit (unknown caller refused before the body)
//!                              └─► codes (fugo.v1.Codes: decode with codec, agency
//!                                    decided per batch, run, encode, log)
//!                                    └─► exchange (derive / seal / redeem / reidentify)
//!  status: the one place errors become gRPC codes (framing: tonic's own answers)
//!  server: checks key, policy and certificates, then serves; reload; graceful stop
//!  sealed: started without the key, UNAVAILABLE until `fugo unseal` supplies the shares
//! ```
//!
//! `edge` is public so that another service can be served on fugo's exact
//! transport: the benchmark's baseline is (D70).
//!
//! Logs name the request id, the agency, the operation, counts and timings;
//! never a number, a code or a token.

mod admin;
mod audit;
pub mod codec;
mod codes;
pub mod config;
pub mod edge;
mod framing;
mod identity;
mod lifecycle;
pub mod limits;
mod metrics;
pub mod offline;
mod overrides;
mod persons;
mod quota;
mod revocation;
pub mod sealed;
pub mod server;
mod status;

pub use codes::{CHECKPOINT, Handlers};
pub use config::{AdminConfig, AuditConfig, LogConfig, LogFormat, MasterKeySource, ServeConfig};
pub use lifecycle::offline_epoch;
pub use limits::Limits;
pub use server::{Reloader, Running, ServeError, start, start_unaudited_for_benchmarks};
