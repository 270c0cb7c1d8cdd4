//! What the service records for each batch: one entry per person an item
//! opened, one tally per (agency, reason, minute) for items that opened no
//! one, batch-wide fields once per group.

use std::collections::BTreeMap;

use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, Refusal};

use crate::exchange::{Done, ItemError};
use crate::hex;
use crate::policy::Policy;

/// Who did what, for the header of every group of one batch.
pub struct BatchFacts<'a> {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The calling agency.
    pub caller: &'a str,
    /// The batch id: the request id, "/index" in a stream.
    pub batch_id: String,
    /// The policy in force.
    pub policy: &'a Policy,
    /// The agency that made the call on behalf of `caller` (D213); empty
    /// when the caller called itself.
    pub agent: &'a str,
}

impl<'a> BatchFacts<'a> {
    /// These facts for a call made on behalf of `principal`: its records
    /// name `principal` as caller and this batch's caller as agent.
    pub fn on_behalf_of<'b>(&'b self, principal: &'b str) -> BatchFacts<'b>
    where
        'a: 'b,
    {
        BatchFacts {
            time_ms: self.time_ms,
            caller: principal,
            batch_id: self.batch_id.clone(),
            policy: self.policy,
            agent: self.caller,
        }
    }

    /// A header for `operation` with no counterpart, affair or items.
    pub fn header(&self, operation: Operation) -> Header {
        Header {
            time_ms: self.time_ms,
            operation,
            caller: self.caller.to_owned(),
            counterpart: String::new(),
            affair: String::new(),
            items: Vec::new(),
            non_disclosure_until: 0,
            policy_version: policy_digest(self.policy),
            batch_id: self.batch_id.clone(),
            note: String::new(),
            count: 0,
            agent: self.agent.to_owned(),
        }
    }

    /// The minute a tally of this batch counts in.
    pub fn minute(&self) -> u64 {
        self.time_ms / 60_000
    }

    /// An append of nothing but `groups`, at this batch's time.
    pub fn append(&self, groups: Vec<Group>) -> Append {
        Append {
            groups,
            now_ms: self.time_ms,
            ..Append::default()
        }
    }

    /// A tally of `count` items refused for `reason` that opened no one,
    /// counted for the agency that made the call (the agent, if any).
    pub fn tally(&self, reason: &str, count: u64) -> Refusal {
        Refusal {
            minute: self.minute(),
            agency: if self.agent.is_empty() {
                self.caller
            } else {
                self.agent
            }
            .to_owned(),
            reason: reason.to_owned(),
            count,
        }
    }
}

/// The policy version as the 32 bytes of its SHA-256.
pub fn policy_digest(policy: &Policy) -> [u8; 32] {
    let mut digest = [0u8; 32];
    // The version is SHA-256 in 64 hex digits by construction; a failure
    // leaves zeros, which no real version has.
    let _ = hex::decode_into(policy.version().as_str().as_bytes(), &mut digest);
    digest
}

/// How an item that failed ended, as the log's stable outcome.
pub fn outcome_of(error: &ItemError) -> Outcome {
    match error {
        ItemError::UnknownCode => Outcome::UnknownCode,
        ItemError::RetiredEpoch(_) => Outcome::RetiredEpoch,
        ItemError::StaleWindow => Outcome::StaleWindow,
        ItemError::Expired => Outcome::Expired,
        ItemError::Withdrawn(_) => Outcome::Withdrawn,
        // A superseded number (derive) or a suspended person (seal,
        // redeem): refused by the persons tables, not malformed.
        ItemError::Superseded | ItemError::Unavailable => Outcome::Refused,
        _ => Outcome::Malformed,
    }
}

/// Entries of one batch: `people[i]` makes item i an entry of the group
/// `group_of(i)` chooses; an item without a person is tallied.
pub struct Collector {
    groups: Vec<Group>,
    tallies: BTreeMap<&'static str, u64>,
}

impl Collector {
    /// No groups yet.
    pub fn new() -> Self {
        Collector {
            groups: Vec::new(),
            tallies: BTreeMap::new(),
        }
    }

    /// Adds a group with this header and returns its position.
    pub fn group(&mut self, header: Header) -> usize {
        self.groups.push(Group {
            header,
            entries: Vec::new(),
        });
        self.groups.len() - 1
    }

    /// Adds an entry to group `group`.
    pub fn entry(&mut self, group: usize, entry: Entry) {
        if let Some(group) = self.groups.get_mut(group) {
            group.entries.push(entry);
        }
    }

    /// Counts one item that opened no person.
    pub fn refused(&mut self, outcome: Outcome) {
        *self.tallies.entry(outcome.name()).or_default() += 1;
    }

    /// Adds every item of `done` to group `group`: an entry per person,
    /// a tally per failure without one. `serial` and `epoch` of a success.
    pub fn items<T>(
        &mut self,
        group: usize,
        done: &Done<T>,
        success: impl Fn(&T) -> (Option<[u8; 16]>, u32),
    ) {
        for (result, person) in done.results.iter().zip(&done.people) {
            let outcome = match result {
                Ok(_) => Outcome::Done,
                Err(failure) => outcome_of(&failure.error),
            };
            match person {
                Some(link) => {
                    let (serial, epoch) = match result {
                        Ok(value) => success(value),
                        Err(_) => (None, 0),
                    };
                    self.entry(
                        group,
                        Entry {
                            outcome,
                            epoch,
                            serial,
                            person: Some(PersonLink(link.to_bytes())),
                        },
                    );
                }
                None => self.refused(outcome),
            }
        }
    }

    /// The append: groups with entries, and the tallies.
    pub fn finish(self, facts: &BatchFacts<'_>) -> Append {
        Append {
            groups: self
                .groups
                .into_iter()
                .filter(|group| !group.entries.is_empty())
                .collect(),
            refusals: self
                .tallies
                .into_iter()
                .map(|(reason, count)| facts.tally(reason, count))
                .collect(),
            now_ms: facts.time_ms,
            ..Append::default()
        }
    }
}

impl Default for Collector {
    fn default() -> Self {
        Collector::new()
    }
}
