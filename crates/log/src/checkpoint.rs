//! Signed checkpoints: the log's size and root in the C2SP tlog-checkpoint
//! format, signed as a C2SP signed note with Ed25519, so that any holder of
//! the log's public key (and any tool that speaks the format) can check
//! them.
//!
//! A checkpoint body is three lines, then optional extension lines (which
//! we never write but accept):
//!
//! ```text
//! <origin>\n<size, decimal>\n<base64 root>\n
//! ```
//!
//! The signed note is the body, a blank line, then one line per signature:
//! `— <name> <base64(key id(4) ‖ Ed25519 signature(64))>\n` (U+2014 em
//! dash). The key id is the first 4 bytes of
//! `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`. The published public key
//! (the verifier key) is `<name>+<key id, 8 hex>+<base64(0x01 ‖ public key)>`.
//!
//! Parsing is defensive: a note is at most [`MAX_NOTE_LEN`] bytes and
//! [`MAX_SIGNATURES`] signature lines; control characters, a missing blank
//! line, non-canonical base64 or sizes ("01"), a root that is not 32 bytes,
//! a wrong key id and a bad signature are each refused with their own
//! [`NoteError`], naming the line. Errors never echo the text.
//!
//! The signing seed is held in a wiped-on-drop buffer, and [`LogSigner`]
//! prints `[REDACTED]` in `Debug`. `ring` does not wipe its expanded
//! Ed25519 key, so the signer expands the seed for each signature only
//! (a checkpoint is signed at most a few times a second) instead of
//! keeping ring's key pair alive for the life of the server.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::merkle::Hash;

/// The largest signed note we read, in bytes (ours are about 200).
pub const MAX_NOTE_LEN: usize = 64 * 1024;
/// The most signature lines we read in one note (C2SP witnesses add one each).
pub const MAX_SIGNATURES: usize = 100;

/// The signature algorithm byte of Ed25519 in C2SP signed-note keys.
const ALG_ED25519: u8 = 0x01;
/// The start of a signature line: U+2014 em dash and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Bytes of an Ed25519 public key.
const PUBLIC_KEY_LEN: usize = 32;
/// Bytes of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// What is wrong with a checkpoint, a signed note, a key name or a
/// verifier key. Line numbers count from 1 in the text given.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoteError {
    /// The text is longer than [`MAX_NOTE_LEN`].
    #[error("note is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Length of the text given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control character other than newline (C2SP signed-note forbids them).
    #[error("line {line}: control character (only newline is allowed)")]
    ControlCharacter {
        /// Line of the first one.
        line: usize,
    },
    /// The text does not end with a newline.
    #[error("the text does not end with a newline")]
    MissingNewline,
    /// No blank line separates the checkpoint from its signatures.
    #[error("no blank line between the checkpoint and its signatures")]
    MissingBlankLine,
    /// More than [`MAX_SIGNATURES`] signature lines.
    #[error("more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// A line after the blank line that is not `— <name> <base64>`.
    #[error("line {line}: not a signature line (\u{2014} <name> <base64>)")]
    MalformedSignatureLine {
        /// The line.
        line: usize,
    },
    /// A field that should be canonical, padded, standard base64 is not.
    #[error("line {line}: {field} is not canonical base64")]
    BadBase64 {
        /// Which field: "root", "signature" or "public key".
        field: &'static str,
        /// The line (1 for a verifier key).
        line: usize,
    },
    /// A signature line with our name whose key id is not our key's.
    #[error("line {line}: signed by another key named like this log's key")]
    WrongKeyId {
        /// The line.
        line: usize,
    },
    /// A signature by our key that is not 64 bytes long.
    #[error("line {line}: signature is {len} bytes, not 64")]
    SignatureLength {
        /// The line.
        line: usize,
        /// The length found.
        len: usize,
    },
    /// No signature line by this log's key.
    #[error("the note has no signature by this log's key")]
    NotSigned,
    /// A signature by this log's key that does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The checkpoint body has fewer than three lines.
    #[error("checkpoint has {lines} lines, needs origin, size and root")]
    TooFewLines {
        /// Lines found.
        lines: usize,
    },
    /// The origin line is empty.
    #[error("line 1: empty origin")]
    EmptyOrigin,
    /// The checkpoint's origin is not the name of the key that signed it.
    #[error("line 1: origin is not this log's name")]
    OriginMismatch,
    /// The size line is not a canonical decimal u64 (digits only, no
    /// leading zero, no sign, at most 2^64 − 1).
    #[error("line 2: tree size is not a canonical decimal number")]
    BadSize,
    /// The root decodes to a length other than 32 bytes.
    #[error("line 3: root hash is {len} bytes, not 32")]
    RootLength {
        /// Bytes decoded.
        len: usize,
    },
    /// An empty extension line inside the checkpoint.
    #[error("line {line}: empty extension line")]
    EmptyExtensionLine {
        /// The line.
        line: usize,
    },
    /// A key name that C2SP signed-note does not allow.
    #[error("key name is invalid: {reason}")]
    BadName {
        /// What is wrong: empty, a space, a plus sign or a control character.
        reason: &'static str,
    },
    /// A verifier key that is not `<name>+<8 hex digits>+<base64 key>`.
    #[error("verifier key is not <name>+<key id>+<key>")]
    VerifierFormat,
    /// A verifier key for another algorithm than Ed25519.
    #[error("verifier key algorithm {alg} is not Ed25519 (1)")]
    UnknownAlgorithm {
        /// The algorithm byte found.
        alg: u8,
    },
    /// A verifier key whose public key is not 32 bytes.
    #[error("verifier public key is {len} bytes, not 32")]
    KeyLength {
        /// Bytes found after the algorithm byte.
        len: usize,
    },
    /// A verifier key whose key id does not match its name and key.
    #[error("verifier key id does not match its name and key")]
    KeyIdMismatch,
    /// The signing seed was refused.
    #[error("signing key seed refused")]
    BadSeed,
}

/// A checkpoint: the log's name (origin), its size and its root hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, the same as its key's name.
    pub origin: String,
    /// The number of leaves.
    pub size: u64,
    /// The RFC 6962 root of those leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The C2SP tlog-checkpoint body: `<origin>\n<size>\n<base64 root>\n`.
    /// It parses back with [`parse_body`](Self::parse_body) when the origin
    /// is a valid key name (as [`LogSigner::sign`] requires).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint body; extension lines after the root are
    /// accepted (each must be non-empty) and dropped.
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        check_text(text)?;
        let Some(text) = text.strip_suffix('\n') else {
            return Err(NoteError::MissingNewline);
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(NoteError::TooFewLines { lines: lines.len() });
        };
        if origin.is_empty() {
            return Err(NoteError::EmptyOrigin);
        }
        let size = parse_size(size)?;
        let root = STANDARD.decode(root).map_err(|_| NoteError::BadBase64 {
            field: "root",
            line: 3,
        })?;
        let root: Hash = root
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::RootLength { len: root.len() })?;
        if let Some(i) = extensions.iter().position(|line| line.is_empty()) {
            return Err(NoteError::EmptyExtensionLine { line: 4 + i });
        }
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
        })
    }
}

/// A canonical decimal u64: "0", or digits not starting with 0.
fn parse_size(text: &str) -> Result<u64, NoteError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return Err(NoteError::BadSize);
    }
    text.parse().map_err(|_| NoteError::BadSize)
}

/// Refuses text longer than [`MAX_NOTE_LEN`] or with a control character
/// other than newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.len() > MAX_NOTE_LEN {
        return Err(NoteError::TooLarge {
            len: text.len(),
            max: MAX_NOTE_LEN,
        });
    }
    for (i, line) in text.split('\n').enumerate() {
        if line.chars().any(|c| c.is_ascii_control()) {
            return Err(NoteError::ControlCharacter { line: i + 1 });
        }
    }
    Ok(())
}

/// Checks a key name as C2SP signed-note defines it: non-empty, no Unicode
/// space, no plus sign; and, as all note text, no control character.
fn check_name(name: &str) -> Result<(), NoteError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.chars().any(char::is_whitespace) {
        "contains a space"
    } else if name.contains('+') {
        "contains a plus sign"
    } else if name.chars().any(|c| c.is_control()) {
        "contains a control character"
    } else if name.len() > MAX_NOTE_LEN {
        "too long"
    } else {
        return Ok(());
    };
    Err(NoteError::BadName { reason })
}

/// The C2SP key id of an Ed25519 key: the first 4 bytes of
/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)`.
fn key_id(name: &str, public_key: &[u8; PUBLIC_KEY_LEN]) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ALG_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The log's signing key (Ed25519, from a 32-byte seed the server derives
/// from the master key). Debug redacts; seed zeroized.
pub struct LogSigner {
    name: String,
    seed: Zeroizing<[u8; 32]>,
    public_key: [u8; PUBLIC_KEY_LEN],
    key_id: [u8; 4],
}

impl LogSigner {
    /// A signer named `name` (a valid C2SP key name; the log's origin)
    /// with the Ed25519 key of `seed` (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let seed = Zeroizing::new(*seed);
        let public_key = Self::key_pair_of(&seed)?.public_key().as_ref().try_into();
        let public_key: [u8; PUBLIC_KEY_LEN] = public_key.map_err(|_| NoteError::BadSeed)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &public_key),
            seed,
            public_key,
        })
    }

    /// Expands the seed into ring's key pair (see the module doc for why
    /// this happens per signature).
    fn key_pair_of(seed: &[u8; 32]) -> Result<Ed25519KeyPair, NoteError> {
        Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| NoteError::BadSeed)
    }

    /// The same key under another name (a restored log's new origin).
    pub fn renamed(&self, name: &str) -> Result<Self, NoteError> {
        Self::from_seed(name, &self.seed)
    }

    /// The public half: what verifiers need, published as its `Display` text.
    pub fn verifier(&self) -> LogVerifier {
        LogVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.public_key,
        }
    }

    /// The signed note text of `checkpoint` (origin must equal name):
    /// the body, a blank line and one signature line.
    ///
    /// Refuses with [`NoteError::OriginMismatch`] a checkpoint whose origin
    /// is not this signer's name, so that a malformed origin (a newline, a
    /// space) can never be signed.
    pub fn sign(&self, checkpoint: &Checkpoint) -> Result<String, NoteError> {
        if checkpoint.origin != self.name {
            return Err(NoteError::OriginMismatch);
        }
        let body = checkpoint.body();
        let key_pair = Self::key_pair_of(&self.seed)?;
        let signature = key_pair.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(4 + SIGNATURE_LEN);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(signature.as_ref());
        Ok(format!(
            "{body}\n{SIG_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

impl fmt::Debug for LogSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSigner")
            .field("name", &self.name)
            .field("key_id", &hex8(&self.key_id))
            .field("seed", &"[REDACTED]")
            .finish()
    }
}

/// Lowercase hex of a key id.
fn hex8(id: &[u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(*id))
}

/// The log's public key: checks signed checkpoints. Its `Display` is the
/// C2SP verifier key text `<name>+<key id hex>+<base64(0x01 ‖ key)>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; PUBLIC_KEY_LEN],
}

impl LogVerifier {
    /// Parses the verifier key text; refuses another algorithm, a wrong
    /// length and a key id that does not match the name and key.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        if text.len() > MAX_NOTE_LEN {
            return Err(NoteError::TooLarge {
                len: text.len(),
                max: MAX_NOTE_LEN,
            });
        }
        // The name has no '+'; the base64 key may.
        let mut parts = text.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::VerifierFormat);
        };
        check_name(name)?;
        if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NoteError::VerifierFormat);
        }
        let id = u32::from_str_radix(id, 16)
            .map_err(|_| NoteError::VerifierFormat)?
            .to_be_bytes();
        let key = STANDARD.decode(key).map_err(|_| NoteError::BadBase64 {
            field: "public key",
            line: 1,
        })?;
        let Some((&alg, public_key)) = key.split_first() else {
            return Err(NoteError::KeyLength { len: 0 });
        };
        if alg != ALG_ED25519 {
            return Err(NoteError::UnknownAlgorithm { alg });
        }
        let public_key: [u8; PUBLIC_KEY_LEN] =
            public_key.try_into().map_err(|_| NoteError::KeyLength {
                len: public_key.len(),
            })?;
        if key_id(name, &public_key) != id {
            return Err(NoteError::KeyIdMismatch);
        }
        Ok(Self {
            name: name.to_owned(),
            key_id: id,
            public_key,
        })
    }

    /// The key's name: the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same public key under another name (an origin of the same log
    /// before or after a restore, see [`crate::restore`]).
    pub fn renamed(&self, name: &str) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            key_id: key_id(name, &self.public_key),
            public_key: self.public_key,
        })
    }

    /// Whether `other` is the same public key (under any name).
    pub fn same_key(&self, other: &LogVerifier) -> bool {
        self.public_key == other.public_key
    }

    /// Checks the note's signature by this key (other signers' lines are
    /// ignored; at least ours must be present and valid) and parses the
    /// checkpoint, whose origin must be this key's name.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        check_text(note)?;
        if !note.ends_with('\n') {
            return Err(NoteError::MissingNewline);
        }
        // The signatures follow the last blank line (signature lines are
        // never empty); the signed text keeps its final newline.
        let Some(split) = note.rfind("\n\n") else {
            return Err(NoteError::MissingBlankLine);
        };
        let (body, signatures) = (&note[..split + 1], &note[split + 2..]);
        if signatures.is_empty() {
            return Err(NoteError::NotSigned);
        }
        let first_line = body.matches('\n').count() + 2;
        let lines: Vec<&str> = signatures
            .strip_suffix('\n')
            .unwrap_or(signatures)
            .split('\n')
            .collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures {
                max: MAX_SIGNATURES,
            });
        }
        let mut ours = 0;
        let mut wrong_id = None;
        for (i, line) in lines.iter().enumerate() {
            let number = first_line + i;
            let (name, blob) = parse_signature_line(line, number)?;
            if name != self.name {
                continue;
            }
            let (id, signature) = blob.split_at(4);
            if id != self.key_id {
                wrong_id.get_or_insert(number);
                continue;
            }
            if signature.len() != SIGNATURE_LEN {
                return Err(NoteError::SignatureLength {
                    line: number,
                    len: signature.len(),
                });
            }
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(body.as_bytes(), signature)
                .map_err(|_| NoteError::BadSignature)?;
            ours += 1;
        }
        if ours == 0 {
            return Err(match wrong_id {
                Some(line) => NoteError::WrongKeyId { line },
                None => NoteError::NotSigned,
            });
        }
        let checkpoint = Checkpoint::parse_body(body)?;
        if checkpoint.origin != self.name {
            return Err(NoteError::OriginMismatch);
        }
        Ok(checkpoint)
    }
}

/// Splits `— <name> <base64>` into the name and the decoded signature
/// (key id and signature, at least 5 bytes).
fn parse_signature_line(line: &str, number: usize) -> Result<(&str, Vec<u8>), NoteError> {
    let malformed = NoteError::MalformedSignatureLine { line: number };
    let rest = line.strip_prefix(SIG_PREFIX).ok_or(malformed.clone())?;
    let (name, encoded) = rest.split_once(' ').ok_or(malformed.clone())?;
    if check_name(name).is_err() {
        return Err(malformed);
    }
    let blob = STANDARD.decode(encoded).map_err(|_| NoteError::BadBase64 {
        field: "signature",
        line: number,
    })?;
    if blob.len() < 5 {
        return Err(malformed);
    }
    Ok((name, blob))
}

impl fmt::Display for LogVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = Vec::with_capacity(1 + PUBLIC_KEY_LEN);
        key.push(ALG_ED25519);
        key.extend_from_slice(&self.public_key);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex8(&self.key_id),
            STANDARD.encode(key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1 TEST 1: secret key (seed) and public key.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const NAME: &str = "audit.fugo.example/log";

    fn unhex<const N: usize>(text: &str) -> [u8; N] {
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    fn signer() -> LogSigner {
        LogSigner::from_seed(NAME, &unhex(RFC8032_SEED)).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: NAME.to_owned(),
            size: 1234,
            root: [7; 32],
        }
    }

    /// A note over any body, signed with ring directly: lets the tests
    /// reach the body checks behind a valid signature.
    fn sign_raw(seed: &[u8; 32], name: &str, body: &str) -> String {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        let mut blob = key_id(name, &public).to_vec();
        blob.extend_from_slice(pair.sign(body.as_bytes()).as_ref());
        format!("{body}\n\u{2014} {name} {}\n", STANDARD.encode(blob))
    }

    #[test]
    fn sign_then_open_round_trips() {
        let signer = signer();
        let note = signer.sign(&checkpoint()).unwrap();
        assert!(note.starts_with(&checkpoint().body()));
        assert_eq!(signer.verifier().open(&note), Ok(checkpoint()));
        // Every size, including the extremes, survives.
        for size in [0, 1, 10, u64::MAX] {
            let c = Checkpoint {
                size,
                ..checkpoint()
            };
            assert_eq!(signer.verifier().open(&signer.sign(&c).unwrap()), Ok(c));
        }
    }

    #[test]
    fn body_is_the_c2sp_layout() {
        let c = Checkpoint {
            origin: "example.com/log".to_owned(),
            size: 0,
            root: crate::merkle::empty_root(),
        };
        assert_eq!(
            c.body(),
            "example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
        );
        assert_eq!(Checkpoint::parse_body(&c.body()), Ok(c));
    }

    #[test]
    fn verifier_key_is_the_rfc8032_public_key() {
        let verifier = signer().verifier();
        assert_eq!(verifier.public_key, unhex::<32>(RFC8032_PUBLIC));
        let text = verifier.to_string();
        let mut key = vec![0x01];
        key.extend_from_slice(&unhex::<32>(RFC8032_PUBLIC));
        let id = &Sha256::digest([NAME.as_bytes(), b"\n\x01", &key[1..]].concat())[..4];
        let id = format!("{:02x}{:02x}{:02x}{:02x}", id[0], id[1], id[2], id[3]);
        assert_eq!(text, format!("{NAME}+{id}+{}", STANDARD.encode(&key)));
        assert_eq!(LogVerifier::parse(&text), Ok(verifier.clone()));
        // The key id may come in upper case.
        let upper = format!("{NAME}+{}+{}", id.to_uppercase(), STANDARD.encode(&key));
        assert_eq!(LogVerifier::parse(&upper), Ok(verifier.clone()));
        assert_eq!(verifier.name(), NAME);
    }

    #[test]
    fn debug_redacts_the_seed() {
        let seed: [u8; 32] = unhex(RFC8032_SEED);
        let shown = format!("{:?}", signer());
        assert!(shown.contains("[REDACTED]"), "{shown}");
        assert!(!shown.contains(&RFC8032_SEED[..8]), "{shown}");
        assert!(!shown.contains(&STANDARD.encode(seed)[..8]), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", &seed[..4])[1..10]),
            "{shown}"
        );
    }

    #[test]
    fn signing_refuses_another_origin() {
        let c = Checkpoint {
            origin: format!("{NAME}\n99"),
            ..checkpoint()
        };
        assert_eq!(signer().sign(&c), Err(NoteError::OriginMismatch));
    }

    #[test]
    fn key_names_follow_c2sp() {
        for (name, reason) in [
            ("", "empty"),
            ("a b", "contains a space"),
            ("a\u{3000}b", "contains a space"),
            ("a+b", "contains a plus sign"),
            ("a\u{7f}b", "contains a control character"),
        ] {
            assert_eq!(
                LogSigner::from_seed(name, &[0; 32]).map(|_| ()),
                Err(NoteError::BadName { reason }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn other_signers_are_ignored_but_ours_is_required() {
        let ours = signer();
        let witness = LogSigner::from_seed("witness.example", &[9; 32]).unwrap();
        let note = ours.sign(&checkpoint()).unwrap();
        let witness_line = witness.sign(&Checkpoint {
            origin: "witness.example".to_owned(),
            ..checkpoint()
        });
        let witness_line = witness_line.unwrap();
        let witness_line = witness_line.lines().last().unwrap();
        let cosigned = format!("{note}{witness_line}\n");
        assert_eq!(ours.verifier().open(&cosigned), Ok(checkpoint()));
        let (body, our_line) = note.rsplit_once("\n\n").unwrap();
        let first = format!("{body}\n\n{witness_line}\n{our_line}");
        assert_eq!(ours.verifier().open(&first), Ok(checkpoint()));
        // Only the witness: not ours.
        let only_witness = format!("{body}\n\n{witness_line}\n");
        assert_eq!(
            ours.verifier().open(&only_witness),
            Err(NoteError::NotSigned)
        );
        assert_eq!(
            ours.verifier().open(&format!("{body}\n\n")),
            Err(NoteError::NotSigned)
        );
    }

    #[test]
    fn a_key_of_the_same_name_is_a_wrong_key_id() {
        let impostor = LogSigner::from_seed(NAME, &[1; 32]).unwrap();
        let note = impostor.sign(&checkpoint()).unwrap();
        assert_eq!(
            signer().verifier().open(&note),
            Err(NoteError::WrongKeyId { line: 5 })
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let note = signer().sign(&checkpoint()).unwrap();
        let verifier = signer().verifier();
        let bigger = note.replacen("\n1234\n", "\n1235\n", 1);
        assert_eq!(verifier.open(&bigger), Err(NoteError::BadSignature));
        // Flip one bit of the signature (not the key id).
        let (body, line) = note.rsplit_once("\n\n").unwrap();
        let encoded = line.trim_end().rsplit_once(' ').unwrap().1;
        let mut blob = STANDARD.decode(encoded).unwrap();
        blob[40] ^= 0x10;
        let flipped = format!("{body}\n\n\u{2014} {NAME} {}\n", STANDARD.encode(&blob));
        assert_eq!(verifier.open(&flipped), Err(NoteError::BadSignature));
        blob.pop();
        let short = format!("{body}\n\n\u{2014} {NAME} {}\n", STANDARD.encode(&blob));
        assert_eq!(
            verifier.open(&short),
            Err(NoteError::SignatureLength { line: 5, len: 63 })
        );
    }

    /// The note with the padding of its signature's base64 removed.
    fn unpadded_signature(note: &str) -> String {
        let (head, line) = note.trim_end().rsplit_once('\n').unwrap();
        format!("{head}\n{}\n", line.trim_end_matches('='))
    }

    #[test]
    fn malformed_notes_are_named() {
        let verifier = signer().verifier();
        let note = signer().sign(&checkpoint()).unwrap();
        let cases: Vec<(String, NoteError)> = vec![
            (
                format!("{note}{}", "x".repeat(MAX_NOTE_LEN)),
                NoteError::TooLarge {
                    len: note.len() + MAX_NOTE_LEN,
                    max: MAX_NOTE_LEN,
                },
            ),
            (
                note.replace('\n', "\r\n"),
                NoteError::ControlCharacter { line: 1 },
            ),
            (
                note.replacen("1234", "12\t34", 1),
                NoteError::ControlCharacter { line: 2 },
            ),
            (note.trim_end().to_owned(), NoteError::MissingNewline),
            (note.replacen("\n\n", "\n", 1), NoteError::MissingBlankLine),
            (
                note.replacen("\u{2014} ", "- ", 1),
                NoteError::MalformedSignatureLine { line: 5 },
            ),
            (
                note.replacen(&format!("{NAME} "), NAME, 1),
                NoteError::MalformedSignatureLine { line: 5 },
            ),
            (
                unpadded_signature(&note),
                NoteError::BadBase64 {
                    field: "signature",
                    line: 5,
                },
            ),
            (
                format!("{note}\u{2014} other !!!!\n"),
                NoteError::BadBase64 {
                    field: "signature",
                    line: 6,
                },
            ),
            (
                format!("{note}{}", "\u{2014} w AAAAAAA=\n".repeat(MAX_SIGNATURES)),
                NoteError::TooManySignatures {
                    max: MAX_SIGNATURES,
                },
            ),
            (
                format!("{note}\u{2014} w AAAA\n"),
                NoteError::MalformedSignatureLine { line: 6 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(verifier.open(&text), Err(want.clone()), "{text:?}");
            // The message names the problem, never the text.
            assert!(!want.to_string().contains("1234"));
        }
    }

    #[test]
    fn bodies_behind_a_valid_signature_are_still_checked() {
        let seed: [u8; 32] = unhex(RFC8032_SEED);
        let verifier = signer().verifier();
        let root = STANDARD.encode([7u8; 32]);
        let short_root = STANDARD.encode([7u8; 31]);
        let cases = [
            (format!("{NAME}\n01\n{root}\n"), NoteError::BadSize),
            (format!("{NAME}\n+1\n{root}\n"), NoteError::BadSize),
            (format!("{NAME}\n-1\n{root}\n"), NoteError::BadSize),
            (format!("{NAME}\n 1\n{root}\n"), NoteError::BadSize),
            (format!("{NAME}\n\n{root}\n"), NoteError::BadSize),
            (
                format!("{NAME}\n18446744073709551616\n{root}\n"),
                NoteError::BadSize,
            ),
            (
                format!("{NAME}\n1\n{short_root}\n"),
                NoteError::RootLength { len: 31 },
            ),
            (
                format!("{NAME}\n1\n{}\n", root.trim_end_matches('=')),
                NoteError::BadBase64 {
                    field: "root",
                    line: 3,
                },
            ),
            (
                // 32 bytes end in one padding char; the last data char
                // carries 2 unused bits, which must be zero.
                format!("{NAME}\n1\n{}\n", root.replacen("c=", "d=", 1)),
                NoteError::BadBase64 {
                    field: "root",
                    line: 3,
                },
            ),
            (format!("{NAME}\n1\n"), NoteError::TooFewLines { lines: 2 }),
            (format!("\n1\n{root}\n"), NoteError::EmptyOrigin),
            (format!("other\n1\n{root}\n"), NoteError::OriginMismatch),
            (
                format!("{NAME}\n1\n{root}\n\next\n"),
                NoteError::EmptyExtensionLine { line: 4 },
            ),
        ];
        assert!(root.ends_with("c="), "{root}");
        for (body, want) in cases {
            let note = sign_raw(&seed, NAME, &body);
            assert_eq!(verifier.open(&note), Err(want), "{body:?}");
        }
        // Extension lines are accepted and dropped.
        let note = sign_raw(&seed, NAME, &format!("{NAME}\n5\n{root}\nx-ext 1\nmore\n"));
        assert_eq!(
            verifier.open(&note),
            Ok(Checkpoint {
                size: 5,
                ..checkpoint()
            })
        );
    }

    #[test]
    fn malformed_verifier_keys_are_named() {
        let good = signer().verifier().to_string();
        let (name, rest) = good.split_once('+').unwrap();
        let (id, key) = rest.split_once('+').unwrap();
        let mut raw = STANDARD.decode(key).unwrap();
        raw[0] = 0x02;
        let other_alg = STANDARD.encode(&raw);
        raw[0] = 0x01;
        raw.push(0);
        let long = STANDARD.encode(&raw);
        let cases = [
            (format!("{name}+{id}"), NoteError::VerifierFormat),
            (
                format!("{good}+x"),
                NoteError::BadBase64 {
                    field: "public key",
                    line: 1,
                },
            ),
            (
                format!("{name}+{}+{key}", &id[..7]),
                NoteError::VerifierFormat,
            ),
            (
                format!("{name}+{}g+{key}", &id[..7]),
                NoteError::VerifierFormat,
            ),
            (
                format!("+{id}+{key}"),
                NoteError::BadName { reason: "empty" },
            ),
            (
                format!("{name}+{id}+{}", &key[..key.len() - 1]),
                NoteError::BadBase64 {
                    field: "public key",
                    line: 1,
                },
            ),
            (
                format!("{name}+{id}+{other_alg}"),
                NoteError::UnknownAlgorithm { alg: 2 },
            ),
            (
                format!("{name}+{id}+{long}"),
                NoteError::KeyLength { len: 33 },
            ),
            (format!("{name}+{id}+"), NoteError::KeyLength { len: 0 }),
            (format!("{name}x+{id}+{key}"), NoteError::KeyIdMismatch),
            (format!("{name}+00000000+{key}"), NoteError::KeyIdMismatch),
        ];
        for (text, want) in cases {
            assert_eq!(LogVerifier::parse(&text), Err(want), "{text:?}");
        }
    }
}
