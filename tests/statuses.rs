//! The gRPC statuses a client really sees for refusals that happen before
//! fugo's own code runs — the TLS handshake and tonic's message size limit —
//! pinned against a real server on 127.0.0.1:0, so docs/PROTOCOL.md can say
//! what clients get.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

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
