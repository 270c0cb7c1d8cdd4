//! `fugo audit pubkey | verify | export`: the audit store of a data
//! directory, read offline. redb lets one process open the store, so these
//! refuse while a server (or a recording `fugo derive`) holds it.

use std::fs::{self, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use fugo::audit::STORE_FILE;
use fugo::audit::export::{self, Window};
use fugo_log::checkpoint::LogVerifier;
use fugo_log::store::{RedbStore, Store, StoreError};
use fugo_log::verify::{self, Anchor};

use super::args::AuditCommand;
use super::{CliError, print_line};

/// A signed note or its base64 is far smaller than this.
const MAX_CHECKPOINT_FILE: u64 = 64 << 10;

/// What to do when the store is held by another process.
const PUBKEY_LOCKED: &str =
    "stop the server or ask it: the Audit service's GetCheckpoint gives the key";
const READ_LOCKED: &str = "stop the server first: redb lets one process open the store";

/// Runs an audit command; returns the exit status.
pub(crate) fn run(command: AuditCommand) -> Result<u8, CliError> {
    match command {
        AuditCommand::Pubkey { data_dir } => pubkey(&data_dir),
        AuditCommand::Verify {
            data_dir,
            checkpoints,
            pubkey,
        } => verify(&data_dir, &checkpoints, pubkey.as_deref()),
        AuditCommand::Export {
            data_dir,
            since,
            until,
            out,
        } => export(
            &data_dir,
            Window {
                since_ms: since,
                until_ms: until,
            },
            out.as_deref(),
        ),
        AuditCommand::Policy { data_dir, version } => policy(&data_dir, &version),
    }
}

/// Opens the existing store of `data_dir`, every page checked.
fn open(data_dir: &Path, locked_hint: &'static str) -> Result<RedbStore, CliError> {
    let path = data_dir.join(STORE_FILE);
    RedbStore::open_checked(&path).map_err(|source| match source {
        StoreError::Locked { .. } => CliError::AuditLocked {
            path: path.display().to_string(),
            hint: locked_hint,
        },
        StoreError::Missing { .. } => CliError::BadArgument(format!(
            "there is no audit store in {} (no {STORE_FILE}): give the server's data_dir",
            data_dir.display()
        )),
        source => CliError::AuditStore {
            path: path.display().to_string(),
            source,
        },
    })
}

fn store_error(data_dir: &Path) -> impl Fn(StoreError) -> CliError + '_ {
    move |source| CliError::AuditStore {
        path: data_dir.join(STORE_FILE).display().to_string(),
        source,
    }
}

/// The verifier key text kept in the store.
fn stored_verifier(store: &mut RedbStore, data_dir: &Path) -> Result<String, CliError> {
    store
        .verifier()
        .map_err(store_error(data_dir))?
        .ok_or_else(|| {
            CliError::BadArgument(format!(
                "the audit store in {} holds no log key (no server has run on it)",
                data_dir.display()
            ))
        })
}

fn pubkey(data_dir: &Path) -> Result<u8, CliError> {
    let mut store = open(data_dir, PUBKEY_LOCKED)?;
    let key = stored_verifier(&mut store, data_dir)?;
    print_line(&key)?;
    Ok(0)
}

/// Prints a stored policy text; exit 1 if the store has no policy of that
/// version.
fn policy(data_dir: &Path, version: &str) -> Result<u8, CliError> {
    let mut digest = [0u8; 32];
    if version.len() != 64 || fugo_core::hex::decode_into(version.as_bytes(), &mut digest).is_err()
    {
        return Err(CliError::BadArgument(format!(
            "'{version}' is not a policy version (64 hex digits, as responses name it)"
        )));
    }
    let mut store = open(data_dir, READ_LOCKED)?;
    match store.policy(&digest).map_err(store_error(data_dir))? {
        Some(text) => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(CliError::Stdout)?;
            Ok(0)
        }
        None => {
            let _ = writeln!(
                io::stderr(),
                "fugo: no policy of version {version} was ever loaded by this server"
            );
            Ok(1)
        }
    }
}

fn verify(data_dir: &Path, files: &[PathBuf], pubkey: Option<&str>) -> Result<u8, CliError> {
    // Read the anchors first: a missing file is the caller's mistake, told
    // before the whole store is read.
    let anchors = files
        .iter()
        .map(|path| read_anchor(path))
        .collect::<Result<Vec<_>, _>>()?;
    let given = match pubkey {
        Some(text) => Some(LogVerifier::parse(text.trim()).map_err(|error| {
            CliError::BadArgument(format!("--pubkey is not a verifier key: {error}"))
        })?),
        None => None,
    };
    let mut store = open(data_dir, READ_LOCKED)?;
    let verifier = match given {
        Some(verifier) => verifier,
        None => {
            let text = stored_verifier(&mut store, data_dir)?;
            let verifier = LogVerifier::parse(&text).map_err(|error| CliError::VerifyFailed {
                problem: format!("store: the log key kept in it is not a verifier key: {error}"),
            })?;
            let _ = writeln!(
                io::stderr(),
                "fugo: warning: no --pubkey: signatures are checked under the key kept in the \
                 store itself ({verifier}); a store rewritten by someone holding the signing key \
                 passes that. Give the published key with --pubkey, and the checkpoints clients \
                 kept with --checkpoint."
            );
            verifier
        }
    };
    let report = verify::verify(&mut store, &verifier, &anchors).map_err(|problem| {
        CliError::VerifyFailed {
            problem: problem.to_string(),
        }
    })?;
    if report.signed_size < report.size {
        let _ = writeln!(
            io::stderr(),
            "fugo: note: records {}..{} are not yet covered by a signed checkpoint \
             (the server signs within seconds; it was stopped before it could)",
            report.signed_size,
            report.size
        );
    }
    if anchors.is_empty() {
        let _ = writeln!(
            io::stderr(),
            "fugo: note: no --checkpoint given: a store rebuilt and signed again with the same \
             key would also pass"
        );
    }
    let root = base64::engine::general_purpose::STANDARD.encode(report.root);
    print_line(&format!(
        "audit store {} intact: {} records ({} purged), root {root}; {} checkpoints and {} \
         outside checkpoints verified under {}",
        data_dir.join(STORE_FILE).display(),
        report.size,
        report.purged,
        report.checkpoints,
        report.anchors,
        verifier.name()
    ))?;
    Ok(0)
}

/// A checkpoint file: the signed note, its base64 (as a response's
/// `x-fugo-checkpoint` metadata carries it), or the file `fugo client`
/// keeps (`OUTPUT.checkpoint`).
fn read_anchor(path: &Path) -> Result<Anchor, CliError> {
    let shown = path.display().to_string();
    let contents =
        fugo::files::read(path, MAX_CHECKPOINT_FILE).map_err(|source| CliError::ReadFile {
            path: shown.clone(),
            source,
        })?;
    let not_a_note = || {
        CliError::BadArgument(format!(
            "{shown} is neither a signed checkpoint note nor its base64"
        ))
    };
    let text = std::str::from_utf8(&contents.bytes).map_err(|_| not_a_note())?;
    // A note has several lines; its base64 is one.
    let note = if let Some(note) = fugo::witness::kept_note(text) {
        note.to_owned()
    } else if text.trim().contains('\n') {
        text.to_owned()
    } else {
        decode_note(text.trim()).ok_or_else(not_a_note)?
    };
    Ok(Anchor { name: shown, note })
}

fn decode_note(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn export(data_dir: &Path, window: Window, out: Option<&Path>) -> Result<u8, CliError> {
    let mut store = open(data_dir, READ_LOCKED)?;
    let done = match out {
        None => {
            let mut stdout = io::stdout().lock();
            export::export(&mut store, window, &mut stdout)
        }
        Some(path) => export_to_file(&mut store, window, path),
    }
    .map_err(|error| match error {
        export::ExportError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe && out.is_none() => {
            CliError::ClosedPipe
        }
        error => CliError::Export(error),
    })?;
    let _ = writeln!(
        io::stderr(),
        "fugo: exported {} records, {} purged leaves and {} checkpoints",
        done.records,
        done.purged,
        done.checkpoints
    );
    Ok(0)
}

/// Writes beside `path` (mode 0600) and renames into place when complete.
fn export_to_file(
    store: &mut RedbStore,
    window: Window,
    path: &Path,
) -> Result<export::Exported, export::ExportError> {
    let name = path
        .file_name()
        .ok_or_else(|| export::ExportError::Write(io::Error::other("not a file name")))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".fugo-partial-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(&temp).map_err(export::ExportError::Write)?;
    let mut writer = BufWriter::new(file);
    let written = export::export(store, window, &mut writer).and_then(|done| {
        let file = writer
            .into_inner()
            .map_err(|e| export::ExportError::Write(e.into_error()))?;
        file.sync_all().map_err(export::ExportError::Write)?;
        fs::rename(&temp, path).map_err(export::ExportError::Write)?;
        Ok(done)
    });
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_file_may_be_the_note_or_its_base64() {
        let dir = tempfile::tempdir().unwrap();
        let note = "origin\n1\nAAAA\n\n— origin abcd\n";
        let plain = dir.path().join("plain");
        fs::write(&plain, note).unwrap();
        let encoded = dir.path().join("encoded");
        let text = base64::engine::general_purpose::STANDARD.encode(note);
        fs::write(&encoded, format!("{text}\n")).unwrap();
        assert_eq!(read_anchor(&plain).unwrap().note, note);
        assert_eq!(read_anchor(&encoded).unwrap().note, note);
        fs::write(&encoded, "not base64 at all!").unwrap();
        assert!(read_anchor(&encoded).is_err());
        let kept = dir.path().join("out.csv.checkpoint");
        fs::write(
            &kept,
            format!("{}\nname+01234567+AQ==\n{note}", fugo::witness::MAGIC),
        )
        .unwrap();
        assert_eq!(read_anchor(&kept).unwrap().note, note);
    }
}
