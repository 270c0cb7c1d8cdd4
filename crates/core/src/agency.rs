//! Identifiers (agencies, affairs, data items) and key epochs: the public
//! half of every key label and policy rule.
//!
//! An [`AgencyId`] names an agency in key derivation labels, policy and audit
//! records, so it is strict: `[a-z0-9][a-z0-9._-]{0,62}`, lowercase ASCII,
//! never normalised. [`AffairId`] and [`ItemId`] follow the same syntax. An [`Epoch`] numbers an agency's code generation
//! (1..=31) so codes can be re-issued without changing the master key.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Longest id, in bytes.
pub const ID_MAX: usize = 63;

/// What an id names, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// An agency (機関).
    Agency,
    /// An affair (事務), the legal task an exchange serves.
    Affair,
    /// A data item (特定個人情報の項目) that may be asked for.
    Item,
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::Agency => "agency",
            IdKind::Affair => "affair",
            IdKind::Item => "data item",
        })
    }
}

/// What is wrong with an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdProblem {
    /// The id was empty.
    Empty,
    /// More than 63 bytes.
    TooLong {
        /// Length found, in bytes.
        length: usize,
    },
    /// The first character must be `a`-`z` or `0`-`9`.
    BadFirst,
    /// A character outside `a-z 0-9 . _ -` at this 1-based position.
    BadCharacter {
        /// 1-based character position.
        position: usize,
    },
}

/// Why a string is not a valid id. Ids are public, so the error may point
/// at the offending character's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{kind} id {problem}")]
pub struct IdError {
    /// What the id names.
    pub kind: IdKind,
    /// What is wrong.
    pub problem: IdProblem,
}

impl fmt::Display for IdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdProblem::Empty => f.write_str("is empty"),
            IdProblem::TooLong { length } => {
                write!(f, "is {length} bytes long; at most 63 are allowed")
            }
            IdProblem::BadFirst => f.write_str("must start with a-z or 0-9"),
            IdProblem::BadCharacter { position } => write!(
                f,
                "has a character outside a-z, 0-9, '.', '_', '-' at position {position}"
            ),
        }
    }
}

/// Checks `input` against `[a-z0-9][a-z0-9._-]{0,62}`.
fn check_id(kind: IdKind, input: &str) -> Result<(), IdError> {
    let fail = |problem| Err(IdError { kind, problem });
    let bytes = input.as_bytes();
    let Some(first) = bytes.first() else {
        return fail(IdProblem::Empty);
    };
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return fail(IdProblem::BadFirst);
    }
    if let Some((index, _)) = input.chars().enumerate().find(|(_, c)| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    }) {
        return fail(IdProblem::BadCharacter {
            position: index + 1,
        });
    }
    if bytes.len() > ID_MAX {
        return fail(IdProblem::TooLong {
            length: bytes.len(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `input` against `[a-z0-9][a-z0-9._-]{0,62}`.
            pub fn new(input: &str) -> Result<Self, IdError> {
                check_id($kind, input)?;
                Ok($name(input.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A validated agency identifier, e.g. `city-shinjuku` or `nta`.
    AgencyId,
    IdKind::Agency
);
id_type!(
    /// A validated affair identifier, e.g. `health-insurance-benefit`.
    AffairId,
    IdKind::Affair
);
id_type!(
    /// A validated data item identifier, e.g. `local-tax`.
    ItemId,
    IdKind::Item
);

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
        let problem = |input: &str| AgencyId::new(input).unwrap_err().problem;
        assert_eq!(problem(""), IdProblem::Empty);
        assert_eq!(problem("-nta"), IdProblem::BadFirst);
        assert_eq!(problem("NTA"), IdProblem::BadFirst);
        assert_eq!(
            problem("city/shinjuku"),
            IdProblem::BadCharacter { position: 5 }
        );
        assert_eq!(problem("nTa"), IdProblem::BadCharacter { position: 2 });
        assert_eq!(problem(&"a".repeat(64)), IdProblem::TooLong { length: 64 });
        assert_eq!(
            AgencyId::new("NTA").unwrap_err().to_string(),
            "agency id must start with a-z or 0-9"
        );
        assert_eq!(
            ItemId::new("").unwrap_err().to_string(),
            "data item id is empty"
        );
        assert!(AffairId::new("health-insurance.benefit").is_ok());
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
