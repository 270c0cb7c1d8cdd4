//! Starting, reloading and stopping the server.
//!
//! `start` checks everything before it listens — the key and its pinned
//! fingerprint, the policy, the certificates — so a misconfigured server
//! refuses to start with one clear message instead of failing calls later.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tonic::service::interceptor::InterceptedService;
use zeroize::Zeroizing;

use super::audit::AuditService;
use super::codes::{self, CodesService, State};
use super::config::{ConfigError, ServeConfig};
use super::edge;
use super::framing::FramingStatus;
use crate::audit::entries::{BatchFacts, policy_digest};
use crate::audit::{Recorder, RecorderError};
use crate::certs::{self, CertError};
use crate::exchange::Exchange;
use crate::files::{self, ReadError};
use crate::keyfile::{self, KeyLoadError, KeySource};
use crate::policy::{Policy, PolicyError, PolicyVersion};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::fugo::v1::audit_server::AuditServer;
use crate::proto::fugo::v1::codes_server::CodesServer;
use crate::random::SystemRandomness;
use fugo_log::checkpoint::LogSigner;
use fugo_log::record::{Entry, Group, Operation, Outcome};
use fugo_log::store::Append;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the server could not start (or reload).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The master key could not be loaded or is not the pinned one.
    #[error(transparent)]
    Key(#[from] KeyLoadError),
    /// The public demo key outside dev mode.
    #[error("{0} is the public demo key; it is refused outside dev mode")]
    DemoKey(String),
    /// A key file others can read, outside dev mode.
    #[error("key file {0} can be read by group or others; run `chmod 600` on it")]
    KeyFileOpen(String),
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
}

/// Reads and checks a policy file: a regular file of at most
/// [`files::MAX_POLICY`] bytes (a named pipe or a device is refused at once,
/// not waited on).
pub fn load_policy(path: &Path) -> Result<Policy, ServeError> {
    load_policy_text(path).map(|(policy, _)| policy)
}

/// [`load_policy`], also giving the text (the audit trail stores it).
fn load_policy_text(path: &Path) -> Result<(Policy, String), ServeError> {
    let shown = path.display().to_string();
    let text =
        files::read_text(path, files::MAX_POLICY).map_err(|source| ServeError::PolicyRead {
            path: shown.clone(),
            source,
        })?;
    let policy = crate::policy::parse(&text).map_err(|problems| ServeError::Policy {
        path: shown,
        problems,
    })?;
    Ok((policy, text.to_string()))
}

/// The log's signing key, from the master key (so it needs no file and is
/// as safe as the master key), named by the configured origin.
pub(crate) fn log_signer(
    origin: Option<&str>,
    keys: &crate::keys::KeyHierarchy,
) -> Result<LogSigner, ServeError> {
    let origin = match origin {
        Some(origin) => origin.to_owned(),
        None => crate::audit::default_origin(&keys.fingerprint()),
    };
    LogSigner::from_seed(&origin, &keys.log_signing_seed())
        .map_err(|error| ServeError::LogKey(error.to_string()))
}

fn open_recorder(
    config: &ServeConfig,
    keys: &crate::keys::KeyHierarchy,
) -> Result<Recorder, ServeError> {
    // The data directory is the server's alone (the store inside is 0600
    // too): created with mode 0700 when it does not exist yet.
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(&config.data_dir).map_err(|error| {
        ServeError::Audit(RecorderError::Unavailable(format!(
            "cannot create the data directory {}: {error}",
            config.data_dir.display()
        )))
    })?;
    let signer = log_signer(config.audit.origin.as_deref(), keys)?;
    Ok(Recorder::open(
        &config.data_dir,
        signer,
        config.audit.settings.clone(),
    )?)
}

/// The record of loading a policy: its text stored once under its
/// version, and one record saying it came into force.
fn policy_loaded(policy: &Policy, text: &str) -> Append {
    let digest = policy_digest(policy);
    let facts = BatchFacts {
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64),
        caller: "fugo",
        batch_id: String::new(),
        policy,
    };
    let mut header = facts.header(Operation::PolicyLoaded);
    header.note = format!("policy {} in force", policy.version());
    Append {
        groups: vec![Group {
            header,
            entries: vec![Entry {
                outcome: Outcome::Done,
                epoch: 0,
                serial: None,
                person: None,
            }],
        }],
        policies: vec![(digest, text.to_owned())],
        now_ms: facts.time_ms,
        ..Append::default()
    }
}

fn read_tls(path: &Path, limit: u64) -> Result<files::Contents, ServeError> {
    files::read(path, limit).map_err(|source| ServeError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

/// The server's TLS files, read and checked (PEM text).
pub(crate) struct TlsMaterial {
    /// The CA(s) that sign client certificates.
    pub(crate) client_ca: Vec<u8>,
    /// The server's certificate chain.
    pub(crate) server_cert: Vec<u8>,
    /// The server's private key; wiped on drop.
    pub(crate) server_key: Zeroizing<Vec<u8>>,
}

/// Reads the TLS files named by `config`: in dev mode, demo certificates
/// for the policy's identities are written first if any file is missing;
/// outside dev mode, a private key that group or others can read is
/// refused (checked on the opened file).
pub(crate) fn tls_material(
    config: &ServeConfig,
    policy: &Policy,
) -> Result<TlsMaterial, ServeError> {
    let files = [&config.client_ca, &config.server_cert, &config.server_key];
    if config.dev_mode && files.iter().any(|file| !file.exists()) {
        let dir = config.data_dir.join("certs");
        let identities: Vec<String> = policy
            .agencies()
            .flat_map(|agency| agency.certificates.iter().cloned())
            .collect();
        tracing::warn!(dir = %dir.display(), "DEV MODE: writing demo certificates");
        certs::write_dev_certs(&dir, &identities)?;
    }
    let key = read_tls(&config.server_key, files::MAX_TLS_KEY)?;
    if !config.dev_mode && files::readable_by_others(&key.metadata) {
        return Err(ServeError::TlsKeyOpen(
            config.server_key.display().to_string(),
        ));
    }
    Ok(TlsMaterial {
        client_ca: read_tls(&config.client_ca, files::MAX_CERTIFICATES)?
            .bytes
            .to_vec(),
        server_cert: read_tls(&config.server_cert, files::MAX_CERTIFICATES)?
            .bytes
            .to_vec(),
        server_key: key.bytes,
    })
}

/// The TLS setup: the server's identity, and client certificates required
/// and checked against the client CA (see `edge`).
fn tls_config(config: &ServeConfig, policy: &Policy) -> Result<TlsAcceptor, ServeError> {
    let material = tls_material(config, policy)?;
    edge::tls_acceptor(
        (&config.client_ca, &material.client_ca),
        (&config.server_cert, &material.server_cert),
        (&config.server_key, material.server_key.as_slice()),
    )
    .map_err(ServeError::Tls)
}

/// A running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    state: Arc<State>,
    policy_path: PathBuf,
    grace: std::time::Duration,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    /// Re-reads the policy file and swaps it in atomically; an invalid file
    /// leaves the old policy in force and says why.
    pub fn reload_policy(&self) -> Result<PolicyVersion, ServeError> {
        reload(&self.state, &self.policy_path)
    }

    /// A handle that can reload the policy from another task.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: Arc::clone(&self.state),
            path: self.policy_path.clone(),
        }
    }

    /// Stops accepting, lets in-flight calls finish within the grace
    /// period, then returns.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(self.grace, &mut task).await {
            Ok(Ok(result)) => result.map_err(ServeError::from),
            Ok(Err(_)) => Err(ServeError::Task),
            Err(_) => {
                tracing::warn!("grace period over; closing the remaining calls");
                task.abort();
                Ok(())
            }
        }
    }
}

/// Reloads the policy of a running server (what SIGHUP does).
#[derive(Clone)]
pub struct Reloader {
    state: Arc<State>,
    path: PathBuf,
}

impl Reloader {
    /// See [`Running::reload_policy`].
    pub fn reload(&self) -> Result<PolicyVersion, ServeError> {
        reload(&self.state, &self.path)
    }
}

fn reload(state: &State, path: &Path) -> Result<PolicyVersion, ServeError> {
    match load_policy_text(path) {
        Ok((policy, text)) => {
            let version = policy.version().clone();
            // Queued before the swap, so it commits before (or with) the
            // first call decided under the new policy.
            state
                .recorder
                .record_detached(policy_loaded(&policy, &text));
            *state.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
            tracing::info!(version = %version, "policy reloaded");
            Ok(version)
        }
        Err(error) => {
            tracing::error!(error = %error, "policy reload refused; the old policy stays in force");
            Err(error)
        }
    }
}

/// Checks everything, binds `config.listen`, and serves until stopped.
/// `warnings` receives the key file warnings (dev mode, permissions).
pub async fn start(
    config: ServeConfig,
    warnings: &mut (dyn Write + Send),
) -> Result<Running, ServeError> {
    start_with(config, warnings, true).await
}

/// [`start`] with the audit trail switched off: nothing is recorded. Only
/// the service benchmark calls it, to measure what auditing costs in the
/// same run; no configuration setting reaches it.
#[doc(hidden)]
pub async fn start_unaudited_for_benchmarks(
    config: ServeConfig,
    warnings: &mut (dyn Write + Send),
) -> Result<Running, ServeError> {
    start_with(config, warnings, false).await
}

async fn start_with(
    config: ServeConfig,
    warnings: &mut (dyn Write + Send),
    audited: bool,
) -> Result<Running, ServeError> {
    let source = KeySource {
        path: config.master_key.clone(),
        expect: Some(config.fingerprint),
    };
    let (keys, key_state) = keyfile::load_with_state(&source, warnings)?;
    let shown = config.master_key.display().to_string();
    if !config.dev_mode && key_state.demo {
        return Err(ServeError::DemoKey(shown));
    }
    if !config.dev_mode && key_state.readable_by_others {
        return Err(ServeError::KeyFileOpen(shown));
    }
    let (policy, policy_text) = load_policy_text(&config.policy)?;
    let tls = tls_config(&config, &policy)?;
    let version = policy.version().clone();
    let recorder = if audited {
        open_recorder(&config, &keys)?
    } else {
        Recorder::discarding_for_benchmarks(&log_signer(config.audit.origin.as_deref(), &keys)?)
    };
    let state = Arc::new(State {
        exchange: Exchange::new(keys, Box::new(SystemRandomness::new())),
        policy: RwLock::new(Arc::new(policy)),
        recorder: Arc::new(recorder),
    });
    // The policy in force is stored and its loading recorded before any
    // call is decided under it.
    state
        .recorder
        .record(policy_loaded(&state.policy(), &policy_text))
        .await
        .map_err(ServeError::Audit)?;
    let mut recorder_health = state.recorder.health();

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CodesServer<CodesService>>().await;
    health.set_serving::<AuditServer<AuditService>>().await;
    // Health follows the audit trail: NOT_SERVING while records cannot be
    // written (every call then gets UNAVAILABLE), SERVING again once a
    // commit succeeds.
    tokio::spawn(async move {
        while recorder_health.changed().await.is_ok() {
            let serving = *recorder_health.borrow_and_update();
            let status = if serving {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <CodesServer<CodesService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            health
                .set_service_status(
                    <AuditServer<AuditService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: grpcio's and older grpcurl's reflection clients speak only it.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|_| ServeError::Task)?;
    let reflection = reflection().build_v1().map_err(|_| ServeError::Task)?;
    let limits = &config.limits;
    let codes = CodesServer::new(CodesService::new(Arc::clone(&state)))
        .max_decoding_message_size(limits.max_message_bytes);
    // The caller's identity is checked before the request body is read.
    let admit_state = Arc::clone(&state);
    let codes = InterceptedService::new(codes, move |request| codes::admit(&admit_state, request));
    // Oversized and cut-short requests get the promised codes (`framing`).
    let codes = FramingStatus::new(codes);
    let audit = AuditServer::new(AuditService::new(Arc::clone(&state)))
        .max_decoding_message_size(limits.max_message_bytes);
    let admit_audit = Arc::clone(&state);
    let audit = InterceptedService::new(audit, move |request| codes::admit(&admit_audit, request));
    let audit = FramingStatus::new(audit);
    // Health is tonic's, with tonic's codec: an undecodable request is
    // INVALID_ARGUMENT there too, not INTERNAL (`framing`).
    let health_service = FramingStatus::new(health_service);
    let router = edge::server(limits)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(codes)
        .add_service(audit);
    let incoming = edge::incoming(listener, tls, limits);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(
        %addr,
        policy = %version,
        dev_mode = config.dev_mode,
        max_connections = limits.max_connections,
        max_concurrent_streams = limits.max_concurrent_streams,
        max_message_bytes = limits.max_message_bytes,
        handshake_timeout_s = limits.handshake_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "fugo serving"
    );
    Ok(Running {
        addr,
        state,
        policy_path: config.policy,
        grace: config.shutdown_grace,
        stop,
        task,
    })
}
