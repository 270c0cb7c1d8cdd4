//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use fugo::agency::{AgencyId, Epoch};
use fugo::code::Coder;
use fugo::keys::{KeyHierarchy, MasterKey};
use serde::Deserialize;

/// The demo master key shipped in keys-example/.
pub fn demo_key_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("keys-example/master.key")
}

pub const DEMO_FINGERPRINT: &str = "34391a36deac07213d13a6753154bf16";

pub fn hex(text: &str) -> Vec<u8> {
    assert_eq!(text.len() % 2, 0);
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Deserialize)]
pub struct Vectors {
    pub keys: Vec<KeyVector>,
    pub positive: Vec<Positive>,
    pub negative: Vec<Negative>,
    pub tokens: TokenVectors,
    /// Format 3 (SPEC §7.4): the generation in the header.
    pub tokens3: TokenVectors,
    pub audit: AuditVectors,
}

/// The audit trail's keys and person links of SPEC §8.
#[derive(Debug, Deserialize)]
pub struct AuditVectors {
    pub keys: Vec<AuditKeyVector>,
    pub links: Vec<LinkVector>,
}

#[derive(Debug, Deserialize)]
pub struct AuditKeyVector {
    pub key: String,
    pub k_link: String,
    pub log_seed: String,
    pub log_public_key: String,
}

#[derive(Debug, Deserialize)]
pub struct LinkVector {
    pub key: String,
    pub number: String,
    pub handle: String,
    pub link: String,
}

#[derive(Debug, Deserialize)]
pub struct KeyVector {
    pub name: String,
    pub master_key: String,
    pub fingerprint: String,
}

#[derive(Debug, Deserialize)]
pub struct Positive {
    pub key: String,
    pub number: String,
    pub agency: String,
    pub epoch: u8,
    pub handle: String,
    pub code_bytes: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct Negative {
    pub description: String,
    pub key: String,
    pub agency: String,
    pub epoch: u8,
    pub text: String,
    pub error: String,
}

/// The sealed-token vectors of SPEC §7.
#[derive(Debug, Deserialize)]
pub struct TokenVectors {
    pub positive: Vec<TokenPositive>,
    pub negative: Vec<TokenNegative>,
}

#[derive(Debug, Deserialize)]
pub struct TokenPositive {
    pub description: String,
    pub key: String,
    pub number: String,
    pub handle: String,
    pub addressee: String,
    pub window: u32,
    /// The key index (format 2); `None` for format 1.
    pub index: Option<u32>,
    /// The master-key generation (format 3); absent before.
    pub generation: Option<u16>,
    pub serial: String,
    pub nonce: String,
    pub requester: String,
    pub affair: String,
    pub items: Vec<String>,
    pub expires_at: u64,
    pub non_disclosure_until: Option<u64>,
    pub k_seal: String,
    pub header: String,
    pub claims: String,
    pub token: String,
}

#[derive(Debug, Deserialize)]
pub struct TokenNegative {
    pub description: String,
    pub key: String,
    pub addressee: String,
    pub window: u32,
    /// The key index of the key it is opened with; `None`: format 1's key.
    pub index: Option<u32>,
    /// The generation of the key it is opened with (format 3); absent before.
    pub generation: Option<u16>,
    pub token: String,
    pub error: String,
}

pub fn vectors() -> Vectors {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/v1.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

impl Vectors {
    pub fn keys(&self, name: &str) -> KeyHierarchy {
        let key = self.keys.iter().find(|k| k.name == name).unwrap();
        KeyHierarchy::new(&MasterKey::from_file_contents(key.master_key.as_bytes()).unwrap())
    }

    /// The hierarchy of key `name` as master-key generation `generation`.
    pub fn keys_of_generation(&self, name: &str, generation: u16) -> KeyHierarchy {
        let key = self.keys.iter().find(|k| k.name == name).unwrap();
        KeyHierarchy::of_generation(
            &MasterKey::from_file_contents(key.master_key.as_bytes()).unwrap(),
            fugo::generation::Generation::new(generation).unwrap(),
        )
    }

    pub fn coder(&self, key: &str, agency: &str, epoch: u8) -> Coder {
        Coder::new(
            &self.keys(key),
            AgencyId::new(agency).unwrap(),
            Epoch::new(epoch).unwrap(),
        )
    }
}

/// A valid 12-digit number from 11 digits of `seed`.
pub fn valid_number(seed: u64) -> String {
    String::from_utf8(fugo::mynumber::with_check_digit(seed).to_vec()).unwrap()
}

/// A real server on 127.0.0.1:0 with real TLS (certificates made here),
/// its files in `dir` and its data directory `dir/data`, and the CA that
/// signs client certificates.
pub async fn start_server(
    dir: &Path,
    policy: &str,
    master: [u8; 32],
) -> (fugo::service::Running, fugo::certs::DevCa) {
    let (config, ca) = server_config(dir, policy, master);
    let running = fugo::service::start(config, &mut std::io::sink())
        .await
        .unwrap();
    (running, ca)
}

/// The files and configuration [`start_server`] starts with: a production
/// configuration (real TLS, a 0600 master key) in `dir`, data in `dir/data`.
pub fn server_config(
    dir: &Path,
    policy: &str,
    master: [u8; 32],
) -> (fugo::service::ServeConfig, fugo::certs::DevCa) {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;
    let key = dir.join("master.key");
    fs::write(
        &key,
        MasterKey::from_bytes(master).to_file_contents().as_bytes(),
    )
    .unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(dir.join("policy.toml"), policy).unwrap();
    let ca = fugo::certs::DevCa::new("test CA").unwrap();
    let server = ca.server().unwrap();
    fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    fs::write(dir.join("server.pem"), &server.cert).unwrap();
    fs::write(dir.join("server.key"), &server.key).unwrap();
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    let config = fugo::service::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        policy: dir.join("policy.toml"),
        master_key: fugo::service::MasterKeySource::File(key),
        fingerprint: KeyHierarchy::new(&MasterKey::from_bytes(master)).fingerprint(),
        shutdown_grace: Duration::from_secs(5),
        dev_mode: false,
        client_ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        crls: Vec::new(),
        limits: fugo::service::Limits::default(),
        audit: fugo::service::AuditConfig::default(),
        metrics: None,
        admin: None,
        keyring: Vec::new(),
    };
    (config, ca)
}

/// `GET path` on a server's metrics listener (plain HTTP on loopback):
/// (status line, body).
pub async fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap()
    .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The value of the series `series` (name and labels, exactly as written)
/// on a metrics page, 0 when absent.
pub fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// The gRPC code names, by number (google.rpc.Code).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of gRPC code `code` ("INVALID_ARGUMENT"), or "code N".
pub fn code_name(code: i32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| CODE_NAMES.get(i))
        .map_or_else(|| format!("code {code}"), |name| (*name).to_owned())
}

/// The code names in column `column` (from 0) of the first table after the
/// heading `heading` of docs/PROTOCOL.md (`None`: in every column).
pub fn protocol_codes(heading: &str, column: Option<usize>) -> std::collections::BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/PROTOCOL.md");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("PROTOCOL.md has no heading {heading:?}"));
    let rows = text[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2); // the header and its separator
    let mut codes = std::collections::BTreeSet::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').skip(1).collect();
        let text = match column {
            Some(column) => cells.get(column).copied().unwrap_or_default().to_owned(),
            None => cells.join(" "),
        };
        for word in text.split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
            if CODE_NAMES.contains(&word) {
                codes.insert(word.to_owned());
            }
        }
    }
    assert!(!codes.is_empty(), "no codes under {heading:?}");
    codes
}

/// The statuses docs/PROTOCOL.md says a `fugo.v1.Codes` call can end with.
pub fn documented_call_codes() -> &'static std::collections::BTreeSet<String> {
    static CODES: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    CODES.get_or_init(|| protocol_codes("## What a call can end with", Some(0)))
}

/// The codes docs/PROTOCOL.md says one item of a batch can fail with.
pub fn documented_item_codes() -> &'static std::collections::BTreeSet<String> {
    static CODES: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    CODES.get_or_init(|| protocol_codes("## Failure, per item and per batch", Some(0)))
}

/// Every status a hostile or soak test sees passes here: it is never
/// INTERNAL or UNKNOWN (those mean fugo failed, not the caller), it is
/// one docs/PROTOCOL.md lists for a call, and it is one of `expected`.
pub fn assert_call_status(code: i32, expected: &[tonic::Code], what: &str) {
    let name = code_name(code);
    assert!(
        code != tonic::Code::Internal as i32 && code != tonic::Code::Unknown as i32,
        "{what}: answered {name}"
    );
    assert!(
        documented_call_codes().contains(&name),
        "{what}: {name} is not in docs/PROTOCOL.md"
    );
    assert!(
        expected.iter().any(|e| *e as i32 == code),
        "{what}: answered {name}, expected one of {expected:?}"
    );
}

/// The same for one item's error code (google.rpc.Code).
pub fn assert_item_status(code: i32, expected: &[tonic::Code], what: &str) {
    let name = code_name(code);
    assert!(
        code != tonic::Code::Internal as i32 && code != tonic::Code::Unknown as i32,
        "{what}: item answered {name}"
    );
    assert!(
        documented_item_codes().contains(&name),
        "{what}: item code {name} is not in docs/PROTOCOL.md"
    );
    assert!(
        expected.iter().any(|e| *e as i32 == code),
        "{what}: item answered {name}, expected one of {expected:?}"
    );
}

/// `numbers`' codes from `client`'s Derive in `epoch` (0: the current
/// one); every number must get a code.
#[allow(dead_code)] // not every test binary uses it
pub async fn derive_codes(
    client: &mut fugo::proto::fugo::v1::codes_client::CodesClient<tonic::transport::Channel>,
    numbers: &[String],
    epoch: u32,
) -> Vec<String> {
    use fugo::proto::fugo::v1::{DeriveRequest, derive_result};
    let response = client
        .derive(DeriveRequest {
            on_behalf_of: String::new(),
            numbers: numbers.to_vec(),
            epoch,
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|result| match result.result {
            Some(derive_result::Result::Code(code)) => code,
            other => panic!("derive failed: {other:?}"),
        })
        .collect()
}

/// A TLS channel to a test server at `addr`, as agency `identity` of `ca`.
/// (Older test files carry their own copy of this; new ones use it.)
pub async fn channel(
    addr: std::net::SocketAddr,
    ca: &fugo::certs::DevCa,
    identity: &str,
) -> tonic::transport::Channel {
    channel_with(addr, ca, ca, identity).await
}

/// [`channel`] where the server's certificate is checked against
/// `server_ca` and `identity`'s certificate is made by `client_ca` (an
/// admin CA, say).
#[allow(dead_code)] // not every test binary uses it
pub async fn channel_with(
    addr: std::net::SocketAddr,
    server_ca: &fugo::certs::DevCa,
    client_ca: &fugo::certs::DevCa,
    identity: &str,
) -> tonic::transport::Channel {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let pem = client_ca.client(identity).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}
