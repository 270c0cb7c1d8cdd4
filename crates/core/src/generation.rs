//! Master-key generations and the keyring that holds them.
//!
//! One master key must not be forever: fugo holds a keyring of master keys,
//! generation 1, 2, …, each identified by its fingerprint. Every working
//! key is expanded from one generation's `KeyHierarchy` with the labels
//! of [`crate::keys`] (the labels do not name the generation: the master
//! key does, and the keyring refuses two generations with one key).
//! Generation 1 is the key fugo had before generations existed, so every
//! code, handle and token made before still opens under it.
//!
//! Selection is always by explicit match: a handle, a sealing key and a
//! token header name their generation, the policy binds every agency
//! epoch to one, and [`crate::keyring::Keyring::get`] answers the hierarchy of exactly that
//! generation or [`GenerationError::NotInKeyring`]. Nothing tries one key
//! after another.
//!
//! The audit trail's own keys (K_link and the log's signing seed) come
//! from [`AUDIT_GENERATION`] alone, whatever generation codes are made
//! under: a person is the same person in the log across rotations, and
//! the log's public key never changes (SPEC §11 says what a leak of it
//! exposes).

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

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

/// Why a handle, key or token of a generation could not be used. Names
/// generations (public), never key material.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn generations_are_one_to_65535() {
        assert!(Generation::new(0).is_err());
        assert_eq!("65535".parse::<Generation>().unwrap().get(), 65_535);
        for bad in ["0", "01", "65536", "", "+1", "1.0"] {
            assert!(bad.parse::<Generation>().is_err(), "{bad}");
        }
    }
}
