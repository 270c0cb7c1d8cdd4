//! Unsealing: a server started without its master key collects shares
//! until it has the threshold, rebuilds the key, checks its fingerprint and
//! opens. Shares arrive one per connection on a Unix-domain socket in the
//! data directory (`unseal.sock`, mode 0600, the peer's uid checked with
//! SO_PEERCRED), sent by `fugo unseal`, one custodian at a time.
//!
//! The protocol is one exchange of text per connection: the client sends
//! the share file's text (at most [`MAX_SHARE_FILE`] bytes) and closes its
//! writing side; the server answers one line starting with `accepted:`,
//! `unsealed:` or `refused:` and closes.
//!
//! Shares may also come over the admin plane (`Admin.Unseal`, D204): both
//! ways feed one [`Unsealing`], which takes one share at a time.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::share::{MAX_SHARE_FILE, ShareError, ShareFile, SplitId};
use crate::generation::Generation;
use crate::keys::{Fingerprint, KeyHierarchy, MasterKey};
use crate::shamir::SecretShare;

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "unseal.sock";

/// How long one custodian's connection may take to send its share.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where `fugo unseal` finds a sealed server of `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// How far unsealing one generation's key has come: read by every call
/// answered while sealed ("sealed: 1 of 3 shares supplied").
#[derive(Debug)]
pub struct SealProgress {
    generation: Generation,
    threshold: u8,
    supplied: AtomicU8,
    rebuilt: AtomicBool,
}

impl SealProgress {
    /// Generation 1's key, no share supplied yet.
    pub fn new(threshold: u8) -> Self {
        Self::of_generation(Generation::FIRST, threshold)
    }

    /// The key of `generation`, no share supplied yet.
    pub fn of_generation(generation: Generation, threshold: u8) -> Self {
        SealProgress {
            generation,
            threshold,
            supplied: AtomicU8::new(0),
            rebuilt: AtomicBool::new(false),
        }
    }

    /// The generation whose key this counts shares of.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Shares supplied and accepted so far.
    pub fn supplied(&self) -> u8 {
        self.supplied.load(Ordering::Relaxed)
    }

    /// Shares needed.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// Whether this generation's key is rebuilt (and waits for the other
    /// sealed generations).
    pub fn is_rebuilt(&self) -> bool {
        self.rebuilt.load(Ordering::Relaxed)
    }

    /// The reason a sealed server gives: `sealed: N of M shares supplied`.
    pub fn reason(&self) -> String {
        format!("sealed: {}", self.state())
    }

    /// `N of M shares supplied`, or `key rebuilt`.
    fn state(&self) -> String {
        if self.is_rebuilt() {
            "key rebuilt".to_owned()
        } else {
            format!("{} of {} shares supplied", self.supplied(), self.threshold)
        }
    }
}

/// How far unsealing has come for every sealed generation (D183).
#[derive(Debug)]
pub struct SealStatus {
    generations: Vec<Arc<SealProgress>>,
}

impl SealStatus {
    /// The progress of each sealed generation, in generation order.
    pub fn new(generations: Vec<Arc<SealProgress>>) -> Self {
        SealStatus { generations }
    }

    /// Each sealed generation's progress.
    pub fn generations(&self) -> &[Arc<SealProgress>] {
        &self.generations
    }

    /// The reason a sealed server gives. With one sealed generation it is
    /// that generation's (`sealed: 1 of 3 shares supplied`); with several
    /// it names each: `sealed: generation 1: 1 of 3 shares supplied;
    /// generation 2: key rebuilt`.
    pub fn reason(&self) -> String {
        match self.generations.as_slice() {
            [one] => one.reason(),
            many => {
                let each: Vec<String> = many
                    .iter()
                    .map(|g| format!("generation {}: {}", g.generation(), g.state()))
                    .collect();
                format!("sealed: {}", each.join("; "))
            }
        }
    }
}

/// Why a share was refused. A refused share does not count.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum UnsealError {
    /// The text is not a valid share (format or checksum).
    #[error(transparent)]
    Share(#[from] ShareError),
    /// The share is of another key than the configured fingerprint.
    #[error(
        "share {index} is a share of key {key}, but this server's master_key_fingerprint is \
         {expected}: it belongs to another key"
    )]
    ForeignKey {
        /// The share's index.
        index: u8,
        /// The key it names.
        key: Fingerprint,
        /// The configured fingerprint.
        expected: Fingerprint,
    },
    /// The share is of a key no sealed generation expects (with several
    /// generations sealed, or one that is not generation 1).
    #[error(
        "share {index} is a share of key {key}, but no sealed generation expects it: \
         the sealed generations expect {expected}"
    )]
    UnexpectedKey {
        /// The share's index.
        index: u8,
        /// The key it names.
        key: Fingerprint,
        /// `generation N: key F` for every sealed generation.
        expected: String,
    },
    /// The share is of a generation whose key is already rebuilt.
    #[error(
        "share {index} is of generation {generation}, whose key is already rebuilt; \
         the server waits for the shares of {waiting}"
    )]
    AlreadyRebuilt {
        /// The share's index.
        index: u8,
        /// Its generation.
        generation: Generation,
        /// The generations still sealed.
        waiting: String,
    },
    /// The share is from another split than the shares supplied before.
    #[error(
        "share {index} is from split {split}, but the shares supplied so far are from split \
         {first}: shares of two different splits cannot be combined"
    )]
    OtherSplit {
        /// The share's index.
        index: u8,
        /// Its split.
        split: SplitId,
        /// The split of the shares supplied so far.
        first: SplitId,
    },
    /// The share's threshold is not the configured one.
    #[error(
        "share {index} needs {share} shares, but {} threshold is {configured}: \
         fix the configuration or use shares of the right split",
        custody_section(*generation)
    )]
    Threshold {
        /// The generation the share is for.
        generation: Generation,
        /// The share's index.
        index: u8,
        /// Its threshold.
        share: u8,
        /// The configured threshold.
        configured: u8,
    },
    /// This index was already supplied.
    #[error("share {index} was already supplied; each custodian supplies a different share")]
    Duplicate {
        /// The index.
        index: u8,
    },
    /// The combined key is not the configured one (shares edited, or their
    /// fingerprint lines rewritten). Progress starts over.
    #[error(
        "the {threshold} shares combine to a key with fingerprint {actual}, not the configured \
         {expected}; all shares supplied so far are discarded: supply them again, and check \
         that none was altered"
    )]
    WrongKey {
        /// Shares combined.
        threshold: u8,
        /// The combined key's fingerprint.
        actual: Fingerprint,
        /// The configured fingerprint.
        expected: Fingerprint,
    },
    /// The shares could not be combined (cannot happen with shares that
    /// passed the checks above; kept typed rather than unwrapped).
    #[error("combining the shares: {0}")]
    Combine(#[from] crate::shamir::ShamirError),
}

/// Where a generation's threshold is configured: `[custody]` for
/// generation 1, `[keyring.custody]` of its `[[keyring]]` entry for the
/// others.
fn custody_section(generation: Generation) -> String {
    if generation == Generation::FIRST {
        "[custody]".to_owned()
    } else {
        format!("generation {generation}'s [keyring.custody]")
    }
}

/// What supplying a share achieved.
pub enum Supplied {
    /// Accepted; more are needed.
    Accepted {
        /// The share's index.
        index: u8,
        /// Accepted so far.
        supplied: u8,
        /// Needed.
        threshold: u8,
    },
    /// The last share: the key, its fingerprint checked.
    Complete(KeyHierarchy),
}

impl fmt::Debug for Supplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Supplied::Accepted {
                index,
                supplied,
                threshold,
            } => write!(f, "Accepted(share {index}, {supplied} of {threshold})"),
            Supplied::Complete(_) => f.write_str("Complete([REDACTED])"),
        }
    }
}

/// Collects shares for one configured key. The shares held are wiped when
/// it is dropped or reset.
pub struct Unsealer {
    expected: Fingerprint,
    progress: Arc<SealProgress>,
    split: Option<SplitId>,
    shares: Vec<SecretShare>,
}

impl fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsealer")
            .field("expected", &self.expected)
            .field("split", &self.split)
            .field("supplied", &self.shares.len())
            .field("shares", &"[REDACTED]")
            .finish()
    }
}

impl Unsealer {
    /// Waits for shares of the key with fingerprint `expected`, reporting
    /// progress to `progress` (whose threshold is the configured one).
    pub fn new(expected: Fingerprint, progress: Arc<SealProgress>) -> Self {
        let progress_threshold = progress.threshold();
        Unsealer {
            expected,
            progress,
            split: None,
            // Never grows past the threshold: no reallocation, no copies.
            shares: Vec::with_capacity(usize::from(progress_threshold)),
        }
    }

    /// Checks one share's text and keeps it; with the threshold reached,
    /// combines the key and checks its fingerprint.
    pub fn supply(&mut self, text: &str) -> Result<Supplied, UnsealError> {
        self.supply_file(ShareFile::parse(text)?)
    }

    /// [`Unsealer::supply`] of a share file already read.
    fn supply_file(&mut self, file: ShareFile) -> Result<Supplied, UnsealError> {
        let index = file.share.index();
        if file.key != self.expected {
            return Err(UnsealError::ForeignKey {
                index,
                key: file.key,
                expected: self.expected,
            });
        }
        let threshold = self.progress.threshold();
        if file.threshold != threshold {
            return Err(UnsealError::Threshold {
                generation: self.progress.generation(),
                index,
                share: file.threshold,
                configured: threshold,
            });
        }
        if let Some(first) = self.split
            && first != file.split
        {
            return Err(UnsealError::OtherSplit {
                index,
                split: file.split,
                first,
            });
        }
        if self.shares.iter().any(|share| share.index() == index) {
            return Err(UnsealError::Duplicate { index });
        }
        self.split = Some(file.split);
        self.shares.push(file.share);
        let supplied = u8::try_from(self.shares.len()).unwrap_or(u8::MAX);
        self.progress.supplied.store(supplied, Ordering::Relaxed);
        if supplied < threshold {
            return Ok(Supplied::Accepted {
                index,
                supplied,
                threshold,
            });
        }
        let combined = MasterKey::combine(&self.shares, threshold);
        self.reset();
        let keys = KeyHierarchy::of_generation(&combined?, self.progress.generation());
        let actual = keys.fingerprint();
        if actual != self.expected {
            return Err(UnsealError::WrongKey {
                threshold,
                actual,
                expected: self.expected,
            });
        }
        Ok(Supplied::Complete(keys))
    }

    /// Forgets every share supplied (wiping them).
    pub fn reset(&mut self) {
        self.shares.clear();
        self.split = None;
        self.progress.supplied.store(0, Ordering::Relaxed);
    }
}

/// What supplying a share to a [`KeyringUnsealer`] achieved.
pub enum KeyringSupplied {
    /// Accepted for `generation`; more of its shares are needed.
    Accepted {
        /// The generation the share counted for.
        generation: Generation,
        /// The share's index.
        index: u8,
        /// Accepted so far for that generation.
        supplied: u8,
        /// Needed for that generation.
        threshold: u8,
    },
    /// The last share of `generation`: its key is rebuilt, and other
    /// sealed generations still wait for shares.
    Rebuilt {
        /// The generation the share completed.
        generation: Generation,
        /// The share's index.
        index: u8,
        /// The rebuilt key's fingerprint.
        fingerprint: Fingerprint,
    },
    /// The last share of the last sealed generation: every sealed
    /// generation's key, in generation order.
    Complete {
        /// The generation the last share completed.
        generation: Generation,
        /// Its key's fingerprint.
        fingerprint: Fingerprint,
        /// Every sealed generation's key.
        keys: Vec<KeyHierarchy>,
    },
}

impl fmt::Debug for KeyringSupplied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyringSupplied::Accepted {
                generation,
                index,
                supplied,
                threshold,
            } => write!(
                f,
                "Accepted(generation {generation}, share {index}, {supplied} of {threshold})"
            ),
            KeyringSupplied::Rebuilt { generation, .. } => {
                write!(f, "Rebuilt(generation {generation})")
            }
            KeyringSupplied::Complete { keys, .. } => {
                write!(f, "Complete({} keys, [REDACTED])", keys.len())
            }
        }
    }
}

/// One sealed generation: its unsealer, and its key once rebuilt.
struct SealedGeneration {
    unsealer: Unsealer,
    progress: Arc<SealProgress>,
    keys: Option<KeyHierarchy>,
}

/// Collects shares for every sealed generation of the keyring (D182): each
/// share is routed by its `key` fingerprint to the generation expecting
/// that key; the keys are handed over once every sealed generation is
/// rebuilt. Shares and rebuilt keys are wiped when it is dropped or reset.
pub struct KeyringUnsealer {
    sealed: Vec<SealedGeneration>,
    status: Arc<SealStatus>,
}

impl fmt::Debug for KeyringUnsealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringUnsealer")
            .field("reason", &self.status.reason())
            .field("keys", &"[REDACTED]")
            .finish()
    }
}

impl KeyringUnsealer {
    /// Waits for the shares of each `(generation, fingerprint, threshold)`.
    pub fn new(generations: &[(Generation, Fingerprint, u8)]) -> Self {
        let mut sorted = generations.to_vec();
        sorted.sort_by_key(|(generation, _, _)| *generation);
        let sealed: Vec<SealedGeneration> = sorted
            .iter()
            .map(|&(generation, fingerprint, threshold)| {
                let progress = Arc::new(SealProgress::of_generation(generation, threshold));
                SealedGeneration {
                    unsealer: Unsealer::new(fingerprint, Arc::clone(&progress)),
                    progress,
                    keys: None,
                }
            })
            .collect();
        let status = Arc::new(SealStatus::new(
            sealed.iter().map(|g| Arc::clone(&g.progress)).collect(),
        ));
        KeyringUnsealer { sealed, status }
    }

    /// The progress every sealed call reports.
    pub fn status(&self) -> Arc<SealStatus> {
        Arc::clone(&self.status)
    }

    /// `generation N (key F)` for each generation still waiting.
    fn waiting(&self) -> String {
        let waiting: Vec<String> = self
            .sealed
            .iter()
            .filter(|g| g.keys.is_none())
            .map(|g| {
                format!(
                    "generation {} (key {})",
                    g.progress.generation(),
                    g.unsealer.expected
                )
            })
            .collect();
        waiting.join(", ")
    }

    /// Checks one share's text and hands it to the generation whose key it
    /// names; once every sealed generation is rebuilt, gives all the keys.
    pub fn supply(&mut self, text: &str) -> Result<KeyringSupplied, UnsealError> {
        let file = ShareFile::parse(text)?;
        let index = file.share.index();
        let at = match self
            .sealed
            .iter()
            .position(|g| g.unsealer.expected == file.key)
        {
            Some(at) => at,
            // One sealed generation 1: today's refusal, naming
            // master_key_fingerprint.
            None if self.sealed.len() == 1
                && self.sealed[0].progress.generation() == Generation::FIRST =>
            {
                0
            }
            None => {
                let expected: Vec<String> = self
                    .sealed
                    .iter()
                    .map(|g| {
                        format!(
                            "generation {}: key {}",
                            g.progress.generation(),
                            g.unsealer.expected
                        )
                    })
                    .collect();
                return Err(UnsealError::UnexpectedKey {
                    index,
                    key: file.key,
                    expected: expected.join(", "),
                });
            }
        };
        if self.sealed[at].keys.is_some() {
            return Err(UnsealError::AlreadyRebuilt {
                index,
                generation: self.sealed[at].progress.generation(),
                waiting: self.waiting(),
            });
        }
        let entry = &mut self.sealed[at];
        let generation = entry.progress.generation();
        match entry.unsealer.supply_file(file)? {
            Supplied::Accepted {
                index,
                supplied,
                threshold,
            } => Ok(KeyringSupplied::Accepted {
                generation,
                index,
                supplied,
                threshold,
            }),
            Supplied::Complete(keys) => {
                let fingerprint = keys.fingerprint();
                entry.keys = Some(keys);
                entry.progress.rebuilt.store(true, Ordering::Relaxed);
                if self.sealed.iter().any(|g| g.keys.is_none()) {
                    return Ok(KeyringSupplied::Rebuilt {
                        generation,
                        index,
                        fingerprint,
                    });
                }
                let keys = self
                    .sealed
                    .iter_mut()
                    .filter_map(|g| g.keys.take())
                    .collect();
                Ok(KeyringSupplied::Complete {
                    generation,
                    fingerprint,
                    keys,
                })
            }
        }
    }

    /// Forgets every share supplied and every key rebuilt (wiping them).
    pub fn reset(&mut self) {
        for generation in &mut self.sealed {
            generation.unsealer.reset();
            generation.keys = None;
            generation.progress.rebuilt.store(false, Ordering::Relaxed);
        }
    }
}

/// Binds the unseal socket in `data_dir` (which must exist) with mode
/// 0600. A socket file left by a server that is gone is replaced; one a
/// live server answers on is not (two servers on one data directory).
pub fn bind(data_dir: &Path) -> io::Result<UnixListener> {
    let path = socket_path(data_dir);
    if let Ok(metadata) = std::fs::symlink_metadata(&path) {
        if !metadata.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; remove it", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another sealed fugo server uses this data directory",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How the key is opened once rebuilt: the server's opening, which fails
/// (the audit store cannot be opened, say) with a reason.
pub type Open = Box<
    dyn Fn(Vec<KeyHierarchy>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// The unsealing of one sealed start, shared by every way a share arrives:
/// the unseal socket (`fugo unseal`) and the admin plane (`Admin.Unseal`,
/// D204). One share is taken at a time, in the order they come.
pub struct Unsealing {
    state: tokio::sync::Mutex<KeyringUnsealer>,
    open: Open,
    unsealed: tokio::sync::watch::Sender<bool>,
}

/// The answer to one share: the line the custodian reads (`accepted: …`
/// or `unsealed: …`), and whether the server is now open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What the custodian is told.
    pub line: String,
    /// The server opened with this share.
    pub unsealed: bool,
}

impl Unsealing {
    /// Takes shares for `unsealer`; `open` opens the server with the keys.
    pub fn new(unsealer: KeyringUnsealer, open: Open) -> Arc<Self> {
        Arc::new(Unsealing {
            state: tokio::sync::Mutex::new(unsealer),
            open,
            unsealed: tokio::sync::watch::channel(false).0,
        })
    }

    /// Whether the server has opened.
    pub fn is_unsealed(&self) -> bool {
        *self.unsealed.borrow()
    }

    /// Turns true when the server opens.
    pub fn unsealed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.unsealed.subscribe()
    }

    /// Takes one share file's text; the answer, or why it was refused.
    /// Once every sealed generation is rebuilt, opens the server: if that
    /// fails, every share supplied is discarded and the server stays
    /// sealed.
    pub async fn supply(&self, text: &str) -> Result<Answer, String> {
        let mut unsealer = self.state.lock().await;
        if self.is_unsealed() {
            return Err("the server is not sealed".to_owned());
        }
        let answer = if text.len() as u64 > MAX_SHARE_FILE {
            Err(format!(
                "more than {MAX_SHARE_FILE} bytes: not a share file"
            ))
        } else {
            answer(&mut unsealer, text, &self.open).await
        };
        match &answer {
            Ok(Answer { unsealed: true, .. }) => {
                self.unsealed.send_replace(true);
            }
            Ok(_) => {}
            Err(message) => tracing::warn!(reason = %message, "unseal: share refused"),
        }
        answer
    }
}

/// Answers custodians on `listener` until the server is unsealed (by a
/// share sent here or on the admin plane); then removes the socket file
/// and returns.
pub async fn serve(listener: UnixListener, path: PathBuf, unsealing: Arc<Unsealing>) {
    let own_uid = rustix::process::geteuid().as_raw();
    let mut unsealed = unsealing.unsealed();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = unsealed.wait_for(|unsealed| *unsealed) => break,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "unseal socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Read (bounded in size and time) before judging the peer, so that
        // a refused client gets its answer instead of a reset connection.
        let share = read_share(&mut stream).await;
        let peer = match stream.peer_cred().map(|cred| cred.uid()) {
            Ok(uid) if uid == own_uid => share,
            Ok(uid) => Err(format!(
                "the unseal socket takes shares only from uid {own_uid} (the server's), not {uid}"
            )),
            Err(error) => Err(format!("cannot read the peer's credentials: {error}")),
        };
        let reply = match peer {
            Ok(text) => unsealing.supply(&text).await,
            // `supply` logs the refusals it makes; these it never saw.
            Err(message) => {
                tracing::warn!(reason = %message, "unseal: share refused");
                Err(message)
            }
        };
        let (line, done) = match reply {
            Ok(answer) => (answer.line, answer.unsealed),
            Err(message) => (format!("refused: {message}"), false),
        };
        // A custodian who hung up misses the answer; the state is kept.
        let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
        let _ = stream.shutdown().await;
        if done {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
}

async fn read_share(stream: &mut UnixStream) -> Result<zeroize::Zeroizing<String>, String> {
    // Room for the whole share up front: a growing buffer would leave
    // copies of it in freed memory.
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(MAX_SHARE_FILE as usize + 64));
    let mut limited = stream.take(MAX_SHARE_FILE + 1);
    match tokio::time::timeout(READ_TIMEOUT, limited.read_to_end(&mut bytes)).await {
        Err(_) => return Err("the share did not arrive within 5 seconds".to_owned()),
        Ok(Err(error)) => return Err(format!("reading the share: {error}")),
        Ok(Ok(_)) => {}
    }
    if bytes.len() as u64 > MAX_SHARE_FILE {
        return Err(format!(
            "more than {MAX_SHARE_FILE} bytes: not a share file"
        ));
    }
    let text = String::from_utf8(std::mem::take(&mut *bytes))
        .map_err(|_| "the share is not UTF-8 text".to_owned())?;
    Ok(zeroize::Zeroizing::new(text))
}

async fn answer(unsealer: &mut KeyringUnsealer, text: &str, open: &Open) -> Result<Answer, String> {
    let several = unsealer.sealed.len() > 1;
    match unsealer.supply(text).map_err(|error| error.to_string())? {
        KeyringSupplied::Accepted {
            generation,
            index,
            supplied,
            threshold,
        } => {
            tracing::info!(
                %generation,
                index,
                supplied,
                threshold,
                "unseal: share accepted"
            );
            Ok(Answer {
                line: format!(
                    "accepted: share {index} for generation {generation}; {supplied} of \
                     {threshold} shares supplied"
                ),
                unsealed: false,
            })
        }
        KeyringSupplied::Rebuilt {
            generation,
            index,
            fingerprint,
        } => {
            tracing::info!(%generation, %fingerprint, "unseal: a generation's key is rebuilt");
            Ok(Answer {
                line: format!(
                    "accepted: share {index} for generation {generation}; its key \
                     {fingerprint} is rebuilt; still {}",
                    unsealer.status.reason()
                ),
                unsealed: false,
            })
        }
        KeyringSupplied::Complete {
            generation,
            fingerprint,
            keys,
        } => match open(keys).await {
            Ok(()) => {
                tracing::info!(%fingerprint, "unsealed: the master keys are rebuilt; serving");
                let line = if several {
                    format!(
                        "unsealed: key {fingerprint} rebuilt for generation {generation}, the \
                         last sealed generation; the server is serving"
                    )
                } else {
                    format!("unsealed: key {fingerprint} rebuilt; the server is serving")
                };
                Ok(Answer {
                    line,
                    unsealed: true,
                })
            }
            Err(message) => {
                unsealer.reset();
                Err(format!(
                    "the key {fingerprint} is right, but the server could not open with it: \
                     {message}; the shares were discarded, supply them again once fixed"
                ))
            }
        },
    }
}

/// Why `fugo unseal` could not hand over its share.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SendError {
    /// No sealed server listens in the data directory.
    #[error(
        "cannot reach a sealed server at {path}: {source} (is the server running, sealed, \
         with this --data-dir, and are you its user?)"
    )]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The exchange broke off.
    #[error("unseal socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Sends one share's text to the sealed server of `data_dir` and returns
/// its one-line answer (`accepted: …`, `unsealed: …` or `refused: …`).
pub fn send_share(data_dir: &Path, text: &str) -> Result<String, SendError> {
    let path = socket_path(data_dir);
    let shown = path.display().to_string();
    let io_error = |source| SendError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| SendError::Connect {
            path: shown.clone(),
            source,
        })?;
    // Opening the audit trail on the last share may take a while.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io_error)?;
    // A server that refuses the peer answers without reading: the write
    // then breaks off, and its answer is still there to read.
    let sent = stream
        .write_all(text.as_bytes())
        .and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    let mut reply = String::new();
    let read = (&stream).take(4096).read_to_string(&mut reply);
    match (sent, read) {
        (_, Ok(_)) if !reply.is_empty() => Ok(reply.trim_end().to_owned()),
        (Err(error), _) | (Ok(()), Err(error)) => Err(io_error(error)),
        (Ok(()), Ok(_)) => Err(io_error(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection without an answer",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custody::share::split_key;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; 32])
    }

    fn fingerprint(master: &MasterKey) -> Fingerprint {
        KeyHierarchy::new(master).fingerprint()
    }

    #[test]
    fn threshold_shares_unseal_and_progress_is_counted() {
        let master = key(7);
        let shares = split_key(&master, 5, 3).unwrap();
        let progress = Arc::new(SealProgress::new(3));
        let mut unsealer = Unsealer::new(fingerprint(&master), Arc::clone(&progress));
        assert_eq!(progress.reason(), "sealed: 0 of 3 shares supplied");
        assert!(matches!(
            unsealer.supply(&shares[3].to_text()).unwrap(),
            Supplied::Accepted {
                index: 4,
                supplied: 1,
                threshold: 3
            }
        ));
        let error = unsealer.supply(&shares[3].to_text()).unwrap_err();
        assert!(
            matches!(error, UnsealError::Duplicate { index: 4 }),
            "{error}"
        );
        assert_eq!(progress.reason(), "sealed: 1 of 3 shares supplied");
        unsealer.supply(&shares[0].to_text()).unwrap();
        match unsealer.supply(&shares[2].to_text()).unwrap() {
            Supplied::Complete(keys) => assert_eq!(keys.fingerprint(), fingerprint(&master)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            progress.supplied(),
            0,
            "shares are not kept after combining"
        );
    }

    #[test]
    fn foreign_and_mixed_shares_are_refused_and_do_not_count() {
        let master = key(7);
        let ours = split_key(&master, 3, 2).unwrap();
        let again = split_key(&master, 3, 2).unwrap();
        let other = split_key(&key(8), 3, 2).unwrap();
        let wider = split_key(&master, 4, 3).unwrap();
        let progress = Arc::new(SealProgress::new(2));
        let mut unsealer = Unsealer::new(fingerprint(&master), Arc::clone(&progress));
        let error = unsealer.supply(&other[0].to_text()).unwrap_err();
        assert!(
            matches!(error, UnsealError::ForeignKey { index: 1, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("belongs to another key"),
            "{error}"
        );
        let error = unsealer.supply(&wider[0].to_text()).unwrap_err();
        assert!(matches!(
            error,
            UnsealError::Threshold {
                share: 3,
                configured: 2,
                ..
            }
        ));
        unsealer.supply(&ours[0].to_text()).unwrap();
        let error = unsealer.supply(&again[1].to_text()).unwrap_err();
        assert!(
            matches!(error, UnsealError::OtherSplit { index: 2, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("two different splits"),
            "{error}"
        );
        assert_eq!(progress.supplied(), 1);
        assert!(matches!(
            unsealer.supply(&ours[2].to_text()).unwrap(),
            Supplied::Complete(_)
        ));
    }

    /// Shares of another key whose `key:` lines were rewritten (and their
    /// checksums recomputed) pass every per-share check; the combined key's
    /// fingerprint catches them, and progress starts over.
    #[test]
    fn a_combined_key_with_the_wrong_fingerprint_is_refused() {
        let master = key(7);
        let progress = Arc::new(SealProgress::new(2));
        let mut unsealer = Unsealer::new(fingerprint(&master), Arc::clone(&progress));
        let mut forged = split_key(&key(9), 2, 2).unwrap();
        for share in &mut forged {
            share.key = fingerprint(&master);
        }
        unsealer.supply(&forged[0].to_text()).unwrap();
        let error = unsealer.supply(&forged[1].to_text()).unwrap_err();
        assert!(matches!(error, UnsealError::WrongKey { .. }), "{error}");
        assert!(error.to_string().contains("discarded"), "{error}");
        assert_eq!(progress.supplied(), 0);
    }

    #[test]
    fn debug_redacts_the_shares() {
        let master = key(7);
        let shares = split_key(&master, 3, 2).unwrap();
        let mut unsealer = Unsealer::new(fingerprint(&master), Arc::new(SealProgress::new(2)));
        unsealer.supply(&shares[0].to_text()).unwrap();
        let shown = format!("{unsealer:?}");
        assert!(
            shown.contains("[REDACTED]") && shown.contains("supplied: 1"),
            "{shown}"
        );
        let value = crate::hex::encode(shares[0].share.expose_value());
        assert!(!shown.contains(&value[..8]));
        let complete = unsealer.supply(&shares[1].to_text()).unwrap();
        assert_eq!(format!("{complete:?}"), "Complete([REDACTED])");
    }

    /// Shares of two sealed generations, interleaved, are routed by the
    /// key they name; a generation's key is held until the last sealed
    /// generation is rebuilt; a share of a key no generation expects is
    /// refused naming the expected ones (D182, D183).
    #[test]
    fn a_keyring_unsealer_routes_shares_to_their_generation() {
        let (one, two, other) = (key(1), key(2), key(3));
        let g = |n| Generation::new(n).unwrap();
        let mut unsealer =
            KeyringUnsealer::new(&[(g(2), fingerprint(&two), 2), (g(1), fingerprint(&one), 3)]);
        let status = unsealer.status();
        assert_eq!(
            status.reason(),
            "sealed: generation 1: 0 of 3 shares supplied; generation 2: 0 of 2 shares supplied"
        );
        let ones = split_key(&one, 3, 3).unwrap();
        let twos = split_key(&two, 2, 2).unwrap();
        let foreign = split_key(&other, 2, 2).unwrap();
        assert!(matches!(
            unsealer.supply(&twos[0].to_text()).unwrap(),
            KeyringSupplied::Accepted { generation, supplied: 1, threshold: 2, .. } if generation == g(2)
        ));
        assert!(matches!(
            unsealer.supply(&ones[1].to_text()).unwrap(),
            KeyringSupplied::Accepted { generation, supplied: 1, threshold: 3, .. } if generation == g(1)
        ));
        let error = unsealer.supply(&foreign[0].to_text()).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, UnsealError::UnexpectedKey { .. })
                && message.contains(&format!("generation 1: key {}", fingerprint(&one)))
                && message.contains(&format!("generation 2: key {}", fingerprint(&two))),
            "{message}"
        );
        match unsealer.supply(&twos[1].to_text()).unwrap() {
            KeyringSupplied::Rebuilt {
                generation,
                fingerprint: f,
                ..
            } => {
                assert_eq!((generation, f), (g(2), fingerprint(&two)));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status.reason(),
            "sealed: generation 1: 1 of 3 shares supplied; generation 2: key rebuilt"
        );
        let error = unsealer.supply(&twos[0].to_text()).unwrap_err();
        assert!(
            matches!(error, UnsealError::AlreadyRebuilt { .. }),
            "{error}"
        );
        unsealer.supply(&ones[0].to_text()).unwrap();
        match unsealer.supply(&ones[2].to_text()).unwrap() {
            KeyringSupplied::Complete {
                generation, keys, ..
            } => {
                assert_eq!(generation, g(1));
                let got: Vec<(Generation, Fingerprint)> = keys
                    .iter()
                    .map(|k| (k.generation(), k.fingerprint()))
                    .collect();
                assert_eq!(
                    got,
                    vec![(g(1), fingerprint(&one)), (g(2), fingerprint(&two))]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// With only generation 1 sealed, the reason and the refusal of a
    /// foreign share keep their single-key form.
    #[test]
    fn one_sealed_generation_keeps_the_single_key_wording() {
        let one = key(1);
        let mut unsealer = KeyringUnsealer::new(&[(Generation::FIRST, fingerprint(&one), 2)]);
        assert_eq!(unsealer.status().reason(), "sealed: 0 of 2 shares supplied");
        let foreign = split_key(&key(3), 2, 2).unwrap();
        let error = unsealer.supply(&foreign[0].to_text()).unwrap_err();
        assert!(matches!(error, UnsealError::ForeignKey { .. }), "{error}");
        let wider = split_key(&one, 3, 3).unwrap();
        let error = unsealer.supply(&wider[0].to_text()).unwrap_err();
        assert!(
            error.to_string().contains("but [custody] threshold is 2"),
            "{error}"
        );
        let mut later =
            KeyringUnsealer::new(&[(Generation::new(2).unwrap(), fingerprint(&one), 2)]);
        let error = later.supply(&wider[0].to_text()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("but generation 2's [keyring.custody] threshold is 2"),
            "{error}"
        );
        // A later generation sealed alone is named.
        let error = later.supply(&foreign[0].to_text()).unwrap_err();
        assert!(error.to_string().contains("generation 2: key"), "{error}");
    }
}
