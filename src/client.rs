//! The batch-job side of the service: streams a file of items through one
//! of the four operations over one mutual-TLS connection, with bounded
//! memory, writing one output line (or CSV field) per input item, in order.
//!
//! ```text
//! reader (blocking thread) ──items──► gRPC stream ──responses──► writer
//!          └──────── batch context (line numbers, CSV records) ─────┘
//! ```
//!
//! Both channels are bounded, so at most a few batches are in flight. A bad
//! item becomes a reject (line number and reason) and an empty output, as in
//! `fugo derive`. Text forms: numbers and codes as themselves; a sealed
//! token as `TOKEN SERIAL` (URL-safe base64 without padding, serial in
//! hex); a redeemed token as `CODE SERIAL REQUESTER AFFAIR ITEM,ITEM…`. A
//! redeem input line is read up to its first space, so seal output feeds
//! redeem directly.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use indicatif::ProgressBar;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::bulk::Summary;
use crate::hex;
use crate::proto::fugo::v1::codes_client::CodesClient;
use crate::proto::fugo::v1::{
    DeriveRequest, ItemError, RedeemRequest, ReidentifyRequest, SealRequest, derive_result,
    redeem_result, reidentify_result, seal_result,
};

/// Items per request message.
pub const BATCH: usize = 1000;
/// Request messages in flight.
const IN_FLIGHT: usize = 8;

/// Why a client run stopped.
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
        source: std::io::Error,
    },
    /// The server address is not a URL.
    #[error("server address: {0}")]
    Address(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server refused the whole request.
    #[error("the server refused: {} ({:?})", .0.message(), .0.code())]
    Refused(#[from] tonic::Status),
    /// Reading input failed.
    #[error("reading input: {0}")]
    Read(#[source] std::io::Error),
    /// Writing output failed.
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
    /// The CSV input is unusable.
    #[error("CSV input: {0}")]
    Csv(String),
    /// The server answered with the wrong number of results.
    #[error("the server answered {got} results for a batch of {sent}")]
    Mismatch {
        /// Items sent.
        sent: usize,
        /// Results received.
        got: usize,
    },
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Connection {
    /// `https://host:port`.
    pub server: String,
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

/// Opens one mutual-TLS connection.
pub async fn connect(connection: &Connection) -> Result<CodesClient<Channel>, ClientError> {
    let host = connection
        .server
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit_once(':'))
        .map(|(host, _)| host.trim_matches(['[', ']']).to_owned())
        .ok_or_else(|| {
            ClientError::Address(format!(
                "'{}' is not like https://host:port",
                connection.server
            ))
        })?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_file(&connection.ca)?))
        .identity(Identity::from_pem(
            read_file(&connection.cert)?,
            read_file(&connection.key)?,
        ))
        .domain_name(if host == "127.0.0.1" {
            "localhost".to_owned()
        } else {
            host
        });
    let channel = Endpoint::from_shared(connection.server.clone())
        .map_err(|error| ClientError::Address(error.to_string()))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(CodesClient::new(channel))
}

/// Which operation, with the context a seal needs.
#[derive(Debug, Clone)]
pub enum Operation {
    /// Numbers → the caller's codes.
    Derive,
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
    },
    /// Tokens → the caller's codes and request context.
    Redeem,
    /// The caller's codes → numbers.
    Reidentify,
}

/// Lines or CSV.
#[derive(Debug, Clone)]
pub enum Shape {
    /// One item a line.
    Lines,
    /// A CSV column; codes replace it, or go into a new column.
    Csv {
        /// Column holding the items.
        column: String,
        /// Name of a new column for the results (keeps the input column).
        append: Option<String>,
    },
}

/// One batch's place in the input, kept until its response arrives.
struct Pending {
    first_line: u64,
    /// CSV mode: the batch's records, to write back with the results.
    records: Vec<csv::StringRecord>,
    /// Line numbers of CSV records (line mode: consecutive from first_line).
    lines: Vec<u64>,
    size: usize,
}

type ItemResult = Result<String, ItemError>;

/// The CSV header and the index of the item column (`None` in line mode or
/// when the header is unusable).
type Header = Option<(csv::StringRecord, usize)>;

/// Streams `input` through `operation`, writing results and rejects.
#[allow(clippy::too_many_arguments)] // each is a distinct, named part of the run
pub async fn run(
    client: &mut CodesClient<Channel>,
    operation: Operation,
    input: Box<dyn Read + Send>,
    shape: Shape,
    output: &mut dyn Write,
    rejects: &mut dyn Write,
    progress: Option<&ProgressBar>,
) -> Result<Summary, ClientError> {
    let (item_tx, item_rx) = mpsc::channel::<Vec<String>>(IN_FLIGHT);
    let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(IN_FLIGHT * 2);
    let (header_tx, header_rx) = tokio::sync::oneshot::channel::<Header>();
    let reader_shape = shape.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_input(input, &reader_shape, &item_tx, &pending_tx, header_tx)
    });

    let mut responses = open_stream(client, &operation, item_rx).await?;
    let header = header_rx.await.ok().flatten();
    let csv_mode = matches!(shape, Shape::Csv { .. });
    if let (Shape::Csv { append, .. }, Some((names, _))) = (&shape, &header) {
        let mut names = names.clone();
        if let Some(new) = append {
            names.push_field(new);
        }
        let mut bytes = Vec::new();
        csv_writer(&mut bytes)
            .write_record(&names)
            .map_err(|e| ClientError::Csv(e.to_string()))?;
        output.write_all(&bytes).map_err(ClientError::Write)?;
    }
    let column = header.as_ref().map(|(_, index)| *index);
    let mut summary = Summary::default();
    while let Some(results) = next_results(&mut responses).await? {
        let pending = pending_rx.recv().await.ok_or(ClientError::Mismatch {
            sent: 0,
            got: results.len(),
        })?;
        if results.len() != pending.size {
            return Err(ClientError::Mismatch {
                sent: pending.size,
                got: results.len(),
            });
        }
        let mut csv_bytes = Vec::new();
        let mut csv_out = csv_mode.then(|| csv_writer(&mut csv_bytes));
        for (index, result) in results.into_iter().enumerate() {
            let line = pending
                .lines
                .get(index)
                .copied()
                .unwrap_or(pending.first_line + index as u64);
            let text = match result {
                Ok(text) => text,
                Err(error) => {
                    summary.rejected += 1;
                    writeln!(rejects, "line {line}: {}", error.reason)
                        .map_err(ClientError::Write)?;
                    String::new()
                }
            };
            match (&mut csv_out, pending.records.get(index), &shape) {
                (Some(writer), Some(record), Shape::Csv { append, .. }) => {
                    let mut fields: Vec<&str> = record.iter().collect();
                    match (append, column) {
                        (Some(_), _) => fields.push(&text),
                        (None, Some(c)) if c < fields.len() => fields[c] = &text,
                        _ => {}
                    }
                    writer
                        .write_record(&fields)
                        .map_err(|e| ClientError::Csv(e.to_string()))?;
                }
                _ => {
                    output
                        .write_all(text.as_bytes())
                        .map_err(ClientError::Write)?;
                    output.write_all(b"\n").map_err(ClientError::Write)?;
                }
            }
        }
        if let Some(mut writer) = csv_out.take() {
            writer.flush().map_err(ClientError::Write)?;
        }
        drop(csv_out);
        output.write_all(&csv_bytes).map_err(ClientError::Write)?;
        summary.rows += pending.size as u64;
        if let Some(bar) = progress {
            bar.inc(pending.size as u64);
        }
    }
    output.flush().map_err(ClientError::Write)?;
    rejects.flush().map_err(ClientError::Write)?;
    reader
        .await
        .map_err(|_| ClientError::Read(std::io::Error::other("reader failed")))??;
    Ok(summary)
}

fn csv_writer(bytes: &mut Vec<u8>) -> csv::Writer<&mut Vec<u8>> {
    csv::WriterBuilder::new()
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(bytes)
}

/// The server's answers, as a stream of per-item result batches.
enum Responses {
    Derive(tonic::Streaming<crate::proto::fugo::v1::DeriveResponse>),
    Seal(tonic::Streaming<crate::proto::fugo::v1::SealResponse>),
    Redeem(tonic::Streaming<crate::proto::fugo::v1::RedeemResponse>),
    Reidentify(tonic::Streaming<crate::proto::fugo::v1::ReidentifyResponse>),
}

async fn open_stream(
    client: &mut CodesClient<Channel>,
    operation: &Operation,
    items: mpsc::Receiver<Vec<String>>,
) -> Result<Responses, ClientError> {
    let items = ReceiverStream::new(items);
    use tokio_stream::StreamExt;
    Ok(match operation.clone() {
        Operation::Derive => Responses::Derive(
            client
                .derive_stream(items.map(|numbers| DeriveRequest { numbers }))
                .await?
                .into_inner(),
        ),
        Operation::Seal {
            provider,
            affair,
            items: data_items,
            non_disclosure_until,
        } => Responses::Seal(
            client
                .seal_stream(items.map(move |codes| SealRequest {
                    provider: provider.clone(),
                    affair: affair.clone(),
                    items: data_items.clone(),
                    non_disclosure_until,
                    codes,
                }))
                .await?
                .into_inner(),
        ),
        Operation::Redeem => Responses::Redeem(
            client
                .redeem_stream(items.map(|texts| {
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
    })
}

async fn next_results(responses: &mut Responses) -> Result<Option<Vec<ItemResult>>, ClientError> {
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
            let contexts: Vec<String> = response
                .contexts
                .iter()
                .map(|c| format!("{} {} {}", c.requester, c.affair, c.items.join(",")))
                .collect();
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
    })
}

fn missing() -> ItemError {
    ItemError {
        index: 0,
        code: crate::proto::google::rpc::Code::Internal as i32,
        reason: "the server sent an empty result".to_owned(),
    }
}

/// Reads the input into batches; runs on a blocking thread.
fn read_input(
    input: Box<dyn Read + Send>,
    shape: &Shape,
    items: &mpsc::Sender<Vec<String>>,
    pending: &mpsc::Sender<Pending>,
    header: tokio::sync::oneshot::Sender<Header>,
) -> Result<(), ClientError> {
    let send = |batch: Vec<String>, context: Pending| -> bool {
        pending.blocking_send(context).is_ok() && items.blocking_send(batch).is_ok()
    };
    match shape {
        Shape::Lines => {
            drop(header);
            let mut reader = BufReader::new(input);
            let mut batch = Vec::with_capacity(BATCH);
            let mut first_line = 1u64;
            let mut line_number = 0u64;
            let mut line = String::new();
            loop {
                line.clear();
                let read = reader.read_line(&mut line).map_err(ClientError::Read)?;
                if read > 0 {
                    line_number += 1;
                    batch.push(line.trim_end_matches(['\n', '\r']).to_owned());
                }
                if batch.len() == BATCH || (read == 0 && !batch.is_empty()) {
                    let size = batch.len();
                    let context = Pending {
                        first_line,
                        records: Vec::new(),
                        lines: Vec::new(),
                        size,
                    };
                    if !send(
                        std::mem::replace(&mut batch, Vec::with_capacity(BATCH)),
                        context,
                    ) {
                        return Ok(());
                    }
                    first_line = line_number + 1;
                }
                if read == 0 {
                    return Ok(());
                }
            }
        }
        Shape::Csv { column, append } => {
            let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
            let names = reader
                .headers()
                .map_err(|e| ClientError::Csv(e.to_string()))?
                .clone();
            let Some(index) = names.iter().position(|name| name == column) else {
                return Err(ClientError::Csv(format!("no column named '{column}'")));
            };
            if let Some(new) = append {
                if names.iter().any(|name| name == new) {
                    return Err(ClientError::Csv(format!("column '{new}' already exists")));
                }
            }
            let _ = header.send(Some((names, index)));
            let mut records = Vec::with_capacity(BATCH);
            let mut record = csv::StringRecord::new();
            loop {
                let more = reader
                    .read_record(&mut record)
                    .map_err(|e| ClientError::Csv(e.to_string()))?;
                if more {
                    records.push(record.clone());
                }
                if records.len() == BATCH || (!more && !records.is_empty()) {
                    let batch: Vec<String> = records
                        .iter()
                        .map(|r: &csv::StringRecord| r.get(index).unwrap_or_default().to_owned())
                        .collect();
                    let lines = records
                        .iter()
                        .map(|r| r.position().map_or(0, |p| p.line()))
                        .collect();
                    let context = Pending {
                        first_line: 0,
                        size: records.len(),
                        records: std::mem::replace(&mut records, Vec::with_capacity(BATCH)),
                        lines,
                    };
                    if !send(batch, context) {
                        return Ok(());
                    }
                }
                if !more {
                    return Ok(());
                }
            }
        }
    }
}
