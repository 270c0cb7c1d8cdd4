//! Migrate: after a merger, a merged agency's codes → the surviving
//! agency's codes in its current epoch (D215).
//!
//! The conversion is one step on a person handle: open the old code with
//! the merged agency's key of its epoch, make the survivor's code from the
//! handle. No My Number is involved and none is returned.

use super::{BatchError, Done, Exchange, OwnCodes, check_size, per_item};
use crate::agency::AgencyId;
use crate::policy::Policy;

impl Exchange {
    /// `survivor`'s current-epoch codes for `codes` of `merged` (of any of
    /// its accepted epochs), under a merger of `policy` naming both.
    pub fn migrate(
        &self,
        policy: &Policy,
        survivor: &AgencyId,
        merged: &AgencyId,
        codes: &[&[u8]],
    ) -> Result<Done<String>, BatchError> {
        check_size(codes.len())?;
        let from = policy.merger(survivor, merged)?;
        let to = policy.agency(survivor)?;
        let coder = self.coder(survivor, to.epoch);
        let mut old = OwnCodes::new(self, from);
        Ok(per_item(codes, |text, person| {
            let handle = old.open(text)?;
            *person = Some(self.linker.link(&handle));
            Ok(String::from_utf8_lossy(&coder.code_of(&handle).to_text()).into_owned())
        }))
    }
}
