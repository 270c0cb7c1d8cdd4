//! Derive: My Numbers → the caller's own codes (needs the `derive`
//! capability).

use super::{BatchError, Exchange, ItemError, ItemFailure, Results, check_size};
use crate::agency::AgencyId;
use crate::batch::BatchDeriver;
use crate::mynumber::ParseError;
use crate::policy::{Capability, Policy};

impl Exchange {
    /// The caller's codes for `numbers` (ASCII digits), in its current epoch.
    pub fn derive(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        numbers: &[&[u8]],
    ) -> Result<Results<String>, BatchError> {
        check_size(numbers.len())?;
        let agency = policy.require(caller, Capability::Derive)?;
        let coder = self.coder(caller, agency.epoch);
        let mut results = Vec::with_capacity(numbers.len());
        BatchDeriver::new(&coder).derive(
            numbers.iter().map(|n| Ok::<_, ParseError>(*n)),
            |result| {
                let index = results.len();
                results.push(match result {
                    Ok(text) => Ok(String::from_utf8_lossy(text).into_owned()),
                    Err(error) => Err(ItemFailure {
                        index,
                        error: ItemError::Number(error),
                    }),
                });
            },
        );
        Ok(results)
    }
}
