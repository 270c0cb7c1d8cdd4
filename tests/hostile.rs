//! The network edge under hostile and odd traffic: a real server on
//! 127.0.0.1:0, real TLS, raw TCP, raw TLS and hand-made HTTP/2 requests.
//! Every loop here is bounded in count and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::proto::fugo::v1::DeriveRequest;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::service::{self, Limits, Running, ServeConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::Code;
use tonic::codegen::http;
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
epoch = 2
"#;

/// Everything logged by the servers of this test binary.
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

fn log_lines_with(needle: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// A test CA that signs whatever subject a test asks for.
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate (PEM and DER) and its key.
struct Cert {
    pem: String,
    der: Vec<u8>,
    key: String,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "edge CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { issuer }
    }

    fn leaf(
        &self,
        subject: DistinguishedName,
        dns: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Cert {
        let mut params =
            CertificateParams::new(dns.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Cert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Cert {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, "localhost");
        self.leaf(
            subject,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_with(&self, subject: DistinguishedName, dns: &[&str]) -> Cert {
        self.leaf(subject, dns, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with one UTF8String Common Name.
    fn client(&self, name: &str) -> Cert {
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, DnValue::Utf8String(name.to_owned()));
        self.client_with(subject, &[])
    }
}

struct Edge {
    dir: tempfile::TempDir,
    pki: Pki,
    running: Option<Running>,
}

impl Edge {
    async fn start(limits: Limits) -> Self {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("master.key");
        fs::write(
            &key,
            MasterKey::from_bytes([7; 32]).to_file_contents().as_bytes(),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        }
        fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
        let pki = Pki::new();
        let server = pki.server();
        fs::write(dir.path().join("ca.pem"), pki.issuer.pem()).unwrap();
        fs::write(dir.path().join("server.pem"), &server.pem).unwrap();
        fs::write(dir.path().join("server.key"), &server.key).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let private = fs::Permissions::from_mode(0o600);
            fs::set_permissions(dir.path().join("server.key"), private).unwrap();
        }
        let config = ServeConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            policy: dir.path().join("policy.toml"),
            master_key: fugo::service::MasterKeySource::File(key),
            fingerprint: KeyHierarchy::new(&MasterKey::from_bytes([7; 32])).fingerprint(),
            shutdown_grace: Duration::from_secs(2),
            dev_mode: false,
            client_ca: dir.path().join("ca.pem"),
            server_cert: dir.path().join("server.pem"),
            server_key: dir.path().join("server.key"),
            crls: Vec::new(),
            limits,
            audit: fugo::service::AuditConfig::default(),
            metrics: None,
        };
        let running = service::start(config, &mut std::io::sink()).await.unwrap();
        Edge {
            dir,
            pki,
            running: Some(running),
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.running().addr
    }

    /// A tonic client presenting `cert`, on a connection of its own.
    async fn codes(&self, cert: &Cert) -> CodesClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.pki.issuer.pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(&cert.pem, &cert.key));
        let channel = Endpoint::from_shared(format!("https://{}", self.addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        CodesClient::new(channel)
    }

    /// A raw TLS connection presenting `cert`, offering HTTP/2.
    async fn tls(
        &self,
        cert: &Cert,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.tls_to(self.addr(), cert).await
    }

    /// The same to another server with the same CA.
    async fn tls_to(
        &self,
        addr: std::net::SocketAddr,
        cert: &Cert,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake(tcp, cert).await
    }

    /// A TLS handshake on `tcp` presenting `cert`, offering HTTP/2.
    async fn handshake(
        &self,
        tcp: TcpStream,
        cert: &Cert,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pki.issuer.pem().as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from(cert.der.clone())],
                PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// A hand-made HTTP/2 client on a raw TLS connection.
    async fn h2(&self, cert: &Cert) -> h2::client::SendRequest<Bytes> {
        let tls = self.tls(cert).await.unwrap();
        let (send, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        send.ready().await.unwrap()
    }

    async fn stop(mut self) {
        self.running.take().unwrap().stop().await.unwrap();
    }
}

fn limits() -> Limits {
    Limits::default()
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
        .collect()
}

/// A gRPC request on `path`: headers now, the body as the test sends it.
fn grpc_request(path: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// One length-prefixed gRPC message around `payload`.
fn frame(payload: &[u8]) -> Bytes {
    let mut bytes = vec![0u8];
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(payload);
    Bytes::from(bytes)
}

/// The grpc-status and grpc-message of a response, from its headers
/// (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> (i32, String) {
    let response = response.await.unwrap();
    let read = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|code| {
            (
                code.to_str().unwrap().parse::<i32>().unwrap(),
                headers
                    .get("grpc-message")
                    .map(|m| percent_decoded(m.to_str().unwrap()))
                    .unwrap_or_default(),
            )
        })
    };
    if let Some(status) = read(response.headers()) {
        return status;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
    }
    read(&body.trailers().await.unwrap().unwrap()).unwrap()
}

/// grpc-message is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Reads until the server closes the connection; how long that took.
async fn time_to_close(stream: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buffer)).await {
            Err(_) => panic!("the connection was still open after {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_sent_byte_by_byte_is_cut_at_the_handshake_timeout() {
    let edge = Edge::start(Limits {
        handshake_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    // The first bytes of a TLS 1.2 ClientHello record, then more, slowly.
    let hello: Vec<u8> = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]
    .into_iter()
    .chain(std::iter::repeat(0x41))
    .take(60)
    .collect();
    let mut tcp = TcpStream::connect(edge.addr()).await.unwrap();
    let started = Instant::now();
    let mut closed = None;
    for byte in hello {
        if tcp.write_all(&[byte]).await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut buffer = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_millis(100), tcp.read(&mut buffer)).await;
        if let Ok(Ok(0) | Err(_)) = read {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("the slow handshake was still open after 6 s");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}, the handshake timeout is 1 s"
    );
    // Meanwhile others are served: handshakes do not queue behind each other.
    let mut slow = TcpStream::connect(edge.addr()).await.unwrap();
    slow.write_all(&[0x16]).await.unwrap();
    let mut client = edge.codes(&edge.pki.client("mhlw")).await;
    let answer = client
        .derive(DeriveRequest {
            numbers: numbers(1, 1),
        })
        .await
        .unwrap();
    assert_eq!(answer.into_inner().results.len(), 1);
    drop(slow);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let edge = Edge::start(Limits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let cert = edge.pki.client("mhlw");
    // A completed TLS handshake, then silence.
    let mut idle = edge.tls(&cert).await.unwrap();
    let closed = time_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed after {closed:?}, the idle timeout is 1 s"
    );

    // An HTTP/2 connection with no calls is idle too.
    let tls = edge.tls(&cert).await.unwrap();
    let (send, connection) = h2::client::handshake(tls).await.unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open 5 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
    drop(send);

    // A connection that keeps calling, every 300 ms for 2.4 s, stays up.
    let mut send = edge.h2(&cert).await;
    let mut request = DeriveRequest::default();
    for i in 0..8 {
        request.numbers = numbers(1, i);
        let payload = prost::Message::encode_to_vec(&request);
        let (response, mut body) = send
            .send_request(grpc_request("/fugo.v1.Codes/Derive"), false)
            .unwrap();
        body.send_data(frame(&payload), true).unwrap();
        assert_eq!(grpc_status(response).await.0, 0, "call {i}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        send = send.ready().await.unwrap();
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_until_one_ends() {
    let edge = Edge::start(Limits {
        max_connections: 2,
        ..limits()
    })
    .await;
    let cert = edge.pki.client("mhlw");
    let first = edge.tls(&cert).await.unwrap();
    let _second = edge.tls(&cert).await.unwrap();
    let started = Instant::now();
    let refused = tokio::time::timeout(Duration::from_secs(5), edge.tls(&cert))
        .await
        .expect("a connection past the cap must be closed, not left hanging");
    assert!(refused.is_err(), "a third connection was accepted");
    assert!(started.elapsed() < Duration::from_secs(2));

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if edge.tls(&cert).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gets_at_most_max_concurrent_streams() {
    let edge = Edge::start(Limits {
        max_concurrent_streams: 4,
        ..limits()
    })
    .await;
    let client = edge.codes(&edge.pki.client("mhlw")).await;
    // Four streams held open on one connection, then a fifth call.
    let mut open = Vec::new();
    for _ in 0..4 {
        let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(1);
        let responses = client
            .clone()
            .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .unwrap();
        open.push((sender, responses));
    }
    let mut fifth = client.clone();
    let call = tokio::spawn(async move {
        fifth
            .derive(DeriveRequest {
                numbers: numbers(1, 9),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!call.is_finished(), "a fifth stream was served at once");
    // One stream ends: the fifth call goes through.
    drop(open.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the fifth call never ran")
        .unwrap()
        .unwrap();
    assert_eq!(answer.into_inner().results.len(), 1);
    drop(open);

    // A raw HTTP/2 client is told the same limit in the server's SETTINGS.
    let tls = edge.tls(&edge.pki.client("mhlw")).await.unwrap();
    let (send, mut connection) = h2::client::handshake(tls).await.unwrap();
    let drive = tokio::time::timeout(Duration::from_millis(500), &mut connection).await;
    assert!(drive.is_err(), "the connection ended: {drive:?}");
    assert_eq!(connection.max_concurrent_send_streams(), 4);
    drop(send);
    edge.stop().await;
}

/// The benchmark's baseline runs on `service::edge` (D70): a service
/// served by its three calls gets the transport `service::start` gives
/// fugo — the same TLS acceptor, connection cap and HTTP/2 settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_on_the_public_edge_gets_fugos_transport() {
    let limits = Limits {
        max_concurrent_streams: 5,
        max_connections: 1,
        ..limits()
    };
    let fugo = Edge::start(limits.clone()).await;
    let file = |name: &str| {
        (
            fugo.dir.path().join(name),
            fs::read(fugo.dir.path().join(name)).unwrap(),
        )
    };
    let (ca, cert, key) = (file("ca.pem"), file("server.pem"), file("server.key"));
    let tls =
        service::edge::tls_acceptor((&ca.0, &ca.1), (&cert.0, &cert.1), (&key.0, &key.1)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = listener.local_addr().unwrap();
    let (_health, health) = tonic_health::server::health_reporter();
    let server = service::edge::server(&limits)
        .add_service(health)
        .serve_with_incoming(service::edge::incoming(listener, tls, &limits));
    let server = tokio::spawn(server);

    let client = fugo.pki.client("mhlw");
    for addr in [fugo.addr(), bare] {
        // The stream limit arrives in the server's SETTINGS ...
        let tls = fugo.tls_to(addr, &client).await.unwrap();
        let (send, mut connection) = h2::client::handshake(tls).await.unwrap();
        let drive = tokio::time::timeout(Duration::from_millis(300), &mut connection).await;
        assert!(drive.is_err(), "{addr}: the connection ended: {drive:?}");
        assert_eq!(connection.max_concurrent_send_streams(), 5, "{addr}");
        // ... and the one connection allowed is taken.
        let second = tokio::time::timeout(Duration::from_secs(5), fugo.tls_to(addr, &client))
            .await
            .expect("a connection past the cap must be closed, not left hanging");
        assert!(second.is_err(), "{addr}: a second connection was accepted");
        drop((send, connection));
    }
    server.abort();
    fugo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_is_refused_before_its_body_is_read_and_logged() {
    let edge = Edge::start(limits()).await;
    let stranger = edge.pki.client("nta");
    let mut send = edge.h2(&stranger).await;
    // A unary call announcing a 4,000,000-byte message, 64 KiB of it sent,
    // never finished.
    let (response, mut body) = send
        .send_request(grpc_request("/fugo.v1.Codes/Derive"), false)
        .unwrap();
    let mut start = vec![0u8];
    start.extend_from_slice(&4_000_000u32.to_be_bytes());
    start.extend_from_slice(&[0x0a; 65_536]);
    body.send_data(Bytes::from(start), false).unwrap();
    let (code, message) = tokio::time::timeout(Duration::from_secs(3), grpc_status(response))
        .await
        .expect("no answer while the body is unfinished");
    assert_eq!(code, Code::Unauthenticated as i32, "{message}");
    assert!(
        message.contains("is not an agency in the policy"),
        "{message}"
    );
    send = send.ready().await.unwrap();
    drop((send, body));

    let fingerprint: String = Sha256::digest(&stranger.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let lines = log_lines_with(&fingerprint);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("client certificate refused") && l.contains("CN=nta")),
        "{lines:?}"
    );
    edge.stop().await;
}

/// Calls derive with `cert` and expects UNAUTHENTICATED for `reason`,
/// logged with the certificate's fingerprint.
async fn refused(edge: &Edge, cert: Cert, reason: &str) {
    let status = edge
        .codes(&cert)
        .await
        .derive(DeriveRequest {
            numbers: numbers(1, 2),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{reason}");
    assert!(status.message().contains(reason), "{}", status.message());
    let fingerprint: String = Sha256::digest(&cert.der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        log_lines_with(&fingerprint)
            .iter()
            .any(|l| l.contains(reason)),
        "refusal of {reason} not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_one_plain_common_name_and_nothing_else() {
    let edge = Edge::start(limits()).await;
    let pki = &edge.pki;
    // A BMPString "mhlw" with the DNS name of another agency: neither counts.
    let mut bmp = DistinguishedName::new();
    bmp.push(
        DnType::CommonName,
        DnValue::BmpString("mhlw".try_into().unwrap()),
    );
    refused(
        &edge,
        pki.client_with(bmp, &["city-shinjuku"]),
        "not a UTF8String or PrintableString",
    )
    .await;

    // Two Common Names (the second under the same OID, 2.5.4.3).
    let mut two = DistinguishedName::new();
    two.push(DnType::CommonName, "mhlw");
    two.push(DnType::CustomDnType(vec![2, 5, 4, 3]), "city-shinjuku");
    refused(
        &edge,
        pki.client_with(two, &[]),
        "more than one Common Name",
    )
    .await;

    // No Common Name, only a DNS name.
    let mut none = DistinguishedName::new();
    none.push(DnType::OrganizationName, "MHLW");
    refused(
        &edge,
        pki.client_with(none, &["mhlw"]),
        "has no Common Name",
    )
    .await;

    // A PrintableString and a UTF8String "mhlw" are mhlw.
    let mut printable = DistinguishedName::new();
    printable.push(
        DnType::CommonName,
        DnValue::PrintableString("mhlw".try_into().unwrap()),
    );
    for cert in [pki.client_with(printable, &[]), pki.client("mhlw")] {
        let answer = edge
            .codes(&cert)
            .await
            .derive(DeriveRequest {
                numbers: numbers(1, 3),
            })
            .await
            .unwrap();
        assert_eq!(answer.into_inner().results.len(), 1);
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_invalid_argument() {
    let edge = Edge::start(limits()).await;
    let mut send = edge.h2(&edge.pki.client("mhlw")).await;
    let cases: [(&str, &[u8]); 3] = [
        // numbers (field 1, a string) holding invalid UTF-8.
        ("invalid UTF-8", &[0x0a, 0x02, 0xff, 0xfe]),
        // field 1 as a varint: the wrong wire type.
        ("wrong wire type", &[0x08, 0x01]),
        // field 1 announcing 5 bytes and carrying 1.
        ("truncated", &[0x0a, 0x05, 0x31]),
    ];
    for path in ["/fugo.v1.Codes/Derive", "/fugo.v1.Codes/DeriveStream"] {
        for (what, payload) in cases {
            let (response, mut body) = send.send_request(grpc_request(path), false).unwrap();
            body.send_data(frame(payload), true).unwrap();
            let (code, message) = grpc_status(response).await;
            assert_eq!(
                code,
                Code::InvalidArgument as i32,
                "{path} {what}: {message}"
            );
            assert!(message.contains("cannot be decoded"), "{message}");
            send = send.ready().await.unwrap();
        }
        // A gRPC frame announcing 10 bytes, the request ending after 3.
        let (response, mut body) = send.send_request(grpc_request(path), false).unwrap();
        body.send_data(
            Bytes::from_static(&[0, 0, 0, 0, 10, 0x0a, 0x01, 0x31]),
            true,
        )
        .unwrap();
        let (code, message) = grpc_status(response).await;
        assert_eq!(
            code,
            Code::InvalidArgument as i32,
            "{path} cut short: {message}"
        );
        send = send.ready().await.unwrap();
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_loses_a_certificate_the_reload_removed() {
    let edge = Edge::start(limits()).await;
    let mut mhlw = edge.codes(&edge.pki.client("mhlw")).await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(2);
    let mut responses = mhlw
        .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender
        .send(DeriveRequest {
            numbers: numbers(2, 4),
        })
        .await
        .unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().results.len(), 2);

    let rotated = POLICY.replace(
        r#"certificates = ["mhlw"]"#,
        r#"certificates = ["mhlw-2027"]"#,
    );
    assert_ne!(rotated, POLICY);
    fs::write(edge.dir.path().join("policy.toml"), rotated).unwrap();
    edge.running().reload_policy().unwrap();

    sender
        .send(DeriveRequest {
            numbers: numbers(2, 5),
        })
        .await
        .unwrap();
    let refused = responses.message().await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("'mhlw' is not an agency"),
        "{}",
        refused.message()
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_batch_is_logged_with_its_request_id_and_never_a_value() {
    let edge = Edge::start(limits()).await;
    let mut mhlw = edge.codes(&edge.pki.client("mhlw")).await;
    let mut sent = numbers(3, 6);
    sent.push("123456789012".to_owned()); // a bad check digit: one item fails
    let response = mhlw
        .derive(DeriveRequest {
            numbers: sent.clone(),
        })
        .await
        .unwrap();
    let id = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id in the response metadata")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16);
    let codes: Vec<String> = response
        .into_inner()
        .results
        .into_iter()
        .filter_map(|r| match r.result {
            Some(fugo::proto::fugo::v1::derive_result::Result::Code(code)) => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes.len(), 3);

    let lines = log_lines_with(&id);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(line.contains(" INFO "), "{line}");
    for field in [
        "batch done",
        "agency=mhlw",
        "operation=\"derive\"",
        "items=4",
        "ok=3",
        "failed=1",
        "micros=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }

    // A stream: one id, one line per batch, numbered.
    let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(2);
    let response = mhlw
        .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap();
    let stream_id = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let mut responses = response.into_inner();
    for batch in 0..2 {
        sender
            .send(DeriveRequest {
                numbers: numbers(2, 7 + batch),
            })
            .await
            .unwrap();
        responses.message().await.unwrap().unwrap();
    }
    drop(sender);
    assert!(responses.message().await.unwrap().is_none());
    let lines = log_lines_with(&stream_id);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("batch=0") && lines[1].contains("batch=1"));

    let all = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    for secret in sent.iter().chain(&codes) {
        assert!(!all.contains(secret.as_str()), "a value reached the log");
    }
    edge.stop().await;
}

/// `fugo serve` as a child process, so its memory can be read alone.
struct Child {
    process: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Child {
    /// Starts `fugo serve` with the files of `edge` (which keeps serving
    /// too, on its own port) and `limits` as the `[limits]` section.
    fn start(edge: &Edge, limits: &str) -> Self {
        Self::start_with_files(edge, limits, None)
    }

    /// The same with at most `files` open file descriptors.
    fn start_with_files(edge: &Edge, limits: &str, files: Option<u32>) -> Self {
        use std::io::BufRead;
        let dir = edge.dir.path();
        let fingerprint = KeyHierarchy::new(&MasterKey::from_bytes([7; 32])).fingerprint();
        let config = dir.join("fugo.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"child-data\"\npolicy = \"policy.toml\"\n\
                 master_key = \"master.key\"\nmaster_key_fingerprint = \"{fingerprint}\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                 [limits]\n{limits}\n"
            ),
        )
        .unwrap();
        let fugo = env!("CARGO_BIN_EXE_fugo");
        let config = config.to_str().unwrap();
        let mut command = match files {
            None => {
                let mut command = std::process::Command::new(fugo);
                command.args(["serve", "--config", config]);
                command
            }
            Some(files) => {
                let mut command = std::process::Command::new("sh");
                command.args([
                    "-c",
                    &format!("ulimit -n {files} && exec \"$0\" serve --config \"$1\""),
                    fugo,
                    config,
                ]);
                command
            }
        };
        let mut process = command
            .env("RUST_LOG", "warn")
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
        Child { process, addr }
    }

    /// Peak resident memory so far (VmHWM), in bytes.
    fn peak_rss(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.process.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .to_owned();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// CPU time used so far (user + system), in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.process.id())).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Opens `streams` unary derive calls on each of `connections` connections
/// to `addr`, each announcing a 4,000,000-byte message and sending all but
/// its last byte; waits `hold`, then returns how many calls were answered
/// (with any status) while their bodies were unfinished.
async fn unfinished_bodies(
    edge: &Edge,
    addr: std::net::SocketAddr,
    cert: &Cert,
    connections: usize,
    streams: usize,
    hold: Duration,
) -> usize {
    let mut message = vec![0u8];
    message.extend_from_slice(&4_000_000u32.to_be_bytes());
    message.resize(5 + 4_000_000 - 1, 0x0a);
    let message = Bytes::from(message);
    let mut answers = Vec::new();
    let mut held = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..connections {
        let tls = edge.tls_to(addr, cert).await.unwrap();
        let (mut send, connection) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        for _ in 0..streams {
            send = match tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await {
                Ok(Ok(ready)) => ready,
                _ => break, // at the server's stream limit
            };
            let (response, mut body) = send
                .send_request(grpc_request("/fugo.v1.Codes/Derive"), false)
                .unwrap();
            let _ = body.send_data(message.clone(), false);
            answers.push(tokio::spawn(response));
            held.push(body);
        }
        senders.push(send);
    }
    tokio::time::sleep(hold).await;
    // Answered: a response came. (A stream the client opened before it
    // read the server's stream limit is reset instead: not an answer.)
    let mut answered = 0;
    for answer in answers {
        if answer.is_finished() && matches!(answer.await, Ok(Ok(_))) {
            answered += 1;
        }
    }
    drop((held, senders));
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_bodies_pin_bounded_memory() {
    // Each phase has a fresh server process, so its peak is its own.
    let edge = Edge::start(limits()).await;
    let hold = Duration::from_secs(3);
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);

    // A certificate of the right CA that the policy does not know: 100
    // calls on 4 connections, each announcing 4 MB and sending all but 1 byte.
    let stranger = edge.pki.client("nta");
    let child = Child::start(&edge, "");
    let before = child.peak_rss();
    let answered = unfinished_bodies(&edge, child.addr, &stranger, 4, 25, hold).await;
    let stranger_growth = child.peak_rss().saturating_sub(before);
    drop(child);
    assert_eq!(answered, 100, "every stranger's call is refused at once");

    // An agency in the policy doing the same on one connection: bounded by
    // max_concurrent_streams × max_message_bytes (here 4 × 4 MiB).
    let agency = edge.pki.client("mhlw");
    let child = Child::start(&edge, "max_concurrent_streams = 4");
    let before = child.peak_rss();
    let answered = unfinished_bodies(&edge, child.addr, &agency, 1, 25, hold).await;
    let agency_growth = child.peak_rss().saturating_sub(before);
    drop(child);
    assert_eq!(answered, 0, "unfinished calls are not answered");

    println!(
        "peak RSS growth: stranger, 100 unfinished 4 MB calls on 4 connections: {:.1} MiB; \
         agency, 25 unfinished 4 MB calls on 1 connection (4 streams at once): {:.1} MiB",
        mib(stranger_growth),
        mib(agency_growth)
    );
    assert!(
        stranger_growth < 32 << 20,
        "a stranger pinned {:.1} MiB",
        mib(stranger_growth)
    );
    assert!(
        agency_growth < 4 * (4 << 20) + (24 << 20),
        "an agency pinned {:.1} MiB past its bound",
        mib(agency_growth)
    );
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_server_pauses_instead_of_spinning() {
    let edge = Edge::start(limits()).await;
    let child = Child::start_with_files(&edge, "", Some(48));
    // More silent connections than the server has descriptors for: the
    // rest wait in the listen backlog and every accept fails with EMFILE.
    let mut silent = Vec::new();
    for _ in 0..80 {
        silent.push(TcpStream::connect(child.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = child.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = child.cpu_ticks() - before;
    println!("CPU used in 2 s out of file descriptors: {used} ticks of 1/100 s");
    assert!(used < 40, "the server used {used}/200 ticks of CPU in 2 s");

    // Once the silent connections go, the server serves again.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    let cert = edge.pki.client("mhlw");
    loop {
        if let Ok(Ok(tls)) =
            tokio::time::timeout(Duration::from_secs(2), edge.tls_to(child.addr, &cert)).await
        {
            drop(tls);
            break;
        }
        assert!(Instant::now() < deadline, "the server did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(child);
    edge.stop().await;
}

#[test]
fn a_bad_limit_stops_the_server_with_its_name() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let edge = runtime.block_on(Edge::start(limits()));
    let dir = edge.dir.path();
    let fingerprint = KeyHierarchy::new(&MasterKey::from_bytes([7; 32])).fingerprint();
    for (limits, expected) in [
        (
            "max_connections = 0",
            "limits.max_connections must be at least 1",
        ),
        ("idle_timeout_secs = 5", "unknown field `idle_timeout_secs`"),
        (
            "keepalive_interval_seconds = 10",
            "limits.keepalive_interval_seconds must be 0 or at least idle_timeout_seconds",
        ),
    ] {
        let config = dir.join("bad.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"child-data\"\npolicy = \"policy.toml\"\n\
                 master_key = \"master.key\"\nmaster_key_fingerprint = \"{fingerprint}\"\n\
                 [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
                 [limits]\n{limits}\n"
            ),
        )
        .unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_fugo"))
            .args(["serve", "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{limits}: the server started");
        assert!(stderr.contains(expected), "{limits}: {stderr}");
    }
    runtime.block_on(edge.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_out_of_range() {
    let edge = Edge::start(Limits {
        max_message_bytes: 64 << 10,
        ..limits()
    })
    .await;
    let mut mhlw = edge.codes(&edge.pki.client("mhlw")).await;
    // 10,000 numbers: a batch the exchange accepts, a message over 64 KiB.
    let big = DeriveRequest {
        numbers: vec!["123456789018".to_owned(); 10_000],
    };
    let unary = mhlw.derive(big.clone()).await.unwrap_err();
    assert_eq!(unary.code(), Code::OutOfRange, "{unary:?}");
    assert!(unary.message().contains("too large"), "{}", unary.message());

    let (sender, receiver) = tokio::sync::mpsc::channel::<DeriveRequest>(2);
    let mut responses = mhlw
        .derive_stream(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    sender
        .send(DeriveRequest {
            numbers: numbers(1, 12),
        })
        .await
        .unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().results.len(), 1);
    sender.send(big).await.unwrap();
    let streamed = responses.message().await.unwrap_err();
    assert_eq!(streamed.code(), Code::OutOfRange, "{streamed:?}");

    // Within the limit all is well.
    let fits = mhlw
        .derive(DeriveRequest {
            numbers: numbers(100, 13),
        })
        .await
        .unwrap();
    assert_eq!(fits.into_inner().results.len(), 100);
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_server_naming_the_file() {
    let edge = Edge::start(limits()).await;
    let dir = edge.dir.path();
    let fingerprint = KeyHierarchy::new(&MasterKey::from_bytes([7; 32])).fingerprint();
    let config = |key: &str, ca: &str| ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("data"),
        policy: dir.join("policy.toml"),
        master_key: fugo::service::MasterKeySource::File(dir.join("master.key")),
        fingerprint,
        shutdown_grace: Duration::from_secs(1),
        dev_mode: false,
        client_ca: dir.join(ca),
        server_cert: dir.join("server.pem"),
        server_key: dir.join(key),
        crls: Vec::new(),
        limits: limits(),
        audit: fugo::service::AuditConfig::default(),
        metrics: None,
    };
    fs::write(dir.join("garbage.key"), "not a key\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let private = fs::Permissions::from_mode(0o600);
        fs::set_permissions(dir.join("garbage.key"), private).unwrap();
    }
    let error = service::start(config("garbage.key", "ca.pem"), &mut std::io::sink())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("garbage.key") && error.contains("no private key"),
        "{error}"
    );
    fs::write(dir.join("empty-ca.pem"), "").unwrap();
    let error = service::start(config("server.key", "empty-ca.pem"), &mut std::io::sink())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("empty-ca.pem"), "{error}");
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_is_logged_once_per_ten_seconds() {
    let edge = Edge::start(limits()).await;
    let foreign = Pki::new().client("mhlw");
    let mut ports = Vec::new();
    for _ in 0..3 {
        let tcp = TcpStream::connect(edge.addr()).await.unwrap();
        ports.push(tcp.local_addr().unwrap().port());
        // TLS 1.3: the client may finish first; the server refuses after.
        if let Ok(mut tls) = edge.handshake(tcp, &foreign).await {
            let _ = time_to_close(&mut tls, Duration::from_secs(5)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let logged = |port: u16| log_lines_with(&format!("addr=127.0.0.1:{port} "));
    while logged(ports[0]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first refusal was not logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = logged(ports[0]);
    assert!(
        first
            .iter()
            .any(|l| l.contains(" INFO ") && l.contains("TLS handshake failed")),
        "{first:?}"
    );
    println!("{}", first[0]);
    // The next two, within 10 s, are counted, not logged at info.
    assert!(logged(ports[1]).is_empty() && logged(ports[2]).is_empty());
    edge.stop().await;
}
