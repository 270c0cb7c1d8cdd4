//! The audit trail's durability, tested on the real binary (`fugo serve`,
//! production mode, a fresh master key, certificates made for the test) with
//! tonic clients over mutual TLS on 127.0.0.1:
//!
//! - **fail closed, never hang**: a file-size limit (`prlimit --fsize`) on
//!   the running server makes the store unable to grow; calls that must be
//!   recorded get UNAVAILABLE within 2 s and nothing else, health says
//!   NOT_SERVING, the process stays up; lifting the limit brings it back
//!   within 10 s without a restart (D89, D90);
//! - **crash loop**: streaming derive and seal, SIGKILL at random moments,
//!   restart on the same data directory; every item the client got an
//!   answer for has its record, and the tree and every checkpoint verify
//!   (D91, D92). `FUGO_CRASH_KILLS` sets the number of kills (default 20);
//! - **fsync before the answer**: under strace, every acknowledged call's
//!   record is written to the store, then the store is fsync'd, and only
//!   then do response bytes go to the client's socket (D93, D94). The
//!   checker is tested on synthesized traces and on the real trace with its
//!   fsyncs removed, so it is shown to fail without them.
//!
//! `.ci/run` installs strace and util-linux's prlimit when missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test code: a panic is a failure report

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fugo::agency::{AgencyId, Epoch};
use fugo::code::Coder;
use fugo::exchange::Exchange;
use fugo::keys::KeyHierarchy;
use fugo::mynumber::MyNumber;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, DeriveResponse, GetCheckpointRequest, SealRequest, derive_result, seal_result,
};
use fugo::random::SystemRandomness;
use fugo_log::checkpoint::{LogSigner, LogVerifier};
use fugo_log::merkle::Frontier;
use fugo_log::record::Operation;
use fugo_log::store::{RedbStore, Store, StoredRecord};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

/// The log's name in its checkpoints (set in the test's fugo.toml).
const ORIGIN: &str = "durability.test/audit";
/// The agency the tests call as, and the one its seals are addressed to.
const CALLER: &str = "mhlw";
const PROVIDER: &str = "city-shinjuku";
const AFFAIR: &str = "health-insurance-benefit";

// ── the server, as an operator runs it ──────────────────────────────────

/// A data directory with its configuration, key and certificates, reused
/// by every start of the server (the crash loop restarts on it).
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    keys: KeyHierarchy,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let key = dir.path().join("master.key");
        let keys = fugo::keyfile::generate(&key).unwrap();
        let pki = dir.path().join("pki");
        fugo::certs::write_dev_certs(&pki, &[CALLER.to_owned(), PROVIDER.to_owned()]).unwrap();
        fs::copy(
            root.join("policy.example.toml"),
            dir.path().join("policy.toml"),
        )
        .unwrap();
        let config = dir.path().join("fugo.toml");
        let at = |name: &str| dir.path().join(name).display().to_string();
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\npolicy = \"{policy}\"\n\
                 master_key = \"{key}\"\nmaster_key_fingerprint = \"{fingerprint}\"\n\
                 shutdown_grace_seconds = 5\ndev_mode = false\n\n\
                 [tls]\nca = \"{pki}/ca.pem\"\ncert = \"{pki}/server.pem\"\nkey = \"{pki}/server.key\"\n\n\
                 [audit]\norigin = \"{ORIGIN}\"\n",
                data = at("data"),
                policy = at("policy.toml"),
                key = key.display(),
                fingerprint = keys.fingerprint(),
                pki = pki.display(),
            ),
        )
        .unwrap();
        Setup { dir, config, keys }
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("data").join(fugo::audit::STORE_FILE)
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The caller's coder (epoch 1 in the example policy).
    fn coder(&self) -> Coder {
        Coder::new(
            &self.keys,
            AgencyId::new(CALLER).unwrap(),
            Epoch::new(1).unwrap(),
        )
    }

    /// The log's verifier key, from the master key and the origin (not
    /// from the store).
    fn verifier(&self) -> LogVerifier {
        LogSigner::from_seed(ORIGIN, &self.keys.log_signing_seed())
            .unwrap()
            .verifier()
    }

    fn start(&self) -> Server {
        Server::start(Command::new(FUGO), &self.config)
    }

    /// The server under `strace -f` (its output in `trace`).
    fn start_traced(&self, trace: &Path) -> Server {
        let mut command = Command::new("strace");
        command.args([
            "-f",
            "-yy",
            "-ttt",
            "-s",
            "65536",
            "-e",
            "trace=fsync,fdatasync,write,pwrite64,pwritev,pwritev2,sendmsg,sendto,writev",
            "-o",
            trace.to_str().unwrap(),
            FUGO,
        ]);
        Server::start(command, &self.config)
    }

    async fn client(&self, server: &Server) -> Channel {
        let pki = self.pki();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(fs::read(pki.join("ca.pem")).unwrap()))
            .identity(Identity::from_pem(
                fs::read(pki.join(format!("{CALLER}.pem"))).unwrap(),
                fs::read(pki.join(format!("{CALLER}.key"))).unwrap(),
            ))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap()
    }
}

/// `fugo serve` (or strace running it).
struct Server {
    child: Child,
    /// The fugo process (the child itself, or strace's child).
    pid: u32,
    addr: String,
    logs: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(mut command: Command, config: &Path) -> Server {
        let mut child = command
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("fugo: listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            let logs = logs.join().unwrap();
            panic!("the server did not start: {line:?}\n{logs}");
        };
        let addr = addr.to_owned();
        let pid = fugo_pid(&child);
        Server {
            child,
            pid,
            addr,
            logs: Some(logs),
        }
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL to the fugo process; waits for it to be gone.
    fn kill(mut self) {
        signal(self.pid, "KILL");
        let _ = self.child.wait();
        let _ = self.logs.take().unwrap().join();
    }

    /// SIGTERM to the fugo process; its exit code and its logs.
    fn stop(mut self) -> (Option<i32>, String) {
        signal(self.pid, "TERM");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let logs = self.logs.take().unwrap().join().unwrap();
        // A stop that leaves the store open may exit mid-commit (D202).
        assert!(
            !logs.contains("still open after the grace period"),
            "the stop left the audit store open: {logs}"
        );
        (status.code(), logs)
    }
}

impl Drop for Server {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        if self.logs.is_some() {
            signal(self.pid, "KILL");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid of fugo itself: `child`, or its only child when `child` is
/// strace (which forked fugo before fugo printed its address).
fn fugo_pid(child: &Child) -> u32 {
    let id = child.id();
    let children = format!("/proc/{id}/task/{id}/children");
    let exe = fs::read_link(format!("/proc/{id}/exe")).unwrap_or_default();
    if exe.file_name().is_some_and(|name| name == "strace") {
        let list = fs::read_to_string(children).unwrap();
        list.split_whitespace().next().unwrap().parse().unwrap()
    } else {
        id
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

fn prlimit_fsize(pid: u32, limit: &str) {
    let output = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}")])
        .output()
        .expect("prlimit (util-linux) must be installed; .ci/run installs it");
    assert!(
        output.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `count` valid numbers, distinct for distinct `(start, count)` ranges.
fn numbers(start: u64, count: u64) -> Vec<String> {
    (start..start + count)
        .map(|seed| common::valid_number(10_000_000_000 + seed))
        .collect()
}

fn codes_of(response: &DeriveResponse) -> Vec<String> {
    response
        .results
        .iter()
        .map(|result| match &result.result {
            Some(derive_result::Result::Code(code)) => code.clone(),
            other => panic!("a valid number got no code: {other:?}"),
        })
        .collect()
}

async fn health(channel: &Channel) -> ServingStatus {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    ServingStatus::try_from(response.into_inner().status).unwrap()
}

// ── checking a store after the fact ─────────────────────────────────────

/// What the client was answered (acknowledged) and must find recorded.
#[derive(Default)]
struct Acknowledged {
    /// Codes derived by the caller.
    codes: HashSet<String>,
    /// Serials of tokens sealed by the caller, with the code sealed.
    serials: HashMap<[u8; 16], String>,
}

/// What [`check_store`] found.
struct StoreReport {
    records: u64,
    checkpoints: usize,
}

/// Opens the store (checking every page), recomputes the tree from every
/// record, checks every checkpoint against its signature and the tree, and
/// finds a record for every acknowledged item.
fn check_store(setup: &Setup, acknowledged: &Acknowledged) -> StoreReport {
    let mut store = RedbStore::open_checked(setup.store_path()).unwrap();
    let exchange = Exchange::new(
        fugo::keyfile::load(
            &fugo::keyfile::KeySource {
                path: setup.dir.path().join("master.key"),
                expect: None,
            },
            &mut std::io::sink(),
        )
        .unwrap(),
        Box::new(SystemRandomness::new()),
    );
    let caller = AgencyId::new(CALLER).unwrap();
    let policy = fugo::policy::parse(
        &std::fs::read_to_string(setup.dir.path().join("policy.toml")).unwrap(),
    )
    .unwrap();
    let code_of = |link: &fugo_log::record::PersonLink, epoch: u32| {
        let link = fugo::link::PersonLink::from_bytes(link.0);
        let code = exchange
            .code_for_link(&policy, &caller, Epoch::new(epoch as u8).unwrap(), &link)
            .unwrap();
        String::from_utf8(code.to_text().to_vec()).unwrap()
    };
    let size = store.size();
    let mut frontier = Frontier::new();
    let mut derived = HashSet::new();
    let mut sealed = HashMap::new();
    let mut from = 0;
    while from < size {
        let page = store.records(from, 10_000).unwrap();
        assert!(!page.is_empty(), "records stop at {from} of {size}");
        for stored in page {
            assert_eq!(stored.seq(), frontier.size(), "records out of order");
            let StoredRecord::Body(record) = stored else {
                panic!("nothing is past retention in this test");
            };
            frontier.append(record.leaf_hash(), |_, _, _| {});
            let header = &record.header;
            if header.caller != CALLER {
                continue;
            }
            let entry = &record.entry;
            match (header.operation, &entry.person) {
                (Operation::Derive, Some(link)) => {
                    assert_eq!(entry.epoch, 1, "the caller's epoch in the example policy");
                    derived.insert(code_of(link, entry.epoch));
                }
                (Operation::Seal, Some(link)) => {
                    assert_eq!(header.counterpart, PROVIDER);
                    let serial = entry.serial.expect("a seal record has its serial");
                    // A seal records no epoch; the sealed codes are of epoch 1.
                    sealed.insert(serial, code_of(link, 1));
                }
                _ => {}
            }
        }
        from = frontier.size();
    }
    assert_eq!(frontier.size(), size);
    assert_eq!(
        frontier.root(),
        store.root(),
        "the root recomputed from every record differs from the store's"
    );

    let missing = acknowledged
        .codes
        .iter()
        .filter(|code| !derived.contains(*code))
        .count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged derives have no record",
        acknowledged.codes.len()
    );
    for (serial, code) in &acknowledged.serials {
        assert_eq!(
            sealed.get(serial),
            Some(code),
            "an acknowledged seal has no record (or names another person)"
        );
    }

    let verifier = setup.verifier();
    assert_eq!(
        store.verifier().unwrap().as_deref(),
        Some(verifier.to_string().as_str()),
        "the store keeps the log's key"
    );
    let checkpoints = store.checkpoints().unwrap();
    for (size, note) in &checkpoints {
        let checkpoint = verifier
            .open(note)
            .unwrap_or_else(|error| panic!("checkpoint of size {size} fails to verify: {error}"));
        assert_eq!(checkpoint.size, *size);
        assert_eq!(checkpoint.origin, ORIGIN);
        assert_eq!(
            checkpoint.root,
            store.root_at(*size).unwrap(),
            "checkpoint of size {size} names another root"
        );
    }
    assert!(!checkpoints.is_empty(), "no checkpoint was signed");
    StoreReport {
        records: size,
        checkpoints: checkpoints.len(),
    }
}

// ── 1. fail closed, never hang ──────────────────────────────────────────

/// D89, D90.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_grow_fails_calls_closed_and_recovers_without_a_restart() {
    const BATCH: u64 = 10_000;
    let setup = Setup::new();
    let mut server = setup.start();
    let channel = setup.client(&server).await;
    let mut codes = CodesClient::new(channel.clone());
    let coder = setup.coder();
    let mut acknowledged = Acknowledged::default();
    let mut next = 0;
    let mut derive = |count: u64| {
        let batch = numbers(next, count);
        next += count;
        batch
    };

    for _ in 0..3 {
        let response = codes
            .derive(DeriveRequest {
                numbers: derive(BATCH),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
            .unwrap();
        acknowledged.codes.extend(codes_of(response.get_ref()));
    }
    assert_eq!(health(&channel).await, ServingStatus::Serving);

    // The store may not grow past its size now: redb reuses free pages
    // until it needs more, then its writes fail with EFBIG.
    // Only the soft limit, which is the one the kernel enforces: raising a
    // hard limit again needs CAP_SYS_RESOURCE, which a container may lack.
    let limit = fs::metadata(setup.store_path()).unwrap().len();
    prlimit_fsize(server.pid, &format!("{limit}:unlimited"));

    let mut refused = None;
    let mut accepted_under_limit = 0;
    for _ in 0..40 {
        let batch = derive(BATCH);
        let started = Instant::now();
        let answer = codes
            .derive(DeriveRequest {
                numbers: batch.clone(),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "a call took {took:?}");
        match answer {
            Ok(response) => {
                acknowledged.codes.extend(codes_of(response.get_ref()));
                accepted_under_limit += 1;
            }
            Err(status) => {
                refused = Some((status, batch));
                break;
            }
        }
    }
    let (status, batch) = refused.expect("40 batches of 10,000 records fit without growing");
    assert!(
        fs::metadata(setup.store_path()).unwrap().len() <= limit,
        "the file grew past the limit"
    );
    let expected: Vec<String> = batch
        .iter()
        .map(|number| {
            let number = MyNumber::parse(number.as_bytes()).unwrap();
            String::from_utf8(coder.derive(&number).to_text().to_vec()).unwrap()
        })
        .collect();
    assert_refused_with_nothing(&status, &expected);

    // Every further call fails the same way, promptly; health says so and
    // the process stays up.
    for _ in 0..3 {
        let batch = derive(BATCH);
        let started = Instant::now();
        let status = codes
            .derive(DeriveRequest {
                numbers: batch,
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await;
        let status = match status {
            Err(status) => status,
            Ok(_) => {
                // The server's log says which write failed first.
                let size = fs::metadata(setup.store_path()).unwrap().len();
                let (_, logs) = server.stop();
                panic!(
                    "a call after the first refusal was answered (store {size} bytes, \
                     limit {limit}); the server's log:\n{logs}"
                );
            }
        };
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "a refusal took {took:?}");
        assert_refused_with_nothing(&status, &[]);
    }
    assert_eq!(health(&channel).await, ServingStatus::NotServing);
    assert!(server.alive(), "the server must stay up");
    // The recorder probes the store once a second while not serving; a
    // probe must not call it healthy while a batch like the one that failed
    // still cannot be written.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(health(&channel).await, ServingStatus::NotServing);
    let status = codes
        .derive(DeriveRequest {
            numbers: derive(BATCH),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap_err();
    assert_refused_with_nothing(&status, &[]);
    assert!(server.alive(), "the server must stay up");

    // Lift the limit: with no call coming (a load balancer routes none to
    // a server that is not serving), health says SERVING again within 10 s…
    prlimit_fsize(server.pid, "unlimited");
    let lifted = Instant::now();
    while health(&channel).await != ServingStatus::Serving {
        assert!(
            lifted.elapsed() < Duration::from_secs(10),
            "health still NOT_SERVING 10 s after the limit was lifted, with no call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = lifted.elapsed();
    // …and calls succeed, in the same process.
    let recovered = loop {
        assert!(
            lifted.elapsed() < Duration::from_secs(10),
            "not serving 10 s after the limit was lifted"
        );
        match codes
            .derive(DeriveRequest {
                numbers: derive(BATCH),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
        {
            Ok(response) => {
                acknowledged.codes.extend(codes_of(response.get_ref()));
                break lifted.elapsed();
            }
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(health(&channel).await, ServingStatus::Serving);
    assert!(server.alive());
    let pid = server.pid;
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("audit commit failed"),
        "the failure is logged: {logs}"
    );
    assert!(
        logs.contains("the audit store was not closed") || logs.contains("was rolled back"),
        "the reopen after the failure says how it found the store: {logs}"
    );
    let report = check_store(&setup, &acknowledged);
    eprintln!(
        "fail closed: pid {pid}, limit {limit} bytes, {accepted_under_limit} calls fit under it, \
         healthy {healthy:?} and serving {recovered:?} after lifting; {} records, {} acknowledged codes all recorded",
        report.records,
        acknowledged.codes.len()
    );
}

/// UNAVAILABLE, saying the audit trail cannot be written, with no result:
/// none of `codes` in the message, the details or the metadata.
fn assert_refused_with_nothing(status: &tonic::Status, codes: &[String]) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("audit trail cannot be written"),
        "{status:?}"
    );
    let details = String::from_utf8_lossy(status.details()).into_owned();
    let metadata = format!("{:?}", status.metadata());
    for code in codes {
        for text in [status.message(), &details, &metadata] {
            assert!(
                !text.contains(code.as_str()),
                "a refused call leaked a code"
            );
        }
    }
}

// ── 2. crash loop ───────────────────────────────────────────────────────

/// A small seeded generator (xorshift64*), so a failing run can be repeated
/// with `FUGO_CRASH_SEED`.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|text| {
        text.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// Items per streamed batch, and batches a stream offers at most per
/// server life (far more than fit in the 500 ms before the kill).
const STREAM_BATCH: u64 = 200;
const STREAM_BATCHES: u64 = 2_000;
/// Longer than the recorder's checkpoint interval (1 s).
const CHECKPOINT_WAIT: Duration = Duration::from_millis(1_300);

/// Streams derive batches of fresh numbers until the server dies; returns
/// the codes of every batch whose response arrived. `answering` hears of
/// the first response.
async fn derive_until_killed(
    channel: Channel,
    first: u64,
    answering: tokio::sync::oneshot::Sender<()>,
) -> Vec<String> {
    let requests = (0..STREAM_BATCHES).map(move |batch| DeriveRequest {
        numbers: numbers(first + batch * STREAM_BATCH, STREAM_BATCH),
        on_behalf_of: String::new(),
        epoch: 0,
    });
    let mut client = CodesClient::new(channel);
    let mut acknowledged = Vec::new();
    let Ok(response) = client.derive_stream(tokio_stream::iter(requests)).await else {
        return acknowledged;
    };
    let mut responses = response.into_inner();
    let mut answering = Some(answering);
    while let Ok(Some(response)) = responses.message().await {
        acknowledged.extend(codes_of(&response));
        if let Some(answering) = answering.take() {
            let _ = answering.send(());
        }
    }
    acknowledged
}

/// Streams seal batches of `codes` (the caller's own) to the provider until
/// the server dies; returns (serial, code) of every sealed item answered.
async fn seal_until_killed(channel: Channel, codes: Vec<String>) -> Vec<([u8; 16], String)> {
    let batches: Vec<Vec<String>> = codes
        .chunks(STREAM_BATCH as usize)
        .map(<[String]>::to_vec)
        .collect();
    let requests = batches.clone().into_iter().map(|codes| SealRequest {
        provider: PROVIDER.to_owned(),
        affair: AFFAIR.to_owned(),
        items: vec!["local-tax".to_owned()],
        non_disclosure_until: 0,
        codes,
        on_behalf_of: String::new(),
    });
    let mut client = CodesClient::new(channel);
    let mut acknowledged = Vec::new();
    let Ok(response) = client.seal_stream(tokio_stream::iter(requests)).await else {
        return acknowledged;
    };
    let mut responses = response.into_inner();
    let mut sent = batches.into_iter();
    while let Ok(Some(response)) = responses.message().await {
        let codes = sent.next().expect("one response per request");
        assert_eq!(response.results.len(), codes.len());
        for (result, code) in response.results.iter().zip(codes) {
            match &result.result {
                Some(seal_result::Result::Sealed(sealed)) => {
                    let serial = sealed.serial.as_slice().try_into().unwrap();
                    acknowledged.push((serial, code));
                }
                other => panic!("a seal of an own code failed: {other:?}"),
            }
        }
    }
    acknowledged
}

/// D91, D92. `FUGO_CRASH_KILLS` (default 20) kills; `FUGO_CRASH_SEED` repeats
/// a run's random delays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_at_random_loses_no_acknowledged_record_and_keeps_the_log_intact() {
    let kills = env_number("FUGO_CRASH_KILLS").unwrap_or(20);
    let seed = env_number("FUGO_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1
    });
    eprintln!("crash loop: {kills} kills, FUGO_CRASH_SEED={seed}");
    let mut random = Random(seed);
    let started = Instant::now();
    let setup = Setup::new();
    let mut acknowledged = Acknowledged::default();
    // Codes to seal: derived (and acknowledged) before the first kill.
    let mut own_codes = {
        let server = setup.start();
        let channel = setup.client(&server).await;
        let response = CodesClient::new(channel)
            .derive(DeriveRequest {
                numbers: numbers(0, 2_000),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
            .unwrap();
        server.kill();
        codes_of(response.get_ref())
    };
    acknowledged.codes.extend(own_codes.iter().cloned());

    let mut answered_before_kill = Vec::new();
    for life in 0..kills {
        let server = setup.start();
        let channel = setup.client(&server).await;
        if life % 4 == 3 {
            // Now and then a checkpoint is signed (≤ 1 s after the start's
            // records) before the stream, so kills also land after one.
            tokio::time::sleep(CHECKPOINT_WAIT).await;
        }
        let first = 1_000_000 + life * STREAM_BATCH * STREAM_BATCHES;
        let (answering, answered) = tokio::sync::oneshot::channel();
        let derive = tokio::spawn(derive_until_killed(channel.clone(), first, answering));
        let seal = tokio::spawn(seal_until_killed(channel, own_codes.clone()));
        // Three lives in four are killed at random while the streams are
        // answered: from the derive stream's first answer, which a start
        // with records of the last life to index takes a few hundred ms to
        // give in a debug build (a delay from the start alone left a
        // changing share of lives, often near half, with nothing answered).
        // Every fourth is killed at random from its start, start-up
        // included.
        let delay = if life % 4 == 1 {
            random.between(50, 500)
        } else {
            tokio::time::timeout(Duration::from_secs(10), answered)
                .await
                .expect("the derive stream answers within 10 s of the start")
                .expect("the derive stream answers");
            random.between(0, 450)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        let derived = tokio::time::timeout(Duration::from_secs(10), derive)
            .await
            .expect("the client sees the kill")
            .unwrap();
        let sealed = tokio::time::timeout(Duration::from_secs(10), seal)
            .await
            .expect("the client sees the kill")
            .unwrap();
        answered_before_kill.push((delay, derived.len(), sealed.len()));
        // Later lives seal codes of this one too.
        own_codes.extend(derived.iter().take(400).cloned());
        acknowledged.codes.extend(derived);
        acknowledged.serials.extend(sealed);
    }

    // One last life: the store opens, the records of the killed lives are
    // signed soon after the start, the server serves and stops cleanly.
    let size_before = {
        let store = RedbStore::open(setup.store_path()).unwrap();
        // A killed server never closed the file, and the open says so (D202).
        assert_ne!(store.recovery(), fugo_log::store::Recovery::Clean);
        store.size()
    };
    let server = setup.start();
    let channel = setup.client(&server).await;
    let restarted = Instant::now();
    loop {
        let note = AuditClient::new(channel.clone())
            .get_checkpoint(GetCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .checkpoint;
        if !note.is_empty() && setup.verifier().open(&note).unwrap().size >= size_before {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "the records of before the kill are not signed 5 s after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = CodesClient::new(channel)
        .derive(DeriveRequest {
            numbers: numbers(500_000, 10),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    acknowledged.codes.extend(codes_of(response.get_ref()));
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");

    let lives_with_answers = answered_before_kill
        .iter()
        .filter(|(_, derived, sealed)| derived + sealed > 0)
        .count();
    let report = check_store(&setup, &acknowledged);
    audit_verify(&setup);
    eprintln!(
        "crash loop: {kills} SIGKILLs (seed {seed}), {lives_with_answers} lives answered items before \
         their kill; {} acknowledged derives and {} acknowledged seals all recorded; \
         {} records, root recomputed, {} checkpoints verified; {:.1} s",
        acknowledged.codes.len(),
        acknowledged.serials.len(),
        report.records,
        report.checkpoints,
        started.elapsed().as_secs_f64()
    );
    // Three lives in four waited for an answer before their kill (or the
    // test failed there); seals must have been answered too, or their half
    // of the check shows nothing.
    assert!(
        !acknowledged.serials.is_empty(),
        "no seal was answered before a kill: {answered_before_kill:?}"
    );
}

/// Runs `fugo audit verify` on the store: it must recompute the whole log
/// and find every record and checkpoint intact.
fn audit_verify(setup: &Setup) {
    let data = setup.dir.path().join("data");
    let output = Command::new(FUGO)
        .args(["audit", "verify", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fugo audit verify failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
}

// ── 3. fsync before the answer, under strace ────────────────────────────

/// One acknowledged call, as the client saw it: its request id (the
/// response's `x-request-id`, which the store keeps as the records' batch
/// id) and when it was sent and answered (unix seconds, the clock strace's
/// `-ttt` uses).
#[derive(Clone, Debug)]
struct Call {
    id: String,
    sent: f64,
    answered: f64,
}

/// One traced system call that finished (`strace -f -yy -ttt` output,
/// `<unfinished ...>` / `<... resumed>` pairs joined).
#[derive(Clone, Debug)]
struct Syscall {
    /// The thread that made it.
    thread: String,
    name: String,
    /// The fd's path as `-yy` prints it (`/…/audit.redb`, `TCP:[a->b]`).
    path: String,
    /// Line (from 0) where it began and where it returned.
    began: usize,
    returned: usize,
    /// When it began (unix seconds).
    time: f64,
    /// Its return value.
    result: i64,
    /// Its arguments as printed (with the written data).
    arguments: String,
}

const SYNCS: [&str; 2] = ["fsync", "fdatasync"];
const WRITES: [&str; 7] = [
    "write", "pwrite64", "pwritev", "pwritev2", "writev", "sendmsg", "sendto",
];

/// The fd path of the first argument: `3</path>` or `9<TCP:[a->b]>`.
fn fd_path(arguments: &str) -> String {
    let Some(open) = arguments.find('<') else {
        return String::new();
    };
    let rest = &arguments[open + 1..];
    let close = [">, ", ">)", "> <unfinished"]
        .iter()
        .filter_map(|end| rest.find(end))
        .min()
        .unwrap_or(rest.len());
    rest[..close].to_owned()
}

/// The return value at the end of a finished line (`... = 4096`).
fn result_of(line: &str) -> i64 {
    line.rsplit_once(") = ")
        .and_then(|(_, result)| result.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or(-1)
}

/// The syncs and writes of a trace, in the order they returned.
fn syscalls(trace: &str) -> Vec<Syscall> {
    let mut pending: HashMap<&str, Syscall> = HashMap::new();
    let mut done = Vec::new();
    for (index, line) in trace.lines().enumerate() {
        // `PID TIME CALL`; strace pads the pid to a width, so a short pid is
        // followed by more than one space.
        let Some((tid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(time) = time.parse::<f64>() else {
            continue;
        };
        if rest.starts_with("<... ") {
            if let Some(mut call) = pending.remove(tid) {
                call.returned = index;
                call.result = result_of(rest);
                done.push(call);
            }
            continue;
        }
        let Some((name, arguments)) = rest.split_once('(') else {
            continue;
        };
        if !SYNCS.contains(&name) && !WRITES.contains(&name) {
            continue;
        }
        let mut call = Syscall {
            thread: tid.to_owned(),
            name: name.to_owned(),
            path: fd_path(arguments),
            began: index,
            returned: index,
            time,
            result: -1,
            arguments: arguments.to_owned(),
        };
        if rest.ends_with("<unfinished ...>") {
            pending.insert(tid, call);
        } else {
            call.result = result_of(rest);
            done.push(call);
        }
    }
    done
}

/// Checks that for every call, the store write holding its record (the
/// last write to the store whose data contains the call's id) is followed
/// by a completed fsync/fdatasync of the store, on the same thread (the
/// recorder's: the sync that ends the commit — redb writes every page of a
/// commit, then syncs once), that returns before the first response bytes
/// go to the client's socket, and that no response went out before the
/// record was written. `store` is the store file's
/// path; `client` the prefix of the client connection's fd path
/// (`TCP:[127.0.0.1:PORT->`). Returns one line per call, or what failed.
fn check_fsync_before_answer(
    trace: &str,
    store: &str,
    client: &str,
    calls: &[Call],
) -> Result<Vec<String>, String> {
    let all = syscalls(trace);
    let is_store_write =
        |c: &Syscall| WRITES.contains(&c.name.as_str()) && c.path == store && c.result > 0;
    let is_store_sync =
        |c: &Syscall| SYNCS.contains(&c.name.as_str()) && c.path == store && c.result == 0;
    let is_client_write = |c: &Syscall| {
        WRITES.contains(&c.name.as_str()) && c.path.starts_with(client) && c.result > 0
    };
    let mut report = Vec::new();
    for call in calls {
        let window = |c: &&Syscall| c.time >= call.sent && c.time <= call.answered;
        let record = all
            .iter()
            .filter(window)
            .filter(|c| is_store_write(c) && c.arguments.contains(&call.id))
            .max_by_key(|c| c.returned)
            .ok_or_else(|| {
                format!(
                    "call {}: no write of its record to the store before its answer",
                    call.id
                )
            })?;
        // Control frames (window updates, pings) are small; a response is not.
        if let Some(early) = all
            .iter()
            .filter(window)
            .find(|c| is_client_write(c) && c.began < record.returned && c.result >= 100)
        {
            return Err(format!(
                "call {}: {} bytes went to the client (line {}) before its record was written (line {})",
                call.id,
                early.result,
                early.began + 1,
                record.returned + 1
            ));
        }
        let response = all
            .iter()
            .filter(window)
            .filter(|c| is_client_write(c) && c.began > record.returned)
            .min_by_key(|c| c.began)
            .ok_or_else(|| {
                format!(
                    "call {}: no response bytes to the client after its record (line {})",
                    call.id,
                    record.returned + 1
                )
            })?;
        let sync = all
            .iter()
            .filter(|c| is_store_sync(c) && c.thread == record.thread && c.began > record.returned)
            .min_by_key(|c| c.returned)
            .filter(|c| c.returned < response.began)
            .ok_or_else(|| {
                format!(
                    "call {}: no fsync/fdatasync of the store returned between its record's write \
                     (line {}) and its response's write (line {})",
                    call.id,
                    record.returned + 1,
                    response.began + 1
                )
            })?;
        report.push(format!(
            "call {}: record {}() line {} at {:.6}; {}() returned line {}; response {}() of {} bytes line {} at {:.6}",
            call.id,
            record.name,
            record.returned + 1,
            record.time,
            sync.name,
            sync.returned + 1,
            response.name,
            response.result,
            response.began + 1,
            response.time,
        ));
    }
    Ok(report)
}

/// The trace's lines without written data (for a failure message).
fn excerpt(trace: &str) -> String {
    trace
        .lines()
        .enumerate()
        .map(|(index, line)| {
            let cut = line.find(", \"").map_or(line.len(), |at| at.min(160));
            format!("{:>5} {}", index + 1, &line[..cut.min(line.len())])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `trace` without the syncs of the store (their `<... resumed>` lines
/// too): what a store without fsync would show.
fn without_store_syncs(trace: &str, store: &str) -> String {
    let mut unfinished = HashSet::new();
    let mut kept = Vec::new();
    for line in trace.lines() {
        let tid = line.split_whitespace().next().unwrap_or("");
        let is_sync = SYNCS
            .iter()
            .any(|name| line.contains(&format!(" {name}(")) && line.contains(store));
        if is_sync {
            if line.ends_with("<unfinished ...>") {
                unfinished.insert(tid.to_owned());
            }
            continue;
        }
        if line.contains("<... f") && line.contains("sync resumed>") && unfinished.remove(tid) {
            continue;
        }
        kept.push(line);
    }
    kept.join("\n")
}

/// D93.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_call_is_fsynced_before_its_response_is_written() {
    let setup = Setup::new();
    let trace_path = setup.dir.path().join("strace.txt");
    let server = setup.start_traced(&trace_path);
    let channel = setup.client(&server).await;
    let mut codes = CodesClient::new(channel);
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // The connection's own start (HTTP/2 settings, window updates) happens
    // on its first call; the calls checked come after it.
    codes
        .derive(DeriveRequest {
            numbers: numbers(1_000, 1),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    let mut calls = Vec::new();
    for call in 0..5 {
        let sent = now();
        let response = codes
            .derive(DeriveRequest {
                numbers: numbers(call * 10, 10),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
            .unwrap();
        let answered = now();
        assert_eq!(codes_of(response.get_ref()).len(), 10);
        let id = response
            .metadata()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        calls.push(Call { id, sent, answered });
    }
    let port = server.port();
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    let trace = fs::read_to_string(&trace_path).unwrap();
    let store = setup.store_path().display().to_string();
    let client = format!("TCP:[127.0.0.1:{port}->");

    let report = check_fsync_before_answer(&trace, &store, &client, &calls)
        .unwrap_or_else(|error| panic!("{error}\ntrace:\n{}", excerpt(&trace)));
    for line in &report {
        eprintln!("{line}");
    }
    assert_eq!(report.len(), calls.len());

    // The same trace with the store's syncs taken out fails: the check
    // can tell a store that does not fsync.
    let unsynced = without_store_syncs(&trace, &store);
    let error = check_fsync_before_answer(&unsynced, &store, &client, &calls).unwrap_err();
    eprintln!("without the store's fsyncs: {error}");
    assert!(error.contains("no fsync/fdatasync of the store"), "{error}");
}

/// A synthesized trace of one call: the record written (in two pieces on
/// the audit thread), the store fdatasync'd, the response written from
/// another thread; plus unrelated writes (logs, another file, a window
/// update).
const STORE: &str = "/data/audit.redb";
const CLIENT: &str = "TCP:[127.0.0.1:7443->";

fn synthesized(sync: &str) -> String {
    let lines = [
        r#"100 10.000100 write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, "\27\3\3\0\36"..., 39) = 39"#,
        r#"101 10.000200 pwrite64(5</data/audit.redb>, "\1\0\0\0groups"..., 4096, 8192) = 4096"#,
        // strace pads short pids: two spaces after this one.
        r#"101  10.000300 pwrite64(5</data/audit.redb>, "\0\0batch 0123456789abcdef\0"..., 4096, 12288) = 4096"#,
        r#"102 10.000350 write(2<pipe:[77]>, "INFO batch done 0123456789abcdef", 32) = 32"#,
        sync,
        r#"100 10.000900 writev(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, [{iov_base="\27\3\3\2\0"..., iov_len=600}], 1) = 600"#,
        r#"101 10.001000 pwrite64(5</data/audit.redb>, "\0\0checkpoint"..., 4096, 16384) = 4096"#,
    ];
    lines.join("\n")
}

const SYNCED: &str = r#"101 10.000400 fdatasync(5</data/audit.redb>) = 0"#;

fn one_call() -> Vec<Call> {
    vec![Call {
        id: "0123456789abcdef".to_owned(),
        sent: 10.0,
        answered: 10.002,
    }]
}

/// D94: the checker passes a trace with the fsync in place…
#[test]
fn the_fsync_checker_passes_a_synced_trace() {
    let report =
        check_fsync_before_answer(&synthesized(SYNCED), STORE, CLIENT, &one_call()).unwrap();
    assert_eq!(
        report,
        [
            "call 0123456789abcdef: record pwrite64() line 3 at 10.000300; fdatasync() returned \
          line 5; response writev() of 600 bytes line 6 at 10.000900"
        ]
    );
}

/// …and fails one without it, or with it too late, or on another file.
#[test]
fn the_fsync_checker_fails_traces_without_a_timely_fsync_of_the_store() {
    let calls = one_call();
    let no_sync = without_store_syncs(&synthesized(SYNCED), STORE);
    assert!(!no_sync.contains("fdatasync"));
    let error = check_fsync_before_answer(&no_sync, STORE, CLIENT, &calls).unwrap_err();
    assert!(error.contains("no fsync/fdatasync of the store"), "{error}");

    // A sync of another file does not count.
    let other = synthesized(r#"101 10.000400 fdatasync(6</data/other.db>) = 0"#);
    assert!(check_fsync_before_answer(&other, STORE, CLIENT, &calls).is_err());

    // A sync by another thread is not the commit's.
    let elsewhere = synthesized(r#"102 10.000400 fdatasync(5</data/audit.redb>) = 0"#);
    assert!(check_fsync_before_answer(&elsewhere, STORE, CLIENT, &calls).is_err());

    // A failed sync does not count.
    let failed = synthesized(
        r#"101 10.000400 fdatasync(5</data/audit.redb>) = -1 EIO (Input/output error)"#,
    );
    assert!(check_fsync_before_answer(&failed, STORE, CLIENT, &calls).is_err());

    // A sync still running when the response is written does not count.
    let late = synthesized(SYNCED).replace(
        SYNCED,
        r#"101 10.000400 fdatasync(5</data/audit.redb> <unfinished ...>"#,
    ) + "\n101 10.000950 <... fdatasync resumed>) = 0";
    let error = check_fsync_before_answer(&late, STORE, CLIENT, &calls).unwrap_err();
    assert!(error.contains("no fsync/fdatasync of the store"), "{error}");

    // The response before the record: caught even with the sync in place.
    let early = synthesized(SYNCED).replace(
        r#"write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, "\27\3\3\0\36"..., 39) = 39"#,
        r#"write(9<TCP:[127.0.0.1:7443->127.0.0.1:50000]>, "\27\3\3\2\0"..., 600) = 600"#,
    );
    let error = check_fsync_before_answer(&early, STORE, CLIENT, &calls).unwrap_err();
    assert!(error.contains("before its record was written"), "{error}");

    // No record of the call at all.
    let other_call = [Call {
        id: "fedcba9876543210".to_owned(),
        ..calls[0].clone()
    }];
    let error =
        check_fsync_before_answer(&synthesized(SYNCED), STORE, CLIENT, &other_call).unwrap_err();
    assert!(error.contains("no write of its record"), "{error}");
}
