//! `fugo serve --config fugo.toml`: the server's configuration file, read
//! and checked once at start. Relative paths are taken from the folder the
//! configuration file is in, so the example works from any working folder.
//!
//! Outside dev mode the `[tls]` section is required: production never falls
//! back to the demo certificates in `data_dir/certs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use crate::certs::CertFiles;
use crate::files::{self, ReadError};
use crate::keys::Fingerprint;

/// Why a configuration file was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ReadError,
    },
    /// The file is not valid TOML or has unknown or missing fields.
    #[error("configuration {path}, line {line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line (0 if unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is not acceptable.
    #[error("configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Outside dev mode the certificates must be named: the demo CA that dev
/// mode writes keeps its private key beside it, so anyone who can read the
/// data folder could mint any agency's certificate.
const NO_TLS: &str = "no [tls] section: outside dev mode, name the CA that signs the \
agencies' client certificates, the server's certificate and its private key (mode 0600):\n\
[tls]\nca = \"/etc/fugo/client-ca.pem\"\ncert = \"/etc/fugo/server.pem\"\n\
key = \"/etc/fugo/server.key\"\n(demo certificates in data_dir/certs are used only with \
dev_mode = true)";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    data_dir: PathBuf,
    policy: PathBuf,
    master_key: Option<PathBuf>,
    master_key_fingerprint: String,
    custody: Option<RawCustody>,
    #[serde(default = "default_grace")]
    shutdown_grace_seconds: u64,
    #[serde(default)]
    dev_mode: bool,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: super::limits::RawLimits,
    #[serde(default)]
    audit: RawAudit,
    metrics: Option<RawMetrics>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    log: RawLog,
    /// Later master-key generations (`[[keyring]]`); generation 1 is
    /// `master_key` or `[custody]`.
    #[serde(default)]
    keyring: Vec<RawGeneration>,
}

/// One `[[keyring]]` entry: a later master-key generation, from a key
/// file (`key_file`) or from custodians' shares (`[keyring.custody]`),
/// exactly one of the two (D181).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeneration {
    generation: u16,
    key_file: Option<PathBuf>,
    custody: Option<RawCustody>,
    fingerprint: String,
}

/// A master-key generation after the first, and where its key comes from:
/// the same [`MasterKeySource`] as generation 1's, with its pinned
/// fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationKey {
    /// Its generation, 2 or more.
    pub generation: crate::generation::Generation,
    /// Where its key comes from: a key file (mode 0600 outside dev mode)
    /// or custodians' shares (the server starts sealed).
    pub source: MasterKeySource,
    /// The fingerprint its key must have.
    pub fingerprint: Fingerprint,
}

/// One generation the server needs a key for, and where that key comes
/// from: generation 1 (`master_key` or `[custody]`) and every `[[keyring]]`
/// entry alike (see [`ServeConfig::generations`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerationSource<'a> {
    /// The generation.
    pub generation: crate::generation::Generation,
    /// Where its key comes from.
    pub source: &'a MasterKeySource,
    /// The fingerprint its key must have.
    pub fingerprint: Fingerprint,
}

/// The `[log]` section: how the server's log lines are written (D253).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The `[log]` settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// The level filter (`info`, `warn`, `fugo=debug,info`, …); the
    /// `RUST_LOG` variable, when set, takes its place.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

impl RawLog {
    fn check(self) -> Result<LogConfig, String> {
        let format = match self.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(format!(
                    "[log] format: '{}' is not \"text\" or \"json\"",
                    self.format.escape_default()
                ));
            }
        };
        if tracing_subscriber::EnvFilter::builder()
            .parse(&self.level)
            .is_err()
        {
            return Err(format!(
                "[log] level: '{}' is not a level filter like \"info\" or \"fugo=debug,warn\"",
                self.level.escape_default()
            ));
        }
        Ok(LogConfig {
            format,
            level: self.level,
        })
    }
}

/// The `[admin]` section: present means on (D230).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: String,
    ca: Option<PathBuf>,
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    crl: Paths,
}

/// The admin listener (`[admin]`): its own address, its own client CA and
/// the identities (certificate Common Names) that are admins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Where the `fugo.v1.Admin` service listens.
    pub listen: SocketAddr,
    /// The CA that signs admin client certificates (never the agencies').
    pub ca: PathBuf,
    /// The admins: Common Names of admin client certificates.
    pub identities: Vec<String>,
    /// Revocation lists of the admin CA (`[admin] crl`); re-read on SIGHUP
    /// and by the Admin service's ReloadCrls. Empty: none.
    pub crls: Vec<PathBuf>,
}

/// The identity dev mode makes an admin certificate for.
pub const DEV_ADMIN: &str = "admin";

/// `[admin]` outside dev mode without its CA or admins.
const ADMIN_NEEDS: &str = "[admin] needs its own CA and its admins outside dev mode:\n\
[admin]\nlisten = \"127.0.0.1:7444\"\nca = \"/etc/fugo/admin-ca.pem\"\n\
identities = [\"ops-tanaka\"]\n(the admin CA must not be the CA of the agencies' certificates)";

/// The `[metrics]` section: present means on (D127).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_metrics_listen")]
    listen: String,
}

/// Where `/metrics` is served when `[metrics]` names no address: loopback
/// only, on Prometheus' registered port for exporters of this kind.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

fn default_metrics_listen() -> String {
    DEFAULT_METRICS_LISTEN.to_owned()
}

/// The `[audit]` section: every value has a safe default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAudit {
    retention_days: u64,
    reserve_megabytes: u64,
    warn_megabytes: u64,
    commit_timeout_ms: u64,
    origin: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        let defaults = crate::audit::Settings::default();
        RawAudit {
            retention_days: defaults.retention.as_secs() / 86_400,
            reserve_megabytes: defaults.reserve_bytes >> 20,
            warn_megabytes: defaults.warn_bytes >> 20,
            commit_timeout_ms: defaults.commit_timeout.as_millis() as u64,
            origin: None,
        }
    }
}

/// The audit trail's settings, checked.
#[derive(Debug, Clone, Default)]
pub struct AuditConfig {
    /// How the recorder runs.
    pub settings: crate::audit::Settings,
    /// The log's name in its checkpoints and key (C2SP origin); `None`:
    /// `fugo.local/audit/<key fingerprint>`.
    pub origin: Option<String>,
}

impl RawAudit {
    fn check(self) -> Result<AuditConfig, String> {
        if self.retention_days < 1 {
            return Err("[audit] retention_days must be at least 1 (default: 7 years)".into());
        }
        if self.warn_megabytes < self.reserve_megabytes {
            return Err("[audit] warn_megabytes must be at least reserve_megabytes".into());
        }
        if !(100..=60_000).contains(&self.commit_timeout_ms) {
            return Err("[audit] commit_timeout_ms must lie between 100 and 60000".into());
        }
        if let Some(origin) = &self.origin
            && (origin.is_empty()
                || origin.len() > 200
                || origin
                    .chars()
                    .any(|c| c.is_whitespace() || c == '+' || c.is_control()))
        {
            return Err(
                "[audit] origin must be 1 to 200 characters without spaces or '+' (e.g. fugo.example.go.jp/audit)"
                    .into(),
            );
        }
        Ok(AuditConfig {
            settings: crate::audit::Settings {
                retention: Duration::from_secs(self.retention_days.saturating_mul(86_400)),
                reserve_bytes: self.reserve_megabytes << 20,
                warn_bytes: self.warn_megabytes << 20,
                commit_timeout: Duration::from_millis(self.commit_timeout_ms),
                ..crate::audit::Settings::default()
            },
            origin: self.origin,
        })
    }
}

fn default_grace() -> u64 {
    10
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    crl: Paths,
}

/// One path or a list of them.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a CRL file or a list of them, e.g. crl = \"/etc/fugo/agencies.crl\""
)]
enum Paths {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Default for Paths {
    fn default() -> Self {
        Paths::Many(Vec::new())
    }
}

impl Paths {
    fn into_vec(self) -> Vec<PathBuf> {
        match self {
            Paths::One(path) => vec![path],
            Paths::Many(paths) => paths,
        }
    }
}

/// The `[custody]` section: the master key held split (D110).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustody {
    threshold: u8,
}

/// `[tls]` without `ca`: production never accepts agencies without
/// checking their certificates against the CA named here.
const NO_CLIENT_CA: &str = "[tls] has no ca: name the CA that signs the agencies' client \
certificates (ca = \"/etc/fugo/client-ca.pem\"); fugo accepts only clients with a certificate \
it signed, in every mode";

/// Neither a key file nor `[custody]`.
const NO_KEY: &str = "no master key: name the key file (master_key = \"/etc/fugo/master.key\", \
mode 0600), or hold the key split among custodians and start sealed with\n[custody]\n\
threshold = 3\n(the threshold of `fugo keys split`; custodians then run `fugo unseal`)";

/// Where a master key comes from: generation 1's and every `[[keyring]]`
/// generation's alike (D181). Non-exhaustive: a KMS or HSM source can join
/// later without changing the generations that use it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MasterKeySource {
    /// A key file, read at start (mode 0600 outside dev mode).
    File(PathBuf),
    /// No key file: the server starts sealed and waits for `threshold`
    /// shares, supplied with `fugo unseal` (see `custody`).
    Shares {
        /// Shares needed to rebuild the key (at least 2).
        threshold: u8,
    },
}

/// A checked configuration, every path absolute or relative to the working
/// folder.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// Where the server keeps its state (and, in dev mode, certificates).
    pub data_dir: PathBuf,
    /// The policy file; reloaded on SIGHUP.
    pub policy: PathBuf,
    /// The master key file, or sealed start and shares.
    pub master_key: MasterKeySource,
    /// The master key's pinned fingerprint; a mismatch refuses to start.
    pub fingerprint: Fingerprint,
    /// How long in-flight calls may take to finish after a stop signal.
    pub shutdown_grace: Duration,
    /// Dev mode: the public demo key and key files others can read are
    /// allowed, and without `[tls]` demo certificates in `data_dir/certs`
    /// are generated and used. Loudly labelled; never for production.
    pub dev_mode: bool,
    /// The CA that signs client certificates (trusted for mTLS).
    pub client_ca: PathBuf,
    /// The server's certificate.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// Certificate revocation lists of the client CA(s), PEM or DER
    /// (`[tls] crl`); re-read on SIGHUP. Empty: no revocation checking.
    pub crls: Vec<PathBuf>,
    /// Connection, stream, size and time limits (`[limits]`).
    pub limits: super::limits::Limits,
    /// The audit trail (`[audit]`).
    pub audit: AuditConfig,
    /// Where `/metrics` is served (plain HTTP), if anywhere (`[metrics]`;
    /// off when the section is missing).
    pub metrics: Option<SocketAddr>,
    /// The admin listener (`[admin]`; off when the section is missing).
    pub admin: Option<AdminConfig>,
    /// Master-key generations after the first (`[[keyring]]`, SPEC §11).
    pub keyring: Vec<GenerationKey>,
}

impl ServeConfig {
    /// Every generation the server holds a key of, in order: generation 1
    /// (`master_key` or `[custody]`), then the `[[keyring]]` entries.
    pub fn generations(&self) -> Vec<GenerationSource<'_>> {
        let first = GenerationSource {
            generation: crate::generation::Generation::FIRST,
            source: &self.master_key,
            fingerprint: self.fingerprint,
        };
        std::iter::once(first)
            .chain(self.keyring.iter().map(|entry| GenerationSource {
                generation: entry.generation,
                source: &entry.source,
                fingerprint: entry.fingerprint,
            }))
            .collect()
    }

    /// Reads and checks `path`, with the process's `FUGO_` environment
    /// variables applied (see [`ServeConfig::load_all`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(ServeConfig::load_all(path)?.0)
    }

    /// Reads and checks `path` and its `[log]` section, with the
    /// process's `FUGO_` environment variables applied over the file
    /// (D252: `FUGO_LIMITS__MAX_CONNECTIONS=64`; settings of trust are
    /// file-only).
    pub fn load_all(path: &Path) -> Result<(Self, LogConfig), ConfigError> {
        let vars = super::overrides::from_process().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        ServeConfig::load_with(path, vars)
    }

    /// [`load_all`](Self::load_all) with the variables given.
    pub(crate) fn load_with(
        path: &Path,
        vars: Vec<(String, String)>,
    ) -> Result<(Self, LogConfig), ConfigError> {
        let shown = path.display().to_string();
        let text =
            files::read_text(path, files::MAX_CONFIG).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
        let parse_error = |error: toml::de::Error| ConfigError::Parse {
            path: shown.clone(),
            line: error.span().map_or(0, |span| {
                1 + text[..span.start.min(text.len())].matches('\n').count()
            }),
            message: error.message().trim().to_owned(),
        };
        let invalid = |message: String| ConfigError::Invalid {
            path: shown.clone(),
            message,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let applied = super::overrides::apply(&mut table, vars).map_err(invalid)?;
        let raw: RawConfig = if applied.is_empty() {
            // From the text, so an error names its line.
            toml::from_str(&text).map_err(parse_error)?
        } else {
            table.try_into().map_err(|error: toml::de::Error| {
                invalid(format!(
                    "{} (with the environment overrides {})",
                    error.message().trim(),
                    applied.join(", ")
                ))
            })?
        };
        let log = raw.log.check().map_err(invalid)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |relative: &Path| base.join(relative);
        let listen = raw.listen.parse().map_err(|_| {
            invalid(format!(
                "listen: '{}' is not an address like 127.0.0.1:7443",
                raw.listen
            ))
        })?;
        let fingerprint = Fingerprint::parse(&raw.master_key_fingerprint)
            .map_err(|error| invalid(format!("master_key_fingerprint: {error}")))?;
        let master_fingerprint = fingerprint;
        let metrics = match &raw.metrics {
            None => None,
            Some(section) => Some(section.listen.parse().map_err(|_| {
                invalid(format!(
                    "[metrics] listen: '{}' is not an address like {DEFAULT_METRICS_LISTEN}",
                    section.listen
                ))
            })?),
        };
        let data_dir = resolve(&raw.data_dir);
        let mut keyring: Vec<GenerationKey> = Vec::new();
        for entry in &raw.keyring {
            let generation = crate::generation::Generation::new(entry.generation)
                .ok()
                .filter(|g| g.get() >= 2)
                .ok_or_else(|| {
                    invalid(format!(
                        "[[keyring]] generation {}: generations in [[keyring]] are 2 to 65535 \
                         (generation 1 is master_key or [custody])",
                        entry.generation
                    ))
                })?;
            if keyring.iter().any(|k| k.generation == generation) {
                return Err(invalid(format!(
                    "[[keyring]] generation {generation} is listed twice"
                )));
            }
            let fingerprint = Fingerprint::parse(&entry.fingerprint).map_err(|error| {
                invalid(format!(
                    "[[keyring]] generation {generation} fingerprint: {error}"
                ))
            })?;
            // Routing a share by its key's fingerprint needs one generation
            // per key; the keyring refuses two anyway, but only once both
            // keys are there (D185).
            if let Some(other) = keyring
                .iter()
                .find(|k| k.fingerprint == fingerprint)
                .map(|k| k.generation.get())
                .or((fingerprint == master_fingerprint).then_some(1))
            {
                return Err(invalid(format!(
                    "[[keyring]] generation {generation} fingerprint {fingerprint} is generation \
                     {other}'s: each generation is a different key"
                )));
            }
            let source = match (&entry.key_file, &entry.custody) {
                (Some(path), None) => MasterKeySource::File(resolve(path)),
                (None, Some(custody)) if custody.threshold >= 2 => MasterKeySource::Shares {
                    threshold: custody.threshold,
                },
                (None, Some(_)) => {
                    return Err(invalid(format!(
                        "[[keyring]] generation {generation}: [keyring.custody] threshold must \
                         be at least 2: one custodian alone must not be able to unseal it"
                    )));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(format!(
                        "[[keyring]] generation {generation}: both key_file and \
                         [keyring.custody] are set: name exactly one source for its key"
                    )));
                }
                (None, None) => {
                    return Err(invalid(format!(
                        "[[keyring]] generation {generation}: no key source: name its key file \
                         (key_file = \"/etc/fugo/master-{generation}.key\", mode 0600) or hold \
                         it split among custodians with a [keyring.custody] sub-table \
                         (threshold = 3) after this entry"
                    )));
                }
            };
            keyring.push(GenerationKey {
                generation,
                source,
                fingerprint,
            });
        }
        let master_key = match (raw.master_key, raw.custody) {
            (Some(path), None) => MasterKeySource::File(resolve(&path)),
            (None, Some(custody)) if custody.threshold >= 2 => MasterKeySource::Shares {
                threshold: custody.threshold,
            },
            (None, Some(_)) => {
                return Err(invalid(
                    "[custody] threshold must be at least 2: one custodian alone must not \
                     be able to start the server"
                        .to_owned(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "both master_key and [custody] are set: remove master_key to start sealed \
                     and unseal with shares, or remove [custody] to read the key file"
                        .to_owned(),
                ));
            }
            (None, None) => return Err(invalid(NO_KEY.to_owned())),
        };
        let (client_ca, server_cert, server_key, crls) = match raw.tls {
            Some(RawTls { ca: None, .. }) => return Err(invalid(NO_CLIENT_CA.to_owned())),
            Some(RawTls {
                ca: Some(ca),
                cert,
                key,
                crl,
            }) => (
                resolve(&ca),
                resolve(&cert),
                resolve(&key),
                crl.into_vec().iter().map(|path| resolve(path)).collect(),
            ),
            None if !raw.dev_mode => return Err(invalid(NO_TLS.to_owned())),
            None => {
                let files = CertFiles::in_dir(&data_dir.join("certs"));
                (files.ca, files.server_cert, files.server_key, Vec::new())
            }
        };
        let admin = match raw.admin {
            None => None,
            Some(section) => {
                let at = section.listen.parse().map_err(|_| {
                    invalid(format!(
                        "[admin] listen: '{}' is not an address like 127.0.0.1:7444",
                        section.listen
                    ))
                })?;
                let (ca, identities) = match (section.ca, raw.dev_mode) {
                    (Some(ca), _) if !section.identities.is_empty() => {
                        (resolve(&ca), section.identities)
                    }
                    (None, true) => (
                        data_dir.join("certs").join("admin").join("ca.pem"),
                        if section.identities.is_empty() {
                            vec![DEV_ADMIN.to_owned()]
                        } else {
                            section.identities
                        },
                    ),
                    _ => return Err(invalid(ADMIN_NEEDS.to_owned())),
                };
                if ca == client_ca {
                    return Err(invalid(format!(
                        "[admin] ca is the agencies' CA ({}): admin certificates need a CA of \
                         their own, or any agency could be made an admin",
                        ca.display()
                    )));
                }
                Some(AdminConfig {
                    listen: at,
                    ca,
                    identities,
                    crls: section
                        .crl
                        .into_vec()
                        .iter()
                        .map(|path| resolve(path))
                        .collect(),
                })
            }
        };
        let config = ServeConfig {
            admin,
            listen,
            policy: resolve(&raw.policy),
            master_key,
            data_dir,
            fingerprint,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
            dev_mode: raw.dev_mode,
            client_ca,
            server_cert,
            server_key,
            crls,
            limits: super::limits::Limits::check(raw.limits).map_err(invalid)?,
            audit: raw.audit.check().map_err(invalid)?,
            metrics,
            keyring,
        };
        Ok((config, log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n\
        policy = \"policy.toml\"\nmaster_key = \"master.key\"\n\
        master_key_fingerprint = \"34391a36deac07213d13a6753154bf16\"\n";

    fn load(text: &str) -> Result<ServeConfig, ConfigError> {
        Ok(load_env(text, &[])?.0)
    }

    /// `text` loaded with exactly these environment variables.
    fn load_env(
        text: &str,
        vars: &[(&str, &str)],
    ) -> Result<(ServeConfig, LogConfig), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fugo.toml");
        std::fs::write(&path, text).unwrap();
        let vars = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        ServeConfig::load_with(&path, vars)
    }

    #[test]
    fn production_needs_the_tls_section() {
        let error = load(&format!("{BASE}dev_mode = false\n")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("no [tls] section"), "{message}");
        assert!(message.contains("[tls]\nca = "), "{message}");
        let error = load(BASE).unwrap_err();
        assert!(
            error.to_string().contains("no [tls] section"),
            "the default is production"
        );

        let config = load(&format!(
            "{BASE}[tls]\nca = \"/etc/fugo/ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\n"
        ))
        .unwrap();
        assert_eq!(config.client_ca, Path::new("/etc/fugo/ca.pem"));
        assert!(config.server_key.ends_with("s.key"));
    }

    #[test]
    fn crl_is_one_path_or_several() {
        let tls = format!("{BASE}[tls]\nca = \"ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\n");
        assert!(load(&tls).unwrap().crls.is_empty());
        let one = load(&format!("{tls}crl = \"/etc/fugo/agencies.crl\"\n")).unwrap();
        assert_eq!(one.crls, vec![PathBuf::from("/etc/fugo/agencies.crl")]);
        let two = load(&format!("{tls}crl = [\"a.crl\", \"b.crl.pem\"]\n")).unwrap();
        assert_eq!(two.crls.len(), 2);
        assert!(two.crls[1].ends_with("b.crl.pem"));
        let error = load(&format!("{tls}crl = 3\n")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("line 10") && message.contains("a CRL file or a list of them"),
            "{message}"
        );
    }

    #[test]
    fn production_needs_a_client_ca() {
        let error = load(&format!("{BASE}[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n")).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("[tls] has no ca: name the CA"),
            "{message}"
        );
    }

    /// The key is a file, or shares with a threshold of at least 2; not
    /// both, not neither (D110).
    #[test]
    fn later_key_generations_are_keyring_entries() {
        let entry = |generation: &str, fingerprint: &str| {
            format!(
                "[[keyring]]\ngeneration = {generation}\nkey_file = \"k{generation}.key\"\n\
                 fingerprint = \"{fingerprint}\"\n"
            )
        };
        let fp = "0123456789abcdef0123456789abcdef";
        let config = load(&format!(
            "{BASE}dev_mode = true\n{}{}",
            entry("2", fp),
            entry("3", "1123456789abcdef0123456789abcdef")
        ))
        .unwrap();
        assert_eq!(config.keyring.len(), 2);
        assert_eq!(config.keyring[1].generation.get(), 3);
        assert!(
            matches!(&config.keyring[0].source, MasterKeySource::File(path) if path.ends_with("k2.key"))
        );
        assert!(
            load(&format!("{BASE}dev_mode = true\n"))
                .unwrap()
                .keyring
                .is_empty()
        );
        let refused = |text: String| load(&text).unwrap_err().to_string();
        let message = refused(format!("{BASE}dev_mode = true\n{}", entry("1", fp)));
        assert!(
            message.contains("generation 1 is master_key or [custody]"),
            "{message}"
        );
        let message = refused(format!(
            "{BASE}dev_mode = true\n{}{}",
            entry("2", fp),
            entry("2", fp)
        ));
        assert!(
            message.contains("generation 2 is listed twice"),
            "{message}"
        );
        let message = refused(format!("{BASE}dev_mode = true\n{}", entry("2", "abc")));
        assert!(message.contains("generation 2 fingerprint"), "{message}");
    }

    /// A `[[keyring]]` generation names exactly one key source: a key file
    /// or a `[keyring.custody]` threshold of at least 2 (D181); the error
    /// names the entry.
    #[test]
    fn a_keyring_generation_names_one_key_source() {
        // Each generation its own key: 0N23456789abcdef… for generation N.
        let fp = "0223456789abcdef0123456789abcdef";
        let fp_of = |generation: u16| format!("0{generation}{}", &fp[2..]);
        let entry = |generation: u16, source: &str| {
            format!(
                "[[keyring]]\ngeneration = {generation}\nfingerprint = \"{}\"\n{source}",
                fp_of(generation)
            )
        };
        let custody = |threshold: u8| format!("[keyring.custody]\nthreshold = {threshold}\n");
        let config = load(&format!(
            "{BASE}dev_mode = true\n{}{}",
            entry(2, &custody(3)),
            entry(3, "key_file = \"k3.key\"\n")
        ))
        .unwrap();
        assert_eq!(
            config.keyring[0].source,
            MasterKeySource::Shares { threshold: 3 }
        );
        assert!(matches!(config.keyring[1].source, MasterKeySource::File(_)));
        let generations: Vec<u16> = config
            .generations()
            .iter()
            .map(|g| g.generation.get())
            .collect();
        assert_eq!(generations, vec![1, 2, 3]);
        let refused = |text: String| load(&text).unwrap_err().to_string();
        let message = refused(format!(
            "{BASE}dev_mode = true\n{}",
            entry(4, &format!("key_file = \"k4.key\"\n{}", custody(2)))
        ));
        assert!(
            message.contains("[[keyring]] generation 4: both key_file and [keyring.custody]"),
            "{message}"
        );
        let message = refused(format!("{BASE}dev_mode = true\n{}", entry(5, "")));
        assert!(
            message.contains("[[keyring]] generation 5: no key source")
                && message.contains("[keyring.custody]"),
            "{message}"
        );
        // One key, two generations: shares could not be routed.
        let message = refused(format!(
            "{BASE}dev_mode = true\n{}{}",
            entry(2, &custody(2)),
            entry(3, &custody(2)).replace(&fp_of(3), fp)
        ));
        assert!(
            message.contains(&format!(
                "[[keyring]] generation 3 fingerprint {fp} is generation 2's"
            )),
            "{message}"
        );
        let message = refused(
            format!("{BASE}dev_mode = true\n{}", entry(2, &custody(2)))
                .replace(fp, "34391a36deac07213d13a6753154bf16"),
        );
        assert!(message.contains("is generation 1's"), "{message}");
        let message = refused(format!("{BASE}dev_mode = true\n{}", entry(6, &custody(1))));
        assert!(
            message.contains(
                "[[keyring]] generation 6: [keyring.custody] threshold must be at least 2"
            ),
            "{message}"
        );
    }

    #[test]
    fn the_master_key_is_a_file_or_custody_shares() {
        let config = load(&format!("{BASE}dev_mode = true\n")).unwrap();
        assert!(
            matches!(config.master_key, MasterKeySource::File(path) if path.ends_with("master.key"))
        );
        let sealed = BASE.replace("master_key = \"master.key\"\n", "");
        let config = load(&format!(
            "{sealed}dev_mode = true\n[custody]\nthreshold = 3\n"
        ))
        .unwrap();
        assert_eq!(config.master_key, MasterKeySource::Shares { threshold: 3 });
        let message = load(&format!("{sealed}dev_mode = true\n"))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("no master key") && message.contains("[custody]"),
            "{message}"
        );
        let message = load(&format!(
            "{sealed}dev_mode = true\n[custody]\nthreshold = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("threshold must be at least 2"),
            "{message}"
        );
        let message = load(&format!(
            "{BASE}dev_mode = true\n[custody]\nthreshold = 2\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            message.contains("both master_key and [custody]"),
            "{message}"
        );
    }

    #[test]
    fn dev_mode_without_tls_uses_the_demo_certificates() {
        let config = load(&format!("{BASE}dev_mode = true\n")).unwrap();
        assert!(config.client_ca.ends_with("data/certs/ca.pem"));
        assert!(config.server_key.ends_with("data/certs/server.key"));
    }

    #[test]
    fn an_oversized_configuration_is_refused() {
        let big = format!("{BASE}dev_mode = true\n{}", "#\n".repeat(1 << 19));
        let message = load(&big).unwrap_err().to_string();
        assert!(
            message.ends_with("it is larger than 1048576 bytes, the limit for this file"),
            "{message}"
        );
    }

    /// Metrics are off without `[metrics]`, on loopback 9464 with an empty
    /// one (D127).
    #[test]
    fn metrics_are_off_unless_configured_and_loopback_by_default() {
        let dev = format!("{BASE}dev_mode = true\n");
        assert_eq!(load(&dev).unwrap().metrics, None);
        assert_eq!(
            load(&format!("{dev}[metrics]\n")).unwrap().metrics,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            load(&format!("{dev}[metrics]\nlisten = \"[::1]:9100\"\n"))
                .unwrap()
                .metrics,
            Some("[::1]:9100".parse().unwrap())
        );
        let error = load(&format!("{dev}[metrics]\nlisten = \"localhost\"\n")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("[metrics] listen: 'localhost' is not an address"),
            "{error}"
        );
        let error = load(&format!("{dev}[metrics]\npath = \"/x\"\n")).unwrap_err();
        assert!(
            error.to_string().contains("unknown field `path`"),
            "{error}"
        );
    }

    /// The audit trail has no off switch: an `[audit]` setting that tries
    /// one is an unknown field, refused with its line (D88).
    #[test]
    fn the_audit_trail_cannot_be_switched_off_by_configuration() {
        for attempt in ["enabled = false", "off = true", "durability = \"none\""] {
            let error = load(&format!("{BASE}dev_mode = true\n[audit]\n{attempt}\n")).unwrap_err();
            assert!(
                error.to_string().contains("unknown field"),
                "{attempt}: {error}"
            );
        }
        let config = load(&format!(
            "{BASE}dev_mode = true\n[audit]\nretention_days = 30\n"
        ))
        .unwrap();
        assert_eq!(config.audit.settings.retention.as_secs(), 30 * 86_400);
        let error = load(&format!(
            "{BASE}dev_mode = true\n[audit]\norigin = \"a b\"\n"
        ))
        .unwrap_err();
        assert!(error.to_string().contains("origin"), "{error}");
    }

    /// `[admin]` is off unless present; outside dev mode it needs its own
    /// CA and its admins; the agencies' CA is refused (D230).
    #[test]
    fn the_admin_section_needs_a_ca_of_its_own() {
        let tls = format!("{BASE}[tls]\nca = \"ca.pem\"\ncert = \"s.pem\"\nkey = \"s.key\"\n");
        assert_eq!(load(&tls).unwrap().admin, None);
        let config = load(&format!(
            "{tls}[admin]\nlisten = \"127.0.0.1:7444\"\nca = \"admin-ca.pem\"\nidentities = [\"ops\"]\n"
        ))
        .unwrap();
        let admin = config.admin.unwrap();
        assert!(admin.ca.ends_with("admin-ca.pem"));
        assert_eq!(admin.identities, vec!["ops".to_owned()]);
        assert!(admin.crls.is_empty());
        let with_crl = load(&format!(
            "{tls}[admin]\nlisten = \"127.0.0.1:7444\"\nca = \"admin-ca.pem\"\nidentities = [\"ops\"]\ncrl = \"admins.crl\"\n"
        ))
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(with_crl.crls.len(), 1);
        assert!(with_crl.crls[0].ends_with("admins.crl"));
        for section in [
            "[admin]\nlisten = \"127.0.0.1:7444\"\n",
            "[admin]\nlisten = \"127.0.0.1:7444\"\nca = \"admin-ca.pem\"\n",
        ] {
            let message = load(&format!("{tls}{section}")).unwrap_err().to_string();
            assert!(message.contains("[admin] needs its own CA"), "{message}");
        }
        let message = load(&format!(
            "{tls}[admin]\nlisten = \"127.0.0.1:7444\"\nca = \"ca.pem\"\nidentities = [\"ops\"]\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(message.contains("is the agencies' CA"), "{message}");
        let message = load(&format!("{tls}[admin]\nlisten = \"nowhere\"\n"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("[admin] listen: 'nowhere'"), "{message}");
        let message = load(&format!(
            "{tls}[admin]\nlisten = \"127.0.0.1:7444\"\nport = 1\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(message.contains("unknown field"), "{message}");
        // Dev mode: a demo admin CA in the data directory, admin "admin".
        let dev = load(&format!(
            "{BASE}dev_mode = true\n[admin]\nlisten = \"127.0.0.1:7444\"\n"
        ))
        .unwrap()
        .admin
        .unwrap();
        assert!(dev.ca.ends_with("data/certs/admin/ca.pem"), "{:?}", dev.ca);
        assert_eq!(dev.identities, vec![DEV_ADMIN.to_owned()]);
    }

    /// A section's header line: `[[keyring]]` for the array of tables,
    /// `[name]` for the others (`[keyring.custody]` for a sub-table).
    fn header_of(section: &str) -> String {
        if crate::service::overrides::TABLE_ARRAYS.contains(&section) {
            format!("[[{section}]]")
        } else {
            format!("[{section}]")
        }
    }

    /// The lines that open a section: a sub-table of an array of tables
    /// (`[keyring.custody]`) needs its entry's header first.
    fn opening_of(section: &str) -> String {
        match section.split_once('.') {
            Some((parent, _)) => format!("{}\n{}", header_of(parent), header_of(section)),
            None => header_of(section),
        }
    }

    /// The fields a section accepts, read from serde's answer to an
    /// unknown one ("unknown field `zz`, expected one of `a`, `b`").
    fn accepted_fields(section: Option<&str>) -> Vec<String> {
        let text = match section {
            None => "zz_not_a_setting = 1\n".to_owned(),
            Some(section) => format!("{}\nzz_not_a_setting = 1\n", opening_of(section)),
        };
        let message = load(&text).unwrap_err().to_string();
        assert!(
            message.contains("unknown field `zz_not_a_setting`"),
            "{section:?}: {message}"
        );
        let (_, expected) = message.split_once("expected").unwrap();
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    /// Every section refuses a key it does not know, naming it and its
    /// line; and the fields each section accepts are exactly the settings
    /// the override list knows (D252), each documented in
    /// fugo.example.toml.
    #[test]
    fn unknown_keys_are_errors_in_every_section_and_every_setting_is_documented() {
        use crate::service::overrides::SETTINGS;
        let mut sections: Vec<Option<&str>> = SETTINGS.iter().map(|s| s.section).collect();
        sections.dedup();
        let mut top: Vec<String> = Vec::new();
        for section in sections {
            let mut listed: Vec<String> = SETTINGS
                .iter()
                .filter(|s| s.section == section)
                .map(|s| s.key.to_owned())
                .collect();
            let mut accepted = accepted_fields(section);
            // Sections (and sub-tables) are fields of what holds them too.
            if section.is_none() {
                top = accepted.clone();
            }
            accepted.retain(|field| {
                let inner = match section {
                    None => field.clone(),
                    Some(section) => format!("{section}.{field}"),
                };
                !SETTINGS.iter().any(|s| s.section == Some(inner.as_str()))
            });
            listed.sort();
            accepted.sort();
            assert_eq!(accepted, listed, "the settings of {section:?}");
            if let Some(section) = section {
                let outer = section.split('.').next().unwrap_or(section);
                assert!(top.iter().any(|field| field == outer), "{section}");
                let opening = opening_of(section);
                let message = load(&format!("{BASE}{opening}\ntypo = 1\n"))
                    .unwrap_err()
                    .to_string();
                let line = format!("line {}", 6 + opening.lines().count());
                assert!(
                    message.contains(&line) && message.contains("unknown field `typo`"),
                    "{section}: {message}"
                );
            }
        }
        let example = include_str!("../../fugo.example.toml");
        for setting in SETTINGS {
            let header = setting.section.map(header_of);
            // The section's part of the example (commented out or not).
            let part = match &header {
                None => example.split("\n[").next().unwrap_or(example),
                Some(header) => {
                    let from = example
                        .find(&format!("\n{header}\n"))
                        .or_else(|| example.find(&format!("\n# {header}\n")))
                        .unwrap_or_else(|| panic!("{header} is not in fugo.example.toml"));
                    let rest = &example[from + header.len() + 2..];
                    let end = rest.find("\n[").unwrap_or(rest.len());
                    &rest[..end]
                }
            };
            assert!(
                part.lines().any(|line| {
                    let line = line.trim_start_matches(['#', ' ']);
                    line.starts_with(&format!("{} = ", setting.key))
                }),
                "{} is not documented in fugo.example.toml",
                setting.shown()
            );
        }
    }

    #[test]
    fn environment_variables_override_the_file() {
        let dev = format!("{BASE}dev_mode = true\n[limits]\nmax_connections = 10\n");
        let (config, log) = load_env(
            &dev,
            &[
                ("FUGO_LIMITS__MAX_CONNECTIONS", "77"),
                ("FUGO_METRICS__LISTEN", "127.0.0.1:9999"),
                ("FUGO_LOG__FORMAT", "json"),
                ("FUGO_SERVER", "https://127.0.0.1:1"),
            ],
        )
        .unwrap();
        assert_eq!(config.limits.max_connections, 77);
        assert_eq!(config.metrics, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(log.format, LogFormat::Json);
        // The same checks apply to a value from the environment.
        let error = load_env(&dev, &[("FUGO_AUDIT__COMMIT_TIMEOUT_MS", "5")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("commit_timeout_ms must lie between"),
            "{error}"
        );
        let error = load_env(&dev, &[("FUGO_DEV_MODE", "false")]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("dev_mode may not be set from the environment"),
            "{error}"
        );
        let error = load_env(&dev, &[("FUGO_LIMITS__MAX_CONNECTIONS", "x")]).unwrap_err();
        assert!(error.to_string().contains("whole number"), "{error}");
        // A value the target type cannot hold names the overrides.
        let error = load_env(
            &dev,
            &[("FUGO_LIMITS__MAX_CONCURRENT_STREAMS", "99999999999")],
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("with the environment overrides FUGO_LIMITS__MAX_CONCURRENT_STREAMS"),
            "{error}"
        );
    }

    #[test]
    fn the_log_format_is_text_or_json_and_the_level_a_filter() {
        let dev = format!("{BASE}dev_mode = true\n");
        assert_eq!(load_env(&dev, &[]).unwrap().1, LogConfig::default());
        let (_, log) = load_env(
            &format!("{dev}[log]\nformat = \"json\"\nlevel = \"warn\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!((log.format, log.level.as_str()), (LogFormat::Json, "warn"));
        let error = load(&format!("{dev}[log]\nformat = \"xml\"\n")).unwrap_err();
        assert!(
            error.to_string().contains("[log] format: 'xml' is not"),
            "{error}"
        );
        let error = load(&format!("{dev}[log]\nlevel = \"=[\"\n")).unwrap_err();
        assert!(error.to_string().contains("[log] level"), "{error}");
    }
}
