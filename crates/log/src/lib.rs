//! fugo's audit log (placeholder crate doc; the tree engineer writes the full one).

pub mod merkle;
pub mod record;
pub mod store;
