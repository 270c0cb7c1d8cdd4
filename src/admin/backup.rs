//! The backup file: a snapshot of the audit store, encrypted and
//! authenticated under K_backup (a key of the master key hierarchy,
//! `fugo/v1/backup`), streamed chunk by chunk so neither side holds it whole.
//!
//! ```text
//! "FUGOBAK1" ‖ u32 header length ‖ header (JSON, plain: what and whose)
//! then chunks: u32 length ‖ AES-256-GCM(K_file, nonce = u64 index ‖ 0000,
//!              aad = SHA-256(magic ‖ header) ‖ u64 index ‖ last flag)
//! K_file = HKDF-SHA256(salt = header.salt, IKM = K_backup, info = "fugo/v1/backup/file")
//! ```
//!
//! The header is bound into every chunk, chunks into their order, and the
//! last chunk is marked: a changed header, a changed, dropped, reordered
//! or appended chunk, and a file cut short are all refused by
//! [`Opener`]. The header names the master key's fingerprint, so a backup
//! opened with another key is refused by name, not by a failed tag.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::keys::KeyHierarchy;

/// The backup's file name inside `fugo admin backup --out DIR`.
pub const BACKUP_FILE: &str = "fugo.backup";
/// The first bytes of a backup file (format 1).
pub const MAGIC: &[u8; 8] = b"FUGOBAK1";
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// Largest header accepted.
const MAX_HEADER: usize = 64 << 10;
/// HKDF info of the per-file key.
const FILE_INFO: &[u8] = b"fugo/v1/backup/file";
/// AES-GCM tag length.
const TAG: usize = 16;

/// Why a backup could not be made or opened.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The file is not a fugo backup (or of another format).
    #[error("not a fugo backup file: {0}")]
    Format(String),
    /// The backup was made under another master key.
    #[error(
        "the backup was encrypted under the master key with fingerprint {backup}; this \
         configuration's key is {given}: restore with the key the backup was made under"
    )]
    WrongKey {
        /// The backup's key fingerprint.
        backup: String,
        /// The configured key's.
        given: String,
    },
    /// A chunk failed authentication: the file was changed or damaged.
    #[error("the backup is damaged or was changed: chunk {0} fails its authentication")]
    Damaged(u64),
    /// The file ends before its last chunk.
    #[error("the backup is cut short: it ends after chunk {0} without its last chunk")]
    Truncated(u64),
    /// Bytes follow the last chunk.
    #[error("the backup has data after its last chunk")]
    Trailing,
    /// Encryption failed (cannot happen with a valid key).
    #[error("the backup could not be encrypted")]
    Seal,
}

/// What a backup holds, in the clear at its start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupHeader {
    /// Format of this header (1).
    pub format: u32,
    /// The master key's fingerprint (hex): the key that opens it.
    pub key_fingerprint: String,
    /// The audit log's origin when the backup was taken.
    pub origin: String,
    /// The size of the signed checkpoint the snapshot ends at: the store
    /// holds exactly records `0..checkpoint`.
    pub checkpoint: u64,
    /// That checkpoint, as signed (C2SP note).
    pub checkpoint_note: String,
    /// Bytes of the store file.
    pub store_bytes: u64,
    /// When the snapshot was taken (unix milliseconds).
    pub created_ms: u64,
    /// Per-backup salt of K_file (hex, 32 bytes).
    pub salt: String,
}

/// The per-file key and the header digest every chunk is bound to.
struct Keys {
    cipher: Aes256Gcm,
    header_digest: [u8; 32],
}

impl Keys {
    fn new(backup_key: &[u8; 32], header_bytes: &[u8], salt: &[u8]) -> Result<Self, BackupError> {
        let mut file_key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), backup_key.as_slice())
            .expand(FILE_INFO, file_key.as_mut_slice())
            .map_err(|_| BackupError::Seal)?;
        let cipher = Aes256Gcm::new((&*file_key).into());
        let mut digest = Sha256::new();
        digest.update(MAGIC);
        digest.update(header_bytes);
        Ok(Keys {
            cipher,
            header_digest: digest.finalize().into(),
        })
    }

    fn nonce(index: u64) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&index.to_be_bytes());
        nonce
    }

    fn aad(&self, index: u64, last: bool) -> [u8; 41] {
        let mut aad = [0u8; 41];
        aad[..32].copy_from_slice(&self.header_digest);
        aad[32..40].copy_from_slice(&index.to_be_bytes());
        aad[40] = u8::from(last);
        aad
    }
}

/// Encrypts a backup chunk by chunk.
pub struct Sealer {
    keys: Keys,
    index: u64,
}

impl Sealer {
    /// Starts a backup described by `header` (its salt must be fresh
    /// random hex of 32 bytes); returns the sealer and the file's first
    /// bytes (magic, header).
    pub fn start(
        backup_key: &[u8; 32],
        header: &BackupHeader,
    ) -> Result<(Self, Vec<u8>), BackupError> {
        let salt = salt_of(header)?;
        let header_bytes =
            serde_json::to_vec(header).map_err(|error| BackupError::Format(error.to_string()))?;
        let keys = Keys::new(backup_key, &header_bytes, &salt)?;
        let mut start = Vec::with_capacity(12 + header_bytes.len());
        start.extend_from_slice(MAGIC);
        start.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
        start.extend_from_slice(&header_bytes);
        Ok((Sealer { keys, index: 0 }, start))
    }

    /// The next chunk (at most [`CHUNK`] bytes), `last` on the final one;
    /// returns its bytes in the file.
    pub fn chunk(&mut self, plain: &[u8], last: bool) -> Result<Vec<u8>, BackupError> {
        let aad = self.keys.aad(self.index, last);
        let sealed = self
            .keys
            .cipher
            .encrypt(
                &Nonce::from(Keys::nonce(self.index)),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| BackupError::Seal)?;
        self.index += 1;
        let mut out = Vec::with_capacity(4 + sealed.len());
        out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        out.extend_from_slice(&sealed);
        Ok(out)
    }
}

fn salt_of(header: &BackupHeader) -> Result<Vec<u8>, BackupError> {
    let mut salt = vec![0u8; 32];
    if header.salt.len() != 64
        || crate::hex::decode_into(header.salt.as_bytes(), &mut salt).is_err()
    {
        return Err(BackupError::Format(
            "the header's salt is not 64 hex digits".into(),
        ));
    }
    Ok(salt)
}

/// Reads the header of a backup from `reader` (magic, length, JSON).
pub fn read_header(
    reader: &mut impl std::io::Read,
) -> Result<(BackupHeader, Vec<u8>), BackupError> {
    let mut magic = [0u8; 8];
    read_exact(reader, &mut magic, 0)?;
    if &magic != MAGIC {
        return Err(BackupError::Format(
            "it does not start with FUGOBAK1 (is it a fugo.backup file?)".into(),
        ));
    }
    let mut length = [0u8; 4];
    read_exact(reader, &mut length, 0)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_HEADER {
        return Err(BackupError::Format(format!(
            "a header of {length} bytes is too large"
        )));
    }
    let mut bytes = vec![0u8; length];
    read_exact(reader, &mut bytes, 0)?;
    let header: BackupHeader = serde_json::from_slice(&bytes)
        .map_err(|error| BackupError::Format(format!("its header: {error}")))?;
    if header.format != 1 {
        return Err(BackupError::Format(format!(
            "header format {} (this fugo reads format 1)",
            header.format
        )));
    }
    Ok((header, bytes))
}

fn read_exact(
    reader: &mut impl std::io::Read,
    buf: &mut [u8],
    chunk: u64,
) -> Result<(), BackupError> {
    reader.read_exact(buf).map_err(|error| {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            BackupError::Truncated(chunk)
        } else {
            BackupError::Format(error.to_string())
        }
    })
}

/// Decrypts a backup chunk by chunk.
pub struct Opener {
    keys: Keys,
    index: u64,
    done: bool,
}

impl Opener {
    /// Checks the header's key against `keys` (by fingerprint) and starts.
    pub fn start(
        keys: &KeyHierarchy,
        header: &BackupHeader,
        header_bytes: &[u8],
    ) -> Result<Self, BackupError> {
        let given = keys.fingerprint().to_string();
        if header.key_fingerprint != given {
            return Err(BackupError::WrongKey {
                backup: header.key_fingerprint.clone(),
                given,
            });
        }
        let salt = salt_of(header)?;
        Ok(Opener {
            keys: Keys::new(&keys.backup_key(), header_bytes, &salt)?,
            index: 0,
            done: false,
        })
    }

    /// Reads and opens the next chunk; `None` after the last one (then
    /// the reader must be at its end).
    pub fn next_chunk(
        &mut self,
        reader: &mut impl std::io::Read,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, BackupError> {
        if self.done {
            let mut extra = [0u8; 1];
            return match reader.read(&mut extra) {
                Ok(0) => Ok(None),
                Ok(_) => Err(BackupError::Trailing),
                Err(error) => Err(BackupError::Format(error.to_string())),
            };
        }
        let mut length = [0u8; 4];
        read_exact(reader, &mut length, self.index)?;
        let length = u32::from_be_bytes(length) as usize;
        if !(TAG..=CHUNK + TAG).contains(&length) {
            return Err(BackupError::Damaged(self.index));
        }
        let mut sealed = vec![0u8; length];
        read_exact(reader, &mut sealed, self.index)?;
        let nonce = Keys::nonce(self.index);
        // The last flag is authenticated: try the chunk as a middle one,
        // then as the last (the tag tells which it was sealed as).
        for last in [false, true] {
            let aad = self.keys.aad(self.index, last);
            if let Ok(plain) = self.keys.cipher.decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &sealed,
                    aad: &aad,
                },
            ) {
                self.index += 1;
                self.done = last;
                return Ok(Some(Zeroizing::new(plain)));
            }
        }
        Err(BackupError::Damaged(self.index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(byte: u8) -> KeyHierarchy {
        KeyHierarchy::new(&crate::keys::MasterKey::from_bytes([byte; 32]))
    }

    fn header(keys: &KeyHierarchy) -> BackupHeader {
        BackupHeader {
            format: 1,
            key_fingerprint: keys.fingerprint().to_string(),
            origin: "test/audit".into(),
            checkpoint: 3,
            checkpoint_note: String::new(),
            store_bytes: 5,
            created_ms: 1,
            salt: "ab".repeat(32),
        }
    }

    fn seal(keys: &KeyHierarchy, parts: &[&[u8]]) -> Vec<u8> {
        let (mut sealer, mut file) = Sealer::start(&keys.backup_key(), &header(keys)).unwrap();
        for (index, part) in parts.iter().enumerate() {
            file.extend(sealer.chunk(part, index + 1 == parts.len()).unwrap());
        }
        file
    }

    fn open(keys: &KeyHierarchy, file: &[u8]) -> Result<Vec<u8>, BackupError> {
        let mut reader = file;
        let (header, bytes) = read_header(&mut reader)?;
        let mut opener = Opener::start(keys, &header, &bytes)?;
        let mut plain = Vec::new();
        while let Some(chunk) = opener.next_chunk(&mut reader)? {
            plain.extend_from_slice(&chunk);
        }
        Ok(plain)
    }

    #[test]
    fn a_backup_opens_only_whole_and_unchanged() {
        let keys = keys(7);
        let file = seal(&keys, &[b"abc", b"de"]);
        assert_eq!(open(&keys, &file).unwrap(), b"abcde");
        // Cut after the first chunk: no last chunk.
        let first_end = file.len() - (4 + 2 + TAG);
        assert!(matches!(
            open(&keys, &file[..first_end]),
            Err(BackupError::Truncated(1))
        ));
        // One bit of the second chunk changed.
        let mut changed = file.clone();
        let at = changed.len() - 1;
        changed[at] ^= 1;
        assert!(matches!(
            open(&keys, &changed),
            Err(BackupError::Damaged(1))
        ));
        // The header changed (the origin): every chunk fails.
        let mut header_changed = file.clone();
        let position = file
            .windows(10)
            .position(|window| window == b"test/audit")
            .unwrap();
        header_changed[position + 9] = b'X';
        assert!(matches!(
            open(&keys, &header_changed),
            Err(BackupError::Damaged(0))
        ));
        // Data after the last chunk.
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(open(&keys, &longer), Err(BackupError::Trailing)));
    }

    #[test]
    fn another_key_is_refused_by_name() {
        let file = seal(&keys(7), &[b"abc"]);
        let error = open(&keys(8), &file).unwrap_err();
        assert!(matches!(error, BackupError::WrongKey { .. }), "{error}");
    }
}
