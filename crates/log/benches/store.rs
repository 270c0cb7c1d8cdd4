//! The redb store's hot paths, each next to a baseline measured in the same
//! run:
//!
//! - **append**: one durable commit of one group of records (Derive, each
//!   with a person link), per record, next to writing the same number of
//!   bytes to a plain file and `fdatasync`-ing it (the floor any durable
//!   commit pays);
//! - **disclosure page**: a person's newest 100 records from the person
//!   index, without and with inclusion proofs, in a store of many records
//!   where the person has 1,000; p50 and p99 over many pages.
//!
//! Full form (issue 7's figures, about 1.5 GB of temporary disk):
//! `cargo bench -p fugo-log --bench store` — 10 million records. Short form:
//! `FUGO_LOG_BENCH_RECORDS=1000000 cargo bench -p fugo-log --bench store`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // bench code: a panic is a failure report; printing is the report

use std::io::Write;
use std::time::{Duration, Instant};

use fugo_log::merkle;
use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, RedbStore, Store};

/// Records per commit while filling the store.
const FILL_COMMIT: u64 = 10_000;
/// The person whose disclosure is measured has one record in this many.
const PERSON_EVERY: u64 = 10_000;
/// The measured person.
const PERSON: PersonLink = PersonLink([0xEE; 16]);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn header(time_ms: u64) -> Header {
    Header {
        time_ms,
        operation: Operation::Derive,
        caller: "city-shinjuku".into(),
        counterpart: String::new(),
        affair: "児童手当".into(),
        items: vec!["income".into()],
        non_disclosure_until: 0,
        policy_version: [1; 32],
        batch_id: format!("bench-{time_ms}"),
        note: String::new(),
        count: 0,
        agent: String::new(),
    }
}

fn group(first_seq: u64, count: u64) -> Group {
    let entries = (first_seq..first_seq + count)
        .map(|seq| {
            let person = if seq % PERSON_EVERY == 7 {
                PERSON
            } else {
                let mut link = [0; 16];
                link[..8].copy_from_slice(&seq.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                PersonLink(link)
            };
            Entry {
                outcome: Outcome::Done,
                epoch: 1,
                serial: None,
                person: Some(person),
            }
        })
        .collect();
    Group {
        header: header(first_seq),
        entries,
    }
}

fn append(store: &mut RedbStore, count: u64) {
    let first = store.size();
    store
        .append(Append {
            groups: vec![group(first, count)],
            refusals: Vec::new(),
            now_ms: 0,
            policies: Vec::new(),
            prepared: Vec::new(),
            usage: Vec::new(),
            persons: Vec::new(),
            marks: Default::default(),
        })
        .unwrap();
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn main() {
    let records = env_number("FUGO_LOG_BENCH_RECORDS", 10_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut store = RedbStore::open(dir.path().join("audit.redb")).unwrap();

    let started = Instant::now();
    while store.size() < records {
        let count = FILL_COMMIT.min(records - store.size());
        append(&mut store, count);
    }
    let fill = started.elapsed();
    let started = Instant::now();
    while store.indexed() < store.size() {
        store.index_people(1_000_000).unwrap();
    }
    let index = started.elapsed();
    let file_mb = std::fs::metadata(dir.path().join("audit.redb"))
        .unwrap()
        .len()
        / 1_000_000;
    println!(
        "fill: {records} records in commits of {FILL_COMMIT}: {:.2} s ({:.2} µs/record); \
         person index: {:.2} s; file {file_mb} MB",
        fill.as_secs_f64(),
        fill.as_secs_f64() * 1e6 / records as f64,
        index.as_secs_f64(),
    );

    // Append, per record, next to fdatasync of the same bytes; in turns.
    let mut baseline_file = std::fs::File::create(dir.path().join("baseline")).unwrap();
    for per_commit in [1u64, 100, 1_000] {
        let bytes = vec![0x5A; (per_commit * 40) as usize];
        let rounds = (2_000 / per_commit).clamp(20, 200);
        let (mut store_time, mut base_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let t = Instant::now();
            append(&mut store, per_commit);
            store_time += t.elapsed();
            let t = Instant::now();
            baseline_file.write_all(&bytes).unwrap();
            baseline_file.sync_data().unwrap();
            base_time += t.elapsed();
        }
        let per = |d: Duration| d.as_secs_f64() * 1e6 / (rounds * per_commit) as f64;
        println!(
            "append {per_commit:>5} records/commit: {:>8.2} µs/record   \
             (write+fdatasync of {} bytes: {:>8.2} µs/record; ratio {:.2})",
            per(store_time),
            per_commit * 40,
            per(base_time),
            store_time.as_secs_f64() / base_time.as_secs_f64(),
        );
    }
    while store.indexed() < store.size() {
        store.index_people(1_000_000).unwrap();
    }

    // Disclosure pages of 100: the person's records, newest first, paged.
    let size = store.size();
    let root = store.root();
    let mut plain = Vec::new();
    let mut proved = Vec::new();
    for _ in 0..5 {
        let mut before = None;
        loop {
            let t = Instant::now();
            let page = store.person_records(&PERSON, before, 100).unwrap();
            plain.push(t.elapsed());
            if page.is_empty() {
                break;
            }
            let t = Instant::now();
            let page = store.person_records(&PERSON, before, 100).unwrap();
            let proofs: Vec<_> = page
                .iter()
                .map(|r| store.inclusion_proof(r.seq, size).unwrap())
                .collect();
            proved.push(t.elapsed());
            for (record, proof) in page.iter().zip(&proofs) {
                merkle::verify_inclusion(&record.leaf_hash(), record.seq, size, proof, &root)
                    .unwrap();
            }
            before = page.last().map(|r| r.seq);
        }
    }
    println!(
        "disclosure page of 100 ({} records of the person, store of {size}): \
         p50 {:?} p99 {:?}; with inclusion proofs p50 {:?} p99 {:?}",
        records / PERSON_EVERY,
        percentile(&mut plain, 0.5),
        percentile(&mut plain, 0.99),
        percentile(&mut proved, 0.5),
        percentile(&mut proved, 0.99),
    );
}
