//! The file engine behind `fugo derive` and every `fugo client` command.
//!
//! One engine reads the input (plain lines, one item a line, or one column
//! of a CSV file with a header), hands it chunk by chunk to a [`Work`] —
//! local derivation on every core ([`LocalDerive`]) or a remote operation
//! over one gRPC stream ([`crate::client::Remote`]) — and writes one result
//! per item, in input order. So every file rule holds for every command:
//!
//! - a line is at most [`MAX_LINE`] bytes; a longer one is skipped unread
//!   and rejected (`too long`), so memory stays bounded;
//! - a bad row never stops the run: it becomes a [`Reject`] (line number as
//!   in the file and reason, never the value) and an empty output field;
//! - a CSV record of the wrong width is written back as empty fields (its
//!   fields cannot be trusted to sit where the header says);
//! - buffers that held items are wiped once their chunk is written;
//! - the input is decoded from its [`TextEncoding`] (a UTF-8 byte-order
//!   mark is dropped) and the output is written in the same encoding.

mod csv_rows;
mod lines;
mod local;
mod pipeline;
mod text;

use std::fmt;
use std::io::{self, Read, Write};

use indicatif::ProgressBar;
use thiserror::Error;

use crate::mynumber::ParseError;

pub use csv_rows::{CsvOptions, MAX_CSV_RECORD};
pub use lines::MAX_LINE;
pub use local::{LocalDerive, Recording};
pub use text::{EncodeWriter, TextEncoding};

/// Why one row produced no result. Never contains the row's value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RowError {
    /// The value is not a valid My Number.
    #[error("{0}")]
    Number(#[from] ParseError),
    /// The line is longer than any item could be; it was skipped unread.
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
    /// The number was replaced by a re-issue (個人番号の変更): derive the
    /// person's codes from their current number.
    #[error("number superseded")]
    Superseded,
    /// The server rejected this item; the reason is the server's (its
    /// messages never carry the value).
    #[error("{0}")]
    Server(String),
}

impl From<crate::persons::Superseded> for RowError {
    fn from(_: crate::persons::Superseded) -> Self {
        RowError::Superseded
    }
}

/// One rejected row: where it is and why.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The input is not text in the chosen encoding.
    #[error("{0}")]
    Encoding(#[from] text::EncodingError),
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
    /// The per-chunk work failed as a whole (e.g. the server went away).
    #[error(transparent)]
    Work(Box<dyn std::error::Error + Send + Sync>),
}

impl BulkError {
    /// Whether this is a write to a reader that has gone (`| head`).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, BulkError::Write(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }
}

/// A run that stopped on a fatal error, with how far it got.
#[derive(Debug, Error)]
#[error("{error}")]
pub struct Stopped {
    /// What stopped it.
    #[source]
    pub error: BulkError,
    /// Rows whose results had been written when it stopped.
    pub rows: u64,
}

/// Ends a run: flushes the output and the rejects after a pipeline that
/// `ran` to the end, or says how many rows were written before it stopped.
fn finish(
    ran: Result<(), BulkError>,
    output: &mut dyn Write,
    rejects: &mut dyn Write,
    summary: Summary,
) -> Result<Summary, Stopped> {
    ran.and_then(|()| output.flush().map_err(BulkError::Write))
        .and_then(|()| rejects.flush().map_err(BulkError::Rejects))
        .map(|()| summary)
        .map_err(|error| Stopped {
            error,
            rows: summary.rows,
        })
}

/// The per-chunk work of a run: turns each item into a result, in order.
///
/// `process` gets a chunk's items (an item may already be a row error, which
/// it passes through in place) and must call `emit` exactly once per item,
/// in order. A result is one field, or several separated by single spaces
/// (the line form); CSV mode writes the first where the item column says and
/// appends the others as the columns [`Work::extra_columns`] names.
pub trait Work: Sync {
    /// Per-worker state (a batch deriver, a stream).
    type Worker;

    /// Names of the result fields after the first, as CSV columns.
    fn extra_columns(&self) -> &[&'static str] {
        &[]
    }

    /// Whether results may hold numbers (reidentify does), so output
    /// buffers must be wiped once written. CSV output is always wiped: its
    /// other columns are the input's.
    fn results_are_secret(&self) -> bool {
        true
    }

    /// Worker threads to run.
    fn threads(&self) -> usize;

    /// Input bytes per chunk, if the work wants other than the default
    /// (about 1 MiB, sized so all chunks in flight stay near 32 MiB).
    fn chunk_bytes(&self) -> Option<usize> {
        None
    }

    /// A worker's state, made on its own thread.
    fn new_worker(&self) -> Self::Worker;

    /// Processes one chunk; an `Err` stops the whole run.
    fn process<'a, I, F>(
        &self,
        worker: &mut Self::Worker,
        inputs: I,
        emit: F,
    ) -> Result<(), BulkError>
    where
        I: Iterator<Item = Result<&'a [u8], RowError>>,
        F: FnMut(Result<&[u8], RowError>);
}

/// Lines or CSV.
#[derive(Debug, Clone)]
pub enum Shape {
    /// One item a line.
    Lines,
    /// A CSV file with a header and a column of items.
    Csv(CsvOptions),
}

/// Where a bulk run writes: results, rejects, and an optional progress bar.
pub struct Sinks<'a> {
    /// Output rows (already in the output encoding, see [`EncodeWriter`]).
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
struct Parallelism {
    /// Worker threads (reader and writer run besides them).
    threads: usize,
    /// The work's own chunk size, if any.
    chunk: Option<usize>,
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
        let default = (BUDGET / (self.slots() * 7 / 2)).clamp(64 << 10, 1 << 20);
        self.chunk
            .map_or(default, |chunk| chunk.clamp(MAX_LINE + 1, default))
    }
}

/// Runs `work` over `input` (in `encoding`) shaped as `shape`, writing to
/// `sinks`. The output must already encode to `encoding` (wrap it in an
/// [`EncodeWriter`]).
pub fn run<W: Work>(
    work: &W,
    input: impl Read + Send,
    encoding: TextEncoding,
    shape: &Shape,
    sinks: Sinks<'_>,
) -> Result<Summary, Stopped> {
    let input = text::DecodeReader::new(input, encoding);
    let parallelism = Parallelism {
        threads: work.threads(),
        chunk: work.chunk_bytes(),
    };
    match shape {
        Shape::Lines => lines::run(work, input, parallelism, sinks),
        Shape::Csv(options) => csv_rows::run(work, input, options, parallelism, sinks),
    }
}

/// Maps a read error, which may be the decoder's report of bad text.
fn read_error(error: io::Error) -> BulkError {
    match text::EncodingError::from_io(&error) {
        Some(bad) => BulkError::Encoding(bad),
        None => BulkError::Read(error),
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
            error: error.clone(),
        };
        let written = match error {
            RowError::Number(_) | RowError::Server(_) if !field.is_empty() => writeln!(
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
