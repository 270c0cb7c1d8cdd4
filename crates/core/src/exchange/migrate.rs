//! Migrate: after a merger, a merged agency's codes → the surviving
//! agency's codes in its current epoch (D215).
//!
//! The conversion is Rekey's (`Exchange::convert`): open the old code with
//! the merged agency's key of its epoch, make the survivor's code from the
//! handle (crossing generations inside the exchange if their epochs are
//! bound to different ones). No My Number is returned.

use super::{BatchError, Done, Exchange, OwnCodes, Rekeyed, check_size};
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
    ) -> Result<Done<Rekeyed>, BatchError> {
        check_size(codes.len())?;
        let from = policy.merger(survivor, merged)?;
        let to = policy.agency(survivor)?;
        let target = self.making_coder(to, None)?;
        Ok(self.convert(OwnCodes::new(self, from), &target, codes))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::agency::Epoch;
    use crate::code::Coder;
    use crate::exchange::{BatchError, ItemError, RandomFailed, RandomSource};
    use crate::keys::{KeyHierarchy, MasterKey};
    use crate::mynumber::MyNumber;
    use crate::policy::{Agency, Denied, Merger, PolicyVersion};

    struct NoRandom;

    impl RandomSource for NoRandom {
        fn fill(&self, _: &mut [u8]) -> Result<(), RandomFailed> {
            Err(RandomFailed)
        }
    }

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    fn epoch(n: u8) -> Epoch {
        Epoch::new(n).unwrap()
    }

    fn agency(name: &str, current: u8, accepted: &[u8]) -> Agency {
        Agency {
            id: id(name),
            name: name.to_owned(),
            certificates: vec![name.to_owned()],
            capabilities: BTreeSet::new(),
            epoch: epoch(current),
            epochs: crate::policy::epochs_of_generation_one(
                epoch(current),
                &accepted.iter().map(|&e| epoch(e)).collect(),
            ),
            quotas: Default::default(),
        }
    }

    /// A code of any epoch the merged agency accepts becomes the
    /// survivor's code in its current epoch; a retired epoch, another
    /// agency's code and a survivor the merger does not name are refused.
    #[test]
    fn old_codes_of_any_accepted_epoch_become_current_codes_of_the_survivor() {
        let keys = KeyHierarchy::new(&MasterKey::from_bytes([3; 32]));
        let policy = Policy::new(
            PolicyVersion::of_text("migrate"),
            vec![
                agency("town", 2, &[1, 2]),
                agency("city", 3, &[3]),
                agency("other", 1, &[1]),
            ],
            vec![],
            vec![],
        )
        .unwrap()
        .with_relations(
            vec![],
            vec![Merger {
                merged: id("town"),
                survivor: id("city"),
                retired: true,
            }],
        )
        .unwrap();
        let exchange = Exchange::new(
            KeyHierarchy::new(&MasterKey::from_bytes([3; 32])),
            Box::new(NoRandom),
        );
        let number = MyNumber::parse(b"123456789018").unwrap();
        let code = |agency: &str, e: u8| {
            let coder = Coder::new(&keys, id(agency), epoch(e));
            coder
                .code_of(&coder.handle(&number))
                .unwrap()
                .to_text()
                .to_vec()
        };
        let expected = code("city", 3);
        let migrated = |done: &Done<Rekeyed>, i: usize| {
            done.results[i].as_ref().unwrap().code.to_text().to_vec()
        };
        let (old1, old2, stale, foreign) = (
            code("town", 1),
            code("town", 2),
            code("town", 4),
            code("other", 1),
        );
        let done = exchange
            .migrate(
                &policy,
                &id("city"),
                &id("town"),
                &[&old1, &old2, &stale, &foreign],
            )
            .unwrap();
        assert_eq!(migrated(&done, 0), expected);
        assert_eq!(migrated(&done, 1), expected);
        assert!(matches!(
            done.results[2].as_ref().unwrap_err().error,
            ItemError::RetiredEpoch(_)
        ));
        assert!(matches!(
            done.results[3].as_ref().unwrap_err().error,
            ItemError::UnknownCode
        ));
        // One person, opened twice: the same link; none for the refusals.
        assert_eq!(done.people[0], done.people[1]);
        assert!(done.people[0].is_some() && done.people[2].is_none());
        assert!(matches!(
            exchange.migrate(&policy, &id("other"), &id("town"), &[&old1]),
            Err(BatchError::Denied(Denied::NoMerger { .. }))
        ));
    }
}
