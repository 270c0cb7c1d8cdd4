//! Derive: My Numbers → the caller's own codes (needs the `derive`
//! capability).

use super::{BatchError, Done, Exchange, ItemError, ItemFailure, check_size};
use crate::agency::{AgencyId, Epoch};
use crate::batch::BatchDeriver;
use crate::policy::{Capability, Policy};

impl Exchange {
    /// The caller's codes for `numbers` (ASCII digits), in its current
    /// epoch. A re-issued number gives its person's codes (those of the
    /// original number); a superseded one fails with
    /// [`ItemError::Superseded`].
    pub fn derive(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        numbers: &[&[u8]],
    ) -> Result<Done<String>, BatchError> {
        self.derive_in(policy, caller, None, numbers)
    }

    /// The caller's codes of `epoch` (current or accepted; `None`: the
    /// current one), one per number: an agency mid-rotation gets codes
    /// matching its store. A rekey-only, destroyed or unknown epoch is
    /// [`BatchError::Epoch`].
    pub fn derive_in(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        epoch: Option<Epoch>,
        numbers: &[&[u8]],
    ) -> Result<Done<String>, BatchError> {
        check_size(numbers.len())?;
        let agency = policy.require(caller, Capability::Derive)?;
        let coder = self.making_coder(agency, epoch)?;
        let mut done = Done::with_capacity(numbers.len());
        BatchDeriver::new(&coder).derive_linked_resolved(
            &self.persons,
            &self.linker,
            numbers.iter().map(|n| Ok::<_, ItemError>(*n)),
            |result| {
                let index = done.results.len();
                let (result, person) = match result {
                    Ok((text, link)) => {
                        (Ok(String::from_utf8_lossy(text).into_owned()), Some(link))
                    }
                    Err(error) => (Err(ItemFailure { index, error }), None),
                };
                done.results.push(result);
                done.people.push(person);
            },
        );
        Ok(done)
    }
}
