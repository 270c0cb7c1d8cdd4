//! The gRPC statuses a client really sees for refusals that happen before
//! fugo's own code runs — the TLS handshake and tonic's message size limit —
//! pinned against a real server on 127.0.0.1:0, so docs/PROTOCOL.md can say
//! what clients get; and that every status the service's code can answer is
//! listed in docs/PROTOCOL.md (the hostile and soak tests check each status
//! they see against the same tables, through `common::assert_call_status`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use fugo::certs::DevCa;
use fugo::proto::fugo::v1::DeriveRequest;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::service::{self, Running, ServeConfig};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1
"#;

/// A production-mode server (no dev mode) with certificates made here.
async fn start(dir: &std::path::Path) -> (Running, DevCa) {
    let key = dir.join("master.key");
    let keys = fugo::keyfile::generate(&key).unwrap();
    fs::write(dir.join("policy.toml"), POLICY).unwrap();
    let ca = DevCa::new("statuses test CA").unwrap();
    let server = ca.server().unwrap();
    fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
    fs::write(dir.join("server.pem"), &server.cert).unwrap();
    fs::write(dir.join("server.key"), &server.key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = fs::Permissions::from_mode(0o600);
        fs::set_permissions(dir.join("server.key"), private).unwrap();
    }
    let config = ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        policy: dir.join("policy.toml"),
        master_key: fugo::service::MasterKeySource::File(key),
        fingerprint: keys.fingerprint(),
        shutdown_grace: Duration::from_secs(5),
        dev_mode: false,
        client_ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        crls: Vec::new(),
        limits: service::Limits::default(),
        audit: service::AuditConfig::default(),
        metrics: None,
        admin: None,
        keyring: Vec::new(),
    };
    let running = service::start(config, &mut std::io::sink()).await.unwrap();
    (running, ca)
}

fn tls(ca: &DevCa) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
}

fn with_certificate(tls: ClientTlsConfig, issuer: &DevCa, identity: &str) -> ClientTlsConfig {
    let pem = issuer.client(identity).unwrap();
    tls.identity(Identity::from_pem(pem.cert, pem.key))
}

/// A channel; connecting is lazy, so a handshake refusal shows on the call.
fn channel(running: &Running, tls: ClientTlsConfig) -> CodesClient<Channel> {
    let channel = Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    CodesClient::new(channel)
}

fn one_number() -> DeriveRequest {
    DeriveRequest {
        numbers: vec!["123456789018".to_owned()],
        on_behalf_of: String::new(),
        epoch: 0,
    }
}

/// A call on a connection the server refused in the TLS handshake. With TLS
/// 1.3 the client's side of the handshake ends before the server has
/// checked the client certificate, so the refusal (a certificate_required
/// or unknown_ca alert) reaches tonic as a broken connection: CANCELLED or
/// UNKNOWN depending on timing, UNAVAILABLE if it happens while connecting.
/// Never an answer from fugo itself.
fn assert_refused_in_the_handshake(refused: &tonic::Status) {
    assert!(
        matches!(
            refused.code(),
            Code::Cancelled | Code::Unknown | Code::Unavailable
        ),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_are_transport_errors_and_an_unknown_identity_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;

    let mut good = channel(&running, with_certificate(tls(&ca), &ca, "mhlw"));
    assert!(good.derive(one_number()).await.is_ok(), "the setup works");

    // No client certificate: the TLS handshake refuses it.
    let mut anonymous = channel(&running, tls(&ca));
    let refused = anonymous.derive(one_number()).await.unwrap_err();
    assert_refused_in_the_handshake(&refused);

    // A certificate from another CA: refused in the handshake too.
    let other = DevCa::new("another CA").unwrap();
    let mut foreign = channel(&running, with_certificate(tls(&ca), &other, "mhlw"));
    let refused = foreign.derive(one_number()).await.unwrap_err();
    assert_refused_in_the_handshake(&refused);

    // The right CA, an identity the policy does not know: fugo refuses it.
    let mut stranger = channel(&running, with_certificate(tls(&ca), &ca, "stranger"));
    let refused = stranger.derive(one_number()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("'stranger'"), "{refused:?}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = start(dir.path()).await;
    let mut client = channel(&running, with_certificate(tls(&ca), &ca, "mhlw"));
    // tonic's default limit for a decoded message is 4 MiB.
    let oversized = DeriveRequest {
        numbers: vec!["1".repeat((4 << 20) + 1)],
        on_behalf_of: String::new(),
        epoch: 0,
    };
    let refused = client.derive(oversized).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    assert!(
        refused.message().contains("message length too large"),
        "{refused:?}"
    );
    // The connection stays usable.
    assert!(client.derive(one_number()).await.is_ok());
    running.stop().await.unwrap();
}

/// The gRPC code names a Rust source constructs or names:
/// `Status::snake_case(` and `Code::CamelCase` (tonic's or google.rpc's).
fn codes_in(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (marker, snake) in [("Status::", true), ("Code::", false)] {
        for (at, _) in source.match_indices(marker) {
            let rest = &source[at + marker.len()..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = if snake {
                word.to_ascii_uppercase()
            } else {
                // CamelCase → UPPER_SNAKE
                let mut name = String::new();
                for (i, c) in word.chars().enumerate() {
                    if c.is_ascii_uppercase() && i > 0 {
                        name.push('_');
                    }
                    name.push(c.to_ascii_uppercase());
                }
                name
            };
            if common::CODE_NAMES.contains(&name.as_str()) {
                found.insert(name);
            }
        }
    }
    found
}

/// A source file without its unit tests.
fn without_tests(source: &str) -> &str {
    source.split("#[cfg(test)]").next().unwrap()
}

#[test]
fn every_status_the_service_constructs_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let calls = common::documented_call_codes();
    let items = common::documented_item_codes();
    let audit = common::protocol_codes("## The audit service (`fugo.v1.Audit`)", None);
    let admin = common::protocol_codes("## The admin service (`fugo.v1.Admin`)", None);
    let documented: BTreeSet<String> = calls
        .iter()
        .chain(items)
        .chain(&audit)
        .chain(&admin)
        .cloned()
        .collect();
    let mut constructed = BTreeSet::new();
    for entry in fs::read_dir(root.join("src/service")).unwrap() {
        let path = entry.unwrap().path();
        // metrics.rs names every code to label its counters; it answers none.
        if path.ends_with("metrics.rs") {
            continue;
        }
        let source = fs::read_to_string(&path).unwrap();
        let codes = codes_in(without_tests(&source));
        for code in &codes {
            assert!(
                documented.contains(code),
                "{} can answer {code}, which docs/PROTOCOL.md does not list",
                path.display()
            );
        }
        constructed.extend(codes);
    }
    // The scan is not vacuous: it sees the codes status.rs maps to.
    for code in [
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "NOT_FOUND",
    ] {
        assert!(constructed.contains(code), "the scan missed {code}");
    }
    // Item codes: what `status::item_code` gives must be in the per-item
    // table (its `_ =>` arm is the catch-all a #[non_exhaustive] enum of
    // another crate needs; every variant is matched above it).
    let status = fs::read_to_string(root.join("src/service/status.rs")).unwrap();
    let start = status.find("fn item_code(").unwrap();
    let body = &status[start..start + status[start..].find("\n}\n").unwrap()];
    let mapped: String = body
        .lines()
        .filter(|line| !line.trim_start().starts_with("_ =>"))
        .collect::<Vec<_>>()
        .join("\n");
    let item_codes = codes_in(&mapped);
    assert!(item_codes.len() >= 4, "{item_codes:?}");
    for code in &item_codes {
        assert!(
            items.contains(code),
            "an item can fail with {code}, which the per-item table does not list"
        );
    }
    // INTERNAL is documented as fugo's own fault, never an answer to input.
    assert!(calls.contains("INTERNAL") && !items.contains("INTERNAL"));
}
