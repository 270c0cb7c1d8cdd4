//! fugo core (placeholder doc, rewritten below once the layers settle).
pub mod agency;
pub mod batch;
pub mod code;
pub mod code_text;
mod hex;
pub mod keys;
pub mod mynumber;
pub mod bulk;
pub mod cli;
