//! Line mode: one item a line in, one result a line out.
//!
//! Lines end in LF or CRLF; output lines end in LF. The reader never holds
//! more than [`MAX_LINE`] bytes of a line that has not ended: a longer line
//! is skipped unread and reported as `too long`, so a 1 GB file without a
//! newline costs no more memory than a small one.

use std::io::{self, Read};

use zeroize::Zeroize;

use super::pipeline::{self, Stages};
use super::{
    BulkError, Parallelism, RowError, Sinks, Stopped, Summary, Work, finish, write_rejects,
};

/// Longest line accepted, in bytes without its line ending. A number is 12.
pub const MAX_LINE: usize = 256;

/// Stands in for a line that was too long to keep: longer than `MAX_LINE`,
/// so the worker rejects it like any other overlong line.
const OVERLONG: [u8; MAX_LINE + 1] = [b'x'; MAX_LINE + 1];

/// One chunk of whole lines on its way through the pipeline.
struct LineSlot {
    input: Vec<u8>,
    output: Vec<u8>,
    lines: u64,
    rejects: Vec<(u64, RowError)>,
    /// The work failed on this chunk; the run stops here.
    failed: Option<BulkError>,
}

impl Drop for LineSlot {
    fn drop(&mut self) {
        self.input.zeroize();
        self.output.zeroize();
    }
}

/// Splits a byte stream into chunks of whole lines.
struct LineReader<R> {
    source: R,
    chunk: usize,
    /// Start of a line that did not end in the previous chunk.
    carry: Vec<u8>,
    /// The carried line grew too long: skip to its end, then report it.
    skipping: bool,
    eof: bool,
}

impl<R: Read> LineReader<R> {
    fn fill(&mut self, input: &mut Vec<u8>) -> io::Result<bool> {
        input.clear();
        if self.skipping {
            self.skip_line()?;
            input.extend_from_slice(&OVERLONG);
            input.push(b'\n');
        }
        input.append(&mut self.carry);
        while !self.eof && input.len() < self.chunk {
            let start = input.len();
            input.resize(self.chunk, 0);
            let read = read_retrying(&mut self.source, &mut input[start..])?;
            input.truncate(start + read);
            self.eof = read == 0;
        }
        if self.eof {
            return Ok(!input.is_empty());
        }
        let end = input.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        self.carry.extend_from_slice(&input[end..]);
        input[end..].zeroize();
        input.truncate(end);
        if self.carry.len() > MAX_LINE {
            self.carry.zeroize();
            self.skipping = true;
            if input.is_empty() {
                // The whole chunk was the start of one overlong line.
                self.skip_line()?;
                self.skipping = false;
                input.extend_from_slice(&OVERLONG);
                input.push(b'\n');
            }
        }
        Ok(true)
    }

    /// Reads and discards through the next newline (or the end of input).
    fn skip_line(&mut self) -> io::Result<()> {
        let mut scratch = [0u8; 64 << 10];
        loop {
            let read = read_retrying(&mut self.source, &mut scratch)?;
            if read == 0 {
                self.eof = true;
                break;
            }
            if let Some(p) = scratch[..read].iter().position(|&b| b == b'\n') {
                // Keep what follows the newline: it starts the next line.
                self.carry.extend_from_slice(&scratch[p + 1..read]);
                break;
            }
        }
        scratch.zeroize();
        self.skipping = false;
        Ok(())
    }
}

impl<R> Drop for LineReader<R> {
    fn drop(&mut self) {
        self.carry.zeroize();
    }
}

pub(super) fn read_retrying(source: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match source.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

struct LineStages<'w, W> {
    work: &'w W,
    chunk: usize,
}

impl<W: Work> Stages for LineStages<'_, W> {
    type Slot = LineSlot;
    type Worker = W::Worker;
    type Error = BulkError;

    fn new_slot(&self) -> LineSlot {
        LineSlot {
            input: Vec::with_capacity(self.chunk),
            output: Vec::new(),
            lines: 0,
            rejects: Vec::new(),
            failed: None,
        }
    }

    fn new_worker(&self) -> W::Worker {
        self.work.new_worker()
    }
}

fn process_chunk<W: Work>(work: &W, worker: &mut W::Worker, slot: &mut LineSlot) {
    slot.output.clear();
    slot.rejects.clear();
    slot.lines = 0;
    slot.failed = None;
    if slot.input.is_empty() {
        return;
    }
    let body = slot.input.strip_suffix(b"\n").unwrap_or(&slot.input);
    let lines = body.split(|&b| b == b'\n').map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > MAX_LINE {
            Err(RowError::TooLong)
        } else {
            Ok(line)
        }
    });
    let (output, rejects, count) = (&mut slot.output, &mut slot.rejects, &mut slot.lines);
    let outcome = work.process(worker, lines, |result| {
        match result {
            Ok(text) => output.extend_from_slice(text),
            Err(error) => rejects.push((*count, error)),
        }
        output.push(b'\n');
        *count += 1;
    });
    slot.failed = outcome.err();
    // The input held the items.
    slot.input.zeroize();
}

/// Runs `work` on one item a line, in order, into `sinks`.
pub(super) fn run<W: Work>(
    work: &W,
    input: impl Read + Send,
    parallelism: Parallelism,
    sinks: Sinks<'_>,
) -> Result<Summary, Stopped> {
    let stages = LineStages {
        work,
        chunk: parallelism.chunk_bytes(),
    };
    let mut reader = LineReader {
        source: input,
        chunk: stages.chunk,
        carry: Vec::new(),
        skipping: false,
        eof: false,
    };
    let mut summary = Summary::default();
    let secret = work.results_are_secret();
    let Sinks {
        output,
        rejects,
        progress,
    } = sinks;
    let ran = pipeline::run(
        &stages,
        parallelism.threads,
        parallelism.slots(),
        |slot: &mut LineSlot| reader.fill(&mut slot.input).map_err(super::read_error),
        |worker, slot| process_chunk(work, worker, slot),
        |slot| {
            if let Some(error) = slot.failed.take() {
                return Err(error);
            }
            let written = output.write_all(&slot.output).map_err(BulkError::Write);
            if secret {
                // The results hold numbers (reidentify).
                slot.output.zeroize();
            }
            written?;
            write_rejects(rejects, summary.rows + 1, "", &slot.rejects)?;
            summary.rows += slot.lines;
            summary.rejected += slot.rejects.len() as u64;
            if let Some(bar) = progress {
                bar.inc(slot.lines);
            }
            Ok(())
        },
    );
    finish(ran, output, rejects, summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reassembles the lines a reader hands out, chunk by chunk.
    fn lines_through(input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut reader = LineReader {
            source: input,
            chunk,
            carry: Vec::new(),
            skipping: false,
            eof: false,
        };
        let mut lines = Vec::new();
        let mut buffer = Vec::new();
        while reader.fill(&mut buffer).unwrap() {
            let body = buffer.strip_suffix(b"\n").unwrap_or(&buffer);
            lines.extend(body.split(|&b| b == b'\n').map(<[u8]>::to_vec));
            // Every chunk but the last ends on a line boundary.
            if !reader.eof {
                assert_eq!(buffer.last(), Some(&b'\n'));
            }
        }
        lines
    }

    #[test]
    fn every_chunk_size_yields_the_same_lines() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        let mut state = 12345u32;
        for _ in 0..3000 {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let length = match state % 10 {
                0 => (state >> 8) as usize % 5000, // sometimes far too long
                _ => (state >> 8) as usize % 40,
            };
            let line = vec![b'0' + (state % 10) as u8; length];
            input.extend_from_slice(&line);
            input.push(b'\n');
            expected.push(line);
        }
        input.extend_from_slice(b"last-without-newline");
        expected.push(b"last-without-newline".to_vec());
        for chunk in [MAX_LINE + 1, 300, 1000, 4096, 1 << 20] {
            let lines = lines_through(&input, chunk);
            assert_eq!(lines.len(), expected.len(), "chunk {chunk}");
            for (got, want) in lines.iter().zip(&expected) {
                if want.len() > MAX_LINE {
                    assert!(got.len() > MAX_LINE, "chunk {chunk}");
                } else {
                    assert_eq!(got, want, "chunk {chunk}");
                }
            }
        }
    }
}
