//! Code generated from `proto/` at build time (see `build.rs`). The module
//! tree mirrors the protobuf packages because the generated code refers to
//! `super::super::google::rpc`.
#![allow(missing_docs, unreachable_pub, clippy::all)] // generated code

/// google.rpc: the canonical status codes.
pub mod google {
    /// google.rpc
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// fugo.v1: the service agencies call.
pub mod fugo {
    /// fugo.v1
    pub mod v1 {
        tonic::include_proto!("fugo.v1");
    }
}

/// The encoded file descriptor set of `fugo.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fugo_descriptor");
