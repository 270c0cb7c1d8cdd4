//! CSV mode: a CSV file with a header, one column of My Numbers replaced by
//! codes (or kept, with the codes in a new column appended).
//!
//! Parsing runs on the reader thread (CSV cannot be split safely without
//! parsing: quoted fields may hold newlines); derivation and writing run on
//! the workers. Every other field keeps its value; quoting is normalised to
//! what the `csv` crate writes (quotes only where needed).

use std::io::{self, Read};

use csv::{ByteRecord, ReaderBuilder, Terminator, WriterBuilder};

use super::pipeline::{self, Stages};
use super::{BulkError, Parallelism, RowError, Sinks, Summary, write_rejects};
use crate::batch::BatchDeriver;
use crate::code::Coder;

/// Longest physical line of CSV input. A longer one stops the run: without
/// parsing it there is no telling where its record ends.
pub const MAX_CSV_LINE: usize = 1 << 20;

/// Records per chunk, at most.
const RECORDS_PER_CHUNK: usize = 8192;

/// What to do with the number column.
#[derive(Debug, Clone)]
pub struct CsvOptions {
    /// Header name of the column holding My Numbers.
    pub column: String,
    /// `None`: replace the column with codes. `Some(name)`: keep it and
    /// append a column of that name holding the codes.
    pub append: Option<String>,
}

/// A chunk of parsed records.
struct CsvSlot {
    records: Vec<ByteRecord>,
    used: usize,
    output: Vec<u8>,
    rejects: Vec<(u64, RowError)>,
}

struct CsvStages<'c> {
    coder: &'c Coder,
    column: usize,
    width: usize,
    append: bool,
}

impl<'c> Stages for CsvStages<'c> {
    type Slot = CsvSlot;
    type Worker = BatchDeriver<'c>;
    type Error = BulkError;

    fn new_slot(&self) -> CsvSlot {
        CsvSlot {
            records: Vec::new(),
            used: 0,
            output: Vec::new(),
            rejects: Vec::new(),
        }
    }

    fn new_worker(&self) -> BatchDeriver<'c> {
        BatchDeriver::new(self.coder)
    }
}

impl CsvStages<'_> {
    fn derive_chunk(&self, deriver: &mut BatchDeriver<'_>, slot: &mut CsvSlot) {
        let CsvSlot {
            records,
            used,
            output,
            rejects,
        } = slot;
        output.clear();
        rejects.clear();
        let records = &records[..*used];
        let mut writer = WriterBuilder::new()
            .flexible(true)
            .terminator(Terminator::Any(b'\n'))
            .from_writer(output);
        let inputs = records.iter().map(|record| {
            if record.len() != self.width {
                return Err(RowError::FieldCount {
                    found: record.len(),
                    expected: self.width,
                });
            }
            Ok(record.get(self.column).unwrap_or_default())
        });
        let mut index = 0;
        let mut failure = None;
        deriver.derive(inputs, |result| {
            let record = &records[index];
            index += 1;
            let code: &[u8] = match &result {
                Ok(text) => &text[..],
                Err(_) => b"",
            };
            let written = match result {
                Err(error @ RowError::FieldCount { .. }) => {
                    rejects.push((line_of(record), error));
                    self.write_blank(&mut writer)
                }
                Err(error) => {
                    rejects.push((line_of(record), error));
                    self.write_row(&mut writer, record, code)
                }
                Ok(_) => self.write_row(&mut writer, record, code),
            };
            if let Err(error) = written {
                failure.get_or_insert(error);
            }
        });
        // Writing into a Vec cannot fail; keep the first error just in case.
        let _ = writer.flush();
        debug_assert!(failure.is_none());
    }

    fn write_row(
        &self,
        writer: &mut csv::Writer<&mut Vec<u8>>,
        record: &ByteRecord,
        code: &[u8],
    ) -> csv::Result<()> {
        for (i, field) in record.iter().enumerate() {
            if i == self.column && !self.append {
                writer.write_field(code)?;
            } else {
                writer.write_field(field)?;
            }
        }
        if self.append {
            writer.write_field(code)?;
        }
        writer.write_record(None::<&[u8]>)
    }

    /// A record of the wrong width: its fields cannot be trusted to be where
    /// the header says (the number may sit in any of them), so none is kept.
    fn write_blank(&self, writer: &mut csv::Writer<&mut Vec<u8>>) -> csv::Result<()> {
        let width = self.width + usize::from(self.append);
        for _ in 0..width {
            writer.write_field(b"")?;
        }
        writer.write_record(None::<&[u8]>)
    }
}

fn line_of(record: &ByteRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

/// Fails a read once a physical line exceeds [`MAX_CSV_LINE`] bytes.
struct LineLimit<R> {
    inner: R,
    line: u64,
    run: usize,
}

impl<R: Read> Read for LineLimit<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        for &byte in &buf[..read] {
            if byte == b'\n' {
                self.line += 1;
                self.run = 0;
            } else {
                self.run += 1;
                if self.run > MAX_CSV_LINE {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("line {} is longer than {} bytes", self.line, MAX_CSV_LINE),
                    ));
                }
            }
        }
        Ok(read)
    }
}

fn csv_error(error: csv::Error) -> BulkError {
    let line = error.position().map_or(0, |p| p.line());
    match error.into_kind() {
        csv::ErrorKind::Io(io) => BulkError::Read(io),
        _ => BulkError::Csv {
            line,
            reason: "malformed record".to_owned(),
        },
    }
}

/// Derives codes for the named column of a CSV input, in order, into `sinks`.
pub fn derive_csv(
    coder: &Coder,
    input: impl Read + Send,
    options: &CsvOptions,
    parallelism: Parallelism,
    sinks: Sinks<'_>,
) -> Result<Summary, BulkError> {
    let mut reader = ReaderBuilder::new().flexible(true).from_reader(LineLimit {
        inner: input,
        line: 1,
        run: 0,
    });
    let header = reader.byte_headers().map_err(csv_error)?.clone();
    let matches: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, name)| *name == options.column.as_bytes())
        .map(|(i, _)| i)
        .collect();
    let column = match matches[..] {
        [only] => only,
        [] => {
            return Err(BulkError::Header(format!(
                "no column named '{}'",
                options.column
            )));
        }
        _ => {
            return Err(BulkError::Header(format!(
                "column '{}' appears {} times",
                options.column,
                matches.len()
            )));
        }
    };
    if let Some(new) = &options.append {
        if header.iter().any(|name| name == new.as_bytes()) {
            return Err(BulkError::Header(format!("column '{new}' already exists")));
        }
    }
    let Sinks {
        output,
        rejects,
        progress,
    } = sinks;
    {
        let mut header_out = header.clone();
        if let Some(new) = &options.append {
            header_out.push_field(new.as_bytes());
        }
        let mut writer = WriterBuilder::new()
            .terminator(Terminator::Any(b'\n'))
            .from_writer(&mut *output);
        writer
            .write_byte_record(&header_out)
            .map_err(|e| match e.into_kind() {
                csv::ErrorKind::Io(io) => BulkError::Write(io),
                _ => BulkError::Header("cannot write header".to_owned()),
            })?;
        writer.flush().map_err(BulkError::Write)?;
    }

    let stages = CsvStages {
        coder,
        column,
        width: header.len(),
        append: options.append.is_some(),
    };
    let chunk_bytes = parallelism.chunk_bytes();
    let mut summary = Summary::default();
    pipeline::run(
        &stages,
        parallelism.threads,
        parallelism.slots(),
        |slot: &mut CsvSlot| {
            slot.used = 0;
            let mut bytes = 0;
            while slot.used < RECORDS_PER_CHUNK && bytes < chunk_bytes {
                if slot.used == slot.records.len() {
                    slot.records.push(ByteRecord::new());
                }
                let record = &mut slot.records[slot.used];
                if !reader.read_byte_record(record).map_err(csv_error)? {
                    break;
                }
                bytes += record.as_slice().len();
                slot.used += 1;
            }
            Ok(slot.used > 0)
        },
        |deriver, slot| stages.derive_chunk(deriver, slot),
        |slot| {
            output.write_all(&slot.output).map_err(BulkError::Write)?;
            write_rejects(rejects, 0, &options.column, &slot.rejects)?;
            summary.rows += slot.used as u64;
            summary.rejected += slot.rejects.len() as u64;
            if let Some(bar) = progress {
                bar.inc(slot.used as u64);
            }
            Ok(())
        },
    )?;
    output.flush().map_err(BulkError::Write)?;
    rejects.flush().map_err(BulkError::Rejects)?;
    Ok(summary)
}
