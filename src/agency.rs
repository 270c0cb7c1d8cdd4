//! Agency identifiers and key epochs: the public half of every key label.
//!
//! An [`AgencyId`] names an agency in key derivation labels, policy and audit
//! records, so it is strict: `[a-z0-9][a-z0-9._-]{0,62}`, lowercase ASCII,
//! never normalised. An [`Epoch`] numbers an agency's code generation
//! (1..=31) so codes can be re-issued without changing the master key.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Longest agency id, in bytes.
pub const AGENCY_ID_MAX: usize = 63;

/// Why a string is not a valid agency id. Agency ids are public, so the
/// error may point at the offending character's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AgencyIdError {
    /// The id was empty.
    #[error("agency id is empty")]
    Empty,
    /// More than 63 bytes.
    #[error("agency id is {length} bytes long; at most 63 are allowed")]
    TooLong {
        /// Length found, in bytes.
        length: usize,
    },
    /// The first character must be `a`-`z` or `0`-`9`.
    #[error("agency id must start with a-z or 0-9")]
    BadFirst,
    /// A character outside `a-z 0-9 . _ -` at this 1-based position.
    #[error("agency id has a character outside a-z, 0-9, '.', '_', '-' at position {position}")]
    BadCharacter {
        /// 1-based character position.
        position: usize,
    },
}

/// A validated agency identifier, e.g. `city-shinjuku` or `nta`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgencyId(String);

impl AgencyId {
    /// Validates `input` against `[a-z0-9][a-z0-9._-]{0,62}`.
    pub fn new(input: &str) -> Result<Self, AgencyIdError> {
        let bytes = input.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(AgencyIdError::Empty);
        };
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(AgencyIdError::BadFirst);
        }
        if let Some((index, _)) = input.char_indices().enumerate().find(|(_, (_, c))| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        }) {
            return Err(AgencyIdError::BadCharacter {
                position: index + 1,
            });
        }
        if bytes.len() > AGENCY_ID_MAX {
            return Err(AgencyIdError::TooLong {
                length: bytes.len(),
            });
        }
        Ok(AgencyId(input.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgencyId {
    type Err = AgencyIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgencyId::new(s)
    }
}

impl fmt::Display for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgencyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgencyId({})", self.0)
    }
}

/// The epoch was outside 1..=31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("epoch must be a whole number from 1 to 31")]
pub struct EpochError;

/// A code generation number, 1..=31. It is one base32 character in the
/// text form of a code, which is why 31 is the largest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u8);

impl Epoch {
    /// The largest epoch.
    pub const MAX: u8 = 31;

    /// Accepts 1..=31.
    pub fn new(value: u8) -> Result<Self, EpochError> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Epoch(value))
        } else {
            Err(EpochError)
        }
    }

    /// The epoch as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl FromStr for Epoch {
    type Err = EpochError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Decimal without sign or leading zeros, as in the key label.
        if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EpochError);
        }
        s.parse::<u8>().map_err(|_| EpochError).and_then(Epoch::new)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agency_ids_follow_the_pattern() {
        for ok in ["nta", "city-shinjuku", "pref-13-welfare", "0", "a.b_c-d"] {
            assert!(AgencyId::new(ok).is_ok(), "{ok}");
        }
        assert!(AgencyId::new(&"a".repeat(63)).is_ok());
        assert_eq!(AgencyId::new(""), Err(AgencyIdError::Empty));
        assert_eq!(AgencyId::new("-nta"), Err(AgencyIdError::BadFirst));
        assert_eq!(AgencyId::new("NTA"), Err(AgencyIdError::BadFirst));
        assert_eq!(
            AgencyId::new("city/shinjuku"),
            Err(AgencyIdError::BadCharacter { position: 5 })
        );
        assert_eq!(
            AgencyId::new("nTa"),
            Err(AgencyIdError::BadCharacter { position: 2 })
        );
        assert_eq!(
            AgencyId::new(&"a".repeat(64)),
            Err(AgencyIdError::TooLong { length: 64 })
        );
    }

    #[test]
    fn epochs_are_one_to_thirty_one() {
        assert!(Epoch::new(0).is_err());
        assert!(Epoch::new(32).is_err());
        assert_eq!("31".parse::<Epoch>().unwrap().get(), 31);
        for bad in ["0", "01", "+1", "32", "", "1.0"] {
            assert!(bad.parse::<Epoch>().is_err(), "{bad}");
        }
    }
}
