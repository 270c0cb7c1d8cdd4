//! Counters and gauges in the Prometheus text format (version 0.0.4), and
//! the small plain-HTTP listener that serves them (`[metrics]` in
//! fugo.toml; off unless configured, loopback by default: D127).
//!
//! Label values are agency ids (policy names, checked to
//! `[a-z0-9][a-z0-9._-]*`) and fixed names (operations, gRPC codes, limit
//! kinds) only: never a number, a code, a token or a request id (D128).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `fugo_calls_total` | counter | operation, code |
//! | `fugo_items_total` | counter | operation, code |
//! | `fugo_quota_refusals_total` | counter | agency, operation, limit |
//! | `fugo_quota_used_today` | gauge | agency, operation |
//! | `fugo_audit_commit_failures_total` | counter | — |
//!
//! `fugo.v1.Persons` calls count as operations `reissue`, `suspend`,
//! `lift` and `get_status` (one item each).
//!
//! A call is a unary call or one batch of a stream; its items are counted
//! under the call's code (per-item failures inside an OK batch stay OK).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tonic::Code;

use super::codes::State;
use crate::agency::AgencyId;
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
    help: "Calls (a unary call or one batch of a stream) by operation and gRPC code.",
};
const ITEMS: Family = Family {
    name: "fugo_items_total",
    kind: "counter",
    help: "Items of calls by operation and the call's gRPC code.",
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

/// One series: its labels, in order.
type Labels = Vec<(&'static str, String)>;

/// Calls and items by (operation, code).
type CallCounts = BTreeMap<(&'static str, &'static str), (u64, u64)>;

/// The server's counters (one per server, shared by every call).
#[derive(Default)]
pub(crate) struct Metrics {
    calls: Mutex<CallCounts>,
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

impl Metrics {
    /// All zero.
    pub(crate) fn new() -> Self {
        Metrics::default()
    }

    /// Counts one call of `operation` with `items` that ended with `code`.
    pub(crate) fn call(&self, operation: &'static str, code: Code, items: usize) {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = calls.entry((operation, code_name(code))).or_default();
        counts.0 += 1;
        counts.1 += items as u64;
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
    /// the recorder's commit failures.
    pub(crate) fn render(&self, state: &State) -> String {
        let mut page = String::new();
        let calls = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let label = |operation: &str, code: &str| {
            vec![
                ("operation", operation.to_owned()),
                ("code", code.to_owned()),
            ]
        };
        family(
            &mut page,
            &CALLS,
            calls
                .iter()
                .map(|((operation, code), (count, _))| (label(operation, code), *count)),
        );
        family(
            &mut page,
            &ITEMS,
            calls
                .iter()
                .map(|((operation, code), (_, items))| (label(operation, code), *items)),
        );
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
            state
                .quotas
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
            [(Vec::new(), state.recorder.commit_failures())],
        );
        page
    }
}

/// Writes one family: HELP, TYPE, then each series.
fn family(page: &mut String, family: &Family, series: impl IntoIterator<Item = (Labels, u64)>) {
    let _ = writeln!(page, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(page, "# TYPE {} {}", family.name, family.kind);
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
/// `state` is empty while the server is sealed: the answer is then
/// 503 "sealed" (there is nothing to count yet).
pub(crate) async fn serve(listener: TcpListener, state: Arc<OnceLock<Arc<State>>>) {
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
        let state = state.get().cloned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_TIMEOUT * 2, answer(stream, state.as_deref())).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, state: Option<&State>) -> std::io::Result<()> {
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
        (Some("GET"), Some("/metrics")) => match state {
            Some(state) => (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                state.metrics.render(state),
            ),
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
}
