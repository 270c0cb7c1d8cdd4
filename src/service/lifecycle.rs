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
//!
//! And they hold, as first stored, the generation each epoch is bound to
//! and the fingerprint of each generation's key: a policy that would bind
//! an epoch to another generation, or a keyring whose key for a generation
//! is another than the one first used, would change every code of those
//! epochs without a word, so both are refused (D200). The offline
//! `fugo derive` reads the same marks to refuse an epoch its key cannot
//! make (see [`offline_epoch`]).

use std::collections::BTreeSet;

use fugo_log::store::Marks;

use crate::agency::{AgencyId, Epoch};
use crate::exchange::Exchange;
use crate::generation::Generation;
use crate::keyring::Keyring;
use crate::keys::Fingerprint;
use crate::policy::{EpochState, Policy};

/// The marks `policy` puts in force with `keyring` (the generations it
/// holds, by fingerprint).
pub(crate) fn marks_of(policy: &Policy, keyring: &Keyring) -> Marks {
    // Per epoch: its state's rank, and the generation it is bound to.
    let (epochs, bindings) = policy
        .agencies()
        .flat_map(|agency| {
            agency.epochs.iter().map(|(epoch, binding)| {
                let id = agency.id.to_string();
                (
                    (id.clone(), epoch.get(), binding.state.rank()),
                    (id, epoch.get(), binding.generation.get()),
                )
            })
        })
        .unzip();
    Marks {
        epochs,
        bindings,
        generation_keys: keyring
            .fingerprints()
            .map(|(generation, fingerprint)| (generation.get(), fingerprint.to_string()))
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
    for (agency, epoch, generation) in &stored.bindings {
        let bound = policy
            .agencies()
            .find(|a| a.id.as_str() == agency.as_str())
            .zip(Epoch::new(*epoch).ok())
            .and_then(|(found, epoch)| found.binding(epoch));
        if let Some(binding) = bound
            && binding.generation.get() != *generation
        {
            problems.push(format!(
                "agency {agency}: epoch {epoch} is bound to key generation {generation} and may \
                 not be bound to generation {} (its codes would change); rekey onto a new epoch \
                 instead",
                binding.generation
            ));
        }
    }
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

/// The generations of `keyring` whose key is not the one the store keeps
/// for them (a generation's key is the one first used for it): each with
/// the fingerprint kept and the fingerprint of the key given. The server
/// refuses to start on any; the offline
/// `fugo derive` refuses to run.
pub fn generation_key_mismatches(
    keyring: &Keyring,
    stored: &Marks,
) -> Vec<(Generation, String, Fingerprint)> {
    keyring
        .fingerprints()
        .filter_map(|(generation, fingerprint)| {
            let (_, kept) = stored
                .generation_keys
                .iter()
                .find(|(g, _)| *g == generation.get())?;
            (*kept != fingerprint.to_string()).then(|| (generation, kept.clone(), fingerprint))
        })
        .collect()
}

/// [`generation_key_mismatches`] as the server's start refusal.
pub(crate) fn check_generation_keys(keyring: &Keyring, stored: &Marks) -> Result<(), String> {
    let problems: Vec<String> = generation_key_mismatches(keyring, stored)
        .into_iter()
        .map(|(generation, kept, fingerprint)| {
            format!(
                "key generation {generation} was the key with fingerprint {kept}, and the key \
                 configured for it now has fingerprint {fingerprint}: every code of its \
                 epochs would change; configure the original key, or add the new key as a \
                 new generation and rekey onto it"
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Which key generation the offline `fugo derive` must use for `agency`'s
/// `epoch`, and a refusal naming the epoch when codes may not be made in
/// it: from the policy when one is given (`--config`), else from the
/// store's marks. `epoch` defaults to the agency's current epoch in the
/// policy. An epoch the store has marked rekey-only or destroyed is
/// refused whatever the policy file says; an epoch neither knows is taken
/// as generation 1 (no policy in force has bound it: the test-vector and
/// demo use).
pub fn offline_epoch(
    policy: Option<&Policy>,
    stored: &Marks,
    agency: &AgencyId,
    epoch: Option<Epoch>,
) -> Result<(Epoch, Generation), String> {
    let listed = match policy {
        Some(policy) => Some(
            policy
                .agency(agency)
                .map_err(|_| format!("agency {agency} is not in the policy"))?,
        ),
        None => None,
    };
    let epoch = match (epoch, listed) {
        (Some(epoch), _) => epoch,
        (None, Some(listed)) => listed.epoch,
        (None, None) => {
            return Err("give --epoch N (or --config, to take the current epoch)".into());
        }
    };
    let rank = stored
        .epochs
        .iter()
        .find(|(a, e, _)| a == agency.as_str() && *e == epoch.get())
        .map_or(0, |(_, _, rank)| *rank);
    let binding = listed
        .map(|listed| {
            listed
                .binding(epoch)
                .ok_or_else(|| format!("agency {agency} has no epoch {epoch} in the policy"))
        })
        .transpose()?;
    // The store's mark wins over a policy file edited backwards.
    let in_policy = binding.map_or(EpochState::Current, |binding| binding.state);
    match EpochState::of_rank(rank.max(in_policy.rank())) {
        EpochState::Current | EpochState::Accepted => {}
        EpochState::RekeyOnly => {
            return Err(format!(
                "agency {agency}: epoch {epoch} is rekey-only: no new codes are made in it; \
                 derive in the current epoch and move stored codes with `fugo client rekey`"
            ));
        }
        EpochState::Destroyed => {
            return Err(format!(
                "agency {agency}: epoch {epoch} is destroyed: its keys are gone"
            ));
        }
    }
    let kept = stored
        .bindings
        .iter()
        .find(|(a, e, _)| a == agency.as_str() && *e == epoch.get())
        .and_then(|(_, _, g)| Generation::new(*g).ok());
    match (binding.map(|binding| binding.generation), kept) {
        (Some(bound), Some(kept)) if bound != kept => Err(format!(
            "agency {agency}: the policy binds epoch {epoch} to key generation {bound}, but it \
             is bound to generation {kept} in the store; the server refuses this policy too"
        )),
        (Some(generation), _) | (None, Some(generation)) => Ok((epoch, generation)),
        (None, None) => Ok((epoch, Generation::FIRST)),
    }
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
    for (agency, epoch, generation) in &new.bindings {
        if !stored
            .bindings
            .iter()
            .any(|(a, e, _)| a == agency && e == epoch)
        {
            stored.bindings.push((agency.clone(), *epoch, *generation));
        }
    }
    for (generation, fingerprint) in &new.generation_keys {
        if !stored.generation_keys.iter().any(|(g, _)| g == generation) {
            stored
                .generation_keys
                .push((*generation, fingerprint.clone()));
        }
    }
}
