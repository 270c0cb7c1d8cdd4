//! The admin plane: the `fugo.v1.Admin` service on a listener of its own
//! (`[admin]` in fugo.toml), for client certificates of the admin CA whose
//! identity is listed as an admin. Agencies' certificates are signed by
//! another CA and are refused at the handshake; an admin certificate is
//! refused on the agencies' listener the same way.
//!
//! Every admin call is an audit record (operation `admin`, caller
//! `admin:<identity>`, the note saying what was done) committed before the
//! answer leaves, like every agency call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::edge::Peer;
use super::request_id::RequestId;
use super::state::State;
use super::status;
use crate::admin::backup::{BackupHeader, CHUNK, Sealer};
use crate::audit::entries::BatchFacts;
use crate::custody::Unsealing;
use crate::proto::fugo::v1::admin_server::Admin;
use crate::proto::fugo::v1::{
    AdminStatusRequest, AdminStatusResponse, BackupChunk, BackupRequest, ReloadCrlsRequest,
    ReloadCrlsResponse, ReloadPolicyRequest, ReloadPolicyResponse, UnsealRequest, UnsealResponse,
};
use fugo_log::record::{Group, Operation, Outcome};

/// The backup key and the master key's fingerprint, set when the server
/// opens (a sealed server has neither).
pub(crate) struct BackupKey {
    /// K_backup.
    pub(crate) key: Zeroizing<[u8; 32]>,
    /// The master key's fingerprint (hex), named in the backup's header.
    pub(crate) fingerprint: String,
}

/// The admin identity of a call, put in its extensions by [`AdminAdmit`].
#[derive(Clone, Debug)]
struct AdminIdentity(Arc<str>);

/// Admits a call only from a certificate whose identity is an admin.
#[derive(Clone)]
pub(crate) struct AdminAdmit {
    identities: Arc<[String]>,
}

impl AdminAdmit {
    pub(crate) fn new(identities: &[String]) -> Self {
        AdminAdmit {
            identities: identities.into(),
        }
    }
}

impl tonic::service::Interceptor for AdminAdmit {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let id = RequestId::of(&request);
        let certificate = request
            .extensions()
            .get::<Peer>()
            .map(|peer| Arc::clone(&peer.certificate))
            .ok_or_else(|| id.tag_status(status::unauthenticated("no client certificate")))?;
        if let Some(reason) = certificate.revoked() {
            return Err(id.tag_status(status::unauthenticated(&reason)));
        }
        let identity = certificate
            .identity
            .as_ref()
            .map_err(|reason| id.tag_status(status::unauthenticated(reason)))?;
        if !self.identities.iter().any(|admin| admin == identity) {
            tracing::warn!(
                request_id = id.as_str(),
                fingerprint = %certificate.fingerprint,
                identity = %identity,
                "admin call refused: not an admin"
            );
            return Err(id.tag_status(status::not_admin(identity)));
        }
        let identity = AdminIdentity(identity.as_str().into());
        request.extensions_mut().insert(identity);
        request.extensions_mut().insert(id);
        Ok(request)
    }
}

/// Reloads the agencies' CRLs (the server's TLS setup); the count of
/// revoked serial numbers.
pub(crate) type CrlReload = Arc<dyn Fn() -> Result<usize, super::error::ServeError> + Send + Sync>;

/// The Admin service.
pub(crate) struct AdminService {
    state: Arc<OnceLock<Arc<State>>>,
    crls: CrlReload,
    key: Arc<OnceLock<BackupKey>>,
    policy_path: PathBuf,
    data_dir: PathBuf,
    /// A sealed start's unsealing (D204); `None` for a server that started
    /// with its keys.
    unsealing: Option<Arc<Unsealing>>,
    /// Unseal calls not yet in the audit trail.
    unsealed_by: Mutex<Vec<Act>>,
}

impl AdminService {
    pub(crate) fn new(
        state: Arc<OnceLock<Arc<State>>>,
        crls: CrlReload,
        key: Arc<OnceLock<BackupKey>>,
        policy_path: PathBuf,
        data_dir: PathBuf,
        unsealing: Option<Arc<Unsealing>>,
    ) -> Self {
        AdminService {
            state,
            crls,
            key,
            policy_path,
            data_dir,
            unsealing,
            unsealed_by: Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> Result<&Arc<State>, Status> {
        self.state.get().ok_or_else(status::admin_sealed)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn admin_of<T>(request: &Request<T>) -> Result<Arc<str>, Status> {
    request
        .extensions()
        .get::<AdminIdentity>()
        .map(|admin| Arc::clone(&admin.0))
        .ok_or_else(|| status::unauthenticated("no admin identity"))
}

/// Records one admin action and waits for its commit.
async fn record(
    state: &State,
    admin: &str,
    id: &RequestId,
    note: String,
    outcome: Outcome,
) -> Result<(), Status> {
    let policy = state.policy();
    let caller = format!("admin:{admin}");
    let facts = BatchFacts {
        time_ms: now_ms(),
        caller: &caller,
        agent: "",
        batch_id: id.as_str().to_owned(),
        policy: &policy,
    };
    let mut header = facts.header(Operation::Admin);
    header.note = note;
    let append = facts.append(vec![Group::single(header, outcome, None)]);
    state
        .recorder
        .record(append)
        .await
        .map(|_| ())
        .map_err(|error| id.tag_status(status::audit(&error)))
}

/// Removes the plain snapshot when the backup ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_policy(
        &self,
        request: Request<ReloadPolicyRequest>,
    ) -> Result<Response<ReloadPolicyResponse>, Status> {
        let id = RequestId::of(&request);
        let admin = admin_of(&request)?;
        let state = self.state().map_err(|s| id.tag_status(s))?;
        match super::policy_file::reload(&self.state, &self.policy_path) {
            Ok(version) => {
                record(
                    state,
                    &admin,
                    &id,
                    format!("reload_policy: policy {version} in force"),
                    Outcome::Done,
                )
                .await?;
                tracing::info!(request_id = id.as_str(), admin = %admin, policy = %version, "admin: policy reloaded");
                let mut response = Response::new(ReloadPolicyResponse {
                    policy_version: version.to_string(),
                });
                id.tag(response.metadata_mut());
                Ok(response)
            }
            Err(error) => {
                record(
                    state,
                    &admin,
                    &id,
                    "reload_policy: refused, the policy in force stays".to_owned(),
                    Outcome::Refused,
                )
                .await?;
                Err(id.tag_status(status::reload_refused(&error)))
            }
        }
    }

    async fn reload_crls(
        &self,
        request: Request<ReloadCrlsRequest>,
    ) -> Result<Response<ReloadCrlsResponse>, Status> {
        let id = RequestId::of(&request);
        let admin = admin_of(&request)?;
        let state = self.state().map_err(|s| id.tag_status(s))?;
        match (self.crls)() {
            Ok(revoked) => {
                record(
                    state,
                    &admin,
                    &id,
                    format!("reload_crls: {revoked} serial numbers revoked"),
                    Outcome::Done,
                )
                .await?;
                tracing::info!(request_id = id.as_str(), admin = %admin, revoked, "admin: CRLs reloaded");
                let mut response = Response::new(ReloadCrlsResponse {
                    revoked: revoked as u64,
                });
                id.tag(response.metadata_mut());
                Ok(response)
            }
            Err(error) => {
                record(
                    state,
                    &admin,
                    &id,
                    "reload_crls: refused, the lists in force stay".to_owned(),
                    Outcome::Refused,
                )
                .await?;
                Err(id.tag_status(status::crl_reload_refused(&error)))
            }
        }
    }

    type BackupStream = ReceiverStream<Result<BackupChunk, Status>>;

    async fn backup(
        &self,
        request: Request<BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let id = RequestId::of(&request);
        let admin = admin_of(&request)?;
        let state = self.state().map_err(|s| id.tag_status(s))?;
        let key = self
            .key
            .get()
            .ok_or_else(|| id.tag_status(status::admin_sealed()))?;
        let mut salt = [0u8; 32];
        let mut name = [0u8; 8];
        SystemRandom::new()
            .fill(&mut salt)
            .and_then(|()| SystemRandom::new().fill(&mut name))
            .map_err(|_| id.tag_status(status::backup_failed("no random numbers")))?;
        let scratch = Scratch(
            self.data_dir
                .join(format!(".backup-{}.tmp", crate::hex::encode(&name))),
        );
        let (checkpoint, note) = state
            .recorder
            .snapshot(scratch.0.clone())
            .await
            .map_err(|error| id.tag_status(status::audit(&error)))?;
        let store_bytes = std::fs::metadata(&scratch.0)
            .map_err(|error| id.tag_status(status::backup_failed(&error.to_string())))?
            .len();
        let header = BackupHeader {
            format: 1,
            key_fingerprint: key.fingerprint.clone(),
            origin: state.recorder.verifier().name().to_owned(),
            checkpoint,
            checkpoint_note: note,
            store_bytes,
            created_ms: now_ms(),
            salt: crate::hex::encode(&salt),
        };
        let (mut sealer, start) = Sealer::start(&key.key, &header)
            .map_err(|error| id.tag_status(status::backup_failed(&error.to_string())))?;
        record(
            state,
            &admin,
            &id,
            format!("backup: checkpoint {checkpoint}, {store_bytes} bytes"),
            Outcome::Done,
        )
        .await?;
        tracing::info!(request_id = id.as_str(), admin = %admin, checkpoint, store_bytes, "admin: backup");
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let file = std::fs::File::open(&scratch.0)
            .map_err(|error| id.tag_status(status::backup_failed(&error.to_string())))?;
        let task_id = id.clone();
        tokio::task::spawn_blocking(move || {
            let _scratch = scratch;
            let mut file = std::io::BufReader::new(file);
            let send = |message: Result<BackupChunk, Status>| sender.blocking_send(message).is_ok();
            if !send(Ok(BackupChunk {
                data: start,
                checkpoint,
                done: false,
            })) {
                return;
            }
            let mut left = store_bytes;
            let mut buffer = Zeroizing::new(vec![0u8; CHUNK]);
            loop {
                let take = left.min(CHUNK as u64) as usize;
                if let Err(error) = std::io::Read::read_exact(&mut file, &mut buffer[..take]) {
                    let _ = send(Err(
                        task_id.tag_status(status::backup_failed(&error.to_string()))
                    ));
                    return;
                }
                left -= take as u64;
                let chunk = match sealer.chunk(&buffer[..take], left == 0) {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = send(Err(
                            task_id.tag_status(status::backup_failed(&error.to_string()))
                        ));
                        return;
                    }
                };
                if !send(Ok(BackupChunk {
                    data: chunk,
                    checkpoint: 0,
                    done: false,
                })) {
                    return;
                }
                if left == 0 {
                    break;
                }
            }
            let _ = send(Ok(BackupChunk {
                data: Vec::new(),
                checkpoint: 0,
                done: true,
            }));
        });
        let mut response = Response::new(ReceiverStream::new(receiver));
        id.tag(response.metadata_mut());
        Ok(response)
    }

    async fn get_status(
        &self,
        request: Request<AdminStatusRequest>,
    ) -> Result<Response<AdminStatusResponse>, Status> {
        let id = RequestId::of(&request);
        let admin = admin_of(&request)?;
        let state = self.state().map_err(|s| id.tag_status(s))?;
        record(state, &admin, &id, "get_status".to_owned(), Outcome::Done).await?;
        let log_size = state
            .recorder
            .read(|store| Ok(fugo_log::store::Store::size(store)))
            .await
            .map_err(|error| id.tag_status(status::audit(&error)))?;
        let mut response = Response::new(AdminStatusResponse {
            policy_version: state.policy().version().to_string(),
            log_size,
            checkpoint: state.recorder.checkpoint().map_or(0, |signed| signed.size),
            origin: state.recorder.verifier().name().to_owned(),
        });
        id.tag(response.metadata_mut());
        Ok(response)
    }

    async fn unseal(
        &self,
        request: Request<UnsealRequest>,
    ) -> Result<Response<UnsealResponse>, Status> {
        let id = RequestId::of(&request);
        let admin = admin_of(&request)?;
        let share = Zeroizing::new(request.into_inner().share);
        let answer = match &self.unsealing {
            Some(unsealing) => unsealing.supply(&share).await,
            None => Err("the server did not start sealed".to_owned()),
        };
        drop(share);
        let (note, outcome) = match &answer {
            Ok(answer) => (format!("unseal: {}", answer.line), Outcome::Done),
            Err(reason) => (format!("unseal: refused: {reason}"), Outcome::Refused),
        };
        tracing::info!(request_id = id.as_str(), admin = %admin, note = %note, "admin: unseal");
        // Recorded as soon as the trail can be written: at once on an open
        // server, else by the share that opens it (D204).
        let waits = wait_for_the_trail(
            &mut self.acts_waiting(),
            Act {
                admin,
                id: id.clone(),
                note,
                outcome,
            },
        );
        if !waits {
            tracing::warn!(
                request_id = id.as_str(),
                "admin: unseal: {MAX_WAITING_ACTS} calls already wait for the audit trail; \
                 this one is in the log only"
            );
        }
        if let Ok(state) = self.state() {
            self.record_unseals(state)
                .await
                .map_err(|s| id.tag_status(s))?;
        }
        let mut response = match answer {
            Ok(answer) => Response::new(UnsealResponse {
                outcome: answer.line,
                unsealed: answer.unsealed,
            }),
            Err(reason) => return Err(id.tag_status(status::unseal_refused(&reason))),
        };
        id.tag(response.metadata_mut());
        Ok(response)
    }
}

/// Unseal calls that may wait for a sealed server's audit trail: bounds
/// the memory a stream of refused shares can hold (far more than any
/// threshold needs).
const MAX_WAITING_ACTS: usize = 1_000;

/// Queues `act` for the trail unless [`MAX_WAITING_ACTS`] already wait;
/// whether it was queued.
fn wait_for_the_trail(waiting: &mut Vec<Act>, act: Act) -> bool {
    if waiting.len() >= MAX_WAITING_ACTS {
        return false;
    }
    waiting.push(act);
    true
}

/// One admin act waiting for the audit trail (a share supplied while the
/// server was sealed).
struct Act {
    admin: Arc<str>,
    id: RequestId,
    note: String,
    outcome: Outcome,
}

impl AdminService {
    /// Records the unseal acts waiting, in the order they came; those not
    /// recorded (the trail failed) wait for the next unseal call.
    async fn record_unseals(&self, state: &State) -> Result<(), Status> {
        let waiting = std::mem::take(&mut *self.acts_waiting());
        let mut acts = waiting.into_iter();
        while let Some(act) = acts.next() {
            if let Err(status) =
                record(state, &act.admin, &act.id, act.note.clone(), act.outcome).await
            {
                // Back in front of any that came meanwhile.
                let mut waiting = self.acts_waiting();
                let newer = std::mem::take(&mut *waiting);
                *waiting = std::iter::once(act).chain(acts).chain(newer).collect();
                return Err(status);
            }
        }
        Ok(())
    }

    fn acts_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Act>> {
        self.unsealed_by
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(n: usize) -> Act {
        Act {
            admin: Arc::from("custodian"),
            id: RequestId::new(),
            note: format!("unseal: refused: {n}"),
            outcome: Outcome::Refused,
        }
    }

    #[test]
    fn at_most_a_thousand_unseal_calls_wait_for_the_trail() {
        let mut waiting = Vec::new();
        for n in 0..MAX_WAITING_ACTS {
            assert!(wait_for_the_trail(&mut waiting, act(n)));
        }
        assert!(!wait_for_the_trail(&mut waiting, act(MAX_WAITING_ACTS)));
        assert_eq!(waiting.len(), MAX_WAITING_ACTS);
        assert_eq!(
            waiting[0].note, "unseal: refused: 0",
            "the first ones are kept"
        );
    }
}
