//! The admin plane's offline half: backup files and restoring them.
//!
//! The server side (the `fugo.v1.Admin` service on its own listener) is in
//! `service::admin`; `fugo admin backup` streams a backup from it, and
//! `fugo admin restore` (here) puts one back with the server stopped.

pub mod backup;
pub mod restore;
