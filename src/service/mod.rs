//! The gRPC service agencies call (`fugo serve`).
//!
//! ```text
//!  agency ──mTLS──► identity (certificate → agency, via policy)
//!                     └─► codes (fugo.v1.Codes: decode, run on the blocking pool, encode)
//!                           └─► exchange (derive / seal / redeem / reidentify under policy)
//!  status: the one place errors become gRPC codes
//!  server: checks key, policy and certificates, then serves; reload; graceful stop
//! ```
//!
//! Logs name the agency, the operation, counts and timings; never a number,
//! a code or a token.

pub mod codec;
mod codes;
pub mod config;
mod edge;
mod framing;
mod identity;
pub mod limits;
pub mod server;
mod status;

pub use config::ServeConfig;
pub use limits::Limits;
pub use server::{Reloader, Running, ServeError, start};
