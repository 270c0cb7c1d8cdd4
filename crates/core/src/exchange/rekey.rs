//! Rekey: the caller's old codes → its codes of the current epoch, with no
//! My Number in or out. Codes of current, accepted *and rekey-only* epochs
//! open here (rekey-only epochs open nowhere else), so an agency that
//! missed a rotation's window — a codes-only one included — can still move
//! its people over. Across master-key generations the person crosses
//! inside the exchange (handle → number → handle); nothing but the new
//! code leaves. No capability is needed: an agency may always turn its own
//! codes into its own codes.

use super::{BatchError, Done, Exchange, ItemError, OwnCodes, check_size, per_item};
use crate::agency::{AgencyId, Epoch};
use crate::code::{AgencyCode, Coder};
use crate::policy::Policy;

/// One rekeyed code.
#[derive(Debug, Clone)]
pub struct Rekeyed {
    /// The epoch of the code given.
    pub from: Epoch,
    /// The same person's code of the current epoch.
    pub code: AgencyCode,
}

impl Exchange {
    /// The caller's current-epoch codes for `codes` (its own, of any epoch
    /// that is current, accepted or rekey-only), one per code.
    pub fn rekey(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        codes: &[&[u8]],
    ) -> Result<Done<Rekeyed>, BatchError> {
        check_size(codes.len())?;
        let agency = policy.agency(caller)?;
        let target = self.making_coder(agency, None)?;
        Ok(self.convert(OwnCodes::for_rekey(self, agency), &target, codes))
    }

    /// Each of `codes`, opened as `source` allows, as `target`'s code of the
    /// same person (crossing generations if need be): Rekey, and Migrate
    /// after a merger.
    pub(super) fn convert(
        &self,
        mut source: OwnCodes<'_>,
        target: &Coder,
        codes: &[&[u8]],
    ) -> Done<Rekeyed> {
        per_item(codes, |text, person| {
            let (code, coder) = source.read(text)?;
            let handle = coder.open(&code).map_err(|_| ItemError::UnknownCode)?;
            *person = Some(self.link(&handle)?);
            let moved = self.cross(&handle, target.generation())?;
            Ok(Rekeyed {
                from: code.epoch(),
                code: target.code_of(&moved).map_err(ItemError::Generation)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::agency::{AffairId, ItemId};
    use crate::exchange::{RandomFailed, RandomSource, SealContext};
    use crate::generation::Generation;
    use crate::keyring::Keyring;
    use crate::keys::{KeyHierarchy, MasterKey};
    use crate::policy::{
        Affair, Agency, Capability, EpochBinding, EpochState, Policy, PolicyVersion, Rule,
    };

    struct Fixed;
    impl RandomSource for Fixed {
        fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
            out.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
            Ok(())
        }
    }

    const NOW: u64 = 1_790_000_000;
    const NUMBER: &[u8] = b"123456789018";

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    fn g(n: u16) -> Generation {
        Generation::new(n).unwrap()
    }

    fn e(n: u8) -> Epoch {
        Epoch::new(n).unwrap()
    }

    /// A policy where city's epochs are `city` and mhlw's `mhlw`; mhlw may
    /// ask city under "health"; city derives, mhlw does not.
    fn policy(
        city: &[(u8, u16, EpochState)],
        mhlw: &[(u8, u16, EpochState)],
        destroyed: &[u16],
    ) -> Policy {
        let agency = |name: &str, epochs: &[(u8, u16, EpochState)], caps: &[Capability]| {
            let table: BTreeMap<Epoch, EpochBinding> = epochs
                .iter()
                .map(|(epoch, generation, state)| {
                    let binding = EpochBinding {
                        generation: g(*generation),
                        state: *state,
                    };
                    (e(*epoch), binding)
                })
                .collect();
            let current = table
                .iter()
                .find(|(_, b)| b.state == EpochState::Current)
                .map(|(e, _)| *e)
                .unwrap();
            Agency {
                id: id(name),
                name: name.to_owned(),
                certificates: vec![name.to_owned()],
                capabilities: caps.iter().copied().collect(),
                epoch: current,
                epochs: table,
                quotas: Default::default(),
            }
        };
        Policy::new(
            PolicyVersion::of_text("rotation"),
            vec![
                agency("city", city, &[Capability::Derive, Capability::Reidentify]),
                agency("mhlw", mhlw, &[Capability::Derive]),
            ],
            vec![Affair {
                id: AffairId::new("health").unwrap(),
                name: "health".to_owned(),
                legal_basis: "test".to_owned(),
            }],
            vec![Rule {
                requester: id("mhlw"),
                affair: AffairId::new("health").unwrap(),
                provider: id("city"),
                items: BTreeSet::from([ItemId::new("income").unwrap()]),
                token_lifetime: 3600,
                non_disclosure: false,
                non_disclosure_max_days: None,
            }],
        )
        .unwrap()
        .with_destroyed_generations(destroyed.iter().map(|n| g(*n)).collect())
        .unwrap()
    }

    fn exchange() -> Exchange {
        let one = KeyHierarchy::new(&MasterKey::from_bytes([1; 32]));
        let two = KeyHierarchy::of_generation(&MasterKey::from_bytes([2; 32]), g(2));
        Exchange::with_keyring(Keyring::new(vec![one, two]).unwrap(), Box::new(Fixed))
    }

    fn one_code(exchange: &Exchange, policy: &Policy, agency: &str, epoch: Option<u8>) -> String {
        let done = exchange
            .derive_in(policy, &id(agency), epoch.map(e), &[NUMBER])
            .unwrap();
        done.results[0].clone().unwrap()
    }

    fn item_error<T: std::fmt::Debug>(done: &Done<T>) -> ItemError {
        done.results[0].as_ref().unwrap_err().error.clone()
    }

    use EpochState::{Accepted, Current, Destroyed, RekeyOnly};

    /// A rotation of city onto an epoch of generation 2, end to end in
    /// the core: accepted, then rekey-only, then destroyed with its
    /// generation.
    #[test]
    fn a_rotation_across_generations() {
        let exchange = exchange();
        let before = policy(&[(1, 1, Current)], &[(1, 1, Current)], &[]);
        let old = one_code(&exchange, &before, "city", None);
        let old_link = exchange
            .derive(&before, &id("city"), &[NUMBER])
            .unwrap()
            .people[0]
            .unwrap();
        // A token in flight: sealed to city under generation 1.
        let mhlw_code = one_code(&exchange, &before, "mhlw", None);
        let context = SealContext {
            provider: id("city"),
            affair: AffairId::new("health").unwrap(),
            items: vec![ItemId::new("income").unwrap()],
            non_disclosure_until: None,
        };
        let sealed = exchange
            .seal(&before, &id("mhlw"), &context, &[mhlw_code.as_bytes()], NOW)
            .unwrap();
        let token = sealed.results[0].as_ref().unwrap().token.clone();
        assert_eq!(token.header().unwrap().key.generation(), g(1));

        // Rotation: epoch 2 of generation 2 is current, epoch 1 accepted.
        let rotating = policy(
            &[(1, 1, Accepted), (2, 2, Current)],
            &[(1, 1, Current)],
            &[],
        );
        let new = one_code(&exchange, &rotating, "city", None);
        assert_ne!(new, old);
        assert!(new.starts_with("12"), "{new}");
        // The caller may still name the accepted epoch and get its old codes.
        assert_eq!(one_code(&exchange, &rotating, "city", Some(1)), old);
        // One person, one link, whichever generation made the code.
        let new_link = exchange
            .derive(&rotating, &id("city"), &[NUMBER])
            .unwrap()
            .people[0]
            .unwrap();
        assert_eq!(new_link, old_link);
        // The token sealed under generation 1 redeems to the new code, or
        // to the old one when the caller names epoch 1.
        let redeemed = exchange
            .redeem(&rotating, &id("city"), &[token.as_bytes()], NOW)
            .unwrap();
        let got = redeemed.results[0].as_ref().unwrap().code.to_text();
        assert_eq!(got.as_slice(), new.as_bytes());
        let redeemed = exchange
            .redeem_in(&rotating, &id("city"), Some(e(1)), &[token.as_bytes()], NOW)
            .unwrap();
        let got = redeemed.results[0].as_ref().unwrap().code.to_text();
        assert_eq!(got.as_slice(), old.as_bytes());
        // A new seal to city is under generation 2 and redeems the same.
        let sealed = exchange
            .seal(
                &rotating,
                &id("mhlw"),
                &context,
                &[mhlw_code.as_bytes()],
                NOW,
            )
            .unwrap();
        let token2 = sealed.results[0].as_ref().unwrap().token.clone();
        assert_eq!(token2.header().unwrap().key.generation(), g(2));
        assert_eq!(token2.as_bytes()[0], crate::token::FORMAT_GENERATIONAL);
        let redeemed = exchange
            .redeem(&rotating, &id("city"), &[token2.as_bytes()], NOW)
            .unwrap();
        let got = redeemed.results[0].as_ref().unwrap().code.to_text();
        assert_eq!(got.as_slice(), new.as_bytes());

        // Rekey: old → new, no number in or out; current codes stay.
        let rekeyed = exchange
            .rekey(
                &rotating,
                &id("city"),
                &[old.as_bytes(), new.as_bytes(), b"x"],
            )
            .unwrap();
        let first = rekeyed.results[0].as_ref().unwrap();
        assert_eq!((first.from, first.code.to_text()), (e(1), *b_text(&new)));
        assert_eq!(
            rekeyed.results[1].as_ref().unwrap().code.to_text(),
            *b_text(&new)
        );
        assert!(rekeyed.results[2].is_err());
        assert_eq!(rekeyed.people[0], Some(old_link));

        // The window closes: epoch 1 is rekey-only. It opens only in Rekey.
        let late = policy(
            &[(1, 1, RekeyOnly), (2, 2, Current)],
            &[(1, 1, Current)],
            &[],
        );
        let refused = exchange
            .reidentify(&late, &id("city"), &[old.as_bytes()])
            .unwrap();
        assert_eq!(item_error(&refused), ItemError::RekeyOnlyEpoch(e(1)));
        let refused = exchange
            .derive_in(&late, &id("city"), Some(e(1)), &[NUMBER])
            .unwrap_err();
        assert_eq!(refused.to_string(), "agency city: epoch 1 is rekey-only");
        let rekeyed = exchange
            .rekey(&late, &id("city"), &[old.as_bytes()])
            .unwrap();
        assert_eq!(
            rekeyed.results[0].as_ref().unwrap().code.to_text(),
            *b_text(&new)
        );

        // Generation 1 destroyed (every epoch bound to it destroyed).
        let after = policy(
            &[(1, 1, Destroyed), (2, 2, Current)],
            &[(1, 1, Destroyed), (2, 2, Current)],
            &[1],
        );
        let refused = exchange
            .rekey(&after, &id("city"), &[old.as_bytes()])
            .unwrap();
        assert_eq!(item_error(&refused), ItemError::DestroyedEpoch(e(1)));
        assert_eq!(
            item_error(&refused).to_string(),
            "code of epoch 1, which is destroyed"
        );
        let refused = exchange
            .redeem(&after, &id("city"), &[token.as_bytes()], NOW)
            .unwrap();
        assert_eq!(item_error(&refused), ItemError::DestroyedGeneration(g(1)));
        let refused = exchange
            .derive_in(&after, &id("city"), Some(e(1)), &[NUMBER])
            .unwrap_err();
        assert_eq!(refused.to_string(), "agency city: epoch 1 is destroyed");
        // The new codes still reidentify.
        let back = exchange
            .reidentify(&after, &id("city"), &[new.as_bytes()])
            .unwrap();
        assert_eq!(back.results[0].as_ref().unwrap().as_bytes(), NUMBER);
    }

    fn b_text(text: &str) -> &[u8; 29] {
        text.as_bytes().try_into().unwrap()
    }

    /// A policy binding an epoch to a generation the keyring lacks is
    /// refused by the check a server makes, and its codes by a typed error.
    #[test]
    fn a_generation_missing_from_the_keyring_is_named() {
        let exchange = Exchange::new(
            KeyHierarchy::new(&MasterKey::from_bytes([1; 32])),
            Box::new(Fixed),
        );
        let rotating = policy(
            &[(1, 1, Accepted), (2, 2, Current)],
            &[(1, 1, Current)],
            &[],
        );
        assert_eq!(
            exchange.check_policy(&rotating).unwrap_err(),
            crate::generation::GenerationError::NotInKeyring(g(2))
        );
        let refused = exchange
            .derive(&rotating, &id("city"), &[NUMBER])
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "key generation 2 is not in the keyring"
        );
    }

    /// A suspended person is unavailable to seal and redeem whichever
    /// generation made the code or sealed the token (the tables are keyed
    /// from the audit generation, D179); a re-issued number derives the
    /// original codes in generation 2 too.
    #[test]
    fn suspension_and_re_issue_hold_across_generations() {
        use crate::mynumber::MyNumber;
        use crate::persons::{Reason, Suspension};
        // A second exchange records no re-issue: the original's codes.
        let fresh = exchange();
        let exchange = exchange();
        let rotated = policy(&[(2, 2, Current)], &[(2, 2, Current)], &[]);
        let mhlw_code = one_code(&exchange, &rotated, "mhlw", None);
        let context = SealContext {
            provider: id("city"),
            affair: AffairId::new("health").unwrap(),
            items: vec![ItemId::new("income").unwrap()],
            non_disclosure_until: None,
        };
        let seal = |exchange: &Exchange| {
            exchange
                .seal(
                    &rotated,
                    &id("mhlw"),
                    &context,
                    &[mhlw_code.as_bytes()],
                    NOW,
                )
                .unwrap()
        };
        let token = seal(&exchange).results[0].as_ref().unwrap().token.clone();
        assert_eq!(token.header().unwrap().key.generation(), g(2));

        let number = MyNumber::parse(NUMBER).unwrap();
        let hold = Suspension {
            reason: Reason::FraudHold,
            since_ms: 1,
        };
        let planned = exchange.plan_suspension(&number, Some(hold)).unwrap();
        exchange.persons().apply(planned.change);
        assert_eq!(item_error(&seal(&exchange)), ItemError::Unavailable);
        let redeemed = exchange
            .redeem(&rotated, &id("city"), &[token.as_bytes()], NOW)
            .unwrap();
        assert_eq!(item_error(&redeemed), ItemError::Unavailable);
        let lifted = exchange.plan_suspension(&number, None).unwrap();
        exchange.persons().apply(lifted.change);
        assert!(seal(&exchange).results[0].is_ok());

        // Re-issue: the new number derives the original's generation-2 code.
        let new = MyNumber::parse(b"000000000019").unwrap();
        let planned = exchange.plan_reissue(&number, &new).unwrap();
        exchange.persons().apply(planned.change);
        let derived = exchange
            .derive(&rotated, &id("city"), &[new.expose_digits().as_slice()])
            .unwrap();
        assert_eq!(
            derived.results[0].as_ref().unwrap(),
            &one_code(&fresh, &rotated, "city", None)
        );
        let old = exchange.derive(&rotated, &id("city"), &[NUMBER]).unwrap();
        assert_eq!(item_error(&old), ItemError::Superseded);
    }
}
