//! Agencies change too, against a real server (127.0.0.1:0, real TLS):
//! delegation (an agent such as 支払基金 derives, seals and redeems on
//! behalf of the insurers the policy lists; the results are the insurer's
//! codes; every record names both; the insurer sees them in its copy),
//! mergers (the survivor converts the merged agency's codes with Migrate,
//! unary and streamed, audited and quota'd, then the merged agency is
//! retired), immutable agency ids across reloads and restarts, and
//! `fugo client migrate` on a CSV file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use fugo::certs::DevCa;
use fugo::proto::fugo::v1::audit_client::AuditClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    CopyRecord, DeriveRequest, DiscloseRequest, MigrateRequest, ReadCopyRequest, RedeemRequest,
    SealRequest, derive_result, migrate_result, redeem_result, seal_result,
};
use fugo::service::Running;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// 支払基金 acts for two insurers, not for a third; the town merges into
/// the city (not retired yet).
const POLICY: &str = r#"
[[agency]]
id = "shiharai-kikin"
name = "社会保険診療報酬支払基金"
certificates = ["shiharai-kikin"]
capabilities = []
epoch = 1

[[agency]]
id = "insurer-a"
name = "健康保険組合 A"
certificates = ["insurer-a"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "insurer-b"
name = "健康保険組合 B"
certificates = ["insurer-b"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "insurer-c"
name = "健康保険組合 C"
certificates = ["insurer-c"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city"
name = "市"
certificates = ["city"]
capabilities = ["derive"]
epoch = 2
accepted_epochs = [1, 2]
quota.migrate = { per_day = 60 }

[[agency]]
id = "town"
name = "町"
certificates = ["town"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "portal"
name = "マイナポータル"
certificates = ["portal"]
capabilities = ["disclose", "derive"]
epoch = 1

[[affair]]
id = "health"
name = "健康保険"
legal_basis = "番号法 別表第二"

[[rule]]
requester = "insurer-a"
affair = "health"
provider = "city"
items = ["local-tax"]
token_lifetime_seconds = 600

[[rule]]
requester = "city"
affair = "health"
provider = "insurer-a"
items = ["benefit"]
token_lifetime_seconds = 600

[[rule]]
requester = "town"
affair = "health"
provider = "insurer-b"
items = ["benefit"]
token_lifetime_seconds = 600

[[rule]]
requester = "insurer-b"
affair = "health"
provider = "shiharai-kikin"
items = ["claims"]
token_lifetime_seconds = 600

[[delegation]]
agent = "shiharai-kikin"
on_behalf_of = ["insurer-a", "insurer-b"]

[[merger]]
merged = "town"
into = "city"
"#;

/// [`POLICY`] with the town retired: its rule goes, the merger says so.
fn retired_policy() -> String {
    POLICY
        .replace(
            "[[rule]]\nrequester = \"town\"\naffair = \"health\"\nprovider = \"insurer-b\"\nitems = [\"benefit\"]\ntoken_lifetime_seconds = 600\n",
            "",
        )
        .replace("into = \"city\"\n", "into = \"city\"\nretired = true\n")
}

async fn connect(running: &Running, ca: &DevCa, identity: &str) -> Channel {
    let pem = ca.client(identity).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(pem.cert, pem.key));
    Endpoint::from_shared(format!("https://{}", running.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

async fn codes(running: &Running, ca: &DevCa, identity: &str) -> CodesClient<Channel> {
    CodesClient::new(connect(running, ca, identity).await)
}

fn numbers(count: u64, seed: u64) -> Vec<String> {
    (0..count)
        .map(|i| common::valid_number(seed + i * 7_919))
        .collect()
}

/// `client`'s derive of `numbers` (on behalf of `for_agency` if not
/// empty), every item a code.
async fn derive(
    client: &mut CodesClient<Channel>,
    numbers: &[String],
    for_agency: &str,
) -> Result<Vec<String>, tonic::Status> {
    let response = client
        .derive(DeriveRequest {
            epoch: 0,
            numbers: numbers.to_vec(),
            on_behalf_of: for_agency.to_owned(),
        })
        .await?
        .into_inner();
    Ok(response
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(derive_result::Result::Code(code)) => code,
            other => panic!("not a code: {other:?}"),
        })
        .collect())
}

async fn read_copy(running: &Running, ca: &DevCa, identity: &str) -> Vec<CopyRecord> {
    let mut audit = AuditClient::new(connect(running, ca, identity).await);
    let mut records = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = audit
            .read_copy(ReadCopyRequest {
                page_size: 1000,
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
    panic!("the copy did not end within 100 pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_derives_seals_and_redeems_for_the_agencies_it_acts_for() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, [7; 32]).await;
    let people = numbers(5, 1_000);
    let mut agent = codes(&running, &ca, "shiharai-kikin").await;
    let mut insurer_a = codes(&running, &ca, "insurer-a").await;
    let mut city = codes(&running, &ca, "city").await;

    // Derive: the insurer's own codes, not the agent's.
    let for_a = derive(&mut agent, &people, "insurer-a").await.unwrap();
    let own_a = derive(&mut insurer_a, &people, "").await.unwrap();
    assert_eq!(for_a, own_a);
    let for_b = derive(&mut agent, &people, "insurer-b").await.unwrap();
    assert_ne!(for_b, for_a);

    // Refusals: an agency it does not act for, a value the policy does
    // not know (not repeated), and its own derive (it has no capability).
    let refused = derive(&mut agent, &people, "insurer-c").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "no delegation lets shiharai-kikin act on behalf of insurer-c"
    );
    let unknown = derive(&mut agent, &people, &people[0]).await.unwrap_err();
    assert_eq!(unknown.code(), Code::PermissionDenied);
    assert!(!unknown.message().contains(&people[0]), "{unknown:?}");
    assert_eq!(
        unknown.message(),
        "the on_behalf_of named is not in the policy"
    );
    let bad = derive(&mut agent, &people, "Not An Id").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    let own = derive(&mut agent, &people, "").await.unwrap_err();
    assert_eq!(own.code(), Code::PermissionDenied);
    // An agency that is not an agent cannot act for anyone.
    let not_agent = derive(&mut insurer_a, &people, "insurer-b")
        .await
        .unwrap_err();
    assert_eq!(not_agent.code(), Code::PermissionDenied);

    // Seal on behalf of insurer A: the rule is A's, the provider sees A.
    let sealed = agent
        .seal(SealRequest {
            provider: "city".into(),
            affair: "health".into(),
            items: vec!["local-tax".into()],
            non_disclosure_until: 0,
            codes: for_a.clone(),
            on_behalf_of: "insurer-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tokens: Vec<Vec<u8>> = sealed
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(seal_result::Result::Sealed(s)) => s.token,
            other => panic!("not sealed: {other:?}"),
        })
        .collect();
    let redeemed = city
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(redeemed.contexts.len(), 1);
    assert_eq!(redeemed.contexts[0].requester, "insurer-a");
    let city_codes: Vec<String> = redeemed
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(redeem_result::Result::Redeemed(r)) => r.code,
            other => panic!("not redeemed: {other:?}"),
        })
        .collect();
    assert_eq!(city_codes, derive(&mut city, &people, "").await.unwrap());
    // Sealing A's codes as B's: the codes are not B's.
    let wrong = agent
        .seal(SealRequest {
            provider: "city".into(),
            affair: "health".into(),
            items: vec!["local-tax".into()],
            non_disclosure_until: 0,
            codes: for_a.clone(),
            on_behalf_of: "insurer-b".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "no rule for B");

    // Redeem on behalf of insurer A: tokens the city sealed for A open to
    // A's codes.
    let for_insurer = city
        .seal(SealRequest {
            provider: "insurer-a".into(),
            affair: "health".into(),
            items: vec!["benefit".into()],
            non_disclosure_until: 0,
            codes: city_codes.clone(),
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let tokens: Vec<Vec<u8>> = for_insurer
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(seal_result::Result::Sealed(s)) => s.token,
            other => panic!("not sealed: {other:?}"),
        })
        .collect();
    // Not as B (the tokens are addressed to A).
    let as_b = agent
        .redeem(RedeemRequest {
            epoch: 0,
            tokens: tokens.clone(),
            on_behalf_of: "insurer-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        as_b.results
            .iter()
            .all(|r| matches!(r.result, Some(redeem_result::Result::Error(_)))),
        "{as_b:?}"
    );
    let opened = agent
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: "insurer-a".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened: Vec<String> = opened
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(redeem_result::Result::Redeemed(r)) => r.code,
            other => panic!("not redeemed: {other:?}"),
        })
        .collect();
    assert_eq!(opened, own_a);

    // The insurer's copy: the agent's calls, in its own codes, naming the
    // agent (5 derive + 5 seal + 5 redeem), beside its own 5 derives.
    let copy_a = read_copy(&running, &ca, "insurer-a").await;
    let acted: Vec<&CopyRecord> = copy_a
        .iter()
        .filter(|r| r.agent == "shiharai-kikin")
        .collect();
    let operations: Vec<&str> = acted.iter().map(|r| r.operation.as_str()).collect();
    assert_eq!(
        operations.iter().filter(|o| **o == "derive").count(),
        5,
        "{operations:?}"
    );
    assert_eq!(operations.iter().filter(|o| **o == "seal").count(), 5);
    assert_eq!(operations.iter().filter(|o| **o == "redeem").count(), 5);
    assert!(acted.iter().all(|r| r.role == "caller"));
    let acted_codes: BTreeSet<&str> = acted.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(
        acted_codes,
        own_a.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    let own_records = copy_a
        .iter()
        .filter(|r| r.agent.is_empty() && r.operation == "derive")
        .count();
    assert_eq!(own_records, 5);
    // The agent's copy: the same calls, as agent, naming the insurer, with
    // no code (an agent for many agencies must not link their people).
    let copy_agent = read_copy(&running, &ca, "shiharai-kikin").await;
    let as_agent: Vec<&CopyRecord> = copy_agent.iter().filter(|r| r.role == "agent").collect();
    assert_eq!(as_agent.len(), 5 + 5 + 5 + 5, "A: 15, B: 5 derives");
    assert!(as_agent.iter().all(|r| r.code.is_empty()));
    assert!(as_agent.iter().all(|r| r.agent == "shiharai-kikin"));
    assert_eq!(
        as_agent
            .iter()
            .filter(|r| r.other_agency == "insurer-b")
            .count(),
        5
    );
    // Insurer B sees its 5, not A's; insurer C sees nothing.
    let copy_b = read_copy(&running, &ca, "insurer-b").await;
    assert_eq!(
        copy_b
            .iter()
            .filter(|r| r.agent == "shiharai-kikin")
            .count(),
        5
    );
    let copy_c = read_copy(&running, &ca, "insurer-c").await;
    assert!(
        copy_c.iter().all(|r| r.operation == "copy_page"),
        "{copy_c:?}"
    );

    // The person sees who acted for whom.
    let mut portal = codes(&running, &ca, "portal").await;
    let portal_code = derive(&mut portal, &people[..1], "").await.unwrap();
    let mut audit = AuditClient::new(connect(&running, &ca, "portal").await);
    // The person index is built behind the log: poll, for at most 5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let disclosed = loop {
        let page = audit
            .disclose(DiscloseRequest {
                code: portal_code[0].clone(),
                page_size: 100,
                page_token: String::new(),
                with_proofs: false,
            })
            .await
            .unwrap()
            .into_inner();
        if page.records.iter().any(|r| r.agent == "shiharai-kikin")
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_agent: Vec<_> = disclosed
        .records
        .iter()
        .filter(|r| r.agent == "shiharai-kikin")
        .collect();
    assert!(!by_agent.is_empty(), "{disclosed:?}");
    assert!(
        by_agent
            .iter()
            .all(|r| r.agent_name == "社会保険診療報酬支払基金")
    );
    assert!(by_agent.iter().any(|r| r.agency == "insurer-a"));

    // A reload that ends the delegation stops the agent's next batch, on
    // the connection it already has.
    let ended = POLICY.replace(
        "[[delegation]]\nagent = \"shiharai-kikin\"\non_behalf_of = [\"insurer-a\", \"insurer-b\"]\n",
        "",
    );
    assert_ne!(ended, POLICY);
    std::fs::write(dir.path().join("policy.toml"), ended).unwrap();
    running.reload_policy().unwrap();
    let stopped = derive(&mut agent, &people, "insurer-a").await.unwrap_err();
    assert_eq!(stopped.code(), Code::PermissionDenied);
    running.stop().await.unwrap();

    // The store: every record of the agent's calls names both.
    let mut store =
        fugo_log::store::RedbStore::open(dir.path().join("data").join(fugo::audit::STORE_FILE))
            .unwrap();
    let size = fugo_log::store::Store::size(&store);
    let mut named = 0;
    for seq in 0..size {
        let record = fugo_log::store::Store::record(&mut store, seq)
            .unwrap()
            .unwrap();
        if record.header.agent == "shiharai-kikin" {
            assert!(
                ["insurer-a", "insurer-b"].contains(&record.header.caller.as_str()),
                "{:?}",
                record.header
            );
            named += 1;
        } else {
            assert!(record.header.agent.is_empty());
        }
    }
    assert_eq!(named, 20);
    drop(store);

    // An export names the agent, and its fields give the header digest
    // back (version 2 for the agent's records, version 1 for the others).
    let export = dir.path().join("export.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(["audit", "export", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--out")
        .arg(&export)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut exported_agents = 0;
    for line in std::fs::read_to_string(&export).unwrap().lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        if record["type"] != "record" {
            continue;
        }
        let text = |field: &str| record[field].as_str().unwrap().to_owned();
        let mut policy_version = [0u8; 32];
        policy_version.copy_from_slice(&common::hex(&text("policy_version")));
        let header = fugo_log::record::Header {
            time_ms: record["time_ms"].as_u64().unwrap(),
            operation: fugo_log::record::Operation::ALL
                .into_iter()
                .find(|op| op.name() == text("operation"))
                .unwrap(),
            caller: text("caller"),
            counterpart: text("counterpart"),
            affair: text("affair"),
            items: record["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| item.as_str().unwrap().to_owned())
                .collect(),
            non_disclosure_until: record["non_disclosure_until"].as_u64().unwrap(),
            policy_version,
            batch_id: text("batch_id"),
            note: text("note"),
            count: record["count"].as_u64().unwrap(),
            agent: text("agent"),
        };
        assert_eq!(
            common::to_hex(&fugo_log::record::header_digest(&header)),
            text("header_digest")
        );
        if header.agent == "shiharai-kikin" {
            exported_agents += 1;
        }
    }
    assert_eq!(exported_agents, 20);
}

/// An agent that is also the provider of a seal it made on behalf of
/// another reads that record as counterpart, with its own code, like any
/// provider: the code it gets by redeeming the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_is_the_provider_of_its_seal_reads_it_as_counterpart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, [11; 32]).await;
    let people = numbers(3, 7_000);
    let mut agent = codes(&running, &ca, "shiharai-kikin").await;
    let for_b = derive(&mut agent, &people, "insurer-b").await.unwrap();
    let sealed = agent
        .seal(SealRequest {
            provider: "shiharai-kikin".into(),
            affair: "health".into(),
            items: vec!["claims".into()],
            non_disclosure_until: 0,
            codes: for_b,
            on_behalf_of: "insurer-b".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tokens: Vec<Vec<u8>> = sealed
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(seal_result::Result::Sealed(s)) => s.token,
            other => panic!("not sealed: {other:?}"),
        })
        .collect();
    let redeemed = agent
        .redeem(RedeemRequest {
            epoch: 0,
            tokens,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let own: BTreeSet<String> = redeemed
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(redeem_result::Result::Redeemed(r)) => r.code,
            other => panic!("not redeemed: {other:?}"),
        })
        .collect();
    let copy = read_copy(&running, &ca, "shiharai-kikin").await;
    let seals: Vec<&CopyRecord> = copy.iter().filter(|r| r.operation == "seal").collect();
    assert_eq!(seals.len(), 3);
    assert!(seals.iter().all(|r| r.role == "counterpart"
        && r.other_agency == "insurer-b"
        && r.agent == "shiharai-kikin"));
    let seen: BTreeSet<String> = seals.iter().map(|r| r.code.clone()).collect();
    assert_eq!(seen, own);
    // Its derives for insurer B stay agent records without a code.
    let derives: Vec<&CopyRecord> = copy.iter().filter(|r| r.operation == "derive").collect();
    assert_eq!(derives.len(), 3);
    assert!(
        derives
            .iter()
            .all(|r| r.role == "agent" && r.code.is_empty())
    );
    running.stop().await.unwrap();
}

fn migrated(
    response: fugo::proto::fugo::v1::MigrateResponse,
) -> Vec<Result<(String, String), i32>> {
    response
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(migrate_result::Result::Migrated(m)) => Ok((m.old_code, m.new_code)),
            Some(migrate_result::Result::Error(e)) => Err(e.code),
            None => panic!("no result"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merger_migrates_codes_in_bulk_then_retires_the_merged_agency() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, [8; 32]).await;
    let people = numbers(20, 50_000);
    let mut town = codes(&running, &ca, "town").await;
    let mut city = codes(&running, &ca, "city").await;
    let mut insurer = codes(&running, &ca, "insurer-a").await;
    let town_codes = derive(&mut town, &people, "").await.unwrap();
    let city_codes = derive(&mut city, &people, "").await.unwrap();
    let other = derive(&mut insurer, &people[..1], "").await.unwrap();

    // Unary: pairs in order; a malformed item and a code that is not the
    // town's are item errors, not a failed batch.
    let mut batch = town_codes[..10].to_vec();
    batch.push("not a code".into());
    batch.push(other[0].clone());
    let pairs = migrated(
        city.migrate(MigrateRequest {
            merged: "town".into(),
            codes: batch.clone(),
        })
        .await
        .unwrap()
        .into_inner(),
    );
    for (i, pair) in pairs[..10].iter().enumerate() {
        assert_eq!(
            pair.as_ref().unwrap(),
            &(town_codes[i].clone(), city_codes[i].clone())
        );
    }
    assert_eq!(pairs[10], Err(tonic::Code::InvalidArgument as i32));
    assert_eq!(pairs[11], Err(tonic::Code::NotFound as i32));

    // The merged agency cannot migrate the survivor's codes, and no one
    // else can migrate the town's.
    let reverse = town
        .migrate(MigrateRequest {
            merged: "city".into(),
            codes: city_codes[..1].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(reverse.code(), Code::PermissionDenied);
    assert_eq!(
        reverse.message(),
        "no merger lets town migrate the codes of city"
    );
    let stranger = insurer
        .migrate(MigrateRequest {
            merged: "town".into(),
            codes: town_codes[..1].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(stranger.code(), Code::PermissionDenied);

    // Retire the town: its certificate is refused; the city still
    // migrates, now in a stream of two batches.
    std::fs::write(dir.path().join("policy.toml"), retired_policy()).unwrap();
    running.reload_policy().unwrap();
    let refused = derive(&mut town, &people, "").await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "agency town is retired: it was merged into city"
    );
    let requests = vec![
        MigrateRequest {
            merged: "town".into(),
            codes: town_codes[10..15].to_vec(),
        },
        MigrateRequest {
            merged: "town".into(),
            codes: town_codes[15..].to_vec(),
        },
    ];
    let mut stream = city
        .migrate_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(response) = stream.message().await.unwrap() {
        streamed.extend(migrated(response));
    }
    let expected: Vec<Result<(String, String), i32>> = (10..20)
        .map(|i| Ok((town_codes[i].clone(), city_codes[i].clone())))
        .collect();
    assert_eq!(streamed, expected);

    // Quota: 60 a day; 12 + 5 + 5 used, 40 more is over.
    let over = city
        .migrate(MigrateRequest {
            merged: "town".into(),
            codes: town_codes.iter().chain(&town_codes).cloned().collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message().contains("migrate quota"),
        "{}",
        over.message()
    );

    // Audited: the city's copy has one migrate record per person opened,
    // naming the town, in the city's codes.
    let copy = read_copy(&running, &ca, "city").await;
    let migrations: Vec<&CopyRecord> = copy.iter().filter(|r| r.operation == "migrate").collect();
    // The malformed item and the insurer's code opened no one: they are
    // tallied as refusals, not recorded per person.
    assert_eq!(migrations.len(), 10 + 10);
    assert!(migrations.iter().all(|r| r.other_agency == "town"));
    let done: BTreeSet<&str> = migrations
        .iter()
        .filter(|r| r.outcome == "done")
        .map(|r| r.code.as_str())
        .collect();
    assert_eq!(
        done,
        city_codes
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agency_ids_are_immutable_across_reloads_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, [9; 32]).await;
    let policy = dir.path().join("policy.toml");
    let dropped = POLICY.replace(
        "[[agency]]\nid = \"insurer-c\"\nname = \"健康保険組合 C\"\ncertificates = [\"insurer-c\"]\ncapabilities = [\"derive\"]\nepoch = 1\n",
        "",
    );
    assert_ne!(dropped, POLICY);
    std::fs::write(&policy, &dropped).unwrap();
    let refused = running.reload_policy().unwrap_err().to_string();
    assert!(
        refused.contains("agency insurer-c was listed by a policy in force and may not be removed"),
        "{refused}"
    );
    // The old policy stays in force.
    let mut c = codes(&running, &ca, "insurer-c").await;
    derive(&mut c, &numbers(1, 5), "").await.unwrap();
    // A display name may change.
    let renamed = POLICY.replace("健康保険組合 C", "健康保険組合 C (新名称)");
    std::fs::write(&policy, &renamed).unwrap();
    running.reload_policy().unwrap();
    // Retired, then revived: refused.
    std::fs::write(&policy, retired_policy()).unwrap();
    running.reload_policy().unwrap();
    std::fs::write(&policy, POLICY).unwrap();
    let revived = running.reload_policy().unwrap_err().to_string();
    assert!(
        revived.contains("agency town was retired by a policy in force and stays retired"),
        "{revived}"
    );
    running.stop().await.unwrap();

    // At start too, even after retention has purged every record of a
    // policy's loading: the store keeps the agency ids apart from the log
    // (D217).
    let store_path = dir.path().join("data").join(fugo::audit::STORE_FILE);
    let purged = loop {
        match fugo_log::store::RedbStore::open(&store_path) {
            Ok(mut store) => {
                use fugo_log::store::Store;
                break store.purge_before(u64::MAX).unwrap();
            }
            Err(fugo_log::store::StoreError::Locked { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("{error}"),
        }
    };
    assert!(purged > 0, "nothing was purged");
    let (config, _) = common::server_config(dir.path(), &retired_policy().replace(
        "[[agency]]\nid = \"insurer-c\"\nname = \"健康保険組合 C\"\ncertificates = [\"insurer-c\"]\ncapabilities = [\"derive\"]\nepoch = 1\n",
        "",
    ), [9; 32]);
    let Err(error) = start_eventually(config).await else {
        panic!("a policy without insurer-c started");
    };
    let error = error.to_string();
    assert!(
        error.contains("agency insurer-c was listed by a policy in force and may not be removed"),
        "{error}"
    );
    let (config, _) = common::server_config(dir.path(), &retired_policy(), [9; 32]);
    start_eventually(config)
        .await
        .unwrap()
        .stop()
        .await
        .unwrap();
}

/// Starts a server, retrying while the stopped one's store is still held.
async fn start_eventually(
    config: fugo::service::ServeConfig,
) -> Result<Running, fugo::service::ServeError> {
    let mut tries = 0;
    loop {
        match fugo::service::start(config.clone(), &mut std::io::sink()).await {
            Err(error) if tries < 50 && error.to_string().contains("lock") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fugo_client_migrate_turns_a_csv_of_old_codes_into_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let (running, ca) = common::start_server(dir.path(), POLICY, [10; 32]).await;
    let people = numbers(30, 90_000);
    let mut town = codes(&running, &ca, "town").await;
    let mut city = codes(&running, &ca, "city").await;
    let town_codes = derive(&mut town, &people, "").await.unwrap();
    let city_codes = derive(&mut city, &people, "").await.unwrap();
    let at = |name: &str| dir.path().join(name);
    let pem = ca.client("city").unwrap();
    std::fs::write(at("city.pem"), pem.cert).unwrap();
    std::fs::write(at("city.key"), pem.key).unwrap();
    // As a town's export: CRLF, a BOM, a ragged row, one bad code.
    let mut csv = String::from("\u{feff}住民ID,code\r\n");
    for (i, code) in town_codes.iter().enumerate() {
        csv.push_str(&format!("{i},{code}\r\n"));
    }
    csv.push_str("30,not-a-code\r\n");
    csv.push_str("31\r\n");
    std::fs::write(at("town.csv"), &csv).unwrap();
    let run = |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fugo"));
        command
            .args(["client", "migrate"])
            .args(["--server", &format!("https://{}", running.addr)])
            .args(["--server-name", "localhost"])
            .arg("--ca")
            .arg(at("ca.pem"))
            .arg("--cert")
            .arg(at("city.pem"))
            .arg("--key")
            .arg(at("city.key"))
            .args(args);
        command.output().unwrap()
    };
    let out = run(&[
        "--merged",
        "town",
        "--csv",
        "--column",
        "code",
        at("town.csv").to_str().unwrap(),
        "-o",
        at("city.csv").to_str().unwrap(),
        "--rejects",
        at("rejects.txt").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let written = std::fs::read_to_string(at("city.csv")).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    // As Rekey's (D218): the new code in the code column, the old one
    // beside it, so each row keeps its pair.
    assert!(
        lines[0].ends_with("住民ID,code,old_code"),
        "{written}\n{stderr}"
    );
    for (i, line) in lines[1..=30].iter().enumerate() {
        assert_eq!(
            *line,
            format!("{i},{},{}", city_codes[i], town_codes[i]),
            "{stderr}"
        );
    }
    let rejects = std::fs::read_to_string(at("rejects.txt")).unwrap();
    assert_eq!(rejects.lines().count(), 2, "{rejects}");
    assert!(!rejects.contains("not-a-code"), "{rejects}");
    // One code a line: `NEW_CODE OLD_CODE`, and an empty line where the
    // input's line was rejected, as for every operation.
    let mut plain = town_codes[..3].join("\n");
    plain.push_str("\nnot-a-code\n");
    std::fs::write(at("town.txt"), plain).unwrap();
    let out = run(&[
        "--merged",
        "town",
        at("town.txt").to_str().unwrap(),
        "-o",
        at("city.txt").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let mut expected: Vec<String> = (0..3)
        .map(|i| format!("{} {}", city_codes[i], town_codes[i]))
        .collect();
    expected.push(String::new());
    assert_eq!(
        std::fs::read_to_string(at("city.txt"))
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        expected
    );
    // --merged is required; --on-behalf-of is not for migrate.
    let missing = run(&[at("town.csv").to_str().unwrap()]);
    assert!(!missing.status.success());
    let wrong = run(&[
        "--merged",
        "town",
        "--on-behalf-of",
        "insurer-a",
        at("town.csv").to_str().unwrap(),
    ]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("--on-behalf-of goes with"),
        "{wrong:?}"
    );
    running.stop().await.unwrap();
}
