//! My Number re-issue (個人番号の変更) and suspension (issue 9), end to end:
//! a real server on 127.0.0.1:0 with real TLS, driven through tonic clients
//! of `fugo.v1.Persons`, `fugo.v1.Codes` and `fugo.v1.Audit`; a restart on
//! the same data directory; the offline `fugo derive` (the real binary) on
//! the data directory the server left; and the store file read afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fugo::agency::{AgencyId, Epoch};
use fugo::certs::DevCa;
use fugo::code::Coder;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber::MyNumber;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::persons_client::PersonsClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, DiscloseRequest, DisclosedRecord, GetStatusRequest, LiftRequest, RedeemRequest,
    ReidentifyRequest, ReissueRequest, SealRequest, SuspendRequest, SuspensionReason,
    derive_result, redeem_result, reidentify_result, seal_result,
};
use fugo::proto::google::rpc::Code as RpcCode;
use fugo::service::{self, Running};
use fugo_log::record::Operation;
use fugo_log::store::{RedbStore, Store, StoredRecord};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const MASTER: [u8; 32] = [42; 32];

const POLICY: &str = r#"
[[agency]]
id = "jlis"
name = "J-LIS"
certificates = ["jlis"]
capabilities = ["reissue"]
epoch = 1

[[agency]]
id = "registry"
name = "Resident registry"
certificates = ["registry"]
capabilities = ["suspend"]
epoch = 1

[[agency]]
id = "mhlw"
name = "MHLW health insurance"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku City"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "portal"
name = "Citizen portal"
certificates = ["portal"]
capabilities = ["derive", "disclose"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance benefits"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax"]
token_lifetime_seconds = 3600
"#;

struct Harness {
    dir: tempfile::TempDir,
    ca: DevCa,
    running: Option<Running>,
}

/// One agency's clients, on one connection.
struct Agency {
    codes: CodesClient<Channel>,
    audit: AuditClient<Channel>,
    persons: PersonsClient<Channel>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, ca) = common::server_config(dir.path(), POLICY, MASTER);
        config.metrics = Some("127.0.0.1:0".parse().unwrap());
        let running = service::start(config, &mut std::io::sink()).await.unwrap();
        Harness {
            dir,
            ca,
            running: Some(running),
        }
    }

    /// Stops the server and starts it again on the same files.
    async fn restart(&mut self) {
        self.running.take().unwrap().stop().await.unwrap();
        let (mut config, _) = common::server_config(self.dir.path(), POLICY, MASTER);
        // Keep the first CA: the clients' certificates are its.
        fs::write(self.dir.path().join("ca.pem"), self.ca.cert_pem()).unwrap();
        let server = self.ca.server().unwrap();
        fs::write(self.dir.path().join("server.pem"), &server.cert).unwrap();
        fs::write(self.dir.path().join("server.key"), &server.key).unwrap();
        config.client_ca = self.dir.path().join("ca.pem");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match service::start(config.clone(), &mut std::io::sink()).await {
                Ok(running) => {
                    self.running = Some(running);
                    return;
                }
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the server did not start again: {error}"),
            }
        }
    }

    /// Stops the server and waits until its store file is free again.
    async fn stop(mut self) -> (tempfile::TempDir, PathBuf) {
        let data = self.dir.path().join("data");
        let path = data.join(fugo::audit::STORE_FILE);
        self.running.take().unwrap().stop().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(error) = RedbStore::open(&path) {
            assert!(
                Instant::now() < deadline,
                "the store stayed locked: {error}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (self.dir, data)
    }

    async fn agency(&self, identity: &str) -> Agency {
        let pem = self.ca.client(identity).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(pem.cert, pem.key));
        let addr = self.running.as_ref().unwrap().addr;
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        Agency {
            codes: CodesClient::new(channel.clone()),
            audit: AuditClient::new(channel.clone()),
            persons: PersonsClient::new(channel),
        }
    }
}

/// One derive: the code, or the item's (code, reason).
async fn derive(agency: &mut Agency, number: &str) -> Result<String, (i32, String)> {
    let response = agency
        .codes
        .derive(DeriveRequest {
            numbers: vec![number.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    match response.results[0].result.clone().unwrap() {
        derive_result::Result::Code(code) => Ok(code),
        derive_result::Result::Error(error) => Err((error.code, error.reason)),
    }
}

async fn reidentify(agency: &mut Agency, code: &str) -> String {
    let response = agency
        .codes
        .reidentify(ReidentifyRequest {
            codes: vec![code.to_owned()],
        })
        .await
        .unwrap()
        .into_inner();
    match response.results[0].result.clone().unwrap() {
        reidentify_result::Result::Number(number) => number,
        reidentify_result::Result::Error(error) => panic!("reidentify failed: {error:?}"),
    }
}

async fn reissue(agency: &mut Agency, old: &str, new: &str) -> Result<u64, tonic::Status> {
    agency
        .persons
        .reissue(ReissueRequest {
            old_number: old.to_owned(),
            new_number: new.to_owned(),
        })
        .await
        .map(|response| response.into_inner().seq)
}

async fn disclose(portal: &mut Agency, code: &str) -> Vec<DisclosedRecord> {
    portal
        .audit
        .disclose(DiscloseRequest {
            code: code.to_owned(),
            page_size: 1000,
            page_token: String::new(),
            with_proofs: false,
        })
        .await
        .unwrap()
        .into_inner()
        .records
}

/// The disclosure once it holds at least `count` records (the person
/// index trails the log by a fraction of a second), for at most 5 s.
async fn disclose_at_least(portal: &mut Agency, code: &str, count: usize) -> Vec<DisclosedRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let records = disclose(portal, code).await;
        if records.len() >= count {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "the disclosure stayed at {} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn coder(agency: &str, epoch: u8) -> Coder {
    let keys = KeyHierarchy::new(&MasterKey::from_bytes(MASTER));
    Coder::new(
        &keys,
        AgencyId::new(agency).unwrap(),
        Epoch::new(epoch).unwrap(),
    )
}

fn code_of(agency: &str, epoch: u8, number: &str) -> String {
    let code = coder(agency, epoch).derive(&MyNumber::parse(number.as_bytes()).unwrap());
    String::from_utf8(code.to_text().to_vec()).unwrap()
}

fn superseded(result: Result<String, (i32, String)>, what: &str) {
    let (code, reason) = result.expect_err(what);
    assert_eq!(code, RpcCode::FailedPrecondition as i32, "{what}");
    assert_eq!(reason, "number superseded", "{what}");
}

/// Re-issue keeps every code, supersedes the old number on the server,
/// chains, survives a restart, refuses numbers with a history, and leaves
/// the person's disclosure unbroken.
#[tokio::test]
async fn a_reissued_person_keeps_every_code_and_the_old_number_is_superseded() {
    let mut harness = Harness::start().await;
    let mut jlis = harness.agency("jlis").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut portal = harness.agency("portal").await;
    let n0 = common::valid_number(31_000_000_001);
    let n1 = common::valid_number(31_000_000_002);
    let n2 = common::valid_number(31_000_000_003);
    let unrelated = common::valid_number(31_000_000_004);

    // Before: codes of the first number, and a history of it.
    let shinjuku_code = derive(&mut shinjuku, &n0).await.unwrap();
    assert_eq!(shinjuku_code, code_of("city-shinjuku", 2, &n0));
    let mhlw_code = derive(&mut mhlw, &n0).await.unwrap();
    let portal_code = derive(&mut portal, &n0).await.unwrap();
    let before = disclose_at_least(&mut portal, &portal_code, 3).await;

    // Only a `reissue` holder may record one.
    let refused = reissue(&mut mhlw, &n0, &n1).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("reissue"),
        "{}",
        refused.message()
    );
    reissue(&mut jlis, &n0, &n1).await.unwrap();

    // derive(new) = the old number's codes, for every agency; derive(old)
    // is superseded; reidentify says the new number, for codes of every
    // accepted epoch.
    assert_eq!(derive(&mut shinjuku, &n1).await.unwrap(), shinjuku_code);
    assert_eq!(derive(&mut mhlw, &n1).await.unwrap(), mhlw_code);
    assert_eq!(derive(&mut portal, &n1).await.unwrap(), portal_code);
    superseded(derive(&mut shinjuku, &n0).await, "derive(old)");
    superseded(derive(&mut mhlw, &n0).await, "derive(old), mhlw");
    assert_eq!(reidentify(&mut shinjuku, &shinjuku_code).await, n1);
    let epoch_1_code = code_of("city-shinjuku", 1, &n0);
    assert_eq!(reidentify(&mut shinjuku, &epoch_1_code).await, n1);

    // A batch mixes them: each item on its own.
    let mixed = shinjuku
        .codes
        .derive(DeriveRequest {
            numbers: vec![n0.clone(), n1.clone(), unrelated.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(
        &mixed[0].result,
        Some(derive_result::Result::Error(e)) if e.index == 0 && e.reason == "number superseded"
    ));
    assert!(matches!(
        &mixed[1].result,
        Some(derive_result::Result::Code(code)) if *code == shinjuku_code
    ));
    assert!(matches!(
        &mixed[2].result,
        Some(derive_result::Result::Code(code)) if *code == code_of("city-shinjuku", 2, &unrelated)
    ));

    // Disclosure: the same person, the old records and the new ones.
    let after = disclose_at_least(&mut portal, &portal_code, before.len() + 3).await;
    assert!(
        after
            .iter()
            .any(|r| r.operation == "reissue" && r.agency == "jlis")
    );
    for old in &before {
        assert!(after.iter().any(|r| r.sequence == old.sequence));
    }

    // A chain: the new number is re-issued in turn. Looking the next
    // number up first gives it no history.
    let unknown = jlis
        .persons
        .get_status(GetStatusRequest { number: n2.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!unknown.superseded && !unknown.reissued);
    assert_eq!(unknown.suspension(), SuspensionReason::Unspecified);
    let old = jlis
        .persons
        .get_status(GetStatusRequest { number: n0.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(old.superseded && !old.reissued);
    reissue(&mut jlis, &n1, &n2).await.unwrap();
    assert_eq!(derive(&mut shinjuku, &n2).await.unwrap(), shinjuku_code);
    superseded(derive(&mut shinjuku, &n1).await, "derive(middle)");
    superseded(derive(&mut shinjuku, &n0).await, "derive(first)");
    assert_eq!(reidentify(&mut shinjuku, &shinjuku_code).await, n2);

    // Refusals: a superseded old number; a new number already recorded;
    // a new number with a history; the same number; a malformed one.
    let status = reissue(&mut jlis, &n0, &common::valid_number(31_000_000_005))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("superseded"),
        "{}",
        status.message()
    );
    let status = reissue(&mut jlis, &n2, &n1).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("already recorded"),
        "{}",
        status.message()
    );
    derive(&mut mhlw, &unrelated).await.unwrap();
    let status = reissue(&mut jlis, &n2, &unrelated).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("history"), "{}", status.message());
    assert_eq!(
        reissue(&mut jlis, &n2, &n2).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let status = reissue(&mut jlis, &n2, "12345").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("field new_number"),
        "{}",
        status.message()
    );
    // The refused ones changed nothing.
    assert_eq!(derive(&mut shinjuku, &n2).await.unwrap(), shinjuku_code);

    // Kept across a restart: the tables are loaded from the store.
    harness.restart().await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    assert_eq!(derive(&mut shinjuku, &n2).await.unwrap(), shinjuku_code);
    superseded(
        derive(&mut shinjuku, &n0).await,
        "derive(first) after restart",
    );
    assert_eq!(reidentify(&mut shinjuku, &shinjuku_code).await, n2);

    // The offline CLI reads the same tables from the data directory.
    let (dir, data) = harness.stop().await;
    let key = dir.path().join("master.key");
    let input = dir.path().join("numbers.txt");
    fs::write(&input, format!("{n2}\n{n0}\n{n1}\n{unrelated}\n")).unwrap();
    let out = dir.path().join("codes.txt");
    let run = offline_derive(&key, &data, &input, &out, "1");
    assert_eq!(run.status.code(), Some(3), "{}", text(&run.stderr));
    let lines: Vec<String> = fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines[0], epoch_1_code);
    assert_eq!(lines[3], code_of("city-shinjuku", 1, &unrelated));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("line 2: number superseded"), "{stderr}");
    assert!(stderr.contains("line 3: number superseded"), "{stderr}");

    // The store: re-issue records about the person, and no number or
    // handle in the file.
    let path = data.join(fugo::audit::STORE_FILE);
    let mut store = RedbStore::open(&path).unwrap();
    let reissues = store
        .records(0, 100_000)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r, StoredRecord::Body(r) if r.header.operation == Operation::Reissue))
        .count();
    assert_eq!(reissues, 2);
    assert_eq!(
        store.persons().unwrap().len(),
        4,
        "n0, n1, n2 aliases; the person, once"
    );
    drop(store);
    assert_no_number_in(&path, &[&n0, &n1, &n2]);
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn offline_derive(
    key: &Path,
    data: &Path,
    input: &Path,
    out: &Path,
    epoch: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fugo"))
        .arg("derive")
        .arg("--master-key")
        .arg(key)
        .args(["--agency", "city-shinjuku", "--epoch", epoch])
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// Neither the digits, nor the value's bytes, nor the person handle of
/// any of `numbers` is in the file.
fn assert_no_number_in(path: &Path, numbers: &[&str]) {
    let bytes = fs::read(path).unwrap();
    let coder = coder("city-shinjuku", 1);
    for number in numbers {
        let parsed = MyNumber::parse(number.as_bytes()).unwrap();
        let value = parsed.expose_value().to_be_bytes();
        let handle = *coder.handle(&parsed).expose_bytes();
        for needle in [number.as_bytes(), &value[2..], &handle[..]] {
            assert!(
                !bytes.windows(needle.len()).any(|window| window == needle),
                "the store holds a number or a handle in the plain"
            );
        }
    }
}

/// Suspension: seal and redeem say only "person unavailable"; derive and
/// disclosure go on; the reason is for suspend and reissue holders; lift.
#[tokio::test]
async fn a_suspended_person_is_unavailable_to_seal_and_redeem_only() {
    let harness = Harness::start().await;
    let mut registry = harness.agency("registry").await;
    let mut jlis = harness.agency("jlis").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut portal = harness.agency("portal").await;
    let person = common::valid_number(32_000_000_001);
    let other = common::valid_number(32_000_000_002);
    let mhlw_code = derive(&mut mhlw, &person).await.unwrap();
    let other_code = derive(&mut mhlw, &other).await.unwrap();
    let portal_code = derive(&mut portal, &person).await.unwrap();
    let seal = |codes: Vec<String>| SealRequest {
        provider: "city-shinjuku".to_owned(),
        affair: "health".to_owned(),
        items: vec!["local-tax".to_owned()],
        non_disclosure_until: 0,
        codes,
        ..Default::default()
    };
    // A token sealed before the suspension.
    let sealed = mhlw
        .codes
        .seal(seal(vec![mhlw_code.clone()]))
        .await
        .unwrap();
    let Some(seal_result::Result::Sealed(early)) = sealed.into_inner().results[0].result.clone()
    else {
        panic!("sealed before the suspension")
    };

    // Only `suspend` may suspend; a reason must be named.
    let refused = mhlw
        .persons
        .suspend(SuspendRequest {
            number: person.clone(),
            reason: SuspensionReason::FraudHold.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let unnamed = registry
        .persons
        .suspend(SuspendRequest {
            number: person.clone(),
            reason: SuspensionReason::Unspecified.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unnamed.code(), Code::InvalidArgument);
    registry
        .persons
        .suspend(SuspendRequest {
            number: person.clone(),
            reason: SuspensionReason::FraudHold.into(),
        })
        .await
        .unwrap();

    // Seal: the suspended person's item fails, the other's is sealed.
    let results = mhlw
        .codes
        .seal(seal(vec![mhlw_code.clone(), other_code.clone()]))
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(seal_result::Result::Error(error)) = &results[0].result else {
        panic!("a suspended person was sealed")
    };
    assert_eq!(error.code, RpcCode::FailedPrecondition as i32);
    assert_eq!(error.reason, "person unavailable");
    assert!(matches!(
        results[1].result,
        Some(seal_result::Result::Sealed(_))
    ));
    // Redeem of the token sealed before: the same generic answer.
    let redeemed = shinjuku
        .codes
        .redeem(RedeemRequest {
            tokens: vec![early.token.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let Some(redeem_result::Result::Error(error)) = &redeemed[0].result else {
        panic!("a suspended person was redeemed")
    };
    assert_eq!(error.code, RpcCode::FailedPrecondition as i32);
    assert_eq!(error.reason, "person unavailable");
    // Derive and disclosure keep working; the suspension is not shown.
    assert_eq!(derive(&mut mhlw, &person).await.unwrap(), mhlw_code);
    let shown = disclose_at_least(&mut portal, &portal_code, 1).await;
    assert!(shown.iter().all(|r| r.operation != "suspension"));

    // The reason: to suspend and reissue holders only.
    for holder in [&mut registry, &mut jlis] {
        let status = holder
            .persons
            .get_status(GetStatusRequest {
                number: person.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.suspension(), SuspensionReason::FraudHold);
        assert!(status.suspended_since_ms > 0);
    }
    let refused = mhlw
        .persons
        .get_status(GetStatusRequest {
            number: person.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(!refused.message().contains("fraud"));

    // A re-issue keeps the suspension with the person.
    let renewed = common::valid_number(32_000_000_003);
    reissue(&mut jlis, &person, &renewed).await.unwrap();
    let status = registry
        .persons
        .get_status(GetStatusRequest {
            number: renewed.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.reissued);
    assert_eq!(status.suspension(), SuspensionReason::FraudHold);

    // Lift: sealing works again; a second lift is refused.
    registry
        .persons
        .lift(LiftRequest {
            number: renewed.clone(),
        })
        .await
        .unwrap();
    let results = mhlw
        .codes
        .seal(seal(vec![mhlw_code.clone()]))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(matches!(
        results[0].result,
        Some(seal_result::Result::Sealed(_))
    ));
    let again = registry
        .persons
        .lift(LiftRequest {
            number: renewed.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    // Suspending by a superseded number is refused.
    let old = registry
        .persons
        .suspend(SuspendRequest {
            number: person.clone(),
            reason: SuspensionReason::Deceased.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition);

    // Counted on /metrics by operation and status, as Codes calls are.
    let addr = harness.running.as_ref().unwrap().metrics_addr.unwrap();
    let (_, page) = common::scrape(addr, "/metrics").await;
    // Summed over the calling agencies (the series also name the agency).
    let calls = |operation: &str, code: &str| -> u64 {
        let (op, code) = (
            format!("operation=\"{operation}\""),
            format!("code=\"{code}\""),
        );
        page.lines()
            .filter(|line| line.starts_with("fugo_calls_total{"))
            .filter(|line| line.contains(&op) && line.contains(&code))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(calls("suspend", "OK"), 1);
    assert_eq!(calls("suspend", "PERMISSION_DENIED"), 1);
    assert_eq!(calls("suspend", "INVALID_ARGUMENT"), 1);
    assert_eq!(calls("suspend", "FAILED_PRECONDITION"), 1);
    assert_eq!(calls("lift", "OK"), 1);
    assert_eq!(calls("lift", "FAILED_PRECONDITION"), 1);
    assert_eq!(calls("get_status", "OK"), 3);
    assert_eq!(calls("get_status", "PERMISSION_DENIED"), 1);
    assert_eq!(calls("reissue", "OK"), 1);
    assert!(!page.contains("fraud"));

    // Audited: suspend, read, read, lift; the reason is in no record.
    let (_dir, data) = harness.stop().await;
    let mut store = RedbStore::open(data.join(fugo::audit::STORE_FILE)).unwrap();
    let notes: Vec<(String, String)> = store
        .records(0, 100_000)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            StoredRecord::Body(r) if r.header.operation == Operation::Suspension => {
                Some((r.header.caller.clone(), r.header.note.clone()))
            }
            _ => None,
        })
        .collect();
    let expect = |caller: &str, note: &str| (caller.to_owned(), note.to_owned());
    assert_eq!(
        notes,
        [
            expect("registry", "suspend"),
            expect("registry", "status read"),
            expect("jlis", "status read"),
            expect("registry", "status read"),
            expect("registry", "lift"),
        ]
    );
}

/// The demo key records nothing, but reads the re-issues of a data
/// directory it is given; without one there are none (D193).
#[test]
fn the_offline_derive_with_the_demo_key_reads_a_data_directorys_reissues() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    let demo = KeyHierarchy::new(&MasterKey::from_bytes(std::array::from_fn(|i| i as u8)));
    let (old, new) = (
        common::valid_number(33_000_000_001),
        common::valid_number(33_000_000_002),
    );
    let persons = fugo::persons::Persons::new(&demo);
    let parse = |n: &str| MyNumber::parse(n.as_bytes()).unwrap();
    let change = persons
        .plan_reissue(&parse(&old), &parse(&new), &[5; 36])
        .unwrap();
    let mut store = RedbStore::open(data.join(fugo::audit::STORE_FILE)).unwrap();
    store
        .append(fugo_log::store::Append {
            persons: fugo::audit::persons::stored(&change),
            now_ms: 1,
            ..Default::default()
        })
        .unwrap();
    drop(store);
    let input = dir.path().join("numbers.txt");
    fs::write(&input, format!("{new}\n{old}\n")).unwrap();
    let out = dir.path().join("codes.txt");
    let run = |with_data: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fugo"));
        command
            .arg("derive")
            .arg("--master-key")
            .arg(common::demo_key_path())
            .args(["--agency", "city-shinjuku", "--epoch", "1"])
            .arg(&input)
            .arg("-o")
            .arg(&out);
        if with_data {
            command.arg("--data-dir").arg(&data);
        }
        let output = command.output().unwrap();
        let lines: Vec<String> = fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        (output, lines)
    };
    let demo_code = |n: &str| {
        let coder = Coder::new(
            &demo,
            AgencyId::new("city-shinjuku").unwrap(),
            Epoch::new(1).unwrap(),
        );
        String::from_utf8(coder.derive(&parse(n)).to_text().to_vec()).unwrap()
    };
    let (output, lines) = run(true);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert_eq!(lines[0], demo_code(&old));
    assert!(text(&output.stderr).contains("line 2: number superseded"));
    // Nothing was recorded: the store holds no record.
    let store = RedbStore::open(data.join(fugo::audit::STORE_FILE)).unwrap();
    assert_eq!(store.size(), 0);
    drop(store);
    let (output, lines) = run(false);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(lines, [demo_code(&new), demo_code(&old)]);
}

/// A persons table that does not open under the server's key stops the
/// server at start, naming the tables: serving without them would give a
/// superseded number codes.
#[tokio::test]
async fn a_server_whose_tables_do_not_open_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _ca) = common::server_config(dir.path(), POLICY, MASTER);
    fs::create_dir_all(&config.data_dir).unwrap();
    let mut store = RedbStore::open(config.data_dir.join(fugo::audit::STORE_FILE)).unwrap();
    // Entries sealed under another master key.
    let other = KeyHierarchy::new(&MasterKey::from_bytes([43; 32]));
    let persons = fugo::persons::Persons::new(&other);
    let parse = |seed: u64| MyNumber::parse(common::valid_number(seed).as_bytes()).unwrap();
    let change = persons
        .plan_reissue(&parse(34_000_000_001), &parse(34_000_000_002), &[6; 36])
        .unwrap();
    store
        .append(fugo_log::store::Append {
            persons: fugo::audit::persons::stored(&change),
            now_ms: 1,
            ..Default::default()
        })
        .unwrap();
    drop(store);
    let error = service::start(config, &mut std::io::sink())
        .await
        .err()
        .expect("the server started");
    let message = error.to_string();
    assert!(
        message.contains("re-issue and suspension tables")
            && message.contains("of another master key"),
        "{message}"
    );
}
