//! Why the server could not start, reload or unseal: one error type for
//! every step of `start` and of a reload, each naming the file or setting
//! at fault and what to do. Mapped to a gRPC status only where an admin
//! call reports it (`status::reload_refused`).

use std::net::SocketAddr;

use thiserror::Error;

use super::config::ConfigError;
use crate::audit::RecorderError;
use crate::certs::CertError;
use crate::files::ReadError;
use crate::keyfile::KeyLoadError;
use crate::policy::PolicyError;

/// Why the server could not start (or reload).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The re-issue and suspension tables of the data directory do not
    /// open under this master key (the server does not start without them:
    /// derive would give a superseded number codes).
    #[error("the data directory's re-issue and suspension tables: {0}")]
    Persons(#[from] crate::audit::persons::LoadError),
    /// The configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The master key could not be loaded or is not the pinned one.
    #[error(transparent)]
    Key(#[from] KeyLoadError),
    /// The public demo key outside dev mode.
    #[error(
        "{what} is the public demo key; it is refused outside dev mode: make a key of your own \
         with `fugo keygen --out /etc/fugo/master.key` and set {settings} to it and the \
         fingerprint it prints"
    )]
    DemoKey {
        /// The key file or setting that holds the demo key.
        what: String,
        /// The settings to change (generation 1's or a keyring entry's).
        settings: String,
    },
    /// A key file others can read, outside dev mode.
    #[error(
        "key file {0} can be read by group or others; run `chmod 600` on it \
         (allowed only in dev mode)"
    )]
    KeyFileOpen(String),
    /// The unseal socket could not be made.
    #[error("cannot open the unseal socket {path}: {source}")]
    UnsealSocket {
        /// The socket file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A policy reload while sealed: the policy is read when the server
    /// unseals.
    #[error("the server is sealed; the policy file is read when it unseals")]
    Sealed,
    /// A TLS private key others can read, outside dev mode.
    #[error(
        "TLS private key {0} can be read by group or others; run `chmod 600` on it \
         (allowed only in dev mode)"
    )]
    TlsKeyOpen(String),
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {source}")]
    PolicyRead {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The policy file is invalid; every problem is listed.
    #[error("policy {path}: {problems}")]
    Policy {
        /// The file.
        path: String,
        /// Every problem with its line.
        problems: PolicyError,
    },
    /// A certificate or TLS key file could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The TLS files are not a usable certificate, key or CA.
    #[error("TLS: {0}")]
    Tls(String),

    /// An admin certificate or key that proves no admin (`fugo admin
    /// restore`, D203).
    #[error("{path}: {reason}")]
    NotAnAdmin {
        /// The certificate or key file.
        path: String,
        /// What it fails.
        reason: String,
    },
    /// Dev certificates could not be made.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server task ended abnormally.
    #[error("the server task failed")]
    Task,
    /// The audit trail could not be opened or written.
    #[error("audit trail: {0}")]
    Audit(#[from] RecorderError),
    /// The audit log's signing key could not be made.
    #[error("audit log signing key: {0}")]
    LogKey(String),
    /// The keyring's later generations could not be loaded or do not fit.
    #[error("keyring: {0}")]
    Keyring(String),
    /// The policy would move a key epoch backwards, drop an agency id or
    /// revive a retired agency, or binds an epoch in use to a generation
    /// the keyring lacks.
    #[error("policy {path}: {reason}")]
    Lifecycle {
        /// The policy file.
        path: String,
        /// What it would do, naming agency and epoch (or generation).
        reason: String,
    },
}
