//! Share files: one custodian's share of the master key as a small text
//! file that names what it belongs to and carries a checksum.
//!
//! ```text
//! # fugo master key share 2 of 5; any 3 rebuild the key. Keep it secret.
//! fugo-key-share v1
//! split: 6f1c0e9a3b5d7720
//! key: 34391a36deac07213d13a6753154bf16
//! threshold: 3
//! shares: 5
//! index: 2
//! value: <64 hex digits>
//! checksum: <16 hex digits>
//! ```
//!
//! `split` is random per `fugo keys split` run, so shares of two runs (even
//! of the same key) are never combined; `key` is the fingerprint of the key
//! split, which the server compares with its `master_key_fingerprint`
//! before taking the share; `checksum` is the first 8 bytes of SHA-256 over
//! the canonical text of the fields above it, so a mistyped or damaged
//! share is named instead of silently giving a wrong key. (The checksum is
//! no signature: anyone can recompute it. A share edited on purpose is
//! caught later, when the combined key's fingerprint is checked.)

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::hex;
use crate::keys::{Fingerprint, KEY_LEN, KeyHierarchy, MasterKey};
use crate::shamir::{SecretShare, ShamirError};

/// The first line of every share file (after comments).
const MAGIC: &str = "fugo-key-share v1";

/// The largest share file read (a share is about 300 bytes).
pub const MAX_SHARE_FILE: u64 = 4096;

/// The random name of one split: shares of different splits never mix.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SplitId([u8; 8]);

impl fmt::Display for SplitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for SplitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SplitId({self})")
    }
}

/// One share as read from or written to its file. The share value is
/// wiped on drop and `Debug` redacts it.
pub struct ShareFile {
    /// The split it belongs to.
    pub split: SplitId,
    /// The fingerprint of the key it is a share of.
    pub key: Fingerprint,
    /// Shares needed to rebuild the key.
    pub threshold: u8,
    /// Shares made.
    pub shares: u8,
    /// The index and value.
    pub share: SecretShare,
}

impl fmt::Debug for ShareFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareFile")
            .field("split", &self.split)
            .field("key", &self.key)
            .field("threshold", &self.threshold)
            .field("shares", &self.shares)
            .field("index", &self.share.index())
            .field("value", &"[REDACTED]")
            .finish()
    }
}

/// Why share text was refused. Names the line or the share's index, never
/// the value.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShareError {
    /// The text is not a share file (wrong first line, a field missing or
    /// malformed).
    #[error("line {line}: {message}")]
    Format {
        /// 1-based line (0: the end of the file).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The fields do not match their checksum.
    #[error(
        "share {index}: the checksum does not match: the share is damaged or mistyped \
         (compare it with the custodian's copy)"
    )]
    Checksum {
        /// The index the (damaged) share claims.
        index: u8,
    },
}

/// Why a split could not be made or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SplitError {
    /// Bad share count or threshold.
    #[error(transparent)]
    Shamir(#[from] ShamirError),
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A share file already exists.
    #[error(
        "{0} already exists; refusing to overwrite a share file (choose an empty --out folder)"
    )]
    Exists(String),
    /// A share file or the folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or folder.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl ShareFile {
    /// The canonical text of the fields the checksum covers. Built in a
    /// buffer large enough never to grow, so no copy of the value is left
    /// behind in freed memory.
    fn canonical(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(512));
        let fields = format!(
            "{MAGIC}\nsplit: {}\nkey: {}\nthreshold: {}\nshares: {}\nindex: {}\nvalue: ",
            self.split,
            self.key,
            self.threshold,
            self.shares,
            self.share.index(),
        );
        text.push_str(&fields);
        for byte in self.share.expose_value().iter() {
            for nibble in [byte >> 4, byte & 0x0f] {
                text.push(char::from(b"0123456789abcdef"[usize::from(nibble)]));
            }
        }
        text.push('\n');
        text
    }

    fn checksum_of(canonical: &str) -> String {
        hex::encode(&Sha256::digest(canonical.as_bytes())[..8])
    }

    /// The file's text: a comment line, the fields and the checksum.
    pub fn to_text(&self) -> Zeroizing<String> {
        let canonical = self.canonical();
        let mut text = Zeroizing::new(String::with_capacity(1024));
        text.push_str(&format!(
            "# fugo master key share {} of {}; any {} rebuild the key. Keep it secret: \
             one custodian only.\n",
            self.share.index(),
            self.shares,
            self.threshold,
        ));
        text.push_str(&canonical);
        text.push_str("checksum: ");
        text.push_str(&Self::checksum_of(&canonical));
        text.push('\n');
        text
    }

    /// Parses share text: `#` comments and blank lines are skipped, CRLF
    /// is accepted, fields must come in the order written.
    pub fn parse(text: &str) -> Result<Self, ShareError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(number, line)| (number + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        let format = |line: usize, message: &str| ShareError::Format {
            line,
            message: message.to_owned(),
        };
        match lines.next() {
            Some((_, MAGIC)) => {}
            Some((line, _)) => {
                return Err(format(
                    line,
                    "not a fugo key share (the first line must be 'fugo-key-share v1')",
                ));
            }
            None => return Err(format(0, "the file is empty")),
        }
        let mut field = |name: &str| -> Result<(usize, &str), ShareError> {
            match lines.next() {
                Some((line, text)) => match text.split_once(':') {
                    Some((key, value)) if key.trim() == name => Ok((line, value.trim())),
                    _ => Err(format(line, &format!("expected the field '{name}:'"))),
                },
                None => Err(format(0, &format!("the field '{name}:' is missing"))),
            }
        };
        let (line, text) = field("split")?;
        let mut split = [0u8; 8];
        if text.len() != 16 || hex::decode_into(text.as_bytes(), &mut split).is_err() {
            return Err(format(line, "split: expected 16 hex digits"));
        }
        let (line, text) = field("key")?;
        let key = Fingerprint::parse(text)
            .map_err(|_| format(line, "key: expected a 32-hex-digit key fingerprint"))?;
        let mut number = |name: &str| -> Result<u8, ShareError> {
            let (line, text) = field(name)?;
            text.parse::<u8>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| format(line, &format!("{name}: expected a number from 1 to 255")))
        };
        let threshold = number("threshold")?;
        let shares = number("shares")?;
        let index = number("index")?;
        let (value_line, text) = field("value")?;
        let mut value = Box::new(Zeroizing::new([0u8; KEY_LEN]));
        if text.len() != 2 * KEY_LEN
            || hex::decode_into(text.as_bytes(), value.as_mut_slice()).is_err()
        {
            return Err(format(
                value_line,
                &format!("value: expected {} hex digits", 2 * KEY_LEN),
            ));
        }
        let (line, checksum) = field("checksum")?;
        if let Some((line, _)) = lines.next() {
            return Err(format(line, "unexpected text after the checksum"));
        }
        let parsed = ShareFile {
            split: SplitId(split),
            key,
            threshold,
            shares,
            share: SecretShare::new(index, value),
        };
        if checksum.len() != 16 {
            return Err(format(line, "checksum: expected 16 hex digits"));
        }
        if !checksum.eq_ignore_ascii_case(&Self::checksum_of(&parsed.canonical())) {
            return Err(ShareError::Checksum { index });
        }
        if threshold < 2 || threshold > shares || index > shares {
            return Err(format(
                value_line,
                "threshold, shares and index do not fit (2 ≤ threshold ≤ shares, index ≤ shares)",
            ));
        }
        Ok(parsed)
    }
}

/// Splits `master` into `shares` share files' contents, any `threshold` of
/// which rebuild it, drawing the polynomial coefficients and the split id
/// from the operating system's CSPRNG.
pub fn split_key(
    master: &MasterKey,
    shares: u8,
    threshold: u8,
) -> Result<Vec<ShareFile>, SplitError> {
    let random = SystemRandom::new();
    let mut coefficients = Zeroizing::new(vec![
        0u8;
        usize::from(threshold.saturating_sub(1)) * KEY_LEN
    ]);
    random
        .fill(coefficients.as_mut_slice())
        .map_err(|_| SplitError::Random)?;
    let mut split = [0u8; 8];
    random.fill(&mut split).map_err(|_| SplitError::Random)?;
    let key = KeyHierarchy::new(master).fingerprint();
    Ok(master
        .split(shares, threshold, &coefficients)?
        .into_iter()
        .map(|share| ShareFile {
            split: SplitId(split),
            key,
            threshold,
            shares,
            share,
        })
        .collect())
}

/// The file name of share `index` of `shares`.
pub fn file_name(index: u8, shares: u8) -> String {
    format!("share-{index}-of-{shares}.txt")
}

/// Writes each share to `dir/share-I-of-N.txt` with mode 0600, creating
/// `dir` (mode 0700) if needed and refusing to overwrite any file; on an
/// error the files this call wrote are removed again.
pub fn write_shares(dir: &Path, shares: &[ShareFile]) -> Result<Vec<PathBuf>, SplitError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| SplitError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let paths: Vec<PathBuf> = shares
        .iter()
        .map(|share| dir.join(file_name(share.share.index(), share.shares)))
        .collect();
    if let Some(existing) = paths.iter().find(|path| path.exists()) {
        return Err(SplitError::Exists(existing.display().to_string()));
    }
    let mut written = Vec::new();
    for (share, path) in shares.iter().zip(&paths) {
        if let Err(error) = write_one(path, share) {
            for path in &written {
                let _ = std::fs::remove_file(path);
            }
            return Err(error);
        }
        written.push(path.clone());
    }
    Ok(paths)
}

fn write_one(path: &Path, share: &ShareFile) -> Result<(), SplitError> {
    let write_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            SplitError::Exists(path.display().to_string())
        } else {
            SplitError::Write {
                path: path.display().to_string(),
                source,
            }
        }
    };
    crate::files::write_private_new(path, share.to_text().as_bytes()).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> MasterKey {
        MasterKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    #[test]
    fn a_share_reads_back_as_written() {
        let shares = split_key(&demo(), 5, 3).unwrap();
        assert_eq!(shares.len(), 5);
        for share in &shares {
            let text = share.to_text();
            let back = ShareFile::parse(&text).unwrap();
            assert_eq!(back.split, share.split);
            assert_eq!(back.key.to_string(), crate::keys::DEMO_FINGERPRINT);
            assert_eq!((back.threshold, back.shares), (3, 5));
            assert_eq!(back.share.index(), share.share.index());
            assert_eq!(back.share.expose_value(), share.share.expose_value());
            // CRLF line ends (a file passed through Windows) read the same.
            let crlf = text.replace('\n', "\r\n");
            assert!(ShareFile::parse(&crlf).is_ok());
        }
        let rebuilt = MasterKey::combine(
            &[
                ShareFile::parse(&shares[4].to_text()).unwrap().share,
                ShareFile::parse(&shares[1].to_text()).unwrap().share,
                ShareFile::parse(&shares[2].to_text()).unwrap().share,
            ],
            3,
        )
        .unwrap();
        assert_eq!(
            KeyHierarchy::new(&rebuilt).fingerprint().to_string(),
            crate::keys::DEMO_FINGERPRINT
        );
    }

    /// Any one changed character of a field is caught by the checksum (or
    /// no longer parses), and the error names the share's index.
    #[test]
    fn a_damaged_share_is_named() {
        let shares = split_key(&demo(), 3, 2).unwrap();
        let text = shares[1].to_text();
        let value_at = text.find("value: ").unwrap() + "value: ".len();
        let mut damaged = text.to_string();
        let old = damaged.as_bytes()[value_at + 10];
        let new = if old == b'0' { "1" } else { "0" };
        damaged.replace_range(value_at + 10..value_at + 11, new);
        assert_eq!(
            ShareFile::parse(&damaged).unwrap_err(),
            ShareError::Checksum { index: 2 }
        );
        let error = ShareFile::parse(&damaged).unwrap_err().to_string();
        assert!(
            error.starts_with("share 2: the checksum does not match"),
            "{error}"
        );
        let value = hex::encode(shares[1].share.expose_value());
        assert!(!error.contains(&value[..8]));
        let lines = text.replace("threshold: 2", "threshold: 3");
        assert_eq!(
            ShareFile::parse(&lines).unwrap_err(),
            ShareError::Checksum { index: 2 }
        );
    }

    #[test]
    fn malformed_share_text_names_the_line() {
        let text = split_key(&demo(), 3, 2).unwrap()[0].to_text();
        let cases = [
            ("", "line 0: the file is empty"),
            ("hello\n", "line 1: not a fugo key share"),
            (
                &text.replace("index: 1", "index: x"),
                "line 7: index: expected a number",
            ),
            (
                &text.replace("value: ", "value: 0"),
                "line 8: value: expected 64 hex digits",
            ),
            (
                &text.replace("split:", "spilt:"),
                "line 3: expected the field 'split:'",
            ),
            (
                &format!("{}extra\n", text.as_str()),
                "line 10: unexpected text",
            ),
        ];
        for (input, expected) in cases {
            let error = ShareFile::parse(input).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn debug_redacts_the_value() {
        let share = &split_key(&demo(), 2, 2).unwrap()[0];
        let shown = format!("{share:?}");
        assert!(shown.contains("value: \"[REDACTED]\""), "{shown}");
        assert!(!shown.contains(&hex::encode(share.share.expose_value())[..8]));
    }

    #[test]
    fn share_files_are_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("shares");
        let paths = write_shares(&out, &split_key(&demo(), 3, 2).unwrap()).unwrap();
        assert_eq!(paths[2], out.join("share-3-of-3.txt"));
        for path in &paths {
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let before = std::fs::read(&paths[0]).unwrap();
        let error = write_shares(&out, &split_key(&demo(), 3, 2).unwrap()).unwrap_err();
        assert!(error.to_string().contains("already exists"), "{error}");
        assert_eq!(std::fs::read(&paths[0]).unwrap(), before);
    }
}
