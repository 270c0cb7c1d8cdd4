//! Re-issue, suspension and lift through the exchange: the tables' checks
//! and sealed entries (`crate::persons`), with the nonces drawn here and
//! the person links the audit trail needs. The caller stores
//! [`Planned::change`] with its audit record in one commit, then hands it
//! to [`Persons::apply`](crate::persons::Persons::apply) via
//! [`Exchange::persons`].

use thiserror::Error;

use super::{Exchange, RandomFailed};
use crate::link::PersonLink;
use crate::mynumber::MyNumber;
use crate::persons::{Change, NONCE_LEN, Persons, PersonsError, Suspension};

/// A change ready to store, and whom it concerns.
#[derive(Debug)]
pub struct Planned {
    /// The entries to store, then to apply.
    pub change: Change,
    /// The person: the link of the original number's handle, which every
    /// record about them carries, before and after a re-issue.
    pub person: PersonLink,
    /// A re-issue's new number's own link (of the handle it would have
    /// had): it must appear nowhere in the audit trail.
    pub new_number: Option<PersonLink>,
}

/// Why a change could not be planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// The tables refuse it.
    #[error(transparent)]
    Persons(#[from] PersonsError),
    /// No nonces could be drawn.
    #[error(transparent)]
    Random(#[from] RandomFailed),
}

impl Exchange {
    /// The re-issue and suspension tables (to load at start and to apply
    /// stored changes to).
    pub fn persons(&self) -> &Persons {
        &self.persons
    }

    /// The link of the person `number` is (or was) a number of: the one
    /// every record about them carries.
    pub fn person_link(&self, number: &MyNumber) -> PersonLink {
        let original = self.persons.original(number);
        self.linker.link_number(&original)
    }

    /// Plans the re-issue of `old` (the person's current number) as `new`.
    pub fn plan_reissue(&self, old: &MyNumber, new: &MyNumber) -> Result<Planned, PlanError> {
        let mut nonces = [0u8; 3 * NONCE_LEN];
        self.random.fill(&mut nonces)?;
        let change = self.persons.plan_reissue(old, new, &nonces)?;
        let person = self.linker.link_number(change.original());
        let new_number = change
            .new_number()
            .map(|number| self.linker.link_number(number));
        Ok(Planned {
            change,
            person,
            new_number,
        })
    }

    /// Plans a suspension of the person of `number` (`Some`) or its lift
    /// (`None`).
    pub fn plan_suspension(
        &self,
        number: &MyNumber,
        suspension: Option<Suspension>,
    ) -> Result<Planned, PlanError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce)?;
        let change = self.persons.plan_suspension(number, suspension, &nonce)?;
        let person = self.linker.link_number(change.original());
        Ok(Planned {
            change,
            person,
            new_number: None,
        })
    }
}
