//! Local derivation: the per-chunk work of `fugo derive`, on every core.

use super::{BulkError, RowError, Work};
use crate::batch::BatchDeriver;
use crate::code::Coder;

/// Derives codes with a [`Coder`] on `threads` worker threads.
pub struct LocalDerive<'c> {
    coder: &'c Coder,
    threads: usize,
}

impl<'c> LocalDerive<'c> {
    /// Derivation with `coder` on `threads` workers (at least one).
    pub fn new(coder: &'c Coder, threads: usize) -> Self {
        LocalDerive {
            coder,
            threads: threads.max(1),
        }
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
        deriver.derive(inputs, |result| emit(result.map(|text| &text[..])));
        Ok(())
    }
}
