//! Master-key generations and the keyring that holds them.
//!
//! One master key must not be forever: fugo holds a keyring of master keys,
//! generation 1, 2, …, each identified by its fingerprint. Every working
//! key is expanded from one generation's [`KeyHierarchy`] with the labels
//! of [`crate::keys`] (the labels do not name the generation: the master
//! key does, and the keyring refuses two generations with one key).
//! Generation 1 is the key fugo had before generations existed, so every
//! code, handle and token made before still opens under it.
//!
//! Selection is always by explicit match: a handle, a sealing key and a
//! token header name their generation, the policy binds every agency
//! epoch to one, and [`Keyring::get`] answers the hierarchy of exactly that
//! generation or [`GenerationError::NotInKeyring`]. Nothing tries one key
//! after another.
//!
//! The audit trail's own keys (K_link and the log's signing seed) come
//! from [`AUDIT_GENERATION`] alone, whatever generation codes are made
//! under: a person is the same person in the log across rotations, and
//! the log's public key never changes (SPEC §11 says what a leak of it
//! exposes).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::keys::{Fingerprint, KeyHierarchy};

/// A master-key generation number, 1..=65535 (two bytes in a format-3
/// token header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Generation(u16);

/// The generation was outside 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a key generation is a whole number from 1 to 65535")]
pub struct GenerationNumberError;

impl Generation {
    /// Generation 1: the master key of before generations.
    pub const FIRST: Generation = Generation(1);

    /// Accepts 1..=65535.
    pub fn new(value: u16) -> Result<Self, GenerationNumberError> {
        if value == 0 {
            Err(GenerationNumberError)
        } else {
            Ok(Generation(value))
        }
    }

    /// The generation as a number.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Generation {
    type Err = GenerationNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(GenerationNumberError);
        }
        s.parse::<u16>()
            .map_err(|_| GenerationNumberError)
            .and_then(Generation::new)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The generation whose hierarchy gives the audit trail's keys (K_link,
/// the log signing seed): always generation 1, the log's first key.
pub const AUDIT_GENERATION: Generation = Generation::FIRST;

/// Why a keyring or a generation was refused. Names generations and
/// fingerprints (public), never key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GenerationError {
    /// Something names a generation the keyring does not hold.
    #[error("key generation {0} is not in the keyring")]
    NotInKeyring(Generation),
    /// A handle, key or token of one generation met one of another.
    #[error("key generation mismatch: expected generation {expected}, found {found}")]
    Mismatch {
        /// The generation the operation works in.
        expected: Generation,
        /// The generation of what it was given.
        found: Generation,
    },
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
    pub fn new(hierarchies: Vec<KeyHierarchy>) -> Result<Self, GenerationError> {
        let mut generations = BTreeMap::new();
        let mut fingerprints: Vec<(Fingerprint, Generation)> = Vec::new();
        for keys in hierarchies {
            let generation = keys.generation();
            let fingerprint = keys.fingerprint();
            if let Some((_, first)) = fingerprints.iter().find(|(f, _)| *f == fingerprint) {
                return Err(GenerationError::SameKey {
                    first: *first,
                    second: generation,
                    fingerprint,
                });
            }
            fingerprints.push((fingerprint, generation));
            if generations.insert(generation, keys).is_some() {
                return Err(GenerationError::Duplicate(generation));
            }
        }
        if !generations.contains_key(&AUDIT_GENERATION) {
            return Err(GenerationError::NoAuditGeneration);
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
    fn generations_are_one_to_65535() {
        assert!(Generation::new(0).is_err());
        assert_eq!("65535".parse::<Generation>().unwrap().get(), 65_535);
        for bad in ["0", "01", "65536", "", "+1", "1.0"] {
            assert!(bad.parse::<Generation>().is_err(), "{bad}");
        }
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
            GenerationError::Duplicate(Generation::FIRST)
        );
        assert!(matches!(
            Keyring::new(vec![keys(1, 1), keys(1, 2)]).unwrap_err(),
            GenerationError::SameKey { .. }
        ));
        assert_eq!(
            Keyring::new(vec![keys(2, 2)]).unwrap_err(),
            GenerationError::NoAuditGeneration
        );
    }
}
