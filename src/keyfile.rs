//! Master key files on disk: generating, loading, checking permissions and
//! fingerprints. The parsing itself is [`crate::keys`]; this is the I/O,
//! shared by the CLI and the server.

use std::io::{self, Write};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use thiserror::Error;

use crate::files;
use crate::keys::{Fingerprint, KEY_LEN, KeyFileError, KeyHierarchy, MasterKey};

/// Where a master key comes from and what it must be.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The key file.
    pub path: std::path::PathBuf,
    /// The fingerprint it must have, if pinned.
    pub expect: Option<Fingerprint>,
}

/// Why a key file could not be loaded or written. Never holds key material.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum KeyLoadError {
    /// The key file could not be read (missing, not a regular file, too
    /// large to be a key).
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The key file.
        path: String,
        /// Why.
        #[source]
        source: files::ReadError,
    },
    /// The key file's contents are not a key.
    #[error("key file {path}: {source}")]
    Format {
        /// The key file.
        path: String,
        /// What is wrong.
        #[source]
        source: KeyFileError,
    },
    /// The key is not the one the caller expected.
    #[error("key file {path} has fingerprint {actual}, expected {expected}; refusing to use it")]
    FingerprintMismatch {
        /// The key file.
        path: String,
        /// The fingerprint asked for.
        expected: String,
        /// The key's fingerprint.
        actual: String,
    },
    /// `fugo keygen` would overwrite a file.
    #[error("{path} already exists; refusing to overwrite a key file")]
    Exists {
        /// The existing file.
        path: String,
    },
    /// Writing a new key failed.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The key file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// What loading found besides the key itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFileState {
    /// It is the public demo key.
    pub demo: bool,
    /// Group or others may read the file.
    pub readable_by_others: bool,
}

/// Loads, checks and expands a master key. Warns on `warnings` when it is
/// the public demo key, or when group or others may read the file.
pub fn load(source: &KeySource, warnings: &mut dyn Write) -> Result<KeyHierarchy, KeyLoadError> {
    load_with_state(source, warnings).map(|(keys, _)| keys)
}

/// Like [`load`], and also says whether the key is the demo key and whether
/// its file is readable by others (the server refuses both outside dev mode).
pub fn load_with_state(
    source: &KeySource,
    warnings: &mut dyn Write,
) -> Result<(KeyHierarchy, KeyFileState), KeyLoadError> {
    load_checked(source, warnings).map(|(_, keys, state)| (keys, state))
}

/// Like [`load_with_state`], for master-key generation `generation` of the
/// keyring (the hierarchy names its generation; the labels are the same).
pub fn load_generation(
    source: &KeySource,
    generation: crate::generation::Generation,
    warnings: &mut dyn Write,
) -> Result<(KeyHierarchy, KeyFileState), KeyLoadError> {
    load_checked(source, warnings)
        .map(|(master, _, state)| (KeyHierarchy::of_generation(&master, generation), state))
}

/// Like [`load`], also giving the master key itself (`fugo keys split`
/// splits it). It is wiped on drop.
pub fn load_master(
    source: &KeySource,
    warnings: &mut dyn Write,
) -> Result<(MasterKey, KeyHierarchy), KeyLoadError> {
    load_checked(source, warnings).map(|(master, keys, _)| (master, keys))
}

fn load_checked(
    source: &KeySource,
    warnings: &mut dyn Write,
) -> Result<(MasterKey, KeyHierarchy, KeyFileState), KeyLoadError> {
    let path = &source.path;
    let read_error = |source| KeyLoadError::Read {
        path: path.display().to_string(),
        source,
    };
    // Bounded and regular-only: a key file that is /dev/urandom or a pipe
    // is refused at once instead of read until memory runs out.
    let contents = files::read(path, files::MAX_KEY_FILE).map_err(read_error)?;
    let master =
        MasterKey::from_file_contents(&contents.bytes).map_err(|source| KeyLoadError::Format {
            path: path.display().to_string(),
            source,
        })?;
    let keys = KeyHierarchy::new(&master);
    // Warnings must not stop the run, so their write errors are ignored.
    let demo = keys.fingerprint().is_demo();
    // The mode of the file just read, not of whatever the path names now.
    let readable_by_others = files::readable_by_others(&contents.metadata);
    if demo {
        let _ = writeln!(
            warnings,
            "fugo: warning: {} is the PUBLIC demo key; codes made with it protect nothing",
            path.display()
        );
    } else if readable_by_others {
        let _ = writeln!(
            warnings,
            "fugo: warning: key file {} can be read by group or others; run `chmod 600` on it",
            path.display()
        );
    }
    if let Some(expected) = source.expect {
        let actual = keys.fingerprint();
        if actual != expected {
            return Err(KeyLoadError::FingerprintMismatch {
                path: path.display().to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok((
        master,
        keys,
        KeyFileState {
            demo,
            readable_by_others,
        },
    ))
}

/// Writes a fresh key from the operating system's CSPRNG to `path` with mode
/// 0600, refusing to overwrite. Returns the new key's hierarchy.
pub fn generate(path: &Path) -> Result<KeyHierarchy, KeyLoadError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut_slice())
        .map_err(|_| KeyLoadError::Random)?;
    let master = MasterKey::from_bytes(*bytes);
    let write_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyLoadError::Exists {
                path: path.display().to_string(),
            }
        } else {
            KeyLoadError::Write {
                path: path.display().to_string(),
                source,
            }
        }
    };
    files::write_private_new(path, master.to_file_contents().as_bytes()).map_err(write_error)?;
    Ok(KeyHierarchy::new(&master))
}
