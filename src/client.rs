//! The batch-job side of the service: a [`Work`] that sends each chunk of
//! a file's items over one streaming call on one mutual-TLS connection and
//! hands back one result per item, in order. Files, chunks, rejects and
//! encodings are the file engine's ([`crate::bulk`]), the same as for
//! `fugo derive`.
//!
//! ```text
//! bulk reader ─chunk─► Remote::process ─batches of 1000─► gRPC stream
//!                              ◄──────── results, in order ────┘
//! ```
//!
//! At most 32 batches are unanswered; two workers share the stream so that
//! it never idles between chunks (see [`Remote`]). Text forms of the results (fields
//! separated by one space; CSV mode puts the first field in the item column
//! and appends the rest as the columns named in brackets):
//!
//! - derive: `CODE`
//! - seal: `TOKEN SERIAL` (token in URL-safe base64 without padding, serial
//!   in hex) `[serial]`
//! - redeem: `CODE SERIAL REQUESTER AFFAIR ITEMS EXPIRES NON_DISCLOSURE`,
//!   ITEMS comma-separated, EXPIRES and NON_DISCLOSURE as RFC 3339 UTC times
//!   (`2026-11-28T00:00:00Z`), NON_DISCLOSURE `-` when there is none (an
//!   empty field in CSV) `[serial, requester, affair, items, expires_at,
//!   non_disclosure_until]`
//! - reidentify: `NUMBER`
//! - rekey: `NEW_CODE OLD_CODE` `[old_code]` (the current-epoch code, then
//!   the code it replaces)
//! - migrate: `NEW_CODE OLD_CODE` `[old_code]` (the survivor's code, then
//!   the merged agency's code it replaces)
//!
//! A redeem input item is read up to its first space, so seal output feeds
//! redeem directly.

use std::error::Error as StdError;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroize;

use crate::bulk::{BulkError, RowError, Work};
use crate::hex;
use crate::proto::fugo::v1::codes_client::CodesClient;
use crate::proto::fugo::v1::{
    DeriveRequest, ItemError, MigrateRequest, RedeemRequest, ReidentifyRequest, RekeyRequest,
    RequestContext, SealRequest, derive_result, migrate_result, redeem_result, reidentify_result,
    rekey_result, seal_result,
};

/// Items per request message.
pub const BATCH: usize = 1000;
/// Request messages unanswered at most: 32 keeps a loopback stream full
/// (8 left it idle a third of the time), about 1 MB of numbers.
const IN_FLIGHT: usize = 32;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client run could not start or stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server address is unusable.
    #[error("server address: {0}")]
    Address(String),
    /// Connecting failed; the message names the cause and what to do.
    #[error("cannot connect to {server}: {cause}")]
    Connect {
        /// The server as given.
        server: String,
        /// The cause, explained.
        cause: String,
        /// The transport error it was found in.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS handshake failed after connecting (the server refused this
    /// client's certificate).
    #[error("cannot connect to {server}: {cause}")]
    Handshake {
        /// The server as given.
        server: String,
        /// The cause, explained.
        cause: String,
    },
    /// The server refused the whole request.
    #[error("the server refused: {} ({:?})", .0.message(), .0.code())]
    Refused(tonic::Status),
    /// The connection broke or the server stopped mid-run.
    #[error("the connection to the server was lost ({0}); is the server still running?")]
    Lost(String),
    /// The run stopped on another chunk's error (its message).
    #[error("{0}")]
    Stopped(String),
    /// The server answered with the wrong number of results.
    #[error("the server answered {got} results for a batch of {sent}")]
    Mismatch {
        /// Items sent.
        sent: usize,
        /// Results received.
        got: usize,
    },
    /// The server's audit log failed the check against the checkpoint kept
    /// from an earlier call (or the kept file is unusable); nothing was
    /// sent.
    #[error("audit log check failed: {0}")]
    Witness(#[from] crate::witness::WitnessError),
}

impl ClientError {
    /// A status that ended a call: the server's refusal, or a lost link.
    fn from_status(status: tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            // A status tonic made itself (no headers from the server).
            Code::Unavailable | Code::Unknown | Code::Cancelled
                if status.metadata().is_empty() || status.message().contains("transport") =>
            {
                ClientError::Lost(chain_text(&status))
            }
            _ => ClientError::Refused(status),
        }
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `https://host:port`.
    pub server: String,
    /// The name the server's certificate must hold; by default the host of
    /// `server`, as given.
    pub server_name: Option<String>,
    /// The CA that signed the server's certificate.
    pub ca: PathBuf,
    /// This agency's client certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

fn read_file(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::ReadFile {
        path: path.display().to_string(),
        source,
    })
}

/// The host of `https://host:port` (brackets of an IPv6 address removed).
fn host_of(server: &str) -> Result<String, ClientError> {
    let Some(rest) = server.strip_prefix("https://") else {
        return Err(ClientError::Address(match server.split_once("://") {
            Some(("http", _)) => {
                format!("'{server}' is plain http; fugo servers speak TLS only: use https://")
            }
            _ => format!("'{server}' is not like https://host:port"),
        }));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(ClientError::Address(format!(
            "'{server}' is not like https://host:port"
        )));
    }
    Ok(host.to_owned())
}

impl Connection {
    /// The name the server's certificate must hold.
    fn name(&self) -> Result<String, ClientError> {
        // Checks the address even when a name is given.
        let host = host_of(&self.server)?;
        Ok(self.server_name.clone().unwrap_or(host))
    }
}

/// Opens one mutual-TLS connection.
pub async fn connect(connection: &Connection) -> Result<CodesClient<Channel>, ClientError> {
    Ok(CodesClient::new(channel(connection).await?))
}

/// What checking the server's audit log against the kept checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Witnessed {
    /// No checkpoint was kept: the server's log key is trusted from now on
    /// (its verifier key text).
    FirstUse(String),
    /// The log extends the kept checkpoint (sizes then and now).
    Extended {
        /// Records in the kept checkpoint.
        from: u64,
        /// Records now.
        to: u64,
    },
    /// The server's log was restored from checkpoint `restored` (a new
    /// origin, same key) and extends the kept checkpoint, which was not
    /// beyond it: nothing this client saw was lost; the new origin is
    /// kept from now on.
    Restored {
        /// The checkpoint the log was restored from.
        restored: u64,
        /// Records in the kept checkpoint.
        from: u64,
        /// Records now.
        to: u64,
        /// The log key now (verifier key text).
        key: String,
    },
    /// The server has signed no checkpoint yet; nothing was kept.
    NoCheckpoint,
}

/// Checks the server's audit log against the checkpoint kept in `path`
/// (a consistency proof from it to the server's latest) and keeps the
/// latest in its place. Any failure stops the run before a request is
/// sent: a log rewritten since the last call is caught here.
pub async fn witness(channel: &Channel, path: &Path) -> Result<Witnessed, ClientError> {
    use crate::proto::fugo::v1::audit_client::AuditClient;
    use crate::proto::fugo::v1::{GetCheckpointRequest, GetConsistencyProofRequest};
    use crate::witness::{Kept, WitnessError};
    let mut audit = AuditClient::new(channel.clone());
    let latest = audit
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .map_err(ClientError::from_status)?
        .into_inner();
    if latest.checkpoint.is_empty() {
        return Ok(Witnessed::NoCheckpoint);
    }
    let verifier =
        fugo_log::checkpoint::LogVerifier::parse(&latest.verifier_key).map_err(|source| {
            WitnessError::Note {
                what: "log key",
                source,
            }
        })?;
    let newest = Kept::open(verifier, &latest.checkpoint)?;
    let witnessed = match Kept::load(path)? {
        None => Witnessed::FirstUse(newest.verifier.to_string()),
        Some(kept) => {
            let (from, to) = (kept.checkpoint.size, newest.checkpoint.size);
            let (proof, newest) = if to > from {
                let answer = audit
                    .get_consistency_proof(GetConsistencyProofRequest {
                        old_size: from,
                        new_size: to,
                    })
                    .await
                    .map_err(ClientError::from_status)?
                    .into_inner();
                let proof = answer
                    .proof
                    .iter()
                    .map(|hash| <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0; 32]))
                    .collect::<Vec<_>>();
                // The proof leads to the checkpoint the server returns with it.
                (
                    proof,
                    Kept::open(newest.verifier.clone(), &answer.checkpoint)?,
                )
            } else {
                (Vec::new(), newest)
            };
            kept.check_newer(&newest, &proof, path)?;
            newest.save(path)?;
            if let Some(restored) = crate::witness::restored_from(&kept.verifier, &newest.verifier)
                && kept.verifier != newest.verifier
            {
                return Ok(Witnessed::Restored {
                    restored,
                    from,
                    to: newest.checkpoint.size,
                    key: newest.verifier.to_string(),
                });
            }
            return Ok(Witnessed::Extended {
                from,
                to: newest.checkpoint.size,
            });
        }
    };
    newest.save(path)?;
    Ok(witnessed)
}

/// Opens one mutual-TLS channel.
pub async fn channel(connection: &Connection) -> Result<Channel, ClientError> {
    let name = connection.name()?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_file(&connection.ca)?))
        .identity(Identity::from_pem(
            read_file(&connection.cert)?,
            read_file(&connection.key)?,
        ))
        .domain_name(name.clone());
    let failed = |source| explain(source, connection, &name);
    let channel = Endpoint::from_shared(connection.server.clone())
        .map_err(|error| ClientError::Address(error.to_string()))?
        .tls_config(tls)
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(failed)?;
    Ok(channel)
}

/// Names the cause of a failed connection, found in the error's source
/// chain (the TLS or socket error inside the transport error), and what to
/// do about it.
fn explain(error: tonic::transport::Error, connection: &Connection, name: &str) -> ClientError {
    let cause = find_cause(&error, connection, name).unwrap_or_else(|| chain_text(&error));
    ClientError::Connect {
        server: connection.server.clone(),
        cause,
        source: error,
    }
}

/// The explained cause of a connection failure, if the chain holds one
/// fugo knows.
fn find_cause(
    error: &(dyn StdError + 'static),
    connection: &Connection,
    name: &str,
) -> Option<String> {
    let mut cause = None;
    let mut next = Some(error);
    while let Some(current) = next {
        let mut tls = current.downcast_ref::<rustls::Error>();
        if let Some(io_error) = current.downcast_ref::<io::Error>() {
            match io_error.kind() {
                io::ErrorKind::ConnectionRefused => cause = Some(refused()),
                io::ErrorKind::TimedOut => cause = Some(timed_out()),
                _ => {}
            }
            // io::Error's source() skips the error it wraps: look inside.
            if let Some(inner) = io_error.get_ref() {
                tls = tls.or_else(|| inner.downcast_ref::<rustls::Error>());
            }
        }
        if let Some(tls) = tls {
            cause = Some(tls_cause(tls, connection, name));
        }
        if cause.is_none() && current.to_string().contains("timed out") {
            cause = Some(timed_out());
        }
        next = current.source();
    }
    cause
}

/// Every message of an error's source chain, once each.
fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        let mut add = |text: String| {
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
        };
        add(current.to_string());
        if let Some(inner) = current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            add(inner.to_string());
        }
        next = current.source();
    }
    parts.join(": ")
}

fn timed_out() -> String {
    format!(
        "no answer within {} s; check the address and any firewall",
        CONNECT_TIMEOUT.as_secs()
    )
}

fn refused() -> String {
    "connection refused: nothing listens there. Check that `fugo serve` is running and that \
     --server (or FUGO_SERVER) has its address and port (the `listen` line of fugo.toml)"
        .to_owned()
}

fn tls_cause(error: &rustls::Error, connection: &Connection, name: &str) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error {
        // BadSignature: a CA of the same name but another key (every
        // `fugo dev-certs` CA has the same name).
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => format!(
            "the server's certificate is not signed by the CA in {} (an unknown CA). Give the \
             CA that signed the server's certificate with --ca (or FUGO_CA); in dev mode it is \
             DATA_DIR/certs/ca.pem",
            connection.ca.display()
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's certificate is not valid for the name '{name}' (a server name \
             mismatch). Connect by a name the certificate holds, or name it with --server-name"
        ),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        Error::InconsistentKeys(_) => format!(
            "the certificate {} and the key {} do not match (the key is not the \
             certificate's). Give this agency's certificate and its own key",
            connection.cert.display(),
            connection.key.display()
        ),
        Error::AlertReceived(AlertDescription::CertificateRevoked) => format!(
            "the server refused this client's certificate: it has been revoked \
             (CertificateRevoked). {} can no longer be used; ask the agency's CA for a new \
             certificate and key",
            connection.cert.display()
        ),
        Error::AlertReceived(AlertDescription::CertificateExpired) => format!(
            "the server refused this client's certificate: it has expired or is not valid yet \
             (CertificateExpired). Check the validity dates of {} and this machine's clock",
            connection.cert.display()
        ),
        Error::AlertReceived(AlertDescription::UnsupportedCertificate) => format!(
            "the server refused this client's certificate: it is not made for client \
             authentication (UnsupportedCertificate); {} needs the extended key usage clientAuth",
            connection.cert.display()
        ),
        Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::DecryptError
            | AlertDescription::AccessDenied),
        ) => format!(
            "the server refused this client's certificate ({alert:?}). Check that --cert and \
             --key are this agency's pair, signed by a CA the server trusts"
        ),
        Error::InvalidMessage(_) => {
            "the server did not answer with TLS; is this the address of a fugo server?".to_owned()
        }
        other => format!("TLS: {other}"),
    }
}

/// Which operation, with the context a seal needs.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Numbers → the caller's codes (or, with `on_behalf_of`, the codes of
    /// an agency it acts for under a delegation).
    Derive {
        /// Empty, or the agency acted for.
        on_behalf_of: String,
    },
    /// The caller's codes → tokens for `provider`.
    Seal {
        /// Addressee.
        provider: String,
        /// Affair.
        affair: String,
        /// Data items.
        items: Vec<String>,
        /// Non-disclosure date, unix seconds, 0 for none.
        non_disclosure_until: i64,
        /// Empty, or the agency acted for (the requester).
        on_behalf_of: String,
    },
    /// Tokens → the caller's codes and request context.
    Redeem {
        /// Empty, or the agency acted for (the tokens' addressee).
        on_behalf_of: String,
    },
    /// The caller's codes → numbers.
    Reidentify,
    /// Codes of a merged agency → the caller's codes (the caller survived
    /// the merger).
    Migrate {
        /// The merged agency.
        merged: String,
    },
    /// The caller's old codes → its current-epoch codes.
    Rekey,
}

/// The send side of the stream, taken by one chunk at a time.
struct Sending {
    requests: mpsc::Sender<Vec<String>>,
    /// Ticket of the next chunk to send: chunks read their answers in the
    /// order they were sent.
    next_ticket: u64,
}

/// An operation on a server, as the per-chunk work of a bulk run: each
/// chunk's items go out as batches over one stream; the results come back
/// in order.
///
/// Two workers share the stream: while one reads the answers to its chunk,
/// the other already sends the next, so the stream never idles at a chunk
/// boundary (an idle stream waits on TCP's delayed acknowledgement; a busy
/// one does not). Sending is one chunk at a time (a lock); reading is in
/// send order (tickets); at most 32 batches are unanswered.
pub struct Remote {
    runtime: Handle,
    operation: Operation,
    sending: tokio::sync::Mutex<Sending>,
    responses: tokio::sync::Mutex<Responses>,
    /// The ticket whose answers are being read; `u64::MAX` after a failure.
    turn: watch::Sender<u64>,
    unanswered: Semaphore,
    /// What stopped the run first, for the other worker to report: the
    /// chunk the writer fails on may be the one that only saw it stop.
    first_failure: std::sync::Mutex<Option<String>>,
    /// Kept so the connection lives as long as the run.
    _client: CodesClient<Channel>,
    /// The connection, for the audit log check at the end of the run.
    channel: Channel,
}

impl Remote {
    /// Connects and opens the operation's stream; the run's blocking work
    /// will use `runtime`.
    pub async fn open(
        connection: &Connection,
        operation: Operation,
        runtime: &Handle,
    ) -> Result<Self, ClientError> {
        Self::open_witnessed(connection, operation, runtime, None)
            .await
            .map(|(remote, _)| remote)
    }

    /// [`open`](Self::open), first checking the server's audit log against
    /// the checkpoint kept in `kept` (see [`witness`]); nothing is sent if
    /// the check fails.
    pub async fn open_witnessed(
        connection: &Connection,
        operation: Operation,
        runtime: &Handle,
        kept: Option<&Path>,
    ) -> Result<(Self, Option<Witnessed>), ClientError> {
        let channel = channel(connection).await?;
        let witnessed = match kept {
            Some(path) => Some(witness(&channel, path).await?),
            None => None,
        };
        let mut client = CodesClient::new(channel.clone());
        let (requests, items) = mpsc::channel(IN_FLIGHT);
        let name = connection.name()?;
        let responses = open_stream(&mut client, &operation, items)
            .await
            .map_err(|status| stream_refused(status, connection, &name))?;
        let remote = Remote {
            runtime: runtime.clone(),
            operation,
            sending: tokio::sync::Mutex::new(Sending {
                requests,
                next_ticket: 0,
            }),
            responses: tokio::sync::Mutex::new(responses),
            turn: watch::Sender::new(0),
            unanswered: Semaphore::new(IN_FLIGHT),
            first_failure: std::sync::Mutex::new(None),
            _client: client,
            channel,
        };
        Ok((remote, witnessed))
    }

    /// After the run: checks the log again from the checkpoint kept at the
    /// start and keeps the newest (it covers this run's records once
    /// signed).
    pub async fn witness_again(&self, kept: &Path) -> Result<Witnessed, ClientError> {
        witness(&self.channel, kept).await
    }

    /// The text sent for one input item.
    fn item_text(&self, item: &str) -> String {
        match self.operation {
            // A redeem item is its token, up to the first space.
            Operation::Redeem { .. } => item.split(' ').next().unwrap_or_default().to_owned(),
            _ => item.to_owned(),
        }
    }

    /// Sends `items` in batches and collects the results in order. Sending
    /// and reading run side by side, so a full send window never keeps
    /// answers from being read.
    async fn exchange(
        &self,
        items: Vec<String>,
    ) -> Result<Vec<Result<String, String>>, ClientError> {
        let total = items.len();
        let sizes = sizes_of(total);
        if sizes.is_empty() {
            return Ok(Vec::new());
        }
        let mut sending = self.sending.lock().await;
        let ticket = sending.next_ticket;
        sending.next_ticket += 1;
        let send_sizes = sizes.clone();
        let send = async move {
            let mut items = items.into_iter();
            for size in send_sizes {
                // Closed after a failure elsewhere: stop.
                match self.unanswered.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Err(self.earlier_failure()),
                }
                let batch: Vec<String> = items.by_ref().take(size).collect();
                if sending.requests.send(batch).await.is_err() {
                    return Err(ClientError::Lost("the request stream closed".to_owned()));
                }
            }
            Ok(())
        };
        let receive = async {
            let mut turn = self.turn.subscribe();
            match turn.wait_for(|&now| now >= ticket).await {
                Ok(now) if *now == ticket => {}
                _ => return Err(self.earlier_failure()),
            }
            let mut responses = self.responses.lock().await;
            let mut results = Vec::with_capacity(total);
            for &sent in &sizes {
                let answer = next_results(&mut responses)
                    .await
                    .map_err(ClientError::from_status)?
                    .ok_or_else(|| {
                        ClientError::Lost("the server ended the stream before answering".to_owned())
                    })?;
                if answer.len() != sent {
                    return Err(ClientError::Mismatch {
                        sent,
                        got: answer.len(),
                    });
                }
                results.extend(answer.into_iter().map(|r| r.map_err(|e| e.reason)));
                self.unanswered.add_permits(1);
            }
            drop(responses);
            self.turn.send_modify(|now| *now += 1);
            Ok(results)
        };
        let outcome = tokio::try_join!(send, receive);
        match outcome {
            Ok(((), results)) => Ok(results),
            Err(error) => {
                if let Ok(mut first) = self.first_failure.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
                // Wake and stop the other worker.
                self.unanswered.close();
                self.turn.send_replace(u64::MAX);
                Err(error)
            }
        }
    }

    /// The error of a chunk stopped by another chunk's failure: that one.
    fn earlier_failure(&self) -> ClientError {
        let first = self
            .first_failure
            .lock()
            .ok()
            .and_then(|first| first.clone());
        ClientError::Stopped(first.unwrap_or_else(|| "another batch failed".to_owned()))
    }
}

/// Why opening the stream failed. With TLS 1.3 the server checks the
/// client's certificate after the client considers the handshake done, so
/// its refusal shows here, not when connecting.
fn stream_refused(status: tonic::Status, connection: &Connection, name: &str) -> ClientError {
    if let Some(cause) = find_cause(&status, connection, name) {
        return ClientError::Handshake {
            server: connection.server.clone(),
            cause,
        };
    }
    match ClientError::from_status(status) {
        // The alert itself stays inside the connection task; what reaches
        // the call is the closed connection.
        ClientError::Lost(detail) => ClientError::Handshake {
            server: connection.server.clone(),
            cause: format!(
                "the server closed the connection right after the TLS handshake; it most \
                 likely refused this client's certificate. Check that {} and {} are this \
                 agency's pair, signed by a CA the server trusts ({detail})",
                connection.cert.display(),
                connection.key.display(),
            ),
        },
        other => other,
    }
}

/// Batch sizes for `total` items.
fn sizes_of(total: usize) -> Vec<usize> {
    (0..total)
        .step_by(BATCH)
        .map(|start| (total - start).min(BATCH))
        .collect()
}

impl Work for Remote {
    type Worker = ();

    fn extra_columns(&self) -> &[&'static str] {
        match self.operation {
            Operation::Derive { .. } | Operation::Reidentify => &[],
            Operation::Seal { .. } => &["serial"],
            Operation::Rekey | Operation::Migrate { .. } => &["old_code"],
            Operation::Redeem { .. } => &[
                "serial",
                "requester",
                "affair",
                "items",
                "expires_at",
                "non_disclosure_until",
            ],
        }
    }

    fn threads(&self) -> usize {
        2
    }

    fn chunk_bytes(&self) -> Option<usize> {
        // About 20 batches of numbers: enough to keep the stream busy, while
        // each chunk's items and results (strings) cost several times its
        // input.
        Some(256 << 10)
    }

    fn new_worker(&self) {}

    fn process<'a, I, F>(&self, (): &mut (), inputs: I, mut emit: F) -> Result<(), BulkError>
    where
        I: Iterator<Item = Result<&'a [u8], RowError>>,
        F: FnMut(Result<&[u8], RowError>),
    {
        // Each input is sent (None) or already a row error.
        let mut plan: Vec<Option<RowError>> = Vec::new();
        let mut items = Vec::new();
        for input in inputs {
            match input.map(std::str::from_utf8) {
                Ok(Ok(text)) => {
                    items.push(self.item_text(text));
                    plan.push(None);
                }
                // The engine decoded the input, so this cannot happen.
                Ok(Err(_)) => plan.push(Some(RowError::Server("not text".to_owned()))),
                Err(error) => plan.push(Some(error)),
            }
        }
        let results = self
            .runtime
            .block_on(self.exchange(items))
            .map_err(|error| BulkError::Work(Box::new(error)))?;
        let mut results = results.into_iter();
        for step in plan {
            match step {
                Some(error) => emit(Err(error)),
                None => match results.next() {
                    Some(Ok(mut text)) => {
                        emit(Ok(text.as_bytes()));
                        // Reidentify results are numbers.
                        text.zeroize();
                    }
                    Some(Err(reason)) => emit(Err(RowError::Server(reason))),
                    None => emit(Err(RowError::Server("no result".to_owned()))),
                },
            }
        }
        Ok(())
    }
}

type ItemResult = Result<String, ItemError>;

/// A redeem context in the line form: `REQUESTER AFFAIR ITEMS EXPIRES
/// NON_DISCLOSURE`.
fn context_text(context: &RequestContext) -> String {
    let items = match context.items.join(",") {
        items if items.is_empty() => "-".to_owned(),
        items => items,
    };
    let until = match context.non_disclosure_until {
        0 => "-".to_owned(),
        seconds => rfc3339(seconds),
    };
    format!(
        "{} {} {items} {} {until}",
        context.requester,
        context.affair,
        rfc3339(context.expires_at)
    )
}

/// Unix seconds as an RFC 3339 UTC time, `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian), by
    // 400-year eras of 146,097 days, years starting in March.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// The server's answers, as a stream of per-item result batches.
enum Responses {
    Derive(tonic::Streaming<crate::proto::fugo::v1::DeriveResponse>),
    Seal(tonic::Streaming<crate::proto::fugo::v1::SealResponse>),
    Redeem(tonic::Streaming<crate::proto::fugo::v1::RedeemResponse>),
    Reidentify(tonic::Streaming<crate::proto::fugo::v1::ReidentifyResponse>),
    Migrate(tonic::Streaming<crate::proto::fugo::v1::MigrateResponse>),
    Rekey(tonic::Streaming<crate::proto::fugo::v1::RekeyResponse>),
}

async fn open_stream(
    client: &mut CodesClient<Channel>,
    operation: &Operation,
    items: mpsc::Receiver<Vec<String>>,
) -> Result<Responses, tonic::Status> {
    let items = ReceiverStream::new(items);
    use tokio_stream::StreamExt;
    Ok(match operation.clone() {
        Operation::Derive { on_behalf_of } => Responses::Derive(
            client
                .derive_stream(items.map(move |numbers| DeriveRequest {
                    numbers,
                    on_behalf_of: on_behalf_of.clone(),
                    epoch: 0,
                }))
                .await?
                .into_inner(),
        ),
        Operation::Seal {
            provider,
            affair,
            items: data_items,
            non_disclosure_until,
            on_behalf_of,
        } => Responses::Seal(
            client
                .seal_stream(items.map(move |codes| SealRequest {
                    provider: provider.clone(),
                    affair: affair.clone(),
                    items: data_items.clone(),
                    non_disclosure_until,
                    codes,
                    on_behalf_of: on_behalf_of.clone(),
                }))
                .await?
                .into_inner(),
        ),
        Operation::Redeem { on_behalf_of } => Responses::Redeem(
            client
                .redeem_stream(items.map(move |texts| {
                    RedeemRequest {
                        // An undecodable token is sent empty; the server rejects
                        // it as malformed at its index.
                        tokens: texts
                            .iter()
                            .map(|text| {
                                let token = text.split(' ').next().unwrap_or_default();
                                URL_SAFE_NO_PAD.decode(token).unwrap_or_default()
                            })
                            .collect(),
                        on_behalf_of: on_behalf_of.clone(),
                        epoch: 0,
                    }
                }))
                .await?
                .into_inner(),
        ),
        Operation::Reidentify => Responses::Reidentify(
            client
                .reidentify_stream(items.map(|codes| ReidentifyRequest { codes }))
                .await?
                .into_inner(),
        ),
        Operation::Migrate { merged } => Responses::Migrate(
            client
                .migrate_stream(items.map(move |codes| MigrateRequest {
                    merged: merged.clone(),
                    codes,
                }))
                .await?
                .into_inner(),
        ),
        Operation::Rekey => Responses::Rekey(
            client
                .rekey_stream(items.map(|codes| RekeyRequest { codes }))
                .await?
                .into_inner(),
        ),
    })
}

async fn next_results(responses: &mut Responses) -> Result<Option<Vec<ItemResult>>, tonic::Status> {
    Ok(match responses {
        Responses::Derive(stream) => stream.message().await?.map(|response| {
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(derive_result::Result::Code(code)) => Ok(code),
                    Some(derive_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
        Responses::Seal(stream) => stream.message().await?.map(|response| {
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(seal_result::Result::Sealed(s)) => Ok(format!(
                        "{} {}",
                        URL_SAFE_NO_PAD.encode(&s.token),
                        hex::encode(&s.serial)
                    )),
                    Some(seal_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
        Responses::Redeem(stream) => stream.message().await?.map(|response| {
            let contexts: Vec<String> = response.contexts.iter().map(context_text).collect();
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(redeem_result::Result::Redeemed(d)) => Ok(format!(
                        "{} {} {}",
                        d.code,
                        hex::encode(&d.serial),
                        contexts
                            .get(d.context as usize)
                            .map_or("(no context)", String::as_str)
                    )),
                    Some(redeem_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
        Responses::Reidentify(stream) => stream.message().await?.map(|response| {
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(reidentify_result::Result::Number(n)) => Ok(n),
                    Some(reidentify_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
        Responses::Migrate(stream) => stream.message().await?.map(|response| {
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(migrate_result::Result::Migrated(m)) => {
                        Ok(format!("{} {}", m.new_code, m.old_code))
                    }
                    Some(migrate_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
        Responses::Rekey(stream) => stream.message().await?.map(|response| {
            response
                .results
                .into_iter()
                .map(|r| match r.result {
                    Some(rekey_result::Result::Rekeyed(k)) => {
                        Ok(format!("{} {}", k.new_code, k.old_code))
                    }
                    Some(rekey_result::Result::Error(e)) => Err(e),
                    None => Err(missing()),
                })
                .collect()
        }),
    })
}

fn missing() -> ItemError {
    ItemError {
        index: 0,
        code: crate::proto::google::rpc::Code::Internal as i32,
        reason: "the server sent an empty result".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(4_107_542_400), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn the_server_name_is_the_host_as_given() {
        assert_eq!(host_of("https://127.0.0.1:7443").unwrap(), "127.0.0.1");
        assert_eq!(host_of("https://[::1]:7443").unwrap(), "::1");
        assert_eq!(
            host_of("https://fugo.example:7443/").unwrap(),
            "fugo.example"
        );
        let plain = host_of("http://127.0.0.1:7443").unwrap_err().to_string();
        assert!(plain.contains("use https://"), "{plain}");
    }
}
