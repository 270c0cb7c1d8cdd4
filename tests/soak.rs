//! A bounded soak: mixed valid and invalid traffic from 64 concurrent
//! clients against `fugo serve` running as a child process (real TLS on
//! 127.0.0.1:0), so its resident memory can be read alone.
//!
//! Pass: no call or item answered INTERNAL or UNKNOWN, every status is one
//! docs/PROTOCOL.md lists and the one the request deserves; resident
//! memory (VmRSS) at the end at most 10% above what it was after the
//! warm-up; the valid calls' p99 latency under 50 ms. It prints
//! throughput, latencies, memory and the answers by code.
//!
//! Short form (in `cargo test`, so in `.ci/run`): 8 seconds. Full form, as
//! issue 8 asks: `FUGO_SOAK_SECONDS=60 cargo test --release --test soak --
//! --nocapture`. The p99 bound is asserted only in the full form (60 s or
//! more): the short one runs in the debug build on a 2-core machine shared
//! with the rest of `cargo test` and other work, where p99 measures the
//! machine's load more than fugo (D143); the short form still fails on a
//! p99 of 5 s or more (the issue's bound for any answer: a stall), and
//! allows the store's 16 MiB page cache to fill beyond the 10% (D145).
//!
//! Each client is one connection with one agency's certificate (64 clients,
//! 16 per agency, a stranger certificate among them) and runs a loop: an
//! operation picked at random (about 70% valid: derive, seal, redeem of
//! tokens sealed by other clients, reidentify; 30% invalid: bad check
//! digits, another agency's codes, tampered tokens, a rule that does not
//! exist, a batch over the limit, a capability the agency lacks, a bad
//! field, an unknown identity), then a pause of 0–40 ms (a closed loop with
//! think time, as agency backends call: D143).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fugo::certs::DevCa;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, ItemError, RedeemRequest, ReidentifyRequest, SealRequest, derive_result,
    redeem_result, reidentify_result, seal_result,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 1

[[agency]]
id = "city-osaka"
name = "Osaka"
certificates = ["city-osaka"]
capabilities = ["derive", "reidentify"]
epoch = 1

[[agency]]
id = "moj"
name = "MOJ family registers"
certificates = ["moj"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance benefits"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax"]
token_lifetime_seconds = 3600

[[rule]]
requester = "mhlw"
affair = "health"
provider = "moj"
items = ["family-register"]
token_lifetime_seconds = 3600

[[rule]]
requester = "city-shinjuku"
affair = "health"
provider = "city-osaka"
items = ["local-tax"]
token_lifetime_seconds = 3600

[[rule]]
requester = "city-osaka"
affair = "health"
provider = "mhlw"
items = ["pension"]
token_lifetime_seconds = 3600
"#;

/// Who seals to whom (requester → provider, item), per the policy.
fn sealing(agency: &str) -> Option<(&'static str, &'static str)> {
    match agency {
        "mhlw" => Some(("city-shinjuku", "local-tax")),
        "city-shinjuku" => Some(("city-osaka", "local-tax")),
        "city-osaka" => Some(("mhlw", "pension")),
        _ => None,
    }
}

const AGENCIES: [&str; 4] = ["mhlw", "city-shinjuku", "city-osaka", "moj"];
const CLIENTS: usize = 64;

/// `fugo serve` as a child process.
struct Server {
    process: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Server {
    fn start(dir: &std::path::Path) -> (Self, DevCa) {
        let (config, ca) = common::server_config(dir, POLICY, [9; 32]);
        let file = dir.join("fugo.toml");
        fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
                 master_key = \"master.key\"\nmaster_key_fingerprint = \"{}\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n",
                config.fingerprint
            ),
        )
        .unwrap();
        let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_fugo"))
            .args(["serve", "--config", file.to_str().unwrap()])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("fugo: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        (Server { process, addr }, ca)
    }

    /// Resident memory now (VmRSS), in bytes.
    fn rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn client(server: &Server, ca: &DevCa, identity: &str) -> CodesClient<Channel> {
    let pem = ca.client(identity).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    CodesClient::new(channel)
}

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients saw, merged.
#[derive(Default)]
struct Tally {
    /// Latencies of valid calls answered OK with every item OK.
    valid: Vec<Duration>,
    /// Calls by operation kind and status code name.
    calls: BTreeMap<String, u64>,
    /// Item errors by code name.
    items: BTreeMap<String, u64>,
    /// Answers that were not the documented one for their request.
    wrong: Vec<String>,
}

/// Tokens sealed by one client for another agency to redeem, by addressee.
type Pool = Arc<Mutex<BTreeMap<&'static str, Vec<Vec<u8>>>>>;

/// One client's answers, checked as they come.
struct Seen<'a> {
    tally: &'a mut Tally,
}

impl Seen<'_> {
    /// A call's status: counted, and wrong unless one of `expected`.
    fn call(&mut self, kind: &str, code: Code, expected: &[Code], detail: &str) {
        let name = common::code_name(code as i32);
        *self
            .tally
            .calls
            .entry(format!("{kind} {name}"))
            .or_default() += 1;
        let listed = common::documented_call_codes().contains(&name);
        if code == Code::Internal || code == Code::Unknown || !listed || !expected.contains(&code) {
            self.tally
                .wrong
                .push(format!("{kind}: {name} ({detail}), expected {expected:?}"));
        }
    }

    /// The item errors of an answer: counted, and wrong unless one of `expected`.
    fn items<'e>(
        &mut self,
        kind: &str,
        errors: impl Iterator<Item = &'e ItemError>,
        expected: &[Code],
    ) -> usize {
        let mut failed = 0;
        for error in errors {
            failed += 1;
            let name = common::code_name(error.code);
            *self.tally.items.entry(name.clone()).or_default() += 1;
            let listed = common::documented_item_codes().contains(&name);
            if !listed || !expected.iter().any(|e| *e as i32 == error.code) {
                self.tally.wrong.push(format!(
                    "{kind}: item {} {name} ({}), expected {expected:?}",
                    error.index, error.reason
                ));
            }
        }
        failed
    }
}

fn numbers(rng: &mut Rng, count: usize) -> Vec<String> {
    (0..count)
        .map(|_| common::valid_number(rng.below(100_000_000_000)))
        .collect()
}

/// One client's loop until `until`.
async fn run_client(
    mut codes: CodesClient<Channel>,
    agency: &'static str,
    stranger: bool,
    seed: u64,
    pool: Pool,
    until: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut rng = Rng(seed | 1);
    let mut own: Vec<String> = Vec::new();
    while Instant::now() < until {
        let valid = rng.below(10) < 7;
        let started = Instant::now();
        let mut seen = Seen { tally: &mut tally };
        if stranger {
            let answer = codes
                .derive(DeriveRequest {
                    numbers: numbers(&mut rng, 1),
                    on_behalf_of: String::new(),
                    epoch: 0,
                })
                .await;
            let code = answer.as_ref().err().map_or(Code::Ok, tonic::Status::code);
            seen.call("stranger", code, &[Code::Unauthenticated], "");
        } else {
            let clean = run_one(
                &mut codes, agency, valid, &mut rng, &mut own, &pool, &mut seen,
            )
            .await;
            if valid && clean {
                tally.valid.push(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(41))).await;
    }
    tally
}

/// One operation; whether it was a valid call answered OK throughout.
async fn run_one(
    codes: &mut CodesClient<Channel>,
    agency: &'static str,
    valid: bool,
    rng: &mut Rng,
    own: &mut Vec<String>,
    pool: &Pool,
    seen: &mut Seen<'_>,
) -> bool {
    let size = 1 + rng.below(16) as usize;
    let may_derive = agency != "moj";
    let choice = rng.below(4);
    if !valid {
        return invalid(codes, agency, rng, own, seen, choice).await;
    }
    // Valid: derive until there are codes, then seal, redeem or reidentify.
    if may_derive && (own.len() < 64 || choice == 0) {
        let answer = codes
            .derive(DeriveRequest {
                numbers: numbers(rng, size),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await;
        return match answer {
            Ok(response) => {
                seen.call("derive", Code::Ok, &[Code::Ok], "");
                let response = response.into_inner();
                let errors = response.results.iter().filter_map(|r| match &r.result {
                    Some(derive_result::Result::Error(e)) => Some(e),
                    _ => None,
                });
                let failed = seen.items("derive", errors, &[]);
                for result in response.results {
                    if let Some(derive_result::Result::Code(code)) = result.result
                        && own.len() < 4096
                    {
                        own.push(code);
                    }
                }
                failed == 0
            }
            Err(status) => {
                seen.call("derive", status.code(), &[Code::Ok], status.message());
                false
            }
        };
    }
    match (choice, sealing(agency)) {
        (1, Some((provider, item))) => {
            let start = rng.below(own.len() as u64) as usize;
            let picked: Vec<String> = own.iter().cycle().skip(start).take(size).cloned().collect();
            let answer = codes
                .seal(SealRequest {
                    provider: provider.to_owned(),
                    affair: "health".to_owned(),
                    items: vec![item.to_owned()],
                    non_disclosure_until: 0,
                    codes: picked,
                    on_behalf_of: String::new(),
                })
                .await;
            match answer {
                Ok(response) => {
                    seen.call("seal", Code::Ok, &[Code::Ok], "");
                    let mut tokens = Vec::new();
                    let mut failed = 0;
                    for result in response.into_inner().results {
                        match result.result {
                            Some(seal_result::Result::Sealed(sealed)) => tokens.push(sealed.token),
                            Some(seal_result::Result::Error(e)) => {
                                failed += seen.items("seal", std::iter::once(&e), &[]);
                            }
                            None => failed += 1,
                        }
                    }
                    let mut pool = pool.lock().unwrap();
                    let waiting = pool.entry(provider).or_default();
                    if waiting.len() < 2048 {
                        waiting.extend(tokens);
                    }
                    failed == 0
                }
                Err(status) => {
                    seen.call("seal", status.code(), &[Code::Ok], status.message());
                    false
                }
            }
        }
        (2, _) => {
            let tokens: Vec<Vec<u8>> = {
                let mut pool = pool.lock().unwrap();
                let waiting = pool.entry(agency).or_default();
                let keep = waiting.len().saturating_sub(size);
                waiting.split_off(keep)
            };
            let answer = codes
                .redeem(RedeemRequest {
                    epoch: 0,
                    tokens,
                    on_behalf_of: String::new(),
                })
                .await;
            match answer {
                Ok(response) => {
                    seen.call("redeem", Code::Ok, &[Code::Ok], "");
                    let response = response.into_inner();
                    let errors = response.results.iter().filter_map(|r| match &r.result {
                        Some(redeem_result::Result::Error(e)) => Some(e),
                        _ => None,
                    });
                    seen.items("redeem", errors, &[]) == 0
                }
                Err(status) => {
                    seen.call("redeem", status.code(), &[Code::Ok], status.message());
                    false
                }
            }
        }
        (3, _) if agency.starts_with("city-") => {
            let start = rng.below(own.len() as u64) as usize;
            let picked: Vec<String> = own.iter().cycle().skip(start).take(size).cloned().collect();
            let answer = codes.reidentify(ReidentifyRequest { codes: picked }).await;
            match answer {
                Ok(response) => {
                    seen.call("reidentify", Code::Ok, &[Code::Ok], "");
                    let response = response.into_inner();
                    let errors = response.results.iter().filter_map(|r| match &r.result {
                        Some(reidentify_result::Result::Error(e)) => Some(e),
                        _ => None,
                    });
                    seen.items("reidentify", errors, &[]) == 0
                }
                Err(status) => {
                    seen.call("reidentify", status.code(), &[Code::Ok], status.message());
                    false
                }
            }
        }
        _ if agency == "moj" => {
            // MOJ only redeems: an empty pool is an empty batch, valid too.
            let tokens: Vec<Vec<u8>> = {
                let mut pool = pool.lock().unwrap();
                let waiting = pool.entry("moj").or_default();
                let keep = waiting.len().saturating_sub(size);
                waiting.split_off(keep)
            };
            let answer = codes
                .redeem(RedeemRequest {
                    epoch: 0,
                    tokens,
                    on_behalf_of: String::new(),
                })
                .await;
            let code = answer.as_ref().err().map_or(Code::Ok, tonic::Status::code);
            seen.call("redeem", code, &[Code::Ok], "");
            match answer {
                Ok(response) => {
                    let response = response.into_inner();
                    let errors = response.results.iter().filter_map(|r| match &r.result {
                        Some(redeem_result::Result::Error(e)) => Some(e),
                        _ => None,
                    });
                    seen.items("redeem", errors, &[]) == 0
                }
                Err(_) => false,
            }
        }
        _ => {
            let answer = codes
                .derive(DeriveRequest {
                    numbers: numbers(rng, size),
                    on_behalf_of: String::new(),
                    epoch: 0,
                })
                .await;
            let code = answer.as_ref().err().map_or(Code::Ok, tonic::Status::code);
            seen.call("derive", code, &[Code::Ok], "");
            answer.is_ok()
        }
    }
}

/// One invalid request, and the answer it deserves.
async fn invalid(
    codes: &mut CodesClient<Channel>,
    agency: &'static str,
    rng: &mut Rng,
    own: &[String],
    seen: &mut Seen<'_>,
    choice: u64,
) -> bool {
    let size = 1 + rng.below(16) as usize;
    let status_of = |answer: &Result<(), tonic::Status>| {
        answer.as_ref().err().map_or(Code::Ok, tonic::Status::code)
    };
    match (choice, agency) {
        // A capability the agency lacks.
        (0, "moj") => {
            let answer = codes
                .derive(DeriveRequest {
                    numbers: numbers(rng, size),
                    on_behalf_of: String::new(),
                    epoch: 0,
                })
                .await
                .map(|_| ());
            seen.call(
                "moj derive",
                status_of(&answer),
                &[Code::PermissionDenied],
                "",
            );
        }
        (0, "mhlw") => {
            let answer = codes
                .reidentify(ReidentifyRequest {
                    codes: own.to_vec(),
                })
                .await
                .map(|_| ());
            seen.call(
                "mhlw reidentify",
                status_of(&answer),
                &[Code::PermissionDenied],
                "",
            );
        }
        // Bad check digits: the call stands, every item is refused.
        (0, _) => {
            let bad: Vec<String> = numbers(rng, size)
                .into_iter()
                .map(|n| {
                    let last = (n.as_bytes()[11] - b'0' + 1) % 10;
                    format!("{}{last}", &n[..11])
                })
                .collect();
            let answer = codes
                .derive(DeriveRequest {
                    numbers: bad,
                    on_behalf_of: String::new(),
                    epoch: 0,
                })
                .await;
            match answer {
                Ok(response) => {
                    seen.call("bad numbers", Code::Ok, &[Code::Ok], "");
                    let response = response.into_inner();
                    let errors: Vec<&ItemError> = response
                        .results
                        .iter()
                        .filter_map(|r| match &r.result {
                            Some(derive_result::Result::Error(e)) => Some(e),
                            _ => None,
                        })
                        .collect();
                    let failed =
                        seen.items("bad numbers", errors.into_iter(), &[Code::InvalidArgument]);
                    if failed != size {
                        seen.tally
                            .wrong
                            .push(format!("bad numbers: {failed} of {size} refused"));
                    }
                }
                Err(status) => {
                    seen.call("bad numbers", status.code(), &[Code::Ok], status.message())
                }
            }
        }
        // Tampered tokens: every item refused.
        (1, _) => {
            let tokens: Vec<Vec<u8>> = (0..size)
                .map(|i| {
                    let mut token = vec![1u8, 0, 0, 0x50, 0x00, 4, b'm', b'h', b'l', b'w'];
                    token.extend((0..40).map(|j| (rng.next() as u8) ^ (i + j) as u8));
                    token
                })
                .collect();
            let answer = codes
                .redeem(RedeemRequest {
                    epoch: 0,
                    tokens,
                    on_behalf_of: String::new(),
                })
                .await;
            match answer {
                Ok(response) => {
                    seen.call("tampered tokens", Code::Ok, &[Code::Ok], "");
                    let response = response.into_inner();
                    let errors: Vec<&ItemError> = response
                        .results
                        .iter()
                        .filter_map(|r| match &r.result {
                            Some(redeem_result::Result::Error(e)) => Some(e),
                            _ => None,
                        })
                        .collect();
                    let failed = seen.items(
                        "tampered tokens",
                        errors.into_iter(),
                        &[Code::InvalidArgument, Code::FailedPrecondition],
                    );
                    if failed != size {
                        seen.tally
                            .wrong
                            .push(format!("tampered tokens: {failed} of {size} refused"));
                    }
                }
                Err(status) => {
                    seen.call(
                        "tampered tokens",
                        status.code(),
                        &[Code::Ok],
                        status.message(),
                    );
                }
            }
        }
        // A rule that does not exist, or a malformed field.
        (2, _) => {
            let (affair, expected) = if rng.below(2) == 0 {
                ("pensions", Code::PermissionDenied)
            } else {
                ("Health!", Code::InvalidArgument)
            };
            let answer = codes
                .seal(SealRequest {
                    provider: "moj".to_owned(),
                    affair: affair.to_owned(),
                    items: vec!["family-register".to_owned()],
                    non_disclosure_until: 0,
                    codes: own.iter().take(size).cloned().collect(),
                    on_behalf_of: String::new(),
                })
                .await
                .map(|_| ());
            seen.call("no rule", status_of(&answer), &[expected], "");
        }
        // A batch over the limit.
        _ => {
            let answer = codes
                .reidentify(ReidentifyRequest {
                    codes: vec![String::new(); 10_001],
                })
                .await
                .map(|_| ());
            seen.call(
                "over the limit",
                status_of(&answer),
                &[Code::ResourceExhausted],
                "",
            );
        }
    }
    false
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_traffic_from_64_clients() {
    let seconds: u64 = std::env::var("FUGO_SOAK_SECONDS")
        .ok()
        .map(|s| s.parse().expect("FUGO_SOAK_SECONDS is a number of seconds"))
        .unwrap_or(8);
    let full = seconds >= 60;
    let duration = Duration::from_secs(seconds);
    // A third of the run, 2–20 s: long enough for the store's 16 MiB page
    // cache to fill in the full form (D143, D145).
    let warmup = (duration / 3).clamp(Duration::from_secs(2), Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = Server::start(dir.path());
    let pool: Pool = Arc::default();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let agency = AGENCIES[i % AGENCIES.len()];
        // One client in 16 presents a certificate the policy does not know.
        let stranger = i % 16 == 15;
        let identity = if stranger { "nta" } else { agency };
        clients.push((client(&server, &ca, identity).await, agency, stranger));
    }
    let started = Instant::now();
    let until = started + duration;
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, (codes, agency, stranger))| {
            tokio::spawn(run_client(
                codes,
                agency,
                stranger,
                0x5eed_0000 + i as u64,
                Arc::clone(&pool),
                until,
            ))
        })
        .collect();
    // Memory: VmRSS after the warm-up, then every 500 ms.
    tokio::time::sleep(warmup).await;
    let baseline = server.rss();
    let mut samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(server.rss());
    }
    let mut tally = Tally::default();
    for task in tasks {
        let one = task.await.expect("a client panicked");
        tally.valid.extend(one.valid);
        for (key, count) in one.calls {
            *tally.calls.entry(key).or_default() += count;
        }
        for (key, count) in one.items {
            *tally.items.entry(key).or_default() += count;
        }
        tally.wrong.extend(one.wrong);
    }
    let elapsed = started.elapsed();
    let end = server.rss();
    let peak = samples.iter().copied().max().unwrap_or(end);
    tally.valid.sort();
    let calls: u64 = tally.calls.values().sum();
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let p50 = percentile(&tally.valid, 0.50);
    let p99 = percentile(&tally.valid, 0.99);
    println!(
        "soak: {seconds} s ({} form, {} build), {CLIENTS} clients: {calls} calls, {:.0} calls/s; \
         {} valid calls answered OK, p50 {p50:?}, p99 {p99:?}, max {:?}",
        if full { "full" } else { "short" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        calls as f64 / elapsed.as_secs_f64(),
        tally.valid.len(),
        tally.valid.last().copied().unwrap_or_default(),
    );
    println!(
        "soak: VmRSS after the {warmup:?} warm-up {:.1} MiB, peak after {:.1} MiB, end {:.1} MiB ({:+.1}%)",
        mib(baseline),
        mib(peak),
        mib(end),
        (end as f64 / baseline as f64 - 1.0) * 100.0
    );
    println!("soak: calls by operation and status:");
    for (key, count) in &tally.calls {
        println!("  {key}: {count}");
    }
    println!("soak: item errors by code: {:?}", tally.items);
    assert!(
        tally.wrong.is_empty(),
        "{} answers were not the documented ones, e.g. {:?}",
        tally.wrong.len(),
        &tally.wrong[..tally.wrong.len().min(10)]
    );
    assert!(tally.valid.len() > 100, "too few valid calls answered");
    // The short form ends before the store's 16 MiB page cache is full
    // (D145), so it allows that cache beyond the 10%: it catches only a
    // gross leak; the full form is the measure (D143).
    let slack = if full { 0 } else { 16 << 20 };
    assert!(
        end <= baseline + baseline / 10 + slack,
        "resident memory grew {:.1} MiB → {:.1} MiB after the warm-up",
        mib(baseline),
        mib(end)
    );
    if full {
        assert!(p99 < Duration::from_millis(50), "valid calls' p99 {p99:?}");
    } else {
        assert!(
            p99 < Duration::from_secs(5),
            "valid calls' p99 {p99:?}: a stall"
        );
    }
}
