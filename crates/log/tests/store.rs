//! The redb store from outside, on real files in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeSet;

use fugo_log::merkle::{self, Frontier, Hash};
use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink, leaf_bytes};
use fugo_log::store::{Append, Marks, RedbStore, Refusal, Store, StoreError, StoredRecord};

fn header(operation: Operation, caller: &str, counterpart: &str, time_ms: u64) -> Header {
    Header {
        time_ms,
        operation,
        caller: caller.into(),
        counterpart: counterpart.into(),
        affair: "児童手当".into(),
        items: vec!["income".into(), "residence".into()],
        non_disclosure_until: 0,
        policy_version: [3; 32],
        batch_id: format!("req-{time_ms}"),
        note: String::new(),
        count: 0,
        agent: String::new(),
    }
}

fn entry(person: Option<u8>, serial: Option<u8>) -> Entry {
    Entry {
        outcome: Outcome::Done,
        epoch: 1,
        serial: serial.map(|s| [s; 16]),
        person: person.map(|p| PersonLink([p; 16])),
    }
}

fn group(operation: Operation, caller: &str, time_ms: u64, entries: Vec<Entry>) -> Group {
    Group {
        header: header(operation, caller, "", time_ms),
        entries,
    }
}

fn append(groups: Vec<Group>) -> Append {
    Append {
        groups,
        refusals: Vec::new(),
        now_ms: 0,
        policies: Vec::new(),
        prepared: Vec::new(),
        usage: Vec::new(),
        persons: Vec::new(),
        marks: Marks::default(),
    }
}

/// A store with `n` Derive records for people 0..=255 (cycling), in groups
/// of `per_group`.
fn filled(store: &mut RedbStore, n: u64, per_group: u64) {
    let mut seq = store.size();
    let end = seq + n;
    while seq < end {
        let count = per_group.min(end - seq);
        let entries = (seq..seq + count)
            .map(|s| entry(Some((s % 256) as u8), None))
            .collect();
        store
            .append(append(vec![group(Operation::Derive, "A001", seq, entries)]))
            .unwrap();
        seq += count;
    }
}

fn open(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(dir.path().join("audit.redb")).unwrap()
}

fn leaves(store: &mut RedbStore) -> Vec<Hash> {
    (0..store.size())
        .map(|seq| store.leaf(seq).unwrap())
        .collect()
}

#[test]
fn append_reads_back_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut head = header(Operation::Seal, "A001", "B002", 1_764_000_000_000);
    head.non_disclosure_until = 1_900_000_000;
    head.note = "after 12".into();
    head.count = 7;
    let entries = vec![
        Entry {
            outcome: Outcome::Done,
            epoch: 4,
            serial: Some([8; 16]),
            person: Some(PersonLink([9; 16])),
        },
        Entry {
            outcome: Outcome::Expired,
            epoch: 0,
            serial: None,
            person: None,
        },
    ];
    let done = store
        .append(append(vec![Group {
            header: head.clone(),
            entries: entries.clone(),
        }]))
        .unwrap();
    assert_eq!(done.groups[0].first_seq, 0);
    assert_eq!(done.size, 2);
    drop(store);
    let mut store = open(&dir);
    for (seq, want) in entries.iter().enumerate() {
        let record = store.record(seq as u64).unwrap().unwrap();
        assert_eq!(record.seq, seq as u64);
        assert_eq!(*record.header, head);
        assert_eq!(record.header_digest, fugo_log::record::header_digest(&head));
        assert_eq!(&record.entry, want);
        assert_eq!(store.leaf(seq as u64).unwrap(), record.leaf_hash());
    }
    assert_eq!(store.record(2).unwrap(), None);
}

#[test]
fn seqs_are_contiguous_across_appends_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let done = store
        .append(append(vec![
            group(Operation::Derive, "A", 1, vec![entry(Some(1), None); 3]),
            group(Operation::Derive, "A", 2, vec![entry(Some(2), None); 600]),
        ]))
        .unwrap();
    let firsts: Vec<u64> = done.groups.iter().map(|g| g.first_seq).collect();
    assert_eq!(firsts, [0, 3]);
    let root = store.root();
    drop(store);
    // The whole-file check that `audit verify` uses accepts an intact file.
    let checked = RedbStore::open_checked(dir.path().join("audit.redb")).unwrap();
    assert_eq!((checked.size(), checked.root()), (603, root));
    drop(checked);
    let mut store = open(&dir);
    assert_eq!(store.size(), 603);
    assert_eq!(store.root(), root);
    let done = store
        .append(append(vec![group(
            Operation::Derive,
            "A",
            3,
            vec![entry(None, None)],
        )]))
        .unwrap();
    assert_eq!(done.groups[0].first_seq, 603);
    let seqs: Vec<u64> = store
        .records(0, 1000)
        .unwrap()
        .iter()
        .map(StoredRecord::seq)
        .collect();
    assert_eq!(seqs, (0..604).collect::<Vec<_>>());
}

#[test]
fn root_equals_a_frontier_rebuilt_from_all_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    filled(&mut store, 70_000, 9_000);
    let leaves = leaves(&mut store);
    let mut frontier = Frontier::new();
    let mut roots = vec![frontier.root()];
    for (seq, leaf) in leaves.iter().enumerate() {
        // Every leaf is the hash of its record's leaf bytes.
        if seq % 997 == 0 {
            let record = store.record(seq as u64).unwrap().unwrap();
            let bytes = leaf_bytes(record.index, &record.header_digest, &record.entry);
            assert_eq!(merkle::leaf_hash(&bytes), *leaf);
        }
        frontier.append(*leaf, |_, _, _| {});
        roots.push(frontier.root());
    }
    assert_eq!(store.root(), frontier.root());
    for size in [0, 1, 2, 255, 256, 257, 65_535, 65_536, 65_537, 69_999] {
        assert_eq!(store.root_at(size).unwrap(), roots[size as usize], "{size}");
    }
    assert!(matches!(
        store.root_at(70_001),
        Err(StoreError::OutOfRange { .. })
    ));
}

#[test]
fn proofs_from_the_store_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    filled(&mut store, 66_000, 20_000);
    let sizes = [1, 7, 256, 300, 65_536, 65_537, 66_000];
    for &size in &sizes {
        let root = store.root_at(size).unwrap();
        for seq in [0, 1, size / 3, size / 2 + 1, size - 1] {
            if seq >= size {
                continue;
            }
            let proof = store.inclusion_proof(seq, size).unwrap();
            let leaf = store.leaf(seq).unwrap();
            merkle::verify_inclusion(&leaf, seq, size, &proof, &root).unwrap();
            let mut wrong = leaf;
            wrong[0] ^= 1;
            assert!(merkle::verify_inclusion(&wrong, seq, size, &proof, &root).is_err());
        }
        for &old in &sizes {
            if old > size {
                continue;
            }
            let proof = store.consistency_proof(old, size).unwrap();
            let old_root = store.root_at(old).unwrap();
            merkle::verify_consistency(old, size, &old_root, &root, &proof).unwrap();
        }
    }
    assert!(store.inclusion_proof(66_000, 66_000).is_err());
    assert!(matches!(
        store.inclusion_proof(0, 66_001),
        Err(StoreError::OutOfRange { .. })
    ));
}

fn redeem(caller: &str, serial: u8, epoch: u32) -> Group {
    let mut e = entry(Some(serial), Some(serial));
    e.epoch = epoch;
    group(Operation::Redeem, caller, 10, vec![e])
}

#[test]
fn a_second_redeem_of_a_serial_is_a_repeat_across_appends_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // Twice in one append: the second is already a repeat.
    let done = store
        .append(append(vec![redeem("B", 1, 5), redeem("B", 1, 6)]))
        .unwrap();
    assert!(done.groups[0].repeats.is_empty());
    let repeat = &done.groups[1].repeats[0];
    assert_eq!(
        (repeat.entry, repeat.first.seq, repeat.first.epoch),
        (0, 0, 5)
    );
    let stored = store.record(1).unwrap().unwrap();
    assert_eq!(stored.entry.outcome, Outcome::Repeat);
    assert_eq!(stored.entry.epoch, 5);

    // In a later append.
    let done = store.append(append(vec![redeem("C", 1, 9)])).unwrap();
    assert_eq!(done.groups[0].repeats[0].first.caller, "B");

    // After reopening; another serial is new; a refused redeem does not count.
    drop(store);
    let mut store = open(&dir);
    let mut refused = redeem("B", 2, 1);
    refused.entries[0].outcome = Outcome::Expired;
    let done = store
        .append(append(vec![redeem("B", 1, 7), refused, redeem("B", 2, 3)]))
        .unwrap();
    assert_eq!(done.groups[0].repeats[0].first.seq, 0);
    assert!(done.groups[1].repeats.is_empty());
    assert!(done.groups[2].repeats.is_empty());
    let first = store.redemption(&[1; 16]).unwrap().unwrap();
    assert_eq!((first.seq, first.epoch, first.caller.as_str()), (0, 5, "B"));
    assert_eq!(store.redemption(&[2; 16]).unwrap().unwrap().seq, 5);
    assert_eq!(store.redemption(&[3; 16]).unwrap(), None);

    // Once indexed, the first redemptions live in the `redeemed` table
    // (not in memory): repeats are still found, before and after reopening.
    assert_eq!(store.index_people(1_000).unwrap(), store.size());
    let done = store.append(append(vec![redeem("D", 2, 4)])).unwrap();
    assert_eq!(done.groups[0].repeats[0].first.seq, 5);
    assert_eq!(store.redemption(&[1; 16]).unwrap().unwrap().seq, 0);
    drop(store);
    let mut store = open(&dir);
    let done = store.append(append(vec![redeem("D", 1, 4)])).unwrap();
    assert_eq!(done.groups[0].repeats[0].first.seq, 0);
    assert_eq!(store.redemption(&[2; 16]).unwrap().unwrap().caller, "B");
}

#[test]
fn tallies_become_refusals_records_when_the_minute_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let minute = 29_400_000; // unix minutes
    let refusal = |agency: &str, reason: &str, count| Refusal {
        agency: agency.into(),
        reason: reason.into(),
        minute,
        count,
    };
    let now = minute * 60_000 + 5_000;
    let done = store
        .append(Append {
            groups: Vec::new(),
            refusals: vec![
                refusal("A", "unknown_code", 3),
                refusal("A", "malformed", 1),
            ],
            now_ms: now,
            policies: Vec::new(),
            prepared: Vec::new(),
            usage: Vec::new(),
            persons: Vec::new(),
            marks: Default::default(),
        })
        .unwrap();
    assert_eq!((done.tallied, done.size), (0, 0));
    // Same minute, after a reopen: the tallies are durable and still add up.
    drop(store);
    let mut store = open(&dir);
    store
        .append(Append {
            groups: vec![group(
                Operation::Derive,
                "A",
                now,
                vec![entry(Some(1), None)],
            )],
            refusals: vec![refusal("A", "unknown_code", 4)],
            now_ms: now + 1,
            policies: Vec::new(),
            prepared: Vec::new(),
            usage: Vec::new(),
            persons: Vec::new(),
            marks: Default::default(),
        })
        .unwrap();
    assert_eq!(store.size(), 1);
    // The next minute rolls both tallies, before this append's group.
    let done = store
        .append(Append {
            groups: vec![group(
                Operation::Derive,
                "A",
                now,
                vec![entry(Some(2), None)],
            )],
            refusals: Vec::new(),
            now_ms: (minute + 1) * 60_000,
            policies: Vec::new(),
            prepared: Vec::new(),
            usage: Vec::new(),
            persons: Vec::new(),
            marks: Default::default(),
        })
        .unwrap();
    assert_eq!(done.tallied, 2);
    assert_eq!(done.groups[0].first_seq, 3);
    let mut tallies: Vec<(String, u64)> = (1..3)
        .map(|seq| {
            let record = store.record(seq).unwrap().unwrap();
            assert_eq!(record.header.operation, Operation::Refusals);
            assert_eq!(record.header.caller, "A");
            assert_eq!(record.header.time_ms, minute * 60_000);
            assert_eq!(record.entry.person, None);
            (record.header.note.clone(), record.header.count)
        })
        .collect();
    tallies.sort();
    assert_eq!(
        tallies,
        [
            ("malformed".to_string(), 1),
            ("unknown_code".to_string(), 7)
        ]
    );
    // Rolled once only.
    let done = store
        .append(Append {
            now_ms: (minute + 5) * 60_000,
            ..Append::default()
        })
        .unwrap();
    assert_eq!((done.tallied, done.size), (0, 4));
}

#[test]
fn the_person_index_gives_newest_first_pages() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    // Person 7 appears at seqs 7, 263, 519, ... (people cycle through 0..=255).
    filled(&mut store, 3_000, 700);
    let person = PersonLink([7; 16]);
    assert!(store.person_records(&person, None, 10).unwrap().is_empty());
    assert_eq!(store.index_people(1_000).unwrap(), 1_000);
    assert_eq!(store.indexed(), 1_000);
    drop(store);
    let mut store = open(&dir);
    assert_eq!(store.indexed(), 1_000);
    let page: Vec<u64> = store
        .person_records(&person, None, 10)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(page, [775, 519, 263, 7]);
    assert_eq!(store.index_people(usize::MAX).unwrap(), 3_000);
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = store.person_records(&person, before, 4).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        before = page.last().map(|r| r.seq);
        for record in page {
            assert_eq!(record.entry.person, Some(person));
            all.push(record.seq);
        }
    }
    let want: Vec<u64> = (0..3_000).filter(|s| s % 256 == 7).rev().collect();
    assert_eq!(all, want);
}

#[test]
fn agency_pages_hold_caller_and_counterpart_records_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mut sealed = group(Operation::Seal, "A", 1, vec![entry(Some(1), Some(1)); 300]);
    sealed.header.counterpart = "B".into();
    store
        .append(append(vec![
            group(Operation::Derive, "A", 1, vec![entry(Some(1), None); 5]),
            group(Operation::Derive, "C", 1, vec![entry(Some(1), None); 5]),
            sealed,
        ]))
        .unwrap();
    store
        .append(append(vec![group(
            Operation::Redeem,
            "B",
            2,
            vec![entry(Some(2), Some(9)); 2],
        )]))
        .unwrap();
    let pages = |store: &mut RedbStore, agency: &str, size: usize| {
        let mut seqs = Vec::new();
        let mut after = None;
        loop {
            let page = store.agency_records(agency, after, size).unwrap();
            if page.is_empty() {
                return seqs;
            }
            assert!(page.len() <= size);
            after = page.last().map(|r| r.seq);
            for record in page {
                let h = &record.header;
                assert!(h.caller == agency || h.counterpart == agency);
                seqs.push(record.seq);
            }
        }
    };
    let a: Vec<u64> = (0..5).chain(10..310).collect();
    assert_eq!(pages(&mut store, "A", 7), a);
    let b: Vec<u64> = (10..312).collect();
    assert_eq!(pages(&mut store, "B", 100), b);
    assert_eq!(pages(&mut store, "C", 3), (5..10).collect::<Vec<_>>());
    assert!(pages(&mut store, "D", 3).is_empty());
    assert_eq!(store.agency_records("A", Some(u64::MAX), 5).unwrap(), []);
}

#[test]
fn purging_keeps_leaf_hashes_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    for time in 0..10u64 {
        store
            .append(append(vec![group(
                Operation::Derive,
                "A",
                time * 1_000,
                (0..100).map(|s| entry(Some(s), None)).collect(),
            )]))
            .unwrap();
    }
    store.index_people(usize::MAX).unwrap();
    let before = leaves(&mut store);
    let root = store.root();
    // Leaf hashes are hashed from the bodies while they are kept (D102)...
    assert!(store.stored_nodes(0, 0, 1_000).unwrap().is_empty());
    assert_eq!(store.purge_before(4_000).unwrap(), 400);
    // ... and stored by the purge that deletes the bodies.
    assert_eq!(store.stored_nodes(0, 0, 1_000).unwrap(), before[..400]);
    drop(store);
    let mut store = open(&dir);
    assert_eq!(store.purged(), 400);
    assert_eq!(store.root(), root);
    assert_eq!(store.record(399).unwrap(), None);
    assert!(store.record(400).unwrap().is_some());
    let records = store.records(0, 1_000).unwrap();
    assert_eq!(records.len(), 1_000);
    for (seq, stored) in records.iter().enumerate() {
        match stored {
            StoredRecord::Purged { seq: s, leaf } => {
                assert!(seq < 400);
                assert_eq!((*s, *leaf), (seq as u64, before[seq]));
            }
            StoredRecord::Body(record) => {
                assert!(seq >= 400);
                assert_eq!(record.leaf_hash(), before[seq]);
            }
        }
    }
    for seq in [0, 399, 400, 999] {
        let proof = store.inclusion_proof(seq, 1_000).unwrap();
        merkle::verify_inclusion(&before[seq as usize], seq, 1_000, &proof, &root).unwrap();
    }
    // The person and agency indexes forget the purged records.
    let seqs: Vec<u64> = store
        .person_records(&PersonLink([5; 16]), None, 100)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [905, 805, 705, 605, 505, 405]);
    assert_eq!(store.agency_records("A", None, 1).unwrap()[0].seq, 400);
    // Purging stops at the first group that is not old enough; again is a no-op.
    assert_eq!(store.purge_before(4_000).unwrap(), 0);
    store
        .append(append(vec![
            group(Operation::Derive, "A", 20_000, vec![entry(None, None)]),
            group(Operation::Derive, "A", 0, vec![entry(None, None)]),
        ]))
        .unwrap();
    assert_eq!(store.purge_before(9_500).unwrap(), 600);
    assert_eq!(store.purged(), 1_000);
    assert!(store.record(1_001).unwrap().is_some());
}

#[test]
fn a_second_open_of_the_file_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.redb");
    let store = RedbStore::open(&path).unwrap();
    match RedbStore::open(&path) {
        Err(StoreError::Locked { path: locked }) => assert_eq!(locked, path),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    RedbStore::open(&path).unwrap();
}

#[test]
fn opening_where_no_file_can_be_made_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("audit.redb");
    match RedbStore::open(&path) {
        Err(StoreError::Io { op: "open", source }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn a_refused_append_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .append(append(vec![group(
            Operation::Derive,
            "A",
            1,
            vec![entry(Some(1), None)],
        )]))
        .unwrap();
    let (size, root) = (store.size(), store.root());
    let mut repeat = redeem("B", 4, 1);
    repeat.entries[0].outcome = Outcome::Repeat;
    let refused = store.append(append(vec![redeem("B", 5, 1), repeat]));
    match refused {
        Err(StoreError::Invalid {
            group: 1,
            entry: Some(0),
            ..
        }) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
    let empty = store.append(append(vec![group(Operation::Derive, "A", 1, Vec::new())]));
    assert!(matches!(
        empty,
        Err(StoreError::Invalid {
            group: 0,
            entry: None,
            ..
        })
    ));
    assert_eq!((store.size(), store.root()), (size, root));
    // Nothing of the refused append reached the file, and the store still works.
    assert_eq!(store.redemption(&[5; 16]).unwrap(), None);
    drop(store);
    let mut store = open(&dir);
    assert_eq!((store.size(), store.root()), (size, root));
    let done = store.append(append(vec![redeem("B", 5, 1)])).unwrap();
    assert_eq!(done.groups[0].first_seq, 1);
}

#[test]
fn checkpoints_verifier_and_policies_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    filled(&mut store, 10, 10);
    assert_eq!(store.latest_checkpoint().unwrap(), None);
    store.add_checkpoint(5, "note five").unwrap();
    store.add_checkpoint(10, "note ten").unwrap();
    assert!(matches!(
        store.add_checkpoint(11, "beyond"),
        Err(StoreError::OutOfRange { .. })
    ));
    store.set_verifier("fugo+01234567+AQID").unwrap();
    assert!(store.put_policy(&[1; 32], "rule one").unwrap());
    assert!(!store.put_policy(&[1; 32], "other text").unwrap());
    drop(store);
    let mut store = open(&dir);
    assert_eq!(
        store.latest_checkpoint().unwrap(),
        Some((10, "note ten".to_string()))
    );
    assert_eq!(
        store.checkpoints().unwrap(),
        [(5, "note five".to_string()), (10, "note ten".to_string())]
    );
    assert_eq!(
        store.verifier().unwrap().as_deref(),
        Some("fugo+01234567+AQID")
    );
    assert_eq!(store.policy(&[1; 32]).unwrap().as_deref(), Some("rule one"));
    assert_eq!(store.policy(&[2; 32]).unwrap(), None);
}

#[test]
fn a_store_moves_to_a_dedicated_thread() {
    let dir = tempfile::tempdir().unwrap();
    let boxed: Box<dyn Store> = Box::new(open(&dir));
    let size = std::thread::spawn(move || {
        let mut store = boxed;
        store
            .append(append(vec![group(
                Operation::Derive,
                "A",
                1,
                vec![entry(None, None)],
            )]))
            .unwrap();
        store.size()
    })
    .join()
    .unwrap();
    assert_eq!(size, 1);
}

#[test]
fn leaves_hold_no_person_link() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    store
        .append(append(vec![group(
            Operation::Derive,
            "A",
            1,
            vec![entry(Some(0xAB), None); 3],
        )]))
        .unwrap();
    let mut seen = BTreeSet::new();
    for stored in store.records(0, 3).unwrap() {
        let StoredRecord::Body(record) = stored else {
            panic!("not purged")
        };
        let bytes = record.leaf_bytes();
        assert!(!bytes.windows(16).any(|w| w == [0xAB; 16]));
        // Each record's commitment differs although the person is the same.
        assert!(seen.insert(bytes[63..].to_vec()));
    }
}

#[test]
fn a_signed_checkpoint_of_the_store_verifies() {
    use fugo_log::checkpoint::{Checkpoint, LogSigner, LogVerifier};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    filled(&mut store, 1_000, 300);
    let signer = LogSigner::from_seed("audit.example/log", &[7; 32]).unwrap();
    store.set_verifier(&signer.verifier().to_string()).unwrap();
    for size in [500, 1_000] {
        let root = store.root_at(size).unwrap();
        let note = signer
            .sign(&Checkpoint {
                origin: "audit.example/log".into(),
                size,
                root,
            })
            .unwrap();
        store.add_checkpoint(size, &note).unwrap();
    }
    drop(store);
    let mut store = open(&dir);
    let verifier = LogVerifier::parse(&store.verifier().unwrap().unwrap()).unwrap();
    let (size, note) = store.latest_checkpoint().unwrap().unwrap();
    let latest = verifier.open(&note).unwrap();
    assert_eq!((latest.size, latest.root), (size, store.root()));
    let (old_size, old_note) = store.checkpoints().unwrap().remove(0);
    let old = verifier.open(&old_note).unwrap();
    let proof = store.consistency_proof(old_size, size).unwrap();
    merkle::verify_consistency(old.size, latest.size, &old.root, &latest.root, &proof).unwrap();
}

/// The store file is the operator's alone: created with mode 0600 whatever
/// the umask.
#[cfg(unix)]
#[test]
fn a_new_store_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mode = std::fs::metadata(store.path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

/// The key lifecycle's high-water mark only rises: a later append with a
/// lower rank or without a generation or an agency changes nothing, and the
/// marks survive a reopen.
#[test]
fn the_epoch_high_water_mark_only_rises() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    assert_eq!(store.marks().unwrap(), Marks::default());
    let mark = |epochs: &[(&str, u8, u8)], generations: &[u16], agencies: &[(&str, u8)]| {
        let mut append = append(Vec::new());
        append.marks = Marks {
            epochs: epochs
                .iter()
                .map(|(a, e, r)| ((*a).to_owned(), *e, *r))
                .collect(),
            destroyed_generations: generations.to_vec(),
            agencies: agencies
                .iter()
                .map(|(a, r)| ((*a).to_owned(), *r))
                .collect(),
            ..Marks::default()
        };
        append
    };
    store
        .append(mark(
            &[("city", 1, 1), ("city", 2, 0), ("nta", 1, 2)],
            &[],
            &[("city", 0), ("town", 1)],
        ))
        .unwrap();
    store
        .append(mark(
            &[("city", 1, 0), ("nta", 1, 0), ("city", 2, 2)],
            &[1],
            &[("city", 0), ("town", 0), ("nta", 0)],
        ))
        .unwrap();
    store.append(mark(&[], &[], &[])).unwrap();
    drop(store);
    let mut store = open(&dir);
    let marks = store.marks().unwrap();
    assert_eq!(
        marks.epochs,
        [
            ("city".to_owned(), 1, 1),
            ("city".to_owned(), 2, 2),
            ("nta".to_owned(), 1, 2)
        ]
    );
    assert_eq!(marks.destroyed_generations, [1]);
    assert_eq!(
        marks.agencies,
        [
            ("city".to_owned(), 0),
            ("nta".to_owned(), 0),
            ("town".to_owned(), 1)
        ]
    );
}

/// An epoch's generation and a generation's key fingerprint stay as first
/// stored: a later append naming others changes nothing, across a reopen.
#[test]
fn epoch_bindings_and_generation_keys_keep_their_first_value() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(&dir);
    let mark = |bindings: &[(&str, u8, u16)], keys: &[(u16, &str)]| {
        let mut append = append(Vec::new());
        append.marks = Marks {
            bindings: bindings
                .iter()
                .map(|(a, e, g)| ((*a).to_owned(), *e, *g))
                .collect(),
            generation_keys: keys.iter().map(|(g, f)| (*g, (*f).to_owned())).collect(),
            ..Marks::default()
        };
        append
    };
    store
        .append(mark(
            &[("nta", 1, 1), ("nta", 2, 2)],
            &[(1, "aa"), (2, "bb")],
        ))
        .unwrap();
    store
        .append(mark(
            &[("nta", 2, 1), ("city", 1, 2)],
            &[(2, "cc"), (3, "dd")],
        ))
        .unwrap();
    drop(store);
    let marks = open(&dir).marks().unwrap();
    assert_eq!(
        marks.bindings,
        [
            ("city".to_owned(), 1, 2),
            ("nta".to_owned(), 1, 1),
            ("nta".to_owned(), 2, 2)
        ]
    );
    assert_eq!(
        marks.generation_keys,
        [
            (1, "aa".to_owned()),
            (2, "bb".to_owned()),
            (3, "dd".to_owned())
        ]
    );
}
