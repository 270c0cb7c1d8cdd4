//! Text encodings of bulk files: input is decoded to UTF-8 as it is read,
//! output is encoded back to the input's encoding as it is written.
//!
//! UTF-8 input is validated on the way in, so a Shift_JIS file read as
//! UTF-8 stops with the line of its first bad byte instead of turning into
//! replacement characters. A UTF-8 byte-order mark is dropped in both line
//! and CSV mode. `cp932` is Windows' Shift_JIS (WHATWG's `Shift_JIS`).

use std::fmt;
use std::io::{self, Read, Write};

use encoding_rs::{DecoderResult, EncoderResult, SHIFT_JIS, UTF_8};
use thiserror::Error;
use zeroize::Zeroize;

/// The text encoding of an input file (and of its output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8, with or without a byte-order mark.
    #[default]
    Utf8,
    /// Windows code page 932, the Shift_JIS of Japanese Windows.
    Cp932,
}

impl fmt::Display for TextEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextEncoding::Utf8 => "utf-8",
            TextEncoding::Cp932 => "cp932",
        })
    }
}

/// The input is not text in the chosen encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub struct EncodingError {
    /// 1-based line of the first bad byte.
    pub line: u64,
    /// The encoding the input was read in.
    pub encoding: TextEncoding,
}

impl fmt::Display for EncodingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encoding {
            TextEncoding::Utf8 => write!(
                f,
                "line {} is not valid UTF-8; if the file is Shift_JIS, use --encoding cp932",
                self.line
            ),
            TextEncoding::Cp932 => write!(
                f,
                "line {} is not valid cp932 (Shift_JIS); if the file is UTF-8, use --encoding utf-8",
                self.line
            ),
        }
    }
}

impl EncodingError {
    /// The encoding error a [`DecodeReader`] put into an `io::Error`.
    pub(super) fn from_io(error: &io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<EncodingError>().copied()
    }
}

/// Decodes a byte stream to UTF-8, counting lines to name a bad one.
///
/// UTF-8 input is read straight into the caller's buffer and validated
/// there (no copy: this is the hot path of `fugo derive`); cp932 goes
/// through `encoding_rs`.
pub(super) struct DecodeReader<R> {
    source: R,
    decoder: encoding_rs::Decoder,
    encoding: TextEncoding,
    raw: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Newlines handed out so far.
    newlines: u64,
    /// Decoded bytes that did not fit a tiny read buffer.
    spill: [u8; 8],
    spill_start: usize,
    spill_end: usize,
    /// A bad byte was found after the bytes last handed out.
    failed: Option<EncodingError>,
    /// UTF-8: the start of a character cut by the end of the last read.
    tail: [u8; 4],
    tail_len: usize,
    /// UTF-8: whether the start (and a byte-order mark) was dealt with.
    started: bool,
}

impl<R: Read> DecodeReader<R> {
    pub(super) fn new(source: R, encoding: TextEncoding) -> Self {
        // UTF-8 is validated in place (see `validate`); its decoder is unused.
        let decoder = match encoding {
            TextEncoding::Utf8 => UTF_8.new_decoder_without_bom_handling(),
            TextEncoding::Cp932 => SHIFT_JIS.new_decoder_without_bom_handling(),
        };
        DecodeReader {
            source,
            decoder,
            encoding,
            raw: match encoding {
                TextEncoding::Utf8 => Vec::new(),
                TextEncoding::Cp932 => vec![0; 64 << 10],
            },
            start: 0,
            end: 0,
            eof: false,
            newlines: 0,
            spill: [0; 8],
            spill_start: 0,
            spill_end: 0,
            failed: None,
            tail: [0; 4],
            tail_len: 0,
            started: false,
        }
    }

    /// UTF-8: reads into `out` (at least 8 bytes) and validates in place;
    /// 0 only at the end of input.
    fn validate(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(error) = self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
            let carried = self.tail_len;
            out[..carried].copy_from_slice(&self.tail[..carried]);
            self.tail.zeroize();
            self.tail_len = 0;
            let read = super::lines::read_retrying(&mut self.source, &mut out[carried..])?;
            let mut start = 0;
            let mut end = carried + read;
            if !self.started {
                if end < 3 && read > 0 {
                    // Too short to tell a byte-order mark yet.
                    self.tail[..end].copy_from_slice(&out[..end]);
                    self.tail_len = end;
                    continue;
                }
                self.started = true;
                if out[..end].starts_with(b"\xEF\xBB\xBF") {
                    start = 3;
                }
            }
            if read == 0 && carried == 0 {
                return Ok(0);
            }
            let valid = match std::str::from_utf8(&out[start..end]) {
                Ok(_) => end,
                // A character cut by the end of this read: keep its start.
                Err(error) if error.error_len().is_none() && read > 0 => {
                    let valid = start + error.valid_up_to();
                    self.tail_len = end - valid;
                    self.tail[..self.tail_len].copy_from_slice(&out[valid..end]);
                    out[valid..end].zeroize();
                    end = valid;
                    valid
                }
                Err(error) => {
                    let valid = start + error.valid_up_to();
                    let before = count_newlines(&out[start..valid]);
                    self.failed = Some(EncodingError {
                        line: self.newlines + before + 1,
                        encoding: self.encoding,
                    });
                    out[valid..end].zeroize();
                    end = valid;
                    valid
                }
            };
            self.newlines += count_newlines(&out[start..valid]);
            if start > 0 {
                out.copy_within(start..end, 0);
            }
            if end > start {
                return Ok(end - start);
            }
        }
    }

    /// Decodes into `out` (at least 8 bytes); 0 only at the end of input.
    fn decode(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(error) = self.failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, error));
            }
            if self.start == self.end && !self.eof {
                self.start = 0;
                self.end = super::lines::read_retrying(&mut self.source, &mut self.raw)?;
                self.eof = self.end == 0;
            }
            let (result, read, written) = self.decoder.decode_to_utf8_without_replacement(
                &self.raw[self.start..self.end],
                out,
                self.eof,
            );
            self.start += read;
            self.newlines += count_newlines(&out[..written]);
            match result {
                DecoderResult::Malformed(..) => {
                    self.failed = Some(EncodingError {
                        line: self.newlines + 1,
                        encoding: self.encoding,
                    });
                }
                DecoderResult::InputEmpty if written == 0 && !self.eof => continue,
                DecoderResult::InputEmpty | DecoderResult::OutputFull => {}
            }
            if written > 0 || self.failed.is_none() {
                return Ok(written);
            }
        }
    }
}

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

impl<R: Read> DecodeReader<R> {
    /// Fills `out` (at least 8 bytes) with decoded text.
    fn fill(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.encoding {
            TextEncoding::Utf8 => self.validate(out),
            TextEncoding::Cp932 => self.decode(out),
        }
    }
}

impl<R: Read> Read for DecodeReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.spill_start == self.spill_end && buf.len() >= self.spill.len() {
            return self.fill(buf);
        }
        if self.spill_start == self.spill_end {
            let mut spill = [0u8; 8];
            self.spill_end = self.fill(&mut spill)?;
            self.spill = spill;
            spill.zeroize();
            self.spill_start = 0;
        }
        let n = buf.len().min(self.spill_end - self.spill_start);
        buf[..n].copy_from_slice(&self.spill[self.spill_start..self.spill_start + n]);
        self.spill_start += n;
        Ok(n)
    }
}

impl<R> Drop for DecodeReader<R> {
    fn drop(&mut self) {
        // The raw input held items.
        self.raw.zeroize();
        self.spill.zeroize();
        self.tail.zeroize();
    }
}

/// Encodes UTF-8 written to it into the output's encoding.
///
/// Every `write` must end on a character boundary (the engine writes whole
/// lines and records).
pub struct EncodeWriter<W: Write> {
    inner: W,
    encoder: Option<encoding_rs::Encoder>,
    buffer: Vec<u8>,
}

impl<W: Write> EncodeWriter<W> {
    /// Writes to `inner` in `encoding`.
    pub fn new(inner: W, encoding: TextEncoding) -> Self {
        EncodeWriter {
            inner,
            encoder: match encoding {
                TextEncoding::Utf8 => None,
                TextEncoding::Cp932 => Some(SHIFT_JIS.new_encoder()),
            },
            buffer: Vec::new(),
        }
    }

    /// The writer underneath, borrowed.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for EncodeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(encoder) = &mut self.encoder else {
            return self.inner.write(buf);
        };
        let text = std::str::from_utf8(buf).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "output is not whole UTF-8 characters",
            )
        })?;
        if self.buffer.len() < 16 << 10 {
            self.buffer.resize(16 << 10, 0);
        }
        let mut rest = text;
        loop {
            let (result, read, written) =
                encoder.encode_from_utf8_without_replacement(rest, &mut self.buffer, false);
            rest = &rest[read..];
            let outcome = self.inner.write_all(&self.buffer[..written]);
            self.buffer[..written].zeroize();
            outcome?;
            match result {
                EncoderResult::InputEmpty => return Ok(buf.len()),
                EncoderResult::OutputFull => continue,
                EncoderResult::Unmappable(character) => {
                    // The decoder reads user-defined characters (外字) as
                    // private-use code points, which the WHATWG encoder
                    // refuses; they go back to the bytes they came from.
                    let Some(bytes) = user_defined(character) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a character of the output has no cp932 form",
                        ));
                    };
                    self.inner.write_all(&bytes)?;
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The Shift_JIS bytes of a user-defined character (lead bytes F0–F9),
/// which the WHATWG decoder maps to U+E000–U+E757 (pointers 8836–10715)
/// and its encoder does not map back (D155).
fn user_defined(character: char) -> Option<[u8; 2]> {
    let code = u32::from(character);
    if !(0xE000..=0xE757).contains(&code) {
        return None;
    }
    let pointer = code - 0xE000 + 8836;
    let (lead, trail) = (pointer / 188, pointer % 188);
    let lead = lead + if lead < 0x1F { 0x81 } else { 0xC1 };
    let trail = trail + if trail < 0x3F { 0x40 } else { 0x41 };
    Some([lead as u8, trail as u8])
}

impl<W: Write> Drop for EncodeWriter<W> {
    fn drop(&mut self) {
        self.buffer.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8], encoding: TextEncoding, chunk: usize) -> io::Result<Vec<u8>> {
        let mut reader = DecodeReader::new(bytes, encoding);
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn shift_jis_round_trips_and_a_bom_is_dropped() {
        let text = "個人番号,氏名\r\n123456789018,山田\n";
        let (sjis, _, _) = SHIFT_JIS.encode(text);
        for chunk in [1, 3, 8, 1000] {
            let decoded = decode_all(&sjis, TextEncoding::Cp932, chunk).unwrap();
            assert_eq!(decoded, text.as_bytes());
        }
        let mut encoded = EncodeWriter::new(Vec::new(), TextEncoding::Cp932);
        encoded.write_all(text.as_bytes()).unwrap();
        assert_eq!(encoded.get_mut().as_slice(), &*sjis);
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), b"a\n"].concat();
        assert_eq!(
            decode_all(&with_bom, TextEncoding::Utf8, 2).unwrap(),
            b"a\n"
        );
    }

    /// Found by the csv fuzz target (tests/fuzz.rs): a cp932 file with a
    /// user-defined character stopped the run when its row was written.
    #[test]
    fn every_user_defined_character_is_written_back_as_it_was_read() {
        let mut input = Vec::new();
        for lead in 0xF0..=0xF9u8 {
            for trail in (0x40..=0xFCu8).filter(|t| *t != 0x7F) {
                input.extend_from_slice(&[b'a', lead, trail, b'\n']);
            }
        }
        let decoded = decode_all(&input, TextEncoding::Cp932, 1000).unwrap();
        assert_eq!(std::str::from_utf8(&decoded).unwrap().lines().count(), 1880);
        let mut encoded = EncodeWriter::new(Vec::new(), TextEncoding::Cp932);
        encoded.write_all(&decoded).unwrap();
        assert_eq!(encoded.get_mut().as_slice(), input.as_slice());
        // Other private-use characters still have no cp932 form.
        let mut other = EncodeWriter::new(Vec::new(), TextEncoding::Cp932);
        assert!(other.write_all("\u{E758}".as_bytes()).is_err());
    }

    #[test]
    fn utf8_passes_through_whatever_the_read_size() {
        let text = "個人番号,氏名\n123456789018,山田\n";
        let with_bom = [b"\xEF\xBB\xBF".as_slice(), text.as_bytes()].concat();
        for chunk in [1, 2, 5, 8, 9, 13, 1000] {
            for input in [text.as_bytes(), &with_bom] {
                let decoded = decode_all(input, TextEncoding::Utf8, chunk).unwrap();
                assert_eq!(decoded, text.as_bytes(), "chunk {chunk}");
            }
        }
        // A character cut off by the end of the input is bad.
        let cut = &text.as_bytes()[..2];
        let error = decode_all(cut, TextEncoding::Utf8, 8).unwrap_err();
        assert_eq!(EncodingError::from_io(&error).unwrap().line, 1);
    }

    #[test]
    fn a_bad_byte_is_named_by_its_line() {
        let (sjis, _, _) = SHIFT_JIS.encode("a\n\n個人番号\n");
        for chunk in [1, 8, 4096] {
            let error = decode_all(&sjis, TextEncoding::Utf8, chunk).unwrap_err();
            let bad = EncodingError::from_io(&error).unwrap();
            assert_eq!(bad.line, 3, "chunk {chunk}");
            assert!(bad.to_string().contains("--encoding cp932"));
        }
    }
}
