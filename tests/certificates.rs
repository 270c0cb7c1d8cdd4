//! Client certificates at the edge, from outside: revocation (CRLs named by
//! `[tls] crl`, made here by rcgen and, when it is installed, by the
//! `openssl` command line) and hostile certificates. A real server on
//! 127.0.0.1:0 with real TLS; every loop is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fugo::proto::fugo::v1::DeriveRequest;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::service::{self, Running, ServeConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
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
capabilities = ["derive"]
epoch = 2
"#;

/// Everything the servers of this test binary log (info and up).
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

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The logged lines holding every one of `needles`.
fn logged(needles: &[&str]) -> Vec<String> {
    String::from_utf8_lossy(&logs().lock().unwrap())
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .map(str::to_owned)
        .collect()
}

/// Every refusal must come within this long.
const PROMPT: Duration = Duration::from_secs(5);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn days(count: i64) -> time::Duration {
    time::Duration::days(count)
}

/// A test CA: it signs certificates and CRLs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The number of the last CRL it made: each new one is higher.
    crl_number: std::cell::Cell<u64>,
}

/// A certificate (PEM and DER) and its key (PEM).
#[derive(Clone)]
struct Cert {
    pem: String,
    der: Vec<u8>,
    key: String,
}

/// How a leaf differs from a plain client certificate.
struct Leaf {
    subject: DistinguishedName,
    serial: u64,
    usage: Vec<ExtendedKeyUsagePurpose>,
    names: Vec<String>,
    is_ca: bool,
    /// Not before, not after: days from now.
    valid: (i64, i64),
}

impl Leaf {
    /// A client certificate for `common_name`, valid from a day ago for 30 days.
    fn client(common_name: &str, serial: u64) -> Self {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, common_name);
        Leaf {
            subject,
            serial,
            usage: vec![ExtendedKeyUsagePurpose::ClientAuth],
            names: Vec::new(),
            is_ca: false,
            valid: (-1, 30),
        }
    }
}

impl Ca {
    /// A CA named `name`, allowed to sign certificates and CRLs.
    fn new(name: &str) -> Self {
        Self::with_usages(
            name,
            vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ],
        )
    }

    fn with_usages(name: &str, usages: Vec<KeyUsagePurpose>) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = usages;
        params.not_before = now() - days(1);
        params.not_after = now() + days(365);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca {
            issuer,
            crl_number: std::cell::Cell::new(0),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's own certificate with its key, as a client would misuse it.
    fn itself(&self) -> Cert {
        Cert {
            pem: self.issuer.pem(),
            der: self.issuer.der().to_vec(),
            key: self.issuer.key().serialize_pem(),
        }
    }

    fn leaf(&self, leaf: Leaf) -> Cert {
        let mut params = CertificateParams::new(leaf.names).unwrap();
        params.distinguished_name = leaf.subject;
        params.serial_number = Some(SerialNumber::from(leaf.serial));
        params.extended_key_usages = leaf.usage;
        if leaf.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
        params.not_before = now() + days(leaf.valid.0);
        params.not_after = now() + days(leaf.valid.1);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Cert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self, common_name: &str, serial: u64) -> Cert {
        self.leaf(Leaf::client(common_name, serial))
    }

    fn server(&self) -> Cert {
        let mut leaf = Leaf::client("localhost", 1000);
        leaf.usage = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        self.leaf(leaf)
    }

    /// A CRL revoking `serials`, issued 3 days ago, its next update
    /// `next_update` from now (negative: expired), numbered after the last.
    fn crl_with(
        &self,
        serials: &[u64],
        next_update: time::Duration,
    ) -> rcgen::CertificateRevocationList {
        self.crl_number.set(self.crl_number.get() + 1);
        CertificateRevocationListParams {
            this_update: now() - days(3),
            next_update: now() + next_update,
            crl_number: SerialNumber::from(self.crl_number.get()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: now() - days(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
    }

    /// A CRL signed with this CA's key even though its certificate does
    /// not allow it to sign CRLs (rcgen refuses to, so the signer claims
    /// cRLSign).
    fn crl_signed_anyway(&self, name: &str) -> String {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::from_pem(&self.issuer.key().serialize_pem()).unwrap();
        CertificateRevocationListParams {
            this_update: now() - days(1),
            next_update: now() + days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&rcgen::Issuer::new(params, key))
        .unwrap()
        .pem()
        .unwrap()
    }

    /// A CRL revoking `serials`, valid for 30 days, as PEM.
    fn crl(&self, serials: &[u64]) -> String {
        self.crl_with(serials, days(30)).pem().unwrap()
    }
}

/// A running server with the test CA's certificates, its files in `dir`.
struct Server {
    dir: tempfile::TempDir,
    ca: Ca,
    running: Option<Running>,
}

/// The configuration of a server in `dir` whose client CA is `ca`, with
/// the CRL files `crls` (names in `dir`).
fn config(dir: &Path, ca: &Ca, crls: &[&str]) -> ServeConfig {
    let (mut config, _) = common::server_config(dir, POLICY, [9; 32]);
    let server = ca.server();
    fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    fs::write(dir.join("server.pem"), &server.pem).unwrap();
    fs::write(dir.join("server.key"), &server.key).unwrap();
    config.crls = crls.iter().map(|name| dir.join(name)).collect();
    config
}

impl Server {
    /// Starts with `crl` (PEM text) in `agencies.crl`, or without CRLs.
    async fn start(ca: Ca, crl: Option<&str>) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let names: &[&str] = match crl {
            Some(text) => {
                fs::write(dir.path().join("agencies.crl"), text).unwrap();
                &["agencies.crl"]
            }
            None => &[],
        };
        let config = config(dir.path(), &ca, names);
        let running = service::start(config, &mut std::io::sink()).await.unwrap();
        Server {
            dir,
            ca,
            running: Some(running),
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.running().addr
    }

    /// Replaces the CRL file and reloads as SIGHUP does.
    fn reload_with(&self, crl: &[u8]) -> Result<(), String> {
        fs::write(self.dir.path().join("agencies.crl"), crl).unwrap();
        self.running()
            .reload()
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    /// A tonic client presenting `cert`; connecting is lazy, so a refused
    /// handshake shows in the first call's status.
    fn codes(&self, cert: &Cert) -> CodesClient<Channel> {
        codes_at(self.addr(), &self.ca.pem(), cert)
    }

    async fn stop(mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }
}

fn codes_at(addr: std::net::SocketAddr, ca_pem: &str, cert: &Cert) -> CodesClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost")
        .identity(Identity::from_pem(&cert.pem, &cert.key));
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(PROMPT)
        .timeout(PROMPT)
        .connect_lazy();
    CodesClient::new(channel)
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
        .collect()
}

/// One derive call: the number of results, or the status.
async fn derive(client: &mut CodesClient<Channel>, seed: u64) -> Result<usize, tonic::Status> {
    client
        .derive(DeriveRequest {
            numbers: numbers(2, seed),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .map(|response| response.into_inner().results.len())
}

/// What a tonic client reports when the server refused its certificate at
/// the TLS handshake: no gRPC status came from the server (it never
/// accepted the connection), so tonic makes one up from the transport
/// error, UNKNOWN "transport error" with the alert in its source, or
/// CANCELLED when the connection closed before its request was sent, or
/// UNAVAILABLE. Returns the text of the transport error.
fn refused_by_transport(status: &tonic::Status, what: &str) -> String {
    assert!(
        matches!(
            status.code(),
            Code::Unknown | Code::Cancelled | Code::Unavailable
        ),
        "{what}: {status:?}"
    );
    let mut text = String::new();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&format!("{error}; "));
        source = error.source();
    }
    assert!(
        text.contains("transport error")
            || text.contains("connection closed")
            || text.contains("fatal alert"),
        "{what}: a status from the server, not a refused connection: {status:?}"
    );
    text
}

/// A raw TLS connection presenting `cert` (or none): the handshake, then
/// one read, which is where a TLS 1.3 client hears that the server refused
/// its certificate. The error text (naming the alert), or `None` if the
/// server accepted the certificate.
async fn tls_refusal(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    cert: Option<&Cert>,
) -> Option<String> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(cert) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.der.clone())],
                PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connect = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp);
    let mut tls = match tokio::time::timeout(PROMPT, connect)
        .await
        .expect("handshake hung")
    {
        Ok(tls) => tls,
        Err(error) => return Some(error.to_string()),
    };
    // The client speaks first in HTTP/2; an accepted client hears the
    // server's SETTINGS, a refused one the alert.
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(PROMPT, tls.read(&mut buffer))
        .await
        .expect("no answer")
    {
        Ok(0) => Some("closed without an alert".to_owned()),
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_others_keep_working() {
    let ca = Ca::new("agencies CA");
    let crl = ca.crl(&[7]);
    let server = Server::start(ca, Some(&crl)).await;
    let revoked = server.ca.client("city-shinjuku", 7);
    let renewed = server.ca.client("city-shinjuku", 8);
    let mhlw = server.ca.client("mhlw", 1);

    let started = Instant::now();
    let alert = tls_refusal(server.addr(), &server.ca.pem(), Some(&revoked))
        .await
        .expect("the revoked certificate was accepted");
    assert!(alert.contains("CertificateRevoked"), "{alert}");
    // What a gRPC client sees: its call fails with a transport error (the
    // alert, or the closed connection if that reached tonic first); no
    // gRPC status comes from the server.
    let status = derive(&mut server.codes(&revoked), 1).await.unwrap_err();
    refused_by_transport(&status, "revoked");
    assert!(started.elapsed() < PROMPT);

    assert_eq!(derive(&mut server.codes(&renewed), 2).await.unwrap(), 2);
    assert_eq!(derive(&mut server.codes(&mhlw), 3).await.unwrap(), 2);
    assert!(
        tls_refusal(server.addr(), &server.ca.pem(), Some(&mhlw))
            .await
            .is_none()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_an_open_stream_and_a_broken_crl_keeps_the_old_one() {
    let ca = Ca::new("agencies CA");
    let crl = ca.crl(&[]);
    let server = Server::start(ca, Some(&crl)).await;
    let mhlw = server.ca.client("mhlw", 1);
    let shinjuku = server.ca.client("city-shinjuku", 2);

    // Open before the reload: a stream and a unary channel of mhlw, a
    // channel of Shinjuku.
    let mut mhlw_unary = server.codes(&mhlw);
    assert_eq!(derive(&mut mhlw_unary, 1).await.unwrap(), 2);
    let mut shinjuku_unary = server.codes(&shinjuku);
    assert_eq!(derive(&mut shinjuku_unary, 2).await.unwrap(), 2);
    let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(2);
    let mut responses = server
        .codes(&mhlw)
        .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender
        .send(DeriveRequest {
            numbers: numbers(2, 3),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().results.len(), 2);

    let stale = server.ca.crl(&[]);
    // The CA revokes mhlw's certificate; the operator installs the CRL.
    let revoking = server.ca.crl(&[1]);
    server.reload_with(revoking.as_bytes()).unwrap();

    let started = Instant::now();
    sender
        .send(DeriveRequest {
            numbers: numbers(2, 4),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    let refused = tokio::time::timeout(PROMPT, responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("the client certificate is revoked (serial 01"),
        "{}",
        refused.message()
    );
    let refused = derive(&mut mhlw_unary, 5).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    assert!(started.elapsed() < PROMPT);
    // A new connection does not get past the handshake.
    let alert = tls_refusal(server.addr(), &server.ca.pem(), Some(&mhlw))
        .await
        .unwrap();
    assert!(alert.contains("CertificateRevoked"), "{alert}");
    // Shinjuku is not revoked: its open channel and a new one work.
    assert_eq!(derive(&mut shinjuku_unary, 6).await.unwrap(), 2);
    assert_eq!(derive(&mut server.codes(&shinjuku), 7).await.unwrap(), 2);

    // Broken CRLs on reload: refused, naming the file; the list in force stays.
    let foreign = Ca::new("agencies CA"); // the same name, another key
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "an older list (a lower CRL number)",
            stale.into_bytes(),
            "older than the CRL of 'CN=agencies CA' in force (CRL number 2",
        ),
        ("garbage", b"not a CRL\n".to_vec(), "no CRL in it"),
        (
            "cut short",
            revoking.as_bytes()[..200].to_vec(),
            "agencies.crl",
        ),
        (
            "signed by another key",
            foreign.crl(&[]).into_bytes(),
            "its signature does not verify",
        ),
        (
            "expired",
            server
                .ca
                .crl_with(&[], days(-1))
                .pem()
                .unwrap()
                .into_bytes(),
            "expired at",
        ),
    ];
    for (what, bytes, reason) in cases {
        let error = server.reload_with(&bytes).unwrap_err();
        assert!(
            error.contains("agencies.crl") && error.contains(reason),
            "{what}: {error}"
        );
        let refused = derive(&mut mhlw_unary, 8).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
        let alert = tls_refusal(server.addr(), &server.ca.pem(), Some(&mhlw))
            .await
            .unwrap();
        assert!(alert.contains("CertificateRevoked"), "{what}: {alert}");
        assert_eq!(derive(&mut shinjuku_unary, 9).await.unwrap(), 2, "{what}");
    }
    // A named pipe or a folder at the CRL's path: refused at once, not
    // waited on.
    let path = server.dir.path().join("agencies.crl");
    for what in ["a named pipe", "a folder"] {
        fs::remove_file(&path).unwrap();
        if what == "a named pipe" {
            assert!(
                Command::new("mkfifo")
                    .arg(&path)
                    .status()
                    .unwrap()
                    .success()
            );
        } else {
            fs::create_dir(&path).unwrap();
        }
        let started = Instant::now();
        let error = server.running().reload().unwrap_err().to_string();
        assert!(error.contains("agencies.crl"), "{what}: {error}");
        assert!(started.elapsed() < PROMPT, "{what}");
        let refused = derive(&mut mhlw_unary, 8).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{what}: {refused:?}");
        assert_eq!(derive(&mut shinjuku_unary, 9).await.unwrap(), 2, "{what}");
        if what == "a folder" {
            fs::remove_dir(&path).unwrap();
            fs::write(&path, "").unwrap();
        }
    }
    let path = path.display().to_string();
    assert_eq!(
        logged(&[
            "CRL reload refused; the revocation lists in force stay",
            &path
        ])
        .len(),
        7
    );
    // The refusals name the certificate (its SHA-256) and the reason.
    let fingerprint: String = Sha256::digest(&mhlw.der)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert!(!logged(&["client certificate refused", &fingerprint, "is revoked"]).is_empty());
    // A CRL in DER works as well as PEM; one revoking nothing lets mhlw back.
    let der = server.ca.crl_with(&[], days(30)).der().to_vec();
    server.reload_with(&der).unwrap();
    assert_eq!(derive(&mut mhlw_unary, 10).await.unwrap(), 2);
    assert_eq!(
        logged(&["certificate revocation lists reloaded", &path, "0 revoked"]).len(),
        1
    );
    drop((sender, responses));
    server.stop().await;
}

/// A list that expires while the server runs fails closed: open
/// connections lose access at their next call, new ones are refused at
/// the handshake (D132).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_that_expires_while_serving_refuses_everyone_of_its_ca() {
    let ca = Ca::new("agencies CA");
    let lifetime = Duration::from_secs(5);
    let crl = ca
        .crl_with(&[], time::Duration::try_from(lifetime).unwrap())
        .pem()
        .unwrap();
    let expires = Instant::now() + lifetime;
    let server = Server::start(ca, Some(&crl)).await;
    let path = server.dir.path().join("agencies.crl").display().to_string();
    assert_eq!(
        logged(&["CRL expires within 7 days", &path]).len(),
        1,
        "the operator is warned"
    );
    let mhlw = server.ca.client("mhlw", 1);
    let mut open = server.codes(&mhlw);
    assert_eq!(derive(&mut open, 1).await.unwrap(), 2);
    tokio::time::sleep_until((expires + Duration::from_millis(1100)).into()).await;

    let refused = derive(&mut open, 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("the CRL of the client certificate's CA expired at"),
        "{}",
        refused.message()
    );
    let alert = tls_refusal(server.addr(), &server.ca.pem(), Some(&mhlw))
        .await
        .unwrap();
    assert!(alert.contains("UnknownCA"), "{alert}");
    // A fresh list, installed by a reload, lets everyone back.
    server.reload_with(server.ca.crl(&[]).as_bytes()).unwrap();
    assert_eq!(derive(&mut open, 3).await.unwrap(), 2);
    assert!(
        tls_refusal(server.addr(), &server.ca.pem(), Some(&mhlw))
            .await
            .is_none()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_crls_stop_the_server_naming_the_file() {
    let ca = Ca::new("agencies CA");
    let dir = tempfile::tempdir().unwrap();
    let foreign_name = Ca::new("another CA");
    let foreign_key = Ca::new("agencies CA");
    let no_crl_sign = Ca::with_usages(
        "agencies CA",
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ],
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "no CRL in it"),
        ("a certificate", ca.pem().into_bytes(), "no CRL in it"),
        ("garbage DER", vec![0x30, 0x03, 1, 2, 3], "not a CRL"),
        (
            "issued by another CA",
            foreign_name.crl(&[]).into_bytes(),
            "issued by 'CN=another CA', which is not a client CA",
        ),
        (
            "signed by another key under the CA's name",
            foreign_key.crl(&[]).into_bytes(),
            "its signature does not verify",
        ),
        (
            "expired",
            ca.crl_with(&[], days(-1)).pem().unwrap().into_bytes(),
            "expired at",
        ),
        (
            "two lists of one CA",
            format!("{}{}", ca.crl(&[]), ca.crl(&[3])).into_bytes(),
            "a second CRL of client CA",
        ),
    ];
    for (what, bytes, reason) in cases {
        fs::write(dir.path().join("agencies.crl"), bytes).unwrap();
        let error = service::start(
            config(dir.path(), &ca, &["agencies.crl"]),
            &mut std::io::sink(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: started"))
        .to_string();
        assert!(
            error.contains("agencies.crl") && error.contains(reason),
            "{what}: {error}"
        );
    }
    // A CA whose key usage does not allow signing CRLs.
    fs::write(
        dir.path().join("agencies.crl"),
        no_crl_sign.crl_signed_anyway("agencies CA"),
    )
    .unwrap();
    let error = service::start(
        config(dir.path(), &no_crl_sign, &["agencies.crl"]),
        &mut std::io::sink(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("lacks cRLSign"), "{error}");
    // A missing file.
    let error = service::start(
        config(dir.path(), &ca, &["missing.crl"]),
        &mut std::io::sink(),
    )
    .await
    .err()
    .unwrap()
    .to_string();
    assert!(error.contains("missing.crl"), "{error}");
    // Two client CAs, a CRL for only one: every agency of the other would
    // be refused, so the server says so at start.
    let second = Ca::new("second CA");
    fs::write(dir.path().join("agencies.crl"), ca.crl(&[])).unwrap();
    let config_two = config(dir.path(), &ca, &["agencies.crl"]);
    fs::write(
        dir.path().join("ca.pem"),
        format!("{}{}", ca.pem(), second.pem()),
    )
    .unwrap();
    let error = service::start(config_two, &mut std::io::sink())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("client CA 'CN=second CA'") && error.contains("has no CRL"),
        "{error}"
    );
    // With both lists (two files), it starts.
    fs::write(dir.path().join("second.crl"), second.crl(&[])).unwrap();
    let mut config_both = config(dir.path(), &ca, &["agencies.crl", "second.crl"]);
    fs::write(
        dir.path().join("ca.pem"),
        format!("{}{}", ca.pem(), second.pem()),
    )
    .unwrap();
    config_both.listen = "127.0.0.1:0".parse().unwrap();
    let running = service::start(config_both, &mut std::io::sink())
        .await
        .unwrap();
    running.stop().await.unwrap();
}

/// The hostile certificates: each gets its documented answer within 5 s
/// while a valid client keeps working, and none gets INTERNAL or UNKNOWN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_certificates_get_their_documented_answer_promptly() {
    let server = Server::start(Ca::new("agencies CA"), None).await;
    let ca = &server.ca;
    let mut valid = server.codes(&ca.client("mhlw", 1));
    assert_eq!(derive(&mut valid, 1).await.unwrap(), 2);

    /// What the client is told.
    enum Answer {
        /// A TLS alert (its name in rustls' error text); a gRPC client
        /// sees UNAVAILABLE.
        Alert(&'static str),
        /// A gRPC status with this message part.
        Status(Code, &'static str),
        /// Served like any agency.
        Served,
    }
    let foreign = Ca::new("foreign CA");
    let impostor = Ca::new("agencies CA"); // the CA's name, another key
    let mut expired = Leaf::client("mhlw", 10);
    expired.valid = (-30, -1);
    let mut not_yet = Leaf::client("mhlw", 11);
    not_yet.valid = (1, 30);
    let mut server_only = Leaf::client("mhlw", 12);
    server_only.usage = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let mut sub_ca = Leaf::client("mhlw", 13);
    sub_ca.is_ca = true;
    let mut no_usage = Leaf::client("mhlw", 16);
    no_usage.usage = Vec::new();
    let mut two_names = DistinguishedName::new();
    two_names.push(DnType::CommonName, "mhlw");
    two_names.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "city-shinjuku");
    let mut two = Leaf::client("x", 14);
    two.subject = two_names;

    let cases: Vec<(&str, Option<Cert>, Answer)> = vec![
        ("no certificate", None, Answer::Alert("CertificateRequired")),
        (
            "foreign CA",
            Some(foreign.client("mhlw", 1)),
            Answer::Alert("UnknownCA"),
        ),
        (
            "foreign key under the CA's name",
            Some(impostor.client("mhlw", 1)),
            Answer::Alert("DecryptError"),
        ),
        (
            "expired",
            Some(ca.leaf(expired)),
            Answer::Alert("CertificateExpired"),
        ),
        (
            "not yet valid",
            Some(ca.leaf(not_yet)),
            Answer::Alert("CertificateExpired"),
        ),
        (
            "server-auth EKU only",
            Some(ca.leaf(server_only)),
            Answer::Alert("UnsupportedCertificate"),
        ),
        (
            "a CA certificate as client",
            Some(ca.leaf(sub_ca)),
            Answer::Alert("CertificateUnknown"),
        ),
        (
            "the client CA itself",
            Some(ca.itself()),
            Answer::Alert("CertificateUnknown"),
        ),
        // RFC 5280: no extended key usage means any purpose.
        (
            "no extended key usage",
            Some(ca.leaf(no_usage)),
            Answer::Served,
        ),
        (
            "unknown identity",
            Some(ca.client("nta", 15)),
            Answer::Status(
                Code::Unauthenticated,
                "'nta' is not an agency in the policy",
            ),
        ),
        (
            "two Common Names",
            Some(ca.leaf(two)),
            Answer::Status(Code::Unauthenticated, "more than one Common Name"),
        ),
    ];
    for (what, cert, answer) in cases {
        let started = Instant::now();
        let refusal = tls_refusal(server.addr(), &ca.pem(), cert.as_ref()).await;
        match &answer {
            Answer::Alert(alert) => {
                let refusal = refusal.unwrap_or_else(|| panic!("{what}: accepted"));
                assert!(refusal.contains(alert), "{what}: {refusal}");
            }
            Answer::Status(..) | Answer::Served => assert_eq!(refusal, None, "{what}"),
        }
        if let Some(cert) = &cert {
            let answered = derive(&mut server.codes(cert), 2).await;
            match answer {
                Answer::Served => assert_eq!(answered.unwrap(), 2, "{what}"),
                Answer::Alert(_) => {
                    refused_by_transport(&answered.unwrap_err(), what);
                }
                Answer::Status(code, message) => {
                    let status = answered.unwrap_err();
                    assert_eq!(status.code(), code, "{what}: {status:?}");
                    assert!(status.message().contains(message), "{what}: {status:?}");
                }
            }
        }
        assert!(
            started.elapsed() < PROMPT,
            "{what}: {:?}",
            started.elapsed()
        );
        assert_eq!(derive(&mut valid, 3).await.unwrap(), 2, "after {what}");
    }
    server.stop().await;
}

/// Certificates and a CRL made by the `openssl` command line (`openssl ca`
/// and `openssl ca -gencrl`, the CRL converted to DER by `openssl crl`),
/// as an agency CA run with OpenSSL would make them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_made_certificates_and_crl_are_honoured() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED: the openssl command is not installed (.ci/run installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = OpensslCa::new(dir.path().join("pki"));
    let server = pki.issue("localhost", "server");
    let mhlw = pki.issue("mhlw", "client");
    let shinjuku = pki.issue("city-shinjuku", "client");
    pki.run(&[
        "ca",
        "-config",
        "ca.cnf",
        "-batch",
        "-revoke",
        "city-shinjuku.pem",
    ]);
    pki.run(&[
        "ca", "-config", "ca.cnf", "-batch", "-gencrl", "-out", "crl.pem",
    ]);
    pki.run(&[
        "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
    ]);

    let (mut config, _) = common::server_config(dir.path(), POLICY, [9; 32]);
    fs::copy(pki.path("ca.pem"), dir.path().join("ca.pem")).unwrap();
    fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
    fs::write(dir.path().join("server.key"), &server.key).unwrap();
    config.crls = vec![pki.path("crl.der")];
    let running = service::start(config, &mut std::io::sink()).await.unwrap();
    let ca_pem = fs::read_to_string(pki.path("ca.pem")).unwrap();

    let alert = tls_refusal(running.addr, &ca_pem, Some(&shinjuku))
        .await
        .unwrap();
    assert!(alert.contains("CertificateRevoked"), "{alert}");
    let status = derive(&mut codes_at(running.addr, &ca_pem, &shinjuku), 1)
        .await
        .unwrap_err();
    refused_by_transport(&status, "revoked by openssl");
    assert_eq!(
        derive(&mut codes_at(running.addr, &ca_pem, &mhlw), 2)
            .await
            .unwrap(),
        2
    );

    // mhlw is revoked too; the PEM list is installed by a reload.
    pki.run(&["ca", "-config", "ca.cnf", "-batch", "-revoke", "mhlw.pem"]);
    pki.run(&[
        "ca", "-config", "ca.cnf", "-batch", "-gencrl", "-out", "crl.pem",
    ]);
    pki.run(&[
        "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
    ]);
    let mut open = codes_at(running.addr, &ca_pem, &mhlw);
    assert_eq!(derive(&mut open, 3).await.unwrap(), 2);
    running.reload_crls().unwrap();
    let refused = derive(&mut open, 4).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    running.stop().await.unwrap();
}

/// A CA run by the `openssl` command line in its own folder.
struct OpensslCa {
    dir: PathBuf,
}

const OPENSSL_CA: &str = "[ca]
default_ca = agencies
[agencies]
database = index.txt
new_certs_dir = issued
certificate = ca.pem
private_key = ca.key
serial = serial
crlnumber = crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
";

impl OpensslCa {
    fn new(dir: PathBuf) -> Self {
        fs::create_dir_all(dir.join("issued")).unwrap();
        fs::write(dir.join("ca.cnf"), OPENSSL_CA).unwrap();
        fs::write(dir.join("index.txt"), "").unwrap();
        fs::write(dir.join("serial"), "1000\n").unwrap();
        fs::write(dir.join("crlnumber"), "1000\n").unwrap();
        let ca = OpensslCa { dir };
        ca.run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=openssl agencies CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ca
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A certificate for `name` with the `extensions` section of ca.cnf,
    /// issued by `openssl ca` (so it can revoke it), in `name.pem`.
    fn issue(&self, name: &str, extensions: &str) -> Cert {
        let key = format!("{name}.key");
        let request = format!("{name}.csr");
        let cert = format!("{name}.pem");
        self.run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &request,
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.run(&[
            "ca",
            "-config",
            "ca.cnf",
            "-batch",
            "-extensions",
            extensions,
            "-in",
            &request,
            "-out",
            &cert,
            "-notext",
        ]);
        let pem = fs::read_to_string(self.path(&cert)).unwrap();
        Cert {
            der: CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec(),
            pem,
            key: fs::read_to_string(self.path(&key)).unwrap(),
        }
    }
}

/// An admin reloads the agencies' CRLs through the admin plane (what
/// SIGHUP does): a revoking list is put in force at once; an older one is
/// refused with FAILED_PRECONDITION and the list in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reloads_the_crls_through_the_admin_plane() {
    use fugo::proto::fugo::v1::ReloadCrlsRequest;
    use fugo::proto::fugo::v1::admin_client::AdminClient;
    logs();
    let ca = Ca::new("agencies CA");
    let stale = ca.crl(&[]);
    let current = ca.crl(&[]);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("agencies.crl"), &current).unwrap();
    let mut config = config(dir.path(), &ca, &["agencies.crl"]);
    // The admin CA has a revocation list of its own.
    let admin_ca = Ca::new("admin CA");
    fs::write(dir.path().join("admin-ca.pem"), admin_ca.pem()).unwrap();
    fs::write(dir.path().join("admins.crl"), admin_ca.crl(&[])).unwrap();
    config.admin = Some(fugo::service::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: dir.path().join("admin-ca.pem"),
        identities: vec!["ops".to_owned(), "ops-2".to_owned()],
        crls: vec![dir.path().join("admins.crl")],
    });
    let running = service::start(config, &mut std::io::sink()).await.unwrap();
    let admin_at = |cert: &Cert| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert.pem, &cert.key));
        let channel = Endpoint::from_shared(format!("https://{}", running.admin_addr.unwrap()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_lazy();
        AdminClient::new(channel)
    };
    let ops = admin_ca.client("ops", 5);
    let ops_2 = admin_ca.client("ops-2", 6);
    let mut admin = admin_at(&ops);
    let mhlw = ca.client("mhlw", 1);
    let mut codes = codes_at(running.addr, &ca.pem(), &mhlw);
    assert_eq!(derive(&mut codes, 1).await.unwrap(), 2);

    fs::write(dir.path().join("agencies.crl"), ca.crl(&[1])).unwrap();
    let reloaded = admin
        .reload_crls(ReloadCrlsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.revoked, 1);
    let refused = derive(&mut codes, 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // An older list: refused by name, the revoking list stays in force.
    fs::write(dir.path().join("agencies.crl"), &stale).unwrap();
    let error = admin.reload_crls(ReloadCrlsRequest {}).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    assert!(
        error.message().contains("CRL reload refused") && error.message().contains("agencies.crl"),
        "{}",
        error.message()
    );
    let refused = derive(&mut codes_at(running.addr, &ca.pem(), &mhlw), 3)
        .await
        .unwrap_err();
    assert_ne!(refused.code(), Code::Ok);

    // An admin revoked by the admin CA's list: once another admin reloads,
    // the open connection is refused at its next call, a new one at the
    // handshake; the other admin goes on.
    fs::write(dir.path().join("agencies.crl"), ca.crl(&[1])).unwrap();
    fs::write(dir.path().join("admins.crl"), admin_ca.crl(&[5])).unwrap();
    let mut other = admin_at(&ops_2);
    let reloaded = other
        .reload_crls(ReloadCrlsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.revoked, 2, "one agency and one admin");
    let refused = admin.reload_crls(ReloadCrlsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused.message().contains("revoked"),
        "{}",
        refused.message()
    );
    let alert = tls_refusal(running.admin_addr.unwrap(), &ca.pem(), Some(&ops))
        .await
        .unwrap();
    assert!(alert.contains("CertificateRevoked"), "{alert}");
    assert!(other.reload_crls(ReloadCrlsRequest {}).await.is_ok());
    running.stop().await.unwrap();
}
