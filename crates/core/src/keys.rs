//! The key hierarchy: one master key, everything else derived with
//! HKDF-SHA256 (RFC 5869).
//!
//! ```text
//! master key (32 bytes, file of 64 hex characters)
//!   └─ PRK = HKDF-Extract(salt = "fugo/v1", IKM = master)
//!        ├─ K_person     = HKDF-Expand(PRK, "fugo/v1/person", 32)
//!        ├─ K_agency(a,e)= HKDF-Expand(PRK, "fugo/v1/agency/" ‖ a ‖ "/" ‖ e, 32)
//!        ├─ K_seal(b,w,k)= HKDF-Expand(PRK, "fugo/v1/seal/" ‖ b ‖ "/" ‖ w ‖ "/" ‖ k, 32)
//!        ├─ K_seal(b,w)  = HKDF-Expand(PRK, "fugo/v1/seal/" ‖ b ‖ "/" ‖ w, 32)  (format-1 tokens)
//!        ├─ K_link       = HKDF-Expand(PRK, "fugo/v1/audit/link", 32)
//!        ├─ log seed     = HKDF-Expand(PRK, "fugo/v1/audit/log-signing", 32)
//!        ├─ K_backup     = HKDF-Expand(PRK, "fugo/v1/backup", 32)
//!        ├─ K_ref        = HKDF-Expand(PRK, "fugo/v1/persons/reference", 32)  (persons.rs)
//!        ├─ K_persons    = HKDF-Expand(PRK, "fugo/v1/persons/seal", 32)       (persons.rs)
//!        └─ KCV          = HKDF-Expand(PRK, "fugo/v1/kcv", 16)   (the fingerprint)
//! ```
//!
//! Each info string is a distinct domain-separation label; the agency label
//! contains the validated [`AgencyId`] (which cannot contain `/`) and the
//! epoch in decimal without leading zeros, so no two (agency, epoch) pairs
//! share a label. Every secret here is wiped on drop and prints as a
//! redaction. Nothing in this module touches the file system: the CLI reads
//! the file and hands the bytes to [`MasterKey::from_file_contents`].

use std::fmt;

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::{Aes256, Block};
use hkdf::Hkdf;
use sha2::Sha256;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::agency::{AgencyId, Epoch};
use crate::generation::Generation;
use crate::hex;

/// HKDF-Extract salt of version 1.
pub const SALT_V1: &[u8] = b"fugo/v1";
/// HKDF-Expand info of the person key.
pub const INFO_PERSON: &[u8] = b"fugo/v1/person";
/// HKDF-Expand info prefix of agency keys; followed by `agency/epoch`.
pub const INFO_AGENCY_PREFIX: &[u8] = b"fugo/v1/agency/";
/// HKDF-Expand info prefix of sealing keys; followed by `addressee/window`
/// (format-1 tokens) or `addressee/window/index` (format 2).
pub const INFO_SEAL_PREFIX: &[u8] = b"fugo/v1/seal/";
/// HKDF-Expand info of the key check value.
pub const INFO_KCV: &[u8] = b"fugo/v1/kcv";
/// HKDF-Expand info of K_link, the key of the audit trail's person links.
pub const INFO_LINK: &[u8] = b"fugo/v1/audit/link";
/// HKDF-Expand info of the seed of the audit log's Ed25519 signing key.
pub const INFO_LOG_SIGNING: &[u8] = b"fugo/v1/audit/log-signing";
/// HKDF-Expand info of the key that encrypts backups of the server's
/// state (`fugo admin backup`); each backup expands it once more with its
/// own random salt.
pub const INFO_BACKUP: &[u8] = b"fugo/v1/backup";

/// Fingerprint of the public demo key `00 01 02 … 1f` (keys-example/).
pub const DEMO_FINGERPRINT: &str = "34391a36deac07213d13a6753154bf16";

/// Length of the master key and of every derived key, in bytes.
pub const KEY_LEN: usize = 32;

// A master key is what `shamir` splits.
const _: () = assert!(KEY_LEN == crate::shamir::SECRET_LEN);

/// Why the contents of a master key file were refused. Never contains key
/// material: only lengths and positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Not 64 hex characters (after removing one trailing newline).
    #[error("expected 64 hex characters and an optional newline, found {length} characters")]
    WrongLength {
        /// Number of bytes found before the optional newline.
        length: usize,
    },
    /// A character that is not a hex digit.
    #[error("character {position} is not a hex digit")]
    NotHex {
        /// 1-based position of the first bad character.
        position: usize,
    },
}

/// The root secret. Loaded once, turned into a [`KeyHierarchy`], dropped.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// Parses a key file: 64 hex characters (either case) and an optional
    /// trailing `\n` or `\r\n`.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, KeyFileError> {
        let text = contents
            .strip_suffix(b"\r\n")
            .or_else(|| contents.strip_suffix(b"\n"))
            .unwrap_or(contents);
        if text.len() != 2 * KEY_LEN {
            return Err(KeyFileError::WrongLength { length: text.len() });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_into(text, key.as_mut_slice())
            .map_err(|position| KeyFileError::NotHex { position })?;
        Ok(MasterKey(key))
    }

    /// Wraps raw key bytes (from a CSPRNG, or a test).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let mut bytes = bytes;
        let key = Zeroizing::new(bytes);
        bytes.zeroize();
        MasterKey(key)
    }

    /// Splits the key into `shares` shares, any `threshold` of which rebuild
    /// it ([`crate::shamir`]); `coefficients` are (threshold − 1) · 32
    /// random bytes from the caller's CSPRNG.
    pub fn split(
        &self,
        shares: u8,
        threshold: u8,
        coefficients: &[u8],
    ) -> Result<Vec<crate::shamir::SecretShare>, crate::shamir::ShamirError> {
        crate::shamir::split(&self.0, shares, threshold, coefficients)
    }

    /// Rebuilds a key from `threshold` shares. Shares of another key give
    /// another key: compare its fingerprint before using it.
    pub fn combine(
        shares: &[crate::shamir::SecretShare],
        threshold: u8,
    ) -> Result<Self, crate::shamir::ShamirError> {
        crate::shamir::combine(shares, threshold).map(MasterKey)
    }

    /// The key file form: 64 lowercase hex characters and a newline.
    pub fn to_file_contents(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(hex::encode(self.0.as_slice()));
        text.push('\n');
        text
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// The key check value: a public fingerprint of the master key, so that a
/// wrong key can never silently change every code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 16]);

/// A `--expect-fingerprint` value that is not 32 hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a key fingerprint is 32 hex characters")]
pub struct FingerprintError;

impl Fingerprint {
    /// Parses 32 hex characters (either case).
    pub fn parse(text: &str) -> Result<Self, FingerprintError> {
        let mut bytes = [0u8; 16];
        if text.len() != 32 {
            return Err(FingerprintError);
        }
        hex::decode_into(text.as_bytes(), &mut bytes).map_err(|_| FingerprintError)?;
        Ok(Fingerprint(bytes))
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is the public demo key's fingerprint.
    pub fn is_demo(&self) -> bool {
        self.to_string() == DEMO_FINGERPRINT
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The HKDF pseudorandom key of one master-key generation, from which
/// every working key of that generation is expanded.
pub struct KeyHierarchy {
    prk: Zeroizing<[u8; KEY_LEN]>,
    generation: Generation,
}

impl KeyHierarchy {
    /// Runs HKDF-Extract over the master key, as generation 1 (the key of
    /// before generations).
    pub fn new(master: &MasterKey) -> Self {
        Self::of_generation(master, Generation::FIRST)
    }

    /// Runs HKDF-Extract over the master key of `generation`. The labels
    /// are the same in every generation: the master key tells them apart.
    pub fn of_generation(master: &MasterKey, generation: Generation) -> Self {
        let (mut output, _) = Hkdf::<Sha256>::extract(Some(SALT_V1), master.0.as_slice());
        let mut prk = Zeroizing::new([0u8; KEY_LEN]);
        prk.copy_from_slice(output.as_slice());
        output.as_mut_slice().zeroize();
        KeyHierarchy { prk, generation }
    }

    /// The generation this hierarchy's master key is.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// HKDF-Expand with `info` into `okm`.
    fn expand(&self, info: &[&[u8]], okm: &mut [u8]) {
        // A 32-byte PRK is exactly SHA-256's output length, which `from_prk`
        // accepts, and expanding at most 32 bytes is far below HKDF's
        // 255·32-byte limit, so neither call can fail.
        #[allow(clippy::expect_used)]
        let hkdf = Hkdf::<Sha256>::from_prk(self.prk.as_slice()).expect("PRK is 32 bytes");
        #[allow(clippy::expect_used)]
        hkdf.expand_multi_info(info, okm)
            .expect("OKM length is at most 32 bytes");
    }

    /// The key check value (fingerprint) of this hierarchy's master key.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut kcv = [0u8; 16];
        self.expand(&[INFO_KCV], &mut kcv);
        Fingerprint(kcv)
    }

    /// K_person: the key of the person handle layer, shared by all agencies.
    pub fn person_key(&self) -> PersonKey {
        PersonKey(self.aes_key(&[INFO_PERSON]))
    }

    /// K_agency(a, e): the key of agency `a`'s codes in epoch `e`.
    pub fn agency_key(&self, agency: &AgencyId, epoch: Epoch) -> AgencyKey {
        let epoch_text = epoch.get().to_string();
        AgencyKey(self.aes_key(&[
            INFO_AGENCY_PREFIX,
            agency.as_str().as_bytes(),
            b"/",
            epoch_text.as_bytes(),
        ]))
    }

    /// K_seal(addressee, window, index): the AES-256-GCM key of tokens
    /// addressed to `addressee` in key window `window` (see `token::Window`)
    /// under key index `index`, or without an index (`None`) the one key of
    /// that window that format-1 tokens were sealed with. The labels cannot
    /// collide: the window and index are decimal and the addressee holds no
    /// `/`, so the number of `/` after the prefix tells the two forms apart.
    pub fn seal_key_bytes(
        &self,
        addressee: &AgencyId,
        window: u32,
        index: Option<u32>,
    ) -> Zeroizing<[u8; KEY_LEN]> {
        let window_text = window.to_string();
        let base: [&[u8]; 4] = [
            INFO_SEAL_PREFIX,
            addressee.as_str().as_bytes(),
            b"/",
            window_text.as_bytes(),
        ];
        match index {
            None => self.expand_key(&base),
            Some(index) => {
                let index_text = index.to_string();
                let mut info = base.to_vec();
                info.extend([b"/".as_slice(), index_text.as_bytes()]);
                self.expand_key(&info)
            }
        }
    }

    /// K_link: the key of the audit trail's person links (handles encrypted
    /// once more, so the log never holds a handle).
    pub fn link_key(&self) -> LinkKey {
        LinkKey(self.aes_key(&[INFO_LINK]))
    }

    /// The 32-byte seed of the audit log's Ed25519 signing key: the log's
    /// key is as safe as the master key and needs no file of its own.
    pub fn log_signing_seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.expand_key(&[INFO_LOG_SIGNING])
    }

    /// K_backup: the key backups are encrypted under (a backup is as safe
    /// as the master key, and restoring one needs it).
    pub fn backup_key(&self) -> Zeroizing<[u8; KEY_LEN]> {
        self.expand_key(&[INFO_BACKUP])
    }

    /// A 32-byte key under a label another module of this crate owns
    /// (`persons`: `fugo/v1/persons/...`).
    pub(crate) fn expand_labelled(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        self.expand_key(&[label])
    }

    fn aes_key(&self, info: &[&[u8]]) -> Aes256 {
        Aes256::new((&*self.expand_key(info)).into())
    }

    /// A 32-byte key expanded under `info` (the parts are concatenated).
    /// Every caller owns a distinct label starting `fugo/v1/`.
    fn expand_key(&self, info: &[&[u8]]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        self.expand(info, key.as_mut_slice());
        key
    }
}

impl fmt::Debug for KeyHierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "KeyHierarchy(generation {}, [REDACTED])",
            self.generation
        )
    }
}

/// The AES-256 key schedule of K_person (wiped on drop by the `aes` crate's
/// `zeroize` feature). It turns person blocks into handles and back.
pub struct PersonKey(Aes256);

impl PersonKey {
    /// Encrypts person blocks B into handles h, in place.
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .encrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }

    /// Decrypts handles h back into person blocks B, in place.
    pub fn decrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .decrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }
}

/// The AES-256 key schedule of one K_agency(a, e). It turns handles into
/// code blocks and back.
pub struct AgencyKey(Aes256);

impl AgencyKey {
    /// Encrypts handles h into code blocks c, in place.
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .encrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }

    /// Decrypts code blocks c back into (unchecked) handles, in place.
    pub fn decrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .decrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }
}

/// The AES-256 key schedule of K_link. It turns handles into person links
/// and back.
pub struct LinkKey(Aes256);

impl LinkKey {
    /// Encrypts handles h into person links, in place.
    pub fn encrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .encrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }

    /// Decrypts person links back into (unchecked) handles, in place.
    pub fn decrypt_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.0
            .decrypt_blocks(Block::cast_slice_from_core_mut(blocks));
    }
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey([REDACTED])")
    }
}

impl fmt::Debug for PersonKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonKey([REDACTED])")
    }
}

impl fmt::Debug for AgencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgencyKey([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> MasterKey {
        MasterKey::from_bytes(std::array::from_fn(|i| i as u8))
    }

    #[test]
    fn demo_key_fingerprint_is_the_published_one() {
        let keys = KeyHierarchy::new(&demo());
        assert_eq!(
            keys.fingerprint().to_string(),
            "34391a36deac07213d13a6753154bf16"
        );
    }

    #[test]
    fn key_files_are_strict() {
        let text = demo().to_file_contents();
        assert!(MasterKey::from_file_contents(text.as_bytes()).is_ok());
        let bare = text.trim_end();
        assert!(MasterKey::from_file_contents(bare.as_bytes()).is_ok());
        assert!(MasterKey::from_file_contents(format!("{bare}\r\n").as_bytes()).is_ok());
        assert!(MasterKey::from_file_contents(bare.to_uppercase().as_bytes()).is_ok());
        assert_eq!(
            MasterKey::from_file_contents(format!("{bare}\n\n").as_bytes()).unwrap_err(),
            KeyFileError::WrongLength { length: 65 }
        );
        assert_eq!(
            MasterKey::from_file_contents(&text.as_bytes()[..40]).unwrap_err(),
            KeyFileError::WrongLength { length: 40 }
        );
        let mut bad = bare.as_bytes().to_vec();
        bad[9] = b'g';
        assert_eq!(
            MasterKey::from_file_contents(&bad).unwrap_err(),
            KeyFileError::NotHex { position: 10 }
        );
    }

    #[test]
    fn secrets_print_redacted() {
        let master = demo();
        let keys = KeyHierarchy::new(&master);
        let agency = AgencyId::new("nta").unwrap();
        let epoch = Epoch::new(1).unwrap();
        for text in [
            format!("{master:?}"),
            format!("{keys:?}"),
            format!("{:?}", keys.person_key()),
            format!("{:?}", keys.agency_key(&agency, epoch)),
            format!("{:?}", keys.link_key()),
        ] {
            assert!(text.contains("[REDACTED]"), "{text}");
            assert!(!text.contains("0001020304"), "{text}");
        }
    }

    #[test]
    fn fingerprints_parse() {
        let fp = Fingerprint::parse("34391A36DEAC07213D13A6753154BF16").unwrap();
        assert_eq!(fp, KeyHierarchy::new(&demo()).fingerprint());
        assert!(Fingerprint::parse("34391a36").is_err());
        assert!(Fingerprint::parse("zz391a36deac07213d13a6753154bf16").is_err());
    }
}
