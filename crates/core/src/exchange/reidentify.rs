//! Reidentify: the caller's own codes → My Numbers (needs the `reidentify`
//! capability).

use zeroize::Zeroizing;

use super::{BatchError, Done, Exchange, ItemError, OwnCodes, check_size, per_item};
use crate::agency::AgencyId;
use crate::policy::{Capability, Policy};

impl Exchange {
    /// My Numbers (12 ASCII digits, wiped on drop) for the caller's codes of
    /// any accepted epoch: each person's current number (after a re-issue,
    /// the new one).
    pub fn reidentify(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        codes: &[&[u8]],
    ) -> Result<Done<Zeroizing<String>>, BatchError> {
        check_size(codes.len())?;
        let agency = policy.require(caller, Capability::Reidentify)?;
        let mut own = OwnCodes::new(self, agency);
        Ok(per_item(codes, |text, person| {
            let (code, coder) = own.read(text)?;
            let handle = coder.open(&code).map_err(|_| ItemError::UnknownCode)?;
            *person = Some(self.link(&handle)?);
            let number = coder
                .reidentify(&code)
                .map_err(|_| ItemError::UnknownCode)?;
            let number = self.persons.current(number);
            let digits = number.expose_digits();
            Ok(Zeroizing::new(
                String::from_utf8_lossy(&digits[..]).into_owned(),
            ))
        }))
    }
}
