//! Redeem: tokens addressed to the caller → its own codes for the people in
//! them, with the request context (who asked, under which affair, for which
//! items, until when). The rule behind each token is checked again under
//! the policy in force, so withdrawing a rule voids its tokens.

use std::sync::Arc;

use super::{BatchError, Done, Exchange, ItemError, check_size, per_item};
use crate::agency::{AgencyId, Epoch};
use crate::code::AgencyCode;
use crate::policy::Policy;
use crate::token::{self, RequestContext, SealKey, Serial, SharedClaims, TokenError, Window};

/// The key of the last token and whether it is in the exchange's cache.
type LastKey = Option<(Arc<SealKey>, bool)>;

/// What the provider learns from a token.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The provider's own code for the person.
    pub code: AgencyCode,
    /// The serial to quote.
    pub serial: Serial,
    /// Who asked, under which affair, for which items, until when (shared by
    /// the tokens of one seal).
    pub context: Arc<RequestContext>,
}

/// The decoded and authorized context of the last token, reused while the
/// next token carries the same one (tokens of one seal share it).
type Verdict = Result<Arc<RequestContext>, ItemError>;

impl Exchange {
    /// The caller's codes (of its current epoch) for the people in
    /// `tokens`, checked at `now` (unix seconds).
    pub fn redeem(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        tokens: &[&[u8]],
        now: u64,
    ) -> Result<Done<Redeemed>, BatchError> {
        self.redeem_in(policy, caller, None, tokens, now)
    }

    /// The same, answering codes of `epoch` (current or accepted; `None`:
    /// the current one). Tokens sealed under any generation the keyring
    /// holds and the policy has not destroyed open: a token in flight
    /// across a rotation still redeems.
    pub fn redeem_in(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        epoch: Option<Epoch>,
        tokens: &[&[u8]],
        now: u64,
    ) -> Result<Done<Redeemed>, BatchError> {
        check_size(tokens.len())?;
        let agency = policy.agency(caller)?;
        let coder = self.making_coder(agency, epoch)?;
        // Tokens from windows older than the longest lifetime cannot be valid.
        let oldest = Window::containing(now.saturating_sub(policy.longest_token_lifetime()));
        let current = Window::containing(now);
        let mut last_key: LastKey = None;
        let mut last_context: Option<(SharedClaims, Verdict)> = None;
        Ok(per_item(tokens, |bytes, person| {
            let (name, addressee) = token::peek(bytes)?;
            if addressee != caller.as_str().as_bytes() {
                return Err(TokenError::WrongAddressee.into());
            }
            if name.window() < oldest || name.window() > current {
                return Err(ItemError::StaleWindow);
            }
            if policy.destroyed_generations().contains(&name.generation()) {
                return Err(ItemError::DestroyedGeneration(name.generation()));
            }
            // The key the header names (format 1: its window's; format 2:
            // that window's key index), so a changed name opens nothing.
            let (key, cached) = match &last_key {
                Some((key, cached)) if key.name() == name => (Arc::clone(key), *cached),
                _ => self
                    .opening_key(caller, name)
                    .map_err(ItemError::Generation)?,
            };
            last_key = Some((Arc::clone(&key), cached));
            let opened = key.open_parts(bytes)?;
            if !cached {
                // Authentic: this key really sealed a token (in another
                // process, or before a restart), so it is worth keeping.
                self.keep_opening_key(caller, Arc::clone(&key));
                last_key = Some((key, true));
            }
            // From here on the token is authentic: its person is known, so
            // a refusal (withdrawn rule, expired) is recorded for them.
            *person = Some(self.available_link(&opened.handle)?);
            let verdict = match &last_context {
                Some((shared, verdict)) if *shared == opened.shared => verdict.clone(),
                _ => {
                    let verdict = authorize(policy, caller, &opened.shared);
                    last_context = Some((opened.shared.clone(), verdict.clone()));
                    verdict
                }
            };
            let context = verdict?;
            if context.expires_at <= now {
                return Err(ItemError::Expired);
            }
            Ok(Redeemed {
                code: coder
                    .code_of(&self.cross(&opened.handle, coder.generation())?)
                    .map_err(ItemError::Generation)?,
                serial: opened.serial,
                context,
            })
        }))
    }
}

/// Decodes a token's shared claims and checks its rule under `policy`.
fn authorize(policy: &Policy, provider: &AgencyId, shared: &SharedClaims) -> Verdict {
    let context = shared.decode().ok_or(TokenError::Forged)?;
    policy
        .authorize(
            &context.requester,
            &context.affair,
            provider,
            &context.items,
            context.non_disclosure_until.is_some(),
        )
        .map_err(ItemError::Withdrawn)?;
    Ok(Arc::new(context))
}
