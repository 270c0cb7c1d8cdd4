//! The `fugo.v1.Audit` service: checkpoints and proofs for anyone with a
//! certificate the policy knows, disclosure for the citizen portal (the
//! `disclose` capability), each agency's own copy, and the provider's
//! confirmation of what it provided.
//!
//! Every read that concerns a person is itself recorded (a disclosure read
//! for that person, a copy page for the reader) and committed before the
//! answer leaves, like every operation of `fugo.v1.Codes`. What leaves
//! never links people across agencies: a copy shows the reader's own codes
//! and no serial, batch id or leaf of another agency's call.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fugo_log::record::{Entry, Header, Operation, Outcome, PersonLink, Record};
use fugo_log::store::{Append, Store};
use tonic::{Request, Response, Status};

use super::codes::{caller_of, charge};
use super::request_id::RequestId;
use super::state::State;
use super::status;
use crate::agency::{AffairId, AgencyId};
use crate::audit::entries::BatchFacts;
use crate::policy::{Capability, Metered, Policy};
use crate::proto::fugo::v1::audit_server::Audit;
use crate::proto::fugo::v1::{
    ConfirmProvisionRequest, ConfirmProvisionResponse, ConfirmResult, CopyRecord, DiscloseRequest,
    DiscloseResponse, DisclosedRecord, GetCheckpointRequest, GetCheckpointResponse,
    GetConsistencyProofRequest, GetConsistencyProofResponse, GetInclusionProofRequest,
    GetInclusionProofResponse, ReadCopyRequest, ReadCopyResponse,
};
use crate::proto::google::rpc::Code as RpcCode;

/// Records per page when the request says 0.
const DEFAULT_PAGE: u32 = 100;
/// Most records per page.
const MAX_PAGE: u32 = 1_000;

/// The gRPC service.
pub(crate) struct AuditService {
    state: Arc<State>,
}

impl AuditService {
    pub(crate) fn new(state: Arc<State>) -> Self {
        AuditService { state }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn page_size(asked: u32) -> Result<usize, Status> {
    match asked {
        0 => Ok(DEFAULT_PAGE as usize),
        1..=MAX_PAGE => Ok(asked as usize),
        _ => Err(status::bad_field(
            "page_size",
            &format!("at most {MAX_PAGE} records per page"),
        )),
    }
}

fn page_token(text: &str) -> Result<Option<u64>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<u64>()
        .map(Some)
        .map_err(|_| status::bad_field("page_token", "not a token this server gave"))
}

fn unavailable(error: crate::audit::RecorderError) -> Status {
    status::audit(&error)
}

/// The latest checkpoint's tree size, or FAILED_PRECONDITION before the
/// first one is signed.
fn latest_size(state: &State) -> Result<u64, Status> {
    state
        .recorder
        .checkpoint()
        .map(|signed| signed.size)
        .ok_or_else(|| {
            Status::failed_precondition("no checkpoint is signed yet; retry in a second")
        })
}

/// A tree size asked for (0: the latest signed one), checked to be no
/// larger than the latest signed one; returns (size, latest).
fn signed_size(state: &State, asked: u64) -> Result<(u64, u64), Status> {
    let latest = latest_size(state)?;
    Ok((if asked == 0 { latest } else { asked }, latest))
}

/// A display name for an agency id under the policy ("" when unknown).
fn agency_name(policy: &Policy, id: &str) -> String {
    AgencyId::new(id)
        .ok()
        .and_then(|id| policy.agency(&id).ok().map(|agency| agency.name.clone()))
        .unwrap_or_default()
}

fn affair_name(policy: &Policy, id: &str) -> String {
    AffairId::new(id)
        .ok()
        .and_then(|id| policy.affair(&id).map(|affair| affair.name.clone()))
        .unwrap_or_default()
}

/// The shared fields of the records one Audit call makes.
fn facts<'a>(caller: &'a AgencyId, id: &RequestId, policy: &'a Policy) -> BatchFacts<'a> {
    BatchFacts {
        agent: "",
        time_ms: now_ms(),
        caller: caller.as_str(),
        batch_id: id.as_str().to_owned(),
        policy,
    }
}

fn millis(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl AuditService {
    /// The caller's agency and the policy in force.
    fn caller<T>(&self, request: &Request<T>) -> Result<(AgencyId, Arc<Policy>), Status> {
        let policy = self.state.policy();
        let caller = caller_of(request, &policy)?;
        Ok((caller, policy))
    }

    /// The caller, which must hold `disclose` (the citizen portal).
    fn portal<T>(&self, request: &Request<T>) -> Result<(AgencyId, Arc<Policy>), Status> {
        let (caller, policy) = self.caller(request)?;
        policy
            .require(&caller, Capability::Disclose)
            .map_err(status::denied)?;
        Ok((caller, policy))
    }

    /// One disclosure page (see `Audit::disclose`); one read of the
    /// caller's `disclose` quota.
    async fn disclose_page(
        &self,
        request: Request<DiscloseRequest>,
    ) -> Result<Response<DiscloseResponse>, Status> {
        let id = RequestId::of(&request);
        let (caller, policy) = self.portal(&request).map_err(|s| id.tag_status(s))?;
        let usage = charge(&self.state, &policy, &caller, Metered::Disclose, 1, &id)
            .await
            .map_err(|s| id.tag_status(s))?;
        let request = request.into_inner();
        let limit = page_size(request.page_size).map_err(|s| id.tag_status(s))?;
        let before = page_token(&request.page_token).map_err(|s| id.tag_status(s))?;
        let link = self
            .state
            .exchange
            .link_of_own_code(&policy, &caller, request.code.as_bytes())
            .map_err(|error| id.tag_status(status::single("code", &error)))?;
        let person = PersonLink(link.to_bytes());
        let proof_size = if request.with_proofs {
            Some(latest_size(&self.state).map_err(|s| id.tag_status(s))?)
        } else {
            None
        };
        let now_s = now_ms() / 1000;
        let page = self
            .state
            .recorder
            .read(move |store| {
                let records = store.person_records(&person, before, limit)?;
                let mut shown = Vec::with_capacity(records.len());
                for record in &records {
                    // 不開示: withheld from the person until the date.
                    if record.header.non_disclosure_until > now_s {
                        continue;
                    }
                    // A retried redeem is one exchange: the person sees the
                    // first redemption; the repeat stays in both copies.
                    if record.entry.outcome == Outcome::Repeat {
                        continue;
                    }
                    // A suspension (a fraud hold above all) must not tip
                    // the person off: its records stay in the agencies'
                    // copies and the log, not in disclosure (D196).
                    if record.header.operation == Operation::Suspension {
                        continue;
                    }
                    let provision = match (record.header.operation, record.entry.serial) {
                        (Operation::Seal, Some(serial)) => store.provision(&serial)?,
                        _ => None,
                    };
                    let proof = match proof_size {
                        Some(size) if record.seq < size => Some((
                            record.leaf_bytes(),
                            store.inclusion_proof(record.seq, size)?,
                        )),
                        _ => None,
                    };
                    shown.push((record.clone(), provision, proof));
                }
                let next = if records.len() == limit {
                    records.last().map(|record| record.seq)
                } else {
                    None
                };
                let note = match proof_size {
                    Some(size) => store.checkpoint(size)?,
                    None => None,
                };
                Ok((shown, next, note))
            })
            .await
            .map_err(|e| id.tag_status(unavailable(e)))?;
        let (shown, next, note) = page;
        // The read itself is an access to the person's records.
        let facts = facts(&caller, &id, &policy);
        let mut header = facts.header(Operation::Disclosure);
        header.note = format!("{} records", shown.len());
        let mut append = facts.append(vec![fugo_log::record::Group::single(
            header,
            Outcome::Done,
            Some(person),
        )]);
        append.usage.extend(usage);
        self.record(append).await.map_err(|s| id.tag_status(s))?;
        let records = shown
            .into_iter()
            .map(|(record, provision, proof)| disclosed(&policy, &record, provision, proof))
            .collect();
        Ok(self.respond(
            &id,
            DiscloseResponse {
                records,
                next_page_token: next.map(|seq| seq.to_string()).unwrap_or_default(),
                checkpoint: note.unwrap_or_default(),
            },
        ))
    }

    /// One page of the caller's copy (see `Audit::read_copy`); one read
    /// of its `disclose` quota.
    async fn read_copy_page(
        &self,
        request: Request<ReadCopyRequest>,
    ) -> Result<Response<ReadCopyResponse>, Status> {
        let id = RequestId::of(&request);
        let (caller, policy) = self.caller(&request).map_err(|s| id.tag_status(s))?;
        let usage = charge(&self.state, &policy, &caller, Metered::Disclose, 1, &id)
            .await
            .map_err(|s| id.tag_status(s))?;
        let request = request.into_inner();
        let limit = page_size(request.page_size).map_err(|s| id.tag_status(s))?;
        let after = page_token(&request.page_token).map_err(|s| id.tag_status(s))?;
        let me = caller.as_str().to_owned();
        let records = self
            .state
            .recorder
            .read(move |store| store.agency_records(&me, after, limit))
            .await
            .map_err(|e| id.tag_status(unavailable(e)))?;
        let next = if records.len() == limit {
            records.last().map(|record| record.seq)
        } else {
            None
        };
        let epoch = policy
            .agency(&caller)
            .map(|agency| agency.epoch)
            .map_err(|denied| id.tag_status(status::denied(denied)))?;
        let copy: Vec<CopyRecord> = records
            .iter()
            .map(|record| self.copy_record(&policy, &caller, epoch, record))
            .collect();
        // Paging through one's copy is an access too: one record per page.
        let facts = facts(&caller, &id, &policy);
        let mut header = facts.header(Operation::CopyPage);
        header.note = match after {
            Some(after) => format!("after {after}, {} records", copy.len()),
            None => format!("from the start, {} records", copy.len()),
        };
        let mut append = facts.append(vec![fugo_log::record::Group::single(
            header,
            Outcome::Done,
            None,
        )]);
        append.usage.extend(usage);
        self.record(append).await.map_err(|s| id.tag_status(s))?;
        Ok(self.respond(
            &id,
            ReadCopyResponse {
                records: copy,
                next_page_token: next.map(|seq| seq.to_string()).unwrap_or_default(),
            },
        ))
    }

    /// Commits `append` or fails the call (fail closed).
    async fn record(&self, append: Append) -> Result<(), Status> {
        self.state
            .recorder
            .record(append)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    fn respond<T>(&self, id: &RequestId, message: T) -> Response<T> {
        let mut response = Response::new(message);
        id.tag(response.metadata_mut());
        super::codes::tag_checkpoint(&self.state, response.metadata_mut());
        response
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn get_checkpoint(
        &self,
        request: Request<GetCheckpointRequest>,
    ) -> Result<Response<GetCheckpointResponse>, Status> {
        let started = std::time::Instant::now();
        let call_id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let items = 1;
        let result: Result<Response<GetCheckpointResponse>, Status> = async {
            let id = RequestId::of(&request);
            self.caller(&request).map_err(|s| id.tag_status(s))?;
            let recorder = &self.state.recorder;
            Ok(self.respond(
                &id,
                GetCheckpointResponse {
                    checkpoint: recorder
                        .checkpoint()
                        .map(|signed| signed.note.to_string())
                        .unwrap_or_default(),
                    verifier_key: recorder.verifier().to_string(),
                },
            ))
        }
        .await;
        observed(
            &self.state,
            "checkpoint",
            &call_id,
            agency.as_ref(),
            items,
            started,
            &result,
        );
        result
    }

    async fn get_consistency_proof(
        &self,
        request: Request<GetConsistencyProofRequest>,
    ) -> Result<Response<GetConsistencyProofResponse>, Status> {
        let started = std::time::Instant::now();
        let call_id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let items = 1;
        let result: Result<Response<GetConsistencyProofResponse>, Status> = async {
            let id = RequestId::of(&request);
            self.caller(&request).map_err(|s| id.tag_status(s))?;
            let request = request.into_inner();
            let (new_size, latest_size) =
                signed_size(&self.state, request.new_size).map_err(|s| id.tag_status(s))?;
            if request.old_size > new_size || new_size > latest_size {
                return Err(id.tag_status(status::bad_field(
                    "old_size",
                    "sizes must satisfy old_size <= new_size <= the latest checkpoint's size",
                )));
            }
            let old = request.old_size;
            let (proof, note) = self
                .state
                .recorder
                .read(move |store| {
                    let proof = store.consistency_proof(old, new_size)?;
                    let note = store.checkpoint(new_size)?;
                    Ok((proof, note))
                })
                .await
                .map_err(|e| id.tag_status(unavailable(e)))?;
            let checkpoint = note.ok_or_else(|| {
                id.tag_status(Status::not_found(
                    "no signed checkpoint has this new_size; use 0 for the latest",
                ))
            })?;
            Ok(self.respond(
                &id,
                GetConsistencyProofResponse {
                    proof: wire_proof(&proof),
                    checkpoint,
                },
            ))
        }
        .await;
        observed(
            &self.state,
            "consistency_proof",
            &call_id,
            agency.as_ref(),
            items,
            started,
            &result,
        );
        result
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<GetInclusionProofRequest>,
    ) -> Result<Response<GetInclusionProofResponse>, Status> {
        let started = std::time::Instant::now();
        let call_id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let items = 1;
        let result: Result<Response<GetInclusionProofResponse>, Status> = async {
            let id = RequestId::of(&request);
            self.portal(&request).map_err(|s| id.tag_status(s))?;
            let request = request.into_inner();
            let (size, latest_size) =
                signed_size(&self.state, request.tree_size).map_err(|s| id.tag_status(s))?;
            if request.sequence >= size || size > latest_size {
                return Err(id.tag_status(status::bad_field(
                    "sequence",
                    "must lie inside a signed tree size",
                )));
            }
            let seq = request.sequence;
            let (leaf, proof, note) = self
                .state
                .recorder
                .read(move |store| {
                    let leaf = store.record(seq)?.map(|record| record.leaf_bytes());
                    let proof = store.inclusion_proof(seq, size)?;
                    let note = store.checkpoint(size)?;
                    Ok((leaf, proof, note))
                })
                .await
                .map_err(|e| id.tag_status(unavailable(e)))?;
            let (Some(leaf), Some(checkpoint)) = (leaf, note) else {
                return Err(id.tag_status(Status::not_found(
                    "no such record body (purged) or no signed checkpoint of this size",
                )));
            };
            Ok(self.respond(
                &id,
                GetInclusionProofResponse {
                    leaf,
                    proof: wire_proof(&proof),
                    checkpoint,
                },
            ))
        }
        .await;
        observed(
            &self.state,
            "inclusion_proof",
            &call_id,
            agency.as_ref(),
            items,
            started,
            &result,
        );
        result
    }

    async fn disclose(
        &self,
        request: Request<DiscloseRequest>,
    ) -> Result<Response<DiscloseResponse>, Status> {
        let started = std::time::Instant::now();
        let id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let result = self.disclose_page(request).await;
        observed(
            &self.state,
            "disclose",
            &id,
            agency.as_ref(),
            1,
            started,
            &result,
        );
        result
    }

    async fn read_copy(
        &self,
        request: Request<ReadCopyRequest>,
    ) -> Result<Response<ReadCopyResponse>, Status> {
        let started = std::time::Instant::now();
        let id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let result = self.read_copy_page(request).await;
        observed(
            &self.state,
            "read_copy",
            &id,
            agency.as_ref(),
            1,
            started,
            &result,
        );
        result
    }

    async fn confirm_provision(
        &self,
        request: Request<ConfirmProvisionRequest>,
    ) -> Result<Response<ConfirmProvisionResponse>, Status> {
        let started = std::time::Instant::now();
        let call_id = RequestId::of(&request);
        let agency = caller_of(&request, &self.state.policy()).ok();
        let items = request.get_ref().confirmations.len();
        let result: Result<Response<ConfirmProvisionResponse>, Status> = async {
            let id = RequestId::of(&request);
            let (caller, policy) = self.caller(&request).map_err(|s| id.tag_status(s))?;
            let confirmations = request.into_inner().confirmations;
            if confirmations.len() > crate::exchange::MAX_BATCH {
                return Err(id.tag_status(Status::resource_exhausted(format!(
                    "at most {} confirmations per call",
                    crate::exchange::MAX_BATCH
                ))));
            }
            let me = caller.as_str().to_owned();
            let serials: Vec<Option<[u8; 16]>> = confirmations
                .iter()
                .map(|c| <[u8; 16]>::try_from(c.serial.as_slice()).ok())
                .collect();
            let lookups = serials.clone();
            // For each serial: the redeem record it belongs to, and whether a
            // confirmation exists already.
            let found = self
                .state
                .recorder
                .read(move |store| {
                    let mut found = Vec::with_capacity(lookups.len());
                    for serial in &lookups {
                        let Some(serial) = serial else {
                            found.push(None);
                            continue;
                        };
                        let redeem = match store.redemption(serial)? {
                            Some(redemption) if redemption.caller == me => {
                                store.record(redemption.seq)?
                            }
                            _ => None,
                        };
                        let confirmed = store.provision(serial)?.is_some();
                        found.push(redeem.map(|record| (record, confirmed)));
                    }
                    Ok(found)
                })
                .await
                .map_err(|e| id.tag_status(unavailable(e)))?;
            let facts = facts(&caller, &id, &policy);
            let mut results = Vec::with_capacity(confirmations.len());
            let mut groups: Vec<fugo_log::record::Group> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (index, ((confirmation, serial), found)) in
                confirmations.iter().zip(&serials).zip(found).enumerate()
            {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let (code, reason) = match (serial, found) {
                    (None, _) => (RpcCode::InvalidArgument, "a serial is 16 bytes"),
                    (Some(_), None) => (
                        RpcCode::NotFound,
                        "no token with this serial was redeemed by the caller",
                    ),
                    (Some(serial), Some((_, true))) | (Some(serial), Some(_))
                        if !seen.insert(*serial) =>
                    {
                        (RpcCode::AlreadyExists, "this exchange is confirmed already")
                    }
                    (Some(_), Some((_, true))) => {
                        (RpcCode::AlreadyExists, "this exchange is confirmed already")
                    }
                    (Some(serial), Some((redeem, false))) => {
                        let mut header = facts.header(Operation::Provision);
                        header.counterpart = redeem.header.counterpart.clone();
                        header.affair = redeem.header.affair.clone();
                        header.items = redeem.header.items.clone();
                        header.non_disclosure_until = redeem.header.non_disclosure_until;
                        groups.push(fugo_log::record::Group {
                            header,
                            entries: vec![Entry {
                                outcome: if confirmation.provided {
                                    Outcome::Provided
                                } else {
                                    Outcome::NotProvided
                                },
                                epoch: 0,
                                serial: Some(*serial),
                                person: redeem.entry.person,
                            }],
                        });
                        (RpcCode::Ok, "")
                    }
                };
                results.push(ConfirmResult {
                    index,
                    code: code as i32,
                    reason: reason.to_owned(),
                });
            }
            self.record(facts.append(groups))
                .await
                .map_err(|s| id.tag_status(s))?;
            Ok(self.respond(&id, ConfirmProvisionResponse { results }))
        }
        .await;
        observed(
            &self.state,
            "confirm_provision",
            &call_id,
            agency.as_ref(),
            items,
            started,
            &result,
        );
        result
    }
}

impl AuditService {
    /// One record of the reader's copy: its own code for the person, the
    /// other party's id, and nothing of the other party's call.
    fn copy_record(
        &self,
        policy: &Policy,
        reader: &AgencyId,
        epoch: crate::agency::Epoch,
        record: &Record,
    ) -> CopyRecord {
        let header: &Header = &record.header;
        let is_caller = header.caller == reader.as_str();
        // The reader made this call on behalf of the caller (D214): it
        // sees the call, not a code of its own for the person (an agent
        // acting for many agencies must not link their people).
        // (An agent that is also the counterpart, e.g. the provider of a
        // seal it made for another, reads the record as counterpart.)
        let is_agent =
            !is_caller && header.counterpart != reader.as_str() && header.agent == reader.as_str();
        let code = record
            .entry
            .person
            .filter(|_| !is_agent)
            .and_then(|link| {
                self.state
                    .exchange
                    .code_for_link(
                        policy,
                        reader,
                        epoch,
                        &crate::link::PersonLink::from_bytes(link.0),
                    )
                    .ok()
            })
            .map(|code| String::from_utf8_lossy(&code.to_text()).into_owned())
            .unwrap_or_default();
        CopyRecord {
            sequence: record.seq,
            time_ms: millis(header.time_ms),
            operation: header.operation.name().to_owned(),
            role: if is_caller {
                "caller"
            } else if is_agent {
                "agent"
            } else {
                "counterpart"
            }
            .to_owned(),
            other_agency: if is_caller {
                header.counterpart.clone()
            } else {
                header.caller.clone()
            },
            affair: header.affair.clone(),
            items: header.items.clone(),
            outcome: record.entry.outcome.name().to_owned(),
            code,
            batch_id: if is_caller || is_agent {
                header.batch_id.clone()
            } else {
                String::new()
            },
            count: header.count,
            note: header.note.clone(),
            non_disclosure_until: i64::try_from(header.non_disclosure_until).unwrap_or(i64::MAX),
            agent: header.agent.clone(),
        }
    }
}

/// Counts and logs one Audit call: its id, agency, operation, code and
/// time (never what it asked or answered).
fn observed<T>(
    state: &State,
    operation: &'static str,
    id: &RequestId,
    agency: Option<&AgencyId>,
    items: usize,
    started: std::time::Instant,
    result: &Result<Response<T>, Status>,
) {
    let elapsed = started.elapsed();
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    state.metrics.call(operation, agency, code, items, elapsed);
    let agency = agency.map_or("-", AgencyId::as_str);
    let micros = elapsed.as_micros() as u64;
    match result {
        Ok(_) => tracing::info!(
            request_id = id.as_str(),
            agency,
            operation,
            items,
            micros,
            "call done"
        ),
        Err(status) => tracing::info!(
            request_id = id.as_str(),
            agency,
            operation,
            code = ?status.code(),
            reason = status.message(),
            micros,
            "call refused"
        ),
    }
}

/// A proof's hashes as protobuf bytes.
fn wire_proof(proof: &[[u8; 32]]) -> Vec<Vec<u8>> {
    proof.iter().map(|hash| hash.to_vec()).collect()
}

/// One record as the person sees it.
fn disclosed(
    policy: &Policy,
    record: &Record,
    provision: Option<(u64, Outcome)>,
    proof: Option<(Vec<u8>, Vec<[u8; 32]>)>,
) -> DisclosedRecord {
    let header = &record.header;
    let (provided_at_ms, provision) = match provision {
        Some((time, outcome)) => (millis(time), outcome.name().to_owned()),
        None => (0, String::new()),
    };
    let (leaf, proof) = match proof {
        Some((leaf, proof)) => (leaf, wire_proof(&proof)),
        None => (Vec::new(), Vec::new()),
    };
    DisclosedRecord {
        sequence: record.seq,
        operation: header.operation.name().to_owned(),
        time_ms: millis(header.time_ms),
        agency: header.caller.clone(),
        agency_name: agency_name(policy, &header.caller),
        counterpart: header.counterpart.clone(),
        counterpart_name: agency_name(policy, &header.counterpart),
        affair: header.affair.clone(),
        affair_name: affair_name(policy, &header.affair),
        items: header.items.clone(),
        outcome: record.entry.outcome.name().to_owned(),
        provided_at_ms,
        provision,
        leaf,
        proof,
        agent: header.agent.clone(),
        agent_name: agency_name(policy, &header.agent),
    }
}
