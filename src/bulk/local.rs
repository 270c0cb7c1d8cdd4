//! Local derivation: the per-chunk work of `fugo derive`, on every core,
//! recorded in the audit trail when a [`Recording`] is given.

use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, Refusal};

use super::{BulkError, RowError, Work};
use crate::audit::Recorder;
use crate::batch::BatchDeriver;
use crate::code::Coder;
use crate::link::Linker;

/// Derives codes with a [`Coder`] on `threads` worker threads.
pub struct LocalDerive<'c> {
    coder: &'c Coder,
    threads: usize,
    recording: Option<Recording<'c>>,
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
        }
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
    fn commit(&self, entries: Vec<Entry>, refused: u64) -> Result<(), BulkError> {
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
            deriver.derive(inputs, |result| emit(result.map(|text| &text[..])));
            return Ok(());
        };
        // `emit` only fills this chunk's buffer; the engine writes it out
        // after this returns Ok, i.e. after the commit below.
        let mut entries = Vec::new();
        let mut refused = 0u64;
        deriver.derive_linked(recording.linker, inputs, |result| match result {
            Ok((text, link)) => {
                entries.push(Entry {
                    outcome: Outcome::Done,
                    epoch: recording.epoch,
                    serial: None,
                    person: Some(PersonLink(link.to_bytes())),
                });
                emit(Ok(&text[..]));
            }
            Err(error) => {
                refused += 1;
                emit(Err(error));
            }
        });
        recording.commit(entries, refused)
    }
}
