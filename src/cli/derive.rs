//! `fugo derive`: loads the key and runs [`fugo::bulk`] with local
//! derivation over the files.

use std::io;
use std::path::{Path, PathBuf};

use super::CliError;
use super::settings::{DeriveKeys, DeriveSettings};
use fugo::audit::persons as load_persons;
use fugo::audit::{Recorder, RecorderError, STORE_FILE, Settings};
use fugo::bulk::{LocalDerive, Recording, Summary};
use fugo::code::Coder;
use fugo::generation::Generation;
use fugo::keyfile;
use fugo::keyring::Keyring;
use fugo::keys::KeyHierarchy;
use fugo::link::Linker;
use fugo::persons::Persons;
use fugo::policy::Policy;
use fugo::service::{generation_key_mismatches, offline, offline_epoch};
use fugo_log::checkpoint::LogVerifier;
use fugo_log::store::{Marks, RedbStore, Store, StoreError};

/// Runs `fugo derive`; returns the run's counts.
///
/// With the demo key nothing is recorded. With any other key the run is
/// recorded in the audit trail of the data directory (`--data-dir`,
/// required, or the configuration's): the store is opened (and locked)
/// before the input is read, every chunk's records are committed before
/// its codes are written, and the output file is renamed into place only
/// after the last commit.
///
/// The epoch's key generation is never guessed (D200): from the policy
/// with `--config`, else from the store's marks (an epoch no policy in
/// force has bound is generation 1's, the key file's).
pub(crate) fn run(settings: DeriveSettings) -> Result<Summary, CliError> {
    let keys = Keys::load(&settings)?;
    // Re-issued and superseded numbers resolve as on the server: from the
    // tables of the store in the data directory (D193). Resolution is by
    // number, so generation 1's tables serve every generation (D190).
    let audit = keys.keyring.audit();
    let persons = Persons::new(audit);
    if keys.demo {
        // Development only (the help text says so); the demo key's
        // warning is already on stderr. A demo run records nothing, but a
        // data directory given is read for its re-issues and its marks.
        let marks = match keys.data_dir.as_deref() {
            Some(data_dir) => read_store_of(data_dir, &keys.keyring, &persons)?,
            None => Marks::default(),
        };
        let coder = keys.coder(&settings, &marks)?;
        let work = LocalDerive::new(&coder, settings.threads).resolving(&persons);
        return super::files::run(&work, &settings.files);
    }
    let data_dir = keys.data_dir.as_deref().ok_or_else(|| {
        CliError::BadArgument(
            "a derivation with a real key is recorded in the audit trail: give --data-dir DIR \
             (the server's data directory, with the server stopped)"
                .to_owned(),
        )
    })?;
    let recorder = open_recorder(audit, data_dir, keys.origin.as_deref())?;
    let (entries, marks) = recorder
        .read_blocking(|store| Ok((store.persons()?, store.marks()?)))
        .map_err(CliError::Recorder)?;
    check_store_keys(data_dir, &keys.keyring, &marks)?;
    load_persons::load_entries(entries, &persons)
        .map_err(|error| persons_error(data_dir, &error))?;
    let coder = keys.coder(&settings, &marks)?;
    let linker = Linker::new(audit);
    let recording = Recording {
        recorder: &recorder,
        linker: &linker,
        caller: settings.agency.as_str().to_owned(),
        epoch: u32::from(coder.epoch().get()),
        batch_id: format!("fugo-derive/{}/{}", now_ms(), std::process::id()),
    };
    let summary = super::files::run(
        &LocalDerive::recorded(&coder, settings.threads, recording).resolving(&persons),
        &settings.files,
    )?;
    // Dropping the recorder signs a checkpoint over the run's records.
    drop(recorder);
    Ok(summary)
}

/// The keys of one run and where they came from.
struct Keys {
    keyring: Keyring,
    /// Generations the configuration leaves to custodians.
    custodied: Vec<Generation>,
    /// The configured policy (`--config` only).
    policy: Option<Policy>,
    data_dir: Option<PathBuf>,
    origin: Option<String>,
    /// The public demo key (`--master-key` only): nothing is recorded.
    demo: bool,
}

impl Keys {
    fn load(settings: &DeriveSettings) -> Result<Keys, CliError> {
        match &settings.keys {
            DeriveKeys::File(key) => {
                let (keys, state) = keyfile::load_with_state(key, &mut io::stderr())?;
                Ok(Keys {
                    keyring: Keyring::single(keys),
                    custodied: Vec::new(),
                    policy: None,
                    data_dir: settings.data_dir.clone(),
                    origin: None,
                    demo: state.demo,
                })
            }
            DeriveKeys::Config(path) => {
                let setup = offline::load(path, &mut io::stderr())?;
                Ok(Keys {
                    keyring: setup.keyring,
                    custodied: setup.custodied,
                    policy: Some(setup.policy),
                    data_dir: Some(setup.data_dir),
                    origin: setup.origin,
                    demo: false,
                })
            }
        }
    }

    /// The coder of the run's epoch, in the generation the policy or the
    /// store's marks bind it to.
    fn coder(&self, settings: &DeriveSettings, marks: &Marks) -> Result<Coder, CliError> {
        let agency = &settings.agency;
        let (epoch, generation) =
            offline_epoch(self.policy.as_ref(), marks, agency, settings.epoch)
                .map_err(CliError::BadArgument)?;
        let keys = self.keyring.get(generation).map_err(|_| {
            let advice = if self.custodied.contains(&generation) {
                "its key is held by custodians: derive through the server"
            } else if self.policy.is_none() {
                "--master-key is generation 1's key: give --config fugo.toml (its [[keyring]] \
                 holds the others), or derive through the server"
            } else {
                "the configuration has no key for it"
            };
            CliError::BadArgument(format!(
                "agency {agency}: epoch {epoch} is bound to key generation {generation}; {advice}"
            ))
        })?;
        Ok(Coder::new(keys, agency.clone(), epoch))
    }
}

/// Loads the re-issue tables of the store in `data_dir` (if there is one)
/// and returns its marks, without recording anything.
fn read_store_of(data_dir: &Path, keyring: &Keyring, persons: &Persons) -> Result<Marks, CliError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(Marks::default());
    }
    let mut store = match RedbStore::open(&path) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) => {
            return Err(CliError::Recorder(RecorderError::Locked(
                path.display().to_string(),
            )));
        }
        Err(source) => {
            return Err(CliError::AuditStore {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let marks = store.marks().map_err(|source| CliError::AuditStore {
        path: path.display().to_string(),
        source,
    })?;
    // A store of another master key: said so before its tables fail to
    // open under this one.
    check_store_keys(data_dir, keyring, &marks)?;
    load_persons::load(&mut store, persons).map_err(|error| persons_error(data_dir, &error))?;
    Ok(marks)
}

/// Refuses keys other than the ones the store in `data_dir` keeps for
/// their generations (as the server does at start, D200): generation 1's
/// names whose data directory it is; a later one's would make other codes.
fn check_store_keys(data_dir: &Path, keyring: &Keyring, marks: &Marks) -> Result<(), CliError> {
    let Some((generation, kept, key)) =
        generation_key_mismatches(keyring, marks).into_iter().next()
    else {
        return Ok(());
    };
    let dir = data_dir.display();
    Err(CliError::BadArgument(if generation == Generation::FIRST {
        format!(
            "the data directory {dir} belongs to the master key with fingerprint {kept} \
             (generation 1), not to this key ({key}); use that key or another data directory"
        )
    } else {
        format!(
            "the data directory {dir} keeps key generation {generation} as the key with \
             fingerprint {kept}, not the configured one ({key}): its codes would differ; \
             configure the original key"
        )
    }))
}

fn persons_error(data_dir: &Path, error: &load_persons::LoadError) -> CliError {
    CliError::BadArgument(format!(
        "the data directory {}: {error}",
        data_dir.display()
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Opens the audit trail of `data_dir` as the server would: the log keeps
/// its name (origin) if it has one, and must be this master key's log; a
/// new log gets `origin` (the configured one) or the server's default name.
fn open_recorder(
    keys: &KeyHierarchy,
    data_dir: &Path,
    origin: Option<&str>,
) -> Result<Recorder, CliError> {
    let locked =
        |path: &Path| CliError::Recorder(RecorderError::Locked(path.display().to_string()));
    // Private, as the server makes it (mode 0700 when new).
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(data_dir)
        .map_err(|source| CliError::CreateOutput {
            path: data_dir.display().to_string(),
            source,
        })?;
    let path = data_dir.join(STORE_FILE);
    let stored = match RedbStore::open(&path) {
        Ok(mut store) => store.verifier().map_err(|source| CliError::AuditStore {
            path: path.display().to_string(),
            source,
        })?,
        Err(StoreError::Locked { .. }) => return Err(locked(&path)),
        Err(source) => {
            return Err(CliError::AuditStore {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let log_key = |name: Option<&str>| {
        fugo::audit::log_signer(name, keys)
            .map_err(|error| CliError::BadArgument(format!("log key: {error}")))
    };
    let signer = match &stored {
        Some(text) => {
            let name = LogVerifier::parse(text)
                .map(|verifier| verifier.name().to_owned())
                .map_err(|error| {
                    CliError::BadArgument(format!(
                        "the audit store {} keeps a log key that does not parse: {error}",
                        path.display()
                    ))
                })?;
            let signer = log_key(Some(&name))?;
            if signer.verifier().to_string() != *text {
                return Err(CliError::BadArgument(format!(
                    "the audit store {} is the log of another master key; use that key or \
                     another data directory",
                    path.display()
                )));
            }
            signer
        }
        None => log_key(origin)?,
    };
    Recorder::open(data_dir, signer, Settings::default()).map_err(|error| match error {
        RecorderError::Locked(_) => locked(&path),
        error => CliError::Recorder(error),
    })
}
