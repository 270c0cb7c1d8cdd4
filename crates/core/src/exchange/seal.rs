//! Seal: the caller's own codes → tokens addressed to a provider, under a
//! rule of the policy. Each token carries the person's handle, a fresh
//! serial and the request context, sealed with one of the provider's keys
//! of the day (the batch reserves them, seal_keys.rs), so only the provider
//! can open it and neither side learns the other's code.

use std::collections::BTreeSet;

use super::{BatchError, Done, Exchange, OwnCodes, check_size, per_item};
use crate::agency::{AffairId, AgencyId, ItemId};
use crate::policy::Policy;
use crate::token::{NONCE_LEN, SealedToken, Serial, SharedClaims, Window};

/// Random bytes one token takes: its serial and its nonce.
const FRESH: usize = 16 + NONCE_LEN;

/// The context common to a seal batch.
#[derive(Debug, Clone)]
pub struct SealContext {
    /// Addressee.
    pub provider: AgencyId,
    /// Affair the caller acts under.
    pub affair: AffairId,
    /// Items asked for: at least one, none twice.
    pub items: Vec<ItemId>,
    /// Non-disclosure date (unix seconds), if asked for: in the future and
    /// at most the rule's `non_disclosure_max_days` ahead.
    pub non_disclosure_until: Option<u64>,
}

/// A token ready to hand to the requester.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The token.
    pub token: SealedToken,
    /// Its serial.
    pub serial: Serial,
    /// Unix seconds after which it is void.
    pub expires_at: u64,
}

impl SealContext {
    /// Checks the items: present and distinct.
    fn check_items(&self) -> Result<(), BatchError> {
        if self.items.is_empty() {
            return Err(BatchError::NoItems);
        }
        let mut seen = BTreeSet::new();
        if let Some(again) = self.items.iter().position(|item| !seen.insert(item)) {
            return Err(BatchError::DuplicateItem {
                position: again + 1,
            });
        }
        Ok(())
    }

    /// Checks a non-disclosure date against `now` and the rule's longest
    /// period (`None`: the rule allows no date, which `authorize` refused
    /// already), so no exchange is hidden from the person for longer.
    fn check_non_disclosure(&self, now: u64, max_days: Option<u32>) -> Result<(), BatchError> {
        let Some(until) = self.non_disclosure_until else {
            return Ok(());
        };
        if until <= now {
            return Err(BatchError::NonDisclosurePast);
        }
        let max_days = max_days.unwrap_or(0);
        if until - now > u64::from(max_days) * 86_400 {
            return Err(BatchError::NonDisclosureTooFar { max_days });
        }
        Ok(())
    }
}

impl Exchange {
    /// Tokens addressed to `context.provider`, one per code of the caller's,
    /// sealed at `now` (unix seconds).
    pub fn seal(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        context: &SealContext,
        codes: &[&[u8]],
        now: u64,
    ) -> Result<Done<Sealed>, BatchError> {
        check_size(codes.len())?;
        let agency = policy.agency(caller)?;
        // Named by the caller: refused without repeating it (D152).
        let provider = policy
            .agency(&context.provider)
            .map_err(|_| crate::policy::Denied::NotInPolicy { field: "provider" })?;
        // Tokens are sealed under the provider's current generation and
        // carry a handle of it, so the provider's redemption stays in one
        // generation unless the provider rotates while tokens are in flight.
        let generation = provider.current_generation();
        context.check_items()?;
        let rule = policy.authorize(
            caller,
            &context.affair,
            &context.provider,
            &context.items,
            context.non_disclosure_until.is_some(),
        )?;
        context.check_non_disclosure(now, rule.non_disclosure_max_days)?;
        let expires_at = now + rule.token_lifetime;
        let shared = SharedClaims::new(
            caller,
            &context.affair,
            &context.items,
            expires_at,
            context.non_disclosure_until,
        )
        .map_err(BatchError::Items)?;
        // One draw from the source per batch, not two per token.
        let mut random = vec![0u8; FRESH * codes.len()];
        self.random.fill(&mut random)?;
        // Every item is counted against its key, sealed or not.
        let reservation = self.reserve_seals(
            &context.provider,
            generation,
            Window::containing(now),
            codes.len(),
        )?;
        let mut own = OwnCodes::new(self, agency);
        // Every item has its share, sealed or not, so an item's serial and
        // nonce depend only on its position in the batch.
        let shares = codes
            .iter()
            .zip(random.chunks_exact(FRESH))
            .zip(reservation.keys());
        Ok(per_item(shares, |((text, share), key), person| {
            let (serial, nonce) = split_share(share);
            let handle = own.open(text)?;
            *person = Some(self.available_link(&handle)?);
            let handle = self.cross(&handle, generation)?;
            let token = key.seal_person(&handle, serial, &shared, nonce)?;
            Ok(Sealed {
                token,
                serial,
                expires_at,
            })
        }))
    }
}

/// A token's serial and nonce from its share of the batch's random bytes
/// (exactly [`FRESH`] of them: `chunks_exact` hands out no other length).
fn split_share(share: &[u8]) -> (Serial, [u8; NONCE_LEN]) {
    let mut serial = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    serial.copy_from_slice(&share[..16]);
    nonce.copy_from_slice(&share[16..FRESH]);
    (Serial::from_bytes(serial), nonce)
}
