//! Person links: how the audit trail knows a person without holding the
//! person handle.
//!
//! ```text
//! link = AES-256(K_link, h)     one block, a keyed permutation of handles
//! ```
//!
//! A link is the same for one person in every record, so the server's
//! disclosure index can find a person's records; it never leaves the
//! server (what leaves shows the reader's own code, or nothing). Only the
//! holder of the master key can turn a link back into a handle, and from
//! there into an agency's code.

use std::fmt;

use crate::code::PersonHandle;
use crate::generation::{Generation, GenerationError};
use crate::keys::{KeyHierarchy, LinkKey, PersonKey};

/// A person as the audit trail knows them. `Debug` is redacted: a link is
/// as personal as a code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonLink([u8; 16]);

impl PersonLink {
    /// A link from its stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        PersonLink(bytes)
    }

    /// The 16 bytes, for the store.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl fmt::Debug for PersonLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonLink([REDACTED])")
    }
}

/// Makes person links from handles and back (holds K_link).
/// Makes and opens person links with K_link. It holds the K_person of its
/// own generation too, so derive can link people straight from their
/// numbers when codes are made under another generation.
#[derive(Debug)]
pub struct Linker {
    key: LinkKey,
    person: PersonKey,
    generation: Generation,
}

impl Linker {
    /// Expands K_link (and K_person) from `keys`: the audit trail's
    /// generation ([`crate::keyring::Keyring::audit`]).
    pub fn new(keys: &KeyHierarchy) -> Self {
        Linker {
            key: keys.link_key(),
            person: keys.person_key(),
            generation: keys.generation(),
        }
    }

    /// The generation whose handles this links.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The link of a handle of this linker's generation, or
    /// [`GenerationError::Mismatch`] (a handle of another generation must
    /// cross over first: handle → number → handle of this generation).
    pub fn link(&self, handle: &PersonHandle) -> Result<PersonLink, GenerationError> {
        handle.check_generation(self.generation)?;
        let mut block = [*handle.expose_bytes()];
        self.key.encrypt_blocks(&mut block);
        Ok(PersonLink(block[0]))
    }

    /// Handles of this generation into links, in place.
    pub(crate) fn link_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.key.encrypt_blocks(blocks);
    }

    /// Person blocks B (numbers) into links, in place: this generation's
    /// person layer, then K_link.
    pub(crate) fn link_person_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.person.encrypt_blocks(blocks);
        self.key.encrypt_blocks(blocks);
    }

    /// The link of the person whose (original) number is `number`: this
    /// generation's handle of it, linked.
    pub(crate) fn link_number(&self, number: &crate::mynumber::MyNumber) -> PersonLink {
        let mut block = [crate::code::person_block(number.expose_value())];
        self.link_person_blocks(&mut block);
        PersonLink(block[0])
    }

    /// The (unchecked) handle of this generation behind a link.
    pub(crate) fn handle(&self, link: &PersonLink) -> PersonHandle {
        let mut block = [link.0];
        self.key.decrypt_blocks(&mut block);
        PersonHandle::from_bytes(self.generation, block[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::{AgencyId, Epoch};
    use crate::code::Coder;
    use crate::keys::MasterKey;
    use crate::mynumber::MyNumber;

    #[test]
    fn links_are_per_person_keyed_and_invertible() {
        let keys = KeyHierarchy::new(&MasterKey::from_bytes([7; 32]));
        let other = KeyHierarchy::new(&MasterKey::from_bytes([8; 32]));
        let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(1).unwrap());
        let a = coder.handle(&MyNumber::parse(b"123456789018").unwrap());
        let b = coder.handle(&MyNumber::parse(b"000000000019").unwrap());
        let linker = Linker::new(&keys);
        assert_eq!(linker.link(&a).unwrap(), linker.link(&a).unwrap());
        assert_ne!(linker.link(&a).unwrap(), linker.link(&b).unwrap());
        assert_ne!(linker.link(&a).unwrap().to_bytes(), *a.expose_bytes());
        assert_ne!(
            Linker::new(&other).link(&a).unwrap(),
            linker.link(&a).unwrap()
        );
        let back = linker.handle(&linker.link(&a).unwrap());
        assert_eq!(back.expose_bytes(), a.expose_bytes());
        assert_eq!(
            format!("{:?}", linker.link(&a).unwrap()),
            "PersonLink([REDACTED])"
        );
    }
}
