//! The embedded [`Store`]: one redb file. The table layout is documented
//! on [`RedbStore`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use ::redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use super::{
    Append, Appended, AppendedGroup, PersonsEntry, Redemption, Repeat, Store, StoreError,
    StoredRecord, Usage,
};
use crate::merkle::{self, Frontier, Hash, NodeSource, ProofError};
use crate::record::{
    self, DecodedGroup, Entry, Group, Header, Operation, Outcome, PersonLink, Record,
};

/// The most entries one `groups` value holds.
use crate::record::CHUNK;

/// Hashes per tile (C2SP tlog-tiles width).
const TILE_WIDTH: u64 = 256;

/// The value of `meta.format`: what this file is and its schema version.
const FORMAT: &[u8] = b"fugo-log/redb/1";

const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
const TILES: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("tiles");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");
const POLICIES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("policies");
const BY_PERSON: TableDefinition<(&[u8; 16], u64), ()> = TableDefinition::new("by_person");
const BY_AGENCY: TableDefinition<(&str, u64), u64> = TableDefinition::new("by_agency");
const REDEEMED: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("redeemed");
const TALLIES: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("tallies");
/// Quota use: (day, agency, operation) → count.
const USAGE: TableDefinition<(u64, &str, &str), u64> = TableDefinition::new("usage");
/// Scratch values of [`Store::probe`]; empty between probes.
/// The re-issue and suspension tables: (table, keyed reference) → sealed
/// value (D191).
const PERSONS: TableDefinition<(u8, &[u8; 16]), &[u8]> = TableDefinition::new("persons");
const PROBE: TableDefinition<u64, &[u8]> = TableDefinition::new("probe");
/// The size of one probe value: about a page, as records and tiles are.
const PROBE_CHUNK: usize = 3_072;
/// serial -> (time ms, outcome code) of its provision confirmation.
const PROVISIONS: TableDefinition<&[u8; 16], (u64, u8)> = TableDefinition::new("provisions");
/// (agency, epoch) -> the furthest state rank a policy gave it (one-way).
const EPOCH_MARKS: TableDefinition<(&str, u8), u8> = TableDefinition::new("epoch_marks");
/// Destroyed master-key generations (one-way).
const DESTROYED_GENERATIONS: TableDefinition<u16, ()> =
    TableDefinition::new("destroyed_generations");
/// Every agency id a policy in force listed: 0 listed, 1 retired.
const AGENCY_MARKS: TableDefinition<&str, u8> = TableDefinition::new("agency_marks");
/// (agency, epoch) -> the generation it was first bound to (kept as first
/// stored).
const EPOCH_GENERATIONS: TableDefinition<(&str, u8), u16> =
    TableDefinition::new("epoch_generations");
/// Generation -> the fingerprint of its key, hex (kept as first stored).
const GENERATION_KEYS: TableDefinition<u16, &str> = TableDefinition::new("generation_keys");

/// redb's page cache. redb's default is 1 GiB, which an append-only log
/// fills with pages it never reads again: the server's resident memory grew
/// with the store, about 1.5 MiB a second under the soak test's traffic
/// (40 → 125 MiB in a minute, on its way to 1 GiB). What is read back (the
/// right edge of the tree, `meta`, recent index pages) fits in far less;
/// the 30 s soak ran as fast with 16 MiB (D145).
const CACHE_BYTES: usize = 16 << 20;

/// The audit log in one redb file, held exclusively by this handle.
///
/// # Tables
///
/// | table         | key                           | value                                           |
/// |---------------|-------------------------------|-------------------------------------------------|
/// | `groups`      | first seq `u64`               | header encoding + packed entries ([`encode_group`](crate::record::encode_group)), at most 256 entries |
/// | `tiles`       | (level / 8 `u8`, tile `u64`)  | up to 256 hashes of 32 bytes (C2SP tlog-tiles layout) |
/// | `meta`        | name `&str`                   | `format`, `size`, `frontier`, `indexed`, `purged`, `verifier` |
/// | `checkpoints` | tree size `u64`               | signed note text                                |
/// | `policies`    | version `[u8; 32]`            | policy text                                     |
/// | `by_person`   | (link `[u8; 16]`, seq `u64`)  | `()`                                            |
/// | `by_agency`   | (agency `&str`, first seq)    | record count of the group `u64`                 |
/// | `redeemed`    | serial `[u8; 16]`             | seq `u64` ‖ epoch `u32` ‖ caller (UTF-8)        |
/// | `tallies`     | (minute, agency, reason)      | count `u64`                                     |
/// | `probe`       | chunk `u64`                   | scratch bytes, empty except during [`Store::probe`](super::Store::probe) |
/// | `epoch_marks` | (agency `&str`, epoch `u8`)   | furthest state rank `u8` (only ever raised)     |
/// | `destroyed_generations` | generation `u16`    | `()` (only ever added)                          |
/// | `agency_marks` | agency `&str`                | 0 listed, 1 retired `u8` (only ever added or raised) |
/// | `epoch_generations` | (agency `&str`, epoch `u8`) | generation `u16` (the first stored stays)     |
/// | `generation_keys` | generation `u16`          | key fingerprint, hex `&str` (the first stored stays) |
///
/// All integers in values are big-endian. `by_person` and `redeemed` are
/// built from the log by [`Store::index_people`](super::Store::index_people)
/// in sorted batches (random-key inserts would dirty a page per record in
/// the commit a response waits for); until then the first redemptions of
/// not yet indexed records are held in memory (rebuilt from the log on
/// open), so a repeated redeem is always found.
///
/// **Tiles.** Tile `(L, t)` holds the hashes of level `8L` of the tree with
/// indexes `[256t, 256t + 256)`: level-1 tiles hold the roots of 256-leaf
/// subtrees, level-2 tiles the roots of 65,536-leaf subtrees, and so on. The
/// rightmost tile of each level is partial and grows in place (read,
/// extended and written once per append that touches it). A node at a level
/// between two stored ones is hashed from at most 128 stored nodes of the
/// tile below it.
///
/// **Leaf hashes** are not stored while a record's body is (D102): a leaf
/// is hashed from the body when a proof needs it, since storing 32 bytes
/// beside every 22-byte entry (on pages of twice the tile's size) cost a
/// third of the commit. Level-0 tiles hold the leaves of purged records
/// only, written by the purge that deletes their bodies.
///
/// **Groups.** A group of more than 256 entries (`CHUNK`) is kept as several
/// values with the same header, so reading one record decodes at most
/// 256 entries.
///
/// **Purging** removes a prefix of the groups; `meta.purged` says where the
/// kept bodies start. The purged records' leaf hashes go into level-0 tiles
/// in the same commit, so the tree still verifies.
///
/// # Failures
///
/// After an error inside a write transaction this handle refuses further
/// writes with [`StoreError::NeedsReopen`]: redb needs the database dropped
/// and opened again after a failed commit, and the commit may or may not
/// have reached the disk. [`RedbStore::open`] restores size and frontier from
/// `meta`, which is written in the same transaction as the records.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    frontier: Frontier,
    indexed: u64,
    purged: u64,
    /// Set when a write transaction failed: redb needs a reopen.
    needs_reopen: bool,
    /// How the open found the file.
    recovery: Recovery,
    /// First redemptions in records not yet indexed (seq ≥ `indexed`): the
    /// `redeemed` table is built with the person index, in sorted batches,
    /// off the path of a response — a random-key insert per redeemed token
    /// in the commit dirtied a page per token and made redeem ten times
    /// slower. Rebuilt from the log on open; bounded by the index's lag.
    recent: HashMap<[u8; 16], Redemption>,
}

/// Whether redb's repair step `session` is the fallback from a last
/// commit that fails its checksum to the commit before it. redb reports
/// its steps by progress: 0.0 (the check starts), 0.3 ONLY for that
/// fallback, then 0.6 and 0.9 (the allocator state is rebuilt from the
/// verified trees).
fn rolls_back(session: &::redb::RepairSession) -> bool {
    let progress = session.progress();
    progress > 0.1 && progress < 0.5
}

/// How [`RedbStore::open`] found the file the last run left, in rising
/// order of what the open had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Recovery {
    /// Closed cleanly (or new).
    Clean,
    /// Not closed (the process was killed, or the machine stopped): redb
    /// rebuilt its free-page map from the committed trees. Every commit is
    /// there.
    Rebuilt,
    /// The last commit was cut off while it was written, and redb rolled
    /// the file back to the commit before it. A commit is acknowledged
    /// only after its fsync, so a run that ended during a write lost
    /// nothing it acknowledged; a file changed behind the server's back
    /// looks the same, which is why the recorder logs it as a warning and
    /// `open_checked` (the verifier's open) refuses it.
    RolledBack,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .field("size", &self.frontier.size())
            .field("indexed", &self.indexed)
            .field("purged", &self.purged)
            .finish()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating the file and its tables on first
    /// use, and restores size and frontier from what was last committed.
    ///
    /// Fails with [`StoreError::Locked`] while another process or handle
    /// holds the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        create_private(path.as_ref())?;
        Self::open_with(path.as_ref(), false)
    }

    /// Opens an EXISTING store for `fugo audit` (verify, export, pubkey),
    /// where the file may have been altered outside redb and a plain open
    /// could trust it (redb may panic on a page changed behind its back):
    ///
    /// - a missing file is [`StoreError::Missing`], never created;
    /// - the checksum of every page of the committed trees is checked
    ///   (reads the whole file); a damaged page is [`StoreError::Damaged`];
    /// - a file whose last commit fails its checksum is refused
    ///   ([`StoreError::Damaged`]) instead of being rolled back to the commit
    ///   before it, as redb's repair would do: a rollback would hide the
    ///   damage and silently drop the newest records.
    ///
    /// redb's check ends with one commit of its own (the allocator state;
    /// no table changes), so the file's bytes change though no record does.
    /// Takes the store's lock like [`RedbStore::open`].
    pub fn open_checked(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                return Err(StoreError::Damaged {
                    op: "open",
                    detail: format!("{} is not a regular file", path.display()),
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => return Err(StoreError::Io { op: "open", source }),
        }
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(true);
        builder.set_cache_size(CACHE_BYTES);
        // Refuse the fallback to the commit before; let the check run.
        builder.set_repair_callback(|session| {
            if rolls_back(session) {
                session.abort();
            }
        });
        let db = builder.open(path).map_err(|e| match e {
            DatabaseError::RepairAborted => StoreError::Damaged {
                op: "open",
                detail: "the last commit fails its checksum (the file was changed, or \
                         damaged during a write); refusing to roll it back. If the server \
                         was killed or the machine stopped during a write, that commit was \
                         never acknowledged: start the server once (it rolls the commit \
                         back and logs a warning saying so) and verify again; if not, keep \
                         this file for investigation and restore from a backup"
                    .into(),
            },
            other => open_error(path, other),
        })?;
        Self::from_database(db, path)
    }

    fn open_with(path: &Path, check: bool) -> Result<Self, StoreError> {
        // redb calls back only when it repairs: the file was not closed
        // cleanly, and, further, its last commit may be rolled back.
        let found = Arc::new(Mutex::new(Recovery::Clean));
        let seen = Arc::clone(&found);
        let db = Database::builder()
            .set_check_integrity_on_open(check)
            .set_cache_size(CACHE_BYTES)
            .set_repair_callback(move |session| {
                let step = if rolls_back(session) {
                    Recovery::RolledBack
                } else {
                    Recovery::Rebuilt
                };
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                *seen = (*seen).max(step);
            })
            .create(path)
            .map_err(|e| open_error(path, e))?;
        let mut store = Self::from_database(db, path)?;
        store.recovery = *found.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(store)
    }

    /// How the open found the file: closed cleanly, left open by a run
    /// that ended, or with its last commit cut off and rolled back.
    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// Whether a write on this handle failed, so it refuses every further
    /// write until the store is opened again (see "Failures" above).
    pub fn needs_reopen(&self) -> bool {
        self.needs_reopen
    }

    /// Creates the tables if needed and restores the state from `meta`.
    fn from_database(db: Database, path: &Path) -> Result<Self, StoreError> {
        let txn = begin_write(&db, "open")?;
        let (size, nodes, indexed, purged) = {
            let mut meta = txn.open_table(META).map_err(|e| backend("open", e))?;
            let format = get_meta(&meta, "format")?;
            match format.as_deref() {
                Some(FORMAT) => {}
                Some(_) => {
                    return Err(StoreError::Damaged {
                        op: "open",
                        detail: "the file is not a fugo audit store of this version".into(),
                    });
                }
                None => {
                    if get_meta(&meta, "size")?.is_some() {
                        return Err(StoreError::Corrupt {
                            what: "meta format",
                            seq: 0,
                        });
                    }
                    meta.insert("format", FORMAT)
                        .map_err(|e| backend("open", e))?;
                }
            }
            let size = meta_u64(&meta, "size")?;
            let nodes = match get_meta(&meta, "frontier")? {
                None => Vec::new(),
                Some(bytes) => hashes(&bytes).ok_or(StoreError::Corrupt {
                    what: "frontier",
                    seq: size,
                })?,
            };
            (
                size,
                nodes,
                meta_u64(&meta, "indexed")?,
                meta_u64(&meta, "purged")?,
            )
        };
        txn.open_table(GROUPS).map_err(|e| backend("open", e))?;
        txn.open_table(TILES).map_err(|e| backend("open", e))?;
        txn.open_table(CHECKPOINTS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(POLICIES).map_err(|e| backend("open", e))?;
        txn.open_table(BY_PERSON).map_err(|e| backend("open", e))?;
        txn.open_table(BY_AGENCY).map_err(|e| backend("open", e))?;
        txn.open_table(REDEEMED).map_err(|e| backend("open", e))?;
        txn.open_table(TALLIES).map_err(|e| backend("open", e))?;
        txn.open_table(USAGE).map_err(|e| backend("open", e))?;
        txn.open_table(EPOCH_MARKS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(DESTROYED_GENERATIONS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(AGENCY_MARKS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(EPOCH_GENERATIONS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(GENERATION_KEYS)
            .map_err(|e| backend("open", e))?;
        txn.open_table(PROVISIONS).map_err(|e| backend("open", e))?;
        txn.open_table(PERSONS).map_err(|e| backend("open", e))?;
        txn.commit().map_err(|e| backend("open", e))?;

        let frontier = Frontier::from_parts(size, nodes).map_err(|_| StoreError::Corrupt {
            what: "frontier",
            seq: size,
        })?;
        if indexed > size || purged > size {
            return Err(StoreError::Corrupt {
                what: "meta indexed/purged",
                seq: size,
            });
        }
        let mut store = Self {
            db,
            path: path.to_path_buf(),
            frontier,
            indexed,
            purged,
            needs_reopen: false,
            recovery: Recovery::Clean,
            recent: HashMap::new(),
        };
        // The last leaf must be in its tile: meta and tiles are one commit.
        if size > 0 {
            store.leaf_at(size - 1)?;
        }
        store.recent = store.redemptions(indexed.max(purged), size)?;
        Ok(store)
    }

    /// The first redemptions in records `from..to`, by serial.
    fn redemptions(&self, from: u64, to: u64) -> Result<HashMap<[u8; 16], Redemption>, StoreError> {
        let mut found = HashMap::new();
        if from >= to {
            return Ok(found);
        }
        let txn = self.read("redemptions")?;
        let groups = txn
            .open_table(GROUPS)
            .map_err(|e| backend("redemptions", e))?;
        let mut reader = GroupReader::new(&groups);
        for seq in from..to {
            let (entry, group) = reader.entry(seq)?;
            if let Some(first) = first_redemption(seq, entry, group) {
                found.entry(first.0).or_insert(first.1);
            }
        }
        Ok(found)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records below this seq have been purged (their bodies deleted).
    pub fn purged(&self) -> u64 {
        self.purged
    }

    fn writable(&self, op: &'static str) -> Result<(), StoreError> {
        if self.needs_reopen {
            Err(StoreError::NeedsReopen { op })
        } else {
            Ok(())
        }
    }

    /// Runs `work` in one durable write transaction and commits it. Any
    /// failure after the transaction began marks this handle for reopening.
    fn write<T>(
        &mut self,
        op: &'static str,
        work: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.writable(op)?;
        let result = begin_write(&self.db, op).and_then(|txn| {
            let value = work(&txn)?;
            txn.commit().map_err(|e| backend(op, e))?;
            Ok(value)
        });
        if result.is_err() {
            self.needs_reopen = true;
        }
        result
    }

    fn read(&self, op: &'static str) -> Result<::redb::ReadTransaction, StoreError> {
        self.db.begin_read().map_err(|e| backend(op, e))
    }

    /// The leaf hash of `seq`: hashed from its body, or read from its leaf
    /// tile once the body is purged.
    fn leaf_at(&self, seq: u64) -> Result<Hash, StoreError> {
        let txn = self.read("leaf")?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend("leaf", e))?;
        if seq >= self.purged {
            return GroupReader::new(&groups).record(seq).map(|r| r.leaf_hash());
        }
        let tiles = txn.open_table(TILES).map_err(|e| backend("leaf", e))?;
        TileSource::new(&tiles, &groups, self.frontier.size()).node(0, seq)
    }

    /// Whether some tally is of a minute before the append's.
    fn tallies_due(&self, append: &Append) -> Result<bool, StoreError> {
        let op = "append tallies";
        let txn = self.read(op)?;
        let tallies = txn.open_table(TALLIES).map_err(|e| backend(op, e))?;
        let now_minute = append.now_ms / 60_000;
        let mut due = tallies
            .range((0u64, "", "")..(now_minute, "", ""))
            .map_err(|e| backend(op, e))?;
        Ok(due.next().is_some())
    }

    fn check_size(&self, what: &'static str, value: u64) -> Result<(), StoreError> {
        if value > self.frontier.size() {
            Err(StoreError::OutOfRange {
                what,
                value,
                size: self.frontier.size(),
            })
        } else {
            Ok(())
        }
    }

    fn check_seq(&self, what: &'static str, seq: u64) -> Result<(), StoreError> {
        if seq >= self.frontier.size() {
            Err(StoreError::OutOfRange {
                what,
                value: seq,
                size: self.frontier.size(),
            })
        } else {
            Ok(())
        }
    }
}

impl Store for RedbStore {
    fn append(&mut self, append: Append) -> Result<Appended, StoreError> {
        self.writable("append")?;
        validate(&append.groups)?;
        if append.groups.is_empty()
            && append.refusals.is_empty()
            && append.usage.is_empty()
            && append.persons.is_empty()
            && append.marks == super::Marks::default()
            && !self.tallies_due(&append)?
        {
            // Nothing to write: no commit, no fsync.
            return Ok(Appended {
                groups: Vec::new(),
                tallied: 0,
                size: self.frontier.size(),
                root: self.frontier.root(),
            });
        }
        let mut next = self.frontier.clone();
        let mut fresh = HashMap::new();
        let recent = std::mem::take(&mut self.recent);
        let appended = self.write("append", |txn| {
            write_append(txn, &mut next, append, &recent, &mut fresh)
        });
        self.recent = recent;
        let appended = appended?;
        self.frontier = next;
        self.recent.extend(fresh);
        Ok(appended)
    }

    fn usage(&mut self, day: u64) -> Result<Vec<Usage>, StoreError> {
        let op = "usage";
        let txn = self.read(op)?;
        let table = txn.open_table(USAGE).map_err(|e| backend(op, e))?;
        let mut found = Vec::new();
        for item in table
            .range((day, "", "")..(day.saturating_add(1), "", ""))
            .map_err(|e| backend(op, e))?
        {
            let (key, count) = item.map_err(|e| backend(op, e))?;
            let (day, agency, operation) = key.value();
            found.push(Usage {
                day,
                agency: agency.to_owned(),
                operation: operation.to_owned(),
                count: count.value(),
            });
        }
        Ok(found)
    }

    fn size(&self) -> u64 {
        self.frontier.size()
    }

    fn root(&self) -> Hash {
        self.frontier.root()
    }

    fn root_at(&mut self, size: u64) -> Result<Hash, StoreError> {
        self.check_size("tree size", size)?;
        if size == self.frontier.size() {
            return Ok(self.frontier.root());
        }
        let txn = self.read("root")?;
        let tiles = txn.open_table(TILES).map_err(|e| backend("root", e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend("root", e))?;
        let mut source = TileSource::new(&tiles, &groups, self.frontier.size());
        merkle::range_root(&mut source, 0, size).map_err(proof_error)
    }

    fn record(&mut self, seq: u64) -> Result<Option<Record>, StoreError> {
        if seq >= self.frontier.size() || seq < self.purged {
            return Ok(None);
        }
        let txn = self.read("record")?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend("record", e))?;
        GroupReader::new(&groups).record(seq).map(Some)
    }

    fn leaf(&mut self, seq: u64) -> Result<Hash, StoreError> {
        self.check_seq("seq", seq)?;
        self.leaf_at(seq)
    }

    fn records(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let end = from.saturating_add(limit as u64).min(self.frontier.size());
        let txn = self.read("records")?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend("records", e))?;
        let tiles = txn.open_table(TILES).map_err(|e| backend("records", e))?;
        let mut reader = GroupReader::new(&groups);
        let mut leaves = TileSource::new(&tiles, &groups, self.frontier.size());
        let mut out = Vec::with_capacity(end.saturating_sub(from).min(4096) as usize);
        for seq in from..end {
            if seq < self.purged {
                out.push(StoredRecord::Purged {
                    seq,
                    leaf: leaves.node(0, seq)?,
                });
            } else {
                out.push(StoredRecord::Body(reader.record(seq)?));
            }
        }
        Ok(out)
    }

    fn person_records(
        &mut self,
        person: &PersonLink,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let op = "person records";
        let txn = self.read(op)?;
        let index = txn.open_table(BY_PERSON).map_err(|e| backend(op, e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
        let mut reader = GroupReader::new(&groups);
        let upper = before.unwrap_or(u64::MAX);
        let range = index
            .range((&person.0, 0)..(&person.0, upper))
            .map_err(|e| backend(op, e))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in range.rev() {
            if out.len() >= limit {
                break;
            }
            let seq = item.map_err(|e| backend(op, e))?.0.value().1;
            if seq >= self.purged {
                out.push(reader.record(seq)?);
            }
        }
        Ok(out)
    }

    fn agency_records(
        &mut self,
        agency: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let op = "agency records";
        let start = match after {
            None => 0,
            Some(seq) => match seq.checked_add(1) {
                Some(start) => start,
                None => return Ok(Vec::new()),
            },
        };
        let start = start.max(self.purged);
        let txn = self.read(op)?;
        let index = txn.open_table(BY_AGENCY).map_err(|e| backend(op, e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
        let mut reader = GroupReader::new(&groups);
        let mut out = Vec::with_capacity(limit.min(1024));
        // The group that holds `start`, if any, then the agency's later groups.
        let earlier = index
            .range((agency, 0)..=(agency, start))
            .map_err(|e| backend(op, e))?
            .next_back();
        let later = index
            .range((agency, start.saturating_add(1))..=(agency, u64::MAX))
            .map_err(|e| backend(op, e))?;
        for item in earlier.into_iter().chain(later) {
            let (first, count) = item
                .map(|(k, v)| (k.value().1, v.value()))
                .map_err(|e| backend(op, e))?;
            let end = first.saturating_add(count);
            let mut seq = first.max(start);
            while seq < end {
                if out.len() >= limit {
                    return Ok(out);
                }
                out.push(reader.record(seq)?);
                seq += 1;
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn redemption(&mut self, serial: &[u8; 16]) -> Result<Option<Redemption>, StoreError> {
        if let Some(first) = self.recent.get(serial) {
            return Ok(Some(first.clone()));
        }
        let txn = self.read("redemption")?;
        let table = txn
            .open_table(REDEEMED)
            .map_err(|e| backend("redemption", e))?;
        let found = table.get(serial).map_err(|e| backend("redemption", e))?;
        found
            .map(|guard| decode_redemption(guard.value()))
            .transpose()
    }

    fn index_people(&mut self, max: usize) -> Result<u64, StoreError> {
        let from = self.indexed.max(self.purged);
        let to = from.saturating_add(max as u64).min(self.frontier.size());
        if to <= self.indexed {
            return Ok(self.indexed);
        }
        self.write("index people", |txn| {
            let op = "index people";
            let mut keys = Vec::new();
            let mut serials = Vec::new();
            {
                let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
                let mut reader = GroupReader::new(&groups);
                for seq in from..to {
                    let (entry, group) = reader.entry(seq)?;
                    if let Some(link) = entry.person {
                        keys.push((link.0, seq));
                    }
                    if let Some(first) = first_redemption(seq, entry, group) {
                        serials.push(first);
                    }
                }
            }
            keys.sort_unstable();
            let mut index = txn.open_table(BY_PERSON).map_err(|e| backend(op, e))?;
            for (link, seq) in &keys {
                index.insert((link, *seq), ()).map_err(|e| backend(op, e))?;
            }
            // The first redemptions, sorted: the table the idempotency check
            // reads once they leave the in-memory set.
            serials.sort_unstable_by_key(|first| first.0);
            let mut redeemed = txn.open_table(REDEEMED).map_err(|e| backend(op, e))?;
            for (serial, first) in &serials {
                if redeemed.get(serial).map_err(|e| backend(op, e))?.is_none() {
                    redeemed
                        .insert(serial, encode_redemption(first).as_slice())
                        .map_err(|e| backend(op, e))?;
                }
            }
            let mut meta = txn.open_table(META).map_err(|e| backend(op, e))?;
            meta.insert("indexed", to.to_be_bytes().as_slice())
                .map_err(|e| backend(op, e))?;
            Ok(())
        })?;
        self.indexed = to;
        self.recent.retain(|_, first| first.seq >= to);
        Ok(to)
    }

    fn indexed(&self) -> u64 {
        self.indexed
    }

    fn inclusion_proof(&mut self, seq: u64, size: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size("tree size", size)?;
        let op = "inclusion proof";
        let txn = self.read(op)?;
        let tiles = txn.open_table(TILES).map_err(|e| backend(op, e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
        let mut source = TileSource::new(&tiles, &groups, self.frontier.size());
        merkle::inclusion_proof(&mut source, seq, size).map_err(proof_error)
    }

    fn consistency_proof(&mut self, old: u64, new: u64) -> Result<Vec<Hash>, StoreError> {
        self.check_size("tree size", new)?;
        let op = "consistency proof";
        let txn = self.read(op)?;
        let tiles = txn.open_table(TILES).map_err(|e| backend(op, e))?;
        let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
        let mut source = TileSource::new(&tiles, &groups, self.frontier.size());
        merkle::consistency_proof(&mut source, old, new).map_err(proof_error)
    }

    fn add_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        self.check_size("checkpoint size", size)?;
        self.write("add checkpoint", |txn| {
            let mut table = txn
                .open_table(CHECKPOINTS)
                .map_err(|e| backend("add checkpoint", e))?;
            table
                .insert(size, note)
                .map_err(|e| backend("add checkpoint", e))?;
            Ok(())
        })
    }

    fn checkpoint(&mut self, size: u64) -> Result<Option<String>, StoreError> {
        let op = "checkpoint";
        let txn = self.read(op)?;
        let table = txn.open_table(CHECKPOINTS).map_err(|e| backend(op, e))?;
        let found = table.get(size).map_err(|e| backend(op, e))?;
        Ok(found.map(|note| note.value().to_owned()))
    }

    fn provision(&mut self, serial: &[u8; 16]) -> Result<Option<(u64, Outcome)>, StoreError> {
        let op = "provision";
        let txn = self.read(op)?;
        let table = txn.open_table(PROVISIONS).map_err(|e| backend(op, e))?;
        let Some(found) = table.get(serial).map_err(|e| backend(op, e))? else {
            return Ok(None);
        };
        let (time, code) = found.value();
        let outcome = Outcome::from_code(code).ok_or(StoreError::Corrupt {
            what: "provision outcome",
            seq: 0,
        })?;
        Ok(Some((time, outcome)))
    }

    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, StoreError> {
        let op = "latest checkpoint";
        let txn = self.read(op)?;
        let table = txn.open_table(CHECKPOINTS).map_err(|e| backend(op, e))?;
        let last = table.last().map_err(|e| backend(op, e))?;
        Ok(last.map(|(size, note)| (size.value(), note.value().to_owned())))
    }

    fn checkpoints(&mut self) -> Result<Vec<(u64, String)>, StoreError> {
        let op = "checkpoints";
        let txn = self.read(op)?;
        let table = txn.open_table(CHECKPOINTS).map_err(|e| backend(op, e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| backend(op, e))? {
            let (size, note) = item.map_err(|e| backend(op, e))?;
            out.push((size.value(), note.value().to_owned()));
        }
        Ok(out)
    }

    fn set_verifier(&mut self, verifier_text: &str) -> Result<(), StoreError> {
        self.write("set verifier", |txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(|e| backend("set verifier", e))?;
            meta.insert("verifier", verifier_text.as_bytes())
                .map_err(|e| backend("set verifier", e))?;
            Ok(())
        })
    }

    fn probe(&mut self, bytes: usize) -> Result<(), StoreError> {
        let chunks = bytes.div_ceil(PROBE_CHUNK).max(1) as u64;
        let filler = [0x5au8; PROBE_CHUNK];
        self.write("probe", |txn| {
            let mut probe = txn.open_table(PROBE).map_err(|e| backend("probe", e))?;
            for key in 0..chunks {
                probe
                    .insert(key, filler.as_slice())
                    .map_err(|e| backend("probe", e))?;
            }
            Ok(())
        })?;
        self.write("probe", |txn| {
            let mut probe = txn.open_table(PROBE).map_err(|e| backend("probe", e))?;
            probe
                .retain(|_, _| false)
                .map_err(|e| backend("probe", e))?;
            Ok(())
        })
    }

    fn verifier(&mut self) -> Result<Option<String>, StoreError> {
        let txn = self.read("verifier")?;
        let meta = txn.open_table(META).map_err(|e| backend("verifier", e))?;
        match get_meta(&meta, "verifier")? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    what: "meta verifier",
                    seq: 0,
                }),
        }
    }

    fn put_policy(&mut self, version: &Hash, text: &str) -> Result<bool, StoreError> {
        self.write("put policy", |txn| {
            let mut table = txn
                .open_table(POLICIES)
                .map_err(|e| backend("put policy", e))?;
            let known = table
                .get(version)
                .map_err(|e| backend("put policy", e))?
                .is_some();
            if !known {
                table
                    .insert(version, text)
                    .map_err(|e| backend("put policy", e))?;
            }
            Ok(!known)
        })
    }

    fn marks(&mut self) -> Result<super::Marks, StoreError> {
        let op = "marks";
        let txn = self.read(op)?;
        let mut marks = super::Marks::default();
        let epochs = txn.open_table(EPOCH_MARKS).map_err(|e| backend(op, e))?;
        for row in epochs.iter().map_err(|e| backend(op, e))? {
            let (key, rank) = row.map_err(|e| backend(op, e))?;
            let (agency, epoch) = key.value();
            marks.epochs.push((agency.to_owned(), epoch, rank.value()));
        }
        let generations = txn
            .open_table(DESTROYED_GENERATIONS)
            .map_err(|e| backend(op, e))?;
        for row in generations.iter().map_err(|e| backend(op, e))? {
            let (generation, _) = row.map_err(|e| backend(op, e))?;
            marks.destroyed_generations.push(generation.value());
        }
        let agencies = txn.open_table(AGENCY_MARKS).map_err(|e| backend(op, e))?;
        for row in agencies.iter().map_err(|e| backend(op, e))? {
            let (agency, rank) = row.map_err(|e| backend(op, e))?;
            marks
                .agencies
                .push((agency.value().to_owned(), rank.value()));
        }
        let bindings = txn
            .open_table(EPOCH_GENERATIONS)
            .map_err(|e| backend(op, e))?;
        for row in bindings.iter().map_err(|e| backend(op, e))? {
            let (key, generation) = row.map_err(|e| backend(op, e))?;
            let (agency, epoch) = key.value();
            marks
                .bindings
                .push((agency.to_owned(), epoch, generation.value()));
        }
        let keys = txn
            .open_table(GENERATION_KEYS)
            .map_err(|e| backend(op, e))?;
        for row in keys.iter().map_err(|e| backend(op, e))? {
            let (generation, fingerprint) = row.map_err(|e| backend(op, e))?;
            marks
                .generation_keys
                .push((generation.value(), fingerprint.value().to_owned()));
        }
        Ok(marks)
    }

    fn policy(&mut self, version: &Hash) -> Result<Option<String>, StoreError> {
        let txn = self.read("policy")?;
        let table = txn.open_table(POLICIES).map_err(|e| backend("policy", e))?;
        let found = table.get(version).map_err(|e| backend("policy", e))?;
        Ok(found.map(|text| text.value().to_owned()))
    }

    fn stored_levels(&self) -> Vec<u8> {
        // One band of tiles per 8 levels: levels 8, 16, ..., 56. Leaf
        // hashes are stored only for purged records, which verify takes
        // as they are (D102).
        (1..8).map(|band| band * 8).collect()
    }

    fn stored_nodes(
        &mut self,
        level: u8,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Hash>, StoreError> {
        let op = "stored nodes";
        if !level.is_multiple_of(8) || level > 56 {
            return Ok(Vec::new());
        }
        let band = level / 8;
        let txn = self.read(op)?;
        let tiles = txn.open_table(TILES).map_err(|e| backend(op, e))?;
        let mut out = Vec::with_capacity(limit.min(1 << 16));
        let mut index = from;
        while out.len() < limit {
            let tile = index / TILE_WIDTH;
            let Some(found) = tiles.get((band, tile)).map_err(|e| backend(op, e))? else {
                break;
            };
            let bytes = found.value();
            if !bytes.len().is_multiple_of(32) || bytes.len() as u64 > TILE_WIDTH * 32 {
                return Err(StoreError::Corrupt {
                    what: "tile",
                    seq: (tile * TILE_WIDTH)
                        .checked_shl(u32::from(level))
                        .unwrap_or(u64::MAX),
                });
            }
            let start = (index % TILE_WIDTH) as usize * 32;
            let rest = bytes.get(start..).unwrap_or_default();
            if rest.is_empty() {
                break;
            }
            for chunk in rest.chunks_exact(32) {
                if out.len() >= limit {
                    break;
                }
                let mut hash = [0; 32];
                hash.copy_from_slice(chunk);
                out.push(hash);
                index += 1;
            }
            // Only the last tile of a level may be partial.
            if (bytes.len() as u64) < TILE_WIDTH * 32 {
                break;
            }
        }
        Ok(out)
    }

    fn persons(&mut self) -> Result<Vec<PersonsEntry>, StoreError> {
        let op = "persons";
        let txn = self.read(op)?;
        let table = txn.open_table(PERSONS).map_err(|e| backend(op, e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| backend(op, e))? {
            let (key, value) = item.map_err(|e| backend(op, e))?;
            let (table, key) = key.value();
            out.push(PersonsEntry {
                table,
                key: *key,
                value: value.value().to_vec(),
            });
        }
        Ok(out)
    }

    fn person_seen(&mut self, person: &PersonLink) -> Result<bool, StoreError> {
        let op = "person seen";
        let txn = self.read(op)?;
        let index = txn.open_table(BY_PERSON).map_err(|e| backend(op, e))?;
        let mut range = index
            .range((&person.0, 0)..=(&person.0, u64::MAX))
            .map_err(|e| backend(op, e))?;
        if range.next().is_some() {
            return Ok(true);
        }
        // Records not yet in the index.
        let groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
        let mut reader = GroupReader::new(&groups);
        for seq in self.indexed.max(self.purged)..self.frontier.size() {
            let (entry, _) = reader.entry(seq)?;
            if entry.person.as_ref() == Some(person) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn purge_before(&mut self, before_ms: u64) -> Result<u64, StoreError> {
        let from = self.purged;
        let size = self.frontier.size();
        let cut = self.write("purge", |txn| purge(txn, from, size, before_ms))?;
        self.purged = cut;
        Ok(cut - from)
    }
}

/// Refuses an append that could not be stored faithfully, before anything
/// is written.
fn validate(groups: &[Group]) -> Result<(), StoreError> {
    for (index, group) in groups.iter().enumerate() {
        if group.entries.is_empty() {
            return Err(StoreError::Invalid {
                group: index,
                entry: None,
                reason: "a group needs at least one entry",
            });
        }
        if let Some(entry) = group
            .entries
            .iter()
            .position(|e| e.outcome == Outcome::Repeat)
        {
            return Err(StoreError::Invalid {
                group: index,
                entry: Some(entry),
                reason: "only the store marks a redeem as a repeat",
            });
        }
    }
    Ok(())
}

/// Creates the store file empty with mode 0600 if it does not exist (redb
/// initializes an empty file as a new database): the log is the operator's
/// alone, whatever the umask.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io { op: "open", source }),
    }
}

/// A record's first redemption of a serial: a Redeem entry that succeeded
/// (repeats are stored as [`Outcome::Repeat`]).
fn first_redemption(
    seq: u64,
    entry: &Entry,
    group: &DecodedGroup,
) -> Option<([u8; 16], Redemption)> {
    if group.header.operation != Operation::Redeem || entry.outcome != Outcome::Done {
        return None;
    }
    let serial = entry.serial?;
    Some((
        serial,
        Redemption {
            seq,
            epoch: entry.epoch,
            caller: group.header.caller.clone(),
        },
    ))
}

/// Raises the high-water mark: a rank only goes up, a generation once
/// destroyed stays so, an epoch's generation and a generation's key
/// fingerprint stay as first stored, whatever `marks` says.
fn raise_marks(txn: &WriteTransaction, marks: &super::Marks) -> Result<(), StoreError> {
    let op = "marks";
    let mut epochs = txn.open_table(EPOCH_MARKS).map_err(|e| backend(op, e))?;
    for (agency, epoch, rank) in &marks.epochs {
        let stored = epochs
            .get((agency.as_str(), *epoch))
            .map_err(|e| backend(op, e))?
            .map(|v| v.value());
        if stored.is_none_or(|stored| stored < *rank) {
            epochs
                .insert((agency.as_str(), *epoch), *rank)
                .map_err(|e| backend(op, e))?;
        }
    }
    let mut generations = txn
        .open_table(DESTROYED_GENERATIONS)
        .map_err(|e| backend(op, e))?;
    for generation in &marks.destroyed_generations {
        generations
            .insert(*generation, ())
            .map_err(|e| backend(op, e))?;
    }
    let mut agencies = txn.open_table(AGENCY_MARKS).map_err(|e| backend(op, e))?;
    for (agency, rank) in &marks.agencies {
        let stored = agencies
            .get(agency.as_str())
            .map_err(|e| backend(op, e))?
            .map(|v| v.value());
        if stored.is_none_or(|stored| stored < *rank) {
            agencies
                .insert(agency.as_str(), *rank)
                .map_err(|e| backend(op, e))?;
        }
    }
    let mut bindings = txn
        .open_table(EPOCH_GENERATIONS)
        .map_err(|e| backend(op, e))?;
    for (agency, epoch, generation) in &marks.bindings {
        let key = (agency.as_str(), *epoch);
        if bindings.get(key).map_err(|e| backend(op, e))?.is_none() {
            bindings
                .insert(key, *generation)
                .map_err(|e| backend(op, e))?;
        }
    }
    let mut keys = txn
        .open_table(GENERATION_KEYS)
        .map_err(|e| backend(op, e))?;
    for (generation, fingerprint) in &marks.generation_keys {
        if keys.get(*generation).map_err(|e| backend(op, e))?.is_none() {
            keys.insert(*generation, fingerprint.as_str())
                .map_err(|e| backend(op, e))?;
        }
    }
    Ok(())
}

/// The body of one append's write transaction. `next` is a copy of the
/// frontier that the caller keeps only if the commit succeeds.
fn write_append(
    txn: &WriteTransaction,
    next: &mut Frontier,
    append: Append,
    recent: &HashMap<[u8; 16], Redemption>,
    fresh: &mut HashMap<[u8; 16], Redemption>,
) -> Result<Appended, StoreError> {
    let op = "append";
    add_usage(txn, &append.usage)?;
    if !append.persons.is_empty() {
        let mut persons = txn.open_table(PERSONS).map_err(|e| backend(op, e))?;
        for entry in &append.persons {
            persons
                .insert((entry.table, &entry.key), entry.value.as_slice())
                .map_err(|e| backend(op, e))?;
        }
    }
    raise_marks(txn, &append.marks)?;
    let rolled = roll_tallies(txn, &append)?;
    let tallied = rolled.len() as u64;

    let mut groups_table = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
    let mut by_agency = txn.open_table(BY_AGENCY).map_err(|e| backend(op, e))?;
    let redeemed = txn.open_table(REDEEMED).map_err(|e| backend(op, e))?;
    let mut provisions = txn.open_table(PROVISIONS).map_err(|e| backend(op, e))?;
    let mut policies = txn.open_table(POLICIES).map_err(|e| backend(op, e))?;
    for (version, text) in &append.policies {
        if policies.get(version).map_err(|e| backend(op, e))?.is_none() {
            policies
                .insert(version, text.as_str())
                .map_err(|e| backend(op, e))?;
        }
    }
    // `fresh` gathers the serials first redeemed in this append (the
    // caller keeps them in memory once the commit succeeds).
    let mut placed = Vec::with_capacity(append.groups.len());
    // Every group with its place and its prepared values and leaves.
    let mut ready: Vec<(Group, record::Prepared, u64)> = Vec::new();
    let mut first_seq = next.size();

    // Groups the caller prepared (encoded and hashed on its own thread)
    // come with their `Prepared`; the others are prepared here.
    let mut prepared_by_caller = append.prepared.into_iter();
    let caller_groups = append
        .groups
        .into_iter()
        .map(|g| (true, g, prepared_by_caller.next()));
    let rolled_groups = rolled.into_iter().map(|g| (false, g, None));
    for (from_caller, mut group, prepared) in rolled_groups.chain(caller_groups) {
        let mut repeats = Vec::new();
        if group.header.operation == Operation::Redeem {
            for (index, entry) in group.entries.iter_mut().enumerate() {
                let Some(serial) = entry.serial else { continue };
                if entry.outcome != Outcome::Done {
                    continue;
                }
                let earlier = match fresh.get(&serial).or_else(|| recent.get(&serial)) {
                    Some(first) => Some(first.clone()),
                    None => redeemed
                        .get(&serial)
                        .map_err(|e| backend(op, e))?
                        .map(|guard| decode_redemption(guard.value()))
                        .transpose()?,
                };
                match earlier {
                    Some(first) => {
                        entry.outcome = Outcome::Repeat;
                        entry.epoch = first.epoch;
                        repeats.push(Repeat {
                            entry: index,
                            first,
                        });
                    }
                    None => {
                        let first = Redemption {
                            seq: first_seq + index as u64,
                            epoch: entry.epoch,
                            caller: group.header.caller.clone(),
                        };
                        fresh.insert(serial, first);
                    }
                }
            }
        }

        if group.header.operation == Operation::Provision {
            for entry in &group.entries {
                if let Some(serial) = &entry.serial {
                    provisions
                        .insert(serial, (group.header.time_ms, entry.outcome.code()))
                        .map_err(|e| backend(op, e))?;
                }
            }
        }
        // A redeem marked as a repeat changed its entry: prepare again.
        let prepared = match prepared {
            Some(prepared)
                if repeats.is_empty() && prepared.leaves.len() == group.entries.len() =>
            {
                prepared
            }
            _ => record::prepare(&group),
        };
        if from_caller {
            placed.push(AppendedGroup { first_seq, repeats });
        }
        let count = group.entries.len() as u64;
        ready.push((group, prepared, first_seq));
        first_seq += count;
    }

    for (group, prepared, first_seq) in &ready {
        for (k, value) in prepared.values.iter().enumerate() {
            groups_table
                .insert(first_seq + (k * CHUNK) as u64, value.as_slice())
                .map_err(|e| backend(op, e))?;
        }
        let count = group.entries.len() as u64;
        let header = &group.header;
        by_agency
            .insert((header.caller.as_str(), *first_seq), count)
            .map_err(|e| backend(op, e))?;
        if !header.counterpart.is_empty() && header.counterpart != header.caller {
            by_agency
                .insert((header.counterpart.as_str(), *first_seq), count)
                .map_err(|e| backend(op, e))?;
        }
        // An agent's calls are in its own copy too (D214).
        if !header.agent.is_empty()
            && header.agent != header.caller
            && header.agent != header.counterpart
        {
            by_agency
                .insert((header.agent.as_str(), *first_seq), count)
                .map_err(|e| backend(op, e))?;
        }
    }
    let leaves = ready
        .iter()
        .flat_map(|(_, prepared, _)| prepared.leaves.iter());
    let tiles = grow_tree(next, leaves);

    let mut tiles_table = txn.open_table(TILES).map_err(|e| backend(op, e))?;
    for ((level, tile), (position, new)) in tiles {
        let mut bytes = tiles_table
            .get((level, tile))
            .map_err(|e| backend(op, e))?
            .map(|guard| guard.value().to_vec())
            .unwrap_or_default();
        if bytes.len() as u64 != position * 32 {
            return Err(StoreError::Corrupt {
                what: "tile",
                seq: (tile * TILE_WIDTH + position) << (8 * u32::from(level)),
            });
        }
        bytes.extend_from_slice(&new);
        tiles_table
            .insert((level, tile), bytes.as_slice())
            .map_err(|e| backend(op, e))?;
    }

    let mut meta = txn.open_table(META).map_err(|e| backend(op, e))?;
    meta.insert("size", next.size().to_be_bytes().as_slice())
        .map_err(|e| backend(op, e))?;
    meta.insert("frontier", next.nodes().concat().as_slice())
        .map_err(|e| backend(op, e))?;

    Ok(Appended {
        groups: placed,
        tallied,
        size: next.size(),
        root: next.root(),
    })
}

/// Appends `leaves` to `tree` and returns the stored nodes this made, by
/// tile: (level / 8, tile index) -> (position of the first new hash in the
/// tile, the new hashes).
fn grow_tree<'a>(
    tree: &mut Frontier,
    leaves: impl Iterator<Item = &'a Hash>,
) -> BTreeMap<(u8, u64), (u64, Vec<u8>)> {
    let mut tiles: BTreeMap<(u8, u64), (u64, Vec<u8>)> = BTreeMap::new();
    for leaf in leaves {
        tree.append(*leaf, |level, index, hash| {
            // Leaf hashes (level 0) are not stored: the bodies are (D102).
            if level % 8 == 0 && level > 0 {
                tiles
                    .entry((level / 8, index / TILE_WIDTH))
                    .or_insert_with(|| (index % TILE_WIDTH, Vec::new()))
                    .1
                    .extend_from_slice(hash);
            }
        });
    }
    tiles
}

/// Adds quota use to the daily counts and drops the counts of days before
/// the day before the newest day added.
fn add_usage(txn: &WriteTransaction, usage: &[Usage]) -> Result<(), StoreError> {
    let Some(newest) = usage.iter().map(|u| u.day).max() else {
        return Ok(());
    };
    let op = "append usage";
    // A group commit holds one use per call, mostly of a few keys: one
    // write per key.
    let mut sums: BTreeMap<(u64, &str, &str), u64> = BTreeMap::new();
    for used in usage.iter().filter(|used| used.count > 0) {
        let sum = sums
            .entry((used.day, used.agency.as_str(), used.operation.as_str()))
            .or_default();
        *sum = sum.saturating_add(used.count);
    }
    let mut table = txn.open_table(USAGE).map_err(|e| backend(op, e))?;
    for (key, count) in sums {
        let old = table
            .get(key)
            .map_err(|e| backend(op, e))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        table
            .insert(key, old.saturating_add(count))
            .map_err(|e| backend(op, e))?;
    }
    let keep_from = newest.saturating_sub(1);
    let mut stale = Vec::new();
    for item in table
        .range((0u64, "", "")..(keep_from, "", ""))
        .map_err(|e| backend(op, e))?
    {
        let (key, _) = item.map_err(|e| backend(op, e))?;
        let (day, agency, operation) = key.value();
        stale.push((day, agency.to_owned(), operation.to_owned()));
    }
    for (day, agency, operation) in stale {
        table
            .remove((day, agency.as_str(), operation.as_str()))
            .map_err(|e| backend(op, e))?;
    }
    Ok(())
}

/// Adds the append's refusals to the tallies, and removes and returns, as
/// `Refusals` groups, the tallies of minutes before the append's minute.
fn roll_tallies(txn: &WriteTransaction, append: &Append) -> Result<Vec<Group>, StoreError> {
    let op = "append tallies";
    let mut tallies = txn.open_table(TALLIES).map_err(|e| backend(op, e))?;
    for refusal in &append.refusals {
        if refusal.count == 0 {
            continue;
        }
        let key = (
            refusal.minute,
            refusal.agency.as_str(),
            refusal.reason.as_str(),
        );
        let old = tallies
            .get(key)
            .map_err(|e| backend(op, e))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        tallies
            .insert(key, old.saturating_add(refusal.count))
            .map_err(|e| backend(op, e))?;
    }
    let now_minute = append.now_ms / 60_000;
    let mut due = Vec::new();
    for item in tallies
        .range((0u64, "", "")..(now_minute, "", ""))
        .map_err(|e| backend(op, e))?
    {
        let (key, count) = item.map_err(|e| backend(op, e))?;
        let (minute, agency, reason) = key.value();
        due.push((minute, agency.to_owned(), reason.to_owned(), count.value()));
    }
    let mut groups = Vec::with_capacity(due.len());
    for (minute, agency, reason, count) in due {
        tallies
            .remove((minute, agency.as_str(), reason.as_str()))
            .map_err(|e| backend(op, e))?;
        groups.push(Group::single(
            Header {
                time_ms: minute.saturating_mul(60_000),
                operation: Operation::Refusals,
                caller: agency,
                counterpart: String::new(),
                affair: String::new(),
                items: Vec::new(),
                non_disclosure_until: 0,
                policy_version: [0; 32],
                batch_id: String::new(),
                note: reason,
                count,
                agent: String::new(),
            },
            Outcome::Refused,
            None,
        ));
    }
    Ok(groups)
}

/// Deletes the bodies of the groups from `from` on whose time is before
/// `before_ms`, stopping at the first that is not; returns the new `purged`.
fn purge(txn: &WriteTransaction, from: u64, size: u64, before_ms: u64) -> Result<u64, StoreError> {
    let op = "purge";
    let mut groups = txn.open_table(GROUPS).map_err(|e| backend(op, e))?;
    let mut cut = from;
    let mut people = Vec::new();
    let mut agencies = BTreeSet::new();
    let mut doomed = Vec::new();
    // The leaf hashes of the purged records, from `from` on: all that is
    // left of them, kept in leaf tiles (D102).
    let mut leaves = Vec::new();
    for item in groups.range(from..).map_err(|e| backend(op, e))? {
        let (key, value) = item.map_err(|e| backend(op, e))?;
        let first = key.value();
        if first != cut {
            return Err(StoreError::Corrupt {
                what: "group",
                seq: cut,
            });
        }
        let group = record::decode_group(value.value()).map_err(|_| StoreError::Corrupt {
            what: "group",
            seq: first,
        })?;
        if group.header.time_ms >= before_ms {
            break;
        }
        for (index, entry) in group.entries.iter().enumerate() {
            if let Some(link) = entry.person {
                people.push((link.0, first + index as u64));
            }
            let index = u32::try_from(group.offset + index as u64).unwrap_or(u32::MAX);
            let leaf = merkle::leaf_hash(&record::leaf_bytes(index, &group.header_digest, entry));
            leaves.extend_from_slice(&leaf);
        }
        agencies.insert(group.header.caller.clone());
        if !group.header.counterpart.is_empty() {
            agencies.insert(group.header.counterpart.clone());
        }
        if !group.header.agent.is_empty() {
            agencies.insert(group.header.agent.clone());
        }
        doomed.push(first);
        cut = first + group.entries.len() as u64;
    }
    if cut > size {
        return Err(StoreError::Corrupt {
            what: "group",
            seq: size,
        });
    }
    for first in doomed {
        groups.remove(first).map_err(|e| backend(op, e))?;
    }
    let mut tiles = txn.open_table(TILES).map_err(|e| backend(op, e))?;
    let mut seq = from;
    while seq < cut {
        let tile = seq / TILE_WIDTH;
        let end = ((tile + 1) * TILE_WIDTH).min(cut);
        let mut bytes = tiles
            .get((0, tile))
            .map_err(|e| backend(op, e))?
            .map(|guard| guard.value().to_vec())
            .unwrap_or_default();
        if bytes.len() as u64 != (seq - tile * TILE_WIDTH) * 32 {
            return Err(StoreError::Corrupt { what: "tile", seq });
        }
        let at = ((seq - from) * 32) as usize;
        let upto = ((end - from) * 32) as usize;
        let Some(new) = leaves.get(at..upto) else {
            return Err(StoreError::Corrupt { what: "group", seq });
        };
        bytes.extend_from_slice(new);
        tiles
            .insert((0, tile), bytes.as_slice())
            .map_err(|e| backend(op, e))?;
        seq = end;
    }
    let mut by_person = txn.open_table(BY_PERSON).map_err(|e| backend(op, e))?;
    for (link, seq) in &people {
        by_person.remove((link, *seq)).map_err(|e| backend(op, e))?;
    }
    let mut by_agency = txn.open_table(BY_AGENCY).map_err(|e| backend(op, e))?;
    for agency in &agencies {
        let mut gone = Vec::new();
        for item in by_agency
            .range((agency.as_str(), 0)..(agency.as_str(), cut))
            .map_err(|e| backend(op, e))?
        {
            let (key, count) = item.map_err(|e| backend(op, e))?;
            let first = key.value().1;
            if first.saturating_add(count.value()) <= cut {
                gone.push(first);
            }
        }
        for first in gone {
            by_agency
                .remove((agency.as_str(), first))
                .map_err(|e| backend(op, e))?;
        }
    }
    let mut meta = txn.open_table(META).map_err(|e| backend(op, e))?;
    meta.insert("purged", cut.to_be_bytes().as_slice())
        .map_err(|e| backend(op, e))?;
    Ok(cut)
}

/// Reads records from the `groups` table, keeping the last decoded group
/// (reads of neighbouring seqs decode it once).
struct GroupReader<'t, T> {
    table: &'t T,
    last: Option<(u64, DecodedGroup)>,
}

impl<'t, T: ReadableTable<u64, &'static [u8]>> GroupReader<'t, T> {
    fn new(table: &'t T) -> Self {
        Self { table, last: None }
    }

    /// The entry of `seq` and its group's first seq (the group is cached).
    fn entry(&mut self, seq: u64) -> Result<(&Entry, &DecodedGroup), StoreError> {
        let cached = matches!(&self.last, Some((first, group))
            if *first <= seq && seq - first < group.entries.len() as u64);
        if !cached {
            let found = self
                .table
                .range(..=seq)
                .map_err(|e| backend("read record", e))?
                .next_back()
                .transpose()
                .map_err(|e| backend("read record", e))?;
            let Some((key, value)) = found else {
                return Err(StoreError::Corrupt { what: "group", seq });
            };
            let first = key.value();
            let group = record::decode_group(value.value()).map_err(|_| StoreError::Corrupt {
                what: "group",
                seq: first,
            })?;
            if seq - first >= group.entries.len() as u64 {
                return Err(StoreError::Corrupt { what: "group", seq });
            }
            self.last = Some((first, group));
        }
        match &self.last {
            Some((first, group)) => {
                let offset = (seq - first) as usize;
                match group.entries.get(offset) {
                    Some(entry) => Ok((entry, group)),
                    None => Err(StoreError::Corrupt { what: "group", seq }),
                }
            }
            None => Err(StoreError::Corrupt { what: "group", seq }),
        }
    }

    fn record(&mut self, seq: u64) -> Result<Record, StoreError> {
        let (entry, group) = self.entry(seq)?;
        let (entry, header, header_digest, offset) = (
            entry.clone(),
            group.header.clone(),
            group.header_digest,
            group.offset,
        );
        // `entry` left the group value that holds `seq` in `last`.
        let first = self.last.as_ref().map_or(seq, |(first, _)| *first);
        Ok(Record {
            seq,
            index: u32::try_from(offset + (seq - first)).unwrap_or(u32::MAX),
            header,
            header_digest,
            entry,
        })
    }
}

/// The tree's perfect-subtree hashes, read from the tiles. Nodes on levels
/// that are not a multiple of 8 are hashed from the stored level below;
/// tiles read once are kept for the life of the source (one proof).
///
/// Leaf hashes (level 0) are stored only for purged records; the others are
/// hashed from the records' bodies in `groups` (D102).
struct TileSource<'t, T, G> {
    table: &'t T,
    groups: GroupReader<'t, G>,
    /// The log's size: the last leaf tile ends here.
    size: u64,
    cache: HashMap<(u8, u64), Vec<u8>>,
}

impl<'t, T, G> TileSource<'t, T, G>
where
    T: ReadableTable<(u8, u64), &'static [u8]>,
    G: ReadableTable<u64, &'static [u8]>,
{
    fn new(table: &'t T, groups: &'t G, size: u64) -> Self {
        Self {
            table,
            groups: GroupReader::new(groups),
            size,
            cache: HashMap::new(),
        }
    }

    fn tile(&mut self, band: u8, tile: u64) -> Result<&[u8], StoreError> {
        if !self.cache.contains_key(&(band, tile)) {
            let mut bytes = self
                .table
                .get((band, tile))
                .map_err(|e| backend("read tile", e))?
                .map(|guard| guard.value().to_vec())
                .unwrap_or_default();
            if band == 0 {
                self.hash_leaves(tile, &mut bytes)?;
            }
            self.cache.insert((band, tile), bytes);
        }
        Ok(self
            .cache
            .get(&(band, tile))
            .map(Vec::as_slice)
            .unwrap_or_default())
    }

    /// Completes leaf tile `tile`, whose stored part (the leaves of purged
    /// records) is `bytes`, with the leaf hashes of the kept records' bodies.
    fn hash_leaves(&mut self, tile: u64, bytes: &mut Vec<u8>) -> Result<(), StoreError> {
        let start = tile.saturating_mul(TILE_WIDTH);
        let end = start.saturating_add(TILE_WIDTH).min(self.size);
        if !bytes.len().is_multiple_of(32) || bytes.len() as u64 > TILE_WIDTH * 32 {
            return Err(StoreError::Corrupt {
                what: "tile",
                seq: start,
            });
        }
        let stored = bytes.len() as u64 / 32;
        for seq in start + stored..end {
            bytes.extend_from_slice(&self.groups.record(seq)?.leaf_hash());
        }
        Ok(())
    }
}

impl<T, G> NodeSource for TileSource<'_, T, G>
where
    T: ReadableTable<(u8, u64), &'static [u8]>,
    G: ReadableTable<u64, &'static [u8]>,
{
    type Error = StoreError;

    fn node(&mut self, level: u8, index: u64) -> Result<Hash, StoreError> {
        let band = level / 8;
        let height = u32::from(level % 8);
        let missing = StoreError::Corrupt {
            what: "tile",
            seq: index.checked_shl(u32::from(level)).unwrap_or(u64::MAX),
        };
        // The 2^height stored nodes below, all in one tile.
        let Some(first) = index.checked_mul(1 << height) else {
            return Err(missing);
        };
        let count = 1usize << height;
        let start = (first % TILE_WIDTH) as usize * 32;
        let tile = self.tile(band, first / TILE_WIDTH)?;
        let Some(bytes) = tile.get(start..start + count * 32) else {
            return Err(missing);
        };
        let mut level_hashes: Vec<Hash> = bytes
            .chunks_exact(32)
            .map(|chunk| {
                let mut hash = [0; 32];
                hash.copy_from_slice(chunk);
                hash
            })
            .collect();
        while level_hashes.len() > 1 {
            level_hashes = level_hashes
                .chunks_exact(2)
                .map(|pair| merkle::node_hash(&pair[0], &pair[1]))
                .collect();
        }
        level_hashes.pop().ok_or(missing)
    }
}

fn proof_error(error: ProofError<StoreError>) -> StoreError {
    match error {
        ProofError::Source(e) => e,
        ProofError::Merkle(e) => StoreError::Proof(e),
    }
}

fn begin_write(db: &Database, op: &'static str) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(|e| backend(op, e))?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| backend(op, e))?;
    Ok(txn)
}

/// Maps an error of opening the database file.
fn open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            StoreError::Locked {
                path: path.to_path_buf(),
            }
        }
        other => backend("open", other),
    }
}

/// Maps a redb error to the store's, naming the operation.
fn backend(op: &'static str, error: impl Into<::redb::Error>) -> StoreError {
    match error.into() {
        ::redb::Error::Io(source) => StoreError::Io { op, source },
        ::redb::Error::PreviousIo | ::redb::Error::DatabaseClosed => StoreError::NeedsReopen { op },
        ::redb::Error::DatabaseAlreadyOpen | ::redb::Error::LockProtocolMismatch => {
            StoreError::Locked {
                path: PathBuf::new(),
            }
        }
        other => StoreError::Damaged {
            op,
            detail: other.to_string(),
        },
    }
}

fn get_meta(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(meta
        .get(name)
        .map_err(|e| backend("read meta", e))?
        .map(|guard| guard.value().to_vec()))
}

fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &'static str,
) -> Result<u64, StoreError> {
    match get_meta(meta, name)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                what: "meta",
                seq: 0,
            }),
    }
}

fn hashes(bytes: &[u8]) -> Option<Vec<Hash>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|chunk| {
                let mut hash = [0; 32];
                hash.copy_from_slice(chunk);
                hash
            })
            .collect(),
    )
}

fn encode_redemption(redemption: &Redemption) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + redemption.caller.len());
    out.extend_from_slice(&redemption.seq.to_be_bytes());
    out.extend_from_slice(&redemption.epoch.to_be_bytes());
    out.extend_from_slice(redemption.caller.as_bytes());
    out
}

fn decode_redemption(bytes: &[u8]) -> Result<Redemption, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: "redemption",
        seq: 0,
    };
    let (seq, rest) = bytes.split_first_chunk::<8>().ok_or_else(corrupt)?;
    let (epoch, caller) = rest.split_first_chunk::<4>().ok_or_else(corrupt)?;
    let caller = String::from_utf8(caller.to_vec()).map_err(|_| corrupt())?;
    Ok(Redemption {
        seq: u64::from_be_bytes(*seq),
        epoch: u32::from_be_bytes(*epoch),
        caller,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::ops::Bound;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use ::redb::StorageBackend;
    use ::redb::backends::FileBackend;

    use super::*;
    use crate::record::Header;

    /// A real file whose writes and syncs fail while `fail` is set: the
    /// disk-full or `prlimit --fsize` case.
    #[derive(Debug)]
    struct Failing {
        file: FileBackend,
        fail: Arc<AtomicBool>,
    }

    impl Failing {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected write failure"))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Failing {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
        fn try_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, ::redb::BackendError> {
            self.file.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, ::redb::BackendError> {
            self.file.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), ::redb::BackendError> {
            self.file.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), ::redb::BackendError> {
            self.file.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), ::redb::BackendError> {
            self.file.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, ::redb::BackendError> {
            self.file.query_lock_range(start, end)
        }
    }

    fn open_failing(path: &Path, fail: &Arc<AtomicBool>) -> RedbStore {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        let backend = Failing {
            file: FileBackend::new(file).unwrap(),
            fail: fail.clone(),
        };
        let db = Database::builder().create_with_backend(backend).unwrap();
        RedbStore::from_database(db, path).unwrap()
    }

    fn derive(time_ms: u64, people: std::ops::Range<u8>) -> Append {
        Append {
            groups: vec![Group {
                header: Header {
                    time_ms,
                    operation: Operation::Derive,
                    caller: "A".into(),
                    counterpart: String::new(),
                    affair: String::new(),
                    items: Vec::new(),
                    non_disclosure_until: 0,
                    policy_version: [0; 32],
                    batch_id: String::new(),
                    note: String::new(),
                    count: 0,
                    agent: String::new(),
                },
                entries: people
                    .map(|p| Entry {
                        outcome: Outcome::Done,
                        epoch: 1,
                        serial: None,
                        person: Some(PersonLink([p; 16])),
                    })
                    .collect(),
            }],
            refusals: Vec::new(),
            now_ms: time_ms,
            policies: Vec::new(),
            prepared: Vec::new(),
            usage: Vec::new(),
            persons: Vec::new(),
            marks: Default::default(),
        }
    }

    /// The persons table: entries replace by (table, key), are written
    /// with the append's records and survive reopening; `person_seen`
    /// finds a person in indexed and not yet indexed records alike.
    #[test]
    fn persons_entries_and_person_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let mut store = RedbStore::open(&path).unwrap();
        let entry = |table: u8, key: u8, value: &[u8]| PersonsEntry {
            table,
            key: [key; 16],
            value: value.to_vec(),
        };
        let mut append = derive(1_000, 0..4);
        append.persons = vec![entry(1, 9, b"first"), entry(2, 9, b"person")];
        store.append(append).unwrap();
        assert_eq!(store.size(), 4);
        // Only the persons entries: a commit of its own.
        store
            .append(Append {
                persons: vec![entry(1, 9, b"second"), entry(1, 8, b"other")],
                now_ms: 1_000,
                ..Append::default()
            })
            .unwrap();
        let expected = vec![
            entry(1, 8, b"other"),
            entry(1, 9, b"second"),
            entry(2, 9, b"person"),
        ];
        assert_eq!(store.persons().unwrap(), expected);
        // Not indexed yet, then indexed: seen both ways; others never.
        assert_eq!(store.indexed(), 0);
        assert!(store.person_seen(&PersonLink([2; 16])).unwrap());
        assert!(!store.person_seen(&PersonLink([7; 16])).unwrap());
        store.index_people(100).unwrap();
        assert_eq!(store.indexed(), 4);
        assert!(store.person_seen(&PersonLink([3; 16])).unwrap());
        assert!(!store.person_seen(&PersonLink([7; 16])).unwrap());
        drop(store);
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(store.persons().unwrap(), expected);
        assert!(store.person_seen(&PersonLink([0; 16])).unwrap());
    }

    /// A copy taken while the store is open is what a crash leaves: its
    /// last commit is a plain (one-phase) one. A flipped byte in a page of
    /// that commit makes redb fall back to the commit before, silently
    /// losing records; `open_checked` refuses instead, and opens the
    /// undamaged copy (recovery without rollback) as it is.
    #[test]
    fn open_checked_refuses_to_roll_back_a_damaged_last_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let mut store = RedbStore::open(&path).unwrap();
        store.append(derive(1, 0..10)).unwrap();
        let mut last = derive(2, 10..20);
        last.groups[0].header.caller = "the-last-commit-only".into();
        store.append(last).unwrap();
        let crashed = std::fs::read(&path).unwrap();
        drop(store);
        let at = crashed
            .windows(20)
            .position(|w| w == b"the-last-commit-only")
            .unwrap();

        let intact = dir.path().join("intact.redb");
        std::fs::write(&intact, &crashed).unwrap();
        assert_eq!(RedbStore::open_checked(&intact).unwrap().size(), 20);
        // A plain open of a crash's copy rebuilds, and says so; once
        // closed, the file opens clean.
        std::fs::write(&intact, &crashed).unwrap();
        let reopened = RedbStore::open(&intact).unwrap();
        assert_eq!(
            (reopened.size(), reopened.recovery()),
            (20, Recovery::Rebuilt)
        );
        drop(reopened);
        assert_eq!(
            RedbStore::open(&intact).unwrap().recovery(),
            Recovery::Clean
        );

        let mut flipped = crashed.clone();
        flipped[at] ^= 1;
        let damaged = dir.path().join("damaged.redb");
        std::fs::write(&damaged, &flipped).unwrap();
        let refused = RedbStore::open_checked(&damaged);
        assert!(
            matches!(&refused, Err(StoreError::Damaged { detail, .. })
                if detail.contains("refusing to roll it back")),
            "{refused:?}"
        );
        // What a plain open does with the same file: the last commit is
        // gone, and the store says it rolled back.
        std::fs::write(&damaged, &flipped).unwrap();
        let rolled = RedbStore::open(&damaged).unwrap();
        assert_eq!(
            (rolled.size(), rolled.recovery()),
            (10, Recovery::RolledBack)
        );
        assert!(matches!(
            RedbStore::open_checked(dir.path().join("none.redb")),
            Err(StoreError::Missing { .. })
        ));
    }

    #[test]
    fn a_failed_commit_advances_nothing_and_a_reopen_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let mut store = open_failing(&path, &fail);
        store.append(derive(1, 0..10)).unwrap();
        let (size, root) = (store.size(), store.root());

        fail.store(true, Ordering::SeqCst);
        let failed = store.append(derive(2, 10..20));
        assert!(
            matches!(failed, Err(StoreError::Io { op: "append", .. })),
            "{failed:?}"
        );
        assert_eq!((store.size(), store.root()), (size, root));
        // The handle refuses writes until it is reopened, even once the
        // disk works again; reads still answer.
        fail.store(false, Ordering::SeqCst);
        assert!(matches!(
            store.append(derive(3, 20..30)),
            Err(StoreError::NeedsReopen { op: "append" })
        ));
        assert!(matches!(
            store.index_people(10),
            Err(StoreError::NeedsReopen { .. })
        ));
        assert_eq!(store.record(9).unwrap().map(|r| r.seq), Some(9));
        drop(store);

        // Reopened: the failed commit landed wholly or not at all, and the
        // state in meta matches the tiles.
        let mut store = RedbStore::open(&path).unwrap();
        assert!(store.size() == 10 || store.size() == 20, "{}", store.size());
        let mut frontier = Frontier::new();
        for seq in 0..store.size() {
            frontier.append(store.leaf(seq).unwrap(), |_, _, _| {});
        }
        assert_eq!(store.root(), frontier.root());
        let first = store.size();
        let done = store.append(derive(4, 30..31)).unwrap();
        assert_eq!(done.groups[0].first_seq, first);
    }

    #[test]
    fn an_append_with_nothing_to_do_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let mut store = open_failing(&dir.path().join("audit.redb"), &fail);
        store.append(derive(1, 0..3)).unwrap();
        // Any write would fail now: an idle append (no groups, no refusals,
        // no tally due) must not commit.
        fail.store(true, Ordering::SeqCst);
        let done = store.append(Append::default()).unwrap();
        assert_eq!((done.size, done.tallied), (3, 0));
        assert!(done.groups.is_empty());
        // A refusal to tally is work: it needs a commit.
        let tallied = store.append(Append {
            refusals: vec![crate::store::Refusal {
                agency: "A".into(),
                reason: "malformed".into(),
                minute: 0,
                count: 1,
            }],
            ..Append::default()
        });
        assert!(matches!(tallied, Err(StoreError::Io { .. })), "{tallied:?}");
    }

    #[test]
    fn quota_usage_adds_up_with_the_records_survives_reopening_and_keeps_two_days() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let used = |day, agency: &str, count| Usage {
            day,
            agency: agency.into(),
            operation: "derive".into(),
            count,
        };
        {
            let mut store = RedbStore::open(&path).unwrap();
            // Usage rides with the records of the call that used it.
            let mut append = derive(1, 0..3);
            append.usage = vec![used(10, "A", 3)];
            store.append(append).unwrap();
            // Usage alone is work too: it needs a commit.
            store
                .append(Append {
                    usage: vec![used(10, "A", 2), used(10, "B", 7)],
                    ..Append::default()
                })
                .unwrap();
            assert_eq!(
                store.usage(10).unwrap(),
                vec![used(10, "A", 5), used(10, "B", 7)]
            );
            assert!(store.usage(11).unwrap().is_empty());
        }
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.usage(10).unwrap(),
            vec![used(10, "A", 5), used(10, "B", 7)]
        );
        store
            .append(Append {
                usage: vec![used(11, "A", 1)],
                ..Append::default()
            })
            .unwrap();
        // Yesterday stays (a count written just before midnight may land
        // after it); the day before is dropped.
        assert_eq!(store.usage(10).unwrap().len(), 2);
        store
            .append(Append {
                usage: vec![used(12, "A", 1)],
                ..Append::default()
            })
            .unwrap();
        assert!(store.usage(10).unwrap().is_empty());
        assert_eq!(store.usage(11).unwrap(), vec![used(11, "A", 1)]);
    }

    #[test]
    fn a_probe_writes_and_removes_scratch_and_fails_while_writes_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.redb");
        let fail = Arc::new(AtomicBool::new(false));
        let mut store = open_failing(&path, &fail);
        store.append(derive(1, 0..10)).unwrap();
        let (size, root) = (store.size(), store.root());
        let before = std::fs::metadata(&path).unwrap().len();

        // A probe of 4 MiB really writes (the file grows to take it) and
        // leaves nothing behind.
        store.probe(4 << 20).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() >= before + (4 << 20));
        assert_eq!((store.size(), store.root()), (size, root));
        {
            let txn = store.read("test").unwrap();
            let probe = txn.open_table(PROBE).unwrap();
            assert!(probe.iter().unwrap().next().is_none());
        }

        fail.store(true, Ordering::SeqCst);
        assert!(store.probe(1 << 20).is_err());
        fail.store(false, Ordering::SeqCst);
        // Like a failed append, a failed probe asks for a reopen.
        assert!(matches!(
            store.probe(1 << 20),
            Err(StoreError::NeedsReopen { op: "probe" })
        ));
        drop(store);
        let mut store = RedbStore::open(&path).unwrap();
        assert_eq!((store.size(), store.root()), (size, root));
        store.probe(1 << 20).unwrap();
        store.append(derive(2, 10..11)).unwrap();
    }
}
