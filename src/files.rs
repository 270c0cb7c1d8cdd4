//! Reading the files an operator names — the configuration, the policy, the
//! master key, the TLS certificates and key — safely: regular files only,
//! never more than a stated size, and the checks made on the opened file
//! rather than the path, so a file swapped between check and read cannot
//! slip through.
//!
//! A named pipe at the policy path once blocked a reload forever, and a key
//! file that was `/dev/urandom` was read until memory ran out; both are now
//! refused at once with a message that says what the file is.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use thiserror::Error;
use zeroize::Zeroizing;

/// Largest policy file: 4 MiB (the example policy is 5 KiB).
pub const MAX_POLICY: u64 = 4 << 20;
/// Largest configuration file: 1 MiB.
pub const MAX_CONFIG: u64 = 1 << 20;
/// Largest master key file: 1 KiB (a key file is 65 or 66 bytes).
pub const MAX_KEY_FILE: u64 = 1 << 10;
/// Largest certificate file (a chain or a CA bundle): 1 MiB.
pub const MAX_CERTIFICATES: u64 = 1 << 20;
/// Largest TLS private key file: 64 KiB.
pub const MAX_TLS_KEY: u64 = 64 << 10;
/// Largest CRL file: 64 MiB (a list of a million serial numbers is about 40 MB).
pub const MAX_CRL: u64 = 64 << 20;

/// Why a file could not be read. The caller names the file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Opening or reading failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Not a regular file (a named pipe, a device, a folder, a socket).
    #[error("it is {kind}, not a regular file; refusing to read it")]
    NotRegular {
        /// What it is, e.g. "a named pipe (FIFO)".
        kind: &'static str,
    },
    /// Larger than the limit for this kind of file.
    #[error("it is larger than {limit} bytes, the limit for this file")]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
}

/// A file's contents and the metadata of the very file they were read from.
pub struct Contents {
    /// The bytes, wiped when dropped (a file may hold a key).
    pub bytes: Zeroizing<Vec<u8>>,
    /// Metadata of the opened file (`fstat`, not `stat` of the path).
    pub metadata: Metadata,
}

impl std::fmt::Debug for Contents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Contents {{ {} bytes }}", self.bytes.len())
    }
}

/// Reads the regular file at `path`, refusing anything else and anything
/// larger than `limit` bytes.
///
/// The file is opened without blocking (a named pipe with no writer would
/// otherwise block the open itself), then its own metadata is checked, then
/// at most `limit + 1` bytes are read, so a file that grows while being
/// read is refused too.
pub fn read(path: &Path, limit: u64) -> Result<Contents, ReadError> {
    // A first look at the path refuses the common case without opening a
    // device at all; the check on the opened file below is the one that
    // counts.
    check_kind(&std::fs::metadata(path)?)?;
    let mut file = open(path)?;
    let metadata = file.metadata()?;
    check_kind(&metadata)?;
    if metadata.len() > limit {
        return Err(ReadError::TooLarge { limit });
    }
    // Room for the whole file and one byte more, so that reading a file of
    // the size it claims never reallocates (and never leaves a copy of a
    // key behind in freed memory).
    let expected = usize::try_from(metadata.len()).unwrap_or(usize::MAX);
    let mut bytes = Zeroizing::new(Vec::with_capacity(expected.saturating_add(1)));
    (&mut file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge { limit });
    }
    Ok(Contents { bytes, metadata })
}

/// Like [`read`], for text: the bytes must be UTF-8.
pub fn read_text(path: &Path, limit: u64) -> Result<Zeroizing<String>, ReadError> {
    let mut contents = read(path, limit)?;
    let bytes = std::mem::take(&mut *contents.bytes);
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(error) => {
            let valid = error.utf8_error().valid_up_to();
            // Wipe what was read before reporting.
            drop(Zeroizing::new(error.into_bytes()));
            Err(ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("it is not valid UTF-8 (byte {valid})"),
            )))
        }
    }
}

/// Writes `contents` to a new file at `path` that only its owner can read
/// (mode 0600), synced before this returns. An existing file is never
/// overwritten: that is an error of kind `AlreadyExists`. For key files
/// and key shares.
pub fn write_private_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Whether group or others may read the file (always false off Unix).
pub fn readable_by_others(metadata: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        metadata.permissions().mode() & 0o077 != 0
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        false
    }
}

#[cfg(unix)]
fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

#[cfg(not(unix))]
fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

fn check_kind(metadata: &Metadata) -> Result<(), ReadError> {
    let kind = metadata.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let kind = if kind.is_dir() {
        "a folder"
    } else {
        special_kind(&kind)
    };
    Err(ReadError::NotRegular { kind })
}

#[cfg(unix)]
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_within_the_limit_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let contents = read(&path, 5).unwrap();
        assert_eq!(contents.bytes.as_slice(), b"hello");
        assert!(contents.metadata.is_file());
        assert_eq!(read_text(&path, 5).unwrap().as_str(), "hello");
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello!").unwrap();
        let error = read(&path, 5).unwrap_err();
        assert_eq!(
            error.to_string(),
            "it is larger than 5 bytes, the limit for this file"
        );
    }

    #[test]
    fn folders_and_devices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path(), 5).unwrap_err().to_string(),
            "it is a folder, not a regular file; refusing to read it"
        );
        #[cfg(unix)]
        assert_eq!(
            read(Path::new("/dev/zero"), 5).unwrap_err().to_string(),
            "it is a character device, not a regular file; refusing to read it"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        assert_eq!(
            read(&path, 5).unwrap_err().to_string(),
            "it is a named pipe (FIFO), not a regular file; refusing to read it"
        );
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"ok\xff").unwrap();
        assert_eq!(
            read_text(&path, 5).unwrap_err().to_string(),
            "it is not valid UTF-8 (byte 2)"
        );
    }
}
