//! Version 1 agency codes: derive a code from a My Number, open a code back.
//!
//! ```text
//! B = number as u64, big-endian (8 bytes) ‖ "fugo-pn1" (8 bytes)
//! h = AES-256(K_person, B)          person handle, one block
//! c = AES-256(K_agency(a, e), h)    agency code, one block
//! ```
//!
//! Both layers are single-block encryptions, i.e. keyed permutations: two
//! people never share a handle, and never share a code within one agency and
//! epoch. Opening runs both layers backwards and accepts only a block that
//! carries the `fugo-pn1` label and a valid 12-digit number; any other
//! failure is the one opaque [`UnknownCode`].

use std::fmt;

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::agency::{AgencyId, Epoch};
use crate::code_text::{self, CodeTextError, TEXT_LEN};
use crate::generation::{Generation, GenerationError};
use crate::keys::{AgencyKey, KeyHierarchy, PersonKey};
use crate::mynumber::{LIMIT, MyNumber};

/// Domain label in the low half of the person block.
pub const PERSON_BLOCK_LABEL: &[u8; 8] = b"fugo-pn1";

/// The code is not a code of this agency and epoch under this key. Opaque on
/// purpose: it never says which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("unknown code")]
pub struct UnknownCode;

/// The person block B for a number below 10^12.
pub fn person_block(value: u64) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&value.to_be_bytes());
    block[8..].copy_from_slice(PERSON_BLOCK_LABEL);
    block
}

/// The person handle h: the same for one person across all agencies, so it
/// links them. It never leaves fugo; `Debug` is redacted, wiped on drop.
///
/// Its bytes can be reached only inside this crate (tokens carry it sealed)
/// or, with the `vectors` feature, by known-answer tests and benchmarks.
/// Nothing outside the crate can make one:
///
/// ```compile_fail
/// let forged = fugo_core::code::PersonHandle::from_bytes([0; 16]);
/// ```
///
/// A handle names the master-key generation whose K_person made it: a
/// handle of generation 1 given to a coder of generation 2 is
/// [`GenerationError::Mismatch`], never a wrong code.
pub struct PersonHandle {
    generation: Generation,
    bytes: [u8; 16],
}

impl Drop for PersonHandle {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl ZeroizeOnDrop for PersonHandle {}

impl PersonHandle {
    /// The 16 handle bytes (the next layer's input).
    #[cfg(not(feature = "vectors"))]
    pub(crate) fn expose_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// The 16 handle bytes. Only with the `vectors` feature: for test
    /// vectors and benchmarks.
    #[cfg(feature = "vectors")]
    pub fn expose_bytes(&self) -> &[u8; 16] {
        &self.bytes
    }

    /// A handle of `generation` from its 16 bytes (out of an authenticated
    /// token, whose key names the generation).
    pub(crate) fn from_bytes(generation: Generation, bytes: [u8; 16]) -> Self {
        PersonHandle { generation, bytes }
    }

    /// The generation whose K_person made this handle.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Checks that this handle is of `expected`'s generation.
    pub(crate) fn check_generation(&self, expected: Generation) -> Result<(), GenerationError> {
        if self.generation == expected {
            Ok(())
        } else {
            Err(GenerationError::Mismatch {
                expected,
                found: self.generation,
            })
        }
    }
}

impl fmt::Debug for PersonHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PersonHandle(generation {}, [REDACTED])",
            self.generation
        )
    }
}

/// An agency code: the epoch it was made in and its 16 bytes.
///
/// A code identifies a person within one agency, so it is personal data:
/// `Debug` prints a redaction. [`AgencyCode::to_text`] is the way out.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgencyCode {
    epoch: Epoch,
    bytes: [u8; 16],
}

impl AgencyCode {
    /// Builds a code from its parts (e.g. from a test vector).
    pub fn from_parts(epoch: Epoch, bytes: [u8; 16]) -> Self {
        AgencyCode { epoch, bytes }
    }

    /// Reads the 29-character text form.
    pub fn parse(text: &[u8]) -> Result<Self, CodeTextError> {
        let (epoch, bytes) = code_text::decode(text)?;
        Ok(AgencyCode { epoch, bytes })
    }

    /// The 29-character text form.
    pub fn to_text(&self) -> [u8; TEXT_LEN] {
        code_text::encode(self.epoch, &self.bytes)
    }

    /// The epoch the code was made in.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The 16 code bytes.
    pub fn bytes(&self) -> &[u8; 16] {
        &self.bytes
    }
}

impl fmt::Debug for AgencyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgencyCode(epoch {}, [REDACTED])", self.epoch)
    }
}

/// h = AES-256(K_person, B), of K_person's generation.
pub(crate) fn handle_of(
    person: &PersonKey,
    generation: Generation,
    number: &MyNumber,
) -> PersonHandle {
    let mut blocks = [person_block(number.expose_value())];
    person.encrypt_blocks(&mut blocks);
    let handle = PersonHandle::from_bytes(generation, blocks[0]);
    blocks.zeroize();
    handle
}

/// The number behind a handle, for the crate's other layers (`persons`).
pub(crate) fn number_with(
    person: &PersonKey,
    handle: &PersonHandle,
) -> Result<MyNumber, UnknownCode> {
    number_of(person, handle)
}

/// Inverts [`handle_of`], accepting only a well-formed block: the
/// `fugo-pn1` label and a valid 12-digit number.
pub(crate) fn number_of(
    person: &PersonKey,
    handle: &PersonHandle,
) -> Result<MyNumber, UnknownCode> {
    let mut blocks = [handle.bytes];
    person.decrypt_blocks(&mut blocks);
    let mut high = [0u8; 8];
    high.copy_from_slice(&blocks[0][..8]);
    let labelled = blocks[0][8..] == PERSON_BLOCK_LABEL[..];
    let mut value = u64::from_be_bytes(high);
    blocks.zeroize();
    high.zeroize();
    let result = if labelled && value < LIMIT {
        MyNumber::from_value(value).map_err(|_| UnknownCode)
    } else {
        Err(UnknownCode)
    };
    value.zeroize();
    result
}

/// c = AES-256(K_agency, h).
fn code_bytes_of(agency: &AgencyKey, handle: &PersonHandle) -> [u8; 16] {
    let mut blocks = [handle.bytes];
    agency.encrypt_blocks(&mut blocks);
    blocks[0]
}

/// h = AES-256⁻¹(K_agency, c), unchecked: only [`number_of`] can tell
/// whether it is a real handle.
fn unchecked_handle_of(
    agency: &AgencyKey,
    generation: Generation,
    code: &[u8; 16],
) -> PersonHandle {
    let mut blocks = [*code];
    agency.decrypt_blocks(&mut blocks);
    let handle = PersonHandle::from_bytes(generation, blocks[0]);
    blocks.zeroize();
    handle
}

/// Derives and opens the codes of one agency in one epoch under one
/// master-key generation. Build it once per (generation, agency, epoch) and
/// reuse it: it holds both AES key schedules.
pub struct Coder {
    agency: AgencyId,
    epoch: Epoch,
    generation: Generation,
    person: PersonKey,
    agency_key: AgencyKey,
}

impl Coder {
    /// Expands K_person and K_agency(agency, epoch) from `keys`, in the
    /// generation of `keys`.
    pub fn new(keys: &KeyHierarchy, agency: AgencyId, epoch: Epoch) -> Self {
        Coder {
            agency_key: keys.agency_key(&agency, epoch),
            person: keys.person_key(),
            generation: keys.generation(),
            agency,
            epoch,
        }
    }

    /// The master-key generation of this coder's keys.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The agency whose codes this makes.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The epoch whose codes this makes.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The person handle of `number` (for this crate's tests).
    #[cfg(all(test, not(feature = "vectors")))]
    pub(crate) fn handle(&self, number: &MyNumber) -> PersonHandle {
        handle_of(&self.person, self.generation, number)
    }

    /// The person handle of `number`. Only with the `vectors` feature: for
    /// test vectors and benchmarks.
    #[cfg(feature = "vectors")]
    pub fn handle(&self, number: &MyNumber) -> PersonHandle {
        handle_of(&self.person, self.generation, number)
    }

    /// The agency code of `number`.
    pub fn derive(&self, number: &MyNumber) -> AgencyCode {
        let handle = handle_of(&self.person, self.generation, number);
        AgencyCode {
            epoch: self.epoch,
            bytes: code_bytes_of(&self.agency_key, &handle),
        }
    }

    /// The agency code of a person handle (conversion from another agency's
    /// code goes code → handle → this), or [`GenerationError::Mismatch`] if
    /// the handle is of another generation than this coder.
    pub fn code_of(&self, handle: &PersonHandle) -> Result<AgencyCode, GenerationError> {
        handle.check_generation(self.generation)?;
        Ok(AgencyCode {
            epoch: self.epoch,
            bytes: code_bytes_of(&self.agency_key, handle),
        })
    }

    /// Opens `code` to the person handle, or [`UnknownCode`] if it is not a
    /// code of this agency and epoch (the block must decrypt to a labelled,
    /// valid My Number).
    pub fn open(&self, code: &AgencyCode) -> Result<PersonHandle, UnknownCode> {
        let handle = self.unchecked_handle(code)?;
        number_of(&self.person, &handle)?;
        Ok(handle)
    }

    /// Opens `code` all the way back to the My Number.
    pub fn reidentify(&self, code: &AgencyCode) -> Result<MyNumber, UnknownCode> {
        let handle = self.unchecked_handle(code)?;
        number_of(&self.person, &handle)
    }

    fn unchecked_handle(&self, code: &AgencyCode) -> Result<PersonHandle, UnknownCode> {
        if code.epoch != self.epoch {
            return Err(UnknownCode);
        }
        Ok(unchecked_handle_of(
            &self.agency_key,
            self.generation,
            &code.bytes,
        ))
    }

    /// Turns person blocks B into code blocks c in place, both layers batched
    /// so the cipher can pipeline many blocks at once.
    pub fn encrypt_person_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.person.encrypt_blocks(blocks);
        self.agency_key.encrypt_blocks(blocks);
    }

    /// The person layer alone: person blocks B into handles h, in place.
    pub(crate) fn person_layer(&self, blocks: &mut [[u8; 16]]) {
        self.person.encrypt_blocks(blocks);
    }

    /// The agency layer alone: handles h into code blocks c, in place.
    pub(crate) fn agency_layer(&self, blocks: &mut [[u8; 16]]) {
        self.agency_key.encrypt_blocks(blocks);
    }

    /// Checks that `handle` is a handle of a valid number under this key
    /// (a link or a token could hold any 16 bytes) and of this generation.
    pub(crate) fn check_handle(&self, handle: &PersonHandle) -> Result<(), UnknownCode> {
        handle
            .check_generation(self.generation)
            .map_err(|_| UnknownCode)?;
        number_of(&self.person, handle).map(drop)
    }
}

impl fmt::Debug for Coder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Coder({}, epoch {}, generation {}, [REDACTED])",
            self.agency, self.epoch, self.generation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn coder(agency: &str, epoch: u8) -> Coder {
        let keys = KeyHierarchy::new(&MasterKey::from_bytes(std::array::from_fn(|i| i as u8)));
        Coder::new(
            &keys,
            AgencyId::new(agency).unwrap(),
            Epoch::new(epoch).unwrap(),
        )
    }

    #[test]
    fn known_answer() {
        let number = MyNumber::parse(b"123456789018").unwrap();
        let shinjuku = coder("city-shinjuku", 1);
        assert_eq!(
            crate::hex::encode(shinjuku.handle(&number).expose_bytes()),
            "0d8e52e5bddadf52c3a087c3bf4bbe31"
        );
        let code = shinjuku.derive(&number);
        assert_eq!(
            crate::hex::encode(code.bytes()),
            "3e6effb56bf081e59c07b1858687087c"
        );
        assert_eq!(&code.to_text(), b"117SQFZDBBY20YB707P62RD1R8FGJ");
        assert_eq!(
            shinjuku.reidentify(&code).unwrap().expose_value(),
            123_456_789_018
        );
        assert_eq!(
            coder("city-shinjuku", 2).reidentify(&code).unwrap_err(),
            UnknownCode
        );
        assert_eq!(coder("nta", 1).reidentify(&code).unwrap_err(), UnknownCode);
    }

    /// A handle of generation 1 given to a coder of generation 2 is a typed
    /// error, not a wrong code; the same person's codes differ by generation.
    #[test]
    fn handles_carry_their_generation() {
        let number = MyNumber::parse(b"123456789018").unwrap();
        let one = coder("city-shinjuku", 1);
        let two_keys = KeyHierarchy::of_generation(
            &MasterKey::from_bytes([9; 32]),
            Generation::new(2).unwrap(),
        );
        let two = Coder::new(
            &two_keys,
            AgencyId::new("city-shinjuku").unwrap(),
            Epoch::new(2).unwrap(),
        );
        let handle = one.handle(&number);
        assert_eq!(handle.generation(), Generation::FIRST);
        assert_eq!(
            two.code_of(&handle).unwrap_err(),
            GenerationError::Mismatch {
                expected: Generation::new(2).unwrap(),
                found: Generation::FIRST
            }
        );
        assert_eq!(two.check_handle(&handle).unwrap_err(), UnknownCode);
        let code = one.code_of(&handle).unwrap();
        assert_eq!(code, one.derive(&number));
        let moved = two.handle(&number);
        assert_eq!(two.code_of(&moved).unwrap(), two.derive(&number));
        assert!(format!("{moved:?}").contains("generation 2, [REDACTED]"));
    }

    #[test]
    fn batch_matches_single() {
        let shinjuku = coder("city-shinjuku", 1);
        let mut blocks = [person_block(123_456_789_018)];
        shinjuku.encrypt_person_blocks(&mut blocks);
        let single = shinjuku.derive(&MyNumber::parse(b"123456789018").unwrap());
        assert_eq!(&blocks[0], single.bytes());
    }
}
