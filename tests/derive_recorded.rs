//! The offline `fugo derive` (the real binary) records what it derives with
//! any key but the demo key, in the audit trail of `--data-dir`, and
//! refuses while another process (a server) holds the store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fugo::agency::{AgencyId, Epoch};
use fugo::audit::{Recorder, RecorderError, STORE_FILE, Settings};
use fugo::code::Coder;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::link::Linker;
use fugo::mynumber::MyNumber;
use fugo_log::checkpoint::LogSigner;
use fugo_log::record::{Operation, Outcome};
use fugo_log::store::{RedbStore, Store, StoreError, StoredRecord};

const MASTER: [u8; 32] = [7; 32];

fn write_key(dir: &Path, name: &str, master: [u8; 32]) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        MasterKey::from_bytes(master).to_file_contents().as_bytes(),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn derive(key: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fugo"))
        .arg("derive")
        .arg("--master-key")
        .arg(key)
        .args(["--agency", "nta", "--epoch", "2"])
        .args(extra)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn numbers(count: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(77_000 + i * 13))
        .collect()
}

#[test]
fn a_real_key_records_one_entry_per_derived_person() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "master.key", MASTER);
    let valid = numbers(300);
    let mut input = valid.join("\n");
    input.push_str("\nnot a number\n");
    let input_path = dir.path().join("in.txt");
    fs::write(&input_path, &input).unwrap();
    let out = dir.path().join("out.txt");
    let data = dir.path().join("data");
    let run = derive(
        &key,
        &[
            input_path.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--threads",
            "2",
        ],
    );
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    assert_eq!(fs::read_to_string(&out).unwrap().lines().count(), 301);

    // One Derive record per derived person, caller = the agency, with the
    // person's link (as the server would make it).
    let keys = KeyHierarchy::new(&MasterKey::from_bytes(MASTER));
    let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(2).unwrap());
    let linker = Linker::new(&keys);
    let expected: BTreeSet<[u8; 16]> = valid
        .iter()
        .map(|n| {
            let handle = coder.handle(&MyNumber::parse(n.as_bytes()).unwrap());
            linker.link(&handle).unwrap().to_bytes()
        })
        .collect();
    let mut store = RedbStore::open(data.join(STORE_FILE)).unwrap();
    let records = store.records(0, 10_000).unwrap();
    let mut found = BTreeSet::new();
    for record in &records {
        let StoredRecord::Body(record) = record else {
            panic!("nothing is purged")
        };
        assert_eq!(record.header.operation, Operation::Derive);
        assert_eq!(record.header.caller, "nta");
        assert_eq!(record.entry.outcome, Outcome::Done);
        assert_eq!(record.entry.epoch, 2);
        found.insert(record.entry.person.unwrap().0);
    }
    assert_eq!(records.len(), 300);
    assert_eq!(found, expected);
    // The log is this key's, signed over every record when the run ended.
    let origin = fugo::audit::default_origin(&keys.fingerprint());
    let signer = LogSigner::from_seed(&origin, &keys.log_signing_seed()).unwrap();
    assert_eq!(
        store.verifier().unwrap().unwrap(),
        signer.verifier().to_string()
    );
    assert_eq!(store.latest_checkpoint().unwrap().unwrap().0, 300);
    drop(store);

    // Read back with the audit commands: export and verify.
    let export = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(["audit", "export", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(export.status.code(), Some(0));
    let lines = text(&export.stdout);
    assert_eq!(
        lines
            .lines()
            .filter(|l| l.contains("\"operation\":\"derive\"") && l.contains("\"caller\":\"nta\""))
            .count(),
        300
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .args(["--pubkey", &signer.verifier().to_string()])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));

    // A second run appends to the same log; another key's run is refused.
    let again = derive(
        &key,
        &[
            input_path.to_str().unwrap(),
            "-o",
            "/dev/null",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(again.status.code(), Some(3), "{}", text(&again.stderr));
    // 600 Derive records; the first run's tally of its bad row becomes a
    // Refusals record if the minute turned between the runs.
    let records = RedbStore::open(data.join(STORE_FILE))
        .unwrap()
        .records(0, 10_000)
        .unwrap();
    let derived = records
        .iter()
        .filter(|r| matches!(r, StoredRecord::Body(r) if r.header.operation == Operation::Derive))
        .count();
    assert_eq!(derived, 600);
    assert!(records.len() == 600 || records.len() == 601);
    let other = write_key(dir.path(), "other.key", [8; 32]);
    let refused = derive(
        &other,
        &[
            input_path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused.stderr).contains("the log of another master key"));
    assert!(refused.stdout.is_empty(), "no code left unrecorded");
}

#[test]
fn a_real_key_needs_a_data_dir_and_the_demo_key_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "master.key", MASTER);
    // Refused before the input is read (it does not even exist).
    let run = derive(&key, &["/nonexistent/in.txt", "-o", "/nonexistent/out.txt"]);
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("give --data-dir"), "{stderr}");
    assert!(!stderr.contains("cannot open input"), "{stderr}");

    let data = dir.path().join("data");
    let demo = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(["derive", "--master-key"])
        .arg(common::demo_key_path())
        .args(["--agency", "nta", "--epoch", "1", "--data-dir"])
        .arg(&data)
        .arg(common::demo_key_path().with_file_name("nonexistent"))
        .output()
        .unwrap();
    // The demo key goes straight to the input: no store is made.
    assert!(text(&demo.stderr).contains("cannot open input"));
    assert!(!data.exists());
}

#[test]
fn a_held_store_is_refused_before_the_input_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_key(dir.path(), "master.key", MASTER);
    let data = dir.path().join("data");
    fs::create_dir_all(&data).unwrap();
    let path = data.join(STORE_FILE);

    // Within one process, a second handle on the file is refused too
    // (redb locks the open file; two opens in one process conflict).
    let held = RedbStore::open(&path).unwrap();
    assert!(matches!(
        RedbStore::open(&path),
        Err(StoreError::Locked { .. })
    ));
    let keys = KeyHierarchy::new(&MasterKey::from_bytes(MASTER));
    let signer = LogSigner::from_seed("t/log", &keys.log_signing_seed()).unwrap();
    assert!(matches!(
        Recorder::open(&data, signer, Settings::default()),
        Err(RecorderError::Locked(_))
    ));

    // Another process (the binary) is refused while this one holds it,
    // before it reads its input (which does not exist).
    let run = derive(
        &key,
        &["/nonexistent/in.txt", "--data-dir", data.to_str().unwrap()],
    );
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("in use by another fugo process"),
        "{stderr}"
    );
    assert!(!stderr.contains("cannot open input"), "{stderr}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_held_by_a_running_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = "[[agency]]\nid = \"nta\"\nname = \"NTA\"\ncertificates = [\"nta\"]\n\
                  capabilities = [\"derive\"]\nepoch = 2\n";
    let (running, _ca) = common::start_server(dir.path(), policy, MASTER).await;
    let key = dir.path().join("master.key");
    let data = dir.path().join("data");
    let input = dir.path().join("in.txt");
    fs::write(&input, numbers(3).join("\n")).unwrap();
    let out = dir.path().join("out.txt");
    let run = tokio::task::spawn_blocking({
        let (key, input, out, data) = (key.clone(), input.clone(), out.clone(), data.clone());
        move || {
            derive(
                &key,
                &[
                    input.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = text(&run.stderr);
    assert!(
        stderr.contains("in use by another fugo process"),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "nothing derived while the server holds the log"
    );
    let size_before = {
        running.stop().await.unwrap();
        RedbStore::open(data.join(STORE_FILE)).unwrap().size()
    };
    // Once the server stopped, the same run is recorded in its log.
    let run = derive(
        &key,
        &[
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert_eq!(
        RedbStore::open(data.join(STORE_FILE)).unwrap().size(),
        size_before + 3
    );
}
