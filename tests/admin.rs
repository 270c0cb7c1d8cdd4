//! The admin plane against the real server: a listener of its own for
//! admin certificates only, every admin call audited, and backup → more
//! traffic → restore → verify, with the restore record checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fugo::certs::DevCa;
use fugo::client::{ClientError, Witnessed};
use fugo::proto::fugo::v1::admin_client::AdminClient;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::{AdminStatusRequest, DeriveRequest, ReloadPolicyRequest};
use fugo::service::{self, AdminConfig, Running, ServeConfig};
use fugo::witness::WitnessError;
use fugo_log::record::{Operation, Outcome};
use fugo_log::store::{RedbStore, Store, StoredRecord};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW health insurance"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1
"#;

const MASTER: [u8; 32] = [5; 32];

struct Setup {
    dir: tempfile::TempDir,
    config: ServeConfig,
    ca: DevCa,
}

/// A production configuration with `[admin]`: its own CA, admin "ops".
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, ca) = common::server_config(dir.path(), POLICY, MASTER);
    let admin_ca = DevCa::new("admin CA").unwrap();
    fs::write(dir.path().join("admin-ca.pem"), admin_ca.cert_pem()).unwrap();
    for (name, identity) in [("ops", "ops"), ("intruder", "intruder")] {
        let pem = admin_ca.client(identity).unwrap();
        fs::write(dir.path().join(format!("{name}.pem")), &pem.cert).unwrap();
        fs::write(dir.path().join(format!("{name}.key")), &pem.key).unwrap();
    }
    let agency = ca.client("mhlw").unwrap();
    fs::write(dir.path().join("mhlw.pem"), &agency.cert).unwrap();
    fs::write(dir.path().join("mhlw.key"), &agency.key).unwrap();
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: dir.path().join("admin-ca.pem"),
        identities: vec!["ops".to_owned()],
        crls: Vec::new(),
    });
    // The same configuration as a file, for the CLI's restore.
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
         master_key = \"master.key\"\nmaster_key_fingerprint = \"{}\"\n\
         [tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nca = \"admin-ca.pem\"\nidentities = [\"ops\"]\n",
        config.fingerprint
    );
    fs::write(dir.path().join("fugo.toml"), toml).unwrap();
    Setup { dir, config, ca }
}

async fn start(config: &ServeConfig) -> Running {
    service::start(config.clone(), &mut std::io::sink())
        .await
        .unwrap()
}

async fn channel(
    addr: std::net::SocketAddr,
    ca: &DevCa,
    cert: &str,
    key: &str,
) -> Result<Channel, tonic::transport::Error> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(cert, key));
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn file(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap()
}

async fn admin(setup: &Setup, running: &Running, who: &str) -> AdminClient<Channel> {
    let dir = setup.dir.path();
    let channel = channel(
        running.admin_addr.unwrap(),
        &setup.ca,
        &file(dir, &format!("{who}.pem")),
        &file(dir, &format!("{who}.key")),
    )
    .await
    .unwrap();
    AdminClient::new(channel)
}

async fn agency_channel(setup: &Setup, running: &Running) -> Channel {
    let dir = setup.dir.path();
    channel(
        running.addr,
        &setup.ca,
        &file(dir, "mhlw.pem"),
        &file(dir, "mhlw.key"),
    )
    .await
    .unwrap()
}

/// What an agency's client keeps: the newest checkpoint it has seen.
fn kept_size(path: &Path) -> u64 {
    fugo::witness::Kept::load(path)
        .unwrap()
        .unwrap()
        .checkpoint
        .size
}

async fn derive_some(setup: &Setup, running: &Running, seed: u64) {
    let dir = setup.dir.path();
    let channel = channel(
        running.addr,
        &setup.ca,
        &file(dir, "mhlw.pem"),
        &file(dir, "mhlw.key"),
    )
    .await
    .unwrap();
    let numbers = (0..5).map(|i| common::valid_number(seed + i * 7)).collect();
    CodesClient::new(channel)
        .derive(DeriveRequest {
            epoch: 0,
            numbers,
            on_behalf_of: String::new(),
        })
        .await
        .unwrap();
}

fn fugo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Opens the store once the stopped server has let it go.
fn open_store(data: &Path) -> RedbStore {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedbStore::open(data.join(fugo::audit::STORE_FILE)) {
            Ok(store) => return store,
            Err(error) if Instant::now() > deadline => panic!("{error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn admin_args<'a>(dir: &'a Path, running: &Running, rest: &[&'a str]) -> Vec<String> {
    let mut args: Vec<String> = rest.iter().map(|s| (*s).to_owned()).collect();
    args.extend([
        "--server".to_owned(),
        format!("https://{}", running.admin_addr.unwrap()),
        "--server-name".to_owned(),
        "localhost".to_owned(),
        "--ca".to_owned(),
        dir.join("ca.pem").display().to_string(),
        "--cert".to_owned(),
        dir.join("ops.pem").display().to_string(),
        "--key".to_owned(),
        dir.join("ops.key").display().to_string(),
    ]);
    args
}

/// `fugo admin restore --config CONFIG --from FROM`, as the admin of the
/// certificate and key `DIR/CERT` and `DIR/KEY` (D203), with `extra`
/// arguments.
fn restore(
    config: &Path,
    from: &Path,
    (dir, cert, key): (&Path, &str, &str),
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "admin".to_owned(),
        "restore".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        "--from".to_owned(),
        from.display().to_string(),
        "--cert".to_owned(),
        dir.join(cert).display().to_string(),
        "--key".to_owned(),
        dir.join(key).display().to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    run_fugo(args)
}

/// The listed admin's certificate and key, for [`restore`].
fn ops(dir: &Path) -> (&Path, &'static str, &'static str) {
    (dir, "ops.pem", "ops.key")
}

fn run_fugo(args: Vec<String>) -> Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fugo(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_traffic_then_restore_keeps_the_log_honest() {
    let setup = setup();
    let dir = setup.dir.path().to_path_buf();
    let data = setup.config.data_dir.clone();
    let running = start(&setup.config).await;
    derive_some(&setup, &running, 1_000).await;
    let status = admin(&setup, &running, "ops")
        .await
        .get_status(AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let first_origin = status.origin.clone();
    // An agency's client keeps the checkpoint it saw before the backup.
    let early_kept = dir.join("early.kept");
    let first = fugo::client::witness(&agency_channel(&setup, &running).await, &early_kept)
        .await
        .unwrap();
    assert!(matches!(first, Witnessed::FirstUse(_)), "{first:?}");

    // The backup, by the CLI, while the server serves.
    let out = dir.join("backup");
    let args = admin_args(
        &dir,
        &running,
        &["admin", "backup", "--out", out.to_str().unwrap()],
    );
    let backup = tokio::task::spawn_blocking(move || run_fugo(args))
        .await
        .unwrap();
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    let said = text(&backup.stdout);
    let n: u64 = said
        .strip_prefix("backup of checkpoint ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    assert!(n >= 6, "a policy record and five derives at least: {said}");
    let raw = fs::read(out.join("fugo.backup")).unwrap();
    assert!(raw.starts_with(b"FUGOBAK1"));
    // Encrypted: the store's own bytes do not appear in it.
    assert!(
        !raw.windows(7).any(|window| window == b"mhlw\0\0\0") && !text(&raw).contains("derive"),
        "the store travels encrypted"
    );

    // Restore refuses while the server holds the store, even with --force.
    let live = restore(&dir.join("fugo.toml"), &out, ops(&dir), &["--force"]);
    assert!(!live.status.success());
    assert!(
        text(&live.stderr).contains("is in use (a running server?)"),
        "{}",
        text(&live.stderr)
    );

    // More traffic after the backup; then the server stops (signing it all).
    derive_some(&setup, &running, 2_000).await;
    derive_some(&setup, &running, 3_000).await;
    // Another client keeps a checkpoint beyond the backup's.
    let late_kept = dir.join("late.kept");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        fugo::client::witness(&agency_channel(&setup, &running).await, &late_kept)
            .await
            .unwrap();
        if kept_size(&late_kept) > n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint beyond the backup was signed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let late_size = kept_size(&late_kept);
    assert!(kept_size(&early_kept) <= n);
    running.stop().await.unwrap();
    let (later_size, later_note, early_note) = {
        let mut store = open_store(&data);
        let (size, note) = store.latest_checkpoint().unwrap().unwrap();
        (size, note, store.checkpoint(n).unwrap().unwrap())
    };
    assert!(later_size > n);
    fs::write(dir.join("later.cp"), &later_note).unwrap();
    fs::write(dir.join("early.cp"), &early_note).unwrap();

    // A damaged backup is refused and leaves the store as it was.
    let damaged = dir.join("damaged");
    fs::create_dir_all(&damaged).unwrap();
    let mut bytes = raw.clone();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    fs::write(damaged.join("fugo.backup"), &bytes).unwrap();
    let refused = restore(&dir.join("fugo.toml"), &damaged, ops(&dir), &["--force"]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("damaged or was changed"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(
        open_store(&data).size(),
        later_size,
        "the store is untouched"
    );
    assert!(!data.join("audit.redb.restoring").exists());

    // Restore over the store that is there: refused without --force.
    let config = dir.join("fugo.toml");

    // Who restores is proven as the admin listener proves an admin (D203):
    // an agency's certificate, an admin CA certificate not in [admin]
    // identities, ops's certificate with another key, and a configuration
    // with no [admin] are all refused, the store untouched.
    let no_admin = dir.join("no-admin.toml");
    let text_config = fs::read_to_string(&config).unwrap();
    let without = &text_config[..text_config.find("[admin]").unwrap()];
    fs::write(&no_admin, without).unwrap();
    for (config, cert, key, says) in [
        (
            &config,
            "mhlw.pem",
            "mhlw.key",
            "not accepted by the admin CA",
        ),
        (
            &config,
            "intruder.pem",
            "intruder.key",
            "'intruder' is not one of the admins in [admin] identities",
        ),
        (
            &config,
            "ops.pem",
            "intruder.key",
            "not the private key of the certificate",
        ),
        (&no_admin, "ops.pem", "ops.key", "configure [admin]"),
    ] {
        let refused = restore(config, &out, (&dir, cert, key), &["--force"]);
        assert!(!refused.status.success(), "{cert} {key}");
        assert!(
            text(&refused.stderr).contains(says),
            "{cert} {key}: {}",
            text(&refused.stderr)
        );
        assert_eq!(
            open_store(&data).size(),
            later_size,
            "the store is untouched"
        );
    }
    let refused = restore(&config, &out, ops(&dir), &[]);
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("already holds an audit store"),
        "{}",
        text(&refused.stderr)
    );
    let restored = restore(&config, &out, ops(&dir), &["--force"]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let said = text(&restored.stdout);
    assert!(
        said.contains(&format!(
            "restored from checkpoint {n} of {first_origin}; records after {n} lost"
        )),
        "{said}"
    );
    let new_key = said.lines().last().unwrap().trim().to_owned();
    assert!(
        new_key.starts_with(&format!("{first_origin}/restored-{n}-")),
        "{new_key}"
    );
    // The store that was there is kept, not deleted.
    assert!(fs::read_dir(&data).unwrap().any(|entry| {
        entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("audit.redb.before-restore-")
    }));

    // Record N is the restore, naming the admin; the admin's earlier
    // status call is on record too; nothing after N survived.
    {
        let mut store = open_store(&data);
        assert_eq!(store.size(), n + 1);
        let restore_record = store.record(n).unwrap().unwrap();
        assert_eq!(restore_record.header.operation, Operation::Restored);
        assert_eq!(restore_record.header.caller, "admin:ops");
        assert_eq!(
            restore_record.header.note,
            format!("restored from checkpoint {n} of {first_origin}; records after {n} lost")
        );
        let records = store.records(0, 1000).unwrap();
        assert!(records.iter().any(|record| matches!(record,
            StoredRecord::Body(record) if record.header.operation == Operation::Admin
                && record.header.caller == "admin:ops"
                && record.header.note == "get_status"
                && record.entry.outcome == Outcome::Done)));
    }

    // Verify: intact under the new key; the backup's checkpoint still fits;
    // a checkpoint of the lost records is named as lost by the restore.
    // The same backup restored with the key held by custodians: their
    // shares open it (one too few is refused), into a fresh data directory.
    let split = fugo(&[
        "keys",
        "split",
        "--shares",
        "3",
        "--threshold",
        "2",
        dir.join("master.key").to_str().unwrap(),
        "--out",
        dir.join("shares").to_str().unwrap(),
    ]);
    assert!(split.status.success(), "{}", text(&split.stderr));
    let shares: Vec<String> = fs::read_dir(dir.join("shares"))
        .unwrap()
        .map(|entry| entry.unwrap().path().display().to_string())
        .collect();
    assert_eq!(shares.len(), 3);
    let custody = fs::read_to_string(dir.join("fugo.toml"))
        .unwrap()
        .replace("master_key = \"master.key\"\n", "")
        .replace("data_dir = \"data\"", "data_dir = \"custody-data\"")
        + "[custody]\nthreshold = 2\n";
    fs::write(dir.join("custody.toml"), custody).unwrap();
    let with_shares = |shares: &[String]| {
        let args: Vec<&str> = shares
            .iter()
            .flat_map(|share| ["--share", share.as_str()])
            .collect();
        restore(&dir.join("custody.toml"), &out, ops(&dir), &args)
    };
    let short = with_shares(&shares[..1]);
    assert!(!short.status.success());
    assert!(
        text(&short.stderr).contains("give 2 share files"),
        "{}",
        text(&short.stderr)
    );
    let by_custodians = with_shares(&shares[1..]);
    assert!(
        by_custodians.status.success(),
        "{}",
        text(&by_custodians.stderr)
    );
    assert!(
        text(&by_custodians.stdout)
            .contains(&format!("restored from checkpoint {n} of {first_origin}")),
        "{}",
        text(&by_custodians.stdout)
    );
    assert_eq!(open_store(&dir.join("custody-data")).size(), n + 1);

    let data_arg = data.to_str().unwrap();
    let ok = fugo(&[
        "audit",
        "verify",
        "--data-dir",
        data_arg,
        "--pubkey",
        &new_key,
        "--checkpoint",
        dir.join("early.cp").to_str().unwrap(),
    ]);
    assert!(
        ok.status.success(),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );
    let lost = fugo(&[
        "audit",
        "verify",
        "--data-dir",
        data_arg,
        "--pubkey",
        &new_key,
        "--checkpoint",
        dir.join("later.cp").to_str().unwrap(),
    ]);
    assert!(!lost.status.success());
    let message = text(&lost.stderr);
    assert!(
        message.contains(&format!("before the log was restored from checkpoint {n}"))
            && message.contains(&format!("records after {n}"))
            && message.contains(&format!("signed at size {later_size}")),
        "{message}"
    );

    // The server continues under the new origin; the log verifies after.
    let running = start(&setup.config).await;
    derive_some(&setup, &running, 4_000).await;
    let status = admin(&setup, &running, "ops")
        .await
        .get_status(AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        new_key.starts_with(&format!("{}+", status.origin)),
        "{} / {new_key}",
        status.origin
    );
    assert!(status.log_size > n + 1);
    // The clients see exactly what happened: the one that saw only what
    // the backup holds goes on under the new origin (a consistency proof
    // from its checkpoint still holds); the one that saw later records is
    // told they were lost, and stops.
    let early = fugo::client::witness(&agency_channel(&setup, &running).await, &early_kept)
        .await
        .unwrap();
    assert!(
        matches!(early, Witnessed::Restored { restored, .. } if restored == n),
        "{early:?}"
    );
    let late = fugo::client::witness(&agency_channel(&setup, &running).await, &late_kept)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &late,
            ClientError::Witness(WitnessError::Restored { restored, kept, .. })
                if *restored == n && *kept == late_size
        ),
        "{late}"
    );
    assert!(
        late.to_string()
            .contains(&format!("restored from checkpoint {n}")),
        "{late}"
    );
    running.stop().await.unwrap();
    drop(open_store(&data));
    let again = fugo(&[
        "audit",
        "verify",
        "--data-dir",
        data_arg,
        "--pubkey",
        &new_key,
        "--checkpoint",
        dir.join("early.cp").to_str().unwrap(),
    ]);
    assert!(again.status.success(), "{}", text(&again.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_takes_only_listed_admin_certificates() {
    let setup = setup();
    let dir = setup.dir.path();
    // A plain snapshot left by a backup the server stopped during.
    fs::create_dir_all(&setup.config.data_dir).unwrap();
    let stale = setup.config.data_dir.join(".backup-0011223344556677.tmp");
    fs::write(&stale, b"plain store bytes").unwrap();
    let running = start(&setup.config).await;
    assert!(!stale.exists(), "a left snapshot is removed at start");
    let admin_addr = running.admin_addr.unwrap();
    assert_ne!(admin_addr, running.addr);

    // An agency certificate (the agencies' CA) on the admin listener:
    // refused at the handshake, or by the first call.
    let agency = channel(
        admin_addr,
        &setup.ca,
        &file(dir, "mhlw.pem"),
        &file(dir, "mhlw.key"),
    )
    .await;
    if let Ok(channel) = agency {
        let error = AdminClient::new(channel)
            .get_status(AdminStatusRequest {})
            .await
            .unwrap_err();
        assert_ne!(error.code(), tonic::Code::Ok);
    }
    // An admin certificate on the agencies' listener: refused likewise.
    let ops = channel(
        running.addr,
        &setup.ca,
        &file(dir, "ops.pem"),
        &file(dir, "ops.key"),
    )
    .await;
    if let Ok(channel) = ops {
        let error = CodesClient::new(channel)
            .derive(DeriveRequest {
                epoch: 0,
                numbers: vec![common::valid_number(1)],
                on_behalf_of: String::new(),
            })
            .await
            .unwrap_err();
        assert_ne!(error.code(), tonic::Code::Ok);
    }
    // The admin CA's certificate of someone not listed: PERMISSION_DENIED.
    let error = admin(&setup, &running, "intruder")
        .await
        .get_status(AdminStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::PermissionDenied, "{error:?}");
    assert!(error.message().contains("'intruder' is not an admin"));

    // A reload of a broken policy: FAILED_PRECONDITION, the old one stays,
    // and the attempt is on record under the admin's name.
    let mut ops = admin(&setup, &running, "ops").await;
    let before = ops
        .get_status(AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    fs::write(dir.join("policy.toml"), "[[agency]]\nid = \n").unwrap();
    let error = ops.reload_policy(ReloadPolicyRequest {}).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    let after = ops
        .get_status(AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.policy_version, after.policy_version);
    fs::write(dir.join("policy.toml"), format!("{POLICY}\n# edited\n")).unwrap();
    let reloaded = ops
        .reload_policy(ReloadPolicyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(reloaded.policy_version, before.policy_version);
    drop(ops);
    running.stop().await.unwrap();

    let mut store = open_store(&setup.config.data_dir);
    let admin_records: Vec<(String, Outcome)> = store
        .records(0, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|record| match record {
            StoredRecord::Body(record) if record.header.operation == Operation::Admin => {
                assert_eq!(record.header.caller, "admin:ops");
                Some((record.header.note.to_string(), record.entry.outcome))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        admin_records,
        vec![
            ("get_status".to_owned(), Outcome::Done),
            (
                "reload_policy: refused, the policy in force stays".to_owned(),
                Outcome::Refused
            ),
            ("get_status".to_owned(), Outcome::Done),
            (
                format!("reload_policy: policy {} in force", reloaded.policy_version),
                Outcome::Done
            ),
        ]
    );
}

/// Dev mode with only `[admin] listen`: a demo admin CA and a certificate
/// for "admin" are written into data_dir/certs/admin, and it is an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_makes_an_admin_certificate() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("policy.toml"), POLICY).unwrap();
    fs::write(
        dir.path().join("fugo.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
             master_key = \"{}\"\nmaster_key_fingerprint = \"{}\"\ndev_mode = true\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            common::demo_key_path().display(),
            common::DEMO_FINGERPRINT
        ),
    )
    .unwrap();
    let config = ServeConfig::load(&dir.path().join("fugo.toml")).unwrap();
    let running = start(&config).await;
    let certs = dir.path().join("data/certs");
    let admin_dir = certs.join("admin");
    for name in ["ca.pem", "admin.pem", "admin.key"] {
        assert!(admin_dir.join(name).exists(), "{name}");
    }
    // Not the agencies' CA.
    assert_ne!(
        fs::read(admin_dir.join("ca.pem")).unwrap(),
        fs::read(certs.join("ca.pem")).unwrap()
    );
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            fs::read(certs.join("ca.pem")).unwrap(),
        ))
        .domain_name("localhost")
        .identity(Identity::from_pem(
            fs::read(admin_dir.join("admin.pem")).unwrap(),
            fs::read(admin_dir.join("admin.key")).unwrap(),
        ));
    let channel = Endpoint::from_shared(format!("https://{}", running.admin_addr.unwrap()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = AdminClient::new(channel)
        .get_status(AdminStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.log_size >= 1);
    running.stop().await.unwrap();
}

/// The agencies' CA under another file name is refused as the admin CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agencies_ca_is_refused_as_the_admin_ca() {
    let setup = setup();
    let dir = setup.dir.path();
    fs::copy(dir.join("ca.pem"), dir.join("copy-of-ca.pem")).unwrap();
    let mut config = setup.config.clone();
    if let Some(admin) = config.admin.as_mut() {
        admin.ca = dir.join("copy-of-ca.pem");
    }
    let error = service::start(config, &mut std::io::sink())
        .await
        .err()
        .expect("the server must not start");
    assert!(
        error
            .to_string()
            .contains("the admin CA holds a certificate of the agencies' CA"),
        "{error}"
    );
}

/// A backup taken while agencies keep calling is one consistent state:
/// restored into a fresh data directory it verifies, and it holds exactly
/// the records of its checkpoint (plus the restore record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_traffic_is_consistent() {
    let setup = setup();
    let dir = setup.dir.path().to_path_buf();
    let running = start(&setup.config).await;
    let channel = agency_channel(&setup, &running).await;
    let traffic = tokio::spawn(async move {
        let mut client = CodesClient::new(channel);
        for round in 0..40u64 {
            let numbers = (0..20)
                .map(|i| common::valid_number(50_000 + round * 100 + i))
                .collect();
            client
                .derive(DeriveRequest {
                    epoch: 0,
                    numbers,
                    on_behalf_of: String::new(),
                })
                .await
                .unwrap();
        }
    });
    let out = dir.join("busy-backup");
    let args = admin_args(
        &dir,
        &running,
        &["admin", "backup", "--out", out.to_str().unwrap()],
    );
    let backup = tokio::task::spawn_blocking(move || run_fugo(args))
        .await
        .unwrap();
    assert!(backup.status.success(), "{}", text(&backup.stderr));
    traffic.await.unwrap();
    running.stop().await.unwrap();
    let said = text(&backup.stdout);
    let n: u64 = said
        .strip_prefix("backup of checkpoint ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));

    let config = fs::read_to_string(dir.join("fugo.toml"))
        .unwrap()
        .replace("data_dir = \"data\"", "data_dir = \"restored\"");
    fs::write(dir.join("restored.toml"), config).unwrap();
    let restored = restore(&dir.join("restored.toml"), &out, ops(&dir), &[]);
    assert!(restored.status.success(), "{}", text(&restored.stderr));
    let key = text(&restored.stdout)
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();
    let verified = fugo(&[
        "audit",
        "verify",
        "--data-dir",
        dir.join("restored").to_str().unwrap(),
        "--pubkey",
        &key,
    ]);
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    let mut store = open_store(&dir.join("restored"));
    assert_eq!(store.size(), n + 1);
    // The backup's records are the live log's first n, unchanged.
    let mut live = open_store(&setup.config.data_dir);
    assert!(live.size() > n);
    assert_eq!(live.root_at(n).unwrap(), store.root_at(n).unwrap());
}
