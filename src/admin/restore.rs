//! `fugo admin restore`: puts a backup back as the data directory's audit
//! store, offline (the server stopped), and starts a new log origin.
//!
//! The restored store holds exactly the records of the backup's signed
//! checkpoint `N`. Before it is put in place, one `Restored` record is
//! appended as record `N` — "restored from checkpoint N of P; records after
//! N lost", naming the admin who restored — and a checkpoint of `N + 1` is
//! signed under a new origin (`<origin>/restored-<N>-<time>`, same key).
//! The server continues under that origin. Nothing is rolled back in
//! silence: a client holding a checkpoint of `P` beyond `N` finds `P` ends
//! at `N`, and `fugo audit verify --checkpoint` says the records after `N`
//! were lost (see `fugo_log::restore`).
//!
//! A store already in the data directory is never overwritten in place:
//! restoring over it needs `--force` and keeps it beside, renamed
//! `audit.redb.before-restore-<time>`; a store a running server holds is
//! refused.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fugo_log::checkpoint::{Checkpoint, LogSigner};
use fugo_log::record::{Group, Header, Operation, Outcome};
use fugo_log::restore::{RestoreNote, base_origin, restored_origin};
use fugo_log::store::{Append, RedbStore, Store, StoreError};
use thiserror::Error;

use super::backup::{self, BackupError, Opener};
use crate::audit::STORE_FILE;
use crate::keys::KeyHierarchy;

/// Why a restore was refused or failed; nothing in the data directory
/// changed unless the message says so.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The backup file is unusable.
    #[error("backup {path}: {source}")]
    Backup {
        /// The backup file.
        path: String,
        /// Why.
        #[source]
        source: BackupError,
    },
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A running server holds the store.
    #[error("the audit store {0} is in use (a running server?): stop the server, then restore")]
    Live(String),
    /// A store is there and `--force` was not given.
    #[error(
        "{path} already holds an audit store of {size} records; restoring replaces it (records \
         after the backup's checkpoint {checkpoint} are then no longer the log). Give --force to \
         restore anyway: the store is kept beside, renamed"
    )]
    Exists {
        /// The store file.
        path: String,
        /// Its records.
        size: u64,
        /// The backup's checkpoint.
        checkpoint: u64,
    },
    /// The backup's store is not the log its header says.
    #[error("the backup's audit store does not check out: {0}")]
    Inconsistent(String),
    /// The configured origin is not the backup's.
    #[error(
        "the backup is of the audit log {backup}, but this configuration names the log \
         {configured}: restore with the configuration the backup was made under"
    )]
    Origin {
        /// The backup's (base) origin.
        backup: String,
        /// The configured one.
        configured: String,
    },
    /// The restored store could not be opened or written.
    #[error("the restored audit store: {0}")]
    Store(#[from] StoreError),
    /// A log key could not be made.
    #[error("log signing key: {0}")]
    Key(String),
}

/// What to restore and where.
pub struct RestoreRequest<'a> {
    /// The master key the backup was made under.
    pub keys: &'a KeyHierarchy,
    /// The configured log origin (`[audit] origin`, or the default).
    pub origin: &'a str,
    /// The server's data directory.
    pub data_dir: &'a Path,
    /// The backup file.
    pub backup: &'a Path,
    /// Who restores (recorded in the Restored record).
    pub admin: &'a str,
    /// Replace a store that is there (kept beside, renamed).
    pub force: bool,
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The backup's checkpoint: records `0..checkpoint` were restored.
    pub checkpoint: u64,
    /// The origin that signed it.
    pub previous_origin: String,
    /// The log key (verifier text) from now on: publish it.
    pub verifier: String,
    /// Where the store that was there was kept, if one was.
    pub kept: Option<PathBuf>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RestoreError + 'a {
    move |source| RestoreError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// Restores as the module doc says.
pub fn restore(request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
    let backup_error = |source| RestoreError::Backup {
        path: request.backup.display().to_string(),
        source,
    };
    let file = File::open(request.backup).map_err(io("cannot open the backup", request.backup))?;
    let mut reader = BufReader::new(file);
    let (header, header_bytes) = backup::read_header(&mut reader).map_err(backup_error)?;
    let mut opener = Opener::start(request.keys, &header, &header_bytes).map_err(backup_error)?;
    if base_origin(&header.origin) != base_origin(request.origin) {
        return Err(RestoreError::Origin {
            backup: base_origin(&header.origin).to_owned(),
            configured: base_origin(request.origin).to_owned(),
        });
    }

    // The store in place: refused while a server holds it, kept unless --force.
    let target = request.data_dir.join(STORE_FILE);
    let existing = target.exists();
    if existing {
        match RedbStore::open(&target) {
            Err(StoreError::Locked { .. }) => {
                return Err(RestoreError::Live(target.display().to_string()));
            }
            Ok(store) if !request.force => {
                return Err(RestoreError::Exists {
                    path: target.display().to_string(),
                    size: store.size(),
                    checkpoint: header.checkpoint,
                });
            }
            // An unreadable store is replaced only with --force too.
            Err(error) if !request.force => return Err(error.into()),
            _ => {}
        }
    }

    // Decrypt beside it (a data directory not there yet is made, 0700,
    // as the server makes it).
    let mut folder = fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        folder.mode(0o700);
    }
    folder
        .create(request.data_dir)
        .map_err(io("cannot create the data directory", request.data_dir))?;
    let restoring = request.data_dir.join(format!("{STORE_FILE}.restoring"));
    let _ = fs::remove_file(&restoring);
    let result = decrypt_and_seal(request, &header, &mut opener, &mut reader, &restoring);
    let restored = match result {
        Ok(restored) => restored,
        Err(error) => {
            let _ = fs::remove_file(&restoring);
            return Err(error);
        }
    };

    // Swap: the old store is kept beside, never deleted.
    let kept = if existing {
        let aside = request
            .data_dir
            .join(format!("{STORE_FILE}.before-restore-{}", now_ms() / 1000));
        fs::rename(&target, &aside).map_err(io("cannot move aside", &target))?;
        Some(aside)
    } else {
        None
    };
    fs::rename(&restoring, &target).map_err(io("cannot put in place", &target))?;
    if let Ok(dir) = File::open(request.data_dir) {
        let _ = dir.sync_all();
    }
    Ok(Restored { kept, ..restored })
}

/// Decrypts the backup into `path`, checks it is the log its header says,
/// appends the Restored record and signs it under the new origin.
fn decrypt_and_seal(
    request: &RestoreRequest<'_>,
    header: &backup::BackupHeader,
    opener: &mut Opener,
    reader: &mut impl std::io::Read,
    path: &Path,
) -> Result<Restored, RestoreError> {
    let backup_error = |source| RestoreError::Backup {
        path: request.backup.display().to_string(),
        source,
    };
    {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut out = options.open(path).map_err(io("cannot create", path))?;
        let mut written = 0u64;
        while let Some(chunk) = opener.next_chunk(reader).map_err(backup_error)? {
            out.write_all(&chunk).map_err(io("cannot write", path))?;
            written += chunk.len() as u64;
        }
        if written != header.store_bytes {
            return Err(RestoreError::Inconsistent(format!(
                "it holds {written} bytes, its header says {}",
                header.store_bytes
            )));
        }
        out.sync_all().map_err(io("cannot write", path))?;
    }

    let seed = request.keys.log_signing_seed();
    let previous = LogSigner::from_seed(&header.origin, &seed)
        .map_err(|error| RestoreError::Key(error.to_string()))?;
    let mut store = RedbStore::open_checked(path)?;
    let size = store.size();
    match store.latest_checkpoint()? {
        Some((signed, note)) if signed == size && size == header.checkpoint => {
            if note != header.checkpoint_note {
                return Err(RestoreError::Inconsistent(
                    "its newest checkpoint is not the one its header names".into(),
                ));
            }
        }
        _ => {
            return Err(RestoreError::Inconsistent(format!(
                "it holds {size} records, not exactly the {} of its signed checkpoint",
                header.checkpoint
            )));
        }
    }
    fugo_log::verify::verify(&mut store, &previous.verifier(), &[])
        .map_err(|problem| RestoreError::Inconsistent(problem.to_string()))?;

    // Record N: the restore, then the new origin's first checkpoint.
    let time_ms = now_ms();
    let note = RestoreNote {
        checkpoint: size,
        previous_origin: header.origin.clone(),
    };
    let group = Group::single(
        Header {
            time_ms,
            operation: Operation::Restored,
            caller: format!("admin:{}", request.admin),
            counterpart: String::new(),
            affair: String::new(),
            items: Vec::new(),
            non_disclosure_until: 0,
            policy_version: [0; 32],
            batch_id: String::new(),
            note: note.to_string(),
            count: 0,
            agent: String::new(),
        },
        Outcome::Done,
        None,
    );
    // now_ms 0: no tally is rolled into records here, so the Restored
    // record is record N exactly (tallies roll on the server's next commit).
    let appended = store.append(Append {
        groups: vec![group],
        now_ms: 0,
        ..Append::default()
    })?;
    if appended.groups.first().map(|group| group.first_seq) != Some(size) {
        return Err(RestoreError::Inconsistent(
            "the Restored record did not land right after the checkpoint".into(),
        ));
    }
    let origin = restored_origin(&header.origin, size, time_ms / 1000);
    let signer = LogSigner::from_seed(&origin, &seed)
        .map_err(|error| RestoreError::Key(error.to_string()))?;
    let checkpoint = Checkpoint {
        origin,
        size: store.size(),
        root: store.root(),
    };
    let signed = signer
        .sign(&checkpoint)
        .map_err(|error| RestoreError::Key(error.to_string()))?;
    store.add_checkpoint(checkpoint.size, &signed)?;
    let verifier = signer.verifier().to_string();
    store.set_verifier(&verifier)?;
    Ok(Restored {
        checkpoint: size,
        previous_origin: header.origin.clone(),
        verifier,
        kept: None,
    })
}
