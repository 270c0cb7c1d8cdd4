//! Operating fugo as an operator sees it: the real `fugo serve` binary
//! with JSON log lines and metrics switched on from the environment, real
//! mTLS calls, then the log lines parsed and `/metrics` scraped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{DeriveRequest, GetCheckpointRequest};
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

/// A dev-mode configuration with the example policy in `dir`, plus `extra`.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::copy(root.join("policy.example.toml"), dir.join("policy.toml")).unwrap();
    let path = dir.join("fugo.toml");
    fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
             master_key = \"{}\"\nmaster_key_fingerprint = \"{}\"\n\
             shutdown_grace_seconds = 5\ndev_mode = true\n\
             [audit]\ncommit_timeout_ms = 15000\n{extra}",
            common::demo_key_path().display(),
            common::DEMO_FINGERPRINT
        ),
    )
    .unwrap();
    path
}

/// `fugo serve` running, its stderr lines arriving on a channel.
struct Server {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(FUGO);
        command
            .args(["serve", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("fugo: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let (sender, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            addr,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 20 s) for a log line that `wanted` accepts.
    fn wait_for(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(line) = self.seen.iter().find(|line| wanted(line)) {
            return line.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no such log line in {:#?}", self.seen));
            self.seen.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }

    /// SIGTERM, then every stderr line.
    fn stop(mut self) -> Vec<String> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(20), "did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut all = std::mem::take(&mut self.seen);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            all.push(line);
        }
        all
    }
}

async fn connect(addr: &str, certs: &Path, identity: &str) -> Channel {
    let read = |name: &str| fs::read_to_string(certs.join(name)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            read(&format!("{identity}.pem")),
            read(&format!("{identity}.key")),
        ));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap()
}

fn request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    let id = metadata
        .get("x-request-id")
        .expect("every answer names its request id")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    id
}

/// `GET /metrics` on `addr`: the page.
fn scrape(addr: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// JSON lines from `[log] format = "json"`: every line of the server is a
/// JSON object; every line of a call carries the request id the client
/// got in `x-request-id`; no line holds a number. Metrics switched on by
/// `FUGO_METRICS__LISTEN` count the same calls by operation, agency and
/// code, with latency histograms, commit latency, queue depth, store size
/// and disk reserve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_request_ids_and_metrics_count_the_calls() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[log]\nformat = \"json\"\n");
    let mut server = Server::start(&config, &[("FUGO_METRICS__LISTEN", "127.0.0.1:0")]);
    let metrics_line = server.wait_for(|line| line.contains("metrics served at /metrics"));
    let metrics: Value = serde_json::from_str(&metrics_line).unwrap();
    let metrics_addr = metrics["addr"].as_str().unwrap().to_owned();

    let certs = dir.path().join("data/certs");
    let numbers: Vec<String> = (0..5).map(|i| common::valid_number(900 + i)).collect();
    let channel = connect(&server.addr, &certs, "mhlw").await;
    let mut mhlw = CodesClient::new(channel.clone());

    // A unary call with one bad item among three good ones.
    let mut batch = numbers[..3].to_vec();
    batch.push("123".to_owned());
    let answer = mhlw
        .derive(DeriveRequest {
            numbers: batch,
            ..Default::default()
        })
        .await
        .unwrap();
    let unary_id = request_id(answer.metadata());
    // A stream of two batches.
    let batches = vec![
        DeriveRequest {
            numbers: numbers[3..4].to_vec(),
            ..Default::default()
        },
        DeriveRequest {
            numbers: numbers[4..].to_vec(),
            ..Default::default()
        },
    ];
    let answer = mhlw
        .derive_stream(tokio_stream::iter(batches))
        .await
        .unwrap();
    let stream_id = request_id(answer.metadata());
    let mut answers = answer.into_inner();
    let mut answered = 0;
    while let Some(batch) = answers.message().await.unwrap() {
        answered += batch.results.len();
    }
    assert_eq!(answered, 2);
    // An agency without derive: refused, counted under its own id; the
    // refusal names its request id too.
    let mut moj = CodesClient::new(connect(&server.addr, &certs, "moj-family-register").await);
    let denied = moj
        .derive(DeriveRequest {
            numbers: numbers[..1].to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied_id = request_id(denied.metadata());
    // An Audit call is counted and logged the same way.
    let checkpoint = AuditClient::new(channel)
        .get_checkpoint(GetCheckpointRequest::default())
        .await
        .unwrap();
    let checkpoint_id = request_id(checkpoint.metadata());
    let ids = [&unary_id, &stream_id, &denied_id, &checkpoint_id];
    let mut unique = ids.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "one id per call");

    let page = scrape(&metrics_addr);
    let value = |series: &str| common::metric(&page, series);
    let derive = "operation=\"derive\",agency=\"mhlw\"";
    // Unary call + two stream batches.
    assert_eq!(
        value(&format!("fugo_calls_total{{{derive},code=\"OK\"}}")),
        3
    );
    assert_eq!(
        value(&format!("fugo_items_total{{{derive},code=\"OK\"}}")),
        6
    );
    assert_eq!(
        value(
            "fugo_calls_total{operation=\"derive\",agency=\"moj-family-register\",code=\"PERMISSION_DENIED\"}"
        ),
        1
    );
    assert_eq!(
        value("fugo_calls_total{operation=\"checkpoint\",agency=\"mhlw\",code=\"OK\"}"),
        1
    );
    assert_eq!(
        value(&format!("fugo_call_duration_seconds_count{{{derive}}}")),
        3
    );
    assert_eq!(
        value(&format!(
            "fugo_call_duration_seconds_bucket{{{derive},le=\"+Inf\"}}"
        )),
        3
    );
    assert!(page.contains("# TYPE fugo_call_duration_seconds histogram"));
    assert!(
        value("fugo_audit_commit_duration_seconds_count") >= 1,
        "{page}"
    );
    assert_eq!(value("fugo_audit_queue_depth"), 0, "{page}");
    assert_eq!(value("fugo_audit_serving"), 1, "{page}");
    let store = fs::metadata(dir.path().join("data/audit.redb"))
        .unwrap()
        .len();
    assert!(value("fugo_store_bytes") > 0, "{page}");
    assert!(value("fugo_store_bytes") <= store.max(value("fugo_store_bytes")));
    assert!(value("fugo_disk_free_bytes") > 0, "{page}");
    assert_eq!(value("fugo_disk_reserve_bytes"), 256 << 20);
    assert_eq!(value("fugo_disk_warn_bytes"), 2048 << 20);
    for number in &numbers {
        assert!(!page.contains(number.as_str()), "a number on the page");
    }
    for id in ids {
        assert!(!page.contains(id.as_str()), "a request id as a label");
    }

    let lines = server.stop();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    for (line, text) in parsed.iter().zip(&lines) {
        for field in ["time", "level", "target", "message"] {
            assert!(line.get(field).is_some(), "{field} missing: {text}");
        }
        // Every line about a call names its request id.
        if line.get("operation").is_some() || line.get("agency").is_some() {
            assert!(line.get("request_id").is_some(), "no request id: {text}");
        }
        for number in &numbers {
            assert!(!text.contains(number.as_str()), "a number in a log line");
        }
    }
    let of = |id: &str| -> Vec<&Value> {
        parsed
            .iter()
            .filter(|line| line["request_id"] == id)
            .collect()
    };
    let unary = of(&unary_id);
    assert!(
        unary.iter().any(|line| line["message"] == "batch done"
            && line["agency"] == "mhlw"
            && line["operation"] == "derive"
            && line["items"] == 4
            && line["ok"] == 3
            && line["failed"] == 1),
        "{unary:#?}"
    );
    let stream = of(&stream_id);
    for index in [0, 1] {
        assert!(
            stream
                .iter()
                .any(|line| line["message"] == "batch done" && line["batch"] == index),
            "batch {index}: {stream:#?}"
        );
    }
    assert!(
        of(&denied_id)
            .iter()
            .any(|line| line["message"] == "batch refused"
                && line["agency"] == "moj-family-register"
                && line["code"] == "PermissionDenied"),
        "{lines:#?}"
    );
    assert!(
        of(&checkpoint_id)
            .iter()
            .any(|line| line["message"] == "call done"
                && line["operation"] == "checkpoint"
                && line["agency"] == "mhlw"),
        "{lines:#?}"
    );
    // The dev-mode banner is a JSON line too.
    assert!(
        parsed.iter().any(|line| line["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("DEV MODE")),
        "{lines:#?}"
    );
}

/// `fugo serve` that must refuse to start: its stderr.
fn refused(config: &Path, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(FUGO);
    command
        .args(["serve", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// Overrides that may not be, misspelt ones and unknown keys stop the
/// server with a message naming them (D252).
#[test]
fn trust_settings_and_typos_in_the_environment_or_the_file_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "");
    let message = refused(&path, &[("FUGO_DEV_MODE", "false")]);
    assert!(
        message.contains("FUGO_DEV_MODE")
            && message.contains("may not be set from the environment"),
        "{message}"
    );
    let message = refused(&path, &[("FUGO_MASTER_KEY_FINGERPRINT", "00")]);
    assert!(message.contains("may not be set"), "{message}");
    let message = refused(&path, &[("FUGO_LIMITS__MAX_CONECTIONS", "10")]);
    assert!(message.contains("names no setting"), "{message}");
    let message = refused(&path, &[("FUGO_LOG__FORMAT", "xml")]);
    assert!(message.contains("[log] format"), "{message}");
    let path = config(dir.path(), "[log]\nformat = \"json\"\ncolour = true\n");
    let message = refused(&path, &[]);
    assert!(
        message.contains("line 12") && message.contains("unknown field `colour`"),
        "{message}"
    );
}
