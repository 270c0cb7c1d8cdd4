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
//!  audit, persons, admin: the other services, beside codes
//!  state: what every call shares (exchange, policy, recorder, quotas, metrics)
//!  request_id: the id of one call, in its span and its response
//!  status: the one place errors become gRPC codes (framing: tonic's own answers)
//!  server: checks key, policy and certificates, then serves; graceful stop
//!  policy_file: reads a policy and puts it in force (start, SIGHUP, admin)
//!  lifecycle: the store's one-way marks a policy may not move backwards
//!  error: why a start or reload failed (ServeError)
//!  sealed: started without the key, UNAVAILABLE until `fugo unseal` supplies the shares
//!  offline: the server's keys and policy for `fugo derive --config`
//!  admin_proof: an admin certificate checked with no connection (`fugo admin restore`)
//!  tls_files: reading certificates, keys and CRLs with the server's limits
//! ```
//!
//! Imports run one way: server imports the services, the services import
//! state, status, request_id and policy_file, and none of those imports a
//! service or the server.
//!
//! `edge` is public so that another service can be served on fugo's exact
//! transport: the benchmark's baseline is (D70).
//!
//! Logs name the request id, the agency, the operation, counts and timings;
//! never a number, a code or a token.

mod admin;
mod admin_proof;
mod audit;
pub mod codec;
mod codes;
pub mod config;
pub mod edge;
mod error;
mod framing;
mod identity;
mod lifecycle;
pub mod limits;
mod metrics;
pub mod offline;
mod overrides;
mod persons;
mod policy_file;
mod quota;
mod request_id;
mod revocation;
pub mod sealed;
pub mod server;
mod state;
mod status;
mod tls_files;

pub use admin_proof::prove_admin;
pub use codes::{CHECKPOINT, Handlers};
pub use config::{AdminConfig, AuditConfig, LogConfig, LogFormat, MasterKeySource, ServeConfig};
pub use lifecycle::{generation_key_mismatches, offline_epoch};
pub use limits::Limits;
pub use server::{Reloader, Running, ServeError, start, start_unaudited_for_benchmarks};
