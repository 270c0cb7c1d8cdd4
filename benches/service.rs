//! The gRPC service over loopback with mutual TLS, each figure next to a
//! baseline of the same shape measured in the same run: the same
//! `fugo.v1.Codes` service on fugo's own transport (`service::edge`: accept
//! loop, TLS acceptor, connection type, HTTP/2 settings) that does none of
//! fugo's work (it echoes each item back; D70). Unary calls are measured
//! twice: throughput with as many calls in flight as one connection may
//! hold (the default `max_concurrent_streams`, 32), and latency (p50/p99) one call at a
//! time with 1, 10 and 1,000 items.
//!
//! Baseline and fugo take turns, in [`ROUNDS`] slices of each measurement
//! (alternating which goes first), so a slow spell of the machine falls on
//! both and the ratio holds.
//!
//! The audit trail's cost is measured the same way: streaming derive on
//! fugo against the same server with auditing off
//! (`service::start_unaudited_for_benchmarks`, which no configuration
//! reaches), plus the data directory's fsync'd write speed, since every
//! answer waits for an fsync.
//!
//! Full form (README figures): `cargo bench --bench service` — 10 million
//! items per streaming run. Short form (CI): `FUGO_BENCH_ITEMS=200000
//! FUGO_BENCH_CALLS=5000 cargo bench --bench service`. `FUGO_BENCH_ONLY=audit`
//! (a comma-separated list of `unary`, `latency`, `stream`, `audit`,
//! `stages`, `chain`) runs only those measurements.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // bench code: a panic is a failure report

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fugo::certs::{DevCa, Pem};
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::codes_server::{Codes, CodesServer};
use fugo::proto::fugo::v1::*;
use fugo::service::{self, ServeConfig, edge};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status, Streaming};

/// Quotas at their maximum: the benchmark measures the service, not the
/// limits (their cost, one lock per batch, is measured with it).
const POLICY: &str = r#"
[quota]
derive = { per_second = 100000000, burst = 1300000000, per_day = 1300000000 }
seal = { per_second = 100000000, burst = 1300000000, per_day = 1300000000 }
redeem = { per_second = 100000000, burst = 1300000000, per_day = 1300000000 }
reidentify = { per_second = 100000000, burst = 1300000000, per_day = 1300000000 }

[[agency]]
id = "a"
name = "A"
certificates = ["a"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "b"
name = "B"
certificates = ["b"]
capabilities = ["derive"]
epoch = 1

[[affair]]
id = "bench"
name = "bench"
legal_basis = "bench"

[[rule]]
requester = "a"
affair = "bench"
provider = "b"
items = ["x"]
token_lifetime_seconds = 3600
"#;

const BATCH: usize = 1000;

/// Each measurement is split into this many slices per server, baseline
/// and fugo taking turns.
const ROUNDS: usize = 4;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn number(i: u64) -> String {
    let digits = mynumber::with_check_digit(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20);
    String::from_utf8_lossy(&digits).into_owned()
}

/// The baseline: the same service shape and message sizes, no crypto. It
/// answers each number with a 29-character string (a code's size) and a
/// 64-character policy version, as fugo does.
struct Echo;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A code's length, and as many zeros to pad with.
const ZEROS: &str = "00000000000000000000000000000";

fn echo_derive(request: DeriveRequest) -> DeriveResponse {
    DeriveResponse {
        results: request
            .numbers
            .into_iter()
            .map(|n| DeriveResult {
                result: Some(derive_result::Result::Code(padded(&n))),
            })
            .collect(),
        policy_version: "0".repeat(64),
    }
}

/// `number` left-padded with zeros to a code's 29 characters: one
/// allocation and two copies. (With `format!("{n:0>29}")` the echo streamed
/// 5.2–5.4 M items/s against 6.4–6.8 M with this, slower than fugo; D70.)
fn padded(number: &str) -> String {
    let mut code = String::with_capacity(ZEROS.len().max(number.len()));
    code.push_str(&ZEROS[number.len().min(ZEROS.len())..]);
    code.push_str(number);
    code
}

#[tonic::async_trait]
impl Codes for Echo {
    async fn derive(
        &self,
        request: Request<DeriveRequest>,
    ) -> Result<Response<DeriveResponse>, Status> {
        Ok(Response::new(echo_derive(request.into_inner())))
    }
    type DeriveStreamStream = BoxStream<DeriveResponse>;
    async fn derive_stream(
        &self,
        request: Request<Streaming<DeriveRequest>>,
    ) -> Result<Response<Self::DeriveStreamStream>, Status> {
        let stream = request.into_inner().map(|r| r.map(echo_derive));
        Ok(Response::new(Box::pin(stream)))
    }
    async fn seal(&self, _: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type SealStreamStream = BoxStream<SealResponse>;
    async fn seal_stream(
        &self,
        _: Request<Streaming<SealRequest>>,
    ) -> Result<Response<Self::SealStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn redeem(&self, _: Request<RedeemRequest>) -> Result<Response<RedeemResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type RedeemStreamStream = BoxStream<RedeemResponse>;
    async fn redeem_stream(
        &self,
        _: Request<Streaming<RedeemRequest>>,
    ) -> Result<Response<Self::RedeemStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn reidentify(
        &self,
        _: Request<ReidentifyRequest>,
    ) -> Result<Response<ReidentifyResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type ReidentifyStreamStream = BoxStream<ReidentifyResponse>;
    async fn reidentify_stream(
        &self,
        _: Request<Streaming<ReidentifyRequest>>,
    ) -> Result<Response<Self::ReidentifyStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn migrate(
        &self,
        _: Request<fugo::proto::fugo::v1::MigrateRequest>,
    ) -> Result<Response<fugo::proto::fugo::v1::MigrateResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type MigrateStreamStream = BoxStream<fugo::proto::fugo::v1::MigrateResponse>;
    async fn migrate_stream(
        &self,
        _: Request<Streaming<fugo::proto::fugo::v1::MigrateRequest>>,
    ) -> Result<Response<Self::MigrateStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    async fn rekey(
        &self,
        _: Request<fugo::proto::fugo::v1::RekeyRequest>,
    ) -> Result<Response<fugo::proto::fugo::v1::RekeyResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }
    type RekeyStreamStream = BoxStream<fugo::proto::fugo::v1::RekeyResponse>;
    async fn rekey_stream(
        &self,
        _: Request<Streaming<fugo::proto::fugo::v1::RekeyRequest>>,
    ) -> Result<Response<Self::RekeyStreamStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

struct Pki {
    ca: DevCa,
    server: Pem,
}

/// The echo server on fugo's own transport, built by the calls
/// `service::start` makes ([`edge::tls_acceptor`], [`edge::incoming`],
/// [`edge::server`]) from the same limits: the same accept loop, connection
/// cap, TLS acceptor, `Connected` type, idle timeout and HTTP/2 settings,
/// with the echo in place of fugo's services (D70).
async fn start_echo(pki: &Pki, limits: &service::Limits) -> SocketAddr {
    let tls = edge::tls_acceptor(
        (Path::new("bench CA"), pki.ca.cert_pem().as_bytes()),
        (
            Path::new("bench server certificate"),
            pki.server.cert.as_bytes(),
        ),
        (Path::new("bench server key"), pki.server.key.as_bytes()),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = CodesServer::new(Echo).max_decoding_message_size(limits.max_message_bytes);
    let router = edge::server(limits).add_service(echo);
    tokio::spawn(router.serve_with_incoming(edge::incoming(listener, tls, limits)));
    addr
}

async fn client(pki: &Pki, addr: SocketAddr, identity: &str) -> CodesClient<Channel> {
    let pem = pki.ca.client(identity).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    CodesClient::new(channel)
}

/// The latencies of `calls` unary 1-item derives with `in_flight`
/// concurrent callers on one connection, and the seconds they took.
async fn unary(
    client: CodesClient<Channel>,
    calls: usize,
    in_flight: usize,
) -> (Vec<Duration>, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(calls / in_flight);
            for i in 0..calls / in_flight {
                let request = DeriveRequest {
                    numbers: vec![number((worker * calls + i) as u64)],
                    on_behalf_of: String::new(),
                    epoch: 0,
                };
                let t = Instant::now();
                client.derive(request).await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    (latencies, started.elapsed().as_secs_f64())
}

/// The p50 and p99 of `latencies`.
fn percentiles(mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

/// The latencies of `calls` unary derives of `items` numbers, one call at
/// a time.
async fn latency(mut client: CodesClient<Channel>, items: usize, calls: usize) -> Vec<Duration> {
    let request = DeriveRequest {
        numbers: (0..items).map(|i| number(i as u64)).collect(),
        on_behalf_of: String::new(),
        epoch: 0,
    };
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        client.derive(request.clone()).await.unwrap();
        latencies.push(t.elapsed());
    }
    latencies
}

fn derive_batches(items: usize) -> impl Stream<Item = DeriveRequest> {
    tokio_stream::iter((0..items.div_ceil(BATCH)).map(move |b| {
        DeriveRequest {
            numbers: (b * BATCH..((b + 1) * BATCH).min(items))
                .map(|i| number(i as u64))
                .collect(),
            on_behalf_of: String::new(),
            epoch: 0,
        }
    }))
}

/// Seconds of a streaming derive of `items` numbers.
async fn stream_derive(mut client: CodesClient<Channel>, items: usize) -> f64 {
    let started = Instant::now();
    let mut responses = client
        .derive_stream(derive_batches(items))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(response) = responses.message().await.unwrap() {
        count += response.results.len();
    }
    assert_eq!(count, items);
    started.elapsed().as_secs_f64()
}

/// Baseline and fugo in turns: `measure(baseline)` and `measure(fugo)`
/// [`ROUNDS`] times each, alternating which goes first; the results of
/// each server in a list.
async fn in_turns<T, F, Fut>(
    baseline: SocketAddr,
    fugo: SocketAddr,
    mut measure: F,
) -> (Vec<T>, Vec<T>)
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let (mut base, mut ours) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            base.push(measure(baseline).await);
            ours.push(measure(fugo).await);
        } else {
            ours.push(measure(fugo).await);
            base.push(measure(baseline).await);
        }
    }
    (base, ours)
}

/// The codes of streaming derive, kept (for the seal and redeem stages).
async fn derived_codes(mut client: CodesClient<Channel>, items: usize) -> Vec<Vec<String>> {
    let mut responses = client
        .derive_stream(derive_batches(items))
        .await
        .unwrap()
        .into_inner();
    let mut batches = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        batches.push(
            response
                .results
                .into_iter()
                .map(|r| match r.result.unwrap() {
                    derive_result::Result::Code(c) => c,
                    derive_result::Result::Error(e) => panic!("{e:?}"),
                })
                .collect(),
        );
    }
    batches
}

/// Items/s of streaming seal alone, and the tokens it made.
async fn stream_seal(
    mut client: CodesClient<Channel>,
    codes: Vec<Vec<String>>,
) -> (f64, Vec<Vec<Vec<u8>>>) {
    let items: usize = codes.iter().map(Vec::len).sum();
    let requests = codes.into_iter().map(|codes| SealRequest {
        provider: "b".into(),
        affair: "bench".into(),
        items: vec!["x".into()],
        non_disclosure_until: 0,
        codes,
        on_behalf_of: String::new(),
    });
    let started = Instant::now();
    let mut responses = client
        .seal_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut tokens = Vec::new();
    while let Some(response) = responses.message().await.unwrap() {
        tokens.push(
            response
                .results
                .into_iter()
                .map(|r| match r.result.unwrap() {
                    seal_result::Result::Sealed(s) => s.token,
                    seal_result::Result::Error(e) => panic!("{e:?}"),
                })
                .collect(),
        );
    }
    (items as f64 / started.elapsed().as_secs_f64(), tokens)
}

/// Items/s of streaming redeem alone.
async fn stream_redeem(mut client: CodesClient<Channel>, tokens: Vec<Vec<Vec<u8>>>) -> f64 {
    let items: usize = tokens.iter().map(Vec::len).sum();
    let started = Instant::now();
    let requests = tokens.into_iter().map(|tokens| RedeemRequest {
        epoch: 0,
        tokens,
        on_behalf_of: String::new(),
    });
    let mut responses = client
        .redeem_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(response) = responses.message().await.unwrap() {
        count += response.results.len();
    }
    assert_eq!(count, items);
    items as f64 / started.elapsed().as_secs_f64()
}

/// derive (A) → seal (A→B) → redeem (B), chained stream to stream; returns
/// the seconds of the whole run. Each stream has its own connection: streams
/// that wait on each other must not share an HTTP/2 connection window.
async fn full_chain(
    mut a: CodesClient<Channel>,
    mut a2: CodesClient<Channel>,
    mut b: CodesClient<Channel>,
    items: usize,
) -> f64 {
    let started = Instant::now();
    let (seal_tx, seal_rx) = mpsc::channel::<SealRequest>(8);
    let (redeem_tx, redeem_rx) = mpsc::channel::<RedeemRequest>(8);
    let mut derived = a
        .derive_stream(derive_batches(items))
        .await
        .unwrap()
        .into_inner();
    let sealer = tokio::spawn(async move {
        let mut sealed = a2
            .seal_stream(ReceiverStream::new(seal_rx))
            .await
            .unwrap()
            .into_inner();
        while let Some(response) = sealed.message().await.unwrap() {
            let tokens = response
                .results
                .into_iter()
                .map(|r| match r.result.unwrap() {
                    seal_result::Result::Sealed(s) => s.token,
                    seal_result::Result::Error(e) => panic!("{e:?}"),
                })
                .collect();
            redeem_tx
                .send(RedeemRequest {
                    epoch: 0,
                    tokens,
                    on_behalf_of: String::new(),
                })
                .await
                .unwrap();
        }
    });
    let redeemer = tokio::spawn(async move {
        let mut redeemed = b
            .redeem_stream(ReceiverStream::new(redeem_rx))
            .await
            .unwrap()
            .into_inner();
        let mut count = 0;
        while let Some(response) = redeemed.message().await.unwrap() {
            count += response
                .results
                .iter()
                .filter(|r| matches!(r.result, Some(redeem_result::Result::Redeemed(_))))
                .count();
        }
        count
    });
    while let Some(response) = derived.message().await.unwrap() {
        let codes = response
            .results
            .into_iter()
            .map(|r| match r.result.unwrap() {
                derive_result::Result::Code(c) => c,
                derive_result::Result::Error(e) => panic!("{e:?}"),
            })
            .collect();
        seal_tx
            .send(SealRequest {
                provider: "b".into(),
                affair: "bench".into(),
                items: vec!["x".into()],
                non_disclosure_until: 0,
                codes,
                on_behalf_of: String::new(),
            })
            .await
            .unwrap();
    }
    drop(seal_tx);
    sealer.await.unwrap();
    assert_eq!(redeemer.await.unwrap(), items);
    started.elapsed().as_secs_f64()
}

/// The data directory's durable write speed: 64 MiB in 1 MiB writes, each
/// followed by fdatasync (MB/s), and the median of 200 small durable
/// writes (a commit's floor).
fn fsync_bandwidth(dir: &std::path::Path) -> (f64, Duration) {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    for _ in 0..64 {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
    }
    let bandwidth = 64.0 * (1 << 20) as f64 / started.elapsed().as_secs_f64() / 1e6;
    let mut small = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&chunk[..4096]).unwrap();
        file.sync_data().unwrap();
        small.push(started.elapsed());
    }
    small.sort();
    drop(file);
    let _ = std::fs::remove_file(&path);
    (bandwidth, small[small.len() / 2])
}

fn main() {
    let items = env_number("FUGO_BENCH_ITEMS", 10_000_000);
    let calls = env_number("FUGO_BENCH_CALLS", 100_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("bench CA").unwrap();
        let server = ca.server().unwrap();
        let pki = Arc::new(Pki { ca, server });
        std::fs::write(dir.path().join("ca.pem"), pki.ca.cert_pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), &pki.server.cert).unwrap();
        std::fs::write(dir.path().join("server.key"), &pki.server.key).unwrap();
        std::fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(&key, MasterKey::from_bytes([9; 32]).to_file_contents().as_bytes()).unwrap();
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_owned(),
            policy: dir.path().join("policy.toml"),
            master_key: fugo::service::MasterKeySource::File(key),
            fingerprint: KeyHierarchy::new(&MasterKey::from_bytes([9; 32])).fingerprint(),
            shutdown_grace: Duration::from_secs(5),
            dev_mode: true,
            client_ca: dir.path().join("ca.pem"),
            server_cert: dir.path().join("server.pem"),
            server_key: dir.path().join("server.key"),
            crls: Vec::new(),
            limits: service::Limits::default(),
            audit: service::AuditConfig::default(),
            metrics: None,
            admin: None,
            keyring: Vec::new(),
        };
        let limits = config.limits.clone();
        let mut bare_config = config.clone();
        bare_config.data_dir = dir.path().join("unaudited");
        let fugo = service::start(config, &mut std::io::sink()).await.unwrap();
        // The same server with the audit trail off: what auditing costs.
        let bare = service::start_unaudited_for_benchmarks(bare_config, &mut std::io::sink())
            .await
            .unwrap();
        let echo = start_echo(&pki, &limits).await;

        println!("gRPC over loopback with mutual TLS, server and client in one process on this machine");
        let only = std::env::var("FUGO_BENCH_ONLY").ok();
        let wants = |section: &str| only.as_deref().is_none_or(|o| o.split(',').any(|s| s == section));
        if wants("unary") {
        // More in flight than the stream limit would only queue in the client.
        let in_flight = limits.max_concurrent_streams as usize;
        let slice = calls / ROUNDS;
        let (base, ours) = in_turns(echo, fugo.addr, |addr| {
            let pki = Arc::clone(&pki);
            async move { unary(client(&pki, addr, "a").await, slice, in_flight).await }
        })
        .await;
        let rate = |samples: &[(Vec<Duration>, f64)]| {
            samples.iter().map(|(l, _)| l.len()).sum::<usize>() as f64
                / samples.iter().map(|(_, s)| s).sum::<f64>()
        };
        let (base_rate, rate) = (rate(&base), rate(&ours));
        let (base_p50, base_p99) = percentiles(base.into_iter().flat_map(|(l, _)| l).collect());
        let (p50, p99) = percentiles(ours.into_iter().flat_map(|(l, _)| l).collect());
        println!("unary derive, 1 item, {in_flight} in flight, {calls} calls:");
        println!("  baseline (echo)  {base_rate:>10.0} calls/s   p50 {base_p50:>9.2?}   p99 {base_p99:>9.2?}");
        println!("  fugo             {rate:>10.0} calls/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}   = {:.0}% of baseline (issue 6: ≥ 70%, before auditing)", 100.0 * rate / base_rate);

        }
        if wants("latency") {
        println!("unary derive latency, one call at a time:");
        for (items, calls) in [(1, calls / 4), (10, calls / 4), (1000, calls / 40)] {
            let calls = calls.max(20 * ROUNDS);
            let (base, ours) = in_turns(echo, fugo.addr, |addr| {
                let pki = Arc::clone(&pki);
                async move { latency(client(&pki, addr, "a").await, items, calls / ROUNDS).await }
            })
            .await;
            let (base_p50, base_p99) = percentiles(base.concat());
            let (p50, p99) = percentiles(ours.concat());
            println!("  {items:>5} items, {calls} calls: baseline (echo) p50 {base_p50:>9.2?}  p99 {base_p99:>9.2?}   fugo p50 {p50:>9.2?}  p99 {p99:>9.2?}");
        }

        }
        let slice = items.div_ceil(ROUNDS);
        // The echo baseline's streaming rate, if measured: the stages' yardstick.
        let mut echo_rate = None;
        if wants("stream") {
        let (base, ours) = in_turns(echo, fugo.addr, |addr| {
            let pki = Arc::clone(&pki);
            async move { stream_derive(client(&pki, addr, "a").await, slice).await }
        })
        .await;
        let base = (slice * ROUNDS) as f64 / base.iter().sum::<f64>();
        let derive = (slice * ROUNDS) as f64 / ours.iter().sum::<f64>();
        println!("streaming derive, {items} items in batches of {BATCH}:");
        echo_rate = Some(base);
        println!("  baseline (echo)  {:>10.2} M items/s", base / 1e6);
        println!("  fugo             {:>10.2} M items/s   = {:.0}% of baseline (issue 6: ≥ 70%, before auditing)", derive / 1e6, 100.0 * derive / base);

        }
        if wants("audit") {
        let (off, on) = in_turns(bare.addr, fugo.addr, |addr| {
            let pki = Arc::clone(&pki);
            async move { stream_derive(client(&pki, addr, "a").await, slice).await }
        })
        .await;
        let off = (slice * ROUNDS) as f64 / off.iter().sum::<f64>();
        let on = (slice * ROUNDS) as f64 / on.iter().sum::<f64>();
        let store = dir.path().join(fugo::audit::STORE_FILE);
        let store_bytes = std::fs::metadata(&store).map(|m| m.len()).unwrap_or(0);
        let (bandwidth, sync) = fsync_bandwidth(dir.path());
        println!("streaming derive, auditing on vs. off (the same server without the audit trail), {items} items:");
        println!("  auditing off     {:>10.2} M items/s", off / 1e6);
        println!("  auditing on      {:>10.2} M items/s   = {:.0}% of auditing off (target ≥ 50%, goal ≥ 70%)", on / 1e6, 100.0 * on / off);
        println!("  audit store now  {:>10.1} MB for everything this run recorded", store_bytes as f64 / 1e6);
        println!("data directory: fsync'd sequential writes of 1 MiB: {bandwidth:>7.1} MB/s; one 4 KiB write + fdatasync: {sync:>7.2?}");
        }
        bare.stop().await.unwrap();
        if wants("stages") {

        let stage_items = (items / 5).max(BATCH);
        let codes = derived_codes(client(&pki, fugo.addr, "a").await, stage_items).await;
        let (seal_rate, tokens) = stream_seal(client(&pki, fugo.addr, "a").await, codes).await;
        let redeem_rate = stream_redeem(client(&pki, fugo.addr, "b").await, tokens).await;
        println!("streaming seal and redeem alone, {stage_items} items (kept in memory between stages):");
        let of_echo = |rate: f64| echo_rate.map_or(String::new(), |base| format!("   = {:.0}% of the echo baseline", 100.0 * rate / base));
        println!("  seal             {:>10.2} M items/s{}", seal_rate / 1e6, of_echo(seal_rate));
        println!("  redeem           {:>10.2} M items/s{}", redeem_rate / 1e6, of_echo(redeem_rate));

        }
        if wants("chain") {
        let seconds = full_chain(
            client(&pki, fugo.addr, "a").await,
            client(&pki, fugo.addr, "a").await,
            client(&pki, fugo.addr, "b").await,
            items,
        )
        .await;
        println!(
            "derive → seal → redeem, chained streams, {items} items: {seconds:.2} s ({:.2} M items/s end to end; target: 10 M in < 15 s)",
            items as f64 / seconds / 1e6
        );
        }
        fugo.stop().await.unwrap();
    });
}
