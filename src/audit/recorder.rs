//! The recorder: one thread that owns the audit store and commits every
//! record before its response may leave.
//!
//! Callers hand it an [`Append`] and wait. The thread takes every append
//! waiting at that moment and writes them in one durable commit (group
//! commit: one fsync for many calls), then answers each caller. Between
//! commits it signs a checkpoint when the tree has grown (at most a second
//! after the first unsigned record; a new log's first record at once),
//! builds the person index when idle and in small steps every 100 ms under
//! steady traffic, and purges record bodies past the retention period.
//!
//! **Fail closed, never hang.** A commit that fails answers its callers
//! with [`RecorderError::Unavailable`] (their responses are not sent), sets
//! health to not serving, drops the store and opens it again (redb needs
//! that after a failed write). Health turns back to serving when a commit
//! succeeds, or, with no call coming (a load balancer sends none to a
//! server that is not serving), when a probe commit as large as the largest
//! that failed succeeds: the thread tries one a second. A caller waits at
//! most [`Settings::commit_timeout`].
//! An append no caller waits for ([`Recorder::record_detached`]: a policy's
//! loading) is kept after a failed commit and written with the next one.
//! A write that fails between commits (an index step, a purge) only
//! reopens the store before the next commit (D255); a failed index step
//! waits 10 s before the next.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fugo_log::checkpoint::{Checkpoint, LogSigner, LogVerifier};
use fugo_log::store::{Append, Appended, Recovery, RedbStore, Store, StoreError};
use thiserror::Error;
use tokio::sync::{oneshot, watch};

use crate::histogram::Histogram;

/// The store's file inside the data directory.
pub const STORE_FILE: &str = "audit.redb";

/// Why a record could not be written or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// The store is held by another process (a running server, or a
    /// `fugo derive` recording into the same data directory).
    #[error(
        "the audit store {0} is in use by another fugo process; stop it or use another data directory"
    )]
    Locked(String),
    /// The store could not be opened.
    #[error("cannot open the audit store {path}: {source}")]
    Open {
        /// The store file.
        path: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Records cannot be written now (a failed write, a full disk); the
    /// request got nothing and may be retried.
    #[error("the audit trail cannot be written now ({0}); nothing was returned, retry later")]
    Unavailable(String),
    /// The recorder has stopped.
    #[error("the audit trail has stopped")]
    Stopped,
}

/// How the recorder runs (the `[audit]` section of fugo.toml).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Record bodies older than this may be purged (leaf hashes stay).
    pub retention: Duration,
    /// Refuse to write (fail closed) when less than this much disk space is
    /// free in the data directory.
    pub reserve_bytes: u64,
    /// Warn when less than this much disk space is free.
    pub warn_bytes: u64,
    /// Longest a caller waits for its commit before it gets UNAVAILABLE.
    pub commit_timeout: Duration,
    /// Longest the newest record waits for a signed checkpoint.
    pub checkpoint_interval: Duration,
    /// How often the recorder purges record bodies past `retention`.
    pub purge_every: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: Duration::from_secs(7 * 366 * 86_400),
            reserve_bytes: 256 << 20,
            warn_bytes: 2 << 30,
            commit_timeout: Duration::from_secs(2),
            checkpoint_interval: Duration::from_secs(1),
            purge_every: Duration::from_secs(3600),
        }
    }
}

/// A read run on the recorder's thread, between commits.
type ReadJob = Box<dyn FnOnce(Result<&mut RedbStore, RecorderError>) + Send>;

/// Who waits for an append: a caller (its answer), or no one.
type Reply = oneshot::Sender<Result<Appended, RecorderError>>;

/// Who waits for a snapshot: its checkpoint (size, signed note).
type SnapshotReply = oneshot::Sender<Result<(u64, String), RecorderError>>;

/// A job for the writer thread. The append is boxed: it is far larger
/// than the others, and the channel's slots are as large as the largest.
enum Job {
    Append(Box<Append>, Reply, Waiting),
    Read(ReadJob),
    Snapshot(PathBuf, SnapshotReply),
    /// Wakes the thread to close the store ([`Recorder::close`]).
    Close,
}

/// Whether a caller waits for an append's commit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// A caller waits, and answers its own request only on success.
    Caller,
    /// No one waits ([`Recorder::record_detached`]): a failed commit keeps
    /// it for the next one, since no request failing in its place says so.
    Detached,
}

/// The audit store's file size and the disk space of its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    /// Bytes of `audit.redb`.
    pub store_bytes: u64,
    /// Bytes free for fugo in the data directory (`None` if unknown).
    pub free_bytes: Option<u64>,
    /// Below this much free space writes stop (fail closed).
    pub reserve_bytes: u64,
    /// Below this much free space a warning is logged.
    pub warn_bytes: u64,
}

/// A signed checkpoint as the service hands it out, encoded once when
/// signed (not once per response).
#[derive(Debug)]
pub struct Signed {
    /// The C2SP signed note.
    pub note: Arc<str>,
    /// The tree size it signs.
    pub size: u64,
    /// Base64 of the note: the `x-fugo-checkpoint` metadata value.
    pub header: Arc<str>,
}

impl Signed {
    fn new(size: u64, note: String) -> Arc<Signed> {
        use base64::Engine;
        let header = base64::engine::general_purpose::STANDARD.encode(note.as_bytes());
        Arc::new(Signed {
            note: Arc::from(note),
            size,
            header: Arc::from(header),
        })
    }
}

/// What the recorder shares with its callers.
struct Shared {
    checkpoint: RwLock<Option<Arc<Signed>>>,
    verifier: LogVerifier,
    health: watch::Sender<bool>,
    /// Commits that failed since the recorder started (for metrics).
    commit_failures: AtomicU64,
    /// How long each commit took (write and fsync), for metrics.
    commit_latency: Histogram,
    /// Jobs (appends and reads) handed to the thread and not yet taken.
    queued: AtomicU64,
    /// The store's file and the disk-space settings (`None` for the
    /// benchmark's discarding recorder).
    disk: Option<(PathBuf, u64, u64)>,
    /// Set by [`Recorder::close`]: no job is taken any more, and the thread
    /// closes the store once the queued ones are done.
    closing: AtomicBool,
}

/// The handle callers use; cheap to share behind an `Arc`.
pub struct Recorder {
    jobs: Option<mpsc::SyncSender<Job>>,
    shared: Arc<Shared>,
    timeout: Duration,
    thread: Option<JoinHandle<()>>,
    /// Turns true once the thread has ended and the store file is closed.
    closed: watch::Receiver<bool>,
    /// Benchmarks only: appends are dropped, not written.
    discard: bool,
}

/// Appends waiting at once that one commit takes (the rest wait for the
/// next): bounds a commit's size and its callers' wait.
const MAX_APPENDS_PER_COMMIT: usize = 256;
/// Calls that may wait for the recorder at once; more get UNAVAILABLE.
const QUEUE: usize = 4096;
/// How often the thread looks after checkpoints, the index and the store
/// when no call comes.
const TICK: Duration = Duration::from_millis(200);
/// Records the person index takes per step when the thread is idle: one
/// step holds the store's write lock, so it must stay well inside a
/// commit's timeout even in a debug build (200,000 took over 2 s there);
/// an idle thread takes another step every tick.
const INDEX_STEP: usize = 20_000;
/// Records it takes per step under steady traffic: small, because every
/// commit waiting meanwhile waits for it. 20,000 a second in one step made
/// the soak's valid calls' p99 66 ms (p50 1 ms); the same rate in steps of
/// 2,000 every 100 ms, 22 ms (D146).
const BUSY_INDEX_STEP: usize = 2_000;
/// Longest the person index waits for an idle moment before it takes a
/// step anyway (disclosure trails the log by about this much, while the
/// records come no faster than `BUSY_INDEX_STEP` per `INDEX_LAG`).
const INDEX_LAG: Duration = Duration::from_millis(100);
/// How long the person index waits after a failed step (a full disk, a
/// file that cannot grow) before it tries again: each failure costs a
/// reopen of the store, and a step retried every tick would keep the
/// store reopening while calls wait to commit.
const INDEX_RETRY: Duration = Duration::from_secs(10);
/// How often the thread probes the store while not healthy.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The low-disk-space warning repeats at most this often (D103).
const SPACE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Bounds of a probe's size (see [`commit_bytes`]).
const MIN_PROBE: usize = 64 << 10;
const MAX_PROBE: usize = 64 << 20;

impl Recorder {
    /// Opens (or creates) the store in `data_dir` and starts the thread.
    /// Fails at once if another process holds the store.
    pub fn open(
        data_dir: &Path,
        signer: LogSigner,
        settings: Settings,
    ) -> Result<Recorder, RecorderError> {
        let path = data_dir.join(STORE_FILE);
        let mut store = open_store(&path)?;
        let signer = restored_origin(&mut store, signer).map_err(|source| RecorderError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let verifier = signer.verifier();
        let checkpoint = store
            .set_verifier(&verifier.to_string())
            .and_then(|()| store.latest_checkpoint())
            .map_err(|source| RecorderError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let last_signed = checkpoint.as_ref().map_or(0, |(size, _)| *size);
        let (health, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            checkpoint: RwLock::new(checkpoint.map(|(size, note)| Signed::new(size, note))),
            verifier,
            health,
            commit_failures: AtomicU64::new(0),
            commit_latency: Histogram::default(),
            queued: AtomicU64::new(0),
            disk: Some((path.clone(), settings.reserve_bytes, settings.warn_bytes)),
            closing: AtomicBool::new(false),
        });
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let timeout = settings.commit_timeout;
        let mut committer = Committer {
            path,
            store: Some(store),
            signer,
            shared: Arc::clone(&shared),
            settings,
            last_signed,
            unsigned_since: None,
            last_open_attempt: Instant::now(),
            last_purge: None,
            last_index: Instant::now(),
            index_failed: None,
            retry: Vec::new(),
            written_from: 0,
            last_space_check: None,
            last_space_warning: None,
            probe_bytes: None,
            last_probe: None,
            // Tallies left from before a restart are rolled on the first
            // idle moment.
            tallies_until: Some(0),
        };
        let (closing, closed) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("fugo-audit".into())
            .spawn(move || {
                committer.run(&queue);
                // The store (and its file lock) goes with the committer.
                drop(committer);
                let _ = closing.send(true);
            })
            .map_err(|error| RecorderError::Unavailable(format!("cannot start: {error}")))?;
        Ok(Recorder {
            jobs: Some(jobs),
            shared,
            timeout,
            thread: Some(thread),
            closed,
            discard: false,
        })
    }

    /// A recorder that writes nothing and answers every append at once:
    /// the "auditing off" side of the service benchmark, so the cost of
    /// the audit trail is measured in the same run. No configuration
    /// reaches it; only `service::start_unaudited_for_benchmarks` does.
    #[doc(hidden)]
    pub fn discarding_for_benchmarks(signer: &LogSigner) -> Recorder {
        let (health, _) = watch::channel(true);
        Recorder {
            jobs: None,
            shared: Arc::new(Shared {
                checkpoint: RwLock::new(None),
                verifier: signer.verifier(),
                health,
                commit_failures: AtomicU64::new(0),
                commit_latency: Histogram::default(),
                queued: AtomicU64::new(0),
                disk: None,
                closing: AtomicBool::new(false),
            }),
            timeout: Duration::from_secs(1),
            thread: None,
            closed: watch::channel(true).1,
            discard: true,
        }
    }

    /// Turns true once the recorder is dropped, its queued commits are
    /// done and the store file is closed (so another process, or a
    /// restarted server, can open it). A server's `stop` waits for it.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.clone()
    }

    /// Writes `append` durably; returns once it is committed (fsync'd).
    pub async fn record(&self, append: Append) -> Result<Appended, RecorderError> {
        if self.discard {
            return Ok(discarded(&append));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Append(Box::new(append), reply, Waiting::Caller))?;
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RecorderError::Stopped),
            Err(_) => Err(RecorderError::Unavailable(format!(
                "no commit within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// [`record`](Self::record) from a thread outside the async runtime
    /// (the CLI).
    pub fn record_blocking(&self, append: Append) -> Result<Appended, RecorderError> {
        if self.discard {
            return Ok(discarded(&append));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Append(Box::new(append), reply, Waiting::Caller))?;
        answer.blocking_recv().map_err(|_| RecorderError::Stopped)?
    }

    /// Queues `append` without waiting for it (a policy reload, from a
    /// thread that must not block). If its commit fails, it is written with
    /// the next commit that succeeds (unless the failed one reached the
    /// disk after all); a failure to queue it is logged.
    pub fn record_detached(&self, append: Append) {
        let (reply, _) = oneshot::channel();
        if let Err(error) = self.submit(Job::Append(Box::new(append), reply, Waiting::Detached)) {
            tracing::error!(error = %error, "a record could not be queued");
        }
    }

    /// Copies the store file to `to` (a new file, mode 0600) between two
    /// commits, after signing a checkpoint of everything recorded: a
    /// consistent snapshot that holds exactly the records the returned
    /// checkpoint (size, signed note) covers. Commits wait meanwhile.
    pub async fn snapshot(&self, to: PathBuf) -> Result<(u64, String), RecorderError> {
        if self.discard {
            return Err(RecorderError::Unavailable("no audit store".into()));
        }
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Snapshot(to, reply))?;
        answer.await.map_err(|_| RecorderError::Stopped)?
    }

    /// Runs `read` on the store between commits and returns its answer.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut RedbStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RecorderError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Read(Box::new(move |store| {
            let result = store.and_then(|store| {
                read(store).map_err(|error| RecorderError::Unavailable(error.to_string()))
            });
            let _ = reply.send(result);
        })))?;
        match tokio::time::timeout(self.timeout * 5, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RecorderError::Stopped),
            Err(_) => Err(RecorderError::Unavailable(
                "the store did not answer".into(),
            )),
        }
    }

    /// [`read`](Self::read) from a thread outside the async runtime (the
    /// CLI).
    pub fn read_blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut RedbStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, RecorderError> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Read(Box::new(move |store| {
            let result = store.and_then(|store| {
                read(store).map_err(|error| RecorderError::Unavailable(error.to_string()))
            });
            let _ = reply.send(result);
        })))?;
        answer.blocking_recv().map_err(|_| RecorderError::Stopped)?
    }

    /// Closes the store although callers still hold the recorder: jobs
    /// already queued are done (appends committed, reads answered), a
    /// last checkpoint is signed, the store file is closed, and every job
    /// after this fails with [`RecorderError::Stopped`]. Returns at once;
    /// [`closed`](Self::closed) says when the file is closed.
    ///
    /// A server's stop calls it: a process that exits while the thread
    /// commits can leave a torn last commit, which redb rolls back at the
    /// next start but `fugo audit verify` refuses (D202), and the last
    /// holder of the recorder may be a thread that never lets go.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        if let Some(jobs) = &self.jobs {
            self.shared.queued.fetch_add(1, Ordering::Relaxed);
            if jobs.try_send(Job::Close).is_err() {
                // A full queue wakes the thread anyway; it sees the flag.
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn submit(&self, job: Job) -> Result<(), RecorderError> {
        let jobs = self.jobs.as_ref().ok_or(RecorderError::Stopped)?;
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(RecorderError::Stopped);
        }
        // Counted before it is sent, so the thread never takes a job
        // that is not counted yet.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        jobs.try_send(job).map_err(|error| {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            match error {
                TrySendError::Full(_) => {
                    RecorderError::Unavailable("too many calls waiting".into())
                }
                TrySendError::Disconnected(_) => RecorderError::Stopped,
            }
        })
    }

    /// Whether appends are written (false only for the benchmark's
    /// discarding recorder, so "auditing off" does no audit work).
    pub fn writes(&self) -> bool {
        !self.discard
    }

    /// How many commits failed since the recorder started (each failed
    /// its calls with UNAVAILABLE).
    pub fn commit_failures(&self) -> u64 {
        self.shared.commit_failures.load(Ordering::Relaxed)
    }

    /// How long commits took (write and fsync of each group commit).
    pub(crate) fn commit_latency(&self) -> &Histogram {
        &self.shared.commit_latency
    }

    /// Appends and reads waiting for the recorder's thread now.
    pub fn queue_depth(&self) -> u64 {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// The store's size and the disk space around it, read now (`None`
    /// for a recorder that writes nothing).
    pub fn disk(&self) -> Option<Disk> {
        let (path, reserve_bytes, warn_bytes) = self.shared.disk.as_ref()?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Some(Disk {
            store_bytes: std::fs::metadata(path).map_or(0, |meta| meta.len()),
            free_bytes: fs4::available_space(dir).ok(),
            reserve_bytes: *reserve_bytes,
            warn_bytes: *warn_bytes,
        })
    }

    /// Whether records can be written now (health).
    pub fn serving(&self) -> bool {
        *self.shared.health.borrow()
    }

    /// The latest signed checkpoint, if any.
    pub fn checkpoint(&self) -> Option<Arc<Signed>> {
        self.shared
            .checkpoint
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The log's verifier key (its public key, as text).
    pub fn verifier(&self) -> &LogVerifier {
        &self.shared.verifier
    }

    /// Whether records can be written now; changes as writes fail and
    /// recover (the server's health follows it).
    pub fn health(&self) -> watch::Receiver<bool> {
        self.shared.health.subscribe()
    }
}

impl Drop for Recorder {
    /// Lets the thread finish the commits already queued, then waits for it.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The signer of a store restored from backup (`fugo admin restore`): the
/// same key under the origin the restore started, which the store keeps
/// as its log key, when that is the configured origin plus a
/// `/restored-…` suffix. Any other store keeps the configured signer.
fn restored_origin(store: &mut RedbStore, signer: LogSigner) -> Result<LogSigner, StoreError> {
    let Some(text) = store.verifier()? else {
        return Ok(signer);
    };
    let Ok(kept) = LogVerifier::parse(&text) else {
        return Ok(signer);
    };
    let configured = signer.verifier();
    let base = configured.name();
    let restored = kept
        .name()
        .strip_prefix(base)
        .is_some_and(|rest| rest.starts_with("/restored-"));
    if restored
        && kept.same_key(&configured)
        && let Ok(renamed) = signer.renamed(kept.name())
    {
        tracing::info!(
            origin = kept.name(),
            "the audit log continues under its restored origin"
        );
        return Ok(renamed);
    }
    Ok(signer)
}

fn open_store(path: &Path) -> Result<RedbStore, RecorderError> {
    let store = RedbStore::open(path).map_err(|source| match source {
        StoreError::Locked { .. } => RecorderError::Locked(path.display().to_string()),
        source => RecorderError::Open {
            path: path.display().to_string(),
            source,
        },
    })?;
    match store.recovery() {
        Recovery::Clean => {}
        Recovery::Rebuilt => tracing::info!(
            size = store.size(),
            "the audit store was not closed (the last run was killed, or a write failed); \
             every commit is there"
        ),
        Recovery::RolledBack => tracing::warn!(
            size = store.size(),
            "the audit store's last commit was cut off during its write and was rolled back: \
             it was never acknowledged (a commit is answered only after its fsync). If no run \
             ended and no write failed then, the file was changed: verify it against a \
             checkpoint a client holds"
        ),
    }
    Ok(store)
}

/// What a discarding recorder answers: every group placed nowhere.
fn discarded(append: &Append) -> Appended {
    Appended {
        groups: append
            .groups
            .iter()
            .map(|_| fugo_log::store::AppendedGroup {
                first_seq: 0,
                repeats: Vec::new(),
            })
            .collect(),
        tallied: 0,
        size: 0,
        root: [0; 32],
    }
}

/// Adds `append` to the commit being gathered.
fn merge(all: &mut Append, mut append: Append) {
    // Prepared groups stay paired with their groups: prepare the rest of
    // both (here, on the committing thread) when one side was not.
    if append.prepared.len() != append.groups.len() || all.prepared.len() != all.groups.len() {
        all.prepare();
        append.prepare();
    }
    all.prepared.extend(append.prepared);
    all.groups.extend(append.groups);
    all.refusals.extend(append.refusals);
    all.policies.extend(append.policies);
    all.usage.extend(append.usage);
    all.persons.extend(append.persons);
    // The store only raises marks, and keeps the first binding and key of
    // each: appended in order, so the earlier append's come first. Taken
    // apart field by field, so a new kind of mark cannot be left out.
    let fugo_log::store::Marks {
        epochs,
        destroyed_generations,
        agencies,
        bindings,
        generation_keys,
    } = append.marks;
    all.marks.epochs.extend(epochs);
    all.marks
        .destroyed_generations
        .extend(destroyed_generations);
    all.marks.agencies.extend(agencies);
    all.marks.bindings.extend(bindings);
    all.marks.generation_keys.extend(generation_keys);
    all.now_ms = all.now_ms.max(append.now_ms);
}

/// The first redemption's epoch if entry `entry` of group `group` of an
/// append was a repeat.
pub fn repeat_of(appended: &Appended, group: usize, entry: usize) -> Option<u32> {
    appended
        .groups
        .get(group)?
        .repeats
        .iter()
        .find(|repeat| repeat.entry == entry)
        .map(|repeat| repeat.first.epoch)
}

/// A generous estimate of what a commit of `append` writes: its records,
/// their tree tiles and index entries, and the pages they touch. The probe
/// after a failure writes this much (within [`MIN_PROBE`]..[`MAX_PROBE`]),
/// so a store that can take small commits but not the one that failed
/// does not say it is serving.
fn commit_bytes(append: &Append) -> usize {
    let entries: usize = append.groups.iter().map(|group| group.entries.len()).sum();
    let policies: usize = append.policies.iter().map(|(_, text)| text.len()).sum();
    entries
        .saturating_mul(128)
        .saturating_add(append.groups.len().saturating_mul(4096))
        .saturating_add(policies)
        .clamp(MIN_PROBE, MAX_PROBE)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The recorder's thread state.
struct Committer {
    path: PathBuf,
    /// `None` after a failed write, until it is opened again.
    store: Option<RedbStore>,
    signer: LogSigner,
    shared: Arc<Shared>,
    settings: Settings,
    last_signed: u64,
    unsigned_since: Option<Instant>,
    last_open_attempt: Instant,
    last_purge: Option<Instant>,
    /// When the person index last took a step.
    last_index: Instant,
    /// When a step of the person index last failed, until one succeeds.
    index_failed: Option<Instant>,
    /// Detached appends whose commit failed, for the next commit.
    retry: Vec<Append>,
    /// The store's size before the last commit tried.
    written_from: u64,
    last_space_check: Option<(Instant, bool)>,
    /// When the low-space warning was last logged.
    last_space_warning: Option<Instant>,
    /// While not healthy: the size of the largest commit that failed, which
    /// a probe must be able to write before health says serving again.
    probe_bytes: Option<usize>,
    last_probe: Option<Instant>,
    /// The latest minute whose refusal tallies may still wait to become a
    /// record (the store turns a tally into a record at the first commit
    /// in a later minute; an idle server makes that commit itself).
    tallies_until: Option<u64>,
}

impl Committer {
    fn run(&mut self, queue: &mpsc::Receiver<Job>) {
        loop {
            let first = match queue.recv_timeout(TICK) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let idle = first.is_none();
            let jobs = self.take_queued(first, queue);
            self.serve(jobs);
            if self.shared.closing.load(Ordering::SeqCst) {
                self.finish_queued(queue);
                break;
            }
            self.look_after(idle);
        }
        // Shutting down: sign what was recorded, so the last records are
        // covered by a checkpoint.
        self.sign(true);
    }

    /// Closing: does the jobs queued before [`Recorder::close`] (none is
    /// queued after it: `submit` refuses), so no caller that got in is
    /// left without an answer.
    fn finish_queued(&mut self, queue: &mpsc::Receiver<Job>) {
        loop {
            let jobs = self.take_queued(None, queue);
            if jobs.is_empty() {
                return;
            }
            self.serve(jobs);
        }
    }

    /// `first` and the jobs waiting behind it, up to one commit's worth;
    /// no longer counted as queued.
    fn take_queued(&self, first: Option<Job>, queue: &mpsc::Receiver<Job>) -> Vec<Job> {
        let jobs: Vec<Job> = first
            .into_iter()
            .chain(std::iter::from_fn(|| queue.try_recv().ok()))
            .take(MAX_APPENDS_PER_COMMIT)
            .collect();
        self.shared
            .queued
            .fetch_sub(jobs.len() as u64, Ordering::Relaxed);
        jobs
    }

    /// One commit for every append in `jobs`, then the reads.
    fn serve(&mut self, jobs: Vec<Job>) {
        let mut appends = Vec::new();
        let mut reads = Vec::new();
        let mut snapshots = Vec::new();
        for job in jobs {
            match job {
                Job::Append(append, reply, waiting) => appends.push((*append, reply, waiting)),
                Job::Read(read) => reads.push(read),
                Job::Snapshot(to, reply) => snapshots.push((to, reply)),
                // The flag it goes with is what the thread acts on.
                Job::Close => {}
            }
        }
        if !appends.is_empty() {
            self.commit(appends);
        }
        for read in reads {
            match self.store() {
                Ok(store) => read(Ok(store)),
                Err(error) => read(Err(error)),
            }
        }
        for (to, reply) in snapshots {
            let _ = reply.send(self.snapshot(&to));
        }
    }

    /// See [`Recorder::snapshot`]: signs what is unsigned, then copies the
    /// file while no commit runs (redb's file is consistent between
    /// commits: each is durable before `append` returns).
    fn snapshot(&mut self, to: &Path) -> Result<(u64, String), RecorderError> {
        self.sign(true);
        let store = self.store()?;
        let size = store.size();
        let checkpoint = store
            .latest_checkpoint()
            .map_err(|error| RecorderError::Unavailable(error.to_string()))?;
        let Some((signed, note)) = checkpoint.filter(|(signed, _)| *signed == size) else {
            return Err(RecorderError::Unavailable(format!(
                "records up to {size} are not covered by a signed checkpoint; retry"
            )));
        };
        let from = store.path().to_path_buf();
        // The copy must not eat the reserve the audit trail writes into.
        let bytes = std::fs::metadata(&from).map_or(0, |meta| meta.len());
        let reserve = self.settings.reserve_bytes;
        if let Ok(free) = fs4::available_space(to.parent().unwrap_or(Path::new(".")))
            && free < bytes.saturating_add(reserve)
        {
            return Err(RecorderError::Unavailable(format!(
                "not enough free disk space for a snapshot of {bytes} bytes above the \
                 {reserve}-byte reserve ({free} bytes free)"
            )));
        }
        let copied = (|| -> std::io::Result<()> {
            let mut source = std::fs::File::open(&from)?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut target = options.open(to)?;
            std::io::copy(&mut source, &mut target)?;
            target.sync_all()
        })();
        copied.map_err(|error| {
            let _ = std::fs::remove_file(to);
            RecorderError::Unavailable(format!(
                "cannot copy the store to {}: {error}",
                to.display()
            ))
        })?;
        Ok((signed, note))
    }

    fn commit(&mut self, appends: Vec<(Append, Reply, Waiting)>) {
        let mut all = Append::default();
        // Detached appends of failed commits go first, so a policy's
        // loading precedes the records of calls decided under it.
        let mut detached = std::mem::take(&mut self.retry);
        let retried: usize = detached.iter().map(|append| append.groups.len()).sum();
        for append in &detached {
            merge(&mut all, append.clone());
        }
        let mut callers = Vec::with_capacity(appends.len());
        for (append, reply, waiting) in appends {
            if waiting == Waiting::Detached {
                detached.push(append.clone());
            }
            callers.push((append.groups.len(), reply));
            merge(&mut all, append);
        }
        let bytes = commit_bytes(&all);
        let tallied = all.refusals.iter().map(|refusal| refusal.minute).max();
        let result = self.space().and_then(|()| {
            let store = self.store()?;
            let before = store.size();
            let started = Instant::now();
            let result = store.append(all);
            self.shared.commit_latency.observe(started.elapsed());
            let result = result.map_err(|error| {
                tracing::error!(error = %error, "audit commit failed; affected calls get UNAVAILABLE");
                RecorderError::Unavailable(error.to_string())
            });
            self.written_from = before;
            result
        });
        if result.is_err() && !detached.is_empty() {
            tracing::warn!(
                appends = detached.len(),
                "records no caller waits for (a policy's loading) will be written with the next commit"
            );
            self.retry = detached;
        }
        match result {
            Ok(appended) => {
                if let Some(minute) = tallied {
                    self.tallies_until = Some(self.tallies_until.unwrap_or(0).max(minute));
                }
                self.probe_bytes = None;
                self.set_health(true);
                if self.unsigned_since.is_none() {
                    self.unsigned_since = Some(Instant::now());
                }
                // A new log is signed at once, before its first answers
                // leave, so every response can name a checkpoint.
                if self.last_signed == 0 {
                    self.sign(true);
                }
                let mut groups = appended.groups.into_iter();
                groups.by_ref().take(retried).for_each(drop);
                for (count, reply) in callers {
                    let _ = reply.send(Ok(Appended {
                        groups: groups.by_ref().take(count).collect(),
                        ..Appended {
                            groups: Vec::new(),
                            tallied: appended.tallied,
                            size: appended.size,
                            root: appended.root,
                        }
                    }));
                }
            }
            Err(error) => {
                self.shared.commit_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(error, RecorderError::Unavailable(_)) {
                    // redb must be opened again after a failed write.
                    self.store = None;
                }
                self.unhealthy(bytes);
                for (_, reply) in callers {
                    let _ = reply.send(Err(RecorderError::Unavailable(error.to_string())));
                }
            }
        }
    }

    /// The open store, opening it again after a failure (at most twice a
    /// second). A handle whose write failed in a step between commits (the
    /// person index, a purge) is opened again here too, so the next commit
    /// is tried on a fresh handle instead of refused untried.
    fn store(&mut self) -> Result<&mut RedbStore, RecorderError> {
        if self.store.as_ref().is_some_and(RedbStore::needs_reopen) {
            self.store = None;
        }
        if self.store.is_none() {
            if self.last_open_attempt.elapsed() < Duration::from_millis(500) {
                return Err(RecorderError::Unavailable(
                    "the store is being reopened".into(),
                ));
            }
            self.last_open_attempt = Instant::now();
            let store = open_store(&self.path)?;
            tracing::warn!("audit store reopened after a failure");
            if !self.retry.is_empty() && store.size() != self.written_from {
                // The failed commit reached the disk after all.
                tracing::warn!("the failed commit was written; its records are not repeated");
                self.retry.clear();
            }
            self.store = Some(store);
        }
        self.store
            .as_mut()
            .ok_or_else(|| RecorderError::Unavailable("the store is closed".into()))
    }

    /// Refuses to write below the disk-space reserve; warns below the
    /// warning level (checked at most once a second).
    fn space(&mut self) -> Result<(), RecorderError> {
        if let Some((checked, ok)) = self.last_space_check
            && checked.elapsed() < Duration::from_secs(1)
        {
            return if ok {
                Ok(())
            } else {
                Err(RecorderError::Unavailable(
                    "disk space reserve reached".into(),
                ))
            };
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let ok = match fs4::available_space(dir) {
            Ok(free) if free < self.settings.reserve_bytes => {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = self.settings.reserve_bytes,
                    "disk space reserve reached: the audit trail refuses writes (fail closed)"
                );
                false
            }
            Ok(free) => {
                // Once a minute at most: the check runs every second.
                if free < self.settings.warn_bytes
                    && self
                        .last_space_warning
                        .is_none_or(|last| last.elapsed() >= SPACE_WARNING_EVERY)
                {
                    self.last_space_warning = Some(Instant::now());
                    tracing::warn!(
                        free_bytes = free,
                        reserve_bytes = self.settings.reserve_bytes,
                        "disk space for the audit trail is running low"
                    );
                }
                true
            }
            // Unknown free space is no reason to stop; writes will say.
            Err(_) => true,
        };
        self.last_space_check = Some((Instant::now(), ok));
        if ok {
            Ok(())
        } else {
            Err(RecorderError::Unavailable(
                "disk space reserve reached".into(),
            ))
        }
    }

    /// Health says not serving until a commit, or a probe of `bytes`,
    /// succeeds.
    fn unhealthy(&mut self, bytes: usize) {
        self.probe_bytes = Some(self.probe_bytes.map_or(bytes, |before| before.max(bytes)));
        self.set_health(false);
    }

    /// While not healthy, at most once per [`PROBE_EVERY`]: writes and
    /// removes as many bytes as the largest failed commit; if that works,
    /// health says serving again without waiting for a call.
    fn probe(&mut self) {
        let Some(bytes) = self.probe_bytes else {
            return;
        };
        if self
            .last_probe
            .is_some_and(|last| last.elapsed() < PROBE_EVERY)
        {
            return;
        }
        self.last_probe = Some(Instant::now());
        if self.space().is_err() {
            return;
        }
        let Ok(store) = self.store() else {
            return;
        };
        match store.probe(bytes) {
            Ok(()) => {
                self.probe_bytes = None;
                self.set_health(true);
                tracing::info!(bytes, "the audit store can be written again: serving");
            }
            Err(error) => {
                tracing::debug!(error = %error, bytes, "audit store probe failed: still not serving");
                // redb must be opened again after a failed write.
                self.store = None;
            }
        }
    }

    fn set_health(&self, serving: bool) {
        self.shared.health.send_if_modified(|now| {
            let changed = *now != serving;
            *now = serving;
            changed
        });
    }

    /// Between commits: reopen a failed store, probe it while not healthy,
    /// sign, index, purge.
    fn look_after(&mut self, idle: bool) {
        // A failed store is opened again here; the next commit or probe
        // decides health.
        let _ = self.store();
        self.probe();
        self.roll_tallies();
        self.sign(false);
        // The index is built when idle, and under steady traffic (which
        // never leaves the thread idle) every `INDEX_LAG`, in smaller
        // steps so the commits waiting meanwhile stay well inside their
        // timeout.
        let step = if self
            .index_failed
            .is_some_and(|failed| failed.elapsed() < INDEX_RETRY)
        {
            None
        } else if idle {
            Some(INDEX_STEP)
        } else if self.last_index.elapsed() >= INDEX_LAG {
            Some(BUSY_INDEX_STEP)
        } else {
            None
        };
        if let Some(step) = step
            && let Ok(store) = self.store()
        {
            if store.indexed() < store.size() {
                match store.index_people(step) {
                    Ok(_) => self.index_failed = None,
                    Err(error) => {
                        tracing::warn!(
                            error = %error,
                            retry_in_s = INDEX_RETRY.as_secs(),
                            "building the person index failed; will retry"
                        );
                        self.index_failed = Some(Instant::now());
                    }
                }
            }
            self.last_index = Instant::now();
        }
        self.purge();
    }

    /// Once the minute of the latest refusal tallies is over, an empty
    /// commit turns them into `Refusals` records (the store rolls every
    /// tally of an earlier minute in a commit): junk traffic is in the log
    /// within a minute even if no other call follows it.
    fn roll_tallies(&mut self) {
        let Some(until) = self.tallies_until else {
            return;
        };
        let now = now_ms();
        if now / 60_000 <= until {
            return;
        }
        let Ok(store) = self.store() else {
            return;
        };
        let before = store.size();
        match store.append(Append {
            now_ms: now,
            ..Append::default()
        }) {
            Ok(appended) => {
                self.tallies_until = None;
                if appended.size > before && self.unsigned_since.is_none() {
                    self.unsigned_since = Some(Instant::now());
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "turning refusal tallies into records failed; will retry");
                self.store = None;
            }
        }
    }

    /// Signs a checkpoint of the whole tree if records are unsigned and
    /// either the interval has passed since the first of them or `now`.
    fn sign(&mut self, now: bool) {
        let Some(since) = self.unsigned_since else {
            return;
        };
        if !now && since.elapsed() < self.settings.checkpoint_interval {
            return;
        }
        let name = self.signer.verifier().name().to_owned();
        let last_signed = self.last_signed;
        let Ok(store) = self.store() else {
            return;
        };
        let size = store.size();
        if size <= last_signed {
            self.unsigned_since = None;
            return;
        }
        let checkpoint = Checkpoint {
            origin: name,
            size,
            root: store.root(),
        };
        let note = match self.signer.sign(&checkpoint) {
            Ok(note) => note,
            Err(error) => {
                tracing::error!(error = %error, "signing a checkpoint failed");
                return;
            }
        };
        let stored = match self.store() {
            Ok(store) => store.add_checkpoint(size, &note),
            Err(_) => return,
        };
        match stored {
            Ok(()) => {
                self.last_signed = size;
                self.unsigned_since = None;
                *self
                    .shared
                    .checkpoint
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Some(Signed::new(size, note));
            }
            Err(error) => {
                tracing::error!(error = %error, "storing a checkpoint failed; will retry");
                self.store = None;
                self.unhealthy(MIN_PROBE);
            }
        }
    }

    /// Once an hour: deletes record bodies past the retention period.
    fn purge(&mut self) {
        if self
            .last_purge
            .is_some_and(|last| last.elapsed() < self.settings.purge_every)
        {
            return;
        }
        self.last_purge = Some(Instant::now());
        let cut = now_ms().saturating_sub(self.settings.retention.as_millis() as u64);
        if let Ok(store) = self.store() {
            match store.purge_before(cut) {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "record bodies past retention purged"),
                Err(error) => tracing::warn!(error = %error, "purge failed; will retry"),
            }
        }
    }
}
