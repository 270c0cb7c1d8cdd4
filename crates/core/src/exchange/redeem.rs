//! Redeem: tokens addressed to the caller → its own codes for the people in
//! them, with the request context (who asked, under which affair, for which
//! items, until when). The rule behind each token is checked again under
//! the policy in force, so withdrawing a rule voids its tokens.

use std::sync::Arc;

use super::{BatchError, Done, Exchange, ItemError, check_size, per_item};
use crate::agency::AgencyId;
use crate::code::AgencyCode;
use crate::policy::Policy;
use crate::token::{self, RequestContext, SealKey, Serial, SharedClaims, TokenError, Window};

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
    /// The caller's codes, in its current epoch, and the request context for
    /// tokens addressed to it, checked at `now` (unix seconds).
    pub fn redeem(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        tokens: &[&[u8]],
        now: u64,
    ) -> Result<Done<Redeemed>, BatchError> {
        check_size(tokens.len())?;
        let agency = policy.agency(caller)?;
        let coder = self.coder(caller, agency.epoch);
        // Tokens from windows older than the longest lifetime cannot be valid.
        let oldest = Window::containing(now.saturating_sub(policy.longest_token_lifetime()));
        let current = Window::containing(now);
        let mut last_key: Option<Arc<SealKey>> = None;
        let mut last_context: Option<(SharedClaims, Verdict)> = None;
        Ok(per_item(tokens, |bytes, person| {
            let (window, addressee) = token::peek(bytes)?;
            if addressee != caller.as_str().as_bytes() {
                return Err(TokenError::WrongAddressee.into());
            }
            if window < oldest || window > current {
                return Err(ItemError::StaleWindow);
            }
            let key = match &last_key {
                Some(key) if key.window() == window => Arc::clone(key),
                _ => {
                    let key = self.seal_key(caller, window);
                    last_key = Some(Arc::clone(&key));
                    key
                }
            };
            let opened = key.open_parts(bytes)?;
            // From here on the token is authentic: its person is known, so
            // a refusal (withdrawn rule, expired) is recorded for them.
            *person = Some(self.linker.link(&opened.handle));
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
                code: coder.code_of(&opened.handle),
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
