//! Quotas against bulk extraction, against a real server (127.0.0.1:0,
//! real TLS): the token bucket and the day limit per agency and operation,
//! RESOURCE_EXHAUSTED with google.rpc.RetryInfo, one state across an
//! agency's connections and streams, day counts that survive a restart,
//! the refusal in the audit trail and in /metrics, the warning at the
//! policy's share of the day limit, the disclosure reads' quota, and
//! Rekey's own quota.
//! Policies here set low limits; a test's agency is its own, so tests
//! running at once do not share counts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fugo::certs::DevCa;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, DiscloseRequest, ReadCopyRequest, RekeyRequest, rekey_result,
};
use fugo::service::{self, Running};
use fugo_log::record::{Operation, Outcome};
use fugo_log::store::{Append, RedbStore, Store};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_types::StatusExt;

/// Each agency has its own low limits; `portal` reads, the others derive.
const POLICY: &str = r#"
[quota]
warn_percent = 50

[[agency]]
id = "burst"
name = "bucket test"
certificates = ["burst"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 5, burst = 10, per_day = 1000 }

[[agency]]
id = "daily"
name = "day limit across connections"
certificates = ["daily"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 1000, burst = 100, per_day = 30 }

[[agency]]
id = "restart"
name = "day count across a restart"
certificates = ["restart"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 1000, burst = 100, per_day = 20 }

[[agency]]
id = "nta"
name = "trail, metrics and warning"
certificates = ["nta"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 1000, burst = 100, per_day = 20 }

[[agency]]
id = "paced"
name = "a stream paced by its bucket"
certificates = ["paced"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 200, burst = 100, per_day = 10000 }

[[agency]]
id = "slow"
name = "a stream that would wait too long"
certificates = ["slow"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_second = 5, burst = 100, per_day = 10000 }

[[agency]]
id = "mover"
name = "rekeys its codes from epoch 1 to epoch 2"
certificates = ["mover"]
capabilities = ["derive"]
epochs = [{ epoch = 1, generation = 1, state = "accepted" }, { epoch = 2, generation = 1, state = "current" }]
quota.rekey = { per_second = 1000, burst = 100, per_day = 3 }

[[agency]]
id = "portal"
name = "citizen portal"
certificates = ["portal"]
capabilities = ["disclose"]
epoch = 1
quota.disclose = { per_second = 1, burst = 2, per_day = 1000 }

[[agency]]
id = "reader"
name = "reads its copy"
certificates = ["reader"]
epoch = 1
quota.disclose = { per_second = 100, burst = 100, per_day = 2 }
"#;

/// Every log line of this test binary (info and above), for the warning.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_env_filter("fugo=info")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .init();
        buffer
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts a server on `dir` (again, if it ran there before: the data
/// directory is kept), with /metrics on a free loopback port. A restart
/// waits until the stopped server's store is free.
async fn start(dir: &Path) -> (Running, DevCa) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut config, ca) = common::server_config(dir, POLICY, [42; 32]);
        config.metrics = Some("127.0.0.1:0".parse().unwrap());
        match service::start(config, &mut std::io::sink()).await {
            Ok(running) => return (running, ca),
            Err(error) if Instant::now() < deadline => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("the server did not start: {error}"),
        }
    }
}

/// A new connection whose client certificate names `identity`.
async fn connect(running: &Running, ca: &DevCa, identity: &str) -> Channel {
    let pem = ca.client(identity).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
        .collect()
}

async fn derive(
    client: &mut CodesClient<Channel>,
    count: u64,
    seed: u64,
) -> Result<tonic::Response<fugo::proto::fugo::v1::DeriveResponse>, tonic::Status> {
    client
        .derive(DeriveRequest {
            numbers: numbers(count, seed),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
}

/// The RetryInfo delay of a RESOURCE_EXHAUSTED status.
fn retry_delay(status: &tonic::Status) -> Duration {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    status
        .get_details_retry_info()
        .expect("a google.rpc.RetryInfo in the details")
        .retry_delay
        .expect("a delay")
}

/// Until 00:00 JST.
fn until_jst_midnight() -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let day = 86_400_000;
    Duration::from_millis(day - (now + 9 * 3_600_000) % day)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_bucket_gets_retry_info_and_passes_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut client = CodesClient::new(connect(&running, &ca, "burst").await);
    derive(&mut client, 10, 1).await.unwrap();
    let refused = derive(&mut client, 5, 100).await.unwrap_err();
    let delay = retry_delay(&refused);
    // 5 items at 5 a second.
    assert!(
        (Duration::from_millis(900)..=Duration::from_millis(1100)).contains(&delay),
        "{delay:?}"
    );
    assert!(
        refused
            .message()
            .contains("agency burst: derive quota of 5 items a second"),
        "{}",
        refused.message()
    );
    let violations = refused.get_details_quota_failure().unwrap().violations;
    assert_eq!(violations[0].subject, "agency:burst/derive");
    assert_eq!(violations[0].description, "rate limit");
    tokio::time::sleep(delay).await;
    let passed = derive(&mut client, 5, 100).await.unwrap().into_inner();
    assert_eq!(passed.results.len(), 5);
    // A batch larger than the bucket can never pass: no RetryInfo.
    let never = derive(&mut client, 11, 200).await.unwrap_err();
    assert_eq!(never.code(), Code::ResourceExhausted);
    assert!(never.get_details_retry_info().is_none(), "{never:?}");
    assert!(never.message().contains("split it"), "{}", never.message());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_limit_holds_across_connections_and_streams_and_refuses_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut first = CodesClient::new(connect(&running, &ca, "daily").await);
    let mut second = CodesClient::new(connect(&running, &ca, "daily").await);
    derive(&mut first, 10, 1).await.unwrap();
    derive(&mut second, 10, 100).await.unwrap();
    // A stream on a third connection: 8 pass (28 of 30), then a batch of
    // 5 would pass the limit and is refused whole; the stream ends.
    let mut third = CodesClient::new(connect(&running, &ca, "daily").await);
    let batches = vec![
        DeriveRequest {
            epoch: 0,
            numbers: numbers(8, 200),
            on_behalf_of: String::new(),
        },
        DeriveRequest {
            epoch: 0,
            numbers: numbers(5, 300),
            on_behalf_of: String::new(),
        },
    ];
    let mut answers = third
        .derive_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let passed = answers.message().await.unwrap().unwrap();
    assert_eq!(passed.results.len(), 8);
    let refused = answers.message().await.unwrap_err();
    let delay = retry_delay(&refused);
    assert!(
        delay <= until_jst_midnight() + Duration::from_secs(1),
        "{delay:?}"
    );
    assert!(
        delay + Duration::from_secs(60) >= until_jst_midnight(),
        "{delay:?}"
    );
    assert!(
        refused.message().contains("30 items a day"),
        "{}",
        refused.message()
    );
    // Nothing of the refused batch was counted: 2 still fit, then none.
    derive(&mut first, 2, 400).await.unwrap();
    let over = derive(&mut second, 1, 500).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted);
    assert_eq!(
        over.get_details_quota_failure().unwrap().violations[0].description,
        "day limit"
    );
    running.stop().await.unwrap();
}

/// Rekey, the way out of a closing epoch, has a quota of its own (issue 9:
/// "rekey-only epochs open only in Rekey, with quota and audit"): a day
/// limit of 3 codes passes 3 and refuses the next batch whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_has_its_own_quota() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut mover = CodesClient::new(connect(&running, &ca, "mover").await);
    let old_codes: Vec<String> = mover
        .derive(DeriveRequest {
            numbers: numbers(4, 7),
            on_behalf_of: String::new(),
            epoch: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|result| match result.result {
            Some(fugo::proto::fugo::v1::derive_result::Result::Code(code)) => code,
            other => panic!("a derive in the accepted epoch failed: {other:?}"),
        })
        .collect();
    let rekey = |codes: &[String]| RekeyRequest {
        codes: codes.to_vec(),
    };
    let passed = mover.rekey(rekey(&old_codes[..3])).await.unwrap();
    for result in &passed.get_ref().results {
        assert!(
            matches!(result.result, Some(rekey_result::Result::Rekeyed(_))),
            "{result:?}"
        );
    }
    let over = mover.rekey(rekey(&old_codes[3..])).await.unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert_eq!(
        over.get_details_quota_failure().unwrap().violations[0].description,
        "day limit"
    );
    assert!(over.message().contains("rekey"), "{}", over.message());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_paced_by_the_bucket_and_refused_when_the_wait_is_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    // 100 at once, then 200 a second: three batches of 100 take about a
    // second on a stream, and none is refused.
    let mut paced = CodesClient::new(connect(&running, &ca, "paced").await);
    let started = Instant::now();
    let batches: Vec<DeriveRequest> = (0..3)
        .map(|b| DeriveRequest {
            numbers: numbers(100, b * 1000),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .collect();
    let mut answers = paced
        .derive_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        assert_eq!(answers.message().await.unwrap().unwrap().results.len(), 100);
    }
    assert!(answers.message().await.unwrap().is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    // A unary call is not paced: refused with the delay.
    let refused = derive(&mut paced, 100, 5000).await.unwrap_err();
    assert!(retry_delay(&refused) > Duration::from_millis(400));

    // 5 a second: a second batch of 100 would wait 20 s, more than a
    // stream waits (10 s): refused at once, with the delay.
    let mut slow = CodesClient::new(connect(&running, &ca, "slow").await);
    let started = Instant::now();
    let batches: Vec<DeriveRequest> = (0..2)
        .map(|b| DeriveRequest {
            numbers: numbers(100, b * 1000),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .collect();
    let mut answers = slow
        .derive_stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().results.len(), 100);
    let refused = answers.message().await.unwrap_err();
    let delay = retry_delay(&refused);
    assert!(delay > Duration::from_secs(19), "{delay:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_count_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut client = CodesClient::new(connect(&running, &ca, "restart").await);
    derive(&mut client, 15, 1).await.unwrap();
    running.stop().await.unwrap();

    let (running, ca) = start(dir.path()).await;
    let mut client = CodesClient::new(connect(&running, &ca, "restart").await);
    let refused = derive(&mut client, 10, 100).await.unwrap_err();
    retry_delay(&refused);
    derive(&mut client, 5, 200).await.unwrap();
    let refused = derive(&mut client, 1, 300).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    running.stop().await.unwrap();
}

async fn scrape(running: &Running, path: &str) -> (String, String) {
    common::scrape(running.metrics_addr.expect("metrics are configured"), path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_in_the_trail_and_the_metrics_and_the_warning_fires_once_at_the_share() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut nta = CodesClient::new(connect(&running, &ca, "nta").await);
    let warned = |request_id: &str| {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        let lines: Vec<String> = text
            .lines()
            .filter(|line| {
                line.contains("crossed the warning share") && line.contains("agency=nta")
            })
            .map(str::to_owned)
            .collect();
        (
            lines.len(),
            lines.iter().any(|line| line.contains(request_id)),
        )
    };
    // 9 of 20: under the 50% share.
    let below = derive(&mut nta, 9, 1).await.unwrap();
    let id = below
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(warned(id), (0, false));
    // 11 of 20: crosses it, once.
    let crossing = derive(&mut nta, 2, 100).await.unwrap();
    let id = crossing
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(warned(id), (1, true));
    derive(&mut nta, 2, 200).await.unwrap();
    assert_eq!(warned("").0, 1, "the warning fires once a day");
    // 13 of 20: 10 more are refused.
    let refused = derive(&mut nta, 10, 300).await.unwrap_err();
    retry_delay(&refused);

    let (status, page) = scrape(&running, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for line in [
        "fugo_quota_refusals_total{agency=\"nta\",operation=\"derive\",limit=\"day\"} 1",
        "fugo_quota_used_today{agency=\"nta\",operation=\"derive\"} 13",
        "fugo_audit_commit_failures_total 0",
        "# TYPE fugo_calls_total counter",
    ] {
        assert!(
            page.lines().any(|l| l == line),
            "{line} missing from\n{page}"
        );
    }
    let count = |series: &str| common::metric(&page, series);
    // Other tests' calls run in their own servers: these are ours.
    assert_eq!(
        count("fugo_calls_total{operation=\"derive\",agency=\"nta\",code=\"OK\"}"),
        3
    );
    assert_eq!(
        count("fugo_calls_total{operation=\"derive\",agency=\"nta\",code=\"RESOURCE_EXHAUSTED\"}"),
        1
    );
    assert_eq!(
        count("fugo_items_total{operation=\"derive\",agency=\"nta\",code=\"OK\"}"),
        13
    );
    // Labels are agency ids and fixed names: no number is on the page.
    for number in numbers(9, 1).iter().chain(&numbers(10, 300)) {
        assert!(!page.contains(number.as_str()));
    }
    let (status, _) = scrape(&running, "/other").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    // The refusal opened no one: a tally (agency, reason, minute) that
    // becomes a Refusals record once its minute has closed (here the test
    // makes the next append, as the server's next commit would).
    running.stop().await.unwrap();
    let path = dir.path().join("data").join(fugo::audit::STORE_FILE);
    let mut store = RedbStore::open(&path).unwrap();
    let next_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    store
        .append(Append {
            now_ms: next_minute,
            ..Append::default()
        })
        .unwrap();
    let records = store.agency_records("nta", None, 10_000).unwrap();
    let refusals: Vec<_> = records
        .iter()
        .filter(|r| r.header.operation == Operation::Refusals)
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].header.note, "quota.derive.day");
    assert_eq!(refusals[0].header.count, 10);
    assert_eq!(refusals[0].entry.outcome, Outcome::Refused);
    assert!(refusals[0].entry.person.is_none());
    let derives = records
        .iter()
        .filter(|r| r.header.operation == Operation::Derive)
        .count();
    assert_eq!(derives, 13, "one record per person derived, none refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclosure_and_copy_reads_have_a_quota() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    // Every disclosure call is a read, answered or not: guessing codes
    // costs quota too. Burst 2, one a second.
    let mut portal = AuditClient::new(connect(&running, &ca, "portal").await);
    let ask = DiscloseRequest {
        code: "not-a-code".into(),
        page_size: 10,
        page_token: String::new(),
        with_proofs: false,
    };
    for _ in 0..2 {
        let answer = portal.disclose(ask.clone()).await.unwrap_err();
        assert_eq!(answer.code(), Code::InvalidArgument, "{answer:?}");
    }
    let refused = portal.disclose(ask.clone()).await.unwrap_err();
    let delay = retry_delay(&refused);
    assert!(delay <= Duration::from_millis(1100), "{delay:?}");
    assert!(
        refused
            .message()
            .contains("disclose quota of 1 reads a second")
    );
    tokio::time::sleep(delay).await;
    let answer = portal.disclose(ask).await.unwrap_err();
    assert_eq!(answer.code(), Code::InvalidArgument, "{answer:?}");

    // Copy pages: two a day for this reader.
    let mut reader = AuditClient::new(connect(&running, &ca, "reader").await);
    let page = ReadCopyRequest {
        page_size: 10,
        page_token: String::new(),
    };
    reader.read_copy(page.clone()).await.unwrap();
    reader.read_copy(page.clone()).await.unwrap();
    let refused = reader.read_copy(page).await.unwrap_err();
    assert!(retry_delay(&refused) <= until_jst_midnight() + Duration::from_secs(1));
    let (_, metrics) = scrape(&running, "/metrics").await;
    for line in [
        "fugo_quota_refusals_total{agency=\"portal\",operation=\"disclose\",limit=\"rate\"} 1",
        "fugo_quota_refusals_total{agency=\"reader\",operation=\"disclose\",limit=\"day\"} 1",
        "fugo_calls_total{operation=\"read_copy\",agency=\"reader\",code=\"OK\"} 2",
        "fugo_calls_total{operation=\"disclose\",agency=\"portal\",code=\"RESOURCE_EXHAUSTED\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from\n{metrics}"
        );
    }
    running.stop().await.unwrap();
}
