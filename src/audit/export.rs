//! `fugo audit export`: the log as JSON lines for archiving and review,
//! without person links.
//!
//! One line per record whose time is in the window, oldest first:
//!
//! ```text
//! {"type":"record","seq":0,"time":"2026-11-27T21:00:00.123Z","time_ms":…,
//!  "operation":"derive","caller":"mhlw","counterpart":"","affair":"",
//!  "items":[],"outcome":"done","epoch":1,"serial":null,
//!  "non_disclosure_until":0,"policy_version":"<64 hex>","batch_id":"…",
//!  "note":"","count":0,"agent":"","header_digest":"<64 hex>",
//!  "leaf":"<190 hex>","leaf_hash":"<64 hex>"}
//! ```
//!
//! `agent` is the agency that made the call on behalf of `caller` (a
//! delegation, D214), empty when none: the header digest is over header
//! encoding version 2 when it is set, version 1 otherwise.
//!
//! `leaf` is the record's leaf bytes ([`fugo_log::record::leaf_bytes`]): a
//! reviewer recomputes `leaf_hash` = SHA-256(0x00 ‖ leaf) and, from the
//! header fields, `header_digest`. The leaf carries only the per-record
//! commitment to the person, never the link; `serial` (the exchange's
//! processing number, also inside the leaf bytes) is exported, see D80.
//!
//! An export of the whole log (no window) adds a line per purged record
//! (`{"type":"purged","seq":…,"leaf_hash":…}`), so the whole tree can be
//! recomputed from the file alone. Then come the checkpoints that cover
//! every exported record (`{"type":"checkpoint","size":…,"note":"…"}`):
//! every kept checkpoint whose size is at least the last exported seq + 1,
//! or the latest one when no record was exported (D79).

use std::io::{self, Write};

use fugo_log::record::Record;
use fugo_log::store::{Store, StoreError, StoredRecord};
use serde::Serialize;

use crate::hex;

/// Records read per step.
const PAGE: usize = 4096;

/// Which records to export, by time (unix milliseconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// From this time on (inclusive).
    pub since_ms: Option<u64>,
    /// Before this time (exclusive).
    pub until_ms: Option<u64>,
}

impl Window {
    fn contains(&self, time_ms: u64) -> bool {
        self.since_ms.is_none_or(|since| time_ms >= since)
            && self.until_ms.is_none_or(|until| time_ms < until)
    }

    fn is_whole_log(&self) -> bool {
        self.since_ms.is_none() && self.until_ms.is_none()
    }
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Record lines.
    pub records: u64,
    /// Purged-record lines.
    pub purged: u64,
    /// Checkpoint lines.
    pub checkpoints: u64,
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store could not be read.
    #[error("reading the audit store: {0}")]
    Store(#[from] StoreError),
    /// The output could not be written.
    #[error("writing the export: {0}")]
    Write(#[source] io::Error),
}

#[derive(Serialize)]
struct RecordLine<'a> {
    r#type: &'static str,
    seq: u64,
    time: String,
    time_ms: u64,
    operation: &'static str,
    caller: &'a str,
    counterpart: &'a str,
    affair: &'a str,
    items: &'a [String],
    outcome: &'static str,
    epoch: u32,
    serial: Option<String>,
    non_disclosure_until: u64,
    policy_version: String,
    batch_id: &'a str,
    note: &'a str,
    count: u64,
    agent: &'a str,
    header_digest: String,
    leaf: String,
    leaf_hash: String,
}

#[derive(Serialize)]
struct PurgedLine {
    r#type: &'static str,
    seq: u64,
    leaf_hash: String,
}

#[derive(Serialize)]
struct CheckpointLine<'a> {
    r#type: &'static str,
    size: u64,
    note: &'a str,
}

/// Writes the export of `store` for `window` to `out` (see the module doc).
pub fn export<S: Store + ?Sized>(
    store: &mut S,
    window: Window,
    out: &mut dyn Write,
) -> Result<Exported, ExportError> {
    let mut done = Exported::default();
    let mut last: Option<u64> = None;
    let size = store.size();
    let mut from = 0;
    while from < size {
        let records = store.records(from, PAGE)?;
        if records.is_empty() {
            return Err(StoreError::Corrupt {
                what: "record",
                seq: from,
            }
            .into());
        }
        for record in &records {
            match record {
                StoredRecord::Body(record) if window.contains(record.header.time_ms) => {
                    write_line(out, &record_line(record))?;
                    done.records += 1;
                    last = Some(record.seq);
                }
                StoredRecord::Purged { seq, leaf } if window.is_whole_log() => {
                    let line = PurgedLine {
                        r#type: "purged",
                        seq: *seq,
                        leaf_hash: hex::encode(leaf),
                    };
                    write_line(out, &line)?;
                    done.purged += 1;
                    last = Some(*seq);
                }
                _ => {}
            }
        }
        from += records.len() as u64;
    }
    let checkpoints = store.checkpoints()?;
    let chosen: Vec<&(u64, String)> = match last {
        Some(seq) => checkpoints.iter().filter(|(size, _)| *size > seq).collect(),
        None => checkpoints.last().into_iter().collect(),
    };
    for (size, note) in chosen {
        let line = CheckpointLine {
            r#type: "checkpoint",
            size: *size,
            note,
        };
        write_line(out, &line)?;
        done.checkpoints += 1;
    }
    out.flush().map_err(ExportError::Write)?;
    Ok(done)
}

fn record_line(record: &Record) -> RecordLine<'_> {
    let header = &record.header;
    let leaf = record.leaf_bytes();
    RecordLine {
        r#type: "record",
        seq: record.seq,
        time: rfc3339_ms(header.time_ms),
        time_ms: header.time_ms,
        operation: header.operation.name(),
        caller: &header.caller,
        counterpart: &header.counterpart,
        affair: &header.affair,
        items: &header.items,
        outcome: record.entry.outcome.name(),
        epoch: record.entry.epoch,
        serial: record
            .entry
            .serial
            .as_ref()
            .map(|serial| hex::encode(serial)),
        non_disclosure_until: header.non_disclosure_until,
        policy_version: hex::encode(&header.policy_version),
        batch_id: &header.batch_id,
        note: &header.note,
        count: header.count,
        agent: &header.agent,
        header_digest: hex::encode(&record.header_digest),
        leaf_hash: hex::encode(&fugo_log::merkle::leaf_hash(&leaf)),
        leaf: hex::encode(&leaf),
    }
}

fn write_line(out: &mut dyn Write, line: &impl Serialize) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, line)
        .map_err(|error| ExportError::Write(io::Error::other(error)))?;
    out.write_all(b"\n").map_err(ExportError::Write)
}

/// Why a time argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a time: give unix seconds (1764201600), a date (2025-11-27, UTC midnight) \
     or an RFC 3339 time (2025-11-27T09:00:00Z, 2025-11-27T18:00:00+09:00)"
)]
pub struct TimeError(pub String);

/// Parses unix seconds, a date `YYYY-MM-DD` (00:00 UTC), or an RFC 3339
/// time `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; returns unix
/// milliseconds.
pub fn parse_time(text: &str) -> Result<u64, TimeError> {
    let bad = || TimeError(text.to_owned());
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(|seconds| seconds.checked_mul(1000))
            .ok_or_else(bad);
    }
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = text.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad());
    }
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    let mut millis = 0i64;
    if bytes.len() > 10 {
        if !matches!(bytes[10], b'T' | b't') || bytes.len() < 20 {
            return Err(bad());
        }
        if bytes[13] != b':' || bytes[16] != b':' {
            return Err(bad());
        }
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if hour > 23 || minute > 59 || second > 60 {
            return Err(bad());
        }
        seconds += hour * 3600 + minute * 60 + second;
        let mut rest = &text[19..];
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let ms: String = fraction[..digits]
                .chars()
                .chain("000".chars())
                .take(3)
                .collect();
            millis = ms.parse().map_err(|_| bad())?;
            rest = &fraction[digits..];
        }
        let offset = match rest {
            "Z" | "z" => 0,
            _ => {
                let sign = match rest.as_bytes().first() {
                    Some(b'+') => 1,
                    Some(b'-') => -1,
                    _ => return Err(bad()),
                };
                if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                    return Err(bad());
                }
                let (hours, minutes) = (
                    number(text.len() - 5..text.len() - 3)?,
                    number(text.len() - 2..text.len())?,
                );
                if hours > 23 || minutes > 59 {
                    return Err(bad());
                }
                sign * (hours * 3600 + minutes * 60)
            }
        };
        seconds -= offset;
    }
    let total = seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or_else(bad)?;
    u64::try_from(total).map_err(|_| bad())
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// well-known civil-calendar arithmetic, written out here).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12; // March = 0
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339_ms(time_ms: u64) -> String {
    let seconds = (time_ms / 1000) as i64;
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        time_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        assert_eq!(parse_time("1764201600"), Ok(1_764_201_600_000));
        assert_eq!(parse_time("2025-11-27"), Ok(1_764_201_600_000));
        assert_eq!(parse_time("2025-11-27T00:00:00Z"), Ok(1_764_201_600_000));
        assert_eq!(
            parse_time("2025-11-27T09:00:00.5+09:00"),
            Ok(1_764_201_600_500)
        );
        assert_eq!(parse_time("2024-02-29"), Ok(1_709_164_800_000));
        for bad in [
            "",
            "2025-02-29",
            "2025-13-01",
            "2025-11-27T25:00:00Z",
            "2025-11-27T00:00:00",
            "yesterday",
            "-5",
            "2025-11-27T00:00:00+0900",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
        assert_eq!(rfc3339_ms(1_764_201_600_123), "2025-11-27T00:00:00.123Z");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        for days in [-1000, 0, 59, 60, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
