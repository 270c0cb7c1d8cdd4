//! The audit trail (issue 7) end to end: a real server on 127.0.0.1:0 with
//! real TLS certificates made here, driven through tonic clients of
//! `fugo.v1.Codes` and `fugo.v1.Audit`; the store file itself read after
//! the server stopped; and the recorder failing a real write (a file-size
//! limit) in a process of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use fugo::certs::DevCa;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    ConfirmProvisionRequest, Confirmation, CopyRecord, DeriveRequest, DiscloseRequest,
    DiscloseResponse, DisclosedRecord, GetCheckpointRequest, GetConsistencyProofRequest,
    GetInclusionProofRequest, ReadCopyRequest, RedeemRequest, Redeemed, ReidentifyRequest,
    SealRequest, Sealed, derive_result, redeem_result, reidentify_result, seal_result,
};
use fugo::proto::google::rpc::Code as RpcCode;
use fugo::service::{self, Running};
use fugo_log::checkpoint::{Checkpoint, LogVerifier};
use fugo_log::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};
use fugo_log::record::{Operation, Outcome};
use fugo_log::store::{Append, RedbStore, Store};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
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
epoch = 1

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
non_disclosure = true
non_disclosure_max_days = 365
"#;

/// The metadata key every response names the latest checkpoint under.
const CHECKPOINT: &str = service::CHECKPOINT;

struct Harness {
    dir: tempfile::TempDir,
    ca: DevCa,
    running: Option<Running>,
}

/// One agency's clients of both services, on one connection.
struct Agency {
    codes: CodesClient<Channel>,
    audit: AuditClient<Channel>,
}

impl Harness {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (mut config, ca) = common::server_config(dir.path(), POLICY, [42; 32]);
        config.metrics = Some("127.0.0.1:0".parse().unwrap());
        let running = service::start(config, &mut std::io::sink()).await.unwrap();
        Harness {
            dir,
            ca,
            running: Some(running),
        }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    fn store_path(&self) -> PathBuf {
        self.dir.path().join("data").join(fugo::audit::STORE_FILE)
    }

    /// Clients of both services whose certificate names `identity`.
    async fn agency(&self, identity: &str) -> Agency {
        let pem = self.ca.client(identity).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.cert_pem()))
            .domain_name("localhost")
            .identity(Identity::from_pem(pem.cert, pem.key));
        let channel = Endpoint::from_shared(format!("https://{}", self.running().addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        Agency {
            codes: CodesClient::new(channel.clone()),
            audit: AuditClient::new(channel),
        }
    }

    /// Stops the server and waits until its store file is free again.
    async fn stop(mut self) -> (tempfile::TempDir, RedbStore) {
        let path = self.store_path();
        self.running.take().unwrap().stop().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match RedbStore::open(&path) {
                Ok(store) => return (self.dir, store),
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("the store stayed locked after stop: {error}"),
            }
        }
    }
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed.wrapping_add(i.wrapping_mul(0x9e37_79b9))))
        .collect()
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Derives and returns each item's code, or `None` for a refused item.
async fn derive(agency: &mut Agency, numbers: &[String]) -> Vec<Option<String>> {
    let response = agency
        .codes
        .derive(DeriveRequest {
            numbers: numbers.to_vec(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            derive_result::Result::Code(code) => Some(code),
            derive_result::Result::Error(_) => None,
        })
        .collect()
}

async fn derive_all(agency: &mut Agency, numbers: &[String]) -> Vec<String> {
    derive(agency, numbers)
        .await
        .into_iter()
        .map(|code| code.expect("every number is valid"))
        .collect()
}

/// Seals `codes` for city-shinjuku under "health".
async fn seal(agency: &mut Agency, codes: &[String], non_disclosure_until: i64) -> Vec<Sealed> {
    let response = agency
        .codes
        .seal(SealRequest {
            provider: "city-shinjuku".into(),
            affair: "health".into(),
            items: vec!["local-tax".into()],
            non_disclosure_until,
            codes: codes.to_vec(),
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            seal_result::Result::Sealed(sealed) => sealed,
            seal_result::Result::Error(e) => panic!("seal failed: {e:?}"),
        })
        .collect()
}

async fn redeem(agency: &mut Agency, tokens: Vec<Vec<u8>>) -> Vec<Redeemed> {
    let response = agency
        .codes
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            redeem_result::Result::Redeemed(redeemed) => redeemed,
            redeem_result::Result::Error(e) => panic!("redeem failed: {e:?}"),
        })
        .collect()
}

/// The caller's whole copy, page by page.
async fn read_copy(agency: &mut Agency, page_size: u32) -> Vec<CopyRecord> {
    let mut records: Vec<CopyRecord> = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = agency
            .audit
            .read_copy(ReadCopyRequest {
                page_size,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return records;
        }
        token = page.next_page_token;
    }
    panic!("the copy did not end within 1000 pages");
}

async fn disclose(portal: &mut Agency, request: DiscloseRequest) -> DiscloseResponse {
    portal.audit.disclose(request).await.unwrap().into_inner()
}

/// Every page of one person's disclosure, newest first.
async fn disclose_all(portal: &mut Agency, code: &str, page_size: u32) -> Vec<DisclosedRecord> {
    let mut records = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = disclose(
            portal,
            DiscloseRequest {
                code: code.to_owned(),
                page_size,
                page_token: token,
                with_proofs: false,
            },
        )
        .await;
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return records;
        }
        token = page.next_page_token;
    }
    panic!("the disclosure did not end within 1000 pages");
}

/// Polls the disclosure (first page) until `ready` holds, for at most 5 s.
async fn disclose_until(
    portal: &mut Agency,
    code: &str,
    ready: impl Fn(&[DisclosedRecord]) -> bool,
) -> Vec<DisclosedRecord> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = disclose(
            portal,
            DiscloseRequest {
                code: code.to_owned(),
                page_size: 1000,
                page_token: String::new(),
                with_proofs: false,
            },
        )
        .await;
        if ready(&page.records) {
            return page.records;
        }
        assert!(
            Instant::now() < deadline,
            "the disclosure did not catch up within 5 s: {:?}",
            page.records
                .iter()
                .map(|r| (r.sequence, r.operation.as_str()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The latest checkpoint, opened with the key the server publishes.
async fn checkpoint(agency: &mut Agency) -> (LogVerifier, String, Checkpoint) {
    let response = agency
        .audit
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let verifier = LogVerifier::parse(&response.verifier_key).unwrap();
    let opened = verifier.open(&response.checkpoint).unwrap();
    (verifier, response.checkpoint, opened)
}

/// Polls until a signed checkpoint covers `size` records; the time it took.
async fn checkpoint_covering(agency: &mut Agency, size: u64) -> (String, Checkpoint, Duration) {
    let start = Instant::now();
    loop {
        let (_, note, opened) = checkpoint(agency).await;
        if opened.size >= size {
            return (note, opened, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no checkpoint covers {size} records within 5 s (latest: {})",
            opened.size
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The signed note a response names in `x-fugo-checkpoint`, opened.
fn named_checkpoint(metadata: &tonic::metadata::MetadataMap, verifier: &LogVerifier) -> Checkpoint {
    let value = metadata
        .get(CHECKPOINT)
        .unwrap_or_else(|| panic!("a response without {CHECKPOINT}"))
        .to_str()
        .unwrap();
    let note = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    verifier.open(std::str::from_utf8(&note).unwrap()).unwrap()
}

fn hash(bytes: &[u8]) -> Hash {
    bytes.try_into().expect("a hash is 32 bytes")
}

// ── 1. every operation is recorded, per person ───────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_recorded_per_person_with_the_readers_own_code() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let people = numbers(2, 1_000);

    // Two valid numbers and a malformed one between them.
    let derived = derive(
        &mut mhlw,
        &[people[0].clone(), "123456789012".into(), people[1].clone()],
    )
    .await;
    assert!(derived[1].is_none(), "the malformed number is refused");
    let mhlw_codes = vec![derived[0].clone().unwrap(), derived[2].clone().unwrap()];
    let shinjuku_codes = derive_all(&mut shinjuku, &people).await;
    let sealed = seal(&mut mhlw, &mhlw_codes, 0).await;
    let redeemed = redeem(
        &mut shinjuku,
        sealed.iter().map(|s| s.token.clone()).collect(),
    )
    .await;
    let opened: Vec<&str> = redeemed.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(opened, shinjuku_codes);
    let back = shinjuku
        .codes
        .reidentify(ReidentifyRequest {
            codes: vec![shinjuku_codes[0].clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        back.results[0].result,
        Some(reidentify_result::Result::Number(_))
    ));

    // The requester's copy: its derive, its seals, and the provider's
    // redeems of them, each once per person, with MHLW's own codes.
    let copy = read_copy(&mut mhlw, 2).await;
    let of = |copy: &[CopyRecord], operation: &str| -> Vec<CopyRecord> {
        copy.iter()
            .filter(|r| r.operation == operation)
            .cloned()
            .collect()
    };
    let codes_of = |records: &[CopyRecord]| -> Vec<String> {
        let mut codes: Vec<String> = records.iter().map(|r| r.code.clone()).collect();
        codes.sort();
        codes
    };
    let mut mhlw_sorted = mhlw_codes.clone();
    mhlw_sorted.sort();
    let mut shinjuku_sorted = shinjuku_codes.clone();
    shinjuku_sorted.sort();

    let derives = of(&copy, "derive");
    assert_eq!(
        derives.len(),
        2,
        "one derive record per person, none for the malformed item"
    );
    assert_eq!(codes_of(&derives), mhlw_sorted);
    for record in &derives {
        assert_eq!(
            (record.role.as_str(), record.outcome.as_str()),
            ("caller", "done")
        );
        assert_eq!(record.other_agency, "");
        assert!(!record.batch_id.is_empty(), "the caller sees its batch id");
    }
    let seals = of(&copy, "seal");
    assert_eq!(seals.len(), 2);
    assert_eq!(codes_of(&seals), mhlw_sorted);
    for record in &seals {
        assert_eq!(
            (
                record.role.as_str(),
                record.other_agency.as_str(),
                record.affair.as_str(),
                record.outcome.as_str()
            ),
            ("caller", "city-shinjuku", "health", "done")
        );
        assert_eq!(record.items, ["local-tax"]);
    }
    let redeems = of(&copy, "redeem");
    assert_eq!(
        redeems.len(),
        2,
        "the provider's redeems are in the requester's copy"
    );
    assert_eq!(
        codes_of(&redeems),
        mhlw_sorted,
        "with the requester's own codes"
    );
    for record in &redeems {
        assert_eq!(
            (record.role.as_str(), record.other_agency.as_str()),
            ("counterpart", "city-shinjuku")
        );
        assert_eq!(record.batch_id, "", "no batch id of the other party");
    }
    assert!(of(&copy, "reidentify").is_empty());

    // The provider's copy: the same exchanges with its own codes, its
    // derive, and its reidentify of one person.
    let copy = read_copy(&mut shinjuku, 100).await;
    let seals = of(&copy, "seal");
    assert_eq!(seals.len(), 2);
    assert_eq!(codes_of(&seals), shinjuku_sorted);
    assert!(
        seals
            .iter()
            .all(|r| r.role == "counterpart" && r.other_agency == "mhlw" && r.batch_id.is_empty())
    );
    let redeems = of(&copy, "redeem");
    assert_eq!(redeems.len(), 2);
    assert_eq!(codes_of(&redeems), shinjuku_sorted);
    assert!(
        redeems
            .iter()
            .all(|r| r.role == "caller" && r.other_agency == "mhlw" && r.outcome == "done")
    );
    assert_eq!(codes_of(&of(&copy, "derive")), shinjuku_sorted);
    let reidentified = of(&copy, "reidentify");
    assert_eq!(reidentified.len(), 1);
    assert_eq!(reidentified[0].code, shinjuku_codes[0]);
    assert_eq!(reidentified[0].outcome, "done");
    // Paging through one's copy is recorded, per page.
    let again = read_copy(&mut shinjuku, 100).await;
    let pages = of(&again, "copy_page");
    assert_eq!(pages.len(), 1, "the one page read before");
    assert_eq!(
        pages[0].note,
        format!("from the start, {} records", copy.len())
    );

    // The malformed item is counted, not recorded per person: it becomes
    // a Refusals record when its minute has closed, that is, at the first
    // commit in a later minute. The store does that on the server's next
    // append; here the test makes that next append itself.
    let (_dir, mut store) = harness.stop().await;
    let next_minute = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 60_000;
    store
        .append(Append {
            now_ms: next_minute,
            ..Append::default()
        })
        .unwrap();
    let records = store.agency_records("mhlw", None, 10_000).unwrap();
    let refusals: Vec<_> = records
        .iter()
        .filter(|r| r.header.operation == Operation::Refusals)
        .collect();
    assert_eq!(refusals.len(), 1, "one tally for (mhlw, malformed, minute)");
    assert_eq!(refusals[0].header.note, "malformed");
    assert_eq!(refusals[0].header.count, 1);
    assert_eq!(refusals[0].entry.outcome, Outcome::Refused);
    assert!(refusals[0].entry.person.is_none());
    // And nothing recorded a person for it: two derive records, no more.
    let derives = records
        .iter()
        .filter(|r| r.header.operation == Operation::Derive)
        .count();
    assert_eq!(derives, 2);
}

// ── 2. disclosure ────────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclosure_shows_the_persons_records_newest_first_with_provision_and_proofs() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut portal = harness.agency("portal").await;
    let people = numbers(2, 2_000);
    let portal_code = derive_all(&mut portal, &people[..1]).await.remove(0);
    let mhlw_codes = derive_all(&mut mhlw, &people).await;

    // An exchange the person may see, confirmed by the provider...
    let open = seal(&mut mhlw, &mhlw_codes[..1], 0).await;
    let first = redeem(&mut shinjuku, vec![open[0].token.clone()]).await;
    let confirmed = shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![Confirmation {
                serial: first[0].serial.clone(),
                provided: true,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.results[0].code, RpcCode::Ok as i32);
    // ...and one withheld from the person for 30 days (不開示).
    let until = now_s() + 30 * 86_400;
    let hidden = seal(&mut mhlw, &mhlw_codes[..1], until).await;
    redeem(&mut shinjuku, vec![hidden[0].token.clone()]).await;

    // The requester's copy names both seals; the withheld one carries its date.
    let copy = read_copy(&mut mhlw, 100).await;
    let withheld: Vec<u64> = copy
        .iter()
        .filter(|r| r.non_disclosure_until == until)
        .map(|r| r.sequence)
        .collect();
    assert_eq!(
        withheld.len(),
        2,
        "the hidden seal and its redeem: {copy:?}"
    );
    let last_redeem = copy
        .iter()
        .filter(|r| r.operation == "redeem")
        .map(|r| r.sequence)
        .max()
        .unwrap();

    // The person index trails the log by a few seconds: wait until a
    // record after the last redeem is indexed (the first disclosure read).
    disclose_until(&mut portal, &portal_code, |records| {
        records.iter().any(|r| r.sequence > last_redeem)
    })
    .await;

    // Page by page (2 per page): newest first, no record twice.
    let shown = disclose_all(&mut portal, &portal_code, 2).await;
    let seqs: Vec<u64> = shown.iter().map(|r| r.sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first, each once: {seqs:?}"
    );
    assert!(shown.windows(2).all(|w| w[0].time_ms >= w[1].time_ms));
    for seq in &withheld {
        assert!(!seqs.contains(seq), "a withheld record was disclosed");
    }
    let operations: Vec<&str> = shown
        .iter()
        .filter(|r| r.operation != "disclosure")
        .map(|r| r.operation.as_str())
        .collect();
    assert_eq!(
        operations,
        ["provision", "redeem", "seal", "derive", "derive"],
        "the visible exchange, and both derives of the person"
    );
    let reads: Vec<&DisclosedRecord> = shown
        .iter()
        .filter(|r| r.operation == "disclosure")
        .collect();
    assert!(!reads.is_empty(), "the disclosure reads are recorded too");
    assert!(
        reads
            .iter()
            .all(|r| r.agency == "portal" && r.agency_name == "Citizen portal")
    );
    let sealed = shown.iter().find(|r| r.operation == "seal").unwrap();
    assert_eq!(
        (
            sealed.agency.as_str(),
            sealed.agency_name.as_str(),
            sealed.counterpart.as_str(),
            sealed.counterpart_name.as_str(),
            sealed.affair.as_str(),
            sealed.affair_name.as_str(),
            sealed.outcome.as_str(),
        ),
        (
            "mhlw",
            "MHLW health insurance",
            "city-shinjuku",
            "Shinjuku City",
            "health",
            "health insurance benefits",
            "done"
        )
    );
    assert_eq!(sealed.items, ["local-tax"]);
    assert_eq!(sealed.provision, "provided");
    assert!(
        sealed.provided_at_ms >= sealed.time_ms,
        "request time {} then provision time {}",
        sealed.time_ms,
        sealed.provided_at_ms
    );
    let redeemed = shown.iter().find(|r| r.operation == "redeem").unwrap();
    assert_eq!(
        (redeemed.agency.as_str(), redeemed.counterpart.as_str()),
        ("city-shinjuku", "mhlw")
    );
    // The person's other records are not theirs to see: the second person
    // appears nowhere.
    assert_eq!(
        shown.iter().filter(|r| r.operation == "derive").count(),
        2,
        "portal's and MHLW's derive of this person only"
    );

    // A later read shows the earlier read as a record.
    let before = shown[0].sequence;
    let later = disclose_until(&mut portal, &portal_code, |records| {
        records
            .iter()
            .any(|r| r.sequence > before && r.operation == "disclosure")
    })
    .await;
    assert_eq!(later[0].operation, "disclosure");

    // With proofs: every record up to the checkpoint proves its inclusion.
    let newest = later[0].sequence;
    checkpoint_covering(&mut portal, newest + 1).await;
    let proven = disclose(
        &mut portal,
        DiscloseRequest {
            code: portal_code.clone(),
            page_size: 1000,
            page_token: String::new(),
            with_proofs: true,
        },
    )
    .await;
    let (verifier, _, _) = checkpoint(&mut portal).await;
    let tree = verifier.open(&proven.checkpoint).unwrap();
    assert!(tree.size > newest);
    let mut proofs = 0;
    for record in proven.records.iter().filter(|r| r.sequence < tree.size) {
        assert!(
            !record.leaf.is_empty(),
            "record {} has no leaf",
            record.sequence
        );
        let path: Vec<Hash> = record.proof.iter().map(|h| hash(h)).collect();
        verify_inclusion(
            &leaf_hash(&record.leaf),
            record.sequence,
            tree.size,
            &path,
            &tree.root,
        )
        .unwrap_or_else(|e| panic!("record {}: {e}", record.sequence));
        // A leaf changed by one bit does not verify.
        let mut changed = record.leaf.clone();
        changed[0] ^= 1;
        assert!(
            verify_inclusion(
                &leaf_hash(&changed),
                record.sequence,
                tree.size,
                &path,
                &tree.root
            )
            .is_err()
        );
        proofs += 1;
    }
    assert!(proofs >= 6, "{proofs} records proven");

    // Only the portal discloses, and only by its own code.
    let denied = mhlw
        .audit
        .disclose(DiscloseRequest {
            code: mhlw_codes[0].clone(),
            ..DiscloseRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let foreign = portal
        .audit
        .disclose(DiscloseRequest {
            code: mhlw_codes[0].clone(),
            ..DiscloseRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::NotFound, "{foreign:?}");
    harness.stop().await;
}

/// The person index must not wait for a quiet moment: under steady
/// traffic (a call every few milliseconds, so the recorder is never idle)
/// disclosure still catches up within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclosure_catches_up_under_steady_traffic() {
    let harness = Harness::start().await;
    let mut portal = harness.agency("portal").await;
    let mut busy = harness.agency("city-shinjuku").await;
    let person = numbers(1, 3_000);
    let code = derive_all(&mut portal, &person).await.remove(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let traffic = tokio::spawn(async move {
        let others = numbers(1, 4_000);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut calls = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            derive_all(&mut busy, &others).await;
            calls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        calls
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shown = disclose_until(&mut portal, &code, |records| {
        records.iter().any(|r| r.operation == "derive")
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let calls = traffic.await.unwrap();
    assert!(calls > 10, "the traffic ran ({calls} calls)");
    assert_eq!(shown.last().unwrap().operation, "derive");
    harness.stop().await;
}

// ── 3. redeem is idempotent per serial ───────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeeming_twice_answers_a_repeat_and_discloses_one_exchange() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut portal = harness.agency("portal").await;
    let person = numbers(1, 5_000);
    let portal_code = derive_all(&mut portal, &person).await.remove(0);
    let mhlw_code = derive_all(&mut mhlw, &person).await;
    let sealed = seal(&mut mhlw, &mhlw_code, 0).await;
    let token = sealed[0].token.clone();
    let first = redeem(&mut shinjuku, vec![token.clone()]).await.remove(0);
    let again = redeem(&mut shinjuku, vec![token]).await.remove(0);
    assert!(!first.repeat, "the first redeem is no repeat");
    assert!(again.repeat, "the second is marked as a repeat");
    assert_eq!(again.code, first.code, "with the same answer");
    assert_eq!(again.serial, first.serial);
    assert_eq!(first.serial, sealed[0].serial);

    // Both are in the provider's copy, the second as a repeat.
    let copy = read_copy(&mut shinjuku, 100).await;
    let redeems: Vec<&CopyRecord> = copy.iter().filter(|r| r.operation == "redeem").collect();
    assert_eq!(
        redeems
            .iter()
            .map(|r| r.outcome.as_str())
            .collect::<Vec<_>>(),
        ["done", "repeat"]
    );
    assert!(redeems.iter().all(|r| r.code == first.code));
    let repeat_seq = redeems[1].sequence;

    // The person sees one exchange: wait until the index has passed the
    // repeat, then count.
    let shown = disclose_until(&mut portal, &portal_code, |records| {
        records.iter().any(|r| r.sequence > repeat_seq)
    })
    .await;
    let redeems: Vec<&DisclosedRecord> = shown.iter().filter(|r| r.operation == "redeem").collect();
    assert_eq!(redeems.len(), 1, "one exchange: {shown:?}");
    assert_eq!(redeems[0].outcome, "done");
    assert!(redeems[0].sequence < repeat_seq);
    harness.stop().await;
}

// ── 4. two agencies' copies share no person-linking value ────────────────

/// CopyRecord fields whose values are the same for everyone by design:
/// the record's place and time in the one log (integers of at most 8
/// bytes), the fixed vocabularies (operation, role, outcome), public policy
/// text (agency ids, affair, items), counts, dates, and the note (server
/// text, "never a value": a refusal reason, "from the start, 3 records").
/// The others (code, batch_id, and any field added later) are checked raw;
/// every string field is also checked decoded.
const PUBLIC_FIELDS: [u32; 11] = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13];

fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long");
}

/// (field number, value bytes) of each field of a protobuf encoding.
fn fields(bytes: &[u8]) -> Vec<(u32, std::ops::Range<usize>)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < bytes.len() {
        let key = varint(bytes, &mut at);
        let (field, wire) = ((key >> 3) as u32, key & 7);
        let start = at;
        match wire {
            0 => {
                varint(bytes, &mut at);
                out.push((field, start..at));
            }
            2 => {
                let len = varint(bytes, &mut at) as usize;
                out.push((field, at..at + len));
                at += len;
            }
            other => panic!("CopyRecord has no wire type {other}"),
        }
    }
    out
}

/// Every 16-byte value a copy record carries that is not the same for
/// everyone by design: each 16-byte window of a checked field's value, and
/// each 16-byte window of any string field's value decoded from hex,
/// base64 or a code's base32. Windows across field boundaries are not
/// values: they join public structure (the outcome name, the code field's
/// tag and length, a code's version and epoch symbols) to at most a few
/// bytes of a value, and match across copies by construction.
fn private_windows(record: &CopyRecord) -> HashSet<Vec<u8>> {
    let bytes = prost::Message::encode_to_vec(record);
    let mut windows = HashSet::new();
    for (field, range) in fields(&bytes) {
        let value = &bytes[range];
        if !PUBLIC_FIELDS.contains(&field) {
            windows.extend(value.windows(16).map(<[u8]>::to_vec));
        }
        for decoded in decodings(value) {
            windows.extend(decoded.windows(16).map(<[u8]>::to_vec));
        }
    }
    windows
}

/// The bytes a text field may stand for: hex, base64 (both alphabets,
/// padded or not), an agency code's base32.
fn decodings(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(value) else {
        return out;
    };
    for word in text.split(|c: char| c.is_whitespace() || c == '/' || c == ',') {
        if word.len() >= 2 && word.len() % 2 == 0 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(common::hex(&word.to_ascii_lowercase()));
        }
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            if let Ok(bytes) = engine.decode(word) {
                out.push(bytes);
            }
        }
        if let Ok((_, bytes)) = fugo::code_text::decode(word.as_bytes()) {
            out.push(bytes.to_vec());
        }
    }
    out
}

fn windows_of(copy: &[CopyRecord]) -> HashSet<Vec<u8>> {
    copy.iter().flat_map(private_windows).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agencies_copies_of_the_same_exchanges_share_no_16_byte_value() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let people = numbers(6, 6_000);
    let mhlw_codes = derive_all(&mut mhlw, &people).await;
    let shinjuku_codes = derive_all(&mut shinjuku, &people).await;
    let sealed = seal(&mut mhlw, &mhlw_codes, 0).await;
    let hidden = seal(&mut mhlw, &mhlw_codes[..2], now_s() + 86_400).await;
    let tokens: Vec<Vec<u8>> = sealed
        .iter()
        .chain(&hidden)
        .map(|s| s.token.clone())
        .collect();
    let redeemed = redeem(&mut shinjuku, tokens.clone()).await;
    redeem(&mut shinjuku, tokens[..1].to_vec()).await; // a repeat
    shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: redeemed
                .iter()
                .enumerate()
                .map(|(i, r)| Confirmation {
                    serial: r.serial.clone(),
                    provided: i % 2 == 0,
                })
                .collect(),
        })
        .await
        .unwrap();
    shinjuku
        .codes
        .reidentify(ReidentifyRequest {
            codes: shinjuku_codes[..2].to_vec(),
        })
        .await
        .unwrap();
    // Refused items of both (tallied; no person).
    derive(&mut mhlw, &["12345".into()]).await;
    derive(&mut shinjuku, &["12345".into()]).await;
    // Each reads its copy twice, so each copy holds copy-page records too.
    read_copy(&mut mhlw, 3).await;
    read_copy(&mut shinjuku, 3).await;
    let requester = read_copy(&mut mhlw, 3).await;
    let provider = read_copy(&mut shinjuku, 3).await;

    // The copies do describe the same exchanges (same records)...
    let exchanges = |copy: &[CopyRecord]| -> BTreeMap<u64, String> {
        copy.iter()
            .filter(|r| ["seal", "redeem", "provision"].contains(&r.operation.as_str()))
            .map(|r| (r.sequence, r.operation.clone()))
            .collect()
    };
    let shared = exchanges(&requester);
    assert_eq!(
        shared.len(),
        (6 + 2) + (8 + 1) + 8,
        "seals, redeems, provisions"
    );
    assert_eq!(shared, exchanges(&provider));
    // ...each with its own codes.
    let requester_windows = windows_of(&requester);
    let provider_windows = windows_of(&provider);
    for code in &mhlw_codes {
        let (_, bytes) = fugo::code_text::decode(code.as_bytes()).unwrap();
        assert!(requester_windows.contains(bytes.as_slice()));
        assert!(!provider_windows.contains(bytes.as_slice()));
    }
    let common: Vec<String> = requester_windows
        .intersection(&provider_windows)
        .map(|w| common::to_hex(w))
        .collect();
    assert!(
        common.is_empty(),
        "{} 16-byte values in both copies, e.g. {:?}",
        common.len(),
        &common[..common.len().min(5)]
    );

    // The check would see a leak: a provider copy that named the
    // requester's code, or the requester's batch id, shares values.
    let mut leaky = provider[0].clone();
    leaky.code = mhlw_codes[0].clone();
    assert!(!windows_of(&[leaky]).is_disjoint(&requester_windows));
    let own = requester.iter().find(|r| !r.batch_id.is_empty()).unwrap();
    let mut leaky = provider[0].clone();
    leaky.batch_id = own.batch_id.clone();
    leaky.code.clear();
    assert!(!windows_of(&[leaky]).is_disjoint(&requester_windows));
    harness.stop().await;
}

// ── 5. checkpoints ───────────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_cover_records_within_seconds_and_every_response_names_one() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut portal = harness.agency("portal").await;
    let people = numbers(3, 7_000);

    // The very first call on a new log already names a checkpoint.
    let response = mhlw
        .codes
        .derive(DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap();
    let (verifier, old_note, old) = checkpoint(&mut mhlw).await;
    named_checkpoint(response.metadata(), &verifier);
    assert!(old.size >= 1, "the policy's loading is the first record");
    assert!(!old_note.is_empty());

    // Within 5 s a checkpoint covers the derive just made.
    let copy = read_copy(&mut mhlw, 100).await;
    let newest = copy
        .iter()
        .filter(|r| r.operation == "derive")
        .map(|r| r.sequence)
        .max()
        .unwrap();
    let (_, covering, took) = checkpoint_covering(&mut mhlw, newest + 1).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(covering.size > newest);

    // Every response of both services names a checkpoint that opens with
    // the published key.
    let mhlw_codes: Vec<String> = response
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            derive_result::Result::Code(code) => code,
            derive_result::Result::Error(e) => panic!("{e:?}"),
        })
        .collect();
    let sealed = mhlw
        .codes
        .seal(SealRequest {
            provider: "city-shinjuku".into(),
            affair: "health".into(),
            items: vec!["local-tax".into()],
            non_disclosure_until: 0,
            codes: mhlw_codes.clone(),
            on_behalf_of: String::new(),
        })
        .await
        .unwrap();
    named_checkpoint(sealed.metadata(), &verifier);
    // A refused call names it too (mhlw may not reidentify).
    let refused = mhlw
        .codes
        .reidentify(ReidentifyRequest {
            codes: mhlw_codes.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    named_checkpoint(refused.metadata(), &verifier);
    let tokens: Vec<Vec<u8>> = sealed
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result.unwrap() {
            seal_result::Result::Sealed(s) => s.token,
            seal_result::Result::Error(e) => panic!("{e:?}"),
        })
        .collect();
    let redeemed = shinjuku
        .codes
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap();
    named_checkpoint(redeemed.metadata(), &verifier);
    let serial = match redeemed.into_inner().results[0].result.clone().unwrap() {
        redeem_result::Result::Redeemed(r) => r.serial,
        redeem_result::Result::Error(e) => panic!("{e:?}"),
    };
    let shinjuku_codes = derive_all(&mut shinjuku, &people).await;
    let reidentified = shinjuku
        .codes
        .reidentify(ReidentifyRequest {
            codes: shinjuku_codes,
        })
        .await
        .unwrap();
    named_checkpoint(reidentified.metadata(), &verifier);
    let streamed = mhlw
        .codes
        .derive_stream(tokio_stream::iter(vec![DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        }]))
        .await
        .unwrap();
    named_checkpoint(streamed.metadata(), &verifier);
    let mut stream = streamed.into_inner();
    while stream.message().await.unwrap().is_some() {}
    let got = mhlw
        .audit
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap();
    named_checkpoint(got.metadata(), &verifier);
    let copied = mhlw
        .audit
        .read_copy(ReadCopyRequest::default())
        .await
        .unwrap();
    named_checkpoint(copied.metadata(), &verifier);
    let confirmed = shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![Confirmation {
                serial,
                provided: true,
            }],
        })
        .await
        .unwrap();
    named_checkpoint(confirmed.metadata(), &verifier);
    let portal_code = derive_all(&mut portal, &people[..1]).await.remove(0);
    let disclosed = portal
        .audit
        .disclose(DiscloseRequest {
            code: portal_code,
            ..DiscloseRequest::default()
        })
        .await
        .unwrap();
    named_checkpoint(disclosed.metadata(), &verifier);
    let included = portal
        .audit
        .get_inclusion_proof(GetInclusionProofRequest {
            sequence: newest,
            tree_size: 0,
        })
        .await
        .unwrap();
    named_checkpoint(included.metadata(), &verifier);
    let included = included.into_inner();
    let tree = verifier.open(&included.checkpoint).unwrap();
    let path: Vec<Hash> = included.proof.iter().map(|h| hash(h)).collect();
    verify_inclusion(
        &leaf_hash(&included.leaf),
        newest,
        tree.size,
        &path,
        &tree.root,
    )
    .unwrap();

    // The latest checkpoint is consistent with the first one seen.
    let (_, latest, _) = checkpoint_covering(&mut mhlw, covering.size + 1).await;
    let proved = mhlw
        .audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: old.size,
            new_size: 0,
        })
        .await
        .unwrap();
    named_checkpoint(proved.metadata(), &verifier);
    let proved = proved.into_inner();
    let new = verifier.open(&proved.checkpoint).unwrap();
    assert!(new.size >= latest.size);
    let proof: Vec<Hash> = proved.proof.iter().map(|h| hash(h)).collect();
    verify_consistency(old.size, new.size, &old.root, &new.root, &proof).unwrap();
    // A root the log never had is caught by the same proof.
    let mut forged = old.root;
    forged[31] ^= 1;
    assert!(verify_consistency(old.size, new.size, &forged, &new.root, &proof).is_err());
    // And from the covering checkpoint to the latest too.
    let proved = mhlw
        .audit
        .get_consistency_proof(GetConsistencyProofRequest {
            old_size: covering.size,
            new_size: new.size,
        })
        .await
        .unwrap()
        .into_inner();
    let proof: Vec<Hash> = proved.proof.iter().map(|h| hash(h)).collect();
    verify_consistency(covering.size, new.size, &covering.root, &new.root, &proof).unwrap();
    harness.stop().await;
}

// ── 6. fail closed, never hang ───────────────────────────────────────────

/// Runs the ignored test `name` alone in a process of its own (this test
/// binary again): a file-size limit applies to a whole process, and would
/// fail the other tests' files too.
fn run_alone(name: &str) {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(LIMIT_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran the test:\n{stdout}"
    );
}

/// Set in the process [`run_alone`] starts.
const LIMIT_CHILD: &str = "FUGO_AUDIT_LIMIT_CHILD";

/// Checks that this is the process of its own, and makes a write past the
/// file-size limit fail with EFBIG instead of the signal killing the
/// process, as `fugo serve` does. True once a write hit the limit.
fn alone_with_file_size_signal_handled() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    assert_eq!(
        std::env::var(LIMIT_CHILD).as_deref(),
        Ok("1"),
        "this test lowers its whole process's file-size limit; run it through its parent"
    );
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGXFSZ, std::sync::Arc::clone(&seen))
        .unwrap();
    seen
}

#[test]
fn a_failed_write_answers_unavailable_and_recovery_restores_health() {
    run_alone("recorder_fails_closed_and_recovers_in_this_process");
}

fn fsize_limit(pid: u32, value: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={value}")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success(), "prlimit --fsize={value}");
}

fn fsize_soft_limit(pid: u32) -> String {
    let output = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            "--fsize",
            "--output=SOFT",
            "--noheadings",
            "--raw",
        ])
        .output()
        .expect("prlimit (util-linux) runs");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A recorder on `dir` that writes whatever the free space, so that only
/// the file-size limit stops its writes.
fn recorder_with_no_disk_reserve(dir: &std::path::Path) -> fugo::audit::Recorder {
    let signer = fugo_log::checkpoint::LogSigner::from_seed("test.local/audit", &[7; 32]).unwrap();
    let settings = fugo::audit::Settings {
        reserve_bytes: 0,
        warn_bytes: 0,
        ..fugo::audit::Settings::default()
    };
    fugo::audit::Recorder::open(dir, signer, settings).unwrap()
}

fn a_derive_record(person: u8) -> Append {
    use fugo_log::record::{Entry, Group, Header, PersonLink};
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Append {
        groups: vec![Group {
            header: Header {
                time_ms,
                operation: Operation::Derive,
                caller: "mhlw".into(),
                counterpart: String::new(),
                affair: String::new(),
                items: Vec::new(),
                non_disclosure_until: 0,
                policy_version: [1; 32],
                batch_id: format!("batch-{person}"),
                note: String::new(),
                count: 0,
                agent: String::new(),
            },
            entries: vec![Entry {
                outcome: Outcome::Done,
                epoch: 1,
                serial: None,
                person: Some(PersonLink([person; 16])),
            }],
        }],
        now_ms: time_ms,
        ..Append::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_failed_write_answers_unavailable_and_recovery_restores_health in a process of its own"]
async fn recorder_fails_closed_and_recovers_in_this_process() {
    let seen = alone_with_file_size_signal_handled();
    let dir = tempfile::tempdir().unwrap();
    let recorder = recorder_with_no_disk_reserve(dir.path());
    let health = recorder.health();
    recorder.record(a_derive_record(1)).await.unwrap();
    assert!(*health.borrow());

    let pid = std::process::id();
    let original = fsize_soft_limit(pid);
    fsize_limit(pid, "1:");
    let started = Instant::now();
    let failed = recorder.record(a_derive_record(2)).await;
    let took = started.elapsed();
    assert!(
        matches!(failed, Err(fugo::audit::RecorderError::Unavailable(_))),
        "{failed:?}"
    );
    assert!(took < Duration::from_secs(3), "answered in {took:?}");
    assert!(!*health.borrow(), "health says not serving");
    // Still failing while the limit stays, still without hanging.
    let started = Instant::now();
    assert!(recorder.record(a_derive_record(3)).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!*health.borrow());

    fsize_limit(pid, &format!("{original}:"));
    let lifted = Instant::now();
    loop {
        match recorder.record(a_derive_record(4)).await {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    lifted.elapsed() < Duration::from_secs(10),
                    "not writing again 10 s after the limit was lifted: {error}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(*health.borrow(), "health says serving again");
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        "the write really hit the limit"
    );
    drop(recorder);

    // The log holds the records that were acknowledged.
    let mut store = RedbStore::open(dir.path().join(fugo::audit::STORE_FILE)).unwrap();
    let people = mhlw_people(&mut store);
    assert_eq!(people.first(), Some(&1));
    assert_eq!(people.last(), Some(&4));
}

/// A step of the person index that fails (the file cannot grow) leaves the
/// calls alone: the next commit is tried on a store opened again, not
/// refused untried, and health stays serving (D255; the CI failure of
/// durability's fail-closed test, where an index step hit the limit first).
#[test]
fn a_failed_index_step_refuses_no_commit() {
    run_alone("failed_index_step_in_this_process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_failed_index_step_refuses_no_commit in a process of its own"]
async fn failed_index_step_in_this_process() {
    use fugo_log::record::{Entry, PersonLink};
    let seen = alone_with_file_size_signal_handled();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(fugo::audit::STORE_FILE);
    // 50,000 people in records the index has not taken yet, and some free
    // pages in the file: room for a small commit, not for an index step.
    {
        let mut many = a_derive_record(0);
        many.groups[0].entries = (0..50_000u32)
            .map(|person| {
                let mut link = [0xa5; 16];
                link[..4].copy_from_slice(&person.to_be_bytes());
                Entry {
                    outcome: Outcome::Done,
                    epoch: 1,
                    serial: None,
                    person: Some(PersonLink(link)),
                }
            })
            .collect();
        let mut store = RedbStore::open(&path).unwrap();
        store.append(many).unwrap();
        store.probe(256 << 10).unwrap();
    }
    let pid = std::process::id();
    let original = fsize_soft_limit(pid);
    fsize_limit(pid, &format!("{}:", fs::metadata(&path).unwrap().len()));

    let recorder = recorder_with_no_disk_reserve(dir.path());
    let health = recorder.health();
    // The idle thread takes an index step within a tick; it fails.
    let started = Instant::now();
    while !seen.load(std::sync::atomic::Ordering::Relaxed) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no index step hit the limit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the store's reopening (at most twice a second).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(
        *health.borrow(),
        "a failed index step is no reason to stop serving"
    );
    let answered = recorder.record(a_derive_record(1)).await;
    assert!(
        answered.is_ok(),
        "a commit that fits was refused: {answered:?}"
    );
    assert!(*health.borrow());

    fsize_limit(pid, &format!("{original}:"));
    drop(recorder);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(
        store.size(),
        50_001,
        "the acknowledged record is in the log"
    );
}

/// The first byte of each person mhlw's records name, in log order (the
/// records of [`a_derive_record`]).
fn mhlw_people(store: &mut RedbStore) -> Vec<u8> {
    store
        .agency_records("mhlw", None, 100)
        .unwrap()
        .iter()
        .map(|r| r.entry.person.unwrap().0[0])
        .collect()
}

/// D202: `close` closes the store while others still hold the recorder:
/// what was queued is committed, later jobs are refused, and the file is
/// free (and whole) once `closed` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_recorder_closes_the_store_while_others_hold_it() {
    let dir = tempfile::tempdir().unwrap();
    let signer = fugo_log::checkpoint::LogSigner::from_seed("test.local/audit", &[7; 32]).unwrap();
    let recorder = std::sync::Arc::new(
        fugo::audit::Recorder::open(dir.path(), signer, fugo::audit::Settings::default()).unwrap(),
    );
    recorder.record(a_derive_record(1)).await.unwrap();
    let held = std::sync::Arc::clone(&recorder);
    let mut closed = recorder.closed();
    recorder.close();
    tokio::time::timeout(Duration::from_secs(5), closed.wait_for(|closed| *closed))
        .await
        .expect("the store closes while a holder remains")
        .unwrap();
    assert!(
        matches!(
            held.record(a_derive_record(2)).await,
            Err(fugo::audit::RecorderError::Stopped)
        ),
        "a record after close is refused"
    );
    let mut store = RedbStore::open_checked(dir.path().join(fugo::audit::STORE_FILE)).unwrap();
    let people = mhlw_people(&mut store);
    assert_eq!(people, vec![1]);
    assert!(
        store
            .latest_checkpoint()
            .unwrap()
            .is_some_and(|(size, _)| size == store.size()),
        "the close signed what was recorded"
    );
    drop(held);
}

// ── 7. policy versions ───────────────────────────────────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_text_loaded_is_kept_by_version_and_its_loading_recorded() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let people = numbers(1, 8_000);
    let first = mhlw
        .codes
        .derive(DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy_version;
    // A new policy: the affair renamed.
    let renamed = POLICY.replace(
        "health insurance benefits",
        "health insurance benefits (2027)",
    );
    fs::write(harness.dir.path().join("policy.toml"), &renamed).unwrap();
    let reloaded = harness.running().reload_policy().unwrap().to_string();
    let second = mhlw
        .codes
        .derive(DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy_version;
    assert_eq!(second, reloaded);
    assert_ne!(first, second);

    let (_dir, mut store) = harness.stop().await;
    let digest = |version: &str| -> Hash { hash(&common::hex(version)) };
    assert_eq!(
        store.policy(&digest(&first)).unwrap().as_deref(),
        Some(POLICY)
    );
    assert_eq!(
        store.policy(&digest(&second)).unwrap().as_deref(),
        Some(renamed.as_str())
    );
    // Each loading is a record of the server ("fugo"), naming its version.
    let loaded: Vec<[u8; 32]> = store
        .agency_records("fugo", None, 100)
        .unwrap()
        .iter()
        .filter(|r| r.header.operation == Operation::PolicyLoaded)
        .map(|r| r.header.policy_version)
        .collect();
    assert_eq!(loaded, [digest(&first), digest(&second)]);
    // And each derive names the version it was decided under.
    let derived: Vec<[u8; 32]> = store
        .agency_records("mhlw", None, 100)
        .unwrap()
        .iter()
        .filter(|r| r.header.operation == Operation::Derive)
        .map(|r| r.header.policy_version)
        .collect();
    assert_eq!(derived, [digest(&first), digest(&second)]);
}

#[test]
fn a_policy_loaded_while_writes_fail_is_recorded_once_they_work() {
    run_alone("policy_reload_during_a_write_failure_in_this_process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_policy_loaded_while_writes_fail_is_recorded_once_they_work in a process of its own"]
async fn policy_reload_during_a_write_failure_in_this_process() {
    let seen = alone_with_file_size_signal_handled();
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let people = numbers(1, 9_000);
    let first = mhlw
        .codes
        .derive(DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy_version;
    let renamed = POLICY.replace(
        "health insurance benefits",
        "health insurance benefits (2027)",
    );
    fs::write(harness.dir.path().join("policy.toml"), &renamed).unwrap();

    // The store cannot be written: the reload's record fails with the
    // calls around it, which fail closed, without hanging.
    let pid = std::process::id();
    let original = fsize_soft_limit(pid);
    fsize_limit(pid, "1:");
    let second = harness.running().reload_policy().unwrap().to_string();
    let started = Instant::now();
    let refused = mhlw
        .codes
        .derive(DeriveRequest {
            numbers: people.clone(),
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The failed commit and the refused call are in the metrics.
    let (_, page) = common::scrape(harness.running().metrics_addr.unwrap(), "/metrics").await;
    assert!(
        common::metric(&page, "fugo_audit_commit_failures_total") >= 1,
        "{page}"
    );
    assert_eq!(
        common::metric(
            &page,
            "fugo_calls_total{operation=\"derive\",agency=\"mhlw\",code=\"UNAVAILABLE\"}"
        ),
        1,
        "{page}"
    );

    // Writable again: serving within 10 s, under the new policy.
    fsize_limit(pid, &format!("{original}:"));
    let lifted = Instant::now();
    loop {
        match mhlw
            .codes
            .derive(DeriveRequest {
                numbers: people.clone(),
                on_behalf_of: String::new(),
                epoch: 0,
            })
            .await
        {
            Ok(response) => {
                assert_eq!(response.into_inner().policy_version, second);
                break;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    lifted.elapsed() < Duration::from_secs(10),
                    "still {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(seen.load(std::sync::atomic::Ordering::Relaxed));

    // The new policy's text and loading were recorded after all, before
    // the call decided under it.
    let (_dir, mut store) = harness.stop().await;
    let digest = |version: &str| -> Hash { hash(&common::hex(version)) };
    assert_eq!(
        store.policy(&digest(&second)).unwrap().as_deref(),
        Some(renamed.as_str()),
        "the text of the policy loaded while writes failed"
    );
    let loaded: Vec<(u64, [u8; 32])> = store
        .agency_records("fugo", None, 100)
        .unwrap()
        .iter()
        .filter(|r| r.header.operation == Operation::PolicyLoaded)
        .map(|r| (r.seq, r.header.policy_version))
        .collect();
    assert_eq!(
        loaded.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [digest(&first), digest(&second)]
    );
    let derived: Vec<(u64, [u8; 32])> = store
        .agency_records("mhlw", None, 100)
        .unwrap()
        .iter()
        .filter(|r| r.header.operation == Operation::Derive)
        .map(|r| (r.seq, r.header.policy_version))
        .collect();
    assert_eq!(derived.last().unwrap().1, digest(&second));
    assert!(loaded[1].0 < derived.last().unwrap().0);
}

// ── statuses (docs/PROTOCOL.md, "The audit service") ────────────────────

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_statuses_are_the_documented_ones() {
    let harness = Harness::start().await;
    let mut mhlw = harness.agency("mhlw").await;
    let mut shinjuku = harness.agency("city-shinjuku").await;
    let mut portal = harness.agency("portal").await;
    let people = numbers(2, 10_000);
    let mhlw_codes = derive_all(&mut mhlw, &people).await;
    let sealed = seal(&mut mhlw, &mhlw_codes, 0).await;
    let redeemed = redeem(&mut shinjuku, vec![sealed[0].token.clone()]).await;
    let (_, latest, _) = checkpoint_covering(&mut mhlw, 4).await;
    let code = |result: Result<(), tonic::Status>| result.unwrap_err().code();

    // Consistency: sizes out of order, beyond the log, or unsigned.
    let proof = |old_size, new_size| GetConsistencyProofRequest { old_size, new_size };
    let mut audit = mhlw.audit.clone();
    assert_eq!(
        code(audit.get_consistency_proof(proof(3, 2)).await.map(drop)),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            audit
                .get_consistency_proof(proof(1, latest.size + 1_000))
                .await
                .map(drop)
        ),
        tonic::Code::InvalidArgument
    );
    // Checkpoints are signed at sizes the log had: the policy's record made
    // size 1, the first derive's two records (one commit) size 3, so no
    // checkpoint has size 2.
    assert_eq!(
        code(audit.get_consistency_proof(proof(1, 2)).await.map(drop)),
        tonic::Code::NotFound
    );
    // Inclusion proofs and disclosure need the `disclose` capability.
    assert_eq!(
        code(
            audit
                .get_inclusion_proof(GetInclusionProofRequest {
                    sequence: 0,
                    tree_size: 0,
                })
                .await
                .map(drop)
        ),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(
            portal
                .audit
                .get_inclusion_proof(GetInclusionProofRequest {
                    sequence: latest.size,
                    tree_size: latest.size,
                })
                .await
                .map(drop)
        ),
        tonic::Code::InvalidArgument
    );
    // Pages: at most 1,000 records; tokens are this server's.
    let portal_code = derive_all(&mut portal, &people[..1]).await.remove(0);
    for (page_size, page_token, field) in [(1_001, "", "page_size"), (10, "x", "page_token")] {
        let status = portal
            .audit
            .disclose(DiscloseRequest {
                code: portal_code.clone(),
                page_size,
                page_token: page_token.into(),
                with_proofs: false,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
        let status = mhlw
            .audit
            .read_copy(ReadCopyRequest {
                page_size,
                page_token: page_token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(field), "{status:?}");
    }
    let malformed = portal
        .audit
        .disclose(DiscloseRequest {
            code: "not a code".into(),
            ..DiscloseRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument);

    // Provision: per confirmation.
    let confirm = |serial: Vec<u8>| Confirmation {
        serial,
        provided: true,
    };
    let results = shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![
                confirm(redeemed[0].serial.clone()),
                confirm(vec![1; 15]),
                confirm(sealed[1].serial.clone()), // sealed, never redeemed
                confirm(redeemed[0].serial.clone()),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let codes: Vec<(u32, i32)> = results.iter().map(|r| (r.index, r.code)).collect();
    assert_eq!(
        codes,
        [
            (0, RpcCode::Ok as i32),
            (1, RpcCode::InvalidArgument as i32),
            (2, RpcCode::NotFound as i32),
            (3, RpcCode::AlreadyExists as i32),
        ]
    );
    // The requester cannot confirm what the provider redeemed.
    let results = mhlw
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![confirm(redeemed[0].serial.clone())],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].code, RpcCode::NotFound as i32);
    let again = shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![confirm(redeemed[0].serial.clone())],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(again[0].code, RpcCode::AlreadyExists as i32);
    let too_many = shinjuku
        .audit
        .confirm_provision(ConfirmProvisionRequest {
            confirmations: vec![confirm(vec![0; 16]); 10_001],
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), tonic::Code::ResourceExhausted);
    harness.stop().await;
}
