//! The network edge: accepting TCP, the TLS handshake, and what a client
//! may hold of the server before and after it has proved who it is.
//!
//! ```text
//!  accept ─► connection cap (a permit per connection, or close at once)
//!         ─► TCP_NODELAY
//!         ─► TLS handshake under a timeout (its own task; client
//!            certificate required, signed by the client CA and not
//!            revoked by the CRLs in force; the setup is swapped whole
//!            by a reload, see [`Acceptor`])
//!         ─► client certificate parsed once (identity::PeerCertificate)
//!         ─► tonic, which sees a `Connection` with its `Peer`; a
//!            connection that sends nothing for the idle timeout is closed
//! ```
//!
//! Accept errors (out of file descriptors, most likely) pause the accept
//! loop, doubling up to a second, instead of spinning.
//!
//! Public so that a benchmark's baseline runs on this very transport:
//! [`tls_acceptor`], [`incoming`] and [`server`] are what
//! [`start`](super::start) serves on, and a server built from the same three
//! calls differs from fugo only in the services it adds (D70).
//!
//! ```no_run
//! # async fn example(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use fugo::service::{Limits, edge};
//!
//! let limits = Limits::default();
//! let tls = edge::tls_acceptor(
//!     (Path::new("ca.pem"), ca),
//!     (Path::new("server.pem"), cert),
//!     (Path::new("server.key"), key),
//! )?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let (_health, health) = tonic_health::server::health_reporter();
//! edge::server(&limits)
//!     .add_service(health)
//!     .serve_with_incoming(edge::incoming(listener, tls, &limits))
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::Connected;

use super::identity::PeerCertificate;
use super::limits::Limits;
use super::revocation::{Crls, Revocations};

/// The shortest and longest pause after an accept error.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

/// At most one warning per this long for a repeated edge event.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Connections handed to tonic but not yet taken.
const QUEUE: usize = 64;

/// The TLS server setup: `server_cert` and `server_key` identify the
/// server; every client must present a certificate signed by `client_ca`.
/// Only HTTP/2 is offered (ALPN `h2`). Each file is given as its path
/// (named in the error) and its PEM text; the error says which file is
/// unusable and why. No certificate revocation lists: `fugo serve` adds
/// those named by `[tls] crl`.
pub fn tls_acceptor(
    client_ca: (&Path, &[u8]),
    server_cert: (&Path, &[u8]),
    server_key: (&Path, &[u8]),
) -> Result<Acceptor, String> {
    let (config, crls) = tls_setup(client_ca, server_cert, server_key, &[])?;
    Ok(Acceptor::new(config, crls))
}

/// [`tls_acceptor`]'s setup with the revocation lists in `crls` (each its
/// path and contents, PEM or DER), checked against the client CA (see
/// `revocation`). With lists, a client certificate is refused at the
/// handshake when its CA's list revokes it, when its CA has no list, or
/// when that list has expired (D132).
pub(crate) fn tls_setup(
    client_ca: (&Path, &[u8]),
    server_cert: (&Path, &[u8]),
    server_key: (&Path, &[u8]),
    crls: &[(&Path, &[u8])],
) -> Result<(Arc<ServerConfig>, Crls), String> {
    let shown = |path: &Path, what: &str| format!("{}: {what}", path.display());
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let (verifier, crls) = client_verifier(client_ca, crls, &provider)?;
    let chain = CertificateDer::pem_slice_iter(server_cert.1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| shown(server_cert.0, &format!("not PEM: {error}")))?;
    let key = PrivateKeyDer::from_pem_slice(server_key.1)
        .map_err(|error| shown(server_key.0, &format!("no private key: {error}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| shown(server_cert.0, &format!("unusable with its key: {error}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), crls))
}

/// What a handshake checks of a client certificate: signed by
/// `client_ca` (its path and PEM text), for client authentication, and,
/// with revocation lists, not revoked by its CA's list, which must be
/// there and current. Also how `fugo admin restore` checks its admin's
/// certificate with no connection (D203).
pub(crate) fn client_verifier(
    client_ca: (&Path, &[u8]),
    crls: &[(&Path, &[u8])],
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, Crls), String> {
    let shown = |path: &Path, what: &str| format!("{}: {what}", path.display());
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(client_ca.1) {
        let certificate =
            certificate.map_err(|error| shown(client_ca.0, &format!("not PEM: {error}")))?;
        roots
            .add(certificate.clone())
            .map_err(|error| shown(client_ca.0, &format!("not a CA certificate: {error}")))?;
        anchors.push(certificate);
    }
    let crls = Crls::load(crls, (client_ca.0, &anchors), provider)?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    if !crls.is_empty() {
        // The whole chain, unknown status refused (the default), an expired
        // list refused too: fail closed, as OpenSSL and nginx do (D132).
        verifier = verifier
            .with_crls(crls.ders())
            .enforce_revocation_expiration();
    }
    let verifier = verifier
        .build()
        .map_err(|error| shown(client_ca.0, &format!("unusable client CA: {error}")))?;
    Ok((verifier, crls))
}

/// The TLS setup in force, replaceable while the server runs: each
/// handshake uses the setup in force when it starts, and every accepted
/// client certificate is checked against the revocation lists in force on
/// each call (D131).
#[derive(Clone)]
pub struct Acceptor {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    revocations: Revocations,
}

impl Acceptor {
    pub(crate) fn new(config: Arc<ServerConfig>, crls: Crls) -> Self {
        let revocations = Revocations::default();
        revocations.install(Arc::new(crls));
        Acceptor {
            config: Arc::new(RwLock::new(config)),
            revocations,
        }
    }

    /// Puts a new setup in force: the lists first, so that no call is
    /// decided under lists older than its connection's handshake.
    pub(crate) fn install(&self, config: Arc<ServerConfig>, crls: Crls) {
        self.revocations.install(Arc::new(crls));
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The revocation lists in force.
    pub(crate) fn crls(&self) -> Arc<Crls> {
        self.revocations.current()
    }

    fn tls(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(
            &self.config.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

/// What the service knows about the other end of a connection; tonic puts
/// it in every request's extensions.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub(crate) addr: SocketAddr,
    /// The client certificate, parsed once.
    pub(crate) certificate: Arc<PeerCertificate>,
}

/// One client connection after its TLS handshake. Reading fails once the
/// client has sent nothing for the idle timeout, which ends the connection.
/// Holds one of the `max_connections` permits until dropped.
pub struct Connection {
    tls: TlsStream<TcpStream>,
    peer: Peer,
    idle: Duration,
    last_read: Instant,
    deadline: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Connection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.tls).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                // The timer is moved only when it fires, not on every read.
                while this.deadline.as_mut().poll(cx).is_ready() {
                    let due = this.last_read + this.idle;
                    if Instant::now() >= due {
                        tracing::debug!(addr = %this.peer.addr, "idle connection closed");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client sent nothing for the idle timeout",
                        )));
                    }
                    this.deadline.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Accepts on `listener` until the returned stream is dropped (tonic drops
/// it on shutdown, which closes the listener): the connection cap, TCP_NODELAY,
/// the TLS handshake under `limits.handshake_timeout` and the idle timeout
/// are applied here. Hand the stream to `serve_with_incoming` of a router
/// built on [`server`].
pub fn incoming(
    listener: TcpListener,
    acceptor: Acceptor,
    limits: &Limits,
) -> ReceiverStream<Result<Connection, Infallible>> {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tokio::spawn(accept_loop(listener, acceptor, limits.clone(), sender));
    ReceiverStream::new(receiver)
}

/// tonic's server with fugo's HTTP/2 settings from `limits`: streams per
/// connection, flow-control windows, header size and keepalive. Add the
/// services, then serve on [`incoming`].
pub fn server(limits: &Limits) -> Server {
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .http2_max_header_list_size(limits.max_header_bytes)
        .http2_keepalive_interval(limits.keepalive_interval)
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
}

type Sender = mpsc::Sender<Result<Connection, Infallible>>;

async fn accept_loop(listener: TcpListener, acceptor: Acceptor, limits: Limits, sender: Sender) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut pause = Duration::ZERO;
    let mut full = Throttle::default();
    let mut failing = Throttle::default();
    let refused = Arc::new(Mutex::new(Throttle::default()));
    loop {
        let accepted = tokio::select! {
            () = sender.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, addr) = match accepted {
            Ok(accepted) => {
                pause = Duration::ZERO;
                accepted
            }
            Err(error) => {
                pause = (pause * 2).clamp(BACKOFF.0, BACKOFF.1);
                if let Some(times) = failing.tick() {
                    tracing::warn!(%error, times, pause_ms = pause.as_millis() as u64,
                        "cannot accept connections; pausing");
                }
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(times) = full.tick() {
                tracing::warn!(%addr, times, max_connections = limits.max_connections,
                    "connection limit reached; closing new connections");
            }
            drop(tcp);
            continue;
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%addr, %error, "cannot set TCP_NODELAY");
        }
        tokio::spawn(handshake(
            tcp,
            addr,
            acceptor.clone(),
            limits.clone(),
            permit,
            sender.clone(),
            Arc::clone(&refused),
        ));
    }
}

async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    acceptor: Acceptor,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    sender: Sender,
    refused: Arc<Mutex<Throttle>>,
) {
    let accept = acceptor.tls().accept(tcp);
    let error = match tokio::time::timeout(limits.handshake_timeout, accept).await {
        Ok(Ok(tls)) => {
            let revocations = acceptor.revocations.clone();
            return connected(tls, addr, revocations, &limits, permit, sender).await;
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    // An agency whose certificate the CA did not sign needs to be seen in
    // the log; a scanner must not flood it.
    let times = refused
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .tick();
    match times {
        Some(times) => tracing::info!(%addr, error, times, "TLS handshake failed"),
        None => tracing::debug!(%addr, error, "TLS handshake failed"),
    }
}

async fn connected(
    tls: TlsStream<TcpStream>,
    addr: SocketAddr,
    revocations: Revocations,
    limits: &Limits,
    permit: OwnedSemaphorePermit,
    sender: Sender,
) {
    // The verifier requires a client certificate, so there is one.
    let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return;
    };
    let certificate = Arc::new(PeerCertificate::from_der(leaf.as_ref(), revocations));
    let now = Instant::now();
    let connection = Connection {
        tls,
        peer: Peer { addr, certificate },
        idle: limits.idle_timeout,
        last_read: now,
        deadline: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
        _permit: permit,
    };
    // Fails only when the server is stopping: the connection is dropped.
    let _ = sender.send(Ok(connection)).await;
}

/// Lets a repeated event be logged at most once per [`WARN_EVERY`], with
/// how many times it happened since (this one included).
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    times: u64,
}

impl Throttle {
    fn tick(&mut self) -> Option<u64> {
        self.times += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.times))
    }
}
