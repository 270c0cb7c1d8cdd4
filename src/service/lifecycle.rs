//! The key lifecycle's one-way high-water mark, kept in the audit store.
//!
//! Every policy put in force (at start, on reload) raises the store's mark
//! of each agency epoch to the state the policy gives it (in use <
//! rekey-only < destroyed) and adds the generations it destroys, in the
//! same commit as the record of its loading. A policy that would move an
//! epoch backwards — revive a destroyed epoch, reopen a rekey-only one, or
//! forget a destroyed generation — is refused, naming the agency and the
//! epoch, and the policy in force stays. An epoch the policy no longer
//! lists at all is not a move backwards: its codes open nowhere.
//!
//! The same marks hold every agency id a policy in force listed, and
//! whether it was retired: ids are inside the keys, so a later policy must
//! list each and keep a retired one retired (D211). Kept in the store
//! rather than read back from the last recorded policy, so the check holds
//! after retention has purged every record of a policy's loading (D217).

use std::collections::BTreeSet;

use fugo_log::store::Marks;

use crate::agency::Epoch;
use crate::exchange::Exchange;
use crate::policy::{EpochState, Policy};

/// The marks `policy` puts in force.
pub(crate) fn marks_of(policy: &Policy) -> Marks {
    Marks {
        epochs: policy
            .agencies()
            .flat_map(|agency| {
                agency.epochs.iter().map(|(epoch, binding)| {
                    (agency.id.to_string(), epoch.get(), binding.state.rank())
                })
            })
            .collect(),
        destroyed_generations: policy
            .destroyed_generations()
            .iter()
            .map(|g| g.get())
            .collect(),
        agencies: policy
            .agencies()
            .map(|agency| {
                let retired = policy.retired(&agency.id).is_some();
                (agency.id.to_string(), u8::from(retired))
            })
            .collect(),
    }
}

/// Checks `policy` against the stored high-water mark; the error names
/// every agency and epoch (or generation) it would move backwards, and
/// every agency id it would drop or retired agency it would revive.
pub(crate) fn check(policy: &Policy, stored: &Marks) -> Result<(), String> {
    let agencies = policy.keeps_agencies(
        stored
            .agencies
            .iter()
            .map(|(agency, rank)| (agency.as_str(), *rank > 0)),
    );
    if let Err(problems) = agencies {
        return Err(problems.join("; "));
    }
    let mut problems = Vec::new();
    for (agency, epoch, rank) in &stored.epochs {
        let Some(found) = policy.agencies().find(|a| a.id.as_str() == agency.as_str()) else {
            continue;
        };
        let Ok(epoch) = Epoch::new(*epoch) else {
            continue;
        };
        if let Some(binding) = found.binding(epoch)
            && binding.state.rank() < *rank
        {
            problems.push(format!(
                "agency {agency}: epoch {epoch} was {} and may not become {} again",
                EpochState::of_rank(*rank),
                binding.state
            ));
        }
    }
    let destroyed: BTreeSet<u16> = policy
        .destroyed_generations()
        .iter()
        .map(|g| g.get())
        .collect();
    for generation in &stored.destroyed_generations {
        if !destroyed.contains(generation) {
            problems.push(format!(
                "key generation {generation} was destroyed; keep it in destroyed_generations"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "a policy may not move a key epoch backwards (the store's high-water mark): {}",
            problems.join("; ")
        ))
    }
}

/// Checks that the exchange's keyring holds every generation `policy`
/// binds an epoch in use to.
pub(crate) fn check_keyring(exchange: &Exchange, policy: &Policy) -> Result<(), String> {
    exchange.check_policy(policy).map_err(|error| {
        format!("{error}: the policy binds an epoch in use to it; add its key to [keyring]")
    })
}

/// Raises `stored` by `new` (what the store does in the commit).
pub(crate) fn raise(stored: &mut Marks, new: &Marks) {
    for (agency, epoch, rank) in &new.epochs {
        match stored
            .epochs
            .iter_mut()
            .find(|(a, e, _)| a == agency && e == epoch)
        {
            Some((_, _, old)) => *old = (*old).max(*rank),
            None => stored.epochs.push((agency.clone(), *epoch, *rank)),
        }
    }
    for generation in &new.destroyed_generations {
        if !stored.destroyed_generations.contains(generation) {
            stored.destroyed_generations.push(*generation);
        }
    }
    for (agency, rank) in &new.agencies {
        match stored.agencies.iter_mut().find(|(a, _)| a == agency) {
            Some((_, old)) => *old = (*old).max(*rank),
            None => stored.agencies.push((agency.clone(), *rank)),
        }
    }
}
