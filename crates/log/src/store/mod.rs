//! Where the log lives: the [`Store`] trait and its embedded backend.
//!
//! The trait is shaped so that a PostgreSQL backend can follow: records are
//! append-only entries numbered by one sequencer (the single writer), with a
//! per-person index, a per-agency index, the tree's stored nodes and the
//! signed checkpoints. [`RedbStore`] is the embedded default.
//!
//! A store is used by one thread at a time (`&mut self`); it is [`Send`] so
//! that thread can be a dedicated one (the server's group-commit thread).
//!
//! # Durability and failures
//!
//! [`Store::append`] returns only after its one write transaction is on disk
//! (fsync). When it fails, nothing in memory advances (size, root), but the
//! records may or may not be on disk. The caller then drops the store and
//! opens it again (redb refuses further writes after a failed commit);
//! [`RedbStore::open`] rebuilds size and root from what was committed, so the
//! caller learns from [`Store::size`] whether the failed commit landed.

mod redb;

use std::path::PathBuf;

use crate::merkle::{Hash, MerkleError};
use crate::record::{Group, Outcome, PersonLink, Record};

pub use self::redb::{Recovery, RedbStore};

/// One durable commit's worth of work for [`Store::append`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Append {
    /// Groups of records, appended in this order after any rolled tallies.
    pub groups: Vec<Group>,
    /// Refusals that opened no person, added to the durable tallies.
    pub refusals: Vec<Refusal>,
    /// The time of this append (unix milliseconds): tallies of minutes
    /// before its minute become `Refusals` records in this commit.
    pub now_ms: u64,
    /// Policy texts to keep under their version (SHA-256), in the same
    /// commit as the records that name them; a known version is kept once.
    pub policies: Vec<(Hash, String)>,
    /// [`record::prepare`](crate::record::prepare) of each of `groups`, in
    /// order, if the caller made them (on its own thread, so the one thread
    /// that commits does less); missing ones are prepared by the store.
    pub prepared: Vec<crate::record::Prepared>,
    /// Quota use to add to the durable daily counts, in the same commit as
    /// the records of the calls that used it (see [`Store::usage`]).
    pub usage: Vec<Usage>,
    /// Entries of the re-issue and suspension tables to write (each
    /// replacing any under its table and key), in the same commit as the
    /// records of the call that made them. The store holds them as given:
    /// keyed references and sealed values (see `fugo_core::persons`).
    pub persons: Vec<PersonsEntry>,
    /// Epoch states, destroyed generations and agency ids a policy put in force, in
    /// the same commit as the record of its loading: the store's one-way
    /// high-water mark (see [`Store::marks`]). A mark never goes down.
    pub marks: Marks,
}

/// The one-way high-water mark of the key lifecycle: per (agency, epoch)
/// the furthest state rank any policy in force gave it (0 in use,
/// 1 rekey-only, 2 destroyed: fugo-core's `EpochState::rank`), and the
/// master-key generations any policy destroyed, and every agency id any
/// policy listed (0 listed, 1 retired). It also keeps, first come first
/// kept, the generation each epoch was bound to and the fingerprint each
/// generation's key had: an epoch's codes change with either, so neither
/// may change later. The store only raises or adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// (agency id, epoch, rank).
    pub epochs: Vec<(String, u8, u8)>,
    /// Destroyed generation numbers.
    pub destroyed_generations: Vec<u16>,
    /// (agency id, rank): 0 listed, 1 retired. Agency ids are immutable,
    /// so a later policy must list each and keep a retired one retired.
    pub agencies: Vec<(String, u8)>,
    /// (agency id, epoch, generation): the master-key generation a policy
    /// in force first bound the epoch to. Never changed once stored.
    pub bindings: Vec<(String, u8, u16)>,
    /// (generation, fingerprint hex): the fingerprint of the key a server
    /// first held for the generation. Never changed once stored.
    pub generation_keys: Vec<(u16, String)>,
}

/// One entry of the re-issue and suspension tables, as stored: the table's
/// code, a keyed reference, a sealed value. `Debug` shows no bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PersonsEntry {
    /// The table's code.
    pub table: u8,
    /// The keyed reference.
    pub key: [u8; 16],
    /// The sealed value.
    pub value: Vec<u8>,
}

impl std::fmt::Debug for PersonsEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonsEntry")
            .field("table", &self.table)
            .field("bytes", &self.value.len())
            .finish()
    }
}

impl Append {
    /// Prepares every group not yet prepared (see [`Append::prepared`]).
    pub fn prepare(&mut self) {
        for group in &self.groups[self.prepared.len().min(self.groups.len())..] {
            self.prepared.push(crate::record::prepare(group));
        }
    }
}

/// A count of refusals that opened no person, for one (agency, reason,
/// minute).
///
/// When its minute is over, a tally becomes one `Refusals` record: a group
/// whose header has `time_ms` = the minute's start, `caller` = the agency,
/// `note` = the reason, `count` = the count, no counterpart, affair, items or
/// batch id, a zero `policy_version` (a minute of refusals may span policy
/// loads), and one entry with [`Outcome::Refused`]
/// and no person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The agency whose requests were refused.
    pub agency: String,
    /// Why (a fixed reason name such as `"unknown_code"`; never a value).
    pub reason: String,
    /// The minute, as unix milliseconds / 60 000.
    pub minute: u64,
    /// How many items were refused.
    pub count: u64,
}

/// Quota use of one agency and operation on one day, as the server's
/// quotas count it (the day is the server's choice: fugo counts days in
/// Japan Standard Time, see `fugo::service::quota`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The day (days since 1970-01-01 in the server's time zone).
    pub day: u64,
    /// The agency.
    pub agency: String,
    /// The operation (a fixed name such as `"derive"`).
    pub operation: String,
    /// How many items (or reads).
    pub count: u64,
}

/// What [`Store::append`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// One per group of [`Append::groups`], in the same order.
    pub groups: Vec<AppendedGroup>,
    /// How many `Refusals` records were made from tallies in this commit
    /// (they come before the groups).
    pub tallied: u64,
    /// The tree size after the commit.
    pub size: u64,
    /// The tree root after the commit.
    pub root: Hash,
}

/// Where one appended group landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedGroup {
    /// The seq of its first record; the others follow contiguously.
    pub first_seq: u64,
    /// Its Redeem entries whose serial had been redeemed before: they were
    /// stored as [`Outcome::Repeat`] with the
    /// first redemption's epoch.
    pub repeats: Vec<Repeat>,
}

/// A redeem of a serial that was already redeemed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repeat {
    /// The entry's index in its group.
    pub entry: usize,
    /// The first redemption of the serial.
    pub first: Redemption,
}

/// The first redemption of a serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redemption {
    /// Its record.
    pub seq: u64,
    /// The epoch of the code it opened.
    pub epoch: u32,
    /// The agency that redeemed.
    pub caller: String,
}

/// A record as [`Store::records`] yields it for verification and export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredRecord {
    /// The record's body is kept.
    Body(Record),
    /// The body was purged after retention; only its leaf hash remains.
    Purged {
        /// Its seq.
        seq: u64,
        /// Its tree leaf.
        leaf: Hash,
    },
}

impl StoredRecord {
    /// The record's seq.
    pub fn seq(&self) -> u64 {
        match self {
            StoredRecord::Body(record) => record.seq,
            StoredRecord::Purged { seq, .. } => *seq,
        }
    }
}

/// Why a store operation failed. Messages name the operation, the record
/// (seq) or the file, never a person link or a serial.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another process (or another handle in this one) has the store open.
    #[error("the audit store {path} is in use by another process (is the server running?)")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// There is no store at this path (an audit command never creates one).
    #[error("there is no audit store at {path}")]
    Missing {
        /// The store file looked for.
        path: PathBuf,
    },
    /// The operating system failed a read or write.
    #[error("audit store I/O failed during {op}: {source}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// An earlier write failed; the store must be dropped and opened again.
    #[error("audit store needs reopening after a failed write (during {op})")]
    NeedsReopen {
        /// What the store was doing.
        op: &'static str,
    },
    /// A stored value failed to decode or contradicts the rest of the store.
    #[error("audit store is corrupt: {what} at record {seq}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// The record (or tree size) it concerns.
        seq: u64,
    },
    /// The database file itself is damaged or in a format this code cannot read.
    #[error("audit store file is damaged or unreadable during {op}: {detail}")]
    Damaged {
        /// What the store was doing.
        op: &'static str,
        /// The database's description.
        detail: String,
    },
    /// An append was refused before anything was written.
    #[error("append refused: group {group}{}: {reason}", entry.map(|e| format!(" entry {e}")).unwrap_or_default())]
    Invalid {
        /// The group's index in [`Append::groups`].
        group: usize,
        /// The entry's index in the group, when one entry is at fault.
        entry: Option<usize>,
        /// What is wrong.
        reason: &'static str,
    },
    /// A seq or size beyond the log.
    #[error("{what} {value} is beyond the log (size {size})")]
    OutOfRange {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The log's size.
        size: u64,
    },
    /// A proof could not be built from the stored nodes.
    #[error("proof: {0}")]
    Proof(#[from] MerkleError),
}

/// The durable audit log: records, the tree over them, checkpoints and
/// indexes. See the module doc for failures and reopening.
pub trait Store: Send {
    /// Appends the groups in ONE durable commit (fsync before returning) and
    /// returns, per group, its first seq, and per Redeem entry whether its
    /// serial was already redeemed (then the entry is stored with
    /// `Outcome::Repeat` and the first redemption's epoch, which is returned).
    /// `refusals` are added to durable per (agency, reason, minute) tallies in
    /// the same commit; tallies of minutes before the append's minute become
    /// `Refusals` records (one per tally), before the groups, in the same
    /// commit. On error nothing in memory advances.
    fn append(&mut self, append: Append) -> Result<Appended, StoreError>;
    /// The quota use counted on `day` (each agency and operation once),
    /// as the appends' [`Append::usage`] added it up. An append's usage of
    /// a day removes the counts of days before the day before it, so the
    /// table holds about two days.
    fn usage(&mut self, day: u64) -> Result<Vec<Usage>, StoreError>;
    /// The number of records (the tree size).
    fn size(&self) -> u64;
    /// The root of the whole tree.
    fn root(&self) -> Hash;
    /// The root of the tree of the first `size` records.
    fn root_at(&mut self, size: u64) -> Result<Hash, StoreError>;
    /// One record; `None` when purged or beyond the log.
    fn record(&mut self, seq: u64) -> Result<Option<Record>, StoreError>;
    /// One record's tree leaf (kept after purging).
    fn leaf(&mut self, seq: u64) -> Result<Hash, StoreError>;
    /// Up to `limit` records from `from` on, bodies or (purged) leaf hashes:
    /// what verify and export read. A verifier recomputes the leaf of every
    /// body from its fields ([`Record::leaf_hash`]) rather than trusting the
    /// stored leaves.
    fn records(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError>;
    /// A person's records, newest first, with seq below `before`, from the
    /// person index (see [`Store::index_people`]).
    fn person_records(
        &mut self,
        person: &PersonLink,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The records in which `agency` is the caller or the counterpart,
    /// oldest first, with seq after `after`.
    fn agency_records(
        &mut self,
        agency: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;
    /// The first redemption of `serial`, if it was redeemed.
    fn redemption(&mut self, serial: &[u8; 16]) -> Result<Option<Redemption>, StoreError>;
    /// Adds up to `max` records not yet in the person index to it, in sorted
    /// order, in one commit; returns how far the index reaches
    /// ([`Store::indexed`]).
    fn index_people(&mut self, max: usize) -> Result<u64, StoreError>;
    /// Records below this seq are in the person index.
    fn indexed(&self) -> u64;
    /// The RFC 6962 inclusion proof of record `seq` in the tree of `size`.
    fn inclusion_proof(&mut self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError>;
    /// The RFC 6962 consistency proof from tree size `old` to `new`.
    fn consistency_proof(&mut self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError>;
    /// Keeps a signed checkpoint note of tree size `size` (durable).
    fn add_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError>;
    /// The kept checkpoint of exactly this tree size, if any.
    fn checkpoint(&mut self, size: u64) -> Result<Option<String>, StoreError>;
    /// The provider's confirmation of the exchange with this serial (a
    /// `Provision` record): its time (unix ms) and outcome, if confirmed.
    fn provision(&mut self, serial: &[u8; 16]) -> Result<Option<(u64, Outcome)>, StoreError>;
    /// The checkpoint of the largest size.
    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, StoreError>;
    /// Every kept checkpoint, by size.
    fn checkpoints(&mut self) -> Result<Vec<(u64, String)>, StoreError>;
    /// Keeps the log's public key text (for `fugo audit pubkey`), durably.
    fn set_verifier(&mut self, verifier_text: &str) -> Result<(), StoreError>;
    /// The log's public key text, if set.
    fn verifier(&mut self) -> Result<Option<String>, StoreError>;
    /// Keeps a policy text under its version; true if it was new.
    fn put_policy(&mut self, version: &Hash, text: &str) -> Result<bool, StoreError>;
    /// The policy text of `version`, if kept.
    fn policy(&mut self, version: &Hash) -> Result<Option<String>, StoreError>;
    /// The high-water mark of epoch states and destroyed generations, as
    /// raised by every [`Append::marks`] so far.
    fn marks(&mut self) -> Result<Marks, StoreError>;
    /// The tree levels whose node hashes the store keeps, lowest first
    /// (level 0 = the leaf hashes). For verification, with
    /// [`Store::stored_nodes`].
    fn stored_levels(&self) -> Vec<u8>;
    /// Up to `limit` node hashes of tree level `level`, from index `from`
    /// on, exactly as stored (nothing is recomputed or checked): fewer when
    /// the store holds fewer, none for a level not in
    /// [`Store::stored_levels`]. Node `i` of level `l` is the root of leaves
    /// `[i·2^l, (i+1)·2^l)`; only complete nodes are kept. `fugo audit
    /// verify` compares them with the tree it recomputes from the records.
    fn stored_nodes(&mut self, level: u8, from: u64, limit: usize)
    -> Result<Vec<Hash>, StoreError>;
    /// Writes about `bytes` of scratch data in one durable commit and
    /// removes it in a second, leaving records, tree, checkpoints and
    /// indexes as they were: whether a commit of that size can be written
    /// now. After a failed append the recorder probes with the size of the
    /// commit that failed, so it can say it is healthy again without waiting
    /// for a call (which a load balancer would not send it).
    fn probe(&mut self, bytes: usize) -> Result<(), StoreError>;
    /// Every entry of the re-issue and suspension tables (see
    /// [`Append::persons`]), by table and key.
    fn persons(&mut self) -> Result<Vec<PersonsEntry>, StoreError>;
    /// Whether any record, purged or not, indexed or not yet, is about
    /// `person`: whether the person has a history in the log.
    fn person_seen(&mut self, person: &PersonLink) -> Result<bool, StoreError>;
    /// Deletes the bodies of the oldest groups whose time is before
    /// `before_ms` (a prefix of the log: it stops at the first group that is
    /// not); leaf hashes stay. Returns how many records were purged.
    fn purge_before(&mut self, before_ms: u64) -> Result<u64, StoreError>;
}
