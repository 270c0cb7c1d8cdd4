//! Bulk derivation of files for batch jobs: the engine behind `fugo derive`.
//!
//! Two input shapes share one `pipeline`: plain lines (one number a line)
//! and CSV with one column of numbers. Both stream in bounded chunks on
//! every core, keep input order, and never stop on a bad row: each bad row
//! becomes a [`Reject`] (line number and reason, never the value) and an
//! empty output field, so output stays aligned with input.

mod csv_rows;
mod lines;
mod pipeline;

use std::fmt;
use std::io::{self, Write};

use indicatif::ProgressBar;
use thiserror::Error;

use crate::mynumber::ParseError;

pub use csv_rows::{CsvOptions, MAX_CSV_RECORD, derive_csv};
pub use lines::{MAX_LINE, derive_lines};

/// Why one row produced no code. Never contains the row's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RowError {
    /// The value is not a valid My Number.
    #[error("{0}")]
    Number(#[from] ParseError),
    /// The line is longer than any number could be; it was skipped unread.
    #[error("too long")]
    TooLong,
    /// A CSV record with another number of fields than the header.
    #[error("has {found} fields, the header has {expected}")]
    FieldCount {
        /// Fields in this record.
        found: usize,
        /// Fields in the header.
        expected: usize,
    },
}

/// One rejected row: where it is and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// 1-based line number in the input (for CSV, the record's first line).
    pub line: u64,
    /// The reason.
    pub error: RowError,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// A fatal error of a bulk run: the run stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BulkError {
    /// Reading the input failed.
    #[error("reading input: {0}")]
    Read(#[source] io::Error),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Write(#[source] io::Error),
    /// Writing the reject report failed.
    #[error("writing rejects: {0}")]
    Rejects(#[source] io::Error),
    /// The CSV input is malformed beyond one row.
    #[error("CSV input, line {line}: {reason}")]
    Csv {
        /// 1-based line where the problem was found.
        line: u64,
        /// What is wrong (never a field's value).
        reason: String,
    },
    /// The CSV header does not fit the options.
    #[error("CSV header: {0}")]
    Header(String),
}

/// Where a bulk run writes: codes, rejects, and an optional progress bar.
pub struct Sinks<'a> {
    /// Output rows.
    pub output: &'a mut dyn Write,
    /// One line per reject, `line N: reason`.
    pub rejects: &'a mut dyn Write,
    /// Progress in rows, if a terminal is watching.
    pub progress: Option<&'a ProgressBar>,
}

/// Counts of a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Data rows read (CSV header excluded).
    pub rows: u64,
    /// Rows rejected.
    pub rejected: u64,
}

/// How a run uses the machine.
#[derive(Debug, Clone, Copy)]
pub struct Parallelism {
    /// Worker threads (reader and writer run besides them).
    pub threads: usize,
}

impl Parallelism {
    /// Chunks in flight: two per worker keeps every worker busy while the
    /// reader and writer are mid-chunk.
    fn slots(self) -> usize {
        2 * self.threads.max(1) + 2
    }

    /// Input bytes per chunk, so that all chunks in flight together with
    /// their output (about 2.5× the input for line mode) stay near 32 MiB.
    fn chunk_bytes(self) -> usize {
        const BUDGET: usize = 32 << 20;
        (BUDGET / (self.slots() * 7 / 2)).clamp(64 << 10, 1 << 20)
    }
}

/// Writes a chunk's rejects, numbering lines from `first_line`; `field`
/// names the CSV column (empty in line mode).
fn write_rejects(
    rejects: &mut dyn Write,
    first_line: u64,
    field: &str,
    found: &[(u64, RowError)],
) -> Result<(), BulkError> {
    for (offset, error) in found {
        let reject = Reject {
            line: first_line + offset,
            error: *error,
        };
        let written = match error {
            RowError::Number(_) if !field.is_empty() => writeln!(
                rejects,
                "line {}: column '{field}': {}",
                reject.line, reject.error
            ),
            _ => writeln!(rejects, "{reject}"),
        };
        written.map_err(BulkError::Rejects)?;
    }
    Ok(())
}
