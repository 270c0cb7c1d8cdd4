//! `fugo audit verify` (the real binary) against tampered copies of a real
//! store: a server on 127.0.0.1:0 with real TLS writes the records, a client
//! keeps the checkpoint a response named, and every kind of tampering must
//! make verify exit 1 naming the first bad record or checkpoint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{DeriveRequest, SealRequest, derive_result};
use fugo::service;
use fugo_log::checkpoint::{Checkpoint, LogSigner};
use fugo_log::record::{Entry, Group, Header, Operation, Outcome, PersonLink};
use fugo_log::store::{Append, RedbStore, Store};
use redb::{ReadableTable, TableDefinition};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "moj"
name = "MOJ"
certificates = ["moj"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance benefits"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "moj"
items = ["family-register"]
token_lifetime_seconds = 3600
"#;

const MASTER: [u8; 32] = [42; 32];

/// The store's tables as fugo-log lays them out (crates/log/src/store/redb.rs).
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
const CHECKPOINTS: TableDefinition<u64, &str> = TableDefinition::new("checkpoints");

/// A real store written by a real server, and the checkpoint a client kept.
struct Written {
    dir: tempfile::TempDir,
    /// The signed note from a response's x-fugo-checkpoint, as a client
    /// would keep it (the base64 text).
    seen: PathBuf,
    /// Its tree size.
    seen_size: u64,
}

impl Written {
    fn store(&self) -> PathBuf {
        self.dir.path().join("data").join(fugo::audit::STORE_FILE)
    }

    /// A fresh data directory holding a copy of the store.
    fn copy(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::copy(self.store(), dir.join(fugo::audit::STORE_FILE)).unwrap();
        dir
    }
}

fn signer() -> LogSigner {
    let keys = KeyHierarchy::new(&MasterKey::from_bytes(MASTER));
    let origin = fugo::audit::default_origin(&keys.fingerprint());
    LogSigner::from_seed(&origin, &keys.log_signing_seed()).unwrap()
}

async fn write_store() -> Written {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, MASTER).await;
    let pem = ca.client("mhlw").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    let channel = Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = CodesClient::new(channel);
    let mut derive = async |numbers: Vec<String>| {
        let response = client
            .derive(DeriveRequest {
                epoch: 0,
                numbers,
                on_behalf_of: String::new(),
            })
            .await
            .unwrap();
        response
            .metadata()
            .get(service::CHECKPOINT)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    // Record 0 is the policy loading; then six one-person groups (records
    // 1..=6) and one group of five (records 7..=11).
    for seed in 0..6 {
        derive(vec![common::valid_number(1000 + seed)]).await;
    }
    derive((0..5).map(|i| common::valid_number(2000 + i)).collect()).await;
    // The server signs within a second of the tree growing: a response
    // soon names a checkpoint over everything so far (bounded wait).
    let mut seen = String::new();
    for attempt in 0..20 {
        tokio::time::sleep(Duration::from_millis(if attempt == 0 { 1200 } else { 500 })).await;
        seen = derive(vec![common::valid_number(3000 + attempt)])
            .await
            .expect("every response names the latest checkpoint");
        if checkpoint_size(&seen) >= 12 {
            break;
        }
    }
    // Two exchanges with serials (seal), then a last one-person group.
    let codes: Vec<String> = client
        .derive(DeriveRequest {
            numbers: vec![common::valid_number(4000), common::valid_number(4001)],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            derive_result::Result::Code(code) => code,
            derive_result::Result::Error(e) => panic!("{e:?}"),
        })
        .collect();
    client
        .seal(SealRequest {
            provider: "moj".into(),
            affair: "health".into(),
            items: vec!["family-register".into()],
            non_disclosure_until: 0,
            codes,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap();
    client
        .derive(DeriveRequest {
            numbers: vec![common::valid_number(3001)],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    running.stop().await.unwrap();

    let seen_size = checkpoint_size(&seen);
    assert!(
        seen_size >= 12,
        "the kept checkpoint covers the first calls"
    );
    let path = dir.path().join("seen.checkpoint");
    fs::write(&path, format!("{seen}\n")).unwrap();
    Written {
        dir,
        seen: path,
        seen_size,
    }
}

/// The tree size of a checkpoint as `x-fugo-checkpoint` carries it.
fn checkpoint_size(base64_note: &str) -> u64 {
    let note = base64::engine::general_purpose::STANDARD
        .decode(base64_note)
        .unwrap();
    let note = String::from_utf8(note).unwrap();
    signer().verifier().open(&note).unwrap().size
}

fn fugo(args: &[&dyn AsRefOs]) -> Output {
    let args: Vec<OsString> = args.iter().map(|a| a.os()).collect();
    Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(&args)
        .output()
        .unwrap()
}

trait AsRefOs {
    fn os(&self) -> OsString;
}
impl AsRefOs for &str {
    fn os(&self) -> OsString {
        OsString::from(self)
    }
}
impl AsRefOs for PathBuf {
    fn os(&self) -> OsString {
        self.clone().into_os_string()
    }
}
impl AsRefOs for String {
    fn os(&self) -> OsString {
        OsString::from(self)
    }
}

/// `fugo audit verify` on `dir` with the published key and the kept
/// checkpoint; returns (exit code, stderr).
fn verify(written: &Written, dir: &Path) -> (Option<i32>, String) {
    let output = fugo(&[
        &"audit",
        &"verify",
        &"--data-dir",
        &dir.to_path_buf(),
        &"--pubkey",
        &signer().verifier().to_string(),
        &"--checkpoint",
        &written.seen.clone(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "verify panicked: {stderr}");
    (output.status.code(), stderr)
}

/// Verify must exit 1 and name `expected` (the first bad record or checkpoint).
fn assert_fails(written: &Written, dir: &Path, expected: &str) {
    let (code, stderr) = verify(written, dir);
    assert_eq!(code, Some(1), "verify must fail: {stderr}");
    assert!(
        stderr.contains(expected),
        "verify must name {expected:?}: {stderr}"
    );
    println!("caught: {}", stderr.trim());
}

/// Verify must exit 1 and name `seq` among the records it suspects
/// ("record N:" or "records A..=B:").
fn assert_names(written: &Written, dir: &Path, seq: u64) {
    let (code, stderr) = verify(written, dir);
    assert_eq!(code, Some(1), "verify must fail: {stderr}");
    let named = stderr
        .split_once("FAILED: record")
        .map(|(_, rest)| rest.trim_start_matches('s').trim_start())
        .and_then(|rest| rest.split_once(':'))
        .map(|(range, _)| range.to_owned())
        .unwrap_or_default();
    let (from, to) = named.split_once("..=").unwrap_or((&named, &named));
    let (from, to): (u64, u64) = (
        from.parse().unwrap_or(u64::MAX),
        to.parse().unwrap_or(u64::MAX),
    );
    assert!(
        from <= seq && seq <= to && to - from < 16,
        "verify must name record {seq} among a few: {stderr}"
    );
    println!("caught: {}", stderr.trim());
}

fn edit(dir: &Path, change: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::open(dir.join(fugo::audit::STORE_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    change(&txn);
    txn.commit().unwrap();
}

fn group_value(dir: &Path, key: u64) -> Vec<u8> {
    let db = redb::Database::open(dir.join(fugo::audit::STORE_FILE)).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(GROUPS).unwrap();
    table.get(key).unwrap().unwrap().value().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_every_tampering_of_a_real_store() {
    let written = write_store().await;

    // The untouched copy passes, with the kept checkpoint.
    let intact = written.copy("intact");
    let (code, stderr) = verify(&written, &intact);
    assert_eq!(code, Some(0), "{stderr}");

    // The published key is the one in the store.
    let output = fugo(&[&"audit", &"pubkey", &"--data-dir", &intact]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        signer().verifier().to_string()
    );

    // 1. One byte of a record's body changed (the caller's name), the
    //    value still decodes: record 3's leaf no longer matches. Leaf
    //    hashes are not stored (D102), so verify names the records between
    //    the last checkpoint that still matches and the first that does not.
    let changed = written.copy("changed");
    let mut value = group_value(&changed, 3);
    let at = value.windows(4).position(|w| w == b"mhlw").unwrap();
    value[at + 3] = b'x';
    edit(&changed, |txn| {
        txn.open_table(GROUPS)
            .unwrap()
            .insert(3, value.as_slice())
            .unwrap();
    });
    assert_names(&written, &changed, 3);

    // 1b. A byte changed so the body no longer decodes.
    let garbled = written.copy("garbled");
    let mut value = group_value(&garbled, 5);
    value[0] ^= 0x40;
    edit(&garbled, |txn| {
        txn.open_table(GROUPS)
            .unwrap()
            .insert(5, value.as_slice())
            .unwrap();
    });
    assert_fails(&written, &garbled, "record 5:");

    // 2. A record deleted.
    let deleted = written.copy("deleted");
    edit(&deleted, |txn| {
        txn.open_table(GROUPS).unwrap().remove(4).unwrap();
    });
    assert_fails(&written, &deleted, "record 4:");

    // 2b. The last group deleted and the store's size cut to hide it.
    let cut = written.copy("cut");
    let size = RedbStore::open(written.store()).unwrap().size();
    edit(&cut, |txn| {
        let mut groups = txn.open_table(GROUPS).unwrap();
        groups.remove(size - 1).unwrap();
        let mut meta = txn
            .open_table(TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap();
        meta.insert("size", (size - 1).to_be_bytes().as_slice())
            .unwrap();
    });
    let (code, stderr) = verify(&written, &cut);
    assert_eq!(code, Some(1), "{stderr}");
    println!("caught: {}", stderr.trim());

    // 3. Two records swapped (1 and 2 are one-person groups).
    let swapped = written.copy("swapped");
    let (first, second) = (group_value(&swapped, 1), group_value(&swapped, 2));
    edit(&swapped, |txn| {
        let mut groups = txn.open_table(GROUPS).unwrap();
        groups.insert(1, second.as_slice()).unwrap();
        groups.insert(2, first.as_slice()).unwrap();
    });
    assert_names(&written, &swapped, 1);

    // 4. A stored checkpoint changed: its root replaced.
    let forged = written.copy("checkpoint");
    edit(&forged, |txn| {
        let mut table = txn.open_table(CHECKPOINTS).unwrap();
        let note = table
            .get(written.seen_size)
            .unwrap()
            .unwrap()
            .value()
            .to_owned();
        let lines: Vec<&str> = note.split('\n').collect();
        let zeros = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
        let forged = note.replacen(lines[2], &zeros, 1);
        table.insert(written.seen_size, forged.as_str()).unwrap();
    });
    assert_fails(
        &written,
        &forged,
        &format!(
            "checkpoint of size {} kept in the store: its signature does not verify",
            written.seen_size
        ),
    );

    // 5. Raw byte flips in the file: see raw_flips below.
    raw_flips(&written);

    // 6. A store rebuilt from scratch with other records and signed with
    //    the same key: it passes on its own, and the checkpoint a client
    //    kept catches it.
    let rebuilt = written.dir.path().join("rebuilt");
    fs::create_dir_all(&rebuilt).unwrap();
    {
        let mut store = RedbStore::open(rebuilt.join(fugo::audit::STORE_FILE)).unwrap();
        let signer = signer();
        store.set_verifier(&signer.verifier().to_string()).unwrap();
        store
            .append(Append {
                groups: vec![Group {
                    header: Header {
                        time_ms: 1_764_000_000_000,
                        operation: Operation::Derive,
                        caller: "mhlw".into(),
                        counterpart: String::new(),
                        affair: String::new(),
                        items: Vec::new(),
                        non_disclosure_until: 0,
                        policy_version: [0; 32],
                        batch_id: "rewritten".into(),
                        note: String::new(),
                        count: 0,
                        agent: String::new(),
                    },
                    entries: (0..size + 5)
                        .map(|i| Entry {
                            outcome: Outcome::Done,
                            epoch: 1,
                            serial: None,
                            person: Some(PersonLink([(i % 251) as u8; 16])),
                        })
                        .collect(),
                }],
                now_ms: 1_764_000_000_000,
                ..Append::default()
            })
            .unwrap();
        let note = signer
            .sign(&Checkpoint {
                origin: signer.verifier().name().to_owned(),
                size: store.size(),
                root: store.root(),
            })
            .unwrap();
        store.add_checkpoint(store.size(), &note).unwrap();
    }
    let alone = fugo(&[
        &"audit",
        &"verify",
        &"--data-dir",
        &rebuilt,
        &"--pubkey",
        &signer().verifier().to_string(),
    ]);
    assert_eq!(
        alone.status.code(),
        Some(0),
        "a re-signed store is consistent on its own: {}",
        String::from_utf8_lossy(&alone.stderr)
    );
    assert_fails(
        &written,
        &rebuilt,
        &format!("checkpoint {}: its root differs", written.seen.display()),
    );
}

/// Raw byte flips in a copy of the file, below redb: verify must exit 1
/// (redb's page checksums refuse the file; fugo never rolls a damaged last
/// commit back) and never panic.
///
/// A flip can only be caught where the file holds live data: a page redb
/// freed (an older copy of a page, rewritten elsewhere by a later commit)
/// holds nothing the store reads. So the targets are bytes that are live
/// by construction: the redb magic, the primary commit slot, and the bytes
/// that exist exactly once in the file and were written by the last
/// commits (the newest node of the tree's frontier in `meta`, the last
/// checkpoint's signature). A sweep over the whole file then checks that no flip
/// anywhere panics or passes while changing what the store holds: a flip
/// verify lets through must leave the export and the key byte-identical.
fn raw_flips(written: &Written) {
    let original = fs::read(written.store()).unwrap();
    let last_note = {
        let mut store = RedbStore::open(written.store()).unwrap();
        let (_, note) = store.latest_checkpoint().unwrap().unwrap();
        note
    };
    // The frontier's last node: the root of the newest records, made by the
    // last append and kept only in `meta`.
    let last_node = {
        let db = redb::Database::open(written.store()).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let meta = txn
            .open_table(TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap();
        let frontier = meta.get("frontier").unwrap().unwrap().value().to_vec();
        frontier[frontier.len() - 32..].to_vec()
    };
    let signature = last_note.trim_end().rsplit(' ').next().unwrap().to_owned();
    let once = |needle: &[u8]| -> usize {
        let found: Vec<usize> = original
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "a byte string written once is in the file once"
        );
        found[0]
    };
    let god = original[9];
    let primary_slot = 64 + usize::from(god & 1) * 128;
    let targets = [
        ("the redb magic", 0),
        ("the primary commit slot", primary_slot + 24),
        ("the newest frontier node", once(&last_node) + 7),
        (
            "the last checkpoint's signature",
            once(signature.as_bytes()) + 5,
        ),
    ];
    for (what, offset) in targets {
        let dir = written.dir.path().join(format!("flip-{offset}"));
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = original.clone();
        bytes[offset] ^= 0x01;
        fs::write(dir.join(fugo::audit::STORE_FILE), &bytes).unwrap();
        let (code, stderr) = verify(written, &dir);
        assert_eq!(
            code,
            Some(1),
            "a flip in {what} (offset {offset}): {stderr}"
        );
        println!("caught a flip in {what}: {}", stderr.trim());
    }

    // The sweep: one flip per 4 KiB page at a varying offset.
    let reference = export_of(&written.copy("reference"));
    let mut caught = 0;
    let mut dead = 0;
    for page in 0..original.len() / 4096 {
        let offset = page * 4096 + (page * 97) % 4096;
        let dir = written.dir.path().join(format!("sweep-{page}"));
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = original.clone();
        bytes[offset] ^= 0x10;
        fs::write(dir.join(fugo::audit::STORE_FILE), &bytes).unwrap();
        let (code, stderr) = verify(written, &dir);
        match code {
            Some(1) => caught += 1,
            Some(0) => {
                // Passed: the byte must have been in a page nothing reads.
                fs::write(dir.join(fugo::audit::STORE_FILE), &bytes).unwrap();
                assert_eq!(
                    export_of(&dir),
                    reference,
                    "a flip at {offset} passed verify but changed the store"
                );
                dead += 1;
            }
            other => panic!("verify exited {other:?} for a flip at {offset}: {stderr}"),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    println!("sweep: {caught} flips caught, {dead} in pages nothing reads");
    assert!(caught > 0);
}

/// The store's export and key, for comparing what two files hold.
fn export_of(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let export = fugo(&[&"audit", &"export", &"--data-dir", &dir.to_path_buf()]);
    let key = fugo(&[&"audit", &"pubkey", &"--data-dir", &dir.to_path_buf()]);
    assert_eq!(export.status.code(), Some(0));
    (export.stdout, key.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_carries_leaves_and_checkpoints_but_no_person_link() {
    let written = write_store().await;
    let dir = written.copy("export");
    let (size, links) = {
        let mut store = RedbStore::open(dir.join(fugo::audit::STORE_FILE)).unwrap();
        let records = store.records(0, 1000).unwrap();
        let links: Vec<String> = records
            .iter()
            .filter_map(|record| match record {
                fugo_log::store::StoredRecord::Body(record) => record.entry.person,
                _ => None,
            })
            .map(|link| common::to_hex(&link.0))
            .collect();
        (store.size(), links)
    };
    assert!(links.len() >= 12, "the derives opened people");

    let out = dir.join("export.jsonl");
    let output = fugo(&[&"audit", &"export", &"--data-dir", &dir, &"--out", &out]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = fs::read_to_string(&out).unwrap();
    for link in &links {
        assert!(!text.contains(link.as_str()), "a person link was exported");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let records: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "record").collect();
    assert_eq!(records.len() as u64, size);
    for (seq, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], seq as u64);
        let leaf = common::hex(record["leaf"].as_str().unwrap());
        assert_eq!(
            common::to_hex(&fugo_log::merkle::leaf_hash(&leaf)),
            record["leaf_hash"].as_str().unwrap()
        );
        assert_eq!(
            common::to_hex(&leaf[1..33]),
            record["header_digest"].as_str().unwrap()
        );
    }
    // Serials are exported (D80): the seal records carry theirs, while the
    // leaf holds only a commitment to it (D84).
    let seals: Vec<&&serde_json::Value> = records
        .iter()
        .filter(|r| r["operation"] == "seal")
        .collect();
    assert_eq!(seals.len(), 2);
    for seal in seals {
        let leaf = common::hex(seal["leaf"].as_str().unwrap());
        let serial = common::hex(seal["serial"].as_str().unwrap());
        assert_eq!(serial.len(), 16);
        assert!(!leaf.windows(16).any(|window| window == serial.as_slice()));
        assert_eq!(seal["counterpart"], "moj");
        assert_eq!(seal["affair"], "health");
        assert_eq!(seal["items"][0], "family-register");
    }
    assert_eq!(records[1]["serial"], serde_json::Value::Null);
    assert_eq!(records[1]["operation"], "derive");
    assert_eq!(records[1]["caller"], "mhlw");
    assert_eq!(records[1]["outcome"], "done");
    // The checkpoints that cover every exported record, after the records.
    let checkpoints: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["type"] == "checkpoint").collect();
    assert!(!checkpoints.is_empty());
    for checkpoint in &checkpoints {
        assert!(checkpoint["size"].as_u64().unwrap() >= size);
        let note = checkpoint["note"].as_str().unwrap();
        assert_eq!(signer().verifier().open(note).unwrap().root.len(), 32);
    }
    assert_eq!(lines.last().unwrap()["type"], "checkpoint");

    // A window after every record: no record, the latest checkpoint.
    let output = fugo(&[
        &"audit",
        &"export",
        &"--data-dir",
        &dir,
        &"--since",
        &"2999-01-01",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains("\"type\":\"checkpoint\""));
    let output = fugo(&[
        &"audit",
        &"export",
        &"--data-dir",
        &dir,
        &"--until",
        &"yesterday",
    ]);
    assert_eq!(output.status.code(), Some(2), "clap refuses a bad time");
    assert!(String::from_utf8_lossy(&output.stderr).contains("RFC 3339"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_commands_refuse_a_held_store_and_a_missing_one() {
    let written = write_store().await;
    let dir = written.copy("held");
    // Held by another handle (a server holds it the same way).
    let held = RedbStore::open(dir.join(fugo::audit::STORE_FILE)).unwrap();
    let output = fugo(&[&"audit", &"pubkey", &"--data-dir", &dir]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("GetCheckpoint"),
        "{stderr}"
    );
    let (code, stderr) = verify(&written, &dir);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("stop the server first"), "{stderr}");
    drop(held);
    let (code, stderr) = verify(&written, &dir);
    assert_eq!(code, Some(0), "{stderr}");

    // No store: named, and none is created.
    let empty = written.dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let (code, stderr) = verify(&written, &empty);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("there is no audit store"), "{stderr}");
    assert!(!empty.join(fugo::audit::STORE_FILE).exists());
    // A checkpoint file that is not one is named.
    let junk = written.dir.path().join("junk.checkpoint");
    fs::write(&junk, "junk").unwrap();
    let output = fugo(&[
        &"audit",
        &"verify",
        &"--data-dir",
        &dir,
        &"--checkpoint",
        &junk,
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("junk.checkpoint"));
}

/// The policy in force when a record was made stays readable by its
/// version (the SHA-256 every response names), after the fact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loaded_policy_is_printed_by_its_version() {
    let written = write_store().await;
    let dir = written.copy("policy");
    let version = fugo::policy::parse(POLICY).unwrap().version().to_string();
    let output = fugo(&[&"audit", &"policy", &"--data-dir", &dir, &version.as_str()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), POLICY);
    let unknown = "ab".repeat(32);
    let output = fugo(&[&"audit", &"policy", &"--data-dir", &dir, &unknown.as_str()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no policy of version"));
    let output = fugo(&[&"audit", &"policy", &"--data-dir", &dir, &"xyz"]);
    assert_eq!(output.status.code(), Some(1), "a bad argument");
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a policy version"));
}

/// The disk-space reserve: below it the audit trail refuses to write
/// (fail closed), so a server that starts on a disk without the reserve
/// stops with a message saying so instead of serving unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_below_the_reserve_stops_the_server_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _ca) = common::server_config(dir.path(), POLICY, MASTER);
    // More than any disk here has free.
    config.audit.settings.reserve_bytes = 1 << 60;
    config.audit.settings.warn_bytes = 1 << 60;
    let error = fugo::service::start(config, &mut std::io::sink())
        .await
        .err()
        .expect("the server must not start below the reserve")
        .to_string();
    assert!(error.contains("disk space reserve reached"), "{error}");
}

/// Refusals that opened no one are tallied per (agency, reason, minute);
/// once the minute is over an idle recorder turns the tally into a record
/// by itself, so junk traffic reaches the log even if no call follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_recorder_turns_a_finished_minutes_tally_into_a_record() {
    use fugo_log::record::Operation;
    use fugo_log::store::{Append, Refusal, Store};
    let dir = tempfile::tempdir().unwrap();
    let recorder =
        fugo::audit::Recorder::open(dir.path(), signer(), fugo::audit::Settings::default())
            .unwrap();
    let now_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let minute = now_minute - 2;
    recorder
        .record(Append {
            refusals: vec![Refusal {
                agency: "mhlw".into(),
                reason: "unknown_code".into(),
                minute,
                count: 7,
            }],
            now_ms: minute * 60_000,
            ..Append::default()
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let record = loop {
        let found = recorder
            .read(|store| match store.size() {
                0 => Ok(None),
                size => store.record(size - 1),
            })
            .await
            .unwrap();
        if let Some(record) = found {
            break record;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the tally never became a record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record.header.operation, Operation::Refusals);
    assert_eq!(
        (
            record.header.caller.as_str(),
            record.header.note.as_str(),
            record.header.count
        ),
        ("mhlw", "unknown_code", 7)
    );
}

/// The server creates its data directory 0700 and the store 0600: the log
/// is the operator's alone, whatever the umask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_the_store_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (running, _ca) = common::start_server(dir.path(), POLICY, MASTER).await;
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(fugo::audit::STORE_FILE)), 0o600);
    running.stop().await.unwrap();
}

/// Everything this test binary's servers log (one subscriber per process).
fn logs() -> &'static std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        tracing_subscriber::fmt()
            .with_env_filter("fugo=info")
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .init();
        buffer
    })
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Below `warn_megabytes` of free space the recorder warns before the
/// reserve is reached, and keeps writing; the warning repeats at most once
/// a minute (D103), not at every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_space_is_warned_once_a_minute_and_calls_still_succeed() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let (mut config, ca) = common::server_config(dir.path(), POLICY, MASTER);
    config.audit.settings.reserve_bytes = 0;
    // More than any disk here has free.
    config.audit.settings.warn_bytes = 1 << 60;
    let running = service::start(config, &mut std::io::sink()).await.unwrap();
    let pem = ca.client("mhlw").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    let channel = Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = CodesClient::new(channel);
    // Commits more than a second apart: each checks the free space again.
    for seed in 0..3 {
        let response = client
            .derive(DeriveRequest {
                numbers: vec![common::valid_number(7000 + seed)],
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
            .expect("below the warning level calls still succeed");
        assert_eq!(response.into_inner().results.len(), 1);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    running.stop().await.unwrap();
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("disk space for the audit trail is running low"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, not one per check: {text}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    assert!(warnings[0].contains("free_bytes="), "{}", warnings[0]);
}

/// The recorder purges record bodies past retention by itself (hourly in
/// production; `purge_every` is shortened here), keeps their leaf hashes,
/// and the whole log still verifies from record 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorder_purges_bodies_past_retention_by_itself_and_the_log_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let settings = fugo::audit::Settings {
        retention: Duration::from_secs(3600),
        purge_every: Duration::from_millis(200),
        ..fugo::audit::Settings::default()
    };
    let recorder = fugo::audit::Recorder::open(dir.path(), signer(), settings).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let group = |time_ms: u64, people: u8| Group {
        header: Header {
            time_ms,
            operation: Operation::Derive,
            caller: "mhlw".into(),
            counterpart: String::new(),
            affair: "a".into(),
            items: Vec::new(),
            non_disclosure_until: 0,
            policy_version: [1; 32],
            batch_id: format!("batch-{time_ms}"),
            note: String::new(),
            count: 0,
            agent: String::new(),
        },
        entries: (0..people)
            .map(|p| Entry {
                outcome: Outcome::Done,
                epoch: 1,
                serial: None,
                person: Some(PersonLink([p; 16])),
            })
            .collect(),
    };
    // 300 records two hours old (past retention), then 20 of now.
    recorder
        .record(Append {
            groups: vec![
                group(now_ms - 2 * 3_600_000, 200),
                group(now_ms - 2 * 3_600_000 + 1, 100),
                group(now_ms, 20),
            ],
            now_ms,
            ..Append::default()
        })
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let purged = recorder.read(|store| Ok(store.purged())).await.unwrap();
        if purged == 300 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the recorder never purged (purged {purged})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verifier = signer().verifier();
    let report = recorder
        .read(move |store| {
            let newest = store.record(300)?.expect("kept records keep their bodies");
            assert_eq!(newest.header.time_ms, now_ms);
            assert_eq!(store.record(299)?, None);
            Ok(fugo_log::verify::verify(store, &verifier, &[]))
        })
        .await
        .unwrap()
        .expect("the purged log verifies");
    assert_eq!((report.size, report.purged), (320, 300));
}
