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
use crate::keys::{KeyHierarchy, LinkKey};

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
#[derive(Debug)]
pub struct Linker {
    key: LinkKey,
}

impl Linker {
    /// Expands K_link from `keys`.
    pub fn new(keys: &KeyHierarchy) -> Self {
        Linker {
            key: keys.link_key(),
        }
    }

    /// The link of one handle.
    pub fn link(&self, handle: &PersonHandle) -> PersonLink {
        let mut block = [*handle.expose_bytes()];
        self.key.encrypt_blocks(&mut block);
        PersonLink(block[0])
    }

    /// Turns handles into links in place, batched (the derive hot path).
    pub(crate) fn link_blocks(&self, blocks: &mut [[u8; 16]]) {
        self.key.encrypt_blocks(blocks);
    }

    /// The (unchecked) handle behind a link.
    pub(crate) fn handle(&self, link: &PersonLink) -> PersonHandle {
        let mut block = [link.0];
        self.key.decrypt_blocks(&mut block);
        PersonHandle::from_bytes(block[0])
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
        assert_eq!(linker.link(&a), linker.link(&a));
        assert_ne!(linker.link(&a), linker.link(&b));
        assert_ne!(linker.link(&a).to_bytes(), *a.expose_bytes());
        assert_ne!(Linker::new(&other).link(&a), linker.link(&a));
        let back = linker.handle(&linker.link(&a));
        assert_eq!(back.expose_bytes(), a.expose_bytes());
        assert_eq!(format!("{:?}", linker.link(&a)), "PersonLink([REDACTED])");
    }
}
