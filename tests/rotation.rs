//! The walkthrough of docs/OPERATIONS.md "Rotating an agency's epoch" and
//! "Replacing a master key", against the real server on 127.0.0.1:0 with a
//! keyring of two master-key generations: a derive-capable agency (city),
//! a codes-only agency that rotates in time (clinic), and a codes-only
//! agency that misses the window and recovers through a rekey-only epoch
//! (late). Then generation 1 is destroyed, the store's high-water mark
//! refuses a policy that would revive it (on reload and at start), and the
//! Rekey records are in the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::derive_codes as derive;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use fugo::certs::DevCa;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{
    DeriveRequest, RedeemRequest, RekeyRequest, SealRequest, redeem_result, rekey_result,
    seal_result,
};
use fugo::service::Running;
use fugo::service::config::GenerationKey;
use fugo_log::record::Operation;
use fugo_log::store::{RedbStore, Store};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const GEN1: [u8; 32] = [0x11; 32];
const GEN2: [u8; 32] = [0x22; 32];

/// The policy with each agency's `epochs` table and the destroyed
/// generations: `city`, `clinic`, `late` are TOML arrays of epoch entries.
fn policy(city: &str, clinic: &str, late: &str, destroyed: &str) -> String {
    format!(
        r#"destroyed_generations = [{destroyed}]

[[agency]]
id = "city"
name = "City (derives)"
certificates = ["city"]
capabilities = ["derive"]
epochs = [{city}]

[[agency]]
id = "clinic"
name = "Clinic (codes only)"
certificates = ["clinic"]
epochs = [{clinic}]

[[agency]]
id = "late"
name = "Late (codes only, misses the window)"
certificates = ["late"]
epochs = [{late}]

[[affair]]
id = "care"
name = "care"
legal_basis = "test"

[[rule]]
requester = "city"
affair = "care"
provider = "clinic"
items = ["record"]
token_lifetime_seconds = 3600

[[rule]]
requester = "city"
affair = "care"
provider = "late"
items = ["record"]
token_lifetime_seconds = 3600
"#
    )
}

const ONE: &str = r#"{ epoch = 1, generation = 1, state = "current" }"#;
const ROTATING: &str = r#"{ epoch = 1, generation = 1, state = "accepted" }, { epoch = 2, generation = 2, state = "current" }"#;
const CLOSED: &str = r#"{ epoch = 1, generation = 1, state = "rekey-only" }, { epoch = 2, generation = 2, state = "current" }"#;
const DESTROYED: &str = r#"{ epoch = 1, generation = 1, state = "destroyed" }, { epoch = 2, generation = 2, state = "current" }"#;

async fn start(
    dir: &Path,
    policy_text: &str,
) -> Result<(Running, DevCa), fugo::service::ServeError> {
    let (mut config, ca) = common::server_config(dir, policy_text, GEN1);
    let key2 = dir.join("generation-2.key");
    std::fs::write(
        &key2,
        MasterKey::from_bytes(GEN2).to_file_contents().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&key2, std::fs::Permissions::from_mode(0o600)).unwrap();
    config.keyring = vec![GenerationKey {
        generation: fugo::generation::Generation::new(2).unwrap(),
        source: fugo::service::config::MasterKeySource::File(key2),
        fingerprint: KeyHierarchy::new(&MasterKey::from_bytes(GEN2)).fingerprint(),
    }];
    let running = fugo::service::start(config, &mut std::io::sink()).await?;
    Ok((running, ca))
}

async fn connect(running: &Running, ca: &DevCa, identity: &str) -> CodesClient<Channel> {
    let pem = ca.client(identity).unwrap();
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
    CodesClient::new(channel)
}

fn reload(dir: &Path, running: &Running, text: &str) -> Result<(), String> {
    std::fs::write(dir.join("policy.toml"), text).unwrap();
    running.reload_policy().map(drop).map_err(|e| e.to_string())
}

async fn seal(client: &mut CodesClient<Channel>, provider: &str, codes: &[String]) -> Vec<Vec<u8>> {
    let response = client
        .seal(SealRequest {
            on_behalf_of: String::new(),
            provider: provider.to_owned(),
            affair: "care".to_owned(),
            items: vec!["record".to_owned()],
            non_disclosure_until: 0,
            codes: codes.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(seal_result::Result::Sealed(sealed)) => sealed.token,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Each token's code, or the item error's (code, reason).
async fn redeem(
    client: &mut CodesClient<Channel>,
    tokens: &[Vec<u8>],
    epoch: u32,
) -> Vec<Result<String, (i32, String)>> {
    let response = client
        .redeem(RedeemRequest {
            on_behalf_of: String::new(),
            tokens: tokens.to_vec(),
            epoch,
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(redeem_result::Result::Redeemed(redeemed)) => Ok(redeemed.code),
            Some(redeem_result::Result::Error(e)) => Err((e.code, e.reason)),
            None => panic!("empty result"),
        })
        .collect()
}

/// Each code's new code (checking the pair names the old one), or the
/// item error's (code, reason).
async fn rekey(
    client: &mut CodesClient<Channel>,
    codes: &[String],
) -> Vec<Result<String, (i32, String)>> {
    let response = client
        .rekey(RekeyRequest {
            codes: codes.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .results
        .into_iter()
        .zip(codes)
        .map(|(r, old)| match r.result {
            Some(rekey_result::Result::Rekeyed(pair)) => {
                assert_eq!(&pair.old_code, old);
                Ok(pair.new_code)
            }
            Some(rekey_result::Result::Error(e)) => Err((e.code, e.reason)),
            None => panic!("empty result"),
        })
        .collect()
}

fn ok(results: Vec<Result<String, (i32, String)>>) -> Vec<String> {
    results.into_iter().map(|r| r.unwrap()).collect()
}

const FAILED_PRECONDITION: i32 = 9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_and_a_master_key_replacement_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let numbers: Vec<String> = (0..3).map(|i| common::valid_number(7_000 + i)).collect();

    // 1. Everyone on epoch 1 of generation 1.
    let (running, ca) = start(dir.path(), &policy(ONE, ONE, ONE, "")).await.unwrap();
    let mut city = connect(&running, &ca, "city").await;
    let mut clinic = connect(&running, &ca, "clinic").await;
    let mut late = connect(&running, &ca, "late").await;
    let city_old = derive(&mut city, &numbers, 0).await;
    let tokens = seal(&mut city, "clinic", &city_old).await;
    let clinic_old = ok(redeem(&mut clinic, &tokens, 0).await);
    let late_old = ok(redeem(&mut late, &seal(&mut city, "late", &city_old).await, 0).await);
    // Tokens to the clinic still in flight when the rotation starts (three:
    // a token redeemed again is a repeat and gets its first answer).
    let in_flight = seal(&mut city, "clinic", &city_old[..1]).await;
    let in_flight_too = seal(&mut city, "clinic", &city_old[..1]).await;
    let in_flight_late = seal(&mut city, "clinic", &city_old[..1]).await;
    assert_eq!(in_flight[0][0], 3, "format 3");
    assert_eq!(&in_flight[0][1..3], &[0, 1], "sealed under generation 1");

    // 2. Generation 2 comes in: every agency's epoch 2 is current, epoch 1
    //    still accepted.
    reload(
        dir.path(),
        &running,
        &policy(ROTATING, ROTATING, ROTATING, ""),
    )
    .unwrap();
    let city_new = derive(&mut city, &numbers, 0).await;
    assert!(city_new.iter().all(|code| code.starts_with("12")));
    assert_ne!(city_new, city_old);
    // Mid-rotation the city still gets codes matching its store.
    assert_eq!(derive(&mut city, &numbers, 1).await, city_old);
    // The derive-capable agency rekeys its store: (old, new) pairs.
    assert_eq!(ok(rekey(&mut city, &city_old).await), city_new);
    // The codes-only clinic rekeys too, without any number.
    let clinic_new = ok(rekey(&mut clinic, &clinic_old).await);
    assert_ne!(clinic_new, clinic_old);
    // The token in flight across the rotation still redeems: to the new
    // code, or the old one when the clinic names epoch 1.
    assert_eq!(
        ok(redeem(&mut clinic, &in_flight, 0).await),
        clinic_new[..1]
    );
    assert_eq!(
        ok(redeem(&mut clinic, &in_flight_too, 1).await),
        clinic_old[..1]
    );
    // New tokens are sealed under generation 2 and redeem the same.
    let fresh = seal(&mut city, "clinic", &city_new).await;
    assert_eq!(&fresh[0][1..3], &[0, 2]);
    assert_eq!(ok(redeem(&mut clinic, &fresh, 0).await), clinic_new);
    // The city seals with old codes too while epoch 1 is accepted.
    assert_eq!(
        ok(redeem(&mut clinic, &seal(&mut city, "clinic", &city_old).await, 0).await),
        clinic_new
    );

    // 3. The window closes: epoch 1 is rekey-only. Old codes open only in
    //    Rekey; `late` never rekeyed and recovers now.
    reload(dir.path(), &running, &policy(CLOSED, CLOSED, CLOSED, "")).unwrap();
    let refused = client_status(
        city.derive(DeriveRequest {
            on_behalf_of: String::new(),
            numbers: numbers.clone(),
            epoch: 1,
        })
        .await,
    );
    assert_eq!(refused.0, Code::FailedPrecondition);
    assert!(refused.1.contains("epoch 1 is rekey-only"), "{}", refused.1);
    let sealed_old = city
        .seal(SealRequest {
            on_behalf_of: String::new(),
            provider: "clinic".to_owned(),
            affair: "care".to_owned(),
            items: vec!["record".to_owned()],
            non_disclosure_until: 0,
            codes: city_old[..1].to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    match &sealed_old.results[0].result {
        Some(seal_result::Result::Error(e)) => {
            assert_eq!(e.code, FAILED_PRECONDITION);
            assert_eq!(
                e.reason,
                "code of epoch 1, which opens only in Rekey (rekey-only)"
            );
        }
        other => panic!("{other:?}"),
    }
    let late_new = ok(rekey(&mut late, &late_old).await);
    // What `late` got is its real current code: the same as a fresh token gives.
    assert_eq!(
        ok(redeem(&mut late, &seal(&mut city, "late", &city_new).await, 0).await),
        late_new
    );

    // 4. Generation 1 is destroyed: every epoch bound to it destroyed.
    let replaced = policy(DESTROYED, DESTROYED, DESTROYED, "1");
    reload(dir.path(), &running, &replaced).unwrap();
    let refused = rekey(&mut late, &late_old).await;
    for item in &refused {
        let (code, reason) = item.as_ref().unwrap_err();
        assert_eq!(*code, FAILED_PRECONDITION);
        assert_eq!(reason, "code of epoch 1, which is destroyed");
    }
    let refused = redeem(&mut clinic, &in_flight_late, 0).await;
    assert_eq!(
        refused[0].as_ref().unwrap_err(),
        &(
            FAILED_PRECONDITION,
            "token sealed under key generation 1, which is destroyed".to_owned()
        )
    );
    assert_eq!(derive(&mut city, &numbers, 0).await, city_new);

    // 5. The high-water mark: a policy reviving epoch 1 is refused on
    //    reload (naming agency and epoch) and the destroyed one stays.
    let revived = policy(CLOSED, DESTROYED, DESTROYED, "");
    let error = reload(dir.path(), &running, &revived).unwrap_err();
    assert!(
        error.contains("agency city: epoch 1 was destroyed and may not become rekey-only again"),
        "{error}"
    );
    assert!(
        error.contains("key generation 1 was destroyed; keep it in destroyed_generations"),
        "{error}"
    );
    assert!(rekey(&mut late, &late_old).await[0].is_err());
    running.stop().await.unwrap();

    // ... and at start, from the store, before anything is served.
    std::fs::write(dir.path().join("policy.toml"), &revived).unwrap();
    let error = match start(dir.path(), &revived).await {
        Ok(_) => panic!("a server started with a policy that revives a destroyed epoch"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("agency city: epoch 1 was destroyed"),
        "{error}"
    );

    // The Rekey calls are in the audit trail, with the epoch they moved to.
    let mut store = RedbStore::open(dir.path().join("data").join("audit.redb")).unwrap();
    let records = store.records(0, 10_000).unwrap();
    let rekeys: Vec<&fugo_log::record::Record> = records
        .iter()
        .filter_map(|r| match r {
            fugo_log::store::StoredRecord::Body(record) => Some(record),
            fugo_log::store::StoredRecord::Purged { .. } => None,
        })
        .filter(|r| r.header.operation == Operation::Rekey)
        .collect();
    // city 3 + clinic 3 (rotating), late 3 (closed); the refused ones
    // (destroyed epoch: no person opened) are tallied, not recorded.
    assert_eq!(rekeys.len(), 9, "{}", rekeys.len());
    assert!(
        rekeys
            .iter()
            .all(|r| r.header.note == "to epoch 2" && r.entry.epoch == 2)
    );
    let callers: std::collections::BTreeSet<&str> =
        rekeys.iter().map(|r| r.header.caller.as_str()).collect();
    assert_eq!(callers, ["city", "clinic", "late"].into());
}

/// The status of a call that must fail as a whole.
fn client_status<T>(result: Result<T, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => panic!("the call succeeded"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// A policy that binds an epoch in use to a generation the keyring does
/// not hold stops the start, naming the generation; so does a keyring
/// entry whose key file has another fingerprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_missing_from_the_keyring_or_a_wrong_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let three = r#"{ epoch = 1, generation = 1, state = "accepted" }, { epoch = 2, generation = 3, state = "current" }"#;
    let error = match start(dir.path(), &policy(three, ONE, ONE, "")).await {
        Ok(_) => panic!("started without generation 3's key"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("key generation 3 is not in the keyring"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut config, _ca) = common::server_config(dir.path(), &policy(ONE, ONE, ONE, ""), GEN1);
    let key2 = dir.path().join("generation-2.key");
    std::fs::write(
        &key2,
        MasterKey::from_bytes([0x33; 32])
            .to_file_contents()
            .as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&key2, std::fs::Permissions::from_mode(0o600)).unwrap();
    config.keyring = vec![GenerationKey {
        generation: fugo::generation::Generation::new(2).unwrap(),
        source: fugo::service::config::MasterKeySource::File(key2),
        fingerprint: KeyHierarchy::new(&MasterKey::from_bytes(GEN2)).fingerprint(),
    }];
    let error = match fugo::service::start(config, &mut std::io::sink()).await {
        Ok(_) => panic!("started with the wrong key for generation 2"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("generation-2.key"), "{error}");
    assert!(error.to_lowercase().contains("fingerprint"), "{error}");

    // Outside dev mode a keyring key file holding the demo key, or one
    // others may read, stops the start; the advice names the entry.
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _ca) = common::server_config(dir.path(), &policy(ONE, ONE, ONE, ""), GEN1);
    let demo = dir.path().join("generation-2.key");
    std::fs::copy(common::demo_key_path(), &demo).unwrap();
    std::fs::set_permissions(&demo, std::fs::Permissions::from_mode(0o600)).unwrap();
    let demo_keys =
        KeyHierarchy::new(&MasterKey::from_file_contents(&std::fs::read(&demo).unwrap()).unwrap());
    config.keyring = vec![GenerationKey {
        generation: fugo::generation::Generation::new(2).unwrap(),
        source: fugo::service::config::MasterKeySource::File(demo.clone()),
        fingerprint: demo_keys.fingerprint(),
    }];
    let refused = |config| async {
        match fugo::service::start(config, &mut std::io::sink()).await {
            Ok(_) => panic!("started with an unsafe generation 2 key"),
            Err(error) => error.to_string(),
        }
    };
    let error = refused(config.clone()).await;
    assert!(
        error.contains("generation-2.key is the public demo key"),
        "{error}"
    );
    assert!(
        error.contains("key_file and fingerprint of the [[keyring]] entry of generation 2"),
        "{error}"
    );
    let key2 = dir.path().join("generation-2.key");
    std::fs::write(
        &key2,
        MasterKey::from_bytes(GEN2).to_file_contents().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&key2, std::fs::Permissions::from_mode(0o644)).unwrap();
    config.keyring[0].fingerprint = KeyHierarchy::new(&MasterKey::from_bytes(GEN2)).fingerprint();
    let error = refused(config).await;
    assert!(
        error.contains("generation-2.key can be read by group or others"),
        "{error}"
    );
}
