//! The `fugo.v1.Codes` service: decodes requests, runs the [`Exchange`]
//! operation for the caller off the async executor, encodes results.
//!
//! Each batch runs on tokio's blocking pool, so the cryptography never
//! stalls the executor's I/O threads. Streams answer one response per
//! request message, in order, with up to four batches in progress at once;
//! a whole-batch failure ends the stream with that status.

use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::identity::Identities;
use super::status;
use crate::agency::{AffairId, AgencyId, ItemId};
use crate::exchange::{Exchange, SealContext};
use crate::policy::Policy;
use crate::proto::fugo::v1::codes_server::Codes;
use crate::proto::fugo::v1::{
    DeriveRequest, DeriveResponse, DeriveResult, RedeemRequest, RedeemResponse, RedeemResult,
    Redeemed, ReidentifyRequest, ReidentifyResponse, ReidentifyResult, RequestContext, SealRequest,
    SealResponse, SealResult, Sealed, derive_result, redeem_result, reidentify_result, seal_result,
};

/// Everything the service shares between calls.
pub(crate) struct State {
    pub(crate) exchange: Exchange,
    pub(crate) policy: RwLock<Arc<Policy>>,
    pub(crate) identities: Identities,
}

impl State {
    /// The policy in force now (a reload swaps it atomically).
    pub(crate) fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(PoisonError::into_inner))
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

/// Batches of one stream processed at once.
const IN_FLIGHT: usize = 4;

type Handler<Req, Resp> = fn(&State, &Policy, &AgencyId, Req) -> Result<Resp, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Runs one batch on the blocking pool and logs what happened (never what
/// was in it).
async fn run_batch<Req: Send + 'static, Resp: Send + 'static>(
    state: Arc<State>,
    caller: AgencyId,
    operation: &'static str,
    request: Req,
    handler: Handler<Req, Resp>,
) -> Result<Resp, Status> {
    let started = Instant::now();
    let policy = state.policy();
    let outcome = tokio::task::spawn_blocking(move || {
        handler(&state, &policy, &caller, request).map(|r| (r, caller))
    })
    .await
    .unwrap_or_else(|_| Err(Status::internal("a worker failed")));
    match &outcome {
        Ok((_, caller)) => tracing::debug!(
            agency = %caller,
            operation,
            micros = started.elapsed().as_micros() as u64,
            "batch done"
        ),
        Err(status) => tracing::info!(
            operation,
            code = ?status.code(),
            reason = status.message(),
            "batch refused"
        ),
    }
    outcome.map(|(response, _)| response)
}

impl CodesService {
    async fn unary<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        request: Request<Req>,
        operation: &'static str,
        handler: Handler<Req, Resp>,
    ) -> Result<Response<Resp>, Status> {
        let caller = self
            .state
            .identities
            .caller(&request, &self.state.policy())?;
        run_batch(
            Arc::clone(&self.state),
            caller,
            operation,
            request.into_inner(),
            handler,
        )
        .await
        .map(Response::new)
    }

    fn stream<Req: Send + 'static, Resp: Send + 'static>(
        &self,
        request: Request<Streaming<Req>>,
        operation: &'static str,
        handler: Handler<Req, Resp>,
    ) -> Result<Response<BoxStream<Resp>>, Status> {
        let caller = self
            .state
            .identities
            .caller(&request, &self.state.policy())?;
        let mut incoming = request.into_inner();
        let state = Arc::clone(&self.state);
        let (sender, receiver) = mpsc::channel(IN_FLIGHT);
        // Batches start as soon as they arrive (up to IN_FLIGHT at once, so
        // decoding, crypto and encoding overlap) and are answered in order.
        let (jobs, mut started) = mpsc::channel::<JoinHandle<Result<Resp, Status>>>(IN_FLIGHT);
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let job = match next {
                    Ok(batch) => tokio::spawn(run_batch(
                        Arc::clone(&state),
                        caller.clone(),
                        operation,
                        batch,
                        handler,
                    )),
                    Err(status) => tokio::spawn(async move { Err(status) }),
                };
                if jobs.send(job).await.is_err() {
                    break;
                }
            }
        });
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
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

fn parse_field<T, E: ToString>(
    field: &'static str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, Status> {
    parse(text).map_err(|error| status::bad_field(field, &error.to_string()))
}

fn derive(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    request: DeriveRequest,
) -> Result<DeriveResponse, Status> {
    let numbers: Vec<&[u8]> = request.numbers.iter().map(String::as_bytes).collect();
    let results = state
        .exchange
        .derive(policy, caller, &numbers)
        .map_err(status::batch)?
        .into_iter()
        .map(|result| DeriveResult {
            result: Some(match result {
                Ok(code) => derive_result::Result::Code(code),
                Err(failure) => derive_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(DeriveResponse {
        results,
        policy_version: policy.version().to_string(),
    })
}

fn seal(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    request: SealRequest,
) -> Result<SealResponse, Status> {
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
    let results = state
        .exchange
        .seal(policy, caller, &context, &codes, now())
        .map_err(status::batch)?
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
    Ok(SealResponse {
        results,
        policy_version: policy.version().to_string(),
    })
}

fn redeem(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    request: RedeemRequest,
) -> Result<RedeemResponse, Status> {
    let tokens: Vec<&[u8]> = request.tokens.iter().map(Vec::as_slice).collect();
    let redeemed = state
        .exchange
        .redeem(policy, caller, &tokens, now())
        .map_err(status::batch)?;
    // Each distinct context goes into the response once; the exchange hands
    // the tokens of one seal the same shared context.
    let mut contexts: Vec<Arc<crate::token::RequestContext>> = Vec::new();
    let mut context_index = |context: &Arc<crate::token::RequestContext>| -> u32 {
        let found = contexts
            .iter()
            .rposition(|known| Arc::ptr_eq(known, context) || **known == **context);
        let index = found.unwrap_or_else(|| {
            contexts.push(Arc::clone(context));
            contexts.len() - 1
        });
        u32::try_from(index).unwrap_or(u32::MAX)
    };
    let results = redeemed
        .into_iter()
        .map(|result| RedeemResult {
            result: Some(match result {
                Ok(redeemed) => redeem_result::Result::Redeemed(Redeemed {
                    code: String::from_utf8_lossy(&redeemed.code.to_text()).into_owned(),
                    serial: redeemed.serial.as_bytes().to_vec(),
                    context: context_index(&redeemed.context),
                }),
                Err(failure) => redeem_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(RedeemResponse {
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
    })
}

fn reidentify(
    state: &State,
    policy: &Policy,
    caller: &AgencyId,
    request: ReidentifyRequest,
) -> Result<ReidentifyResponse, Status> {
    let codes: Vec<&[u8]> = request.codes.iter().map(String::as_bytes).collect();
    let results = state
        .exchange
        .reidentify(policy, caller, &codes)
        .map_err(status::batch)?
        .into_iter()
        .map(|result| ReidentifyResult {
            result: Some(match result {
                Ok(number) => reidentify_result::Result::Number(number.to_string()),
                Err(failure) => reidentify_result::Result::Error(status::item(failure)),
            }),
        })
        .collect();
    Ok(ReidentifyResponse {
        results,
        policy_version: policy.version().to_string(),
    })
}

#[tonic::async_trait]
impl Codes for CodesService {
    async fn derive(
        &self,
        request: Request<DeriveRequest>,
    ) -> Result<Response<DeriveResponse>, Status> {
        self.unary(request, "derive", derive).await
    }

    type DeriveStreamStream = BoxStream<DeriveResponse>;

    async fn derive_stream(
        &self,
        request: Request<Streaming<DeriveRequest>>,
    ) -> Result<Response<Self::DeriveStreamStream>, Status> {
        self.stream(request, "derive", derive)
    }

    async fn seal(&self, request: Request<SealRequest>) -> Result<Response<SealResponse>, Status> {
        self.unary(request, "seal", seal).await
    }

    type SealStreamStream = BoxStream<SealResponse>;

    async fn seal_stream(
        &self,
        request: Request<Streaming<SealRequest>>,
    ) -> Result<Response<Self::SealStreamStream>, Status> {
        self.stream(request, "seal", seal)
    }

    async fn redeem(
        &self,
        request: Request<RedeemRequest>,
    ) -> Result<Response<RedeemResponse>, Status> {
        self.unary(request, "redeem", redeem).await
    }

    type RedeemStreamStream = BoxStream<RedeemResponse>;

    async fn redeem_stream(
        &self,
        request: Request<Streaming<RedeemRequest>>,
    ) -> Result<Response<Self::RedeemStreamStream>, Status> {
        self.stream(request, "redeem", redeem)
    }

    async fn reidentify(
        &self,
        request: Request<ReidentifyRequest>,
    ) -> Result<Response<ReidentifyResponse>, Status> {
        self.unary(request, "reidentify", reidentify).await
    }

    type ReidentifyStreamStream = BoxStream<ReidentifyResponse>;

    async fn reidentify_stream(
        &self,
        request: Request<Streaming<ReidentifyRequest>>,
    ) -> Result<Response<Self::ReidentifyStreamStream>, Status> {
        self.stream(request, "reidentify", reidentify)
    }
}
