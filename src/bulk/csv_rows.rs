//! CSV mode: a CSV file with a header, one column of items replaced by
//! results (or kept, with the results in a new column appended). A result
//! of several fields (seal, redeem) puts its first field there and appends
//! the others as the columns the work names.
//!
//! Parsing runs on the reader thread with `csv-core` straight into the
//! chunk's own buffers (CSV cannot be split safely without parsing: quoted
//! fields may hold newlines); the work and formatting run on the workers.
//! Owning the buffers means they can be wiped once a chunk is done, since
//! they held numbers. Every other field keeps its value; quoting is
//! normalised to what the `csv` crate writes (quotes only where needed).

use std::io::Read;

use csv::{Terminator, WriterBuilder};
use csv_core::ReadRecordResult;
use zeroize::Zeroize;

use super::lines::read_retrying;
use super::pipeline::{self, Stages};
use super::{
    BulkError, Parallelism, RowError, Sinks, Stopped, Summary, Work, finish, write_rejects,
};

/// Longest CSV record, in bytes of field data. A longer one stops the run:
/// without parsing it there is no telling where its record ends.
pub const MAX_CSV_RECORD: usize = 1 << 20;

/// Most fields in one record.
const MAX_FIELDS: usize = 4096;

/// Records per chunk, at most.
const RECORDS_PER_CHUNK: usize = 8192;

/// What to do with the number column.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Header name of the column holding the items.
    pub column: String,
    /// `None`: replace the column with codes. `Some(name)`: keep it and
    /// append a column of that name holding the codes.
    pub append: Option<String>,
}

/// Where one record's fields sit in a [`Records`] buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Start of the record's field data in `Records::data`.
    data: usize,
    /// Index of its first field end in `Records::ends`.
    ends: usize,
    /// Number of fields.
    fields: usize,
    /// 1-based line the record starts on.
    line: u64,
}

/// Parsed records, all fields in one flat buffer.
///
/// `data` and `ends` are initialised buffers that only grow; the `_used`
/// counts say how much of each holds records, so reading a record never
/// re-initialises memory.
#[derive(Default)]
struct Records {
    data: Vec<u8>,
    data_used: usize,
    /// Field ends, relative to the start of their record's data.
    ends: Vec<usize>,
    ends_used: usize,
    spans: Vec<Span>,
}

impl Records {
    fn clear(&mut self) {
        // The data held numbers: wipe it, not just forget it.
        self.data[..self.data_used].zeroize();
        self.data_used = 0;
        self.ends_used = 0;
        self.spans.clear();
    }

    fn field(&self, span: &Span, index: usize) -> &[u8] {
        let start = match index {
            0 => 0,
            _ => self.ends[span.ends + index - 1],
        };
        &self.data[span.data + start..span.data + self.ends[span.ends + index]]
    }

    fn fields<'a>(&'a self, span: &'a Span) -> impl Iterator<Item = &'a [u8]> + 'a {
        (0..span.fields).map(move |index| self.field(span, index))
    }
}

impl Drop for Records {
    fn drop(&mut self) {
        self.data.zeroize();
    }
}

/// Reads CSV records from a byte stream into [`Records`].
struct CsvSource<R> {
    input: R,
    core: csv_core::Reader,
    buffer: Vec<u8>,
    start: usize,
    filled: usize,
    eof: bool,
}

impl<R: Read> CsvSource<R> {
    fn new(input: R) -> Self {
        CsvSource {
            input,
            core: csv_core::Reader::new(),
            buffer: vec![0; 64 << 10],
            start: 0,
            filled: 0,
            eof: false,
        }
    }

    /// Appends the next record to `records`; `false` at the end of input.
    fn read_record(&mut self, records: &mut Records) -> Result<bool, BulkError> {
        // The record's line is the line of its first byte: csv-core's count
        // plus the newlines it skips first (the previous record's LF of a
        // CRLF, blank lines).
        let mut line = self.core.line();
        let mut started = false;
        let (data, ends) = (records.data_used, records.ends_used);
        let (mut data_len, mut ends_len) = (data, ends);
        loop {
            if self.start == self.filled && !self.eof {
                self.start = 0;
                self.filled =
                    read_retrying(&mut self.input, &mut self.buffer).map_err(super::read_error)?;
                self.eof = self.filled == 0;
            }
            if records.data.len() == data_len {
                records.data.resize((data_len * 2).max(data_len + 4096), 0);
            }
            if records.ends.len() == ends_len {
                records.ends.resize((ends_len * 2).max(ends_len + 64), 0);
            }
            let (result, read, wrote, ended) = self.core.read_record(
                &self.buffer[self.start..self.filled],
                &mut records.data[data_len..],
                &mut records.ends[ends_len..],
            );
            if !started {
                for &byte in &self.buffer[self.start..self.start + read] {
                    match byte {
                        b'\n' => line += 1,
                        b'\r' => {}
                        _ => {
                            started = true;
                            break;
                        }
                    }
                }
            }
            self.start += read;
            data_len += wrote;
            ends_len += ended;
            if data_len - data > MAX_CSV_RECORD {
                return Err(csv_error(line, "record is longer than 1 MiB"));
            }
            if ends_len - ends > MAX_FIELDS {
                return Err(csv_error(line, "record has more than 4096 fields"));
            }
            match result {
                ReadRecordResult::InputEmpty
                | ReadRecordResult::OutputFull
                | ReadRecordResult::OutputEndsFull => continue,
                ReadRecordResult::Record => {
                    records.data_used = data_len;
                    records.ends_used = ends_len;
                    records.spans.push(Span {
                        data,
                        ends,
                        fields: ends_len - ends,
                        line,
                    });
                    return Ok(true);
                }
                ReadRecordResult::End => return Ok(false),
            }
        }
    }
}

impl<R> Drop for CsvSource<R> {
    fn drop(&mut self) {
        self.buffer.zeroize();
    }
}

fn csv_error(line: u64, reason: &str) -> BulkError {
    BulkError::Csv {
        line,
        reason: reason.to_owned(),
    }
}

/// A chunk of parsed records on its way through the pipeline.
#[derive(Default)]
struct CsvSlot {
    records: Records,
    rows: u64,
    output: Vec<u8>,
    rejects: Vec<(u64, RowError)>,
    /// The work failed on this chunk; the run stops here.
    failed: Option<BulkError>,
}

impl Drop for CsvSlot {
    fn drop(&mut self) {
        self.output.zeroize();
    }
}

struct CsvStages<'w, W> {
    work: &'w W,
    column: usize,
    width: usize,
    append: bool,
    /// Where each extra result field goes: the header column of its name
    /// (seal output's `serial` column fed to redeem is rewritten in place),
    /// or `None`: appended.
    placed: Vec<Option<usize>>,
}

/// Most extra result fields a work may name.
const MAX_EXTRAS: usize = 8;

impl<W: Work> Stages for CsvStages<'_, W> {
    type Slot = CsvSlot;
    type Worker = W::Worker;
    type Error = BulkError;

    fn new_slot(&self) -> CsvSlot {
        CsvSlot::default()
    }

    fn new_worker(&self) -> W::Worker {
        self.work.new_worker()
    }
}

type Out<'o> = csv::Writer<&'o mut Vec<u8>>;

impl<W: Work> CsvStages<'_, W> {
    fn process_chunk(&self, worker: &mut W::Worker, slot: &mut CsvSlot) {
        let CsvSlot {
            records,
            rows,
            output,
            rejects,
            failed,
        } = slot;
        *rows = records.spans.len() as u64;
        output.clear();
        rejects.clear();
        let mut writer = WriterBuilder::new()
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .from_writer(&mut *output);
        let inputs = records.spans.iter().map(|span| {
            if span.fields != self.width {
                return Err(RowError::FieldCount {
                    found: span.fields,
                    expected: self.width,
                });
            }
            Ok(records.field(span, self.column))
        });
        let mut spans = records.spans.iter();
        let outcome = self.work.process(worker, inputs, |result| {
            let Some(span) = spans.next() else { return };
            // Writing into a Vec cannot fail, so write errors are impossible.
            let _ = match result {
                Ok(result) => self.write_row(&mut writer, records.fields(span), result),
                Err(error @ RowError::FieldCount { .. }) => {
                    rejects.push((span.line, error));
                    self.write_blank(&mut writer)
                }
                Err(error) => {
                    rejects.push((span.line, error));
                    self.write_row(&mut writer, records.fields(span), b"")
                }
            };
        });
        *failed = outcome.err();
        let _ = writer.flush();
        drop(writer);
        records.clear();
    }

    /// Writes a record with `result` (fields separated by spaces, `-` for
    /// an empty one): its first field in the item column or appended, the
    /// others in the columns of their names (see [`CsvStages::placed`]).
    fn write_row<'f>(
        &self,
        writer: &mut Out<'_>,
        fields: impl Iterator<Item = &'f [u8]>,
        result: &[u8],
    ) -> csv::Result<()> {
        let count = self.placed.len();
        let mut parts: [&[u8]; MAX_EXTRAS] = [b""; MAX_EXTRAS];
        let mut split = result.splitn(count + 1, |&b| b == b' ');
        let first = split.next().unwrap_or_default();
        for (slot, part) in parts.iter_mut().zip(split) {
            *slot = if part == b"-" { b"" } else { part };
        }
        for (i, field) in fields.enumerate() {
            if i == self.column && !self.append {
                writer.write_field(first)?;
            } else if let Some(extra) = self.placed.iter().position(|&at| at == Some(i)) {
                writer.write_field(parts[extra])?;
            } else {
                writer.write_field(field)?;
            }
        }
        if self.append {
            writer.write_field(first)?;
        }
        for (extra, at) in self.placed.iter().enumerate() {
            if at.is_none() {
                writer.write_field(parts[extra])?;
            }
        }
        writer.write_record(None::<&[u8]>)
    }

    /// A record of the wrong width: its fields cannot be trusted to be where
    /// the header says (the number may sit in any of them), so none is kept.
    fn write_blank(&self, writer: &mut Out<'_>) -> csv::Result<()> {
        let added = self.placed.iter().filter(|at| at.is_none()).count();
        let width = self.width + usize::from(self.append) + added;
        for _ in 0..width {
            writer.write_field(b"")?;
        }
        writer.write_record(None::<&[u8]>)
    }
}

/// How a header name is shown in an error: as itself, unless it looks like
/// data (four digits or more: a file without a header has a number there).
fn shown(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    if text.chars().filter(|c| c.is_numeric()).count() >= 4 {
        "(a name that looks like data, not shown)".to_owned()
    } else if text.chars().count() > 64 {
        format!("{}…", text.chars().take(64).collect::<String>())
    } else {
        format!("'{text}'")
    }
}

/// Where each extra result column goes: the header column of that name, or
/// appended. Refuses a name that is the item column or `--append-column`.
fn place_extras(
    header: &Records,
    options: &CsvOptions,
    column: usize,
    extras: &[&str],
) -> Result<Vec<Option<usize>>, BulkError> {
    if extras.len() > MAX_EXTRAS {
        return Err(BulkError::Header("too many result columns".to_owned()));
    }
    let names: Vec<&[u8]> = header
        .spans
        .first()
        .map_or(Vec::new(), |span| header.fields(span).collect());
    extras
        .iter()
        .map(|&extra| {
            let at = names.iter().position(|&name| name == extra.as_bytes());
            if options.append.as_deref() == Some(extra)
                || (at == Some(column) && options.append.is_none())
            {
                return Err(BulkError::Header(format!(
                    "column '{extra}' would hold both the items' results and the {extra} field"
                )));
            }
            Ok(at)
        })
        .collect()
}

/// Finds the item column and checks the options against the header.
fn find_column(header: &Records, options: &CsvOptions) -> Result<usize, BulkError> {
    let Some(span) = header.spans.first() else {
        return Err(BulkError::Header("the input is empty".to_owned()));
    };
    let names: Vec<&[u8]> = header.fields(span).collect();
    let matches: Vec<usize> = (0..names.len())
        .filter(|&i| names[i] == options.column.as_bytes())
        .collect();
    if let Some(new) = &options.append
        && names.contains(&new.as_bytes())
    {
        return Err(BulkError::Header(format!("column '{new}' already exists")));
    }
    match matches[..] {
        [only] => Ok(only),
        [] => Err(BulkError::Header(format!(
            "no column named '{}'; the header has {} column(s): {}",
            options.column,
            names.len(),
            names
                .iter()
                .map(|n| shown(n))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        _ => Err(BulkError::Header(format!(
            "column '{}' appears {} times",
            options.column,
            matches.len()
        ))),
    }
}

/// Runs `work` on the named column of a CSV input, in order, into `sinks`.
pub(super) fn run<W: Work>(
    work: &W,
    input: impl Read + Send,
    options: &CsvOptions,
    parallelism: Parallelism,
    sinks: Sinks<'_>,
) -> Result<Summary, Stopped> {
    let stopped = |error| Stopped { error, rows: 0 };
    let mut source = CsvSource::new(input);
    let mut header = Records::default();
    source.read_record(&mut header).map_err(stopped)?;
    let extras = work.extra_columns();
    let column = find_column(&header, options).map_err(stopped)?;
    let placed = place_extras(&header, options, column, extras).map_err(stopped)?;
    let width = header.spans[0].fields;
    let Sinks {
        output,
        rejects,
        progress,
    } = sinks;
    {
        let mut writer = WriterBuilder::new()
            .terminator(Terminator::Any(b'\n'))
            .from_writer(&mut *output);
        let names = header.fields(&header.spans[0]);
        let appended = options.append.iter().map(String::as_bytes);
        let extra_names = extras
            .iter()
            .zip(&placed)
            .filter(|(_, at)| at.is_none())
            .map(|(name, _)| name.as_bytes());
        writer
            .write_record(names.chain(appended).chain(extra_names))
            .and_then(|()| writer.flush().map_err(csv::Error::from))
            .map_err(|error| match error.into_kind() {
                csv::ErrorKind::Io(io) => BulkError::Write(io),
                _ => BulkError::Header("cannot write the header".to_owned()),
            })
            .map_err(stopped)?;
    }

    let stages = CsvStages {
        work,
        column,
        width,
        append: options.append.is_some(),
        placed,
    };
    let chunk_bytes = parallelism.chunk_bytes();
    let mut summary = Summary::default();
    let ran = pipeline::run(
        &stages,
        parallelism.threads,
        parallelism.slots(),
        |slot: &mut CsvSlot| {
            slot.records.clear();
            while slot.records.spans.len() < RECORDS_PER_CHUNK
                && slot.records.data_used < chunk_bytes
                && source.read_record(&mut slot.records)?
            {}
            Ok(!slot.records.spans.is_empty())
        },
        |worker, slot| stages.process_chunk(worker, slot),
        |slot| {
            if let Some(error) = slot.failed.take() {
                return Err(error);
            }
            let written = output.write_all(&slot.output).map_err(BulkError::Write);
            // With --append-column (or reidentify) the output holds numbers.
            slot.output.zeroize();
            written?;
            write_rejects(rejects, 0, &options.column, &slot.rejects)?;
            summary.rows += slot.rows;
            summary.rejected += slot.rejects.len() as u64;
            if let Some(bar) = progress {
                bar.inc(slot.rows);
            }
            Ok(())
        },
    );
    finish(ran, output, rejects, summary)
}
