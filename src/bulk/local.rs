//! Local derivation: the per-chunk work of `fugo derive`, on every core,
//! recorded in the audit trail when a [`Recording`] is given.

use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, Refusal};

use super::{BulkError, RowError, Work};
use crate::audit::Recorder;
use crate::batch::BatchDeriver;
use crate::code::Coder;
use crate::link::Linker;
use crate::persons::Persons;

/// Derives codes with a [`Coder`] on `threads` worker threads.
pub struct LocalDerive<'c> {
    coder: &'c Coder,
    threads: usize,
    recording: Option<Recording<'c>>,
    /// The re-issue tables of the store, when the run has one (D193).
    persons: Option<&'c Persons>,
}

/// Where and as whom `fugo derive` records what it derives: one record per
/// derived person (with its person link) and a tally of the rows that
/// opened no one, committed durably per chunk BEFORE the chunk's codes are
/// handed to the output (so no code leaves unrecorded).
pub struct Recording<'c> {
    /// The open audit trail (holds the store's lock).
    pub recorder: &'c Recorder,
    /// Makes each person's link (K_link of the same master key).
    pub linker: &'c Linker,
    /// The agency whose codes are derived: the records' caller.
    pub caller: String,
    /// The epoch of the codes.
    pub epoch: u32,
    /// The run's batch id, in every record of the run.
    pub batch_id: String,
}

impl<'c> LocalDerive<'c> {
    /// Derivation with `coder` on `threads` workers (at least one), not
    /// recorded (the demo key).
    pub fn new(coder: &'c Coder, threads: usize) -> Self {
        LocalDerive {
            coder,
            threads: threads.max(1),
            recording: None,
            persons: None,
        }
    }

    /// The same derivation after re-issue resolution with `persons`: a
    /// re-issued number gives its person's codes, a superseded one is
    /// rejected (as the server does).
    pub fn resolving(mut self, persons: &'c Persons) -> Self {
        self.persons = Some(persons);
        self
    }

    /// Derivation recorded as `recording` says.
    pub fn recorded(coder: &'c Coder, threads: usize, recording: Recording<'c>) -> Self {
        LocalDerive {
            recording: Some(recording),
            ..LocalDerive::new(coder, threads)
        }
    }
}

impl Recording<'_> {
    /// Commits one chunk's records and waits for the fsync.
    fn commit(&self, entries: Vec<Entry>, refused: u64, superseded: u64) -> Result<(), BulkError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        let mut append = Append {
            now_ms,
            ..Append::default()
        };
        if !entries.is_empty() {
            append.groups.push(Group {
                header: Header {
                    time_ms: now_ms,
                    operation: Operation::Derive,
                    caller: self.caller.clone(),
                    counterpart: String::new(),
                    affair: String::new(),
                    items: Vec::new(),
                    non_disclosure_until: 0,
                    // Offline: no policy is in force.
                    policy_version: [0; 32],
                    batch_id: self.batch_id.clone(),
                    note: "offline fugo derive".to_owned(),
                    count: 0,
                    agent: String::new(),
                },
                entries,
            });
        }
        if refused > 0 {
            append.refusals.push(Refusal {
                agency: self.caller.clone(),
                reason: Outcome::Malformed.name().to_owned(),
                minute: now_ms / 60_000,
                count: refused,
            });
        }
        if superseded > 0 {
            append.refusals.push(Refusal {
                agency: self.caller.clone(),
                reason: Outcome::Refused.name().to_owned(),
                minute: now_ms / 60_000,
                count: superseded,
            });
        }
        if append.groups.is_empty() && append.refusals.is_empty() {
            return Ok(());
        }
        self.recorder
            .record_blocking(append)
            .map(|_| ())
            .map_err(|error| BulkError::Work(Box::new(error)))
    }
}

impl<'c> Work for LocalDerive<'c> {
    type Worker = BatchDeriver<'c>;

    fn results_are_secret(&self) -> bool {
        // Codes only: a code is not the number (D5 redacts it in Debug all
        // the same, but wiping 2.5 MB per chunk would cost throughput).
        false
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn new_worker(&self) -> BatchDeriver<'c> {
        BatchDeriver::new(self.coder)
    }

    fn process<'a, I, F>(
        &self,
        deriver: &mut BatchDeriver<'c>,
        inputs: I,
        mut emit: F,
    ) -> Result<(), BulkError>
    where
        I: Iterator<Item = Result<&'a [u8], RowError>>,
        F: FnMut(Result<&[u8], RowError>),
    {
        let Some(recording) = &self.recording else {
            let emit = |result: Result<&[u8; crate::code_text::TEXT_LEN], RowError>| {
                emit(result.map(|text| &text[..]))
            };
            match self.persons {
                Some(persons) => deriver.derive_resolved(persons, inputs, emit),
                None => deriver.derive(inputs, emit),
            }
            return Ok(());
        };
        // `emit` only fills this chunk's buffer; the engine writes it out
        // after this returns Ok, i.e. after the commit below.
        let mut entries = Vec::new();
        let mut refused = 0u64;
        let mut superseded = 0u64;
        let each = |result: Result<
            (&[u8; crate::code_text::TEXT_LEN], crate::link::PersonLink),
            RowError,
        >| match result {
            Ok((text, link)) => {
                entries.push(Entry {
                    outcome: Outcome::Done,
                    epoch: recording.epoch,
                    serial: None,
                    person: Some(PersonLink(link.to_bytes())),
                });
                emit(Ok(&text[..]));
            }
            Err(RowError::Superseded) => {
                superseded += 1;
                emit(Err(RowError::Superseded));
            }
            Err(error) => {
                refused += 1;
                emit(Err(error));
            }
        };
        match self.persons {
            Some(persons) => {
                deriver.derive_linked_resolved(persons, recording.linker, inputs, each)
            }
            None => deriver.derive_linked(recording.linker, inputs, each),
        }
        recording.commit(entries, refused, superseded)
    }
}
