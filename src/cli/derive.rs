//! `fugo derive`: loads the key and runs [`fugo::bulk`] with local
//! derivation over the files.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::CliError;
use super::settings::DeriveSettings;
use fugo::audit::persons as load_persons;
use fugo::audit::{Recorder, RecorderError, STORE_FILE, Settings, default_origin};
use fugo::bulk::{LocalDerive, Recording, Summary};
use fugo::code::Coder;
use fugo::keyfile;
use fugo::keys::KeyHierarchy;
use fugo::link::Linker;
use fugo::persons::Persons;
use fugo_log::checkpoint::{LogSigner, LogVerifier};
use fugo_log::store::{RedbStore, Store, StoreError};

/// Runs `fugo derive`; returns the run's counts.
///
/// With the demo key nothing is recorded. With any other key the run is
/// recorded in the audit trail of `--data-dir` (required): the store is
/// opened (and locked) before the input is read, every chunk's records are
/// committed before its codes are written, and the output file is renamed
/// into place only after the last commit.
pub(crate) fn run(settings: DeriveSettings) -> Result<Summary, CliError> {
    let (keys, state) = keyfile::load_with_state(&settings.key, &mut io::stderr())?;
    let coder = Coder::new(&keys, settings.agency.clone(), settings.epoch);
    // Re-issued and superseded numbers resolve as on the server: from the
    // tables of the store in --data-dir (D193).
    let persons = Persons::new(&keys);
    if state.demo {
        // Development only (the help text says so); the demo key's warning
        // is already on stderr. A demo run records nothing, but a data
        // directory given is read for its re-issues.
        if let Some(data_dir) = settings.data_dir.as_deref() {
            load_persons_of(data_dir, &persons)?;
        }
        drop(keys);
        let work = LocalDerive::new(&coder, settings.threads).resolving(&persons);
        return super::files::run(&work, &settings.files);
    }
    let data_dir = settings.data_dir.as_deref().ok_or_else(|| {
        CliError::BadArgument(
            "a derivation with a real key is recorded in the audit trail: give --data-dir DIR \
             (the server's data directory, with the server stopped)"
                .to_owned(),
        )
    })?;
    let recorder = open_recorder(&keys, data_dir)?;
    let entries = recorder
        .read_blocking(|store| store.persons())
        .map_err(CliError::Recorder)?;
    load_persons::load_entries(entries, &persons)
        .map_err(|error| persons_error(data_dir, &error))?;
    let linker = Linker::new(&keys);
    drop(keys);
    let recording = Recording {
        recorder: &recorder,
        linker: &linker,
        caller: settings.agency.as_str().to_owned(),
        epoch: u32::from(settings.epoch.get()),
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

/// Loads the re-issue tables of the store in `data_dir` (if there is one)
/// without recording anything.
fn load_persons_of(data_dir: &Path, persons: &Persons) -> Result<(), CliError> {
    let path = data_dir.join(STORE_FILE);
    if !path.exists() {
        return Ok(());
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
    load_persons::load(&mut store, persons).map_err(|error| persons_error(data_dir, &error))?;
    Ok(())
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
/// new log gets the server's default name.
fn open_recorder(keys: &KeyHierarchy, data_dir: &Path) -> Result<Recorder, CliError> {
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
    let seed = keys.log_signing_seed();
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
            let signer = LogSigner::from_seed(&name, &seed)
                .map_err(|error| CliError::BadArgument(format!("log key: {error}")))?;
            if signer.verifier().to_string() != *text {
                return Err(CliError::BadArgument(format!(
                    "the audit store {} is the log of another master key; use that key or \
                     another data directory",
                    path.display()
                )));
            }
            signer
        }
        None => LogSigner::from_seed(&default_origin(&keys.fingerprint()), &seed)
            .map_err(|error| CliError::BadArgument(format!("log key: {error}")))?,
    };
    Recorder::open(data_dir, signer, Settings::default()).map_err(|error| match error {
        RecorderError::Locked(_) => locked(&path),
        error => CliError::Recorder(error),
    })
}

/// A rows/s spinner on stderr, only when a person is watching.
pub(crate) fn progress_bar() -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {human_pos} rows  {rate}  {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
            let _ = write!(out, "{:.2} M rows/s", state.per_sec() / 1e6);
        });
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Writes to stderr without tearing the progress bar.
pub(crate) struct AboveProgress {
    pub(crate) bar: Option<ProgressBar>,
}

impl Write for AboveProgress {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.bar {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
