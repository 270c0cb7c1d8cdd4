//! Starting, reloading and stopping the server.
//!
//! `start` checks everything before it listens — the key and its pinned
//! fingerprint, the policy, the certificates — so a misconfigured server
//! refuses to start with one clear message instead of failing calls later.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use zeroize::Zeroizing;

use super::audit::AuditService;
use super::codes::{self, CodesService};
use super::config::{GenerationSource, MasterKeySource, ServeConfig};
use super::edge;
pub use super::error::ServeError;
use super::framing::FramingStatus;
use super::metrics::{self, Metrics};
use super::persons::PersonsService;
pub use super::policy_file::load_policy;
use super::policy_file::{load_policy_text, policy_loaded, reload};
use super::quota::Quotas;
use super::revocation::Crls;
use super::sealed::{Gate, HealthReason};
use super::state::State;
use super::tls_files::{crl_texts, read_crls, read_tls};
use crate::audit::{Recorder, RecorderError};
use crate::certs;
use crate::custody::{KeyringUnsealer, Unsealing};
use crate::exchange::Exchange;
use crate::files;
use crate::keyfile::{self, KeySource};
use crate::policy::{Policy, PolicyVersion};
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::fugo::v1::audit_server::AuditServer;
use crate::proto::fugo::v1::codes_server::CodesServer;
use crate::proto::fugo::v1::persons_server::PersonsServer;
use crate::random::SystemRandomness;
use fugo_log::checkpoint::LogSigner;
use fugo_log::store::{Marks, Store};
use std::time::{SystemTime, UNIX_EPOCH};

/// The log's signing key, named by the configured origin
/// ([`crate::audit::log_signer`]).
fn log_signer(
    origin: Option<&str>,
    keys: &crate::keys::KeyHierarchy,
) -> Result<LogSigner, ServeError> {
    crate::audit::log_signer(origin, keys).map_err(|error| ServeError::LogKey(error.to_string()))
}

fn open_recorder(
    config: &ServeConfig,
    keys: &crate::keys::KeyHierarchy,
) -> Result<Recorder, ServeError> {
    // The data directory is the server's alone (the store inside is 0600
    // too): created with mode 0700 when it does not exist yet.
    create_data_dir(config)?;
    let signer = log_signer(config.audit.origin.as_deref(), keys)?;
    Ok(Recorder::open(
        &config.data_dir,
        signer,
        config.audit.settings.clone(),
    )?)
}

/// Outside dev mode, a key file that holds the public demo key or that
/// others may read stops the start (the master key's and every keyring
/// entry's). The fingerprint pinned in the configuration was checked when
/// the file was read, so a demo key is caught by its contents either way.
fn refuse_unsafe_key(
    config: &ServeConfig,
    generation: crate::generation::Generation,
    path: &Path,
    state: &keyfile::KeyFileState,
) -> Result<(), ServeError> {
    if config.dev_mode {
        return Ok(());
    }
    let shown = path.display().to_string();
    if state.demo {
        return Err(ServeError::DemoKey {
            what: shown,
            settings: key_settings(generation),
        });
    }
    if state.readable_by_others {
        return Err(ServeError::KeyFileOpen(shown));
    }
    Ok(())
}

/// The settings that name `generation`'s key, for advice.
fn key_settings(generation: crate::generation::Generation) -> String {
    if generation == crate::generation::Generation::FIRST {
        "master_key and master_key_fingerprint".to_owned()
    } else {
        format!("key_file and fingerprint of the [[keyring]] entry of generation {generation}")
    }
}

/// Reads the key file of `generation` (generation 1's with the key file
/// warnings to `warnings`), checks it against its pinned fingerprint, and
/// refuses it outside dev mode if it is the demo key or readable by others.
fn load_key_file(
    config: &ServeConfig,
    generation: &GenerationSource<'_>,
    path: &Path,
    warnings: &mut dyn Write,
) -> Result<crate::keys::KeyHierarchy, ServeError> {
    let source = KeySource {
        path: path.to_path_buf(),
        expect: Some(generation.fingerprint),
    };
    let (keys, state) = if generation.generation == crate::generation::Generation::FIRST {
        keyfile::load_with_state(&source, warnings)?
    } else {
        keyfile::load_generation(&source, generation.generation, warnings)?
    };
    refuse_unsafe_key(config, generation.generation, path, &state)?;
    Ok(keys)
}

/// A generation held by custodians: its number, pinned fingerprint and
/// threshold.
pub(crate) type Custodied = (crate::generation::Generation, crate::keys::Fingerprint, u8);

/// Reads and checks the key file of every generation of `config`
/// ([`load_key_file`]), and lists the generations held by custodians
/// (outside dev mode, one pinned to the demo key is refused). The server
/// does this before listening; the offline `fugo derive --config` too.
pub(crate) fn read_key_files(
    config: &ServeConfig,
    warnings: &mut dyn Write,
) -> Result<(Vec<crate::keys::KeyHierarchy>, Vec<Custodied>), ServeError> {
    let mut held = Vec::new();
    let mut custodied = Vec::new();
    for generation in config.generations() {
        match generation.source {
            MasterKeySource::File(path) => {
                held.push(load_key_file(config, &generation, path, warnings)?);
            }
            MasterKeySource::Shares { threshold } => {
                if !config.dev_mode && generation.fingerprint.is_demo() {
                    return Err(ServeError::DemoKey {
                        what: format!(
                            "[[keyring]] generation {} fingerprint",
                            generation.generation
                        ),
                        settings: key_settings(generation.generation),
                    });
                }
                custodied.push((generation.generation, generation.fingerprint, *threshold));
            }
        }
    }
    Ok((held, custodied))
}

/// The keyring: the keys in `held` (rebuilt from custodians' shares, or
/// read at start) and the key file of every other generation of the
/// configuration, each read now and checked as at start.
fn keyring(
    config: &ServeConfig,
    mut held: Vec<crate::keys::KeyHierarchy>,
) -> Result<crate::keyring::Keyring, ServeError> {
    for generation in config.generations() {
        if held.iter().any(|k| k.generation() == generation.generation) {
            continue;
        }
        match generation.source {
            MasterKeySource::File(path) => {
                held.push(load_key_file(
                    config,
                    &generation,
                    path,
                    &mut std::io::sink(),
                )?);
            }
            _ => {
                return Err(ServeError::Keyring(format!(
                    "generation {}'s key is held by custodians and was not supplied",
                    generation.generation
                )));
            }
        }
    }
    held.sort_by_key(|keys| keys.generation());
    crate::keyring::Keyring::new(held).map_err(|e| ServeError::Keyring(e.to_string()))
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

/// The TLS setup and what rebuilding it takes: the files read at start
/// (the client CA, the server's certificate and key, kept in memory) and
/// the CRL files, which a reload reads again.
#[derive(Clone)]
struct TlsSetup {
    acceptor: edge::Acceptor,
    material: Arc<TlsMaterial>,
    client_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    crls: Vec<PathBuf>,
}

impl TlsSetup {
    /// The server's identity, and client certificates required and checked
    /// against the client CA and the CRLs (see `edge`).
    fn start(config: &ServeConfig, policy: &Policy) -> Result<Self, ServeError> {
        let material = Arc::new(tls_material(config, policy)?);
        let (server, crls) = build_tls(
            &material,
            (&config.client_ca, &config.server_cert, &config.server_key),
            &config.crls,
        )?;
        if !crls.is_empty() {
            tracing::info!(crls = ?crls, "certificate revocation lists in force");
        }
        Ok(TlsSetup {
            acceptor: edge::Acceptor::new(server, crls),
            material,
            client_ca: config.client_ca.clone(),
            server_cert: config.server_cert.clone(),
            server_key: config.server_key.clone(),
            crls: config.crls.clone(),
        })
    }

    /// Reads the CRL files again and puts them in force for new handshakes
    /// and every call after; an unusable list leaves those in force (and
    /// says why). Returns how many serial numbers are revoked.
    fn reload(&self) -> Result<usize, ServeError> {
        if self.crls.is_empty() {
            return Ok(0);
        }
        let files = (&self.client_ca, &self.server_cert, &self.server_key);
        let built = build_tls(&self.material, files, &self.crls).and_then(|(server, crls)| {
            crls.not_older_than(&self.acceptor.crls())
                .map_err(ServeError::Tls)?;
            Ok((server, crls))
        });
        match built {
            Ok((server, crls)) => {
                let revoked = crls.revoked();
                tracing::info!(crls = ?crls, "certificate revocation lists reloaded");
                self.acceptor.install(server, crls);
                Ok(revoked)
            }
            Err(error) => {
                tracing::error!(error = %error,
                    "CRL reload refused; the revocation lists in force stay");
                Err(error)
            }
        }
    }
}

/// The rustls setup from the files read at start and the CRL files, read now.
fn build_tls(
    material: &TlsMaterial,
    (client_ca, server_cert, server_key): (&PathBuf, &PathBuf, &PathBuf),
    crl_paths: &[PathBuf],
) -> Result<(Arc<tokio_rustls::rustls::ServerConfig>, Crls), ServeError> {
    let read = read_crls(crl_paths)?;
    let crls = crl_texts(&read);
    edge::tls_setup(
        (client_ca, &material.client_ca),
        (server_cert, &material.server_cert),
        (server_key, material.server_key.as_slice()),
        &crls,
    )
    .map_err(ServeError::Tls)
}

/// A running server.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if `[metrics]` is configured.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the Admin service listens, if `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    admin: Option<AdminTask>,
    metrics_task: Option<JoinHandle<()>>,
    state: Arc<OnceLock<Arc<State>>>,
    policy_path: PathBuf,
    tls: TlsSetup,
    grace: std::time::Duration,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The unseal socket's task and file, while sealed.
    unseal: Option<(JoinHandle<()>, PathBuf)>,
}

impl Running {
    /// Re-reads the policy file and swaps it in atomically; an invalid file
    /// leaves the old policy in force and says why.
    pub fn reload_policy(&self) -> Result<PolicyVersion, ServeError> {
        reload(&self.state, &self.policy_path)
    }

    /// Re-reads the CRL files (`[tls] crl`) and puts them in force: new
    /// handshakes and every later call or stream message are checked
    /// against them. An unusable list leaves the lists in force and says
    /// why. Returns how many serial numbers are revoked.
    pub fn reload_crls(&self) -> Result<usize, ServeError> {
        self.reloader().reload_crls()
    }

    /// What SIGHUP does: [`reload_policy`](Self::reload_policy) and
    /// [`reload_crls`](Self::reload_crls), each independent of the other.
    pub fn reload(&self) -> Result<PolicyVersion, ServeError> {
        self.reloader().reload()
    }

    /// A handle that can reload the policy and the CRLs from another task.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: Arc::clone(&self.state),
            path: self.policy_path.clone(),
            tls: self.tls.clone(),
            admin_tls: self.admin.as_ref().map(|admin| admin.tls.clone()),
        }
    }

    /// Whether the server still waits for the master key's shares.
    pub fn is_sealed(&self) -> bool {
        self.state.get().is_none()
    }

    /// Stops accepting, lets in-flight calls finish within the grace
    /// period, then waits (again at most the grace period) until the
    /// audit store is closed, so the data directory can be opened by the
    /// next server or by `fugo admin` as soon as this returns.
    pub async fn stop(self) -> Result<(), ServeError> {
        let Running {
            metrics_task,
            unseal,
            admin,
            stop,
            task,
            state,
            grace,
            ..
        } = self;
        let recorder = state.get().map(|state| Arc::clone(&state.recorder));
        if let Some(task) = metrics_task {
            task.abort();
            let _ = task.await;
        }
        if let Some((task, path)) = unseal {
            task.abort();
            let _ = std::fs::remove_file(path);
        }
        if let Some(admin) = admin {
            let _ = admin.stop.send(());
            let mut task = admin.task;
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
        let _ = stop.send(());
        let mut task = task;
        let served = match tokio::time::timeout(grace, &mut task).await {
            Ok(Ok(result)) => result.map_err(ServeError::from),
            Ok(Err(_)) => Err(ServeError::Task),
            Err(_) => {
                tracing::warn!("grace period over; closing the remaining calls");
                task.abort();
                let _ = task.await;
                Ok(())
            }
        };
        // The store is closed now, not when the last holder of the state
        // lets go of it: one may never (the SIGHUP thread holds a
        // reloader), and a process that exits while the recorder commits
        // can leave a torn last commit (D202).
        drop(state);
        if let Some(recorder) = recorder {
            recorder.close();
            let mut closed = recorder.closed();
            drop(recorder);
            let wait = closed.wait_for(|closed| *closed);
            if tokio::time::timeout(grace, wait).await.is_err() {
                tracing::warn!("the audit store is still open after the grace period");
            }
        }
        served
    }
}

/// Reloads the policy and the CRLs of a running server (what SIGHUP does).
#[derive(Clone)]
pub struct Reloader {
    state: Arc<OnceLock<Arc<State>>>,
    path: PathBuf,
    tls: TlsSetup,
    /// The admin listener's TLS setup, if `[admin]` is configured.
    admin_tls: Option<TlsSetup>,
}

impl Reloader {
    /// See [`Running::reload`]: the policy and the CRLs, each kept when
    /// its new file is unusable; the first error is returned.
    pub fn reload(&self) -> Result<PolicyVersion, ServeError> {
        let policy = reload(&self.state, &self.path);
        let crls = self.reload_crls();
        let version = policy?;
        crls?;
        Ok(version)
    }

    /// The agencies' CRLs (`[tls] crl`) and the admin CA's (`[admin]
    /// crl`), each kept when its new files are unusable; the serial numbers
    /// revoked by both, or the first error.
    pub fn reload_crls(&self) -> Result<usize, ServeError> {
        let agencies = self.tls.reload();
        let admins = self.admin_tls.as_ref().map_or(Ok(0), TlsSetup::reload);
        Ok(agencies? + admins?)
    }
}

/// Checks everything, binds `config.listen`, and serves until stopped.
/// `warnings` receives the key file warnings (dev mode, permissions).
///
/// With `[custody]` instead of a key file the server starts sealed: it
/// listens, answers every call UNAVAILABLE and health NOT_SERVING, and
/// takes shares on `data_dir/unseal.sock` until it can rebuild the key
/// (see [`crate::custody`]); then it opens as it would have at start.
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

/// The caller check in front of both services, by name (the services are
/// built after unsealing, so their types must be nameable).
#[derive(Clone)]
struct Admit(Arc<State>);

impl tonic::service::Interceptor for Admit {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        codes::admit(&self.0, request)
    }
}

type CodesStack = FramingStatus<InterceptedService<CodesServer<CodesService>, Admit>>;
type AuditStack = FramingStatus<InterceptedService<AuditServer<AuditService>, Admit>>;
type PersonsStack = FramingStatus<InterceptedService<PersonsServer<PersonsService>, Admit>>;

/// Everything opening needs, kept until the key is there: at start with a
/// key file, on the last share when sealed.
struct Opening {
    config: ServeConfig,
    audited: bool,
    health: tonic_health::server::HealthReporter,
    codes: Arc<OnceLock<CodesStack>>,
    audit: Arc<OnceLock<AuditStack>>,
    persons: Arc<OnceLock<PersonsStack>>,
    state: Arc<OnceLock<Arc<State>>>,
    open: Arc<OnceLock<()>>,
    /// The backup key, for the Admin service.
    backup_key: Arc<OnceLock<super::admin::BackupKey>>,
}

impl Opening {
    /// Opens with `held` (the keys read at start, or rebuilt from shares;
    /// the key files of the other generations are read now): reads the
    /// policy (unless `loaded` holds it, read at start), opens the audit
    /// trail, records the policy in force, builds the services and reports
    /// serving.
    async fn open(
        &self,
        held: Vec<crate::keys::KeyHierarchy>,
        loaded: Option<(Policy, String)>,
    ) -> Result<(), ServeError> {
        let config = &self.config;
        let (policy, policy_text) = match loaded {
            Some(loaded) => loaded,
            None => load_policy_text(&config.policy)?,
        };
        let keyring = keyring(config, held)?;
        // The audit trail's keys come from generation 1 (D173).
        let keys = keyring
            .get(crate::generation::Generation::FIRST)
            .map_err(|e| ServeError::Keyring(e.to_string()))?;
        let recorder = if self.audited {
            open_recorder(config, keys)?
        } else {
            Recorder::discarding_for_benchmarks(&log_signer(config.audit.origin.as_deref(), keys)?)
        };
        let _ = self.backup_key.set(super::admin::BackupKey {
            key: keys.backup_key(),
            fingerprint: keys.fingerprint().to_string(),
        });
        let state = Arc::new(State {
            exchange: Exchange::with_keyring(keyring, Box::new(SystemRandomness::new())),
            policy: RwLock::new(Arc::new(policy)),
            recorder: Arc::new(recorder),
            quotas: Quotas::new(),
            metrics: Metrics::new(),
            marks: Mutex::new(Marks::default()),
        });
        // The policy may not move an epoch backwards or need a key the
        // keyring lacks: checked before anything is decided under it.
        let lifecycle = |reason| ServeError::Lifecycle {
            path: config.policy.display().to_string(),
            reason,
        };
        super::lifecycle::check_keyring(&state.exchange, &state.policy()).map_err(lifecycle)?;
        // Nor drop an agency id or revive a retired agency of any policy in
        // force before (D211): the store's marks hold them all (D217).
        if self.audited {
            let stored = state
                .recorder
                .read(|store| store.marks())
                .await
                .map_err(ServeError::Audit)?;
            super::lifecycle::check(&state.policy(), &stored).map_err(lifecycle)?;
            // Each generation's key is the one first used for it (D200).
            super::lifecycle::check_generation_keys(state.exchange.keyring(), &stored)
                .map_err(ServeError::Keyring)?;
            *state.marks.lock().unwrap_or_else(PoisonError::into_inner) = stored;
        }
        let policy_marks = super::lifecycle::marks_of(&state.policy(), state.exchange.keyring());
        super::lifecycle::raise(
            &mut state.marks.lock().unwrap_or_else(PoisonError::into_inner),
            &policy_marks,
        );
        // Today's quota counts survive a restart: read back from the store
        // (the benchmarks' unaudited server has no store to read).
        if self.audited {
            let today = super::quota::jst_day(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |elapsed| elapsed.as_millis() as u64),
            );
            let used = state
                .recorder
                .read(move |store| store.usage(today))
                .await
                .map_err(ServeError::Audit)?;
            state.quotas.restore(&used, std::time::Instant::now());
            // Re-issues and suspensions, into memory before any call is
            // served, so derive resolves numbers without reading the store.
            let entries = state
                .recorder
                .read(|store| store.persons())
                .await
                .map_err(ServeError::Audit)?;
            let loaded = crate::audit::persons::load_entries(entries, state.exchange.persons())?;
            if loaded > 0 {
                tracing::info!(entries = loaded, "re-issue and suspension tables loaded");
            }
        }
        // The policy in force is stored and its loading recorded before any
        // call is decided under it.
        state
            .recorder
            .record(policy_loaded(&state.policy(), &policy_text, policy_marks))
            .await
            .map_err(ServeError::Audit)?;
        let limits = &config.limits;
        let codes = CodesServer::new(CodesService::new(Arc::clone(&state)))
            .max_decoding_message_size(limits.max_message_bytes);
        // The caller's identity is checked before the request body is read;
        // oversized and cut-short requests get the promised codes (`framing`).
        let codes = FramingStatus::new(InterceptedService::new(codes, Admit(Arc::clone(&state))));
        let audit = AuditServer::new(AuditService::new(Arc::clone(&state)))
            .max_decoding_message_size(limits.max_message_bytes);
        let audit = FramingStatus::new(InterceptedService::new(audit, Admit(Arc::clone(&state))));
        let persons = PersonsServer::new(PersonsService::new(Arc::clone(&state)))
            .max_decoding_message_size(limits.max_message_bytes);
        let persons =
            FramingStatus::new(InterceptedService::new(persons, Admit(Arc::clone(&state))));
        if self.codes.set(codes).is_err()
            || self.audit.set(audit).is_err()
            || self.persons.set(persons).is_err()
            || self.state.set(Arc::clone(&state)).is_err()
        {
            return Err(ServeError::Task);
        }
        let _ = self.open.set(());
        self.report_health(&state).await;
        Ok(())
    }

    /// Serving now; from here on health follows the audit trail:
    /// NOT_SERVING while records cannot be written (every call then gets
    /// UNAVAILABLE), SERVING again once a commit succeeds.
    async fn report_health(&self, state: &State) {
        let health = self.health.clone();
        set_health(&health, tonic_health::ServingStatus::Serving).await;
        let mut recorder_health = state.recorder.health();
        tokio::spawn(async move {
            while recorder_health.changed().await.is_ok() {
                let serving = *recorder_health.borrow_and_update();
                let status = if serving {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                set_health(&health, status).await;
            }
        });
    }
}

/// Sets the overall status and both services' to `status`.
async fn set_health(
    health: &tonic_health::server::HealthReporter,
    status: tonic_health::ServingStatus,
) {
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
    health
        .set_service_status(
            <PersonsServer<PersonsService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Creates the data directory (mode 0700) if it does not exist yet.
fn create_data_dir(config: &ServeConfig) -> Result<(), ServeError> {
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
    })
}

async fn start_with(
    config: ServeConfig,
    warnings: &mut (dyn Write + Send),
    audited: bool,
) -> Result<Running, ServeError> {
    if !config.dev_mode && config.fingerprint.is_demo() {
        return Err(ServeError::DemoKey {
            what: "master_key_fingerprint".to_owned(),
            settings: key_settings(crate::generation::Generation::FIRST),
        });
    }
    // Every generation's key file is read and checked before listening;
    // the generations held by custodians are sealed (D182).
    let (held, sealed) = read_key_files(&config, warnings)?;
    // The policy and the certificates (with the CRLs) are checked before
    // listening, sealed or not; a sealed server reads the policy again when
    // it is unsealed, one with its key opens with this reading.
    let (policy, policy_text) = load_policy_text(&config.policy)?;
    let tls = TlsSetup::start(&config, &policy)?;
    let version = policy.version().clone();
    let mut loaded = Some((policy, policy_text));

    let (health, health_service) = tonic_health::server::health_reporter();
    let unsealer = (!sealed.is_empty()).then(|| KeyringUnsealer::new(&sealed));
    let progress = unsealer.as_ref().map(KeyringUnsealer::status);
    let opening = Arc::new(Opening {
        config: config.clone(),
        audited,
        health: health.clone(),
        codes: Arc::new(OnceLock::new()),
        audit: Arc::new(OnceLock::new()),
        persons: Arc::new(OnceLock::new()),
        state: Arc::new(OnceLock::new()),
        open: Arc::new(OnceLock::new()),
        backup_key: Arc::new(OnceLock::new()),
    });
    let mut unseal = None;
    let mut unsealing = None;
    match unsealer {
        None => opening.open(held, loaded.take()).await?,
        Some(unsealer) => {
            // The keys read now are read again on opening (the shares may
            // take days to arrive); nothing of them is kept meanwhile.
            drop(held);
            set_health(&health, tonic_health::ServingStatus::NotServing).await;
            create_data_dir(&config)?;
            let path = crate::custody::unseal::socket_path(&config.data_dir);
            let listener = crate::custody::unseal::bind(&config.data_dir).map_err(|source| {
                ServeError::UnsealSocket {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let opener = Arc::clone(&opening);
            let shared = Unsealing::new(
                unsealer,
                Box::new(move |keys| {
                    let opener = Arc::clone(&opener);
                    Box::pin(async move {
                        opener
                            .open(keys, None)
                            .await
                            .map_err(|error| error.to_string())
                    })
                }),
            );
            let task = tokio::spawn(crate::custody::unseal::serve(
                listener,
                path.clone(),
                Arc::clone(&shared),
            ));
            unsealing = Some(shared);
            tracing::warn!(
                socket = %path.display(),
                reason = %progress.as_ref().map(|status| status.reason()).unwrap_or_default(),
                "SEALED: waiting for the master key's shares (custodians run `fugo unseal`, or `fugo admin unseal` as admins)"
            );
            unseal = Some((task, path));
        }
    }

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

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: grpcio's and older grpcurl's reflection clients speak only it.
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|_| ServeError::Task)?;
    let reflection = reflection().build_v1().map_err(|_| ServeError::Task)?;
    let limits = &config.limits;
    let codes = Gate::new(Arc::clone(&opening.codes), progress.clone());
    let audit = Gate::new(Arc::clone(&opening.audit), progress.clone());
    let persons = Gate::new(Arc::clone(&opening.persons), progress.clone());
    // Health is tonic's, with tonic's codec: an undecodable request is
    // INVALID_ARGUMENT there too, not INTERNAL (`framing`, D141).
    let health_service = FramingStatus::new(HealthReason::new(
        health_service,
        Arc::clone(&opening.open),
        progress.clone(),
    ));
    let router = edge::server(limits)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(codes)
        .add_service(audit)
        .add_service(persons);
    let admin = match &config.admin {
        None => None,
        Some(admin) => Some(start_admin(admin, &config, &tls, &opening, unsealing).await?),
    };
    let metrics_task = match config.metrics {
        None => None,
        Some(at) => {
            let listener = TcpListener::bind(at)
                .await
                .map_err(|source| ServeError::Bind { addr: at, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr: at, source })?;
            if !bound.ip().is_loopback() {
                tracing::warn!(addr = %bound, "metrics are served beyond loopback (plain HTTP, no authentication)");
            }
            tracing::info!(addr = %bound, "metrics served at /metrics");
            Some((
                bound,
                tokio::spawn({
                    let state = Arc::clone(&opening.state);
                    metrics::serve(listener, move || {
                        state.get().map(|state| state.metrics_page())
                    })
                }),
            ))
        }
    };
    let incoming = edge::incoming(listener, tls.acceptor.clone(), limits);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(
        %addr,
        policy = %version,
        dev_mode = config.dev_mode,
        sealed = progress.is_some(),
        max_connections = limits.max_connections,
        max_concurrent_streams = limits.max_concurrent_streams,
        max_message_bytes = limits.max_message_bytes,
        handshake_timeout_s = limits.handshake_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "fugo serving"
    );
    let (metrics_addr, metrics_task) = match metrics_task {
        Some((addr, task)) => (Some(addr), Some(task)),
        None => (None, None),
    };
    Ok(Running {
        addr,
        metrics_addr,
        admin_addr: admin.as_ref().map(|admin| admin.addr),
        admin,
        metrics_task,
        state: Arc::clone(&opening.state),
        policy_path: config.policy,
        tls,
        grace: config.shutdown_grace,
        stop,
        task,
        unseal,
    })
}

/// The admin listener's task.
struct AdminTask {
    addr: SocketAddr,
    tls: TlsSetup,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds `[admin] listen` and serves the Admin service there: the server's
/// own certificate, client certificates of the admin CA only (in dev mode,
/// a demo admin CA and certificates in `data_dir/certs/admin` are written
/// if the CA is missing).
async fn start_admin(
    admin: &super::config::AdminConfig,
    config: &ServeConfig,
    tls: &TlsSetup,
    opening: &Opening,
    unsealing: Option<Arc<Unsealing>>,
) -> Result<AdminTask, ServeError> {
    use crate::proto::fugo::v1::admin_server::AdminServer;
    if config.dev_mode && !admin.ca.exists() {
        let dir = admin.ca.parent().unwrap_or(Path::new("."));
        tracing::warn!(dir = %dir.display(), "DEV MODE: writing demo admin certificates");
        certs::write_dev_certs(dir, &admin.identities)?;
    }
    remove_stale_snapshots(&config.data_dir);
    let ca = read_tls(&admin.ca, files::MAX_CERTIFICATES)?;
    if shares_a_certificate(&ca.bytes, &tls.material.client_ca) {
        return Err(ServeError::Tls(format!(
            "{}: the admin CA holds a certificate of the agencies' CA ({}): admin \
             certificates need a CA of their own, or an agency could be made an admin",
            admin.ca.display(),
            tls.client_ca.display()
        )));
    }
    let material = Arc::new(TlsMaterial {
        client_ca: ca.bytes.to_vec(),
        server_cert: tls.material.server_cert.clone(),
        server_key: tls.material.server_key.clone(),
    });
    let (server, crls) = build_tls(
        &material,
        (&admin.ca, &tls.server_cert, &tls.server_key),
        &admin.crls,
    )?;
    let admin_tls = TlsSetup {
        acceptor: edge::Acceptor::new(server, crls),
        material,
        client_ca: admin.ca.clone(),
        server_cert: tls.server_cert.clone(),
        server_key: tls.server_key.clone(),
        crls: admin.crls.clone(),
    };
    let listener = TcpListener::bind(admin.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: admin.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: admin.listen,
        source,
    })?;
    let reloader = Reloader {
        state: Arc::clone(&opening.state),
        path: config.policy.clone(),
        tls: tls.clone(),
        admin_tls: Some(admin_tls.clone()),
    };
    let service = super::admin::AdminService::new(
        Arc::clone(&opening.state),
        Arc::new(move || reloader.reload_crls()),
        Arc::clone(&opening.backup_key),
        config.policy.clone(),
        config.data_dir.clone(),
        unsealing,
    );
    let service = InterceptedService::new(
        AdminServer::new(service).max_decoding_message_size(config.limits.max_message_bytes),
        super::admin::AdminAdmit::new(&admin.identities),
    );
    let router = edge::server(&config.limits).add_service(service);
    let incoming = edge::incoming(listener, admin_tls.acceptor.clone(), &config.limits);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    }));
    tracing::info!(%addr, admins = admin.identities.len(), "admin service listening");
    Ok(AdminTask {
        addr,
        tls: admin_tls,
        stop,
        task,
    })
}

/// Whether two PEM bundles hold a certificate in common (by DER).
fn shares_a_certificate(one: &[u8], other: &[u8]) -> bool {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let theirs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(other)
        .filter_map(Result::ok)
        .collect();
    CertificateDer::pem_slice_iter(one)
        .filter_map(Result::ok)
        .any(|certificate| theirs.contains(&certificate))
}

/// Removes plain snapshots a backup left when the server stopped during it
/// (`.backup-<hex>.tmp` in the data directory; see `service::admin`).
fn remove_stale_snapshots(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".backup-") && name.ends_with(".tmp") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %name, "removed a snapshot left by an interrupted backup")
                }
                Err(error) => {
                    tracing::warn!(file = %name, error = %error, "cannot remove a snapshot left by an interrupted backup")
                }
            }
        }
    }
}
