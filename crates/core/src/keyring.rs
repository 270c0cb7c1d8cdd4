//! The keyring: the master keys fugo holds, one [`KeyHierarchy`] per
//! [`Generation`] (see [`crate::generation`] for what a generation is and
//! why selection is always by explicit match).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::generation::{AUDIT_GENERATION, Generation, GenerationError};
use crate::keys::{Fingerprint, KeyHierarchy};

/// Why a keyring was refused. Names generations and fingerprints (public),
/// never key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// Two keyring entries with one generation number.
    #[error("key generation {0} is listed twice")]
    Duplicate(Generation),
    /// Two generations with the same master key.
    #[error(
        "key generations {first} and {second} hold the same master key (fingerprint {fingerprint})"
    )]
    SameKey {
        /// The first generation holding it.
        first: Generation,
        /// The second.
        second: Generation,
        /// The key's public fingerprint.
        fingerprint: Fingerprint,
    },
    /// The keyring lacks the audit trail's generation.
    #[error(
        "the keyring must hold key generation {AUDIT_GENERATION}: the audit trail's keys come from it"
    )]
    NoAuditGeneration,
}

/// The master keys fugo holds, by generation, as key hierarchies.
#[derive(Debug)]
pub struct Keyring {
    generations: BTreeMap<Generation, KeyHierarchy>,
    /// Where the audit trail's keys come from (held, by construction).
    audit: Generation,
}

impl Keyring {
    /// A keyring of one hierarchy (of whatever generation it was made for).
    pub fn single(keys: KeyHierarchy) -> Self {
        Keyring {
            audit: keys.generation(),
            generations: BTreeMap::from([(keys.generation(), keys)]),
        }
    }

    /// A keyring of several hierarchies: distinct generations, distinct
    /// keys, generation 1 ([`AUDIT_GENERATION`]) among them.
    pub fn new(hierarchies: Vec<KeyHierarchy>) -> Result<Self, KeyringError> {
        let mut generations = BTreeMap::new();
        let mut fingerprints: Vec<(Fingerprint, Generation)> = Vec::new();
        for keys in hierarchies {
            let generation = keys.generation();
            let fingerprint = keys.fingerprint();
            if let Some((_, first)) = fingerprints.iter().find(|(f, _)| *f == fingerprint) {
                return Err(KeyringError::SameKey {
                    first: *first,
                    second: generation,
                    fingerprint,
                });
            }
            fingerprints.push((fingerprint, generation));
            if generations.insert(generation, keys).is_some() {
                return Err(KeyringError::Duplicate(generation));
            }
        }
        if !generations.contains_key(&AUDIT_GENERATION) {
            return Err(KeyringError::NoAuditGeneration);
        }
        Ok(Keyring {
            generations,
            audit: AUDIT_GENERATION,
        })
    }

    /// The hierarchy of `generation`, or [`GenerationError::NotInKeyring`].
    pub fn get(&self, generation: Generation) -> Result<&KeyHierarchy, GenerationError> {
        self.generations
            .get(&generation)
            .ok_or(GenerationError::NotInKeyring(generation))
    }

    /// Whether the keyring holds `generation`.
    pub fn holds(&self, generation: Generation) -> bool {
        self.generations.contains_key(&generation)
    }

    /// The hierarchy the audit trail's keys come from: generation 1 (or,
    /// in a keyring of one hierarchy, that one).
    pub fn audit(&self) -> &KeyHierarchy {
        // Both constructors make `audit` a held generation.
        &self.generations[&self.audit]
    }

    /// The generations held, lowest first, with their fingerprints.
    pub fn fingerprints(&self) -> impl Iterator<Item = (Generation, Fingerprint)> + '_ {
        self.generations
            .iter()
            .map(|(generation, keys)| (*generation, keys.fingerprint()))
    }

    /// The hierarchies held, lowest generation first.
    pub fn hierarchies(&self) -> impl Iterator<Item = &KeyHierarchy> {
        self.generations.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn keys(byte: u8, generation: u16) -> KeyHierarchy {
        KeyHierarchy::of_generation(
            &MasterKey::from_bytes([byte; 32]),
            Generation::new(generation).unwrap(),
        )
    }

    #[test]
    fn a_keyring_selects_by_generation_and_refuses_doubles() {
        let ring = Keyring::new(vec![keys(1, 1), keys(2, 2)]).unwrap();
        let two = Generation::new(2).unwrap();
        assert_eq!(ring.get(two).unwrap().generation(), two);
        assert_eq!(
            ring.get(two).unwrap().fingerprint(),
            keys(2, 2).fingerprint()
        );
        let three = Generation::new(3).unwrap();
        assert_eq!(
            ring.get(three).unwrap_err(),
            GenerationError::NotInKeyring(three)
        );
        assert_eq!(ring.audit().generation(), Generation::FIRST);
        assert_eq!(
            Keyring::new(vec![keys(1, 1), keys(2, 1)]).unwrap_err(),
            KeyringError::Duplicate(Generation::FIRST)
        );
        assert!(matches!(
            Keyring::new(vec![keys(1, 1), keys(1, 2)]).unwrap_err(),
            KeyringError::SameKey { .. }
        ));
        assert_eq!(
            Keyring::new(vec![keys(2, 2)]).unwrap_err(),
            KeyringError::NoAuditGeneration
        );
    }
}
