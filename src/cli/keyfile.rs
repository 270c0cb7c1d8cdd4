//! Master key files on disk: generating, loading, checking permissions and
//! fingerprints. The parsing itself is [`crate::keys`]; this is the I/O.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::CliError;
use super::settings::KeySource;
use crate::keys::{KEY_LEN, KeyHierarchy, MasterKey};

/// Loads, checks and expands a master key. Warns on `warnings` when it is
/// the public demo key, or when group or others may read the file.
pub(crate) fn load(source: &KeySource, warnings: &mut dyn Write) -> Result<KeyHierarchy, CliError> {
    let path = &source.path;
    let read_error = |source| CliError::KeyRead {
        path: path.display().to_string(),
        source,
    };
    let contents = Zeroizing::new(fs::read(path).map_err(read_error)?);
    let master =
        MasterKey::from_file_contents(&contents).map_err(|source| CliError::KeyFormat {
            path: path.display().to_string(),
            source,
        })?;
    let keys = KeyHierarchy::new(&master);
    // Warnings must not stop the run, so their write errors are ignored.
    if keys.fingerprint().is_demo() {
        let _ = writeln!(
            warnings,
            "fugo: warning: {} is the PUBLIC demo key; codes made with it protect nothing",
            path.display()
        );
    } else {
        warn_if_readable_by_others(path, warnings).map_err(read_error)?;
    }
    if let Some(expected) = source.expect {
        let actual = keys.fingerprint();
        if actual != expected {
            return Err(CliError::FingerprintMismatch {
                path: path.display().to_string(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    Ok(keys)
}

/// Warns when group or others may read the key file.
#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, warnings: &mut dyn Write) -> io::Result<()> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        let _ = writeln!(
            warnings,
            "fugo: warning: key file {} can be read by group or others (mode {:o}); \
             run `chmod 600` on it",
            path.display(),
            mode & 0o777
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path, _: &mut dyn Write) -> io::Result<()> {
    Ok(())
}

/// Writes a fresh key from the operating system's CSPRNG to `path` with mode
/// 0600, refusing to overwrite. Returns the new key's hierarchy.
pub(crate) fn generate(path: &Path) -> Result<KeyHierarchy, CliError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    SystemRandom::new()
        .fill(bytes.as_mut_slice())
        .map_err(|_| CliError::Random)?;
    let master = MasterKey::from_bytes(*bytes);
    let write_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            CliError::KeyExists {
                path: path.display().to_string(),
            }
        } else {
            CliError::KeyWrite {
                path: path.display().to_string(),
                source,
            }
        }
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(master.to_file_contents().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)?;
    Ok(KeyHierarchy::new(&master))
}
