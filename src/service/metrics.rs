//! Counters, gauges and histograms in the Prometheus text format (version
//! 0.0.4), and the small plain-HTTP listener that serves them (`[metrics]`
//! in fugo.toml; off unless configured, loopback by default: D127).
//!
//! Label values are agency ids (policy names, checked to
//! `[a-z0-9][a-z0-9._-]*`; `-` when a call was refused before its agency
//! was known) and fixed names (operations, gRPC codes, limit kinds) only:
//! never a number, a code, a token or a request id (D128).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fugo_calls_total` | counter | operation, agency, code |
//! | `fugo_items_total` | counter | operation, agency, code |
//! | `fugo_call_duration_seconds` | histogram | operation, agency |
//! | `fugo_quota_refusals_total` | counter | agency, operation, limit |
//! | `fugo_quota_used_today` | gauge | agency, operation |
//! | `fugo_audit_commit_failures_total` | counter | — |
//! | `fugo_audit_commit_duration_seconds` | histogram | — |
//! | `fugo_audit_queue_depth` | gauge | — |
//! | `fugo_audit_serving` | gauge | — |
//! | `fugo_store_bytes` | gauge | — |
//! | `fugo_disk_free_bytes` | gauge | — |
//! | `fugo_disk_reserve_bytes` | gauge | — |
//! | `fugo_disk_warn_bytes` | gauge | — |
//!
//! `fugo.v1.Persons` calls count as operations `reissue`, `suspend`,
//! `lift` and `get_status` (one item each).
//!
//! A call is a unary call or one batch of a stream; its items are counted
//! under the call's code (per-item failures inside an OK batch stay OK).
//!
//! **The hot path takes no lock of its own.** Counting a call looks up its
//! (operation, agency) series under a shared read lock (a write lock only
//! the first time an agency calls an operation) and adds to atomic
//! counters: three relaxed `fetch_add`s per call, nothing per item (D251).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::Code;

use super::quota::Quotas;
use crate::agency::AgencyId;
use crate::audit::Recorder;
use crate::histogram::{BOUNDS_MICROS, Histogram, Snapshot};
use crate::policy::Metered;

/// A metric family: its name, type and help line.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

const CALLS: Family = Family {
    name: "fugo_calls_total",
    kind: "counter",
    help: "Calls (a unary call or one batch of a stream) by operation, agency and gRPC code.",
};
const ITEMS: Family = Family {
    name: "fugo_items_total",
    kind: "counter",
    help: "Items of calls by operation, agency and the call's gRPC code.",
};
const CALL_DURATION: Family = Family {
    name: "fugo_call_duration_seconds",
    kind: "histogram",
    help: "Time from a call's (or batch's) start to its answer, audit commit included, by operation and agency.",
};
const QUOTA_REFUSALS: Family = Family {
    name: "fugo_quota_refusals_total",
    kind: "counter",
    help: "Calls refused by a quota, by agency, operation and limit (rate, day, batch).",
};
const QUOTA_USED: Family = Family {
    name: "fugo_quota_used_today",
    kind: "gauge",
    help: "Items (or reads) counted against the daily quota since 00:00 JST.",
};
const COMMIT_FAILURES: Family = Family {
    name: "fugo_audit_commit_failures_total",
    kind: "counter",
    help: "Audit commits that failed (their calls got UNAVAILABLE).",
};
const COMMIT_DURATION: Family = Family {
    name: "fugo_audit_commit_duration_seconds",
    kind: "histogram",
    help: "Time one group commit of the audit trail took (write and fsync).",
};
const QUEUE_DEPTH: Family = Family {
    name: "fugo_audit_queue_depth",
    kind: "gauge",
    help: "Appends and reads waiting for the audit recorder (at 4096 calls get UNAVAILABLE).",
};
const SERVING: Family = Family {
    name: "fugo_audit_serving",
    kind: "gauge",
    help: "1 while the audit trail can be written (health SERVING), 0 while calls fail closed.",
};
const STORE_BYTES: Family = Family {
    name: "fugo_store_bytes",
    kind: "gauge",
    help: "Size of the audit store file (data_dir/audit.redb).",
};
const DISK_FREE: Family = Family {
    name: "fugo_disk_free_bytes",
    kind: "gauge",
    help: "Free space available to fugo in the data directory.",
};
const DISK_RESERVE: Family = Family {
    name: "fugo_disk_reserve_bytes",
    kind: "gauge",
    help: "Free space below which the audit trail refuses writes ([audit] reserve_megabytes).",
};
const DISK_WARN: Family = Family {
    name: "fugo_disk_warn_bytes",
    kind: "gauge",
    help: "Free space below which a warning is logged ([audit] warn_megabytes).",
};

/// One series: its labels, in order.
type Labels = Vec<(&'static str, String)>;

/// The agency label of a call refused before its agency was known (an
/// agency id never has this value: ids start with a letter or digit).
const NO_AGENCY: &str = "-";

/// Calls and items of one code.
#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    items: AtomicU64,
}

/// Everything counted for one (operation, agency).
#[derive(Default)]
struct Series {
    /// By gRPC code (0..=16).
    by_code: [Counts; 17],
    latency: Histogram,
}

/// Series by operation, then agency label.
type SeriesMap = BTreeMap<&'static str, BTreeMap<String, Arc<Series>>>;

/// The server's counters (one per server, shared by every call).
#[derive(Default)]
pub(crate) struct Metrics {
    series: RwLock<SeriesMap>,
    quota_refusals: Mutex<BTreeMap<(AgencyId, Metered, &'static str), u64>>,
}

/// A gRPC code's canonical name (as in google.rpc.Code).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Every code, in number order (the index of `Series::by_code`).
const CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Metrics {
    /// All zero.
    pub(crate) fn new() -> Self {
        Metrics::default()
    }

    /// The series of (`operation`, `agency`), made on first use.
    fn series(&self, operation: &'static str, agency: Option<&AgencyId>) -> Arc<Series> {
        let label = agency.map_or(NO_AGENCY, AgencyId::as_str);
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(operation)
            .and_then(|agencies| agencies.get(label))
        {
            return Arc::clone(series);
        }
        let mut all = self.series.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            all.entry(operation)
                .or_default()
                .entry(label.to_owned())
                .or_default(),
        )
    }

    /// Counts one call of `operation` by `agency` (`None`: refused before
    /// its agency was known) with `items` that ended with `code` after
    /// `elapsed`.
    pub(crate) fn call(
        &self,
        operation: &'static str,
        agency: Option<&AgencyId>,
        code: Code,
        items: usize,
        elapsed: Duration,
    ) {
        let series = self.series(operation, agency);
        let counts = &series.by_code[(code as usize).min(16)];
        counts.calls.fetch_add(1, Ordering::Relaxed);
        counts.items.fetch_add(items as u64, Ordering::Relaxed);
        series.latency.observe(elapsed);
    }

    /// Counts one call refused by `agency`'s `limit` ("rate", "day",
    /// "batch") of `operation`.
    pub(crate) fn quota_refused(&self, agency: &AgencyId, operation: Metered, limit: &'static str) {
        *self
            .quota_refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((agency.clone(), operation, limit))
            .or_default() += 1;
    }

    /// The text format page: these counters, the quota counts of today and
    /// the recorder's commits, queue and disk.
    pub(crate) fn render(&self, quotas: &Quotas, recorder: &Recorder) -> String {
        let mut page = String::new();
        let all: Vec<(&'static str, String, Arc<Series>)> = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|(operation, agencies)| {
                agencies
                    .iter()
                    .map(|(agency, series)| (*operation, agency.clone(), Arc::clone(series)))
            })
            .collect();
        let by_code = |value: fn(&Counts) -> u64| {
            let all = &all;
            all.iter().flat_map(move |(operation, agency, series)| {
                CODES.iter().filter_map(move |&code| {
                    let counts = &series.by_code[code as usize];
                    // A code never answered has no series.
                    (counts.calls.load(Ordering::Relaxed) > 0).then(|| {
                        (
                            vec![
                                ("operation", (*operation).to_owned()),
                                ("agency", agency.clone()),
                                ("code", code_name(code).to_owned()),
                            ],
                            value(counts),
                        )
                    })
                })
            })
        };
        family(
            &mut page,
            &CALLS,
            by_code(|counts| counts.calls.load(Ordering::Relaxed)),
        );
        family(
            &mut page,
            &ITEMS,
            by_code(|counts| counts.items.load(Ordering::Relaxed)),
        );
        header(&mut page, &CALL_DURATION);
        for (operation, agency, series) in &all {
            histogram(
                &mut page,
                CALL_DURATION.name,
                &[("operation", operation), ("agency", agency)],
                &series.latency.snapshot(),
            );
        }
        let refusals = self
            .quota_refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        family(
            &mut page,
            &QUOTA_REFUSALS,
            refusals.iter().map(|((agency, operation, limit), count)| {
                (
                    vec![
                        ("agency", agency.as_str().to_owned()),
                        ("operation", operation.name().to_owned()),
                        ("limit", (*limit).to_owned()),
                    ],
                    *count,
                )
            }),
        );
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
        family(
            &mut page,
            &QUOTA_USED,
            quotas
                .used_today(now_ms)
                .into_iter()
                .map(|(agency, operation, used)| {
                    (
                        vec![
                            ("agency", agency.as_str().to_owned()),
                            ("operation", operation.name().to_owned()),
                        ],
                        used,
                    )
                }),
        );
        family(
            &mut page,
            &COMMIT_FAILURES,
            [(Vec::new(), recorder.commit_failures())],
        );
        header(&mut page, &COMMIT_DURATION);
        histogram(
            &mut page,
            COMMIT_DURATION.name,
            &[],
            &recorder.commit_latency().snapshot(),
        );
        family(
            &mut page,
            &QUEUE_DEPTH,
            [(Vec::new(), recorder.queue_depth())],
        );
        family(
            &mut page,
            &SERVING,
            [(Vec::new(), u64::from(recorder.serving()))],
        );
        if let Some(disk) = recorder.disk() {
            family(&mut page, &STORE_BYTES, [(Vec::new(), disk.store_bytes)]);
            // Unknown free space has no sample rather than a made-up one.
            family(
                &mut page,
                &DISK_FREE,
                disk.free_bytes.map(|free| (Vec::new(), free)),
            );
            family(&mut page, &DISK_RESERVE, [(Vec::new(), disk.reserve_bytes)]);
            family(&mut page, &DISK_WARN, [(Vec::new(), disk.warn_bytes)]);
        }
        page
    }
}

/// Writes a family's HELP and TYPE lines.
fn header(page: &mut String, family: &Family) {
    let _ = writeln!(page, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(page, "# TYPE {} {}", family.name, family.kind);
}

/// Writes one histogram's series: cumulative buckets in seconds, `_sum`
/// (seconds) and `_count`.
fn histogram(page: &mut String, name: &str, labels: &[(&str, &str)], snapshot: &Snapshot) {
    let mut prefix = String::new();
    for (label, value) in labels {
        let _ = write!(prefix, "{label}=\"{}\",", escape(value));
    }
    let bounds = BOUNDS_MICROS.iter().map(|&bound| seconds(bound));
    for (le, count) in bounds
        .chain(std::iter::once("+Inf".to_owned()))
        .zip(snapshot.cumulative)
    {
        let _ = writeln!(page, "{name}_bucket{{{prefix}le=\"{le}\"}} {count}");
    }
    let braces = if prefix.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", prefix.trim_end_matches(','))
    };
    let _ = writeln!(page, "{name}_sum{braces} {}", seconds(snapshot.sum_micros));
    let total = snapshot.cumulative.last().copied().unwrap_or(0);
    let _ = writeln!(page, "{name}_count{braces} {total}");
}

/// Microseconds as decimal seconds, exactly ("0.0005", "2.5", "10").
fn seconds(micros: u64) -> String {
    let (whole, fraction) = (micros / 1_000_000, micros % 1_000_000);
    if fraction == 0 {
        whole.to_string()
    } else {
        let digits = format!("{fraction:06}");
        format!("{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Writes one family: HELP, TYPE, then each series.
fn family(page: &mut String, family: &Family, series: impl IntoIterator<Item = (Labels, u64)>) {
    header(page, family);
    for (labels, value) in series {
        page.push_str(family.name);
        if !labels.is_empty() {
            page.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    page.push(',');
                }
                let _ = write!(page, "{name}=\"{}\"", escape(value));
            }
            page.push('}');
        }
        let _ = writeln!(page, " {value}");
    }
}

/// A label value escaped as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Connections the metrics listener serves at once; more are closed.
const CONNECTIONS: usize = 16;
/// The longest a request head may be.
const MAX_HEAD: usize = 8 << 10;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `listener` until the task is dropped: plain
/// HTTP/1.1, one request per connection, `Connection: close`.
///
/// `page` gives the page, or `None` while the server is sealed: the
/// answer is then 503 "sealed" (there is nothing to count yet).
pub(crate) async fn serve<P>(listener: TcpListener, page: P)
where
    P: Fn() -> Option<String> + Send + Sync + 'static,
{
    let page = Arc::new(page);
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let page = Arc::clone(&page);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT * 2, answer(stream, &*page)).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    page: &(dyn Fn() -> Option<String> + Send + Sync),
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(HEAD_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next(), words.next());
    let (status, kind, body) = match (method, target) {
        (Some("GET"), Some("/metrics")) => match page() {
            Some(page) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", page),
            None => (
                "503 Service Unavailable",
                "text/plain",
                "sealed: no metrics until the server is unsealed\n".to_owned(),
            ),
        },
        (Some("GET"), Some(_)) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_written_in_the_text_format() {
        let mut page = String::new();
        family(
            &mut page,
            &QUOTA_USED,
            [(
                vec![
                    ("agency", "city-shinjuku".to_owned()),
                    ("operation", "derive".to_owned()),
                ],
                42,
            )],
        );
        family(&mut page, &COMMIT_FAILURES, [(Vec::new(), 0)]);
        assert_eq!(
            page,
            "# HELP fugo_quota_used_today Items (or reads) counted against the daily quota since 00:00 JST.\n\
             # TYPE fugo_quota_used_today gauge\n\
             fugo_quota_used_today{agency=\"city-shinjuku\",operation=\"derive\"} 42\n\
             # HELP fugo_audit_commit_failures_total Audit commits that failed (their calls got UNAVAILABLE).\n\
             # TYPE fugo_audit_commit_failures_total counter\n\
             fugo_audit_commit_failures_total 0\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        assert_eq!(seconds(500), "0.0005");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(10_000_000), "10");
        let latency = Histogram::default();
        latency.observe(Duration::from_micros(700));
        latency.observe(Duration::from_secs(11));
        let mut page = String::new();
        histogram(
            &mut page,
            "x",
            &[("operation", "derive")],
            &latency.snapshot(),
        );
        let lines: Vec<&str> = page.lines().collect();
        assert_eq!(lines[0], "x_bucket{operation=\"derive\",le=\"0.0005\"} 0");
        assert_eq!(lines[1], "x_bucket{operation=\"derive\",le=\"0.001\"} 1");
        assert_eq!(lines[13], "x_bucket{operation=\"derive\",le=\"10\"} 1");
        assert_eq!(lines[14], "x_bucket{operation=\"derive\",le=\"+Inf\"} 2");
        assert_eq!(lines[15], "x_sum{operation=\"derive\"} 11.0007");
        assert_eq!(lines[16], "x_count{operation=\"derive\"} 2");
        let mut page = String::new();
        histogram(&mut page, "y", &[], &Histogram::default().snapshot());
        assert!(
            page.contains("y_bucket{le=\"+Inf\"} 0\ny_sum 0\ny_count 0\n"),
            "{page}"
        );
    }

    /// Calls of one operation and agency share one series; a call refused
    /// before its agency is known counts under `-`.
    #[test]
    fn calls_are_counted_by_operation_agency_and_code() {
        let metrics = Metrics::new();
        let agency = AgencyId::new("city-a").unwrap();
        let tick = Duration::from_millis(3);
        metrics.call("derive", Some(&agency), Code::Ok, 10, tick);
        metrics.call("derive", Some(&agency), Code::Ok, 5, tick);
        metrics.call("derive", Some(&agency), Code::InvalidArgument, 2, tick);
        metrics.call("seal", None, Code::Unauthenticated, 1, tick);
        let series = metrics.series("derive", Some(&agency));
        assert_eq!(series.by_code[0].calls.load(Ordering::Relaxed), 2);
        assert_eq!(series.by_code[0].items.load(Ordering::Relaxed), 15);
        assert_eq!(series.by_code[3].items.load(Ordering::Relaxed), 2);
        assert_eq!(series.latency.snapshot().cumulative[14], 3);
        let refused = metrics.series("seal", None);
        assert_eq!(refused.by_code[16].calls.load(Ordering::Relaxed), 1);
        let all = metrics.series.read().unwrap();
        assert_eq!(all["seal"].keys().collect::<Vec<_>>(), ["-"]);
    }
}
