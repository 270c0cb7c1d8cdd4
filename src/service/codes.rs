//! The `fugo.v1.Codes` service: decodes requests, decides the caller's
//! agency per batch under the policy in force, runs the [`Exchange`]
//! operation, encodes results, and logs every batch with its request id.
//!
//! A batch of more than 16 items runs on tokio's blocking pool, so the
//! cryptography never stalls the executor's I/O threads; a smaller one runs
//! in place (microseconds), sparing a hand-off to another thread that would
//! cost more than the work. Streams answer one response per request
//! message, in order, with up to four batches in progress at once; a
//! whole-batch failure ends the stream with that status.

use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::edge::Peer;
use super::identity::PeerCertificate;
use super::metrics::Metrics;
use super::quota::{Exceeded, Moment, Quotas};
use super::request_id::RequestId;
use super::state::State;
use super::status;
use crate::agency::{AffairId, AgencyId, ItemId};
use crate::audit::entries::{BatchFacts, Collector, outcome_of};
use crate::exchange::{BatchError, Done, Exchange, SealContext};
use crate::policy::{Metered, Policy};
use crate::proto::fugo::v1::codes_server::Codes;
use crate::proto::fugo::v1::{
    DeriveRequest, DeriveResponse, DeriveResult, MigrateRequest, MigrateResponse, MigrateResult,
    Migrated, RedeemRequest, RedeemResponse, RedeemResult, Redeemed, ReidentifyRequest,
    ReidentifyResponse, ReidentifyResult, RekeyRequest, RekeyResponse, RekeyResult, Rekeyed,
    RequestContext, SealRequest, SealResponse, SealResult, Sealed, derive_result, migrate_result,
    redeem_result, reidentify_result, rekey_result, seal_result,
};
use fugo_log::record::{Entry, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, Appended, Usage};

/// The client certificate of the request's connection.
fn certificate<T>(request: &Request<T>) -> Result<Arc<PeerCertificate>, Status> {
    request
        .extensions()
        .get::<Peer>()
        .map(|peer| Arc::clone(&peer.certificate))
        .ok_or_else(|| status::unauthenticated("no client certificate"))
}

/// The metadata key of the latest signed checkpoint, on every response.
pub const CHECKPOINT: &str = "x-fugo-checkpoint";

/// Names the latest signed checkpoint (base64 of the signed note) in a
/// response's metadata, so a client can keep the newest it has seen and
/// check the log's consistency from it on its next call.
pub(crate) fn tag_checkpoint(state: &State, metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(signed) = state.recorder.checkpoint()
        && let Ok(value) = MetadataValue::try_from(&*signed.header)
    {
        metadata.insert(CHECKPOINT, value);
    }
}

/// The agency of a call's client certificate under `policy`.
pub(crate) fn caller_of<T>(request: &Request<T>, policy: &Policy) -> Result<AgencyId, Status> {
    certificate(request)?.caller(policy)
}

/// Runs before a call's body is read (a tonic interceptor): gives the call
/// its request id and refuses a caller the policy in force does not know,
/// so a stranger cannot make the server buffer its messages.
pub(crate) fn admit(state: &State, mut request: Request<()>) -> Result<Request<()>, Status> {
    // Given by the framing layer, which opened the call's span with it.
    let id = RequestId::of(&request);
    let certificate = certificate(&request).map_err(|status| id.tag_status(status))?;
    if let Err(status) = certificate.caller(&state.policy()) {
        refused(&id, &certificate, &status);
        return Err(id.tag_status(status));
    }
    request.extensions_mut().insert(id);
    Ok(request)
}

/// Logs a refused certificate: its fingerprint and subject, and why.
fn refused(id: &RequestId, certificate: &PeerCertificate, status: &Status) {
    tracing::warn!(
        request_id = id.as_str(),
        fingerprint = %certificate.fingerprint,
        subject = ?certificate.subject,
        reason = status.message(),
        "client certificate refused"
    );
}

/// A call refused by its quota: the record of the refusal, still to be
/// committed, and the status to answer once it is.
pub(crate) struct OverQuota {
    append: Append,
    status: Status,
}

/// Counts `items` of `operation` against `caller`'s quota under `policy`
/// (D120–D126), without waiting. Admitted: the use to write with the call's
/// records (none for an empty call, which is refused later as malformed);
/// a warning is logged once a day when the agency crosses the policy's
/// share of its day limit. Refused: logged and counted in metrics, and
/// [`OverQuota`] holds the tally to record (reason
/// `quota.<operation>.<limit>`) and RESOURCE_EXHAUSTED with RetryInfo;
/// nothing of the call runs.
pub(crate) fn admit_quota(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    operation: Metered,
    items: usize,
    id: &RequestId,
) -> Result<Option<Usage>, Box<OverQuota>> {
    match try_quota(state, policy, caller, operation, items, id)? {
        Ok(usage) => Ok(usage),
        Err(exceeded) => Err(over_quota(state, caller, operation, items, &exceeded, id)),
    }
}

/// The most a stream's batch waits for its token bucket before it is
/// refused (D122).
const MAX_PACE: Duration = Duration::from_secs(10);

/// [`admit_quota`] for a stream's batch: short of tokens, it waits for
/// them (up to [`MAX_PACE`]) instead of being refused, so a bulk stream is
/// paced at the agency's rate (the wait stops reading the stream: HTTP/2
/// flow control slows the client). A day limit, or a wait longer than
/// that, refuses it as for a unary call.
async fn admit_paced(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    operation: Metered,
    items: usize,
    id: &RequestId,
) -> Result<Option<Usage>, Box<OverQuota>> {
    let mut waited = Duration::ZERO;
    loop {
        match try_quota(state, policy, caller, operation, items, id)? {
            Ok(usage) => return Ok(usage),
            Err(Exceeded::Rate { retry_after, .. }) if waited + retry_after <= MAX_PACE => {
                waited += retry_after;
                tokio::time::sleep(retry_after).await;
            }
            Err(exceeded) => {
                return Err(over_quota(state, caller, operation, items, &exceeded, id));
            }
        }
    }
}

/// The quota decision alone: the outer error is an agency the policy
/// does not know; the inner one a limit the call is over.
#[allow(clippy::type_complexity)]
fn try_quota(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    operation: Metered,
    items: usize,
    id: &RequestId,
) -> Result<Result<Option<Usage>, Exceeded>, Box<OverQuota>> {
    // Nothing to count, or a batch the exchange refuses as too large before
    // reading any item: it is not metered (D105).
    if items == 0 || items > fugo_core::exchange::MAX_BATCH {
        return Ok(Ok(None));
    }
    let limit = match policy.agency(caller) {
        Ok(agency) => agency.quotas.limit(operation),
        Err(denied) => {
            return Err(Box::new(OverQuota {
                append: Append::default(),
                status: status::denied(denied),
            }));
        }
    };
    let at = Moment {
        instant: Instant::now(),
        unix_ms: now_millis(),
    };
    let admitted = state.quotas.admit(
        caller,
        operation,
        limit,
        policy.warn_percent(),
        items as u64,
        at,
    );
    Ok(admitted.map(|admitted| {
        if let Some(used) = admitted.crossed {
            tracing::warn!(
                request_id = id.as_str(),
                agency = %caller,
                operation = operation.name(),
                used,
                per_day = limit.per_day,
                warn_percent = policy.warn_percent(),
                "agency crossed the warning share of its daily quota"
            );
        }
        Some(admitted.usage)
    }))
}

/// A refusal by `exceeded`: logged, counted, and its record and status.
fn over_quota(
    state: &State,
    caller: &AgencyId,
    operation: Metered,
    items: usize,
    exceeded: &Exceeded,
    id: &RequestId,
) -> Box<OverQuota> {
    let which = exceeded.which();
    tracing::warn!(
        request_id = id.as_str(),
        agency = %caller,
        operation = operation.name(),
        limit = which,
        items,
        retry_after_ms = exceeded.retry_after().map(|d| d.as_millis() as u64),
        "quota exceeded; call refused"
    );
    state.metrics.quota_refused(caller, operation, which);
    let now_ms = now_millis();
    let append = Append {
        refusals: vec![fugo_log::store::Refusal {
            minute: now_ms / 60_000,
            agency: caller.as_str().to_owned(),
            reason: format!("quota.{}.{which}", operation.name()),
            count: items as u64,
        }],
        now_ms,
        ..Append::default()
    };
    Box::new(OverQuota {
        append,
        status: status::quota(caller, operation, exceeded),
    })
}

impl OverQuota {
    /// Commits the refusal's record and gives the call's status
    /// (UNAVAILABLE instead if the record cannot be written: fail closed).
    pub(crate) async fn settle(self, state: &State) -> Status {
        match state.recorder.record(self.append).await {
            Ok(_) => self.status,
            Err(error) => status::audit(&error),
        }
    }
}

/// [`admit_quota`], recording a refusal before answering it.
pub(crate) async fn charge(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    operation: Metered,
    items: usize,
    id: &RequestId,
) -> Result<Option<Usage>, Status> {
    match admit_quota(state, policy, caller, operation, items, id) {
        Ok(usage) => Ok(usage),
        Err(over) => Err(over.settle(state).await),
    }
}

/// The gRPC service.
pub(crate) struct CodesService {
    state: Arc<State>,
}

impl CodesService {
    pub(crate) fn new(state: Arc<State>) -> Self {
        CodesService { state }
    }
}

/// Batches of one stream whose work (decoding, crypto, encoding) runs at
/// once.
const IN_FLIGHT: usize = 4;
/// Batches of one stream started and not yet answered: those computing and
/// those whose records wait for their commit. Waiting holds only the
/// encoded response and its records (about 80 bytes an item), and a deeper
/// queue lets one commit take many batches (group commit) while the next
/// ones compute.
const AWAITING_COMMIT: usize = 16;

type Handler<Req, Resp> =
    fn(&State, &Policy, &AgencyId, &BatchFacts<'_>, Req) -> Result<Pending<Resp>, Status>;

/// Finishes a response once its records are committed (a redeem marks the
/// tokens redeemed before as repeats).
type Finish<Resp> = Box<dyn FnOnce(&State, &mut Resp, &Appended) + Send>;

/// A batch's response, held back until its records are committed.
struct Pending<Resp> {
    response: Resp,
    append: Append,
    finish: Option<Finish<Resp>>,
}

impl<Resp> Pending<Resp> {
    fn new(response: Resp, append: Append) -> Self {
        Pending {
            response,
            append,
            finish: None,
        }
    }
}
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Batches of at most this many items run in place, not on the blocking
/// pool: 16 seals, the dearest operation (about 1.5 M/s in the service
/// benchmark), take about 10 µs.
const IN_PLACE: usize = 16;

/// A request that can say how many items it holds.
trait Items {
    fn items(&self) -> usize;
}

impl Items for DeriveRequest {
    fn items(&self) -> usize {
        self.numbers.len()
    }
}

impl Items for SealRequest {
    fn items(&self) -> usize {
        self.codes.len()
    }
}

impl Items for RedeemRequest {
    fn items(&self) -> usize {
        self.tokens.len()
    }
}

impl Items for ReidentifyRequest {
    fn items(&self) -> usize {
        self.codes.len()
    }
}

impl Items for MigrateRequest {
    fn items(&self) -> usize {
        self.codes.len()
    }
}

impl Items for RekeyRequest {
    fn items(&self) -> usize {
        self.codes.len()
    }
}

/// A response that can say how many of its items succeeded and failed.
trait Tally {
    /// (succeeded, failed)
    fn tally(&self) -> (usize, usize);
}

fn tally<T>(results: &[T], failed: impl Fn(&T) -> bool) -> (usize, usize) {
    let failed = results.iter().filter(|result| failed(result)).count();
    (results.len() - failed, failed)
}

impl Tally for DeriveResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(derive_result::Result::Error(_)) | None)
        })
    }
}

impl Tally for SealResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(seal_result::Result::Error(_)) | None)
        })
    }
}

impl Tally for RedeemResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(redeem_result::Result::Error(_)) | None)
        })
    }
}

impl Tally for MigrateResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(migrate_result::Result::Error(_)) | None)
        })
    }
}

impl Tally for RekeyResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(rekey_result::Result::Error(_)) | None)
        })
    }
}

impl Tally for ReidentifyResponse {
    fn tally(&self) -> (usize, usize) {
        tally(&self.results, |r| {
            matches!(r.result, Some(reidentify_result::Result::Error(_)) | None)
        })
    }
}

/// One batch of one call.
struct Batch {
    id: RequestId,
    certificate: Arc<PeerCertificate>,
    operation: Metered,
    /// Its position in a stream (none for a unary call).
    index: Option<u64>,
}

/// Runs one batch on the blocking pool and logs what happened (never what
/// was in it). The caller's agency is decided here, per batch, under the
/// policy in force: a reload that removes a certificate stops its open
/// streams at their next batch.
async fn run_batch<Req: Items + Send + 'static, Resp: Tally + Send + 'static>(
    state: Arc<State>,
    batch: Batch,
    request: Req,
    handler: Handler<Req, Resp>,
    gate: Option<Arc<Semaphore>>,
    quota: Option<Result<Option<Usage>, Box<OverQuota>>>,
) -> Result<Resp, Status> {
    // A stream's batches take turns for the work; the wait for the commit
    // is outside the turn.
    let turn = match gate {
        Some(gate) => gate.acquire_owned().await.ok(),
        None => None,
    };
    let started = Instant::now();
    let policy = state.policy();
    let caller = match batch.certificate.caller(&policy) {
        Ok(caller) => caller,
        Err(status) => {
            refused(&batch.id, &batch.certificate, &status);
            state.metrics.call(
                batch.operation.name(),
                None,
                status.code(),
                request.items(),
                started.elapsed(),
            );
            return Err(batch.id.tag_status(status));
        }
    };
    let agency = caller.clone();
    let items = request.items();
    // A stream's batches were counted in message order as they arrived.
    let charged = match quota {
        Some(Ok(usage)) => Ok(usage),
        Some(Err(over)) => Err(over.settle(&state).await),
        None => charge(&state, &policy, &caller, batch.operation, items, &batch.id).await,
    };
    let usage = match charged {
        Ok(usage) => usage,
        Err(status) => {
            drop(turn);
            state.metrics.call(
                batch.operation.name(),
                Some(&agency),
                status.code(),
                items,
                started.elapsed(),
            );
            let mut status = batch.id.tag_status(status);
            tag_checkpoint(&state, status.metadata_mut());
            return Err(status);
        }
    };
    let batch_id = match batch.index {
        Some(index) => format!("{}/{index}", batch.id.as_str()),
        None => batch.id.as_str().to_owned(),
    };
    let worker_state = Arc::clone(&state);
    let worker_policy = Arc::clone(&policy);
    let span = tracing::Span::current();
    let work = move || {
        // On the blocking pool too, lines carry the request id.
        let _entered = span.enter();
        let facts = BatchFacts {
            agent: "",
            time_ms: now_millis(),
            caller: caller.as_str(),
            batch_id,
            policy: &worker_policy,
        };
        match handler(&worker_state, &worker_policy, &caller, &facts, request) {
            Ok(mut pending) => {
                // Encode and hash the records here, on this batch's thread:
                // the one thread that commits only places them.
                if worker_state.recorder.writes() {
                    pending.append.prepare();
                }
                Ok(pending)
            }
            // A refused batch opened no one: one tally for its items.
            Err(status) => Err(Box::new((refusal(&facts, &status, items), status))),
        }
    };
    let outcome = if items <= IN_PLACE {
        work()
    } else {
        tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
            Err(Box::new((
                Append::default(),
                Status::internal("a worker failed"),
            )))
        })
    };
    drop(turn);
    // The quota use is written with the batch's records, in their commit.
    let outcome = match (outcome, usage) {
        (Ok(mut pending), Some(usage)) => {
            pending.append.usage.push(usage);
            Ok(pending)
        }
        (Err(mut refused), Some(usage)) => {
            refused.0.usage.push(usage);
            Err(refused)
        }
        (outcome, None) => outcome,
    };
    // Nothing leaves before its records are committed (fail closed).
    let outcome = match outcome {
        Ok(pending) => match state.recorder.record(pending.append).await {
            Ok(appended) => {
                let mut response = pending.response;
                if let Some(finish) = pending.finish {
                    finish(&state, &mut response, &appended);
                }
                Ok(response)
            }
            Err(error) => Err(status::audit(&error)),
        },
        Err(refused) => match state.recorder.record(refused.0).await {
            Ok(_) => Err(refused.1),
            Err(error) => Err(status::audit(&error)),
        },
    };
    let elapsed = started.elapsed();
    let micros = elapsed.as_micros() as u64;
    let code = outcome
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    state
        .metrics
        .call(batch.operation.name(), Some(&agency), code, items, elapsed);
    match &outcome {
        Ok(response) => {
            let (ok, failed) = response.tally();
            tracing::info!(
                request_id = batch.id.as_str(),
                agency = %agency,
                operation = batch.operation.name(),
                batch = batch.index,
                items = ok + failed,
                ok,
                failed,
                micros,
                "batch done"
            );
        }
        Err(status) => tracing::info!(
            request_id = batch.id.as_str(),
            agency = %agency,
            operation = batch.operation.name(),
            batch = batch.index,
            code = ?status.code(),
            reason = status.message(),
            micros,
            "batch refused"
        ),
    }
    // Refusals name the latest checkpoint too: every response does.
    outcome.map_err(|status| {
        let mut status = batch.id.tag_status(status);
        tag_checkpoint(&state, status.metadata_mut());
        status
    })
}

/// The record of a refused batch: a tally of its items under the reason
/// (rule-level text, never a value), cut to a bounded length.
fn refusal(facts: &BatchFacts<'_>, status: &Status, items: usize) -> Append {
    let mut reason = format!("refused: {}", status.message());
    if reason.len() > 160 {
        let mut cut = 160;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Append {
        refusals: vec![facts.tally(&reason, items.max(1) as u64)],
        now_ms: facts.time_ms,
        ..Append::default()
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl CodesService {
    async fn unary<Req: Items + Send + 'static, Resp: Tally + Send + 'static>(
        &self,
        request: Request<Req>,
        operation: Metered,
        handler: Handler<Req, Resp>,
    ) -> Result<Response<Resp>, Status> {
        let id = RequestId::of(&request);
        let certificate = certificate(&request).map_err(|status| id.tag_status(status))?;
        let batch = Batch {
            id: id.clone(),
            certificate,
            operation,
            index: None,
        };
        let mut response = Response::new(
            run_batch(
                Arc::clone(&self.state),
                batch,
                request.into_inner(),
                handler,
                None,
                None,
            )
            .await?,
        );
        id.tag(response.metadata_mut());
        tag_checkpoint(&self.state, response.metadata_mut());
        Ok(response)
    }

    fn stream<Req: Items + Send + 'static, Resp: Tally + Send + 'static>(
        &self,
        request: Request<Streaming<Req>>,
        operation: Metered,
        handler: Handler<Req, Resp>,
    ) -> Result<Response<BoxStream<Resp>>, Status> {
        let id = RequestId::of(&request);
        let certificate = certificate(&request).map_err(|status| id.tag_status(status))?;
        certificate
            .caller(&self.state.policy())
            .map_err(|status| id.tag_status(status))?;
        let mut incoming = request.into_inner();
        let state = Arc::clone(&self.state);
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        // Batches start as soon as they arrive (up to IN_FLIGHT computing at
        // once, so decoding, crypto and encoding overlap; up to
        // AWAITING_COMMIT started) and are answered in order.
        let (jobs, mut started) =
            mpsc::channel::<JoinHandle<Result<Resp, Status>>>(AWAITING_COMMIT);
        let computing = Arc::new(Semaphore::new(IN_FLIGHT));
        let stream_id = id.clone();
        // The tasks of a stream stay in its call's span (the framing
        // layer's), so their lines carry the request id.
        tokio::spawn(
            async move {
                let mut index = 0;
                while let Some(next) = incoming.next().await {
                    let mut over_quota = false;
                    let job = match next {
                        Ok(request) => {
                            // Counted here, in message order, not when its
                            // work starts (batches compute out of order); a
                            // batch short of tokens waits for them here, which
                            // paces the stream (D122).
                            let policy = state.policy();
                            let quota = match certificate.caller(&policy) {
                                Ok(caller) => Some(
                                    admit_paced(
                                        &state,
                                        &policy,
                                        &caller,
                                        operation,
                                        request.items(),
                                        &stream_id,
                                    )
                                    .await,
                                ),
                                Err(_) => None,
                            };
                            over_quota = matches!(quota, Some(Err(_)));
                            let batch = Batch {
                                id: stream_id.clone(),
                                certificate: Arc::clone(&certificate),
                                operation,
                                index: Some(index),
                            };
                            let gate = Some(Arc::clone(&computing));
                            tokio::spawn(
                                run_batch(Arc::clone(&state), batch, request, handler, gate, quota)
                                    .in_current_span(),
                            )
                        }
                        Err(status) => {
                            let status = stream_id.tag_status(status::incoming(status));
                            tokio::spawn(async move { Err(status) })
                        }
                    };
                    index += 1;
                    // The stream ends with a refused batch: later ones are
                    // neither counted nor run (their answers would never leave).
                    if jobs.send(job).await.is_err() || over_quota {
                        break;
                    }
                }
            }
            .in_current_span(),
        );
        tokio::spawn(async move {
            while let Some(job) = started.recv().await {
                let result = job
                    .await
                    .unwrap_or_else(|_| Err(Status::internal("a worker failed")));
                let failed = result.is_err();
                if sender.send(result).await.is_err() || failed {
                    break;
                }
            }
        });
        let mut response: Response<BoxStream<Resp>> =
            Response::new(Box::pin(ReceiverStream::new(receiver)));
        id.tag(response.metadata_mut());
        tag_checkpoint(&self.state, response.metadata_mut());
        Ok(response)
    }
}

fn parse_field<T, E: ToString>(
    field: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, Status> {
    parse(text).map_err(|error| status::bad_field(field, &error.to_string()))
}

/// The agency a call acts for: the caller itself when `on_behalf_of` is
/// empty, else the agency it names, if a delegation of the policy lets the
/// caller act for it (D213); PERMISSION_DENIED otherwise, without repeating
/// a value the policy does not know.
fn principal<'p>(
    policy: &'p Policy,
    caller: &AgencyId,
    on_behalf_of: &str,
) -> Result<Option<&'p AgencyId>, Status> {
    if on_behalf_of.is_empty() {
        return Ok(None);
    }
    let named = parse_field("on_behalf_of", on_behalf_of, AgencyId::new)?;
    policy
        .acting_for(caller, &named)
        .map(|agency| Some(&agency.id))
        .map_err(status::denied)
}

/// The epoch a derive or redeem names: 0 for the current one.
fn named_epoch(value: u32) -> Result<Option<crate::agency::Epoch>, Status> {
    if value == 0 {
        return Ok(None);
    }
    u8::try_from(value)
        .ok()
        .and_then(|e| crate::agency::Epoch::new(e).ok())
        .map(Some)
        .ok_or_else(|| status::bad_field("epoch", "an epoch is 0 (current) or 1 to 31"))
}

/// The epoch a batch's codes are made in, for its audit records.
fn made_in(policy: &Policy, caller: &AgencyId, named: Option<crate::agency::Epoch>) -> u32 {
    named.map_or_else(
        || {
            policy
                .agency(caller)
                .map_or(0, |agency| u32::from(agency.epoch.get()))
        },
        |epoch| u32::from(epoch.get()),
    )
}

fn derive(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: DeriveRequest,
) -> Result<Pending<DeriveResponse>, Status> {
    let delegated;
    let (caller, facts) = match principal(policy, caller, &request.on_behalf_of)? {
        None => (caller, facts),
        Some(principal) => {
            delegated = facts.on_behalf_of(principal.as_str());
            (principal, &delegated)
        }
    };
    let numbers: Vec<&[u8]> = request.numbers.iter().map(String::as_bytes).collect();
    let named = named_epoch(request.epoch)?;
    let done = state
        .exchange
        .derive_in(policy, caller, named, &numbers)
        .map_err(status::batch)?;
    let epoch = made_in(policy, caller, named);
    let mut collector = Collector::new();
    let group = collector.group(facts.header(Operation::Derive));
    collector.items(group, &done, |_| (None, epoch));
    let append = collector.finish(facts);
    let results = done
        .into_iter()
        .map(|result| DeriveResult {
            result: Some(match result {
                Ok(code) => derive_result::Result::Code(code),
                Err(failure) => derive_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(Pending::new(
        DeriveResponse {
            results,
            policy_version: policy.version().to_string(),
        },
        append,
    ))
}

fn seal(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: SealRequest,
) -> Result<Pending<SealResponse>, Status> {
    let delegated;
    let (caller, facts) = match principal(policy, caller, &request.on_behalf_of)? {
        None => (caller, facts),
        Some(principal) => {
            delegated = facts.on_behalf_of(principal.as_str());
            (principal, &delegated)
        }
    };
    let context = SealContext {
        provider: parse_field("provider", &request.provider, AgencyId::new)?,
        affair: parse_field("affair", &request.affair, AffairId::new)?,
        items: request
            .items
            .iter()
            .map(|item| parse_field("items", item, ItemId::new))
            .collect::<Result<_, _>>()?,
        non_disclosure_until: match request.non_disclosure_until {
            0 => None,
            until => Some(u64::try_from(until).map_err(|_| {
                status::bad_field("non_disclosure_until", "must be unix seconds, not negative")
            })?),
        },
    };
    let codes: Vec<&[u8]> = request.codes.iter().map(String::as_bytes).collect();
    let done = state
        .exchange
        .seal(policy, caller, &context, &codes, now())
        .map_err(status::batch)?;
    let mut collector = Collector::new();
    let mut header = facts.header(Operation::Seal);
    header.counterpart = context.provider.to_string();
    header.affair = context.affair.to_string();
    header.items = context.items.iter().map(ToString::to_string).collect();
    header.non_disclosure_until = context.non_disclosure_until.unwrap_or(0);
    let group = collector.group(header);
    collector.items(group, &done, |sealed| (Some(*sealed.serial.as_bytes()), 0));
    let append = collector.finish(facts);
    let results = done
        .into_iter()
        .map(|result| SealResult {
            result: Some(match result {
                Ok(sealed) => seal_result::Result::Sealed(Sealed {
                    token: sealed.token.as_bytes().to_vec(),
                    serial: sealed.serial.as_bytes().to_vec(),
                    expires_at: i64::try_from(sealed.expires_at).unwrap_or(i64::MAX),
                }),
                Err(failure) => seal_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(Pending::new(
        SealResponse {
            results,
            policy_version: policy.version().to_string(),
        },
        append,
    ))
}

fn redeem(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: RedeemRequest,
) -> Result<Pending<RedeemResponse>, Status> {
    let delegated;
    let (caller, facts) = match principal(policy, caller, &request.on_behalf_of)? {
        None => (caller, facts),
        Some(principal) => {
            delegated = facts.on_behalf_of(principal.as_str());
            (principal, &delegated)
        }
    };
    let tokens: Vec<&[u8]> = request.tokens.iter().map(Vec::as_slice).collect();
    let named = named_epoch(request.epoch)?;
    let done = state
        .exchange
        .redeem_in(policy, caller, named, &tokens, now())
        .map_err(status::batch)?;
    let epoch = made_in(policy, caller, named);
    // Each distinct context goes into the response once (the exchange hands
    // the tokens of one seal the same shared context) and is one group of
    // records; refusals after opening a token share one group without it.
    let mut contexts: Vec<Arc<crate::token::RequestContext>> = Vec::new();
    let mut collector = Collector::new();
    let mut groups: Vec<usize> = Vec::new();
    let mut refused_group: Option<usize> = None;
    // (group, entry within it, item, person) of every redeemed token.
    let mut positions: Vec<(usize, usize, usize, PersonLink)> = Vec::new();
    let mut entries_in: Vec<usize> = Vec::new();
    let mut results = Vec::with_capacity(done.results.len());
    let Done {
        results: outcomes,
        people,
    } = done;
    for (item, (result, person)) in outcomes.into_iter().zip(people).enumerate() {
        let person = person.map(|link| PersonLink(link.to_bytes()));
        results.push(RedeemResult {
            result: Some(match result {
                Ok(redeemed) => {
                    let found = contexts.iter().rposition(|known| {
                        Arc::ptr_eq(known, &redeemed.context) || **known == *redeemed.context
                    });
                    let index = match found {
                        Some(index) => index,
                        None => {
                            let context = &redeemed.context;
                            let mut header = facts.header(Operation::Redeem);
                            header.counterpart = context.requester.to_string();
                            header.affair = context.affair.to_string();
                            header.items = context.items.iter().map(ToString::to_string).collect();
                            header.non_disclosure_until = context.non_disclosure_until.unwrap_or(0);
                            groups.push(collector.group(header));
                            entries_in.push(0);
                            contexts.push(Arc::clone(context));
                            contexts.len() - 1
                        }
                    };
                    if let Some(link) = person {
                        collector.entry(
                            groups[index],
                            Entry {
                                outcome: Outcome::Done,
                                epoch,
                                serial: Some(*redeemed.serial.as_bytes()),
                                person: Some(link),
                            },
                        );
                        positions.push((groups[index], entries_in[index], item, link));
                        entries_in[index] += 1;
                    }
                    redeem_result::Result::Redeemed(Redeemed {
                        code: String::from_utf8_lossy(&redeemed.code.to_text()).into_owned(),
                        serial: redeemed.serial.as_bytes().to_vec(),
                        context: u32::try_from(index).unwrap_or(u32::MAX),
                        repeat: false,
                    })
                }
                Err(failure) => {
                    let outcome = outcome_of(&failure.error);
                    match person {
                        Some(link) => {
                            let group = *refused_group.get_or_insert_with(|| {
                                collector.group(facts.header(Operation::Redeem))
                            });
                            collector.entry(
                                group,
                                Entry {
                                    outcome,
                                    epoch: 0,
                                    serial: None,
                                    person: Some(link),
                                },
                            );
                        }
                        None => collector.refused(outcome),
                    }
                    redeem_result::Result::Error(status::item(failure))
                }
            }),
        });
    }
    let caller = caller.clone();
    let finish: Finish<RedeemResponse> = Box::new(move |state, response, appended| {
        mark_repeats(state, &caller, epoch, &positions, response, appended);
    });
    let append = collector.finish(facts);
    Ok(Pending {
        response: RedeemResponse {
            results,
            policy_version: policy.version().to_string(),
            contexts: contexts
                .iter()
                .map(|context| RequestContext {
                    requester: context.requester.to_string(),
                    affair: context.affair.to_string(),
                    items: context.items.iter().map(ToString::to_string).collect(),
                    expires_at: i64::try_from(context.expires_at).unwrap_or(i64::MAX),
                    non_disclosure_until: context
                        .non_disclosure_until
                        .map_or(0, |until| i64::try_from(until).unwrap_or(i64::MAX)),
                })
                .collect(),
        },
        append,
        finish: Some(finish),
    })
}

/// Marks the tokens the store found redeemed before as repeats and gives
/// them the first redemption's answer: the code in the epoch it was made
/// in then.
fn mark_repeats(
    state: &State,
    caller: &AgencyId,
    epoch: u32,
    positions: &[(usize, usize, usize, PersonLink)],
    response: &mut RedeemResponse,
    appended: &Appended,
) {
    for &(group, entry, item, link) in positions {
        let Some(first_epoch) = crate::audit::recorder::repeat_of(appended, group, entry) else {
            continue;
        };
        let Some(RedeemResult {
            result: Some(redeem_result::Result::Redeemed(redeemed)),
        }) = response.results.get_mut(item)
        else {
            continue;
        };
        redeemed.repeat = true;
        if first_epoch != epoch
            && let Ok(first) = u8::try_from(first_epoch)
            && let Ok(first) = crate::agency::Epoch::new(first)
            && let Ok(code) = state.exchange.code_for_link(
                &state.policy(),
                caller,
                first,
                &crate::link::PersonLink::from_bytes(link.0),
            )
        {
            redeemed.code = String::from_utf8_lossy(&code.to_text()).into_owned();
        }
    }
}

/// Migrate: the caller (a merger's survivor) converts the merged agency's
/// codes into its own current-epoch codes (D215).
fn migrate(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: MigrateRequest,
) -> Result<Pending<MigrateResponse>, Status> {
    let merged = parse_field("merged", &request.merged, AgencyId::new)?;
    let mut header = facts.header(Operation::Migrate);
    header.counterpart = merged.to_string();
    let (results, append) = converted(
        policy,
        caller,
        facts,
        header,
        request.codes,
        |codes| state.exchange.migrate(policy, caller, &merged, codes),
        |old_code, new_code| MigrateResult {
            result: Some(match new_code {
                Ok(new_code) => migrate_result::Result::Migrated(Migrated { old_code, new_code }),
                Err(error) => migrate_result::Result::Error(error),
            }),
        },
    )?;
    Ok(Pending::new(
        MigrateResponse {
            results,
            policy_version: policy.version().to_string(),
        },
        append,
    ))
}

/// What Rekey and Migrate share: `convert` turns the old codes into the
/// caller's current-epoch codes; the conversion is one audit group under
/// `header`, and each old code is paired with its new code or its error,
/// in the request's order.
fn converted<R>(
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    header: Header,
    old_codes: Vec<String>,
    convert: impl FnOnce(&[&[u8]]) -> Result<Done<crate::exchange::Rekeyed>, BatchError>,
    result: impl Fn(String, Result<String, crate::proto::fugo::v1::ItemError>) -> R,
) -> Result<(Vec<R>, Append), Status> {
    let codes: Vec<&[u8]> = old_codes.iter().map(String::as_bytes).collect();
    let done = convert(&codes).map_err(status::batch)?;
    let epoch = made_in(policy, caller, None);
    let mut collector = Collector::new();
    let group = collector.group(header);
    collector.items(group, &done, |_| (None, epoch));
    let append = collector.finish(facts);
    let results = done
        .into_iter()
        .zip(old_codes)
        .map(|(converted, old_code)| {
            result(
                old_code,
                converted
                    .map(|rekeyed| String::from_utf8_lossy(&rekeyed.code.to_text()).into_owned())
                    .map_err(status::item),
            )
        })
        .collect();
    Ok((results, append))
}

fn reidentify(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: ReidentifyRequest,
) -> Result<Pending<ReidentifyResponse>, Status> {
    let codes: Vec<&[u8]> = request.codes.iter().map(String::as_bytes).collect();
    let done = state
        .exchange
        .reidentify(policy, caller, &codes)
        .map_err(status::batch)?;
    let mut collector = Collector::new();
    let group = collector.group(facts.header(Operation::Reidentify));
    collector.items(group, &done, |_| (None, 0));
    let append = collector.finish(facts);
    let results = done
        .into_iter()
        .map(|result| ReidentifyResult {
            result: Some(match result {
                Ok(number) => reidentify_result::Result::Number(number.to_string()),
                Err(failure) => reidentify_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(Pending::new(
        ReidentifyResponse {
            results,
            policy_version: policy.version().to_string(),
        },
        append,
    ))
}

fn rekey(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    facts: &BatchFacts<'_>,
    request: RekeyRequest,
) -> Result<Pending<RekeyResponse>, Status> {
    let mut header = facts.header(Operation::Rekey);
    header.note = format!("to epoch {}", made_in(policy, caller, None));
    let (results, append) = converted(
        policy,
        caller,
        facts,
        header,
        request.codes,
        |codes| state.exchange.rekey(policy, caller, codes),
        |old_code, new_code| RekeyResult {
            result: Some(match new_code {
                Ok(new_code) => rekey_result::Result::Rekeyed(Rekeyed { old_code, new_code }),
                Err(error) => rekey_result::Result::Error(error),
            }),
        },
    )?;
    Ok(Pending::new(
        RekeyResponse {
            results,
            policy_version: policy.version().to_string(),
        },
        append,
    ))
}

#[tonic::async_trait]
impl Codes for CodesService {
    async fn rekey(
        &self,
        request: Request<RekeyRequest>,
    ) -> Result<Response<RekeyResponse>, Status> {
        self.unary(request, Metered::Rekey, rekey).await
    }

    type RekeyStreamStream = BoxStream<RekeyResponse>;

    async fn rekey_stream(
        &self,
        request: Request<Streaming<RekeyRequest>>,
    ) -> Result<Response<Self::RekeyStreamStream>, Status> {
        self.stream(request, Metered::Rekey, rekey)
    }

    async fn derive(
        &self,
        request: Request<DeriveRequest>,
    ) -> Result<Response<DeriveResponse>, Status> {
        self.unary(request, Metered::Derive, derive).await
    }

    type DeriveStreamStream = BoxStream<DeriveResponse>;

    async fn derive_stream(
        &self,
        request: Request<Streaming<DeriveRequest>>,
    ) -> Result<Response<Self::DeriveStreamStream>, Status> {
        self.stream(request, Metered::Derive, derive)
    }

    async fn seal(&self, request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        self.unary(request, Metered::Seal, seal).await
    }

    type SealStreamStream = BoxStream<SealResponse>;

    async fn seal_stream(
        &self,
        request: Request<Streaming<SealRequest>>,
    ) -> Result<Response<Self::SealStreamStream>, Status> {
        self.stream(request, Metered::Seal, seal)
    }

    async fn redeem(
        &self,
        request: Request<RedeemRequest>,
    ) -> Result<Response<RedeemResponse>, Status> {
        self.unary(request, Metered::Redeem, redeem).await
    }

    type RedeemStreamStream = BoxStream<RedeemResponse>;

    async fn redeem_stream(
        &self,
        request: Request<Streaming<RedeemRequest>>,
    ) -> Result<Response<Self::RedeemStreamStream>, Status> {
        self.stream(request, Metered::Redeem, redeem)
    }

    async fn reidentify(
        &self,
        request: Request<ReidentifyRequest>,
    ) -> Result<Response<ReidentifyResponse>, Status> {
        self.unary(request, Metered::Reidentify, reidentify).await
    }

    type ReidentifyStreamStream = BoxStream<ReidentifyResponse>;

    async fn reidentify_stream(
        &self,
        request: Request<Streaming<ReidentifyRequest>>,
    ) -> Result<Response<Self::ReidentifyStreamStream>, Status> {
        self.stream(request, Metered::Reidentify, reidentify)
    }

    async fn migrate(
        &self,
        request: Request<MigrateRequest>,
    ) -> Result<Response<MigrateResponse>, Status> {
        self.unary(request, Metered::Migrate, migrate).await
    }

    type MigrateStreamStream = BoxStream<MigrateResponse>;

    async fn migrate_stream(
        &self,
        request: Request<Streaming<MigrateRequest>>,
    ) -> Result<Response<Self::MigrateStreamStream>, Status> {
        self.stream(request, Metered::Migrate, migrate)
    }
}

/// The Codes service's request handling without a connection, a client
/// certificate or an audit trail: a request runs through the very handler
/// a call runs through (its field checks, the exchange, the mapping of
/// every outcome to a status or an item error, the records it would write
/// and, for a refused batch, its refusal record), and the response or the
/// status comes back. Quotas, which `run_batch` applies before the
/// handler, are not. For the fuzz targets (`fuzz/`, `tests/fuzz.rs`;
/// DECISIONS D153); no configuration reaches it.
#[doc(hidden)]
pub struct Handlers {
    state: State,
}

impl Handlers {
    /// Handlers over `keys` and `policy`, sealing with `random`; records
    /// are made and discarded.
    pub fn new(
        keys: crate::keys::KeyHierarchy,
        random: Box<dyn crate::exchange::RandomSource>,
        policy: Policy,
    ) -> Result<Self, fugo_log::checkpoint::NoteError> {
        let signer = crate::audit::log_signer(None, &keys)?;
        Ok(Handlers {
            state: State {
                exchange: Exchange::new(keys, random),
                policy: RwLock::new(Arc::new(policy)),
                recorder: Arc::new(crate::audit::Recorder::discarding_for_benchmarks(&signer)),
                quotas: Quotas::new(),
                metrics: Metrics::new(),
                marks: Mutex::default(),
            },
        })
    }

    /// `Derive` for `caller`.
    pub fn derive(
        &self,
        caller: &AgencyId,
        request: DeriveRequest,
    ) -> Result<DeriveResponse, Status> {
        self.answer(caller, request, derive)
    }

    /// `Seal` for `caller`.
    pub fn seal(&self, caller: &AgencyId, request: SealRequest) -> Result<SealResponse, Status> {
        self.answer(caller, request, seal)
    }

    /// `Redeem` for `caller`.
    pub fn redeem(
        &self,
        caller: &AgencyId,
        request: RedeemRequest,
    ) -> Result<RedeemResponse, Status> {
        self.answer(caller, request, redeem)
    }

    /// `Reidentify` for `caller`.
    pub fn reidentify(
        &self,
        caller: &AgencyId,
        request: ReidentifyRequest,
    ) -> Result<ReidentifyResponse, Status> {
        self.answer(caller, request, reidentify)
    }

    /// `Migrate` for `caller`.
    pub fn migrate(
        &self,
        caller: &AgencyId,
        request: MigrateRequest,
    ) -> Result<MigrateResponse, Status> {
        self.answer(caller, request, migrate)
    }

    /// `Rekey` for `caller`.
    pub fn rekey(&self, caller: &AgencyId, request: RekeyRequest) -> Result<RekeyResponse, Status> {
        self.answer(caller, request, rekey)
    }

    /// What `run_batch` does between deciding the caller and committing.
    fn answer<Req: Items, Resp>(
        &self,
        caller: &AgencyId,
        request: Req,
        handler: Handler<Req, Resp>,
    ) -> Result<Resp, Status> {
        let policy = self.state.policy();
        let items = request.items();
        let facts = BatchFacts {
            agent: "",
            time_ms: now_millis(),
            caller: caller.as_str(),
            batch_id: "handlers".to_owned(),
            policy: &policy,
        };
        match handler(&self.state, &policy, caller, &facts, request) {
            Ok(mut pending) => {
                pending.append.prepare();
                let appended = self
                    .state
                    .recorder
                    .record_blocking(pending.append)
                    .map_err(|error| status::audit(&error))?;
                let mut response = pending.response;
                if let Some(finish) = pending.finish {
                    finish(&self.state, &mut response, &appended);
                }
                Ok(response)
            }
            Err(status) => {
                let mut append = refusal(&facts, &status, items);
                append.prepare();
                self.state
                    .recorder
                    .record_blocking(append)
                    .map_err(|error| status::audit(&error))?;
                Err(status)
            }
        }
    }
}
