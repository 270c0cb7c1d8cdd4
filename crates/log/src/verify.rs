//! Checking a whole store against itself, its signatures and checkpoints
//! kept outside it: what `fugo audit verify` runs.
//!
//! [`verify`] reads every record in sequence order, recomputes its leaf
//! from its body (a purged record contributes its stored leaf hash, all that
//! is left of it), rebuilds the tree with a [`Frontier`], and checks in this
//! order, stopping at the first [`Problem`]:
//!
//! 1. every record's body decodes, and every stored node of the tree (the
//!    store's tiles: the roots of each 256 records, of each 65,536, …)
//!    equals the node recomputed from the records, so a changed, moved or
//!    replaced record is named by the 256 records it lies among; nothing is
//!    stored beyond the log's size, and the store's own frontier (its size
//!    and root) agrees, which covers the records after the last whole 256;
//! 2. every checkpoint kept in the store carries a valid signature by the
//!    trusted key, is kept under its own size, and its root is the root
//!    recomputed at that size;
//! 3. every anchor (a signed checkpoint a client kept outside the server)
//!    carries a valid signature and its root is the recomputed root at its
//!    size — the check that catches a store rebuilt from scratch and signed
//!    again with the same key, which passes 1 and 2.
//!
//! Records come before checkpoints because a bad record is the cause a bad
//! checkpoint would only be the symptom of.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::checkpoint::{Checkpoint, LogVerifier};
use crate::merkle::{Frontier, Hash, empty_root};
use crate::store::{Store, StoreError, StoredRecord};

/// Records read per step.
const PAGE: usize = 4096;

/// A signed checkpoint kept outside the store.
#[derive(Clone, Debug)]
pub struct Anchor {
    /// Where it came from (a file name), for messages.
    pub name: String,
    /// The signed note text.
    pub note: String,
}

/// What held, when everything did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Records in the log.
    pub size: u64,
    /// The recomputed root of the whole log.
    pub root: Hash,
    /// Records whose bodies were purged (only their leaf hashes checked in).
    pub purged: u64,
    /// Checkpoints kept in the store, all checked.
    pub checkpoints: usize,
    /// The largest checkpointed size (0 when none): records from here on
    /// are not yet covered by a signature.
    pub signed_size: u64,
    /// Anchors checked.
    pub anchors: usize,
}

/// The first thing found wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum Problem {
    /// A record's body is missing, undecodable, or does not match its leaf.
    Record {
        /// The record.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// Records that no longer match the tree's stored nodes or roots: one
    /// of them (which one, the log's hashes cannot tell) was changed.
    Records {
        /// The first record that may have been changed.
        from: u64,
        /// The last.
        to: u64,
        /// What is wrong.
        what: String,
    },
    /// A stored node of the tree (above the leaves) differs from the one
    /// recomputed from the records.
    Node {
        /// The tree level (leaves are 0).
        level: u8,
        /// Its index on that level.
        index: u64,
        /// What is wrong.
        what: String,
    },
    /// The store as a whole contradicts its records.
    Store(String),
    /// A checkpoint kept in the store is wrong.
    Checkpoint {
        /// The tree size it is kept under.
        size: u64,
        /// What is wrong.
        what: String,
    },
    /// A checkpoint kept outside the store does not fit the log.
    Anchor {
        /// Where it came from.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The store could not be read.
    Read(StoreError),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Record { seq, what } => write!(f, "record {seq}: {what}"),
            Problem::Records { from, to, what } if from == to => {
                write!(f, "record {from}: {what}")
            }
            Problem::Records { from, to, what } => write!(f, "records {from}..={to}: {what}"),
            Problem::Node { level, index, what } => {
                let first = index.checked_shl(u32::from(*level)).unwrap_or(u64::MAX);
                let last = (index + 1)
                    .checked_shl(u32::from(*level))
                    .map_or(u64::MAX, |end| end - 1);
                write!(
                    f,
                    "tree node (level {level}, index {index}) over records {first}..={last}: {what}"
                )
            }
            Problem::Store(what) => write!(f, "store: {what}"),
            Problem::Checkpoint { size, what } => {
                write!(f, "checkpoint of size {size} kept in the store: {what}")
            }
            Problem::Anchor { name, what } => write!(f, "checkpoint {name}: {what}"),
            Problem::Read(error) => write!(f, "cannot read the store: {error}"),
        }
    }
}

impl std::error::Error for Problem {}

/// Maps a read error to the record it concerns when it names one.
fn read_problem(error: StoreError) -> Problem {
    match error {
        StoreError::Corrupt { what, seq } => Problem::Record {
            seq,
            what: format!("its stored {what} is missing or cannot be decoded"),
        },
        other => Problem::Read(other),
    }
}

/// Checks `store` as the module doc says, trusting `verifier` for every
/// signature. Returns the first problem found.
pub fn verify<S: Store + ?Sized>(
    store: &mut S,
    verifier: &LogVerifier,
    anchors: &[Anchor],
) -> Result<Report, Problem> {
    let size = store.size();
    let kept = store.checkpoints().map_err(Problem::Read)?;

    // The sizes whose roots the checkpoints need.
    let mut opened_anchors = Vec::with_capacity(anchors.len());
    let mut wanted = BTreeSet::new();
    for (kept_size, _) in &kept {
        wanted.insert(*kept_size);
    }
    for anchor in anchors {
        let opened = verifier.open(&anchor.note);
        if let Ok(checkpoint) = &opened {
            wanted.insert(checkpoint.size);
        }
        opened_anchors.push(opened);
    }
    let mut roots: BTreeMap<u64, Hash> = BTreeMap::new();
    if wanted.contains(&0) {
        roots.insert(0, empty_root());
    }

    // 1. The records and the stored tree.
    let levels: Vec<u8> = store.stored_levels();
    let mut frontier = Frontier::new();
    let mut purged = 0u64;
    let mut from = 0u64;
    while from < size {
        let records = store.records(from, PAGE).map_err(read_problem)?;
        if records.is_empty() {
            return Err(Problem::Record {
                seq: from,
                what: "missing from the store".into(),
            });
        }
        // Completed nodes per stored level: (index, hash) in index order.
        let mut computed: BTreeMap<u8, Vec<(u64, Hash)>> = BTreeMap::new();
        for (offset, record) in records.iter().enumerate() {
            let seq = from + offset as u64;
            if record.seq() != seq {
                return Err(Problem::Record {
                    seq,
                    what: format!("the store returned record {} in its place", record.seq()),
                });
            }
            let leaf = match record {
                StoredRecord::Body(record) => record.leaf_hash(),
                StoredRecord::Purged { leaf, .. } => {
                    purged += 1;
                    *leaf
                }
            };
            frontier.append(leaf, |level, index, hash| {
                if levels.contains(&level) {
                    computed.entry(level).or_default().push((index, *hash));
                }
            });
            if wanted.contains(&frontier.size()) {
                roots.insert(frontier.size(), frontier.root());
            }
        }
        for (level, nodes) in &computed {
            compare_nodes(store, *level, nodes)?;
        }
        from += records.len() as u64;
    }
    // Nothing stored beyond the log, and the store's own state agrees.
    for &level in &levels {
        let complete = size.checked_shr(u32::from(level)).unwrap_or(0);
        let extra = store
            .stored_nodes(level, complete, 1)
            .map_err(read_problem)?;
        if !extra.is_empty() {
            return Err(Problem::Store(format!(
                "tree nodes are stored beyond the log's size {size} (level {level}, index {complete}): \
                 records were removed after they were added, or the size was changed"
            )));
        }
    }
    if store.root() != frontier.root() {
        // The records whose root no longer matches: after the last whole
        // 256 (the stored nodes below matched) and, where a kept checkpoint
        // already disagrees, before it.
        let tail = size - size % 256;
        let (from, bad) = suspects(&kept, verifier, &roots, tail);
        let also = bad.map_or(String::new(), |bad| {
            format!(" and from the checkpoint signed at size {bad}")
        });
        return Err(Problem::Records {
            from,
            to: bad.unwrap_or(size).saturating_sub(1),
            what: format!(
                "one of them was changed, moved or replaced, or the store's size or root was: \
                 the root recomputed from the records differs from the store's own root for \
                 size {size}{also}"
            ),
        });
    }

    // 2. The checkpoints kept in the store.
    for (kept_size, note) in &kept {
        let kept_size = *kept_size;
        let bad = |what: String| Problem::Checkpoint {
            size: kept_size,
            what,
        };
        let checkpoint = verifier
            .open(note)
            .map_err(|error| bad(format!("its signature does not verify: {error}")))?;
        if checkpoint.size != kept_size {
            return Err(bad(format!(
                "it says size {}, but is kept under size {kept_size}",
                checkpoint.size
            )));
        }
        check_root(&checkpoint, size, &roots).map_err(|what| {
            // Name the records between the last checkpoint that matched
            // and this one: one of them is what changed.
            match suspects(&kept, verifier, &roots, 0) {
                (from, Some(to)) if to == kept_size && from < to => bad(format!(
                    "{what}: one of records {from}..={} was changed, moved or replaced",
                    to - 1
                )),
                _ => bad(what),
            }
        })?;
    }

    // 3. The anchors kept outside.
    for (anchor, opened) in anchors.iter().zip(opened_anchors) {
        let bad = |what: String| Problem::Anchor {
            name: anchor.name.clone(),
            what,
        };
        let checkpoint = opened.map_err(|error| {
            bad(format!(
                "its signature does not verify under the log's key: {error}"
            ))
        })?;
        check_root(&checkpoint, size, &roots).map_err(|what| {
            bad(format!(
                "{what}: the log was rewritten, cut or replaced after this checkpoint was seen"
            ))
        })?;
    }

    Ok(Report {
        size,
        root: frontier.root(),
        purged,
        checkpoints: kept.len(),
        signed_size: kept.last().map_or(0, |(size, _)| *size),
        anchors: anchors.len(),
    })
}

/// Where the records stop matching the kept checkpoints: the size of the
/// last checkpoint (at or after `floor`) whose root is the recomputed one,
/// or `floor`, and the size of the first one whose root is not, if any.
/// Checkpoints with a bad signature are skipped (step 2 names them).
fn suspects(
    kept: &[(u64, String)],
    verifier: &LogVerifier,
    roots: &BTreeMap<u64, Hash>,
    floor: u64,
) -> (u64, Option<u64>) {
    let mut good = floor;
    for (kept_size, note) in kept {
        let Ok(checkpoint) = verifier.open(note) else {
            continue;
        };
        if checkpoint.size != *kept_size {
            continue;
        }
        match roots.get(kept_size) {
            Some(root) if *root == checkpoint.root => good = good.max(*kept_size),
            Some(_) if *kept_size > good => return (good, Some(*kept_size)),
            _ => {}
        }
    }
    (good, None)
}

/// The checkpoint's root against the recomputed root at its size.
fn check_root(
    checkpoint: &Checkpoint,
    size: u64,
    roots: &BTreeMap<u64, Hash>,
) -> Result<(), String> {
    if checkpoint.size > size {
        return Err(format!(
            "it covers {} records but the log has only {size}",
            checkpoint.size
        ));
    }
    match roots.get(&checkpoint.size) {
        Some(root) if *root == checkpoint.root => Ok(()),
        Some(_) => Err(format!(
            "its root differs from the root recomputed from the first {} records",
            checkpoint.size
        )),
        None => Err(format!(
            "no root was recomputed at size {}",
            checkpoint.size
        )),
    }
}

/// Compares nodes recomputed on one stored level with the stored ones.
fn compare_nodes<S: Store + ?Sized>(
    store: &mut S,
    level: u8,
    nodes: &[(u64, Hash)],
) -> Result<(), Problem> {
    let Some(&(first, _)) = nodes.first() else {
        return Ok(());
    };
    let stored = store
        .stored_nodes(level, first, nodes.len())
        .map_err(read_problem)?;
    for (position, (index, hash)) in nodes.iter().enumerate() {
        let what = match stored.get(position) {
            Some(kept) if kept == hash => continue,
            Some(_) if level == 0 => {
                "its body does not match the leaf hash stored for it \
                 (the record was changed, moved or replaced)"
            }
            Some(_) => {
                "the stored hash differs from the one recomputed from the records \
                 (one of them was changed, moved or replaced, or the stored node was)"
            }
            None if level == 0 => "no leaf hash is stored for it",
            None => "it is missing from the store",
        };
        return Err(if level == 0 {
            Problem::Record {
                seq: *index,
                what: what.into(),
            }
        } else {
            Problem::Node {
                level,
                index: *index,
                what: what.into(),
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogSigner;
    use crate::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
    use crate::store::{Append, RedbStore};

    const NAME: &str = "verify.test/log";

    fn append(store: &mut RedbStore, people: std::ops::Range<u16>) {
        let group = Group {
            header: Header {
                time_ms: 1_000,
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
                    person: Some(PersonLink([p as u8; 16])),
                })
                .collect(),
        };
        store
            .append(Append {
                groups: vec![group],
                now_ms: 1_000,
                ..Append::default()
            })
            .unwrap();
    }

    fn sign(store: &mut RedbStore, signer: &LogSigner) -> String {
        let note = signer
            .sign(&Checkpoint {
                origin: NAME.into(),
                size: store.size(),
                root: store.root(),
            })
            .unwrap();
        store.add_checkpoint(store.size(), &note).unwrap();
        note
    }

    #[test]
    fn an_intact_store_verifies_across_tile_levels_and_a_foreign_anchor_fails() {
        let dir = tempfile::tempdir().unwrap();
        let signer = LogSigner::from_seed(NAME, &[3; 32]).unwrap();
        let mut store = RedbStore::open(dir.path().join("a.redb")).unwrap();
        // More than 256 leaves: a level-8 node is stored and compared.
        append(&mut store, 0..300);
        let early = sign(&mut store, &signer);
        append(&mut store, 300..700);
        sign(&mut store, &signer);
        let anchor = Anchor {
            name: "early".into(),
            note: early,
        };
        let report = verify(&mut store, &signer.verifier(), &[anchor]).unwrap();
        assert_eq!(
            (report.size, report.checkpoints, report.anchors),
            (700, 2, 1)
        );
        assert_eq!(report.signed_size, 700);

        // A store rebuilt with other records and signed with the same key
        // passes alone, and fails against the checkpoint seen before.
        let mut rebuilt = RedbStore::open(dir.path().join("b.redb")).unwrap();
        append(&mut rebuilt, 1000..1700);
        let early_size = 300;
        let note = sign(&mut rebuilt, &signer);
        assert!(verify(&mut rebuilt, &signer.verifier(), &[]).is_ok());
        let seen = Anchor {
            name: "seen".into(),
            note: signer
                .sign(&Checkpoint {
                    origin: NAME.into(),
                    size: early_size,
                    root: store.root_at(early_size).unwrap(),
                })
                .unwrap(),
        };
        let problem = verify(&mut rebuilt, &signer.verifier(), &[seen]).unwrap_err();
        assert!(
            matches!(&problem, Problem::Anchor { name, .. } if name == "seen"),
            "{problem}"
        );
        // Under another key nothing the store holds verifies.
        let other = LogSigner::from_seed(NAME, &[4; 32]).unwrap();
        let problem = verify(&mut rebuilt, &other.verifier(), &[]).unwrap_err();
        assert!(
            matches!(problem, Problem::Checkpoint { size: 700, .. }),
            "{problem}"
        );
        drop(note);

        // Purged bodies: their stored leaf hashes still make the tree.
        assert_eq!(store.purge_before(2_000).unwrap(), 700);
        let report = verify(&mut store, &signer.verifier(), &[]).unwrap();
        assert_eq!((report.size, report.purged), (700, 700));
    }
}
