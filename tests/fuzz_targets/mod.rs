//! The bodies of fugo's fuzz targets, shared by two runners (D153):
//!
//! - `fuzz/` (cargo-fuzz, libFuzzer, nightly): each target there is one
//!   line that calls a function here (`#[path]` include);
//! - `tests/fuzz.rs` (stable, part of `cargo test`): a few thousand cases
//!   per target from a seeded generator, random bytes and byte-level
//!   mutations of the valid inputs [`seeds`] gives.
//!
//! Each body takes arbitrary bytes and asserts that the parser under test
//! does not panic, answers with its documented error type and variant, and
//! never repeats a secret in an error: no error message, reject line or
//! status carries a run of eight or more ASCII digits (every message names
//! positions, lengths and line numbers, all far shorter), so a number
//! echoed back in any form of digits is caught.
#![allow(dead_code, unreachable_pub)] // each runner uses what it needs

use std::sync::OnceLock;

use fugo::agency::{AgencyId, Epoch};
use fugo::code::Coder;
use fugo::code_text::{self, CodeTextError};
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber::{self, MyNumber, ParseError};
use fugo::proto::fugo::v1 as pb;
use fugo::token::{KeyName, SealKey, TokenError, Window};

/// A target body: arbitrary bytes in, a panic on a broken property.
pub type Body = fn(&[u8]);

/// The fuzz targets, by name: the same names as the files in
/// `fuzz/fuzz_targets/`.
pub const TARGETS: [(&str, Body); 6] = [
    ("number", number),
    ("code_text", code_text),
    ("token", token),
    ("policy", policy),
    ("csv", csv),
    ("request", request),
];

/// The policy the token and request targets run under.
pub const POLICY: &str = r#"
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
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "portal"
name = "Portal"
certificates = ["portal"]
capabilities = ["disclose"]
epoch = 1

[[agency]]
id = "nta"
name = "NTA"
certificates = ["nta"]
capabilities = []
epoch = 1

[[affair]]
id = "health"
name = "health insurance"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax", "resident-register"]
token_lifetime_seconds = 3600
non_disclosure = true
non_disclosure_max_days = 30

[[delegation]]
agent = "nta"
on_behalf_of = ["mhlw"]

[[merger]]
merged = "mhlw"
into = "city-shinjuku"
"#;

const CALLERS: [&str; 4] = ["mhlw", "city-shinjuku", "portal", "nta"];

fn master() -> MasterKey {
    MasterKey::from_bytes(std::array::from_fn(|i| (i as u8).wrapping_mul(7) ^ 0xa5))
}

/// True if `text` holds a run of `8` or more ASCII digits.
fn has_digit_run(text: &[u8]) -> bool {
    let mut run = 0;
    for byte in text {
        run = if byte.is_ascii_digit() { run + 1 } else { 0 };
        if run >= 8 {
            return true;
        }
    }
    false
}

pub fn assert_no_digits_echoed(what: &str, message: &str) {
    assert!(
        !has_digit_run(message.as_bytes()),
        "{what} repeats a run of digits: {message:?}"
    );
}

// ── number ──────────────────────────────────────────────────────────────

/// `MyNumber::parse`: `Ok` exactly for 12 ASCII digits whose last is the
/// check digit of the others; otherwise the first rule broken, as
/// [`ParseError`] lists them.
pub fn number(data: &[u8]) {
    let all_digits = data.iter().all(u8::is_ascii_digit);
    match MyNumber::parse(data) {
        Ok(number) => {
            assert_eq!(&number.expose_digits()[..], data);
            let digits: [u8; 12] = std::array::from_fn(|i| data[i] - b'0');
            assert_eq!(mynumber::check_digit(&digits), digits[11]);
            assert!(MyNumber::from_value(number.expose_value()).is_ok());
        }
        Err(error) => {
            match error {
                ParseError::Empty => assert!(data.is_empty()),
                ParseError::NotADigit { position } => {
                    assert!((1..=data.len()).contains(&position));
                    assert!(!data[position - 1].is_ascii_digit());
                    assert!(data[..position - 1].iter().all(u8::is_ascii_digit));
                }
                ParseError::WrongLength { length } => {
                    assert!(all_digits && length == data.len() && length != 12);
                }
                ParseError::CheckDigit => assert!(all_digits && data.len() == 12),
                other => panic!("undocumented error {other:?}"),
            }
            assert_no_digits_echoed("a number error", &error.to_string());
        }
    }
}

// ── code text ───────────────────────────────────────────────────────────

/// What a reader makes of one byte of a code: its canonical symbol, a
/// hyphen (skipped), or nothing (invalid).
fn canonical(byte: u8) -> Option<Option<u8>> {
    match byte.to_ascii_uppercase() {
        b'-' => Some(None),
        b'I' | b'L' => Some(Some(b'1')),
        b'O' => Some(Some(b'0')),
        upper if code_text::ALPHABET.contains(&upper) => Some(Some(upper)),
        _ => None,
    }
}

/// `code_text::decode` (and `AgencyCode::parse`): `Ok` only for 29 symbols
/// that encode back to the same text (read forgivingly: case, I/L/O,
/// hyphens); otherwise the documented [`CodeTextError`].
pub fn code_text(data: &[u8]) {
    let decoded = code_text::decode(data);
    let parsed = fugo::code::AgencyCode::parse(data);
    assert_eq!(decoded.is_ok(), parsed.is_ok());
    match decoded {
        Ok((epoch, bytes)) => {
            let normal: Vec<u8> = data
                .iter()
                .filter_map(|b| canonical(*b).flatten())
                .collect();
            assert_eq!(&code_text::encode(epoch, &bytes)[..], &normal[..]);
            let code = parsed.unwrap_or_else(|e| panic!("decode and parse disagree: {e}"));
            assert_eq!((code.epoch(), *code.bytes()), (epoch, bytes));
        }
        Err(error) => {
            match error {
                CodeTextError::InvalidCharacter { position } => {
                    assert!((1..=data.len()).contains(&position));
                    assert!(canonical(data[position - 1]).is_none());
                    assert!(data[..position - 1].iter().all(|b| canonical(*b).is_some()));
                }
                CodeTextError::WrongLength { length } => {
                    assert_ne!(length, code_text::TEXT_LEN);
                    assert!(data.iter().all(|b| canonical(*b).is_some()));
                }
                CodeTextError::BadCheckCharacter
                | CodeTextError::UnknownVersion
                | CodeTextError::EpochZero
                | CodeTextError::NonZeroPadding => {}
                other => panic!("undocumented error {other:?}"),
            }
            assert_no_digits_echoed("a code error", &error.to_string());
        }
    }
}

// ── token ───────────────────────────────────────────────────────────────

/// The window the token fixtures seal in.
const WINDOW: u32 = 20_000;

struct TokenFixture {
    /// Keys of one addressee: format 2 (window and key index) and format 1
    /// (window only), which still opens.
    keys: [SealKey; 2],
    /// Tokens sealed under each key (index into `keys`): the only bytes
    /// that may open, and only under their own key.
    tokens: Vec<(usize, Vec<u8>)>,
}

fn token_fixture() -> &'static TokenFixture {
    static FIXTURE: OnceLock<TokenFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let hierarchy = KeyHierarchy::new(&master());
        let shinjuku = AgencyId::new("city-shinjuku").unwrap();
        let window = Window::new(WINDOW);
        let keys = [
            SealKey::new(&hierarchy, &shinjuku, KeyName::indexed(window, 0x1234_5678)).unwrap(),
            SealKey::new(&hierarchy, &shinjuku, KeyName::format1(window)).unwrap(),
        ];
        let coder = Coder::new(
            &hierarchy,
            AgencyId::new("mhlw").unwrap(),
            Epoch::new(1).unwrap(),
        );
        let tokens = (0..4u64)
            .map(|i| {
                let number =
                    MyNumber::parse(&mynumber::with_check_digit(i * 1_000_003 + 7)).unwrap();
                let code = coder.derive(&number);
                let claims = fugo::token::Claims {
                    handle: coder.open(&code).unwrap(),
                    serial: fugo::token::Serial::from_bytes([i as u8; 16]),
                    requester: AgencyId::new("mhlw").unwrap(),
                    affair: fugo::agency::AffairId::new("health").unwrap(),
                    items: vec![fugo::agency::ItemId::new("local-tax").unwrap()],
                    expires_at: u64::from(WINDOW) * 86_400 + 3600,
                    non_disclosure_until: (i % 2 == 1).then_some(1_800_000_000),
                };
                let key = (i % 2) as usize;
                let token = keys[key].seal(&claims, [i as u8; 12]).unwrap();
                (key, token.as_bytes().to_vec())
            })
            .collect();
        TokenFixture { keys, tokens }
    })
}

/// Opening a token (`token::peek`, `SealKey::open_bytes`, `open_parts`,
/// under a format-2 and a format-1 key): the documented [`TokenError`]s,
/// and nothing opens but a token sealed under that very key, unchanged.
/// With the first byte odd, the rest is XORed into a genuine token (so a
/// fuzzer without a corpus still mutates real tokens); otherwise it is the
/// token.
pub fn token(data: &[u8]) {
    let fixture = token_fixture();
    let bytes: Vec<u8> = match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => {
            let (_, genuine) = &fixture.tokens[usize::from(mode >> 1) % fixture.tokens.len()];
            let mut token = genuine.clone();
            for (i, x) in rest.iter().enumerate() {
                if let Some(byte) = token.get_mut(i) {
                    *byte ^= x;
                } else {
                    token.push(*x);
                }
            }
            token
        }
        _ => data.to_vec(),
    };
    match fugo::token::peek(&bytes) {
        Ok(_) | Err(TokenError::Malformed | TokenError::UnknownFormat) => {}
        Err(other) => panic!("peek: undocumented error {other:?}"),
    }
    for (index, key) in fixture.keys.iter().enumerate() {
        let genuine = fixture.tokens.contains(&(index, bytes.clone()));
        match key.open_bytes(&bytes) {
            Ok(claims) => {
                assert!(genuine, "a changed token opened");
                assert!(claims.items.len() <= fugo::token::MAX_ITEMS);
            }
            Err(error) => {
                assert!(!genuine, "a genuine token was refused: {error}");
                assert!(
                    matches!(
                        error,
                        TokenError::Malformed
                            | TokenError::UnknownFormat
                            | TokenError::WrongAddressee
                            | TokenError::WrongWindow
                            | TokenError::Forged
                    ),
                    "open: undocumented error {error:?}"
                );
            }
        }
        assert_eq!(key.open_parts(&bytes).is_ok(), genuine);
    }
}

// ── policy ──────────────────────────────────────────────────────────────

/// `fugo::policy::parse` (the policy file's TOML and every consistency
/// rule): `Ok` or a non-empty list of problems, each on a line of the file
/// (0: the whole file); a policy that parses names only agencies, affairs
/// and rules that exist, and parses again to the same version.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.lines().count() + 1;
    match fugo::policy::parse(text) {
        Ok(policy) => {
            assert_eq!(
                policy.version(),
                &fugo::policy::PolicyVersion::of_text(text)
            );
            for rule in policy.rules() {
                assert!(policy.agency(&rule.requester).is_ok());
                assert!(policy.agency(&rule.provider).is_ok());
                assert!(policy.affair(&rule.affair).is_some());
                assert!(!rule.items.is_empty());
            }
            for agency in policy.agencies() {
                for identity in &agency.certificates {
                    assert_eq!(
                        policy.agency_for_certificate(identity).map(|a| &a.id),
                        Some(&agency.id)
                    );
                }
            }
            let again =
                fugo::policy::parse(text).unwrap_or_else(|e| panic!("parsed once only: {e}"));
            assert_eq!(again.version(), policy.version());
        }
        Err(error) => {
            assert!(!error.0.is_empty(), "a refusal names a problem");
            for problem in &error.0 {
                assert!(problem.line <= lines, "line {} of {lines}", problem.line);
                assert!(!problem.message.is_empty());
            }
        }
    }
}

// ── CSV ─────────────────────────────────────────────────────────────────

fn demo_coder() -> &'static Coder {
    static CODER: OnceLock<Coder> = OnceLock::new();
    CODER.get_or_init(|| {
        Coder::new(
            &KeyHierarchy::new(&master()),
            AgencyId::new("mhlw").unwrap(),
            Epoch::new(1).unwrap(),
        )
    })
}

/// `fugo derive`'s work in chunks of 4 KiB, not 1 MiB: the same engine
/// and reader, many more chunk boundaries, and no megabyte buffers to
/// allocate and wipe for each of thousands of small inputs.
struct SmallChunks<'c>(fugo::bulk::LocalDerive<'c>);

impl<'c> fugo::bulk::Work for SmallChunks<'c> {
    type Worker = fugo::batch::BatchDeriver<'c>;

    fn results_are_secret(&self) -> bool {
        self.0.results_are_secret()
    }

    fn threads(&self) -> usize {
        self.0.threads()
    }

    fn chunk_bytes(&self) -> Option<usize> {
        Some(4096)
    }

    fn new_worker(&self) -> Self::Worker {
        self.0.new_worker()
    }

    fn process<'a, I, F>(
        &self,
        worker: &mut Self::Worker,
        inputs: I,
        emit: F,
    ) -> Result<(), fugo::bulk::BulkError>
    where
        I: Iterator<Item = Result<&'a [u8], fugo::bulk::RowError>>,
        F: FnMut(Result<&[u8], fugo::bulk::RowError>),
    {
        self.0.process(worker, inputs, emit)
    }
}

/// The file engine on a CSV (and the same bytes as lines): `fugo derive`'s
/// reader, with the first byte choosing the encoding (UTF-8 or cp932) and
/// replace or append mode. The run ends `Ok`, or stops with one of the
/// errors the input can cause (malformed CSV, header, encoding); every
/// reject is `line N: …` with N a line of the input; no reject and no error
/// repeats a run of digits; each row gets one output line.
pub fn csv(data: &[u8]) {
    use fugo::bulk::{
        BulkError, CsvOptions, EncodeWriter, LocalDerive, Shape, Sinks, TextEncoding,
    };
    let Some((mode, input)) = data.split_first() else {
        return;
    };
    let encoding = if mode & 1 == 0 {
        TextEncoding::Utf8
    } else {
        TextEncoding::Cp932
    };
    let csv = Shape::Csv(CsvOptions {
        column: "mynumber".to_owned(),
        append: (mode & 2 == 2).then(|| "code".to_owned()),
    });
    let lines_in = input.iter().filter(|b| **b == b'\n').count() as u64 + 1;
    let work = SmallChunks(LocalDerive::new(demo_coder(), 1));
    for shape in [csv, Shape::Lines] {
        let mut output = EncodeWriter::new(Vec::new(), encoding);
        let mut rejects = Vec::new();
        let ran = fugo::bulk::run(
            &work,
            input,
            encoding,
            &shape,
            Sinks {
                output: &mut output,
                rejects: &mut rejects,
                progress: None,
            },
        );
        let rejects = String::from_utf8(rejects).expect("rejects are UTF-8");
        for line in rejects.lines() {
            let number: u64 = line
                .strip_prefix("line ")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a reject names its line: {line:?}"));
            assert!(
                (1..=lines_in).contains(&number),
                "{line:?} of {lines_in} lines"
            );
        }
        assert_no_digits_echoed("a reject", &rejects);
        match ran {
            Ok(summary) => {
                assert!(summary.rejected <= summary.rows);
                assert_eq!(rejects.lines().count() as u64, summary.rejected);
                if matches!(shape, Shape::Lines) && encoding == TextEncoding::Utf8 {
                    let written = output.get_mut().iter().filter(|b| **b == b'\n').count();
                    assert_eq!(written as u64, summary.rows, "one output line a row");
                }
            }
            Err(stopped) => {
                assert!(
                    matches!(
                        stopped.error,
                        BulkError::Csv { .. } | BulkError::Header(_) | BulkError::Encoding(_)
                    ),
                    "undocumented stop {:?}",
                    stopped.error
                );
                assert_no_digits_echoed("a stop", &stopped.to_string());
            }
        }
    }
}

// ── protobuf requests ───────────────────────────────────────────────────

struct Service {
    handlers: fugo::service::Handlers,
    /// One valid request of each operation, encoded: derive, seal,
    /// redeem, reidentify, migrate, rekey.
    valid: [Vec<u8>; 6],
}

/// Randomness for the fixtures: a counter, never the OS.
struct Counter(std::sync::atomic::AtomicU64);

impl fugo::exchange::RandomSource for Counter {
    fn fill(&self, out: &mut [u8]) -> Result<(), fugo::exchange::RandomFailed> {
        for byte in out {
            *byte = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u8;
        }
        Ok(())
    }
}

fn service() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    SERVICE.get_or_init(|| {
        use prost::Message;
        let handlers = fugo::service::Handlers::new(
            KeyHierarchy::new(&master()),
            Box::new(Counter(std::sync::atomic::AtomicU64::new(1))),
            fugo::policy::parse(POLICY).unwrap(),
        )
        .unwrap();
        let mhlw = AgencyId::new("mhlw").unwrap();
        let numbers: Vec<String> = (0..4u64)
            .map(|i| String::from_utf8(mynumber::with_check_digit(i * 7_777 + 3).to_vec()).unwrap())
            .collect();
        let derive = pb::DeriveRequest {
            numbers: numbers.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        };
        let codes: Vec<String> = handlers
            .derive(&mhlw, derive.clone())
            .unwrap()
            .results
            .into_iter()
            .filter_map(|r| match r.result {
                Some(pb::derive_result::Result::Code(code)) => Some(code),
                _ => None,
            })
            .collect();
        let migrate = pb::MigrateRequest {
            merged: "mhlw".to_owned(),
            codes: codes.clone(),
        };
        let rekey = pb::RekeyRequest {
            codes: codes.clone(),
        };
        let seal = pb::SealRequest {
            provider: "city-shinjuku".to_owned(),
            affair: "health".to_owned(),
            items: vec!["local-tax".to_owned()],
            non_disclosure_until: 0,
            codes,
            on_behalf_of: String::new(),
        };
        let tokens: Vec<Vec<u8>> = handlers
            .seal(&mhlw, seal.clone())
            .unwrap()
            .results
            .into_iter()
            .filter_map(|r| match r.result {
                Some(pb::seal_result::Result::Sealed(sealed)) => Some(sealed.token),
                _ => None,
            })
            .collect();
        let shinjuku = AgencyId::new("city-shinjuku").unwrap();
        let shinjuku_codes: Vec<String> = handlers
            .derive(&shinjuku, derive.clone())
            .unwrap()
            .results
            .into_iter()
            .filter_map(|r| match r.result {
                Some(pb::derive_result::Result::Code(code)) => Some(code),
                _ => None,
            })
            .collect();
        let valid = [
            derive.encode_to_vec(),
            seal.encode_to_vec(),
            pb::RedeemRequest {
                epoch: 0,
                tokens,
                on_behalf_of: String::new(),
            }
            .encode_to_vec(),
            pb::ReidentifyRequest {
                codes: shinjuku_codes,
            }
            .encode_to_vec(),
            migrate.encode_to_vec(),
            rekey.encode_to_vec(),
        ];
        Service { handlers, valid }
    })
}

/// The statuses a whole request may end in (docs/PROTOCOL.md): a derive
/// or redeem naming an epoch that cannot make codes is FAILED_PRECONDITION
/// naming it.
fn assert_request_status(status: &tonic::Status) {
    use tonic::Code;
    let epoch_refused = status.code() == Code::FailedPrecondition
        && status.message().starts_with("agency ")
        && status.message().contains(": epoch ");
    assert!(
        epoch_refused
            || matches!(
                status.code(),
                Code::InvalidArgument | Code::PermissionDenied | Code::ResourceExhausted
            ),
        "undocumented status {:?}: {}",
        status.code(),
        status.message()
    );
    assert_no_digits_echoed("a status", status.message());
}

/// One item error: its index, a documented code, a reason without digits.
fn assert_item_error(error: &pb::ItemError, index: usize) {
    use fugo::proto::google::rpc::Code;
    assert_eq!(error.index as usize, index);
    let code = Code::try_from(error.code).expect("a google.rpc.Code");
    assert!(
        matches!(
            code,
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
        ),
        "undocumented item code {code:?}: {}",
        error.reason
    );
    assert!(!error.reason.is_empty());
    assert_no_digits_echoed("an item error", &error.reason);
}

/// Every result either succeeded or is an item error at its own index.
fn check_results<R>(
    results: &[R],
    items: usize,
    error: impl Fn(&R) -> Option<Option<&pb::ItemError>>,
) {
    assert_eq!(results.len(), items, "one result per item");
    for (index, result) in results.iter().enumerate() {
        match error(result) {
            Some(Some(item)) => assert_item_error(item, index),
            Some(None) => {}
            None => panic!("result {index} is empty"),
        }
    }
}

/// Protobuf request decoding and the service's own handling: the first
/// byte picks the operation (bits 0-1: derive, seal, redeem, reidentify;
/// bit 5 set: migrate; bit 6 set: rekey), the caller (bits 2-3), and whether the rest is
/// appended to a valid request of that operation (bit 4:
/// protobuf merges, so valid tokens and codes stay in play); the rest is
/// decoded as the service's codec decodes (`INVALID_ARGUMENT` if it cannot
/// be) and answered by the handler a call runs through. Whole-request
/// statuses and item errors are the documented ones, every item has one
/// result at its index, and no message repeats a run of digits.
pub fn request(data: &[u8]) {
    use fugo::service::codec::decode;
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let service = service();
    let operation = if mode & 0x40 != 0 {
        5
    } else if mode & 0x20 != 0 {
        4
    } else {
        usize::from(mode & 3)
    };
    let caller = AgencyId::new(CALLERS[usize::from((mode >> 2) & 3)]).unwrap();
    let mut message = Vec::new();
    if mode & 0x10 != 0 {
        message.extend_from_slice(&service.valid[operation]);
    }
    message.extend_from_slice(rest);
    let handlers = &service.handlers;
    let decoded_error = |status: tonic::Status| {
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
    };
    match operation {
        0 => match decode::<pb::DeriveRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.numbers.len();
                match handlers.derive(&caller, request) {
                    Ok(response) => check_results(&response.results, items, |r| {
                        r.result.as_ref().map(|r| match r {
                            pb::derive_result::Result::Error(e) => Some(e),
                            pb::derive_result::Result::Code(_) => None,
                        })
                    }),
                    Err(status) => assert_request_status(&status),
                }
            }
        },
        1 => match decode::<pb::SealRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.codes.len();
                match handlers.seal(&caller, request) {
                    Ok(response) => check_results(&response.results, items, |r| {
                        r.result.as_ref().map(|r| match r {
                            pb::seal_result::Result::Error(e) => Some(e),
                            pb::seal_result::Result::Sealed(_) => None,
                        })
                    }),
                    Err(status) => assert_request_status(&status),
                }
            }
        },
        2 => match decode::<pb::RedeemRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.tokens.len();
                match handlers.redeem(&caller, request) {
                    Ok(response) => {
                        check_results(&response.results, items, |r| {
                            r.result.as_ref().map(|r| match r {
                                pb::redeem_result::Result::Error(e) => Some(e),
                                pb::redeem_result::Result::Redeemed(_) => None,
                            })
                        });
                        for result in &response.results {
                            if let Some(pb::redeem_result::Result::Redeemed(redeemed)) =
                                &result.result
                            {
                                assert!((redeemed.context as usize) < response.contexts.len());
                            }
                        }
                    }
                    Err(status) => assert_request_status(&status),
                }
            }
        },
        4 => match decode::<pb::MigrateRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.codes.len();
                match handlers.migrate(&caller, request) {
                    Ok(response) => check_results(&response.results, items, |r| {
                        r.result.as_ref().map(|r| match r {
                            pb::migrate_result::Result::Error(e) => Some(e),
                            pb::migrate_result::Result::Migrated(_) => None,
                        })
                    }),
                    Err(status) => assert_request_status(&status),
                }
            }
        },
        5 => match decode::<pb::RekeyRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.codes.len();
                match handlers.rekey(&caller, request) {
                    Ok(response) => check_results(&response.results, items, |r| {
                        r.result.as_ref().map(|r| match r {
                            pb::rekey_result::Result::Error(e) => Some(e),
                            pb::rekey_result::Result::Rekeyed(_) => None,
                        })
                    }),
                    Err(status) => assert_request_status(&status),
                }
            }
        },
        _ => match decode::<pb::ReidentifyRequest>(&message[..]) {
            Err(status) => decoded_error(status),
            Ok(request) => {
                let items = request.codes.len();
                match handlers.reidentify(&caller, request) {
                    Ok(response) => check_results(&response.results, items, |r| {
                        r.result.as_ref().map(|r| match r {
                            pb::reidentify_result::Result::Error(e) => Some(e),
                            pb::reidentify_result::Result::Number(_) => None,
                        })
                    }),
                    Err(status) => assert_request_status(&status),
                }
            }
        },
    }
}

// ── seeds ───────────────────────────────────────────────────────────────

/// Valid (and nearly valid) inputs of each target, for the stable runner's
/// mutations and as a starting corpus (`fuzz/README.md`).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let number = |seed: u64| mynumber::with_check_digit(seed).to_vec();
    match target {
        "number" => vec![
            number(12_345_678_901),
            number(1),
            b"123456789018".to_vec(),
            b"1234 5678 9018".to_vec(),
            "１２３４５６７８９０１８".as_bytes().to_vec(),
            b"00000000000".to_vec(),
        ],
        "code_text" => {
            let code = demo_coder().derive(&MyNumber::parse(&number(42)).unwrap());
            let text = code.to_text().to_vec();
            let lower = text.to_ascii_lowercase();
            let mut hyphenated = Vec::new();
            for (i, byte) in text.iter().enumerate() {
                if i > 0 && i % 4 == 0 {
                    hyphenated.push(b'-');
                }
                hyphenated.push(*byte);
            }
            vec![
                text,
                lower,
                hyphenated,
                b"117SQFZDBBY20YB707P62RD1R8FGJ".to_vec(),
            ]
        }
        "token" => token_fixture()
            .tokens
            .iter()
            .map(|(_, token)| [&[0u8][..], token].concat())
            .chain([vec![1u8], vec![3u8, 0, 0, 0, 0, 0, 1]])
            .collect(),
        "policy" => vec![
            POLICY.as_bytes().to_vec(),
            include_bytes!("../../policy.example.toml").to_vec(),
            b"[[agency]]\nid = \"x\"\n".to_vec(),
        ],
        "csv" => {
            let mut csv = String::from("id,mynumber,note\n");
            for i in 0..6u64 {
                let n = String::from_utf8(number(i * 31 + 5)).unwrap();
                csv.push_str(&format!("{i},{n},\"a, {i}\"\n"));
            }
            csv.push_str("7,bad,x\n8,123456789018\n9,\"1234\n5678\",y,z\n");
            let bom = format!("\u{feff}{csv}");
            vec![
                [&[0u8][..], csv.as_bytes()].concat(),
                [&[2u8][..], bom.as_bytes()].concat(),
                [&[1u8][..], csv.replace('\n', "\r\n").as_bytes()].concat(),
                [&[1u8][..], b"id,mynumber\r\n1,\x82\xa0\r\n".as_slice()].concat(),
            ]
        }
        "request" => {
            use prost::Message;
            let service = service();
            let mut seeds = Vec::new();
            // Numbers where names belong (D152): refused without an echo.
            for (provider, affair, items) in [
                ("123456789018", "health", vec!["local-tax"]),
                ("city-shinjuku", "123456789018", vec!["local-tax"]),
                ("city-shinjuku", "health", vec!["123456789018"]),
                (
                    "city-shinjuku",
                    "health",
                    vec!["123456789018", "123456789018"],
                ),
            ] {
                let request = pb::SealRequest {
                    provider: provider.to_owned(),
                    affair: affair.to_owned(),
                    items: items.into_iter().map(str::to_owned).collect(),
                    non_disclosure_until: 0,
                    codes: Vec::new(),
                    on_behalf_of: String::new(),
                };
                seeds.push([&[0x11u8][..], &request.encode_to_vec()].concat());
            }
            // On behalf of another agency: nta for mhlw (allowed), for
            // Shinjuku (not), and a number where the agency belongs.
            for on_behalf_of in ["mhlw", "city-shinjuku", "123456789018"] {
                let request = pb::DeriveRequest {
                    epoch: 0,
                    numbers: vec!["123456789018".to_owned()],
                    on_behalf_of: on_behalf_of.to_owned(),
                };
                seeds.push([&[3u8 << 2][..], &request.encode_to_vec()].concat());
            }
            for (operation, valid) in service.valid.iter().enumerate() {
                for caller in 0..4u8 {
                    let op = match operation {
                        4 => 0x20,
                        5 => 0x40,
                        other => other as u8,
                    };
                    let mode = op | (caller << 2);
                    seeds.push([&[mode][..], valid].concat());
                    seeds.push(vec![mode | 0x10]);
                }
            }
            seeds
        }
        other => panic!("no target {other}"),
    }
}
