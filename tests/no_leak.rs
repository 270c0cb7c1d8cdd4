//! "Never leak the number": every way fugo can talk is searched for every
//! secret a run handled, in every form it could take.
//!
//! - `every_rpc_and_command_at_full_tracing_leaks_nothing`: one production
//!   server at `RUST_LOG=trace`; every RPC of fugo.v1.Codes (unary and
//!   stream), fugo.v1.Audit and health, and every CLI command, each with
//!   good and bad input, then a key split and a sealed start unsealed with
//!   bad and good shares; then the server's logs, every stdout and stderr,
//!   output, reject and checkpoint files, statuses (message, details,
//!   metadata), responses, the data directory (audit.redb), an export and
//!   a backup copy are searched for every number, person handle, person
//!   link, agency code and key, each allowed only where the table above
//!   that test says (D150).
//! - `debug_of_every_type_holding_a_secret_is_redacted` (D151).
//! - `the_search_finds_a_planted_leak`: the search is not blind.
//! - `no_output_channel_carries_a_number_or_a_code`: `fugo derive` on
//!   ragged input, its stderr, reject file and output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

mod common;
#[path = "no_leak/search.rs"]
mod search;

use std::fs;
use std::process::{Command, Stdio};

use common::{demo_key_path, valid_number};
use fugo::agency::{AgencyId, Epoch};
use fugo::code::{AgencyCode, Coder};
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber::MyNumber;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fugo::link::Linker;
use fugo::proto::fugo::v1 as pb;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::persons_client::PersonsClient;
use search::{Allowed, Place, Secrets};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Every form a number might take in a leak.
fn forms(number: &str) -> Vec<String> {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let mut forms = vec![
        digits.clone(),
        format!("{} {} {}", &digits[..4], &digits[4..8], &digits[8..]),
        format!("{}-{}-{}", &digits[..4], &digits[4..8], &digits[8..]),
        digits[..11].to_owned(),
        digits.bytes().map(|b| format!("{b:02x}")).collect(),
        digits
            .chars()
            .filter_map(|c| char::from_u32(0xff10 + c.to_digit(10)?))
            .collect(),
    ];
    if let Ok(value) = digits.parse::<u64>() {
        forms.push(format!("{value:x}"));
        forms.push(format!("{value:016x}"));
        forms.push(format!("{value:X}"));
        forms.push(
            value
                .to_be_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
    }
    forms
        .into_iter()
        .filter(|f| f.chars().count() >= 8)
        .collect()
}

fn assert_clean(haystack: &str, needles: &[String], what: &str) {
    for needle in needles {
        assert!(
            !haystack.to_lowercase().contains(&needle.to_lowercase()),
            "{what} contains {needle:?}"
        );
    }
}

struct Run {
    stdout: String,
    stderr: String,
}

fn fugo(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(args)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn no_output_channel_carries_a_number_or_a_code() {
    let valid: Vec<String> = (1..200u64).map(|i| valid_number(i * 104_729_003)).collect();
    // Bad rows that still contain a whole number somewhere.
    let mut invalid: Vec<String> = Vec::new();
    for (i, number) in valid.iter().take(40).enumerate() {
        let mut wrong_check = number.clone().into_bytes();
        wrong_check[11] = b'0' + (wrong_check[11] - b'0' + 1) % 10;
        invalid.push(match i % 5 {
            0 => String::from_utf8(wrong_check).unwrap(),
            1 => format!("{} {} {}", &number[..4], &number[4..8], &number[8..]),
            2 => format!("{number}x"),
            3 => format!(" {number}"),
            _ => number.repeat(30),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let key = demo_key_path();
    let key = key.to_str().unwrap();
    let lines = dir.path().join("numbers.txt");
    let mut body = String::new();
    for (i, number) in valid.iter().enumerate() {
        body.push_str(number);
        body.push('\n');
        if let Some(bad) = invalid.get(i) {
            body.push_str(bad);
            body.push('\n');
        }
    }
    fs::write(&lines, &body).unwrap();
    let csv = dir.path().join("numbers.csv");
    let mut csv_body = String::from("id,mynumber\n");
    for (i, value) in valid.iter().chain(&invalid).enumerate() {
        csv_body.push_str(&format!("{i},\"{value}\"\n"));
    }
    csv_body.push_str(&format!("{},{},extra\n", valid.len(), valid[0]));
    fs::write(&csv, &csv_body).unwrap();
    let rejects = dir.path().join("rejects.txt");
    let derive = |extra: &[&str]| {
        let mut args = vec![
            "derive",
            "--master-key",
            key,
            "--agency",
            "nta",
            "--epoch",
            "2",
        ];
        args.extend_from_slice(extra);
        fugo(&args)
    };

    let line_run = derive(&[lines.to_str().unwrap()]);
    let reject_run = derive(&[
        lines.to_str().unwrap(),
        "--rejects",
        rejects.to_str().unwrap(),
    ]);
    let csv_run = derive(&["--csv", "--column", "mynumber", csv.to_str().unwrap()]);
    let mismatch = derive(&[
        "--expect-fingerprint",
        "ffffffffffffffffffffffffffffffff",
        lines.to_str().unwrap(),
    ]);
    assert!(line_run.stderr.contains("rows rejected"));
    assert!(csv_run.stderr.contains("rows rejected"));
    assert!(mismatch.stderr.contains("refusing"));

    let codes: Vec<String> = line_run
        .stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), valid.len());
    let mut needles: Vec<String> = valid
        .iter()
        .chain(&invalid)
        .flat_map(|n| forms(n))
        .collect();
    let talk = [
        line_run.stderr.as_str(),
        reject_run.stderr.as_str(),
        csv_run.stderr.as_str(),
        mismatch.stderr.as_str(),
        mismatch.stdout.as_str(),
        &fs::read_to_string(&rejects).unwrap(),
    ]
    .join("\n");
    needles.extend(codes.iter().cloned());
    assert_clean(&talk, &needles, "stderr or a reject file");

    // Output: codes only, never a number (the CSV was in replace mode).
    let numbers: Vec<String> = valid
        .iter()
        .chain(&invalid)
        .flat_map(|n| forms(n))
        .collect();
    assert_clean(&line_run.stdout, &numbers, "line-mode output");
    assert_clean(&csv_run.stdout, &numbers, "CSV output");
}

#[test]
fn debug_and_error_messages_are_redacted() {
    let master = MasterKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
    let keys = KeyHierarchy::new(&master);
    let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(1).unwrap());
    let number = MyNumber::parse(b"983205673214").unwrap();
    let code = coder.derive(&number);
    let code_text = String::from_utf8(code.to_text().to_vec()).unwrap();
    let handle = coder.handle(&number);
    let mut printed = vec![
        format!("{master:?}"),
        format!("{keys:?}"),
        format!("{coder:?}"),
        format!("{number:?}"),
        format!("{code:?}"),
        format!("{handle:?}"),
        format!("{:?}", keys.person_key()),
    ];
    for bad in ["983205673215", "9832 0567 3214", "98320567321x", ""] {
        let error = MyNumber::parse(bad.as_bytes()).unwrap_err();
        printed.push(format!("{error} {error:?}"));
    }
    for bad in [code_text.replace('1', "U"), code_text[..20].to_owned()] {
        let error = AgencyCode::parse(bad.as_bytes()).unwrap_err();
        printed.push(format!("{error} {error:?}"));
    }
    let other = Coder::new(
        &keys,
        AgencyId::new("mhlw").unwrap(),
        Epoch::new(1).unwrap(),
    );
    let error = other.reidentify(&code).unwrap_err();
    printed.push(format!("{error} {error:?}"));
    let key_error =
        MasterKey::from_file_contents(b"0123456789abcdef0123456789abcdefXX").unwrap_err();
    printed.push(format!("{key_error} {key_error:?}"));

    let mut needles = forms("983205673214");
    needles.push(code_text.clone());
    needles.push(common::to_hex(code.bytes()));
    needles.push(common::to_hex(handle.expose_bytes()));
    needles.push("0123456789abcdef".to_owned());
    needles.push(common::to_hex(b"0123456789abcdef"));
    assert_clean(&printed.join("\n"), &needles, "Debug or error output");
}

/// Randomness for the exchange in tests: a counter, never the OS.
struct Counter(std::sync::atomic::AtomicU8);

impl fugo::exchange::RandomSource for Counter {
    fn fill(&self, out: &mut [u8]) -> Result<(), fugo::exchange::RandomFailed> {
        for byte in out {
            *byte = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `Debug` of every type that holds a number, a handle, a link, a code, a
/// key or a token's plaintext — the values the exchange hands back
/// included — shows none of them in any form (D151).
#[test]
fn debug_of_every_type_holding_a_secret_is_redacted() {
    let master_bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ 0x5c);
    let master = MasterKey::from_bytes(master_bytes);
    let keys = KeyHierarchy::new(&master);
    let policy = fugo::policy::parse(POLICY).unwrap();
    let mhlw = AgencyId::new("mhlw").unwrap();
    let shinjuku = AgencyId::new("city-shinjuku").unwrap();
    let epoch = Epoch::new(1).unwrap();
    let numbers: Vec<String> = (0..4u64)
        .map(|i| valid_number(i * 9_876_543 + 31))
        .collect();
    let mut secrets = Secrets::default();
    secrets.key("master", &master_bytes);
    secrets.key("log seed", &keys.log_signing_seed()[..]);
    for number in &numbers {
        secrets.number(number);
    }
    let coder = Coder::new(&keys, mhlw.clone(), epoch);
    let linker = Linker::new(&keys);
    let mut printed: Vec<String> = vec![
        format!("{master:?}"),
        format!("{keys:?}"),
        format!("{coder:?}"),
        format!("{linker:?}"),
        format!("{:?}", keys.person_key()),
        format!("{:?}", keys.agency_key(&mhlw, epoch)),
        format!("{:?}", keys.link_key()),
    ];
    let window = fugo::token::Window::new(20_000);
    let seal_key =
        fugo::token::SealKey::new(&keys, &shinjuku, fugo::token::KeyName::indexed(window, 7))
            .unwrap();
    printed.push(format!("{seal_key:?}"));
    for number in &numbers {
        let parsed = MyNumber::parse(number.as_bytes()).unwrap();
        let handle = coder.handle(&parsed);
        let link = linker.link(&handle).unwrap();
        let code = coder.derive(&parsed);
        secrets.handle(number, *handle.expose_bytes());
        secrets.link(number, link.to_bytes());
        secrets.code("mhlw", std::str::from_utf8(&code.to_text()).unwrap());
        let log_link = fugo_log::record::PersonLink(link.to_bytes());
        let entry = fugo_log::record::Entry {
            outcome: fugo_log::record::Outcome::Done,
            epoch: 1,
            serial: Some([3; 16]),
            person: Some(log_link),
        };
        let claims = fugo::token::Claims {
            handle: coder.open(&code).unwrap(),
            serial: fugo::token::Serial::from_bytes([4; 16]),
            requester: mhlw.clone(),
            affair: fugo::agency::AffairId::new("health").unwrap(),
            items: vec![fugo::agency::ItemId::new("local-tax").unwrap()],
            expires_at: 1_800_000_000,
            non_disclosure_until: None,
        };
        let token = seal_key.seal(&claims, [9; 12]).unwrap();
        let opened = seal_key.open(&token).unwrap();
        let parts = seal_key.open_parts(token.as_bytes()).unwrap();
        printed.extend([
            format!("{parsed:?}"),
            format!("{handle:?}"),
            format!("{link:?}"),
            format!("{code:?}"),
            format!("{log_link:?}"),
            format!("{entry:?}"),
            format!("{claims:?}"),
            format!("{token:?}"),
            format!("{opened:?}"),
            format!("{parts:?}"),
            format!("{:?}", parsed.expose_digits().len()),
        ]);
    }
    // What the exchange hands back: codes, sealed tokens, redeemed codes,
    // numbers, with the people's links.
    let exchange = fugo::exchange::Exchange::new(
        KeyHierarchy::new(&master),
        Box::new(Counter(std::sync::atomic::AtomicU8::new(0))),
    );
    // The persons tables: a plan, its entries, the tables in memory.
    let parsed = |i: usize| MyNumber::parse(numbers[i].as_bytes()).unwrap();
    let planned = exchange.plan_reissue(&parsed(0), &parsed(1)).unwrap();
    printed.push(format!("{planned:?}"));
    printed.extend(planned.change.entries.iter().map(|e| format!("{e:?}")));
    printed.push(format!("{:?}", exchange.persons()));
    printed.push(format!("{:?}", exchange.persons().status(&parsed(1))));
    let stored = fugo::audit::persons::stored(&planned.change);
    printed.extend(stored.iter().map(|e| format!("{e:?}")));
    let as_bytes =
        |list: &[String]| -> Vec<Vec<u8>> { list.iter().map(|s| s.as_bytes().to_vec()).collect() };
    let number_bytes = as_bytes(&numbers);
    let refs: Vec<&[u8]> = number_bytes.iter().map(Vec::as_slice).collect();
    let derived = exchange.derive(&policy, &mhlw, &refs).unwrap();
    let shinjuku_derived = exchange.derive(&policy, &shinjuku, &refs).unwrap();
    let mhlw_codes: Vec<String> = derived
        .iter()
        .map(|r| r.as_ref().unwrap().clone())
        .collect();
    let shinjuku_codes: Vec<String> = shinjuku_derived
        .iter()
        .map(|r| r.as_ref().unwrap().clone())
        .collect();
    for code in &shinjuku_codes {
        secrets.code("city-shinjuku", code);
    }
    let code_bytes = as_bytes(&mhlw_codes);
    let refs: Vec<&[u8]> = code_bytes.iter().map(Vec::as_slice).collect();
    let context = fugo::exchange::SealContext {
        provider: shinjuku.clone(),
        affair: fugo::agency::AffairId::new("health").unwrap(),
        items: vec![fugo::agency::ItemId::new("local-tax").unwrap()],
        non_disclosure_until: None,
    };
    let now = 1_800_000_000;
    let sealed = exchange.seal(&policy, &mhlw, &context, &refs, now).unwrap();
    let tokens: Vec<Vec<u8>> = sealed
        .iter()
        .map(|r| r.as_ref().unwrap().token.as_bytes().to_vec())
        .collect();
    let refs: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
    let redeemed = exchange.redeem(&policy, &shinjuku, &refs, now).unwrap();
    let code_bytes = as_bytes(&shinjuku_codes);
    let refs: Vec<&[u8]> = code_bytes.iter().map(Vec::as_slice).collect();
    let reidentified = exchange.reidentify(&policy, &shinjuku, &refs).unwrap();
    assert_eq!(
        reidentified
            .iter()
            .map(|r| r.as_ref().unwrap().as_str())
            .collect::<Vec<_>>(),
        numbers,
        "the values are really in there"
    );
    printed.extend([
        format!("{derived:?}"),
        format!("{shinjuku_derived:?}"),
        format!("{sealed:?}"),
        format!("{redeemed:?}"),
        format!("{reidentified:?}"),
        format!("{:?}", redeemed.results),
        format!("{:?}", reidentified.people),
    ]);
    // Key custody: share files, their values, the unsealer on the way.
    let shares = fugo::custody::split_key(&master, 3, 2).unwrap();
    let mut unsealer = fugo::custody::Unsealer::new(
        keys.fingerprint(),
        std::sync::Arc::new(fugo::custody::SealProgress::new(2)),
    );
    for (i, share) in shares.iter().enumerate() {
        secrets.key(&format!("share {i}"), share.share.expose_value());
        printed.push(format!("{share:?} {:?}", share.share));
        if i < 2 {
            let supplied = unsealer.supply(&share.to_text()).unwrap();
            printed.push(format!("{supplied:?} {unsealer:?}"));
        }
    }
    let signer =
        fugo_log::checkpoint::LogSigner::from_seed("leak.test", &keys.log_signing_seed()).unwrap();
    printed.push(format!("{signer:?}"));
    let pem = fugo::certs::DevCa::new("leak CA")
        .unwrap()
        .client("mhlw")
        .unwrap();
    printed.push(format!("{pem:?}"));
    let key_body: String = pem
        .key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let places = vec![Place::new(
        "Debug output",
        printed.join("\n"),
        Allowed::nothing(),
    )];
    let mut leaks = secrets.leaks(&places);
    if printed.join("\n").contains(&key_body[..40]) {
        leaks.push("a TLS private key".to_owned());
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

/// The search finds each kind of secret in each form it knows, in text and
/// in binary, and only where it is not allowed.
#[test]
fn the_search_finds_a_planted_leak() {
    for planted in [
        "row 9832 0567 3214",
        "0x000000e4eb9ff8fe",
        "393833323035363733323134",
        "９８３２０５６７３２１４",
    ] {
        let caught =
            std::panic::catch_unwind(|| assert_clean(planted, &forms("983205673214"), "x"));
        assert!(caught.is_err(), "{planted}");
    }
    let mut secrets = Secrets::default();
    secrets.number("983205673214");
    secrets.handle("a person", [0xab; 16]);
    secrets.link("a person", [0x17; 16]);
    secrets.code("mhlw", "117SQFZDBBY20YB707P62RD1R8FGJ");
    secrets.key("a key", &[0x42; 32]);
    let value: u64 = 983_205_673_214;
    let mut store = vec![0u8; 4096];
    store[1000..1008].copy_from_slice(&value.to_le_bytes());
    let mut links = vec![1u8; 64];
    links[7..23].copy_from_slice(&[0x17; 16]);
    let planted: Vec<(Vec<u8>, Allowed, &str)> = vec![
        (
            b"log: number 9832-0567-3214".to_vec(),
            Allowed::nothing(),
            "dashed",
        ),
        (b"value=e4eb9ff8fe".to_vec(), Allowed::nothing(), "hex"),
        (
            b"value=FEF89FEBE4000000".to_vec(),
            Allowed::nothing(),
            "little-endian hex",
        ),
        (store, Allowed::store(), "little-endian bytes in a store"),
        (
            format!("{:?}", [0xabu8; 16]).into_bytes(),
            Allowed::nothing(),
            "Debug of a handle",
        ),
        (
            links.clone(),
            Allowed::nothing(),
            "a link outside the store",
        ),
        (
            b"117sqfzdbby20yb707p62rd1r8fgj".to_vec(),
            Allowed::codes_of("nta"),
            "another agency's code",
        ),
        (
            b"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=".to_vec(),
            Allowed::nothing(),
            "a key in base64",
        ),
    ];
    for (bytes, allowed, what) in planted {
        let found = secrets.leaks(&[Place::new(what, bytes, allowed)]);
        assert!(!found.is_empty(), "missed: {what}");
    }
    // Allowed where it may be: a link in the store, a code to its agency.
    let allowed = [
        Place::new("store", links, Allowed::store()),
        Place::new(
            "output",
            "117SQFZDBBY20YB707P62RD1R8FGJ",
            Allowed::codes_of("mhlw"),
        ),
    ];
    assert_eq!(secrets.leaks(&allowed), Vec::<String>::new());
}

// ── every RPC and every command, successes and failures ─────────────────

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW health insurance"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku City"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 1

[[agency]]
id = "portal"
name = "Citizen portal"
certificates = ["portal"]
capabilities = ["derive", "disclose"]
epoch = 1

[[agency]]
id = "nta"
name = "National Tax Agency"
certificates = ["nta"]
capabilities = []
epoch = 1

[[agency]]
id = "jps"
name = "Japan Pension Service"
certificates = ["jps"]
capabilities = ["derive"]
epoch = 1
quota.derive = { per_day = 5 }

[[agency]]
id = "jlis"
name = "J-LIS"
certificates = ["jlis"]
capabilities = ["reissue", "suspend"]
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
non_disclosure = true
non_disclosure_max_days = 365

[[delegation]]
agent = "nta"
on_behalf_of = ["mhlw"]

[[merger]]
merged = "jps"
into = "city-shinjuku"
"#;

/// Agencies with a certificate, and one the policy does not know.
const AGENCIES: [&str; 6] = ["mhlw", "city-shinjuku", "portal", "nta", "jps", "jlis"];
const STRANGER: &str = "stranger";

/// Everything the run saw, with what may be in each place.
#[derive(Default)]
struct Seen {
    places: Vec<Place>,
}

impl Seen {
    fn add(&mut self, name: impl Into<String>, bytes: impl Into<Vec<u8>>, allowed: Allowed) {
        self.places.push(Place::new(name, bytes, allowed));
    }

    /// A command's stdout (owned as `stdout`) and stderr (nothing allowed).
    fn output(&mut self, name: &str, out: &std::process::Output, stdout: Allowed) {
        self.add(format!("{name} stdout"), out.stdout.clone(), stdout);
        self.add(
            format!("{name} stderr"),
            out.stderr.clone(),
            Allowed::nothing(),
        );
    }

    /// A status: message, details and metadata, nothing allowed.
    fn status(&mut self, name: &str, status: &tonic::Status) {
        let mut bytes = format!("{} {:?} {}", status.message(), status, status.code()).into_bytes();
        bytes.extend_from_slice(status.details());
        for entry in status.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                bytes.extend_from_slice(key.as_str().as_bytes());
                bytes.extend_from_slice(value.as_bytes());
            }
        }
        self.add(format!("{name} status"), bytes, Allowed::nothing());
    }

    /// A response to `agency`: its encoding and its Debug form.
    fn response<M: prost::Message + std::fmt::Debug>(
        &mut self,
        name: &str,
        response: &tonic::Response<M>,
        allowed: Allowed,
    ) {
        let mut bytes = response.get_ref().encode_to_vec();
        bytes.extend_from_slice(format!("{:?}", response.get_ref()).as_bytes());
        self.add(format!("{name} response"), bytes, allowed);
        let mut metadata = Vec::new();
        for entry in response.metadata().iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(key, value) = entry {
                metadata.extend_from_slice(key.as_str().as_bytes());
                metadata.extend_from_slice(value.as_bytes());
            }
        }
        self.add(
            format!("{name} response metadata"),
            metadata,
            Allowed::nothing(),
        );
    }

    /// A unary call's answer: the response or the status.
    fn answer<M: prost::Message + std::fmt::Debug>(
        &mut self,
        name: &str,
        answer: &Result<tonic::Response<M>, tonic::Status>,
        allowed: Allowed,
    ) {
        match answer {
            Ok(response) => self.response(name, response, allowed),
            Err(status) => self.status(name, status),
        }
    }
}

/// Runs the fugo binary with full tracing; fails after 60 s.
fn run_fugo(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(FUGO)
        .args(args)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "full")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fugo {args:?} still running after 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `GET path` on the metrics listener: the whole answer, head and body.
fn scrape(addr: &str, path: &str) -> Vec<u8> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `fugo serve` in production mode with full tracing; its address, and its
/// stdout and stderr as they come.
struct Server {
    child: std::process::Child,
    addr: String,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Server {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(FUGO)
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "trace")
            .env("RUST_BACKTRACE", "full")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("fugo: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let mut stderr = child.stderr.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut bytes = line.into_bytes();
            let _ = stdout.read_to_end(&mut bytes);
            bytes
        });
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            bytes
        });
        Server {
            child,
            addr,
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// SIGTERM; the exit code, stdout and stderr.
    fn stop(mut self) -> (Option<i32>, Vec<u8>, Vec<u8>) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code(), stdout, stderr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stdout.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Both services' clients and the health client of one certificate.
#[derive(Clone)]
struct Caller {
    codes: CodesClient<Channel>,
    audit: AuditClient<Channel>,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
}

async fn caller(addr: &str, pki: &Path, identity: &str) -> Caller {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(fs::read(pki.join("ca.pem")).unwrap()))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            fs::read(pki.join(format!("{identity}.pem"))).unwrap(),
            fs::read(pki.join(format!("{identity}.key"))).unwrap(),
        ));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    Caller {
        codes: CodesClient::new(channel.clone()),
        audit: AuditClient::new(channel.clone()),
        health: tonic_health::pb::health_client::HealthClient::new(channel),
    }
}

/// Every file under `dir`, by path relative to it.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_path_buf();
                found.insert(relative, fs::read(&path).unwrap());
            }
        }
    }
    found
}

fn copy_dir(from: &Path, to: &Path) {
    for (relative, bytes) in files_under(from) {
        let target = to.join(relative);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        fs::write(target, bytes).unwrap();
    }
}

/// The codes of one agency in `text`, one a line (empty lines skipped), or
/// the first field of each line.
fn first_fields(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.split([' ', ',']).next())
        .filter(|field| field.len() == 29)
        .map(str::to_owned)
        .collect()
}

/// A code with one symbol changed so its check character no longer holds.
fn mistyped(code: &str) -> String {
    let mut bytes = code.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// Where each kind of secret may appear (D150):
///
/// | place                                              | numbers | codes of      | links |
/// |----------------------------------------------------|---------|---------------|-------|
/// | server logs (trace), every stderr, reject files    | no      | none          | no    |
/// | `fugo derive` / `client derive` output of agency A | no      | A             | no    |
/// | `client seal` output of A (tokens, serials)        | no      | none          | no    |
/// | `client redeem` output of provider P               | no      | P             | no    |
/// | `client reidentify` output of A (with capability)  | yes     | none          | no    |
/// | a response to A (Codes, ReadCopy, Disclose …)      | reidentify only | A     | no    |
/// | every status message, details and metadata         | no      | none          | no    |
/// | audit store, every file of the data directory,     | no      | none          | yes   |
/// |   and a backup copy of it                          |         |               |       |
/// | `fugo audit export` (stdout and --out), pubkey,    | no      | none          | no    |
/// |   verify, policy; checkpoint files; `keys`, `keygen` |       |               |       |
///
/// Person handles and key material (master key, log seed, share values):
/// nowhere. The inputs the test writes
/// (numbers and codes, as agencies hold them) and the key and certificate
/// files are not searched.
#[test]
fn every_rpc_and_command_at_full_tracing_leaks_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let at = |name: &str| root.join(name).to_str().unwrap().to_owned();
    let mut seen = Seen::default();
    let mut secrets = Secrets::default();
    let mut printed_shares: Vec<String> = Vec::new();

    // People: valid numbers, and malformed ones that still hold a number.
    let valid: Vec<String> = (0..24u64)
        .map(|i| valid_number(i * 7_368_787 + 1_234_567))
        .collect();
    let mut malformed = Vec::new();
    for (i, number) in valid.iter().take(8).enumerate() {
        let mut wrong_check = number.clone().into_bytes();
        wrong_check[11] = b'0' + (wrong_check[11] - b'0' + 1) % 10;
        malformed.push(match i % 4 {
            0 => String::from_utf8(wrong_check).unwrap(),
            1 => format!("{} {} {}", &number[..4], &number[4..8], &number[8..]),
            2 => format!("{number}x"),
            _ => format!("{}-{}-{}", &number[..4], &number[4..8], &number[8..]),
        });
    }
    for number in valid.iter().chain(&malformed) {
        secrets.number(number);
    }
    // Numbers only the persons service sees (re-issued, suspended): they
    // must be nowhere either, the store's tables included.
    let fresh: Vec<String> = (0..2u64)
        .map(|i| valid_number(i * 5_003_011 + 88_123_457))
        .collect();
    for number in &fresh {
        secrets.number(number);
    }

    // ── commands before the server: keygen, keys, dev-certs, policy ──────
    let out = run_fugo(&["keygen", "--out", &at("master.key")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("keygen", &out, Allowed::nothing());
    let out = run_fugo(&["keygen", "--out", &at("master.key")]);
    assert!(
        !out.status.success(),
        "an existing key is never overwritten"
    );
    seen.output("keygen over a key", &out, Allowed::nothing());
    let master = MasterKey::from_file_contents(&fs::read(at("master.key")).unwrap()).unwrap();
    let keys = KeyHierarchy::new(&master);
    let fingerprint = keys.fingerprint().to_string();
    secrets.key(
        "the master key",
        &common::hex(
            std::str::from_utf8(&fs::read(at("master.key")).unwrap())
                .unwrap()
                .trim(),
        ),
    );
    secrets.key("the log's signing seed", &keys.log_signing_seed()[..]);
    for (name, args) in [
        (
            "keys fingerprint",
            vec!["keys", "fingerprint", &at("master.key")],
        ),
        (
            "keys fingerprint, wrong expectation",
            vec![
                "keys",
                "fingerprint",
                "--expect-fingerprint",
                "00000000000000000000000000000000",
                &at("master.key"),
            ],
        ),
    ] {
        let out = run_fugo(&args);
        seen.output(name, &out, Allowed::nothing());
    }
    let mut identities: Vec<&str> = AGENCIES.to_vec();
    identities.push(STRANGER);
    let out = run_fugo(&[
        "dev-certs",
        "--out",
        &at("pki"),
        "--agencies",
        &identities.join(","),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("dev-certs", &out, Allowed::nothing());
    let pki = root.join("pki");
    fs::write(at("policy.toml"), POLICY).unwrap();
    // A broken policy whose problems name lines, never values.
    fs::write(
        at("broken-policy.toml"),
        format!(
            "{POLICY}\n[[agency]]\nid = \"{}\"\ncertificates = [\"{}\"]\ncapabilities = [\"derive\"]\nepoch = 0\n",
            valid[0], valid[1]
        ),
    )
    .unwrap();
    for (name, file) in [
        ("policy check", "policy.toml"),
        ("policy check, broken", "broken-policy.toml"),
    ] {
        let out = run_fugo(&["policy", "check", &at(file)]);
        seen.output(name, &out, Allowed::nothing());
    }

    // ── the server, production mode, full tracing ─────────────────────────
    // A free loopback port for /metrics (the binary prints only the gRPC
    // address).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    // The admin listener: a CA of its own, admin "ops".
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run_fugo(&["dev-certs", "--out", &at("pki-admin"), "--agencies", "ops"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = root.join("fugo.toml");
    fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy = \"{}\"\n\
             master_key = \"{}\"\nmaster_key_fingerprint = \"{fingerprint}\"\n\
             shutdown_grace_seconds = 5\ndev_mode = false\n\n[tls]\n\
             ca = \"{3}/ca.pem\"\ncert = \"{3}/server.pem\"\nkey = \"{3}/server.key\"\n\n\
             [metrics]\nlisten = \"{4}\"\n\n[admin]\nlisten = \"{5}\"\n\
             ca = \"{6}/ca.pem\"\nidentities = [\"ops\"]\n",
            at("data"),
            at("policy.toml"),
            at("master.key"),
            pki.display(),
            metrics,
            admin_port,
            at("pki-admin"),
        ),
    )
    .unwrap();
    let server = Server::start(&config);

    // ── fugo client, every operation, good and bad items ─────────────────
    let client = |agency: &str, args: &[&str]| {
        let mut all = vec![
            "client",
            args[0],
            "--server",
            &format!("https://{}", server.addr),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        for (flag, file) in [
            ("--ca", "ca.pem".to_owned()),
            ("--cert", format!("{agency}.pem")),
            ("--key", format!("{agency}.key")),
        ] {
            all.push(flag.to_owned());
            all.push(pki.join(file).to_str().unwrap().to_owned());
        }
        all.extend(args[1..].iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        run_fugo(&all)
    };
    let mut numbers_in = String::new();
    for (i, number) in valid.iter().enumerate() {
        numbers_in.push_str(number);
        numbers_in.push('\n');
        if let Some(bad) = malformed.get(i) {
            numbers_in.push_str(bad);
            numbers_in.push('\n');
        }
    }
    fs::write(at("in-numbers.txt"), &numbers_in).unwrap();
    let mut csv_in = String::from("id,mynumber,note\n");
    for (i, number) in valid.iter().chain(&malformed).enumerate() {
        csv_in.push_str(&format!("{i},\"{number}\",n{i}\n"));
    }
    csv_in.push_str(&format!("99,{},too,many\n", valid[2]));
    fs::write(at("in-numbers.csv"), &csv_in).unwrap();

    let mut own_codes: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for agency in ["mhlw", "city-shinjuku", "portal"] {
        let output = at(&format!("out-{agency}-derive.txt"));
        let rejects = at(&format!("out-{agency}-derive.rejects"));
        let out = client(
            agency,
            &[
                "derive",
                &at("in-numbers.txt"),
                "-o",
                &output,
                "--rejects",
                &rejects,
            ],
        );
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        seen.output(&format!("client derive {agency}"), &out, Allowed::nothing());
        let codes = first_fields(&fs::read_to_string(&output).unwrap());
        assert_eq!(codes.len(), valid.len());
        own_codes.insert(agency, codes);
        let out = client(
            agency,
            &[
                "derive",
                "--csv",
                "--column",
                "mynumber",
                "--append-column",
                "code",
                &at("in-numbers.csv"),
                "-o",
                &at(&format!("out-{agency}-derive.csv")),
            ],
        );
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        seen.output(
            &format!("client derive --csv {agency}"),
            &out,
            Allowed::nothing(),
        );
    }
    // The CSV in append mode keeps the input's numbers beside the codes: it
    // is the agency's own file, searched for codes of others only.
    let mhlw = own_codes["mhlw"].clone();
    let shinjuku = own_codes["city-shinjuku"].clone();
    let portal = own_codes["portal"].clone();
    for (agency, codes) in &own_codes {
        for code in codes {
            secrets.code(agency, code);
        }
    }
    // Handles and links of every valid person.
    let coder = Coder::new(
        &keys,
        AgencyId::new("mhlw").unwrap(),
        Epoch::new(1).unwrap(),
    );
    let linker = Linker::new(&keys);
    for number in &valid {
        let handle = coder.handle(&MyNumber::parse(number.as_bytes()).unwrap());
        secrets.handle(number, *handle.expose_bytes());
        secrets.link(number, linker.link(&handle).unwrap().to_bytes());
    }

    // Seal: mhlw's codes, a Shinjuku code (not mhlw's), a mistyped code.
    let mut seal_in = mhlw[..12].join("\n");
    seal_in.push_str(&format!("\n{}\n{}\n", shinjuku[13], mistyped(&mhlw[14])));
    fs::write(at("in-mhlw-codes.txt"), &seal_in).unwrap();
    let seal = |provider: &str, output: &str| {
        client(
            "mhlw",
            &[
                "seal",
                "--provider",
                provider,
                "--affair",
                "health",
                "--items",
                "local-tax",
                &at("in-mhlw-codes.txt"),
                "-o",
                &at(output),
                "--rejects",
                &at(&format!("{output}.rejects")),
            ],
        )
    };
    let out = seal("city-shinjuku", "out-mhlw-seal.txt");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client seal", &out, Allowed::nothing());
    let out = seal("nta", "out-mhlw-seal-refused.txt");
    assert_eq!(out.status.code(), Some(1), "no rule mhlw → nta");
    seen.output("client seal, no rule", &out, Allowed::nothing());
    let out = seal(&valid[6], "out-mhlw-seal-number.txt");
    assert_eq!(out.status.code(), Some(1), "a number as the provider");
    seen.output(
        "client seal, a number as the provider",
        &out,
        Allowed::nothing(),
    );
    // Redeem: the tokens, a truncated one, a bit-flipped one; by the
    // provider, and by an agency they are not addressed to.
    let sealed = fs::read_to_string(at("out-mhlw-seal.txt")).unwrap();
    let tokens: Vec<&str> = sealed
        .lines()
        .filter_map(|line| line.split(' ').next())
        .filter(|token| !token.is_empty())
        .collect();
    assert_eq!(tokens.len(), 12);
    let mut redeem_in = tokens.join("\n");
    redeem_in.push_str(&format!("\n{}\n", &tokens[0][..30]));
    let mut flipped = tokens[1].as_bytes().to_vec();
    flipped[40] = if flipped[40] == b'A' { b'B' } else { b'A' };
    redeem_in.push_str(&String::from_utf8(flipped).unwrap());
    redeem_in.push('\n');
    fs::write(at("in-tokens.txt"), &redeem_in).unwrap();
    let out = client(
        "city-shinjuku",
        &[
            "redeem",
            &at("in-tokens.txt"),
            "-o",
            &at("out-city-shinjuku-redeem.txt"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client redeem", &out, Allowed::nothing());
    let out = client(
        "portal",
        &[
            "redeem",
            &at("in-tokens.txt"),
            "-o",
            &at("out-portal-redeem.txt"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client redeem, not the addressee", &out, Allowed::nothing());
    // Reidentify: Shinjuku's codes, mhlw's (not Shinjuku's), mistyped; by
    // Shinjuku, and by mhlw, which may not.
    let mut reidentify_in = shinjuku[..10].join("\n");
    reidentify_in.push_str(&format!("\n{}\n{}\n", mhlw[10], mistyped(&shinjuku[11])));
    fs::write(at("in-shinjuku-codes.txt"), &reidentify_in).unwrap();
    let out = client(
        "city-shinjuku",
        &[
            "reidentify",
            &at("in-shinjuku-codes.txt"),
            "-o",
            &at("out-numbers-reidentify.txt"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client reidentify", &out, Allowed::nothing());
    let out = client("mhlw", &["reidentify", &at("in-mhlw-codes.txt")]);
    assert_eq!(out.status.code(), Some(1), "mhlw may not reidentify");
    seen.output("client reidentify, no capability", &out, Allowed::nothing());
    // Delegation: nta derives mhlw's codes (the output is mhlw's); a
    // number typed as the agency acted for is refused without repeating it.
    let out = client(
        "nta",
        &[
            "derive",
            "--on-behalf-of",
            "mhlw",
            &at("in-numbers.txt"),
            "-o",
            &at("out-mhlw-derive-by-nta.txt"),
            "--rejects",
            &at("out-mhlw-derive-by-nta.rejects"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client derive --on-behalf-of", &out, Allowed::nothing());
    assert_eq!(
        first_fields(&fs::read_to_string(at("out-mhlw-derive-by-nta.txt")).unwrap()),
        mhlw
    );
    let out = client(
        "nta",
        &["derive", "--on-behalf-of", &valid[7], &at("in-numbers.txt")],
    );
    assert_eq!(out.status.code(), Some(1), "not an agency in the policy");
    seen.output(
        "client derive --on-behalf-of a number",
        &out,
        Allowed::nothing(),
    );
    // Merger: Shinjuku migrates jps's codes (three, an mhlw code that is
    // not jps's, a mistyped one) into its own.
    fs::write(at("in-jps-numbers.txt"), valid[..3].join("\n")).unwrap();
    let out = client(
        "jps",
        &[
            "derive",
            &at("in-jps-numbers.txt"),
            "-o",
            &at("out-jps-derive.txt"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("client derive jps", &out, Allowed::nothing());
    let jps = first_fields(&fs::read_to_string(at("out-jps-derive.txt")).unwrap());
    for code in &jps {
        secrets.code("jps", code);
    }
    let mut migrate_in = jps.join("\n");
    migrate_in.push_str(&format!("\n{}\n{}\n", mhlw[3], mistyped(&jps[0])));
    fs::write(at("in-jps-codes.txt"), &migrate_in).unwrap();
    let out = client(
        "city-shinjuku",
        &[
            "migrate",
            "--merged",
            "jps",
            &at("in-jps-codes.txt"),
            "-o",
            &at("out-city-shinjuku-migrate.txt"),
            "--rejects",
            &at("out-city-shinjuku-migrate.rejects"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client migrate", &out, Allowed::nothing());
    let migrated = fs::read_to_string(at("out-city-shinjuku-migrate.txt")).unwrap();
    assert_eq!(first_fields(&migrated), shinjuku[..3]);
    let old: Vec<&str> = migrated
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .collect();
    assert_eq!(old, jps, "each new code beside the old one (D218)");
    let out = client(
        "city-shinjuku",
        &["migrate", "--merged", &valid[8], &at("in-jps-codes.txt")],
    );
    assert_eq!(out.status.code(), Some(1), "not an agency in the policy");
    seen.output(
        "client migrate, a number as merged",
        &out,
        Allowed::nothing(),
    );

    // Rekey: mhlw's own codes, a Shinjuku code and a mistyped one.
    let out = client(
        "mhlw",
        &[
            "rekey",
            &at("in-mhlw-codes.txt"),
            "-o",
            &at("out-mhlw-rekey.txt"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client rekey", &out, Allowed::nothing());
    let out = client(STRANGER, &["derive", &at("in-numbers.txt")]);
    assert_eq!(out.status.code(), Some(1), "an unknown certificate");
    seen.output(
        "client derive, unknown certificate",
        &out,
        Allowed::nothing(),
    );

    // ── every RPC of both services and health, directly ──────────────────
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let policy_version = runtime.block_on(rpcs(
        &server.addr,
        &pki,
        &valid,
        &malformed,
        [&mhlw, &shinjuku, &portal],
        &mut seen,
    ));
    runtime.block_on(persons_rpcs(
        &server.addr,
        &pki,
        &valid,
        &malformed,
        &fresh,
        &mut seen,
    ));
    drop(runtime);

    // Both sides of every service were exercised: these answered, those
    // were refused.
    let answered = |name: &str| {
        let response = seen
            .places
            .iter()
            .any(|p| p.name == format!("{name} response"));
        let status = seen
            .places
            .iter()
            .any(|p| p.name == format!("{name} status"));
        (response, status)
    };
    for name in [
        "Derive mhlw",
        "Seal mhlw",
        "Redeem city-shinjuku",
        "Reidentify city-shinjuku",
        "GetCheckpoint",
        "GetConsistencyProof",
        "GetInclusionProof portal",
        "Disclose portal",
        "ReadCopy mhlw page 0",
        "ConfirmProvision city-shinjuku",
        "Reissue jlis",
        "Suspend jlis",
        "GetStatus jlis",
        "Lift jlis",
        "health \"\"",
        "DeriveStream mhlw message 1",
        "SealStream mhlw message 1",
        "RedeemStream city-shinjuku message 1",
        "ReidentifyStream city-shinjuku message 1",
        "Derive nta for mhlw",
        "Migrate city-shinjuku",
        "MigrateStream city-shinjuku message 1",
        "Rekey city-shinjuku",
        "RekeyStream city-shinjuku message 1",
    ] {
        assert_eq!(answered(name), (true, false), "{name} answered");
    }
    for name in [
        "Derive unknown certificate",
        "Derive without capability",
        "Seal no rule",
        "Seal a number as provider",
        "Reidentify without capability",
        "Derive over quota",
        "Derive nta for city-shinjuku",
        "Derive nta for a number",
        "Migrate a number as merged",
        "Migrate no merger",
        "GetConsistencyProof too large",
        "GetInclusionProof without disclose",
        "Disclose another agency's code",
        "Disclose a number",
        "ReadCopy bad request",
        "Reissue to a number with a history",
        "Reissue a malformed number",
        "Reissue without capability",
        "Suspend a malformed number",
        "GetStatus without capability",
        "Lift again",
        "health \"no.such.Service\"",
    ] {
        assert_eq!(answered(name), (false, true), "{name} refused");
    }

    let page = scrape(&metrics, "/metrics");
    assert!(text(&page).contains("200 OK"), "{}", text(&page));
    assert!(text(&page).contains("jps"), "the quota refusal is counted");
    seen.add("/metrics", page, Allowed::nothing());
    seen.add(
        "/elsewhere",
        scrape(&metrics, "/x?123456789018"),
        Allowed::nothing(),
    );
    // ── the admin plane: every admin command, and one refused ────────────
    let mut admin = |name: &str, identity: &str, args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (cert_dir, ca) = if identity == "ops" {
            (at("pki-admin"), pki.join("ca.pem"))
        } else {
            (pki.display().to_string(), pki.join("ca.pem"))
        };
        all.extend([
            "--server".to_owned(),
            format!("https://{admin_port}"),
            "--server-name".to_owned(),
            "localhost".to_owned(),
            "--ca".to_owned(),
            ca.display().to_string(),
            "--cert".to_owned(),
            format!("{cert_dir}/{identity}.pem"),
            "--key".to_owned(),
            format!("{cert_dir}/{identity}.key"),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = run_fugo(&all);
        seen.output(name, &out, Allowed::nothing());
        out
    };
    let out = admin("admin status", "ops", &["admin", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = admin("admin reload-policy", "ops", &["admin", "reload-policy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = admin("admin reload-crls", "ops", &["admin", "reload-crls"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = admin(
        "admin backup",
        "ops",
        &["admin", "backup", "--out", &at("admin-backup")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = admin(
        "admin status, agency certificate",
        "mhlw",
        &["admin", "status"],
    );
    assert!(!out.status.success(), "an agency is no admin");
    // A custodian's share over the admin plane (D204), to a server that is
    // not sealed: refused, and the share is nowhere.
    let shares = fugo::custody::split_key(&master, 3, 2).unwrap();
    for (i, share) in shares.iter().enumerate() {
        secrets.key(&format!("server share {i}"), share.share.expose_value());
    }
    fs::write(at("share-1.txt"), shares[0].to_text().as_bytes()).unwrap();
    fs::set_permissions(
        at("share-1.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = admin(
        "admin unseal, not sealed",
        "ops",
        &["admin", "unseal", &at("share-1.txt")],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("did not start sealed"),
        "{}",
        text(&out.stderr)
    );

    let (code, stdout, stderr) = server.stop();
    assert_eq!(code, Some(0), "{}", text(&stderr));
    assert!(text(&stderr).contains("TRACE"), "full tracing was on");
    assert!(text(&stderr).contains("batch done"), "calls were logged");
    seen.add("server stdout", stdout, Allowed::nothing());
    seen.add("server stderr (trace)", stderr, Allowed::nothing());

    // ── restore of the admin backup into a data directory of its own ────
    let restore_config = root.join("restore.toml");
    fs::write(
        &restore_config,
        fs::read_to_string(&config).unwrap().replace(
            &format!("data_dir = \"{}\"", at("data")),
            &format!("data_dir = \"{}\"", at("restored")),
        ),
    )
    .unwrap();
    let out = run_fugo(&[
        "admin",
        "restore",
        "--config",
        restore_config.to_str().unwrap(),
        "--from",
        &at("admin-backup"),
        "--cert",
        &format!("{}/ops.pem", at("pki-admin")),
        "--key",
        &format!("{}/ops.key", at("pki-admin")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("admin restore", &out, Allowed::nothing());
    let out = run_fugo(&["audit", "verify", "--data-dir", &at("restored")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("audit verify, restored", &out, Allowed::nothing());
    // The backup file itself: encrypted, nothing in any form.
    for (relative, bytes) in files_under(&root.join("admin-backup")) {
        seen.add(
            format!("admin backup {}", relative.display()),
            bytes,
            Allowed::nothing(),
        );
    }

    // ── commands on the data directory, with the server stopped ─────────
    let data = at("data");
    for (name, args) in [
        ("audit pubkey", vec!["audit", "pubkey", "--data-dir", &data]),
        ("audit verify", vec!["audit", "verify", "--data-dir", &data]),
        (
            "audit verify, wrong key",
            vec![
                "audit",
                "verify",
                "--data-dir",
                &data,
                "--pubkey",
                "x+00000000+AQ",
            ],
        ),
        ("audit export", vec!["audit", "export", "--data-dir", &data]),
        (
            "audit export --out",
            vec![
                "audit",
                "export",
                "--data-dir",
                &data,
                "--out",
                &at("out-export.jsonl"),
            ],
        ),
        (
            "audit export --since",
            vec![
                "audit",
                "export",
                "--data-dir",
                &data,
                "--since",
                "2000-01-01",
            ],
        ),
        (
            "audit policy",
            vec!["audit", "policy", "--data-dir", &data, &policy_version],
        ),
        (
            "audit policy, unknown version",
            vec!["audit", "policy", "--data-dir", &data, &"0".repeat(64)],
        ),
        (
            "audit policy, malformed version",
            vec!["audit", "policy", "--data-dir", &data, "xyz"],
        ),
    ] {
        let out = run_fugo(&args);
        seen.output(name, &out, Allowed::nothing());
        if name == "audit verify" || name == "audit export" {
            assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        }
    }
    // Offline derive, recorded in the same trail; and refused.
    let offline = |extra: &[&str]| {
        let mut args = vec![
            "derive",
            "--master-key",
            &at("master.key"),
            "--agency",
            "mhlw",
            "--epoch",
            "1",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_fugo(&args)
    };
    let out = offline(&[
        "--data-dir",
        &data,
        &at("in-numbers.txt"),
        "-o",
        &at("out-mhlw-offline.txt"),
        "--rejects",
        &at("out-mhlw-offline.rejects"),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("derive, recorded", &out, Allowed::nothing());
    assert_eq!(
        first_fields(&fs::read_to_string(at("out-mhlw-offline.txt")).unwrap()),
        mhlw,
        "the offline derive agrees with the server"
    );
    for (name, extra) in [
        ("derive, no data dir", vec![at("in-numbers.txt")]),
        (
            "derive, wrong fingerprint",
            vec![
                "--expect-fingerprint".to_owned(),
                "ffffffffffffffffffffffffffffffff".to_owned(),
                "--data-dir".to_owned(),
                data.clone(),
                at("in-numbers.txt"),
            ],
        ),
        (
            "derive, csv",
            vec![
                "--data-dir".to_owned(),
                data.clone(),
                "--csv".to_owned(),
                "--column".to_owned(),
                "mynumber".to_owned(),
                at("in-numbers.csv"),
            ],
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = offline(&extra);
        let stdout = if name == "derive, csv" {
            Allowed::codes_of("mhlw")
        } else {
            Allowed::nothing()
        };
        seen.output(name, &out, stdout);
    }
    let out = run_fugo(&["audit", "verify", "--data-dir", &data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output(
        "audit verify, after the offline derive",
        &out,
        Allowed::nothing(),
    );
    // ── key custody: split, a sealed start, unseal (refused and taken) ──
    let out = run_fugo(&[
        "keys",
        "split",
        "--shares",
        "3",
        "--threshold",
        "2",
        &at("master.key"),
        "--out",
        &at("shares"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    seen.output("keys split", &out, Allowed::nothing());
    let share_files: Vec<PathBuf> = text(&out.stdout)
        .lines()
        .take(3)
        .map(PathBuf::from)
        .collect();
    for (i, file) in share_files.iter().enumerate() {
        let share = fugo::custody::ShareFile::parse(&fs::read_to_string(file).unwrap()).unwrap();
        secrets.key(&format!("share {}", i + 1), share.share.expose_value());
        printed_shares.push(format!("{share:?}"));
    }
    let out = run_fugo(&[
        "keys",
        "split",
        "--shares",
        "3",
        "--threshold",
        "2",
        "--expect-fingerprint",
        "00000000000000000000000000000000",
        &at("master.key"),
        "--out",
        &at("shares-refused"),
    ]);
    assert_eq!(out.status.code(), Some(1), "a wrong fingerprint is refused");
    seen.output("keys split, wrong fingerprint", &out, Allowed::nothing());
    let sealed_config = root.join("sealed.toml");
    fs::write(
        &sealed_config,
        fs::read_to_string(&config)
            .unwrap()
            .replace(&format!("master_key = \"{}\"\n", at("master.key")), "")
            // This server writes JSON lines, so both log formats are searched.
            + "\n[custody]\nthreshold = 2\n\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    let sealed = Server::start(&sealed_config);
    seen.add(
        "/metrics while sealed",
        scrape(&metrics, "/metrics"),
        Allowed::nothing(),
    );
    // A damaged share: one digit of its value changed.
    let first = fs::read_to_string(&share_files[0]).unwrap();
    let value_at = first.find("value: ").unwrap() + "value: ".len();
    let mut damaged = first.clone().into_bytes();
    damaged[value_at] = if damaged[value_at] == b'0' {
        b'1'
    } else {
        b'0'
    };
    fs::write(at("in-damaged-share.txt"), &damaged).unwrap();
    for (name, share) in [
        ("unseal, damaged share", at("in-damaged-share.txt")),
        (
            "unseal, share 1",
            share_files[0].to_str().unwrap().to_owned(),
        ),
        (
            "unseal, share 1 again",
            share_files[0].to_str().unwrap().to_owned(),
        ),
        (
            "unseal, share 2",
            share_files[1].to_str().unwrap().to_owned(),
        ),
        (
            "unseal, once unsealed",
            share_files[2].to_str().unwrap().to_owned(),
        ),
    ] {
        let out = run_fugo(&["unseal", "--data-dir", &data, &share]);
        match name {
            "unseal, damaged share" => assert!(!out.status.success()),
            "unseal, share 1" => assert!(out.status.success(), "{}", text(&out.stderr)),
            "unseal, share 2" => assert!(text(&out.stdout).starts_with("unsealed:")),
            _ => {}
        }
        seen.output(name, &out, Allowed::nothing());
    }
    // Unsealed: it serves (a derive through the CLI, its output mhlw's).
    let out = Command::new(FUGO)
        .args([
            "client",
            "derive",
            "--server",
            &format!("https://{}", sealed.addr),
        ])
        .args(["--ca", pki.join("ca.pem").to_str().unwrap()])
        .args(["--cert", pki.join("mhlw.pem").to_str().unwrap()])
        .args(["--key", pki.join("mhlw.key").to_str().unwrap()])
        .args([
            &at("in-numbers.txt"),
            "-o",
            &at("out-mhlw-after-unseal.txt"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    seen.output("client derive, after unsealing", &out, Allowed::nothing());
    seen.add(
        "/metrics once unsealed",
        scrape(&metrics, "/metrics"),
        Allowed::nothing(),
    );
    let (code, stdout, stderr) = sealed.stop();
    assert_eq!(code, Some(0), "{}", text(&stderr));
    assert!(text(&stderr).contains("TRACE"), "full tracing was on");
    for line in text(&stderr).lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
    seen.add("sealed server stdout", stdout, Allowed::nothing());
    seen.add(
        "sealed server stderr (JSON lines, trace)",
        stderr,
        Allowed::nothing(),
    );
    seen.add(
        "Debug of the share files",
        printed_shares.join("\n"),
        Allowed::nothing(),
    );

    // The server refuses the demo key in production mode.
    let demo_config = root.join("demo.toml");
    fs::write(
        &demo_config,
        fs::read_to_string(&config)
            .unwrap()
            .replace(&at("master.key"), demo_key_path().to_str().unwrap())
            .replace(&fingerprint, common::DEMO_FINGERPRINT),
    )
    .unwrap();
    let out = run_fugo(&["serve", "--config", demo_config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    seen.output("serve, demo key in production", &out, Allowed::nothing());

    // ── the data directory and a backup copy of it ──────────────────────
    copy_dir(&root.join("data"), &root.join("backup"));
    let mut store_files = 0;
    for (top, label) in [
        ("data", "data dir"),
        ("backup", "backup"),
        ("restored", "restored data dir"),
    ] {
        for (relative, bytes) in files_under(&root.join(top)) {
            store_files += usize::from(relative.ends_with(fugo::audit::STORE_FILE));
            seen.add(
                format!("{label} {}", relative.display()),
                bytes,
                Allowed::store(),
            );
        }
    }
    assert_eq!(
        store_files, 3,
        "the store, its copy and its restored backup were searched"
    );

    // ── every output file, by whom it is addressed to ───────────────────
    for (relative, bytes) in files_under(root) {
        let name = relative.to_str().unwrap().to_owned();
        if !name.starts_with("out-") {
            continue;
        }
        let allowed = if name.ends_with(".rejects") || name.ends_with(".checkpoint") {
            Allowed::nothing()
        } else if name.starts_with("out-numbers-") {
            Allowed {
                numbers: true,
                ..Allowed::nothing()
            }
        } else if let Some(agency) = AGENCIES
            .iter()
            .find(|a| name.starts_with(&format!("out-{a}-")) && !name.contains("-seal"))
        {
            Allowed::codes_of(agency)
        } else {
            Allowed::nothing()
        };
        // Shinjuku's migrate output pairs each of its codes with the jps
        // code it was given (D218).
        let allowed = if name == "out-city-shinjuku-migrate.txt" {
            Allowed {
                merged_codes_of: Some("jps".to_owned()),
                ..allowed
            }
        } else {
            allowed
        };
        // An append-mode CSV keeps its input column: the agency's own
        // numbers; only codes of others are searched for there.
        let allowed = if name.ends_with("-derive.csv") {
            Allowed {
                numbers: true,
                ..allowed
            }
        } else {
            allowed
        };
        seen.add(format!("file {name}"), bytes, allowed);
    }
    let outputs = seen
        .places
        .iter()
        .filter(|p| p.name.starts_with("file "))
        .count();
    assert!(outputs >= 15, "{outputs} output files");

    let leaks = secrets.leaks(&seen.places);
    assert!(
        leaks.is_empty(),
        "{} leaks:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // The search is not vacuous: the allowed places hold what they may.
    let allowed_hits = Secrets::leaks(
        &secrets,
        &seen
            .places
            .iter()
            .filter(|p| p.allowed != Allowed::nothing())
            .map(|p| Place::new(p.name.clone(), p.bytes.clone(), Allowed::nothing()))
            .collect::<Vec<_>>(),
    );
    for expected in [
        "out-mhlw-derive.txt",
        "out-numbers-reidentify.txt",
        "audit.redb",
        "ReadCopy",
    ] {
        assert!(
            allowed_hits.iter().any(|hit| hit.contains(expected)),
            "{expected} holds what it may: {}",
            allowed_hits.len()
        );
    }
}

/// Calls every RPC of fugo.v1.Codes (unary and stream), fugo.v1.Audit and
/// health, with good and bad requests; records every response and status.
/// Returns the policy version the server answered with.
async fn rpcs(
    addr: &str,
    pki: &Path,
    valid: &[String],
    malformed: &[String],
    [mhlw, shinjuku, portal]: [&Vec<String>; 3],
    seen: &mut Seen,
) -> String {
    let mut m = caller(addr, pki, "mhlw").await;
    let mut s = caller(addr, pki, "city-shinjuku").await;
    let mut p = caller(addr, pki, "portal").await;
    let n = caller(addr, pki, "nta").await;
    let x = caller(addr, pki, STRANGER).await;
    let mut j = caller(addr, pki, "jps").await;
    let own = Allowed::codes_of;

    // Derive: good and bad numbers; empty and duplicated batches; an
    // agency without the capability; an unknown certificate.
    let mut numbers: Vec<String> = valid.to_vec();
    numbers.extend(malformed.iter().cloned());
    let answer = m
        .codes
        .derive(pb::DeriveRequest {
            numbers: numbers.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    let policy_version = answer.as_ref().unwrap().get_ref().policy_version.clone();
    seen.answer("Derive mhlw", &answer, own("mhlw"));
    for (name, caller, request, allowed) in [
        (
            "Derive duplicate",
            m.clone(),
            vec![valid[0].clone(), valid[0].clone()],
            own("mhlw"),
        ),
        (
            "Derive without capability",
            n.clone(),
            numbers.clone(),
            own("nta"),
        ),
        (
            "Derive unknown certificate",
            x.clone(),
            numbers.clone(),
            Allowed::nothing(),
        ),
    ] {
        let mut caller = caller;
        let answer = caller
            .codes
            .derive(pb::DeriveRequest {
                numbers: request,
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await;
        seen.answer(name, &answer, allowed);
    }
    // On behalf of another agency: nta for mhlw (mhlw's codes); for an
    // agency it may not act for; a number typed as the agency.
    for (name, on_behalf_of, allowed) in [
        ("Derive nta for mhlw", "mhlw".to_owned(), own("mhlw")),
        (
            "Derive nta for city-shinjuku",
            "city-shinjuku".to_owned(),
            Allowed::nothing(),
        ),
        (
            "Derive nta for a number",
            valid[9].clone(),
            Allowed::nothing(),
        ),
    ] {
        let mut caller = n.clone();
        let answer = caller
            .codes
            .derive(pb::DeriveRequest {
                epoch: 0,
                numbers: numbers.clone(),
                on_behalf_of,
            })
            .await;
        seen.answer(name, &answer, allowed);
    }
    // Migrate: codes that are not jps's, mistyped ones, and malformed;
    // a number typed as the merged agency; mhlw, which merged no one.
    let mut old_codes: Vec<String> = mhlw[..4].to_vec();
    old_codes.push(mistyped(&mhlw[4]));
    old_codes.extend(malformed.iter().cloned());
    for (name, caller, merged, allowed) in [
        (
            "Migrate city-shinjuku",
            s.clone(),
            "jps".to_owned(),
            own("city-shinjuku"),
        ),
        (
            "Migrate a number as merged",
            s.clone(),
            valid[10].clone(),
            Allowed::nothing(),
        ),
        (
            "Migrate no merger",
            m.clone(),
            "jps".to_owned(),
            Allowed::nothing(),
        ),
    ] {
        let mut caller = caller;
        let answer = caller
            .codes
            .migrate(pb::MigrateRequest {
                merged,
                codes: old_codes.clone(),
            })
            .await;
        seen.answer(name, &answer, allowed);
    }
    let stream = s
        .codes
        .migrate_stream(tokio_stream::iter(vec![
            pb::MigrateRequest {
                merged: "jps".to_owned(),
                codes: old_codes.clone(),
            },
            pb::MigrateRequest {
                merged: "jps".to_owned(),
                codes: malformed.to_vec(),
            },
        ]))
        .await;
    collect_stream(
        "MigrateStream city-shinjuku",
        stream,
        own("city-shinjuku"),
        seen,
    )
    .await;

    // An empty batch; a batch over jps's day quota (5): RESOURCE_EXHAUSTED
    // with RetryInfo.
    let answer = m
        .codes
        .derive(pb::DeriveRequest {
            numbers: vec![],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    seen.answer("Derive empty", &answer, own("mhlw"));
    let answer = j
        .codes
        .derive(pb::DeriveRequest {
            numbers: numbers.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    seen.answer("Derive over quota", &answer, own("jps"));
    let batches = vec![
        pb::DeriveRequest {
            epoch: 0,
            numbers: valid[..5].to_vec(),
            on_behalf_of: String::new(),
        },
        pb::DeriveRequest {
            epoch: 0,
            numbers: malformed.to_vec(),
            on_behalf_of: String::new(),
        },
    ];
    let stream = m.codes.derive_stream(tokio_stream::iter(batches)).await;
    collect_stream("DeriveStream mhlw", stream, own("mhlw"), seen).await;
    let stream = m
        .codes
        .derive_stream(tokio_stream::iter(vec![pb::DeriveRequest {
            numbers: vec![],
            on_behalf_of: String::new(),
            epoch: 0,
        }]))
        .await;
    collect_stream("DeriveStream empty", stream, own("mhlw"), seen).await;

    // Seal: good, foreign and mistyped codes; bad fields; no rule.
    let seal_request = |codes: Vec<String>| pb::SealRequest {
        provider: "city-shinjuku".to_owned(),
        affair: "health".to_owned(),
        items: vec!["local-tax".to_owned()],
        non_disclosure_until: 0,
        codes,
        on_behalf_of: String::new(),
    };
    let mut codes: Vec<String> = mhlw[..8].to_vec();
    codes.push(shinjuku[9].clone());
    codes.push(mistyped(&mhlw[10]));
    codes.push(valid[11].clone());
    let answer = m.codes.seal(seal_request(codes.clone())).await;
    let tokens: Vec<Vec<u8>> = answer
        .as_ref()
        .unwrap()
        .get_ref()
        .results
        .iter()
        .filter_map(|r| match &r.result {
            Some(pb::seal_result::Result::Sealed(sealed)) => Some(sealed.token.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 8);
    seen.answer("Seal mhlw", &answer, Allowed::nothing());
    let mut bad_provider = seal_request(codes.clone());
    bad_provider.provider = "NOT an id".to_owned();
    let mut no_rule = seal_request(codes.clone());
    no_rule.provider = "nta".to_owned();
    let mut bad_items = seal_request(codes.clone());
    bad_items.items = vec!["salary".to_owned()];
    let mut past = seal_request(codes.clone());
    past.non_disclosure_until = -5;
    // A number typed into a context field: refused, and not echoed.
    let mut number_provider = seal_request(codes.clone());
    number_provider.provider = valid[3].clone();
    let mut number_affair = seal_request(codes.clone());
    number_affair.affair = valid[4].clone();
    let mut number_item = seal_request(codes.clone());
    number_item.items = vec!["local-tax".to_owned(), valid[5].clone()];
    let mut number_twice = seal_request(codes.clone());
    number_twice.items = vec![valid[7].clone(), valid[7].clone()];
    for (name, caller, request) in [
        ("Seal bad provider", m.clone(), bad_provider),
        ("Seal no rule", m.clone(), no_rule),
        ("Seal item not in rule", m.clone(), bad_items),
        ("Seal negative non-disclosure", m.clone(), past),
        ("Seal a number as provider", m.clone(), number_provider),
        ("Seal a number as affair", m.clone(), number_affair),
        ("Seal a number as item", m.clone(), number_item),
        ("Seal a number twice as item", m.clone(), number_twice),
        (
            "Seal by another requester",
            s.clone(),
            seal_request(shinjuku[..3].to_vec()),
        ),
    ] {
        let mut caller = caller;
        let answer = caller.codes.seal(request).await;
        seen.answer(name, &answer, Allowed::nothing());
    }
    let stream = m
        .codes
        .seal_stream(tokio_stream::iter(vec![
            seal_request(mhlw[12..14].to_vec()),
            seal_request(vec![shinjuku[0].clone(), mistyped(&mhlw[0])]),
        ]))
        .await;
    collect_stream("SealStream mhlw", stream, Allowed::nothing(), seen).await;

    // Redeem: the tokens, truncated, bit-flipped, wrong addressee.
    let mut redeem_tokens = tokens.clone();
    redeem_tokens.push(tokens[0][..20].to_vec());
    let mut flipped = tokens[1].clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    redeem_tokens.push(flipped);
    redeem_tokens.push(Vec::new());
    let answer = s
        .codes
        .redeem(pb::RedeemRequest {
            tokens: redeem_tokens.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    let serials: Vec<Vec<u8>> = answer
        .as_ref()
        .unwrap()
        .get_ref()
        .results
        .iter()
        .filter_map(|r| match &r.result {
            Some(pb::redeem_result::Result::Redeemed(redeemed)) => Some(redeemed.serial.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(serials.len(), 8);
    seen.answer("Redeem city-shinjuku", &answer, own("city-shinjuku"));
    let answer = p
        .codes
        .redeem(pb::RedeemRequest {
            tokens: tokens.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    seen.answer("Redeem not the addressee", &answer, own("portal"));
    let answer = s
        .codes
        .redeem(pb::RedeemRequest {
            tokens: vec![],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await;
    seen.answer("Redeem empty", &answer, own("city-shinjuku"));
    let stream = s
        .codes
        .redeem_stream(tokio_stream::iter(vec![
            pb::RedeemRequest {
                epoch: 0,
                tokens: tokens[..2].to_vec(),
                on_behalf_of: String::new(),
            },
            pb::RedeemRequest {
                epoch: 0,
                tokens: redeem_tokens[8..].to_vec(),
                on_behalf_of: String::new(),
            },
        ]))
        .await;
    collect_stream(
        "RedeemStream city-shinjuku",
        stream,
        own("city-shinjuku"),
        seen,
    )
    .await;

    // Reidentify: own, foreign and mistyped codes; without the capability.
    let mut codes: Vec<String> = shinjuku[..6].to_vec();
    codes.push(mhlw[6].clone());
    codes.push(mistyped(&shinjuku[7]));
    codes.push(valid[8].clone());
    let answer = s
        .codes
        .reidentify(pb::ReidentifyRequest {
            codes: codes.clone(),
        })
        .await;
    seen.answer(
        "Reidentify city-shinjuku",
        &answer,
        Allowed {
            numbers: true,
            ..Allowed::nothing()
        },
    );
    let answer = m
        .codes
        .reidentify(pb::ReidentifyRequest {
            codes: mhlw[..3].to_vec(),
        })
        .await;
    assert!(answer.is_err());
    seen.answer("Reidentify without capability", &answer, Allowed::nothing());
    let stream = s
        .codes
        .reidentify_stream(tokio_stream::iter(vec![
            pb::ReidentifyRequest {
                codes: shinjuku[..2].to_vec(),
            },
            pb::ReidentifyRequest {
                codes: vec![mhlw[0].clone(), portal[0].clone()],
            },
        ]))
        .await;
    collect_stream(
        "ReidentifyStream city-shinjuku",
        stream,
        Allowed {
            numbers: true,
            ..Allowed::nothing()
        },
        seen,
    )
    .await;

    // Rekey: own, foreign and mistyped codes (no capability needed).
    let answer = s
        .codes
        .rekey(pb::RekeyRequest {
            codes: codes.clone(),
        })
        .await;
    assert!(answer.is_ok());
    seen.answer("Rekey city-shinjuku", &answer, own("city-shinjuku"));
    let stream = s
        .codes
        .rekey_stream(tokio_stream::iter(vec![
            pb::RekeyRequest {
                codes: shinjuku[..2].to_vec(),
            },
            pb::RekeyRequest {
                codes: vec![mhlw[0].clone(), portal[0].clone()],
            },
        ]))
        .await;
    collect_stream(
        "RekeyStream city-shinjuku",
        stream,
        own("city-shinjuku"),
        seen,
    )
    .await;

    // Audit: checkpoints and proofs, disclosure, copies, confirmations.
    // Wait (bounded) for a checkpoint covering the calls above.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = m.audit.get_checkpoint(pb::GetCheckpointRequest {}).await;
        let signed = answer
            .as_ref()
            .map(|r| r.get_ref().checkpoint.clone())
            .unwrap_or_default();
        seen.answer("GetCheckpoint", &answer, Allowed::nothing());
        let size: u64 = signed
            .lines()
            .nth(1)
            .and_then(|line| line.parse().ok())
            .unwrap_or(0);
        if size > 100 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, request) in [
        (
            "GetConsistencyProof",
            pb::GetConsistencyProofRequest {
                old_size: 1,
                new_size: 0,
            },
        ),
        (
            "GetConsistencyProof too large",
            pb::GetConsistencyProofRequest {
                old_size: 1 << 40,
                new_size: 0,
            },
        ),
    ] {
        let answer = m.audit.get_consistency_proof(request).await;
        seen.answer(name, &answer, Allowed::nothing());
    }
    for (name, caller, sequence) in [
        ("GetInclusionProof portal", p.clone(), 3),
        ("GetInclusionProof out of range", p.clone(), 1 << 40),
        ("GetInclusionProof without disclose", m.clone(), 3),
    ] {
        let mut caller = caller;
        let answer = caller
            .audit
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                sequence,
                tree_size: 0,
            })
            .await;
        seen.answer(name, &answer, Allowed::nothing());
    }
    let disclose = |code: &str, token: &str| pb::DiscloseRequest {
        code: code.to_owned(),
        page_size: 2,
        page_token: token.to_owned(),
        with_proofs: true,
    };
    let answer = p.audit.disclose(disclose(&portal[0], "")).await;
    let next = answer
        .as_ref()
        .map(|r| r.get_ref().next_page_token.clone())
        .unwrap_or_default();
    seen.answer("Disclose portal", &answer, own("portal"));
    for (name, caller, request) in [
        ("Disclose next page", p.clone(), disclose(&portal[0], &next)),
        (
            "Disclose another agency's code",
            p.clone(),
            disclose(&mhlw[0], ""),
        ),
        (
            "Disclose a mistyped code",
            p.clone(),
            disclose(&mistyped(&portal[1]), ""),
        ),
        ("Disclose a number", p.clone(), disclose(&valid[2], "")),
        (
            "Disclose a bad page token",
            p.clone(),
            disclose(&portal[0], "AAAA"),
        ),
        (
            "Disclose a number as page token",
            p.clone(),
            disclose(&portal[0], &valid[9]),
        ),
        (
            "Disclose without disclose",
            m.clone(),
            disclose(&mhlw[0], ""),
        ),
    ] {
        let mut caller = caller;
        let answer = caller.audit.disclose(request).await;
        seen.answer(name, &answer, own("portal"));
    }
    for (name, caller, agency) in [
        ("ReadCopy mhlw", m.clone(), "mhlw"),
        ("ReadCopy city-shinjuku", s.clone(), "city-shinjuku"),
        ("ReadCopy portal", p.clone(), "portal"),
        ("ReadCopy nta", n.clone(), "nta"),
    ] {
        let mut caller = caller;
        let mut token = String::new();
        for page in 0..50 {
            let answer = caller
                .audit
                .read_copy(pb::ReadCopyRequest {
                    page_size: 1000,
                    page_token: token.clone(),
                })
                .await;
            seen.answer(&format!("{name} page {page}"), &answer, own(agency));
            token = answer
                .map(|r| r.into_inner().next_page_token)
                .unwrap_or_default();
            if token.is_empty() {
                break;
            }
        }
    }
    let answer = m
        .audit
        .read_copy(pb::ReadCopyRequest {
            page_size: 5000,
            page_token: "!!".to_owned(),
        })
        .await;
    seen.answer("ReadCopy bad request", &answer, own("mhlw"));
    let answer = m
        .audit
        .read_copy(pb::ReadCopyRequest {
            page_size: 10,
            page_token: valid[10].clone(),
        })
        .await;
    seen.answer("ReadCopy a number as page token", &answer, own("mhlw"));
    let mut confirmations: Vec<pb::Confirmation> = serials
        .iter()
        .take(3)
        .map(|serial| pb::Confirmation {
            serial: serial.clone(),
            provided: true,
        })
        .collect();
    confirmations.push(pb::Confirmation {
        serial: serials[0].clone(),
        provided: false,
    });
    confirmations.push(pb::Confirmation {
        serial: vec![7; 16],
        provided: true,
    });
    confirmations.push(pb::Confirmation {
        serial: vec![7; 3],
        provided: true,
    });
    let answer = s
        .audit
        .confirm_provision(pb::ConfirmProvisionRequest {
            confirmations: confirmations.clone(),
        })
        .await;
    seen.answer(
        "ConfirmProvision city-shinjuku",
        &answer,
        Allowed::nothing(),
    );
    let answer = m
        .audit
        .confirm_provision(pb::ConfirmProvisionRequest { confirmations })
        .await;
    seen.answer(
        "ConfirmProvision not the provider",
        &answer,
        Allowed::nothing(),
    );

    // Health: the server, each service, an unknown service.
    for service in ["", "fugo.v1.Codes", "fugo.v1.Audit", "no.such.Service"] {
        let answer = m
            .health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await;
        seen.answer(&format!("health {service:?}"), &answer, Allowed::nothing());
    }
    policy_version
}

/// Every `fugo.v1.Persons` RPC, answered and refused, and derives of the
/// numbers it changed (`fresh`: used nowhere else).
async fn persons_rpcs(
    addr: &str,
    pki: &Path,
    valid: &[String],
    malformed: &[String],
    fresh: &[String],
    seen: &mut Seen,
) {
    let channel = |identity: &'static str| async move {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(fs::read(pki.join("ca.pem")).unwrap()))
            .domain_name("localhost")
            .identity(Identity::from_pem(
                fs::read(pki.join(format!("{identity}.pem"))).unwrap(),
                fs::read(pki.join(format!("{identity}.key"))).unwrap(),
            ));
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    };
    let mut jlis = PersonsClient::new(channel("jlis").await);
    let mut mhlw = PersonsClient::new(channel("mhlw").await);
    let mut mhlw_codes = CodesClient::new(channel("mhlw").await);
    let reissue = |old: &str, new: &str| pb::ReissueRequest {
        old_number: old.to_owned(),
        new_number: new.to_owned(),
    };
    let answer = jlis.reissue(reissue(&fresh[0], &fresh[1])).await;
    seen.answer("Reissue jlis", &answer, Allowed::nothing());
    let answer = jlis.reissue(reissue(&fresh[1], &valid[3])).await;
    seen.answer(
        "Reissue to a number with a history",
        &answer,
        Allowed::nothing(),
    );
    let answer = jlis.reissue(reissue(&fresh[1], &malformed[0])).await;
    seen.answer("Reissue a malformed number", &answer, Allowed::nothing());
    let answer = mhlw.reissue(reissue(&fresh[1], &valid[4])).await;
    seen.answer("Reissue without capability", &answer, Allowed::nothing());
    // Derive of both: the person's code, and "number superseded".
    let answer = mhlw_codes
        .derive(pb::DeriveRequest {
            numbers: fresh.to_vec(),
            ..Default::default()
        })
        .await;
    seen.answer("Derive re-issued mhlw", &answer, Allowed::codes_of("mhlw"));
    let suspend = |number: &str| pb::SuspendRequest {
        number: number.to_owned(),
        reason: pb::SuspensionReason::FraudHold.into(),
    };
    let answer = jlis.suspend(suspend(&fresh[1])).await;
    seen.answer("Suspend jlis", &answer, Allowed::nothing());
    let answer = jlis.suspend(suspend(&malformed[1])).await;
    seen.answer("Suspend a malformed number", &answer, Allowed::nothing());
    let status = |number: &str| pb::GetStatusRequest {
        number: number.to_owned(),
    };
    let answer = jlis.get_status(status(&fresh[1])).await;
    seen.answer("GetStatus jlis", &answer, Allowed::nothing());
    let answer = mhlw.get_status(status(&fresh[1])).await;
    seen.answer("GetStatus without capability", &answer, Allowed::nothing());
    let lift = |number: &str| pb::LiftRequest {
        number: number.to_owned(),
    };
    let answer = jlis.lift(lift(&fresh[1])).await;
    seen.answer("Lift jlis", &answer, Allowed::nothing());
    let answer = jlis.lift(lift(&fresh[1])).await;
    seen.answer("Lift again", &answer, Allowed::nothing());
}

/// Reads a stream to its end (or its failing status), recording each.
async fn collect_stream<M: prost::Message + std::fmt::Debug>(
    name: &str,
    opened: Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>,
    allowed: Allowed,
    seen: &mut Seen,
) {
    let mut stream = match opened {
        Ok(stream) => stream.into_inner(),
        Err(status) => return seen.status(name, &status),
    };
    let mut index = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(message))) => {
                seen.response(
                    &format!("{name} message {index}"),
                    &tonic::Response::new(message),
                    allowed.clone(),
                );
                index += 1;
            }
            Ok(Ok(None)) => break,
            Ok(Err(status)) => {
                seen.status(&format!("{name} message {index}"), &status);
                break;
            }
            Err(_) => panic!("{name}: no answer within 10 s"),
        }
    }
}
