//! What an item or a whole batch can end in, as types: the service maps
//! them to gRPC codes (`service/status.rs` in the `fugo` package), the
//! audit trail records them, the metrics count them. No variant holds a
//! number, a code or a token: only rules, positions, epochs and ids.

use thiserror::Error;

use crate::agency::Epoch;
use crate::code_text::CodeTextError;
use crate::generation::{Generation, GenerationError};
use crate::link::PersonLink;
use crate::mynumber::ParseError;
use crate::policy::Denied;
use crate::token::TokenError;

/// One result per item, in input order.
pub type Results<T> = Vec<Result<T, ItemFailure>>;

/// A batch's results and, per item, the person it opened (if any): for
/// the audit trail, which records one entry per person, refusals that
/// opened a person (an expired token, a withdrawn rule) included.
/// Derefs to the results. `Debug` shows counts and failures only: the
/// results are codes, tokens and numbers.
pub struct Done<T> {
    /// One result per item, in input order.
    pub results: Results<T>,
    /// Per item, in input order: the person's link, `None` when the item
    /// opened no person (a malformed value, an unknown code).
    pub people: Vec<Option<PersonLink>>,
}

impl<T> Done<T> {
    pub(super) fn with_capacity(items: usize) -> Self {
        Done {
            results: Vec::with_capacity(items),
            people: Vec::with_capacity(items),
        }
    }
}

impl<T> std::fmt::Debug for Done<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let failures: Vec<&ItemFailure> = self
            .results
            .iter()
            .filter_map(|result| result.as_ref().err())
            .collect();
        f.debug_struct("Done")
            .field("results", &self.results.len())
            .field("failures", &failures)
            .field("people", &self.people.iter().flatten().count())
            .finish()
    }
}

impl<T> std::ops::Deref for Done<T> {
    type Target = Results<T>;

    fn deref(&self) -> &Results<T> {
        &self.results
    }
}

impl<T> IntoIterator for Done<T> {
    type Item = Result<T, ItemFailure>;
    type IntoIter = std::vec::IntoIter<Result<T, ItemFailure>>;

    fn into_iter(self) -> Self::IntoIter {
        self.results.into_iter()
    }
}

/// Why one item of a batch has no result.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ItemError {
    /// Not a valid My Number.
    #[error(transparent)]
    Number(#[from] ParseError),
    /// Not a well-formed code.
    #[error(transparent)]
    CodeText(#[from] CodeTextError),
    /// A well-formed code that is not the caller's (another agency's, or
    /// made under another key). Opaque on purpose.
    #[error("unknown code")]
    UnknownCode,
    /// A code of an epoch the caller's agency no longer accepts.
    #[error("code of epoch {0}, which is no longer accepted")]
    RetiredEpoch(Epoch),
    /// A code of an epoch in state rekey-only: it opens only in Rekey.
    #[error("code of epoch {0}, which opens only in Rekey (rekey-only)")]
    RekeyOnlyEpoch(Epoch),
    /// A code of a destroyed epoch: it opens nowhere.
    #[error("code of epoch {0}, which is destroyed")]
    DestroyedEpoch(Epoch),
    /// A token sealed under a destroyed master-key generation.
    #[error("token sealed under key generation {0}, which is destroyed")]
    DestroyedGeneration(Generation),
    /// A key generation the operation needs is not in the keyring (or a
    /// handle met a key of another generation).
    #[error(transparent)]
    Generation(GenerationError),
    /// A token that is malformed, forged, or addressed to someone else.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A token sealed in a key window too old to hold a valid token.
    #[error("token was sealed in a key window that is no longer accepted")]
    StaleWindow,
    /// A token past its expiry.
    #[error("token has expired")]
    Expired,
    /// The rule behind a token was withdrawn (or narrowed) since it was
    /// sealed.
    #[error("the rule behind this token no longer allows it: {0}")]
    Withdrawn(Denied),
    /// A number a re-issue replaced (derive): the person's codes come from
    /// their current number only.
    #[error("number superseded")]
    Superseded,
    /// The person is suspended (seal, redeem). Says no more, on purpose:
    /// the reason is for holders of `suspend` or `reissue` (D195).
    #[error("person unavailable")]
    Unavailable,
}

impl From<crate::persons::Superseded> for ItemError {
    fn from(_: crate::persons::Superseded) -> Self {
        ItemError::Superseded
    }
}

impl From<crate::persons::Unavailable> for ItemError {
    fn from(_: crate::persons::Unavailable) -> Self {
        ItemError::Unavailable
    }
}

/// One item's failure: its position and why. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("item {index}: {error}")]
pub struct ItemFailure {
    /// Position in the batch, from 0.
    pub index: usize,
    /// What is wrong.
    pub error: ItemError,
}

/// The random number source failed; nothing was sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the random number generator failed")]
pub struct RandomFailed;

/// Why a whole batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The policy refuses the exchange.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// More than [`super::MAX_BATCH`] items.
    #[error("a batch holds at most {max} items; this one has {0}", max = super::MAX_BATCH)]
    TooLarge(usize),
    /// A seal that names no data item.
    #[error("name at least one data item")]
    NoItems,
    /// A seal that names a data item twice. The item is not repeated: a
    /// caller may have typed anything there (D152).
    #[error("data item {position} (from 1) is named twice")]
    DuplicateItem {
        /// 1-based position of the second mention.
        position: usize,
    },
    /// The data items cannot be sealed (too many).
    #[error(transparent)]
    Items(TokenError),
    /// A non-disclosure date that is not in the future.
    #[error("the non-disclosure date must lie in the future")]
    NonDisclosurePast,
    /// A non-disclosure date further ahead than the rule allows.
    #[error("the non-disclosure date lies more than the rule's {max_days} days ahead")]
    NonDisclosureTooFar {
        /// The longest period the rule allows, in days.
        max_days: u32,
    },
    /// The random number source failed.
    #[error(transparent)]
    Random(#[from] RandomFailed),
    /// The epoch the caller named (or the current one) cannot make codes:
    /// unknown, rekey-only or destroyed.
    #[error("agency {agency}: epoch {epoch} {why}")]
    Epoch {
        /// The caller.
        agency: crate::agency::AgencyId,
        /// The epoch named.
        epoch: Epoch,
        /// "is not in the policy", "is rekey-only", "is destroyed".
        why: &'static str,
    },
    /// A key generation the batch needs is not in the keyring.
    #[error(transparent)]
    Generation(GenerationError),
}
