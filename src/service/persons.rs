//! The `fugo.v1.Persons` service: My Number re-issue (`reissue`
//! capability), suspension and its lift (`suspend`), and the status read
//! that shows a suspension's reason (either capability).
//!
//! Each change is planned in the exchange (`fugo_core::persons`: the
//! tables' checks and sealed entries), stored with its audit record in one
//! commit, and only then taken into memory, so what the server acts on is
//! always on disk. Changes are serialized by one lock: two re-issues of
//! one person cannot both pass their checks.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fugo_log::record::{Group, Operation, Outcome, PersonLink};
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::codes::caller_of;
use super::request_id::RequestId;
use super::state::State;
use super::status;
use crate::agency::AgencyId;
use crate::audit::entries::BatchFacts;
use crate::exchange::Planned;
use crate::mynumber::MyNumber;
use crate::persons::{Reason, Suspension};
use crate::policy::{Capability, Policy};
use crate::proto::fugo::v1::persons_server::Persons;
use crate::proto::fugo::v1::{
    GetStatusRequest, GetStatusResponse, LiftRequest, LiftResponse, ReissueRequest,
    ReissueResponse, SuspendRequest, SuspendResponse, SuspensionReason,
};

/// The gRPC service.
pub(crate) struct PersonsService {
    state: Arc<State>,
    /// Held from a change's checks until memory holds it.
    changing: Mutex<()>,
}

impl PersonsService {
    pub(crate) fn new(state: Arc<State>) -> Self {
        PersonsService {
            state,
            changing: Mutex::new(()),
        }
    }

    /// The caller, which must hold one of `capabilities`, and the policy.
    fn caller<T>(
        &self,
        request: &Request<T>,
        capabilities: &[Capability],
    ) -> Result<(AgencyId, Arc<Policy>), Status> {
        let policy = self.state.policy();
        let caller = caller_of(request, &policy)?;
        let agency = policy.agency(&caller).map_err(status::denied)?;
        if !capabilities.iter().any(|c| agency.can(*c)) {
            return Err(status::missing_capability(&caller, capabilities));
        }
        Ok((caller, policy))
    }

    /// Stores `planned` with one record of `operation` about the person
    /// (`note` says what; never a value), then takes it into memory.
    /// Returns the record's seq.
    async fn commit(
        &self,
        caller: &AgencyId,
        policy: &Policy,
        id: &RequestId,
        operation: Operation,
        note: &str,
        planned: Planned,
    ) -> Result<u64, Status> {
        let facts = facts(caller, id, policy);
        let mut header = facts.header(operation);
        header.note = note.to_owned();
        let mut append = facts.append(vec![Group::single(
            header,
            Outcome::Done,
            Some(PersonLink(planned.person.to_bytes())),
        )]);
        append.persons = crate::audit::persons::stored(&planned.change);
        let appended = self
            .state
            .recorder
            .record(append)
            .await
            .map_err(|error| status::audit(&error))?;
        self.state.exchange.persons().apply(planned.change);
        Ok(appended.groups.first().map_or(0, |group| group.first_seq))
    }

    /// Counts the call on `/metrics` (operation and status, as Codes calls).
    /// `started` is when the call arrived; the agency is the certificate's,
    /// if the policy knows it.
    fn count<T>(
        &self,
        operation: &'static str,
        agency: Option<AgencyId>,
        started: std::time::Instant,
        result: &Result<T, Status>,
    ) {
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.state
            .metrics
            .call(operation, agency.as_ref(), code, 1, started.elapsed());
    }

    fn respond<T>(&self, id: &RequestId, message: T) -> Response<T> {
        let mut response = Response::new(message);
        id.tag(response.metadata_mut());
        super::codes::tag_checkpoint(&self.state, response.metadata_mut());
        response
    }

    async fn reissue(&self, request: Request<ReissueRequest>) -> Result<ReissueResponse, Status> {
        let id = RequestId::of(&request);
        let (caller, policy) = self.caller(&request, &[Capability::Reissue])?;
        let request = request.into_inner();
        let old = number("old_number", &request.old_number)?;
        let new = number("new_number", &request.new_number)?;
        let _changing = self.changing.lock().await;
        let planned = self
            .state
            .exchange
            .plan_reissue(&old, &new)
            .map_err(|error| status::persons(&error))?;
        // The new number must be unused: no record anywhere in the log may
        // be about the handle it would have had (D192).
        if let Some(link) = planned.new_number {
            let link = PersonLink(link.to_bytes());
            let seen = self
                .state
                .recorder
                .read(move |store| fugo_log::store::Store::person_seen(store, &link))
                .await
                .map_err(|error| status::audit(&error))?;
            if seen {
                return Err(status::new_number_has_history());
            }
        }
        let seq = self
            .commit(
                &caller,
                &policy,
                &id,
                Operation::Reissue,
                "reissue",
                planned,
            )
            .await?;
        tracing::info!(request = %id.as_str(), agency = %caller, "a My Number re-issue was recorded");
        Ok(ReissueResponse { seq })
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<GetStatusResponse, Status> {
        let id = RequestId::of(&request);
        let (caller, policy) =
            self.caller(&request, &[Capability::Suspend, Capability::Reissue])?;
        let person = number("number", &request.get_ref().number)?;
        let found = self.state.exchange.persons().status(&person);
        // Reading a reason is an access to the person: recorded first. A
        // number the tables know nothing of is recorded without a person,
        // so looking up a number about to be re-issued gives it no history
        // (D198).
        let known = found.superseded || found.reissued || found.suspension.is_some();
        let facts = facts(&caller, &id, &policy);
        let mut header = facts.header(Operation::Suspension);
        header.note = "status read".to_owned();
        let person_link =
            known.then(|| PersonLink(self.state.exchange.person_link(&person).to_bytes()));
        let append = facts.append(vec![Group::single(header, Outcome::Done, person_link)]);
        self.state
            .recorder
            .record(append)
            .await
            .map_err(|error| status::audit(&error))?;
        Ok(GetStatusResponse {
            superseded: found.superseded,
            reissued: found.reissued,
            suspension: found
                .suspension
                .map_or(SuspensionReason::Unspecified, |s| wire_reason(s.reason))
                .into(),
            suspended_since_ms: found.suspension.map_or(0, |s| s.since_ms),
        })
    }

    /// Suspends the person of `number_text` for `reason` (`Some`: a
    /// SuspensionReason value) or lifts the suspension (`None`).
    async fn change_suspension<T>(
        &self,
        request: &Request<T>,
        number_text: &str,
        reason: Option<i32>,
    ) -> Result<u64, Status> {
        let id = RequestId::of(request);
        let (caller, policy) = self.caller(request, &[Capability::Suspend])?;
        let person = number("number", number_text)?;
        let suspension = match reason {
            None => None,
            Some(reason) => Some(Suspension {
                reason: reason_of(reason)?,
                since_ms: now_ms(),
            }),
        };
        let _changing = self.changing.lock().await;
        let planned = self
            .state
            .exchange
            .plan_suspension(&person, suspension)
            .map_err(|error| status::persons(&error))?;
        // The reason stays under AEAD in the tables: the record says only
        // that a suspension changed (D195).
        let note = if reason.is_some() { "suspend" } else { "lift" };
        self.commit(&caller, &policy, &id, Operation::Suspension, note, planned)
            .await
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn facts<'a>(caller: &'a AgencyId, id: &RequestId, policy: &'a Policy) -> BatchFacts<'a> {
    BatchFacts {
        // Persons calls are made by the agency itself (no delegation).
        agent: "",
        time_ms: now_ms(),
        caller: caller.as_str(),
        batch_id: id.as_str().to_owned(),
        policy,
    }
}

/// A request's number field, or INVALID_ARGUMENT naming the field.
fn number(field: &str, text: &str) -> Result<MyNumber, Status> {
    MyNumber::parse(text.as_bytes()).map_err(|error| status::bad_field(field, &error.to_string()))
}

fn reason_of(value: i32) -> Result<Reason, Status> {
    match SuspensionReason::try_from(value) {
        Ok(SuspensionReason::Deceased) => Ok(Reason::Deceased),
        Ok(SuspensionReason::RemovedFromRegister) => Ok(Reason::RemovedFromRegister),
        Ok(SuspensionReason::FraudHold) => Ok(Reason::FraudHold),
        _ => Err(status::bad_field(
            "reason",
            "name a reason: DECEASED, REMOVED_FROM_REGISTER or FRAUD_HOLD",
        )),
    }
}

fn wire_reason(reason: Reason) -> SuspensionReason {
    match reason {
        Reason::Deceased => SuspensionReason::Deceased,
        Reason::RemovedFromRegister => SuspensionReason::RemovedFromRegister,
        Reason::FraudHold => SuspensionReason::FraudHold,
    }
}

#[tonic::async_trait]
impl Persons for PersonsService {
    async fn reissue(
        &self,
        request: Request<ReissueRequest>,
    ) -> Result<Response<ReissueResponse>, Status> {
        let id = RequestId::of(&request);
        let started = std::time::Instant::now();
        let agency = caller_of(&request, &self.state.policy()).ok();
        let answer = PersonsService::reissue(self, request).await;
        self.count("reissue", agency, started, &answer);
        Ok(self.respond(&id, answer.map_err(|s| id.tag_status(s))?))
    }

    async fn suspend(
        &self,
        request: Request<SuspendRequest>,
    ) -> Result<Response<SuspendResponse>, Status> {
        let id = RequestId::of(&request);
        let started = std::time::Instant::now();
        let agency = caller_of(&request, &self.state.policy()).ok();
        let body = request.get_ref();
        let seq = self
            .change_suspension(&request, &body.number, Some(body.reason))
            .await;
        self.count("suspend", agency, started, &seq);
        Ok(self.respond(
            &id,
            SuspendResponse {
                seq: seq.map_err(|s| id.tag_status(s))?,
            },
        ))
    }

    async fn lift(&self, request: Request<LiftRequest>) -> Result<Response<LiftResponse>, Status> {
        let id = RequestId::of(&request);
        let started = std::time::Instant::now();
        let agency = caller_of(&request, &self.state.policy()).ok();
        let seq = self
            .change_suspension(&request, &request.get_ref().number, None)
            .await;
        self.count("lift", agency, started, &seq);
        Ok(self.respond(
            &id,
            LiftResponse {
                seq: seq.map_err(|s| id.tag_status(s))?,
            },
        ))
    }

    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let id = RequestId::of(&request);
        let started = std::time::Instant::now();
        let agency = caller_of(&request, &self.state.policy()).ok();
        let answer = PersonsService::get_status(self, request).await;
        self.count("get_status", agency, started, &answer);
        Ok(self.respond(&id, answer.map_err(|s| id.tag_status(s))?))
    }
}
