//! Sealed linkage tokens: how agency A asks agency B about a person without
//! either learning the other's code.
//!
//! fugo seals, for each person, the person handle and the request context
//! (serial, requester, affair, data items, expiry, optional non-disclosure
//! date) under a key that only the addressee's redemption can use. The
//! requester carries the token to the addressee but cannot read it; a fresh
//! random nonce makes every token unlinkable to every other.
//!
//! ```text
//! token  = header ‖ nonce (12) ‖ AES-256-GCM(K_seal, nonce, claims, AAD) ‖ tag (16)
//! AAD    = "fugo/v1/token" ‖ header (every byte before the nonce)
//!
//! format 3 (sealed today):
//! header = 0x03 ‖ generation g (u16 BE, ≥ 1) ‖ window w (u32 BE) ‖ key index k (u32 BE) ‖ len(b) (1) ‖ b
//! K_seal(g, b, w, k) = HKDF-Expand(PRK_g, "fugo/v1/seal/" ‖ b ‖ "/" ‖ decimal(w) ‖ "/" ‖ decimal(k), 32)
//!   (PRK_g: the PRK of master-key generation g; the label is format 2's)
//!
//! format 2 (opened only, as generation 1: tokens sealed before format 3):
//! header = 0x02 ‖ window w (u32 BE) ‖ key index k (u32 BE) ‖ len(b) (1) ‖ b
//! K_seal(b, w, k) = HKDF-Expand(PRK_1, "fugo/v1/seal/" ‖ b ‖ "/" ‖ decimal(w) ‖ "/" ‖ decimal(k), 32)
//!
//! format 1 (opened only, as generation 1: tokens sealed before format 2):
//! header = 0x01 ‖ window w (u32 BE) ‖ len(b) (1) ‖ b
//! K_seal(b, w) = HKDF-Expand(PRK, "fugo/v1/seal/" ‖ b ‖ "/" ‖ decimal(w), 32)
//! ```
//!
//! **Why key windows and key indices.** With random 96-bit nonces, AES-GCM
//! should see at most about 2^32 messages per key (at 2^32 messages the
//! chance of any nonce repeating is about 2^-33). One busy addressee can
//! receive billions of tokens over the years, so the key is per addressee,
//! per day (window w = unix time div 86,400) *and* per key index k: the
//! exchange counts the tokens each key seals and moves to a fresh index
//! before [`MAX_SEALS_PER_KEY`] (see `exchange::seal_keys`). A [`KeyName`]
//! (window and index) says which key sealed a token; it is in the clear and
//! authenticated. Windows older than the longest rule lifetime are refused
//! at redemption, by the caller.
//!
//! Nonces, serials, key indices and the clock come from the caller: this
//! module does no I/O and draws no randomness, so it is deterministic under
//! test.

use std::fmt;

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::agency::{AffairId, AgencyId, ItemId};
use crate::code::PersonHandle;
use crate::generation::{Generation, GenerationError};
use crate::hex;
use crate::keys::KeyHierarchy;

/// The token format sealing writes: generation, window and key index in the
/// header.
pub const TOKEN_FORMAT: u8 = FORMAT_GENERATIONAL;
/// Format 1: the window alone names the key. Opened, never sealed, so
/// tokens sealed before format 2 still redeem.
pub const FORMAT_WINDOW: u8 = 1;
/// Format 2: the window and a key index name the key (generation 1).
pub const FORMAT_INDEXED: u8 = 2;
/// Format 3: the generation, the window and a key index name the key.
pub const FORMAT_GENERATIONAL: u8 = 3;
/// Most tokens one sealing key may seal: 2^31, half NIST SP 800-38D's 2^32
/// for random 96-bit nonces, so that even two processes that drew the same
/// key index (SPEC §7.3) stay within 2^32 messages under that key together.
pub const MAX_SEALS_PER_KEY: u64 = 1 << 31;
/// Length of a key window, in seconds (one UTC day).
pub const WINDOW_SECONDS: u64 = 86_400;
pub use crate::keys::INFO_SEAL_PREFIX;
/// Domain label at the start of the associated data.
const AAD_LABEL: &[u8] = b"fugo/v1/token";
/// Most data items one token may name.
pub const MAX_ITEMS: usize = 64;

/// Length of a token nonce, in bytes (96-bit GCM nonce).
pub const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A key window: whole days since 1970-01-01 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window(u32);

impl Window {
    /// The window that contains `unix_seconds`.
    pub fn containing(unix_seconds: u64) -> Self {
        Window(u32::try_from(unix_seconds / WINDOW_SECONDS).unwrap_or(u32::MAX))
    }

    /// A window by number.
    pub fn new(number: u32) -> Self {
        Window(number)
    }

    /// The window number.
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Which key of an addressee sealed a token: its master-key generation
/// (named from format 3 on; formats 1 and 2 are generation 1), its window
/// and, from format 2 on, its key index within the window. Public (it is
/// in the token header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName {
    format: u8,
    generation: Generation,
    window: Window,
    index: Option<u32>,
}

impl KeyName {
    /// Key `index` of `window` in `generation`: the keys sealing uses
    /// (format 3).
    pub fn generational(generation: Generation, window: Window, index: u32) -> Self {
        KeyName {
            format: FORMAT_GENERATIONAL,
            generation,
            window,
            index: Some(index),
        }
    }

    /// Key `index` of `window` as format-2 tokens name it (generation 1;
    /// opened only).
    pub fn indexed(window: Window, index: u32) -> Self {
        KeyName {
            format: FORMAT_INDEXED,
            generation: Generation::FIRST,
            window,
            index: Some(index),
        }
    }

    /// The one key of `window` that format-1 tokens were sealed with
    /// (generation 1; opened only).
    pub fn format1(window: Window) -> Self {
        KeyName {
            format: FORMAT_WINDOW,
            generation: Generation::FIRST,
            window,
            index: None,
        }
    }

    /// The master-key generation of the key.
    pub fn generation(self) -> Generation {
        self.generation
    }

    /// The key window.
    pub fn window(self) -> Window {
        self.window
    }

    /// The key index within the window; `None` for format 1.
    pub fn index(self) -> Option<u32> {
        self.index
    }

    /// The token format whose header names this key.
    pub fn format(self) -> u8 {
        self.format
    }
}

/// A processing serial (処理通番): 128 random bits naming one exchange.
/// Public: both agencies quote it, and it reveals neither volume nor order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Serial([u8; 16]);

impl Serial {
    /// A serial from 16 random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Serial(bytes)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

/// What a token says. Only fugo ever sees it in the clear.
pub struct Claims {
    /// The person.
    pub handle: PersonHandle,
    /// The exchange's serial.
    pub serial: Serial,
    /// The agency that asked.
    pub requester: AgencyId,
    /// The affair it acts under.
    pub affair: AffairId,
    /// The data items it asks for.
    pub items: Vec<ItemId>,
    /// Unix time after which the token is void.
    pub expires_at: u64,
    /// Unix time until which the person may not be shown this exchange
    /// (不開示), if the rule allows one.
    pub non_disclosure_until: Option<u64>,
}

impl fmt::Debug for Claims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claims")
            .field("handle", &self.handle)
            .field("serial", &self.serial)
            .field("requester", &self.requester)
            .field("affair", &self.affair)
            .field("items", &self.items)
            .field("expires_at", &self.expires_at)
            .field("non_disclosure_until", &self.non_disclosure_until)
            .finish()
    }
}

/// A sealed token: opaque bytes, safe to carry over any channel.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedToken(Vec<u8>);

impl SealedToken {
    /// Wraps bytes received from a caller; nothing is checked until opened.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SealedToken(bytes)
    }

    /// The token bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The clear header: format, key name and addressee.
    pub fn header(&self) -> Result<TokenHeader, TokenError> {
        TokenHeader::read(&self.0).map(|(header, _)| header)
    }
}

impl fmt::Debug for SealedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedToken({} bytes)", self.0.len())
    }
}

/// The part of a token anyone can read: which key opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHeader {
    /// The key that sealed it (which also gives the format).
    pub key: KeyName,
    /// The only agency that may redeem it.
    pub addressee: AgencyId,
}

impl TokenHeader {
    /// Format version.
    pub fn format(&self) -> u8 {
        self.key.format()
    }

    /// Reads the header; returns it and its length in bytes.
    fn read(bytes: &[u8]) -> Result<(Self, usize), TokenError> {
        let (key, name) = peek(bytes)?;
        let text = std::str::from_utf8(name).map_err(|_| TokenError::Malformed)?;
        let addressee = AgencyId::new(text).map_err(|_| TokenError::Malformed)?;
        let length = fixed_header_len(key.format()) + name.len();
        Ok((TokenHeader { key, addressee }, length))
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(self.format());
        if self.format() == FORMAT_GENERATIONAL {
            out.extend_from_slice(&self.key.generation.get().to_be_bytes());
        }
        out.extend_from_slice(&self.key.window.0.to_be_bytes());
        if let Some(index) = self.key.index {
            out.extend_from_slice(&index.to_be_bytes());
        }
        push_short(out, self.addressee.as_str().as_bytes());
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token: too short or a garbled header.
    #[error("malformed token")]
    Malformed,
    /// A format version this build does not know.
    #[error("unknown token format")]
    UnknownFormat,
    /// The token is addressed to another agency.
    #[error("token is addressed to another agency")]
    WrongAddressee,
    /// The token names another key of the same addressee than this one:
    /// another key window or, in the same window, another key index or
    /// format. (Redemption picks the key the header names, so it never
    /// sees this.)
    #[error("token was sealed under another key window or key index")]
    WrongWindow,
    /// Authentication failed: forged, altered, or sealed under another key.
    /// Opaque on purpose.
    #[error("token failed authentication")]
    Forged,
    /// More than [`MAX_ITEMS`] data items.
    #[error("a token names at most 64 data items")]
    TooManyItems,
    /// The claims are beyond what AES-GCM can seal in one message.
    #[error("token too large to seal")]
    TooLarge,
}

/// The AES-256-GCM key that seals tokens to one addressee under one key
/// name, with that key's token header and associated data, which never
/// change. It does not count what it seals: the exchange does.
pub struct SealKey {
    addressee: AgencyId,
    name: KeyName,
    cipher: Aes256Gcm,
    header: Vec<u8>,
    aad: Vec<u8>,
}

/// The part of the claims every token of one seal batch shares (expiry,
/// non-disclosure date, requester, affair, items), encoded once per batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedClaims(Vec<u8>);

/// The shared part of a token's claims, decoded: the request context the
/// provider learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The agency that asked.
    pub requester: AgencyId,
    /// The affair it acts under.
    pub affair: AffairId,
    /// The data items it asks for.
    pub items: Vec<ItemId>,
    /// Unix time after which the token is void.
    pub expires_at: u64,
    /// Unix time until which the person may not see the exchange, if any.
    pub non_disclosure_until: Option<u64>,
}

/// An opened token: the person's part, and the shared part still encoded
/// (a batch of tokens from one seal shares it, so it is decoded once).
#[derive(Debug)]
pub struct OpenedToken {
    /// The person.
    pub handle: PersonHandle,
    /// The exchange's serial.
    pub serial: Serial,
    /// The request context, encoded.
    pub shared: SharedClaims,
}

impl SharedClaims {
    /// Encodes the shared part; refuses more than [`MAX_ITEMS`] items.
    pub fn new(
        requester: &AgencyId,
        affair: &AffairId,
        items: &[ItemId],
        expires_at: u64,
        non_disclosure_until: Option<u64>,
    ) -> Result<Self, TokenError> {
        if items.len() > MAX_ITEMS {
            return Err(TokenError::TooManyItems);
        }
        let mut out = Vec::with_capacity(32 + 8 * items.len());
        out.extend_from_slice(&expires_at.to_be_bytes());
        out.extend_from_slice(&non_disclosure_until.unwrap_or(0).to_be_bytes());
        push_short(&mut out, requester.as_str().as_bytes());
        push_short(&mut out, affair.as_str().as_bytes());
        out.push(items.len() as u8);
        for item in items {
            push_short(&mut out, item.as_str().as_bytes());
        }
        Ok(SharedClaims(out))
    }

    /// Decodes the request context; `None` if the bytes are not one (this
    /// includes more than [`MAX_ITEMS`] items, which `new` refuses to encode).
    pub fn decode(&self) -> Option<RequestContext> {
        let mut fields = Fields(&self.0);
        let expires_at = u64::from_be_bytes(fields.array()?);
        let non_disclosure_until = match u64::from_be_bytes(fields.array()?) {
            0 => None,
            until => Some(until),
        };
        let requester = AgencyId::new(fields.short()?).ok()?;
        let affair = AffairId::new(fields.short()?).ok()?;
        let count = usize::from(fields.take(1)?[0]);
        // What opens is exactly what `new` could have sealed.
        if count > MAX_ITEMS {
            return None;
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(ItemId::new(fields.short()?).ok()?);
        }
        if !fields.0.is_empty() {
            return None;
        }
        Some(RequestContext {
            requester,
            affair,
            items,
            expires_at,
            non_disclosure_until,
        })
    }
}

impl fmt::Debug for SealKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealKey({}, generation {}, window {}, index {:?}, [REDACTED])",
            self.addressee, self.name.generation, self.name.window.0, self.name.index
        )
    }
}

impl SealKey {
    /// K_seal(addressee, name), ready to seal and open. A format-1 name
    /// gives the key of format-1 tokens (which the exchange only opens).
    ///
    /// `keys` must be the hierarchy of the generation `name` names, or the
    /// answer is [`GenerationError::Mismatch`].
    pub fn new(
        keys: &KeyHierarchy,
        addressee: &AgencyId,
        name: KeyName,
    ) -> Result<SealKey, GenerationError> {
        if keys.generation() != name.generation {
            return Err(GenerationError::Mismatch {
                expected: name.generation,
                found: keys.generation(),
            });
        }
        let key = keys.seal_key_bytes(addressee, name.window.0, name.index);
        let mut header =
            Vec::with_capacity(fixed_header_len(name.format()) + addressee.as_str().len());
        TokenHeader {
            key: name,
            addressee: addressee.clone(),
        }
        .write(&mut header);
        Ok(SealKey {
            addressee: addressee.clone(),
            name,
            cipher: Aes256Gcm::new((&*key).into()),
            aad: associated_data(&header),
            header,
        })
    }
}

impl SealKey {
    /// The key window this key seals in.
    pub fn window(&self) -> Window {
        self.name.window
    }

    /// This key's name (window and index).
    pub fn name(&self) -> KeyName {
        self.name
    }

    /// Seals `claims` with a fresh random `nonce` (the caller draws it from
    /// a CSPRNG; never reuse one).
    pub fn seal(&self, claims: &Claims, nonce: [u8; NONCE_LEN]) -> Result<SealedToken, TokenError> {
        let shared = SharedClaims::new(
            &claims.requester,
            &claims.affair,
            &claims.items,
            claims.expires_at,
            claims.non_disclosure_until,
        )?;
        self.seal_person(&claims.handle, claims.serial, &shared, nonce)
    }

    /// Seals one person's token of a batch: `handle` and `serial` are the
    /// person's, `shared` the batch's (so it is encoded once, not per token).
    pub fn seal_person(
        &self,
        handle: &PersonHandle,
        serial: Serial,
        shared: &SharedClaims,
        nonce: [u8; NONCE_LEN],
    ) -> Result<SealedToken, TokenError> {
        let mut out =
            Vec::with_capacity(self.header.len() + NONCE_LEN + 32 + shared.0.len() + TAG_LEN);
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&nonce);
        let start = out.len();
        // The plaintext goes straight into the token buffer and is encrypted
        // where it lies, so no clear copy of the handle outlives this call.
        out.extend_from_slice(handle.expose_bytes());
        out.extend_from_slice(&serial.0);
        out.extend_from_slice(&shared.0);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &self.aad, (&mut out[start..]).into())
            // Encryption fails only past GCM's 64 GiB message limit.
            .map_err(|_| TokenError::TooLarge)?;
        out.extend_from_slice(&tag);
        Ok(SealedToken(out))
    }

    /// Opens a token sealed under this key.
    pub fn open(&self, token: &SealedToken) -> Result<Claims, TokenError> {
        self.open_bytes(&token.0)
    }

    /// Opens token bytes sealed under this key, without copying them.
    pub fn open_bytes(&self, token: &[u8]) -> Result<Claims, TokenError> {
        let opened = self.open_parts(token)?;
        let context = opened.shared.decode().ok_or(TokenError::Forged)?;
        Ok(Claims {
            handle: opened.handle,
            serial: opened.serial,
            requester: context.requester,
            affair: context.affair,
            items: context.items,
            expires_at: context.expires_at,
            non_disclosure_until: context.non_disclosure_until,
        })
    }

    /// Opens token bytes into the person's part and the still-encoded
    /// shared part.
    pub fn open_parts(&self, token: &[u8]) -> Result<OpenedToken, TokenError> {
        // The header of every token this key opens is exactly `self.header`;
        // anything else is parsed only to say what is wrong.
        let Some(rest) = token.strip_prefix(self.header.as_slice()) else {
            let (header, _) = TokenHeader::read(token)?;
            // Only the key name can differ now (window, index or format).
            return Err(if header.addressee != self.addressee {
                TokenError::WrongAddressee
            } else {
                TokenError::WrongWindow
            });
        };
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(TokenError::Malformed);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let aad = &self.aad;
        let plaintext = Zeroizing::new(
            self.cipher
                .decrypt(&Nonce::from(nonce_bytes), Payload { msg: sealed, aad })
                .map_err(|_| TokenError::Forged)?,
        );
        // Authentic bytes that do not split can only come from a bug or a
        // stolen key; either way the token is refused the same way.
        let mut fields = Fields(&plaintext);
        let handle = PersonHandle::from_bytes(
            self.name.generation,
            fields.array().ok_or(TokenError::Forged)?,
        );
        let serial = Serial(fields.array().ok_or(TokenError::Forged)?);
        Ok(OpenedToken {
            handle,
            serial,
            shared: SharedClaims(fields.0.to_vec()),
        })
    }
}

/// The key name and addressee of token bytes, read without allocating:
/// enough to pick the key and refuse a token addressed to someone else.
/// Reads formats 1 and 2; any other first byte is [`TokenError::UnknownFormat`].
pub fn peek(token: &[u8]) -> Result<(KeyName, &[u8]), TokenError> {
    let (&format, mut rest) = token.split_first().ok_or(TokenError::Malformed)?;
    if !(FORMAT_WINDOW..=FORMAT_GENERATIONAL).contains(&format) {
        return Err(TokenError::UnknownFormat);
    }
    let generation = if format == FORMAT_GENERATIONAL {
        let (head, tail) = rest.split_first_chunk::<2>().ok_or(TokenError::Malformed)?;
        rest = tail;
        Generation::new(u16::from_be_bytes(*head)).map_err(|_| TokenError::Malformed)?
    } else {
        Generation::FIRST
    };
    let window = Window(read_u32(&mut rest)?);
    let index = if format == FORMAT_WINDOW {
        None
    } else {
        Some(read_u32(&mut rest)?)
    };
    let (&length, rest) = rest.split_first().ok_or(TokenError::Malformed)?;
    let addressee = rest
        .get(..usize::from(length))
        .ok_or(TokenError::Malformed)?;
    let name = KeyName {
        format,
        generation,
        window,
        index,
    };
    Ok((name, addressee))
}

/// A big-endian u32 from the front of `bytes`, which then start after it.
fn read_u32(bytes: &mut &[u8]) -> Result<u32, TokenError> {
    let (head, tail) = bytes
        .split_first_chunk::<4>()
        .ok_or(TokenError::Malformed)?;
    *bytes = tail;
    Ok(u32::from_be_bytes(*head))
}

/// Header bytes before the addressee's: format, window, index if any, and
/// the addressee's length byte.
fn fixed_header_len(format: u8) -> usize {
    match format {
        FORMAT_WINDOW => 6,
        FORMAT_INDEXED => 10,
        _ => 12,
    }
}

fn associated_data(header: &[u8]) -> Vec<u8> {
    [AAD_LABEL, header].concat()
}

/// A length-prefixed short string (ids are at most 63 bytes).
fn push_short(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

// Claims plaintext: handle (16) ‖ serial (16) ‖ expires_at (u64 BE) ‖
// non_disclosure_until (u64 BE, 0 = none) ‖ requester ‖ affair ‖ item count
// (1) ‖ items, each string as one length byte and its bytes. The part after
// the serial is `SharedClaims`.

/// Reads fields from the front of a byte slice.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn short(&mut self) -> Option<&'a str> {
        let length = usize::from(self.take(1)?[0]);
        std::str::from_utf8(self.take(length)?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::Epoch;
    use crate::code::Coder;
    use crate::keys::MasterKey;
    use crate::mynumber::MyNumber;

    fn keys() -> KeyHierarchy {
        KeyHierarchy::new(&MasterKey::from_bytes(std::array::from_fn(|i| i as u8)))
    }

    fn claims(keys: &KeyHierarchy) -> Claims {
        let coder = Coder::new(keys, AgencyId::new("mhlw").unwrap(), Epoch::new(1).unwrap());
        Claims {
            handle: coder.handle(&MyNumber::parse(b"123456789018").unwrap()),
            serial: Serial::from_bytes([9; 16]),
            requester: AgencyId::new("mhlw").unwrap(),
            affair: AffairId::new("health-insurance-benefit").unwrap(),
            items: vec![
                ItemId::new("local-tax").unwrap(),
                ItemId::new("resident").unwrap(),
            ],
            expires_at: 1_800_000_000,
            non_disclosure_until: Some(1_900_000_000),
        }
    }

    #[test]
    fn seal_then_open_round_trips() {
        let keys = keys();
        let b = AgencyId::new("city-shinjuku").unwrap();
        let window = Window::containing(1_790_000_000);
        let name = KeyName::generational(Generation::FIRST, window, 0xdead_beef);
        let key = SealKey::new(&keys, &b, name).unwrap();
        let original = claims(&keys);
        let token = key.seal(&original, [1; 12]).unwrap();
        let header = token.header().unwrap();
        assert_eq!(
            header,
            TokenHeader {
                key: name,
                addressee: b.clone()
            }
        );
        assert_eq!(header.format(), TOKEN_FORMAT);
        assert_eq!(
            &token.as_bytes()[..12],
            &[3, 0, 1, 0, 0, 0x50, 0xed, 0xde, 0xad, 0xbe, 0xef, 13]
        );
        let opened = key.open(&token).unwrap();
        assert_eq!(opened.handle.expose_bytes(), original.handle.expose_bytes());
        assert_eq!(opened.serial, original.serial);
        assert_eq!(opened.requester, original.requester);
        assert_eq!(opened.affair, original.affair);
        assert_eq!(opened.items, original.items);
        assert_eq!(opened.expires_at, original.expires_at);
        assert_eq!(opened.non_disclosure_until, original.non_disclosure_until);
    }

    #[test]
    fn fresh_nonces_make_tokens_unlinkable() {
        let keys = keys();
        let name = KeyName::indexed(Window::new(20_000), 7);
        let key = SealKey::new(&keys, &AgencyId::new("nta").unwrap(), name).unwrap();
        let claims = claims(&keys);
        let a = key.seal(&claims, [1; 12]).unwrap();
        let b = key.seal(&claims, [2; 12]).unwrap();
        let header = a.header().unwrap();
        let body = 1 + 4 + 4 + 1 + header.addressee.as_str().len();
        let same = a.as_bytes()[body..]
            .iter()
            .zip(&b.as_bytes()[body..])
            .filter(|(x, y)| x == y)
            .count();
        assert!(same < 8, "{same} equal bytes after the header");
        // Nothing of the claims shows in the clear.
        assert!(!a.as_bytes().windows(8).any(|w| w == b"local-ta"));
    }

    #[test]
    fn only_the_right_key_opens() {
        let keys = keys();
        let b = AgencyId::new("city-shinjuku").unwrap();
        let c = AgencyId::new("nta").unwrap();
        let window = Window::new(20_000);
        let name = KeyName::indexed(window, 1);
        let token = SealKey::new(&keys, &b, name)
            .unwrap()
            .seal(&claims(&keys), [3; 12])
            .unwrap();
        assert_eq!(
            SealKey::new(&keys, &c, name)
                .unwrap()
                .open(&token)
                .unwrap_err(),
            TokenError::WrongAddressee
        );
        for other_key in [
            KeyName::indexed(Window::new(20_001), 1),
            KeyName::indexed(window, 2),
            KeyName::format1(window),
        ] {
            assert_eq!(
                SealKey::new(&keys, &b, other_key)
                    .unwrap()
                    .open(&token)
                    .unwrap_err(),
                TokenError::WrongWindow,
                "{other_key:?}"
            );
        }
        let other = KeyHierarchy::new(&MasterKey::from_bytes([5; 32]));
        assert_eq!(
            SealKey::new(&other, &b, name)
                .unwrap()
                .open(&token)
                .unwrap_err(),
            TokenError::Forged
        );
    }

    #[test]
    fn any_altered_byte_is_refused() {
        let keys = keys();
        let b = AgencyId::new("city-shinjuku").unwrap();
        let key = SealKey::new(&keys, &b, KeyName::indexed(Window::new(20_000), 3)).unwrap();
        let token = key.seal(&claims(&keys), [4; 12]).unwrap();
        for index in 0..token.as_bytes().len() {
            let mut bytes = token.as_bytes().to_vec();
            bytes[index] ^= 0x01;
            assert!(
                key.open(&SealedToken::from_bytes(bytes)).is_err(),
                "byte {index}"
            );
        }
        for length in 0..token.as_bytes().len() {
            let cut = SealedToken::from_bytes(token.as_bytes()[..length].to_vec());
            assert!(key.open(&cut).is_err(), "length {length}");
        }
    }

    /// The key index is authenticated: a token whose index was changed
    /// does not open under the key the new index names, and every index
    /// names a different key.
    #[test]
    fn a_changed_key_index_fails_authentication() {
        let keys = keys();
        let b = AgencyId::new("city-shinjuku").unwrap();
        let window = Window::new(20_000);
        let token = SealKey::new(&keys, &b, KeyName::indexed(window, 5))
            .unwrap()
            .seal(&claims(&keys), [6; 12])
            .unwrap();
        for changed in [4, 6, 5 ^ 0x8000_0000, 0, u32::MAX] {
            let mut bytes = token.as_bytes().to_vec();
            bytes[5..9].copy_from_slice(&u32::to_be_bytes(changed));
            let (name, _) = peek(&bytes).unwrap();
            assert_eq!(name, KeyName::indexed(window, changed));
            assert_eq!(
                SealKey::new(&keys, &b, name)
                    .unwrap()
                    .open_bytes(&bytes)
                    .unwrap_err(),
                TokenError::Forged,
                "index {changed}"
            );
        }
        let a = keys.seal_key_bytes(&b, 20_000, Some(5));
        assert_ne!(*a, *keys.seal_key_bytes(&b, 20_000, Some(6)));
        assert_ne!(*a, *keys.seal_key_bytes(&b, 20_000, None));
        assert_ne!(*a, *keys.seal_key_bytes(&b, 20_005, None));
    }

    /// Format 1 (window only) still opens under its own key, and a format-1
    /// header is six bytes and the addressee.
    #[test]
    fn format_one_tokens_still_open() {
        let keys = keys();
        let b = AgencyId::new("nta").unwrap();
        let name = KeyName::format1(Window::new(20_000));
        let key = SealKey::new(&keys, &b, name).unwrap();
        let token = key.seal(&claims(&keys), [8; 12]).unwrap();
        assert_eq!(
            &token.as_bytes()[..9],
            &[1, 0, 0, 0x4e, 0x20, 3, b'n', b't', b'a']
        );
        assert_eq!(token.header().unwrap().format(), FORMAT_WINDOW);
        assert_eq!(peek(token.as_bytes()).unwrap(), (name, &b"nta"[..]));
        assert!(key.open(&token).is_ok());
        let mut other = token.as_bytes().to_vec();
        other[0] = 4;
        assert_eq!(
            key.open_bytes(&other).unwrap_err(),
            TokenError::UnknownFormat
        );
    }

    #[test]
    fn debug_output_hides_the_handle() {
        let keys = keys();
        let claims = claims(&keys);
        let text = format!("{claims:?}");
        assert!(text.contains("PersonHandle(generation 1, [REDACTED])"));
        assert!(!text.contains(&hex::encode(claims.handle.expose_bytes())));
    }

    /// Format 3 names the generation in the authenticated header: the key
    /// of another generation is a typed mismatch, a changed generation
    /// byte opens nothing, and the opened handle is of the named generation.
    #[test]
    fn format_three_names_the_generation() {
        let one = keys();
        let two_number = Generation::new(2).unwrap();
        let two = KeyHierarchy::of_generation(&MasterKey::from_bytes([5; 32]), two_number);
        let b = AgencyId::new("nta").unwrap();
        let window = Window::new(20_000);
        let name = KeyName::generational(two_number, window, 9);
        assert_eq!(
            SealKey::new(&one, &b, name).unwrap_err(),
            GenerationError::Mismatch {
                expected: two_number,
                found: Generation::FIRST
            }
        );
        let key = SealKey::new(&two, &b, name).unwrap();
        let coder = Coder::new(&two, AgencyId::new("mhlw").unwrap(), Epoch::new(1).unwrap());
        let mut claims = claims(&one);
        claims.handle = coder.handle(&MyNumber::parse(b"123456789018").unwrap());
        let token = key.seal(&claims, [7; 12]).unwrap();
        assert_eq!(&token.as_bytes()[..3], &[3, 0, 2]);
        assert_eq!(peek(token.as_bytes()).unwrap(), (name, &b"nta"[..]));
        let opened = key.open(&token).unwrap();
        assert_eq!(opened.handle.generation(), two_number);
        // Generation 0 is no generation; another generation is another key.
        let mut zero = token.as_bytes().to_vec();
        zero[2] = 0;
        assert_eq!(key.open_bytes(&zero).unwrap_err(), TokenError::Malformed);
        let mut three = token.as_bytes().to_vec();
        three[2] = 3;
        assert_eq!(key.open_bytes(&three).unwrap_err(), TokenError::WrongWindow);
        // Same window and index under generation 1: a different key.
        assert_ne!(
            *one.seal_key_bytes(&b, 20_000, Some(9)),
            *two.seal_key_bytes(&b, 20_000, Some(9))
        );
    }
}
