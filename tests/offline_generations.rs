//! The offline `fugo derive` and key generations (D200): run as the real
//! binary against the data directory of a real server whose keyring holds
//! two master-key generations. The epoch's generation is read from the
//! policy (`--config`) or from the store's marks (`--master-key`), never
//! guessed; a re-issued number derives its original codes in a later
//! generation's epoch too; an epoch that is rekey-only or destroyed, or a
//! generation the tool has no key for, is refused by name. The store also
//! keeps each epoch's generation and each generation's key as first used:
//! a policy that rebinds an epoch, or a keyring with another key for a
//! generation, is refused. On the way, `fugo client rekey` moves an
//! agency's CSV of old codes to the generation-2 epoch.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use fugo::certs::DevCa;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::proto::fugo::v1::ReissueRequest;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use fugo::proto::fugo::v1::persons_client::PersonsClient;
use fugo::service::Running;
use fugo::service::config::{GenerationKey, MasterKeySource};
use tonic::transport::Channel;

const GEN1: [u8; 32] = [0x31; 32];
const GEN2: [u8; 32] = [0x32; 32];
const OTHER: [u8; 32] = [0x33; 32];

/// City's epochs (a TOML array); J-LIS re-issues numbers.
fn policy(city: &str) -> String {
    format!(
        r#"
[[agency]]
id = "city"
name = "City"
certificates = ["city"]
capabilities = ["derive"]
epochs = [{city}]

[[agency]]
id = "jlis"
name = "J-LIS"
certificates = ["jlis"]
capabilities = ["reissue"]
epoch = 1
"#
    )
}

const ROTATING: &str = r#"{ epoch = 1, generation = 1, state = "accepted" }, { epoch = 2, generation = 2, state = "current" }"#;
const CLOSED: &str = r#"{ epoch = 1, generation = 1, state = "rekey-only" }, { epoch = 2, generation = 2, state = "current" }"#;
const REBOUND: &str = r#"{ epoch = 1, generation = 1, state = "accepted" }, { epoch = 2, generation = 1, state = "current" }"#;

fn fingerprint(key: [u8; 32]) -> String {
    KeyHierarchy::new(&MasterKey::from_bytes(key))
        .fingerprint()
        .to_string()
}

fn write_key(path: &Path, key: [u8; 32]) {
    fs::write(
        path,
        MasterKey::from_bytes(key).to_file_contents().as_bytes(),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Starts the server on `dir` with generation 2's key `gen2`, and writes
/// the same configuration as fugo.toml (absolute paths) for the offline
/// tool.
async fn start(dir: &Path, policy_text: &str, gen2: [u8; 32]) -> Result<(Running, DevCa), String> {
    let (mut config, ca) = common::server_config(dir, policy_text, GEN1);
    let key2 = dir.join("generation-2.key");
    write_key(&key2, gen2);
    config.keyring = vec![GenerationKey {
        generation: fugo::generation::Generation::new(2).unwrap(),
        source: MasterKeySource::File(key2.clone()),
        fingerprint: KeyHierarchy::new(&MasterKey::from_bytes(gen2)).fingerprint(),
    }];
    let at = |name: &str| dir.join(name).display().to_string();
    fs::write(
        dir.join("fugo.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\npolicy = \"{}\"\n\
             master_key = \"{}\"\nmaster_key_fingerprint = \"{}\"\ndev_mode = false\n\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n\
             [[keyring]]\ngeneration = 2\nkey_file = \"{}\"\nfingerprint = \"{}\"\n",
            at("data"),
            at("policy.toml"),
            at("master.key"),
            fingerprint(GEN1),
            at("ca.pem"),
            at("server.pem"),
            at("server.key"),
            key2.display(),
            fingerprint(gen2),
        ),
    )
    .unwrap();
    let running = fugo::service::start(config, &mut std::io::sink())
        .await
        .map_err(|error| error.to_string())?;
    Ok((running, ca))
}

async fn channel(running: &Running, ca: &DevCa, identity: &str) -> Channel {
    common::channel(running.addr, ca, identity).await
}

async fn derive(channel: &Channel, numbers: &[String], epoch: u32) -> Vec<String> {
    common::derive_codes(&mut CodesClient::new(channel.clone()), numbers, epoch).await
}

/// `fugo derive` with `keys` (the key arguments) and `epoch` (if any)
/// over `numbers`: (output, the codes written).
fn offline(
    dir: &Path,
    keys: &[&str],
    epoch: Option<&str>,
    numbers: &[String],
) -> (Output, Vec<String>) {
    let input = dir.join("numbers.txt");
    let out = dir.join("codes.txt");
    let _ = fs::remove_file(&out);
    fs::write(&input, numbers.join("\n") + "\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fugo"));
    command.arg("derive").args(keys).args(["--agency", "city"]);
    if let Some(epoch) = epoch {
        command.args(["--epoch", epoch]);
    }
    let output = command.arg(&input).arg("-o").arg(&out).output().unwrap();
    let codes = fs::read_to_string(&out)
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default();
    (output, codes)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_derive_takes_each_epochs_generation_from_the_policy_or_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let numbers: Vec<String> = (0..3).map(|i| common::valid_number(9_100 + i)).collect();
    let new_number = common::valid_number(9_200);

    // The server: city's epoch 2 is current under generation 2; J-LIS
    // re-issues the first person's number.
    let (running, ca) = start(dir, &policy(ROTATING), GEN2).await.unwrap();
    let city = channel(&running, &ca, "city").await;
    let served_new = derive(&city, &numbers, 0).await;
    let served_old = derive(&city, &numbers, 1).await;
    assert!(served_new.iter().all(|code| code.starts_with("12")));
    assert_ne!(served_new, served_old);
    PersonsClient::new(channel(&running, &ca, "jlis").await)
        .reissue(ReissueRequest {
            old_number: numbers[0].clone(),
            new_number: new_number.clone(),
        })
        .await
        .unwrap();
    // `fugo client rekey` on an agency's CSV (BOM, CRLF): each old code
    // is replaced by its current-epoch code, generation 2, as served; the
    // old code goes to `old_code`.
    let pem = ca.client("city").unwrap();
    fs::write(dir.join("city.pem"), &pem.cert).unwrap();
    fs::write(dir.join("city.key"), &pem.key).unwrap();
    fs::write(
        dir.join("stored.csv"),
        format!(
            "\u{feff}id,code\r\n1,{}\r\n2,{}\r\n",
            served_old[1], served_old[2]
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(["client", "rekey", "--server"])
        .arg(format!("https://{}", running.addr))
        .args(["--server-name", "localhost", "--ca"])
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join("city.pem"))
        .arg("--key")
        .arg(dir.join("city.key"))
        .args(["--csv", "--column", "code"])
        .arg(dir.join("stored.csv"))
        .arg("-o")
        .arg(dir.join("rekeyed.csv"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let rekeyed = fs::read_to_string(dir.join("rekeyed.csv")).unwrap();
    assert!(rekeyed.contains(&served_new[1]), "{rekeyed}");
    assert!(rekeyed.contains(&served_new[2]), "{rekeyed}");
    assert!(rekeyed.contains("old_code"), "{rekeyed}");
    assert!(rekeyed.contains(&served_old[1]), "{rekeyed}");
    drop(city);
    running.stop().await.unwrap();

    let config = ["--config".to_owned(), path(dir, "fugo.toml")];
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let mut with_new = numbers[1..].to_vec();
    with_new.push(new_number.clone());

    // --config: the current epoch by default, in generation 2, as served;
    // the re-issued number gives the codes its original number had.
    let (output, codes) = offline(dir, &config, None, &with_new);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(codes[..2], served_new[1..]);
    assert_eq!(
        codes[2], served_new[0],
        "re-issued: the original's code in generation 2"
    );
    // An accepted epoch named: generation 1's codes, as served.
    let (output, codes) = offline(dir, &config, Some("1"), &with_new);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(codes[..2], served_old[1..]);
    assert_eq!(codes[2], served_old[0]);
    // The superseded number is refused on this path too.
    let (output, codes) = offline(dir, &config, None, &numbers[..1]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("superseded"),
        "{}",
        stderr(&output)
    );
    assert_eq!(codes, [""]);

    // --master-key is generation 1's key: the store's marks bind epoch 2
    // to generation 2, so the tool refuses rather than make wrong codes.
    let master = [
        "--master-key".to_owned(),
        path(dir, "master.key"),
        "--data-dir".to_owned(),
        path(dir, "data"),
    ];
    let master: Vec<&str> = master.iter().map(String::as_str).collect();
    let (output, codes) = offline(dir, &master, Some("2"), &numbers[1..]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}: {codes:?}",
        stderr(&output)
    );
    let error = stderr(&output);
    assert!(
        error.contains("epoch 2 is bound to key generation 2"),
        "{error}"
    );
    assert!(error.contains("--config"), "{error}");
    assert!(codes.is_empty());
    let (output, codes) = offline(dir, &master, Some("1"), &numbers[1..]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(codes, served_old[1..]);
    // The demo key meets this store (a server's, of another master key):
    // named as such, not as corrupt tables.
    let demo = [
        "--master-key".to_owned(),
        common::demo_key_path().display().to_string(),
        "--data-dir".to_owned(),
        path(dir, "data"),
    ];
    let demo: Vec<&str> = demo.iter().map(String::as_str).collect();
    let (output, _) = offline(dir, &demo, Some("1"), &numbers[1..]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "belongs to the master key with fingerprint {} (generation 1)",
            fingerprint(GEN1)
        )),
        "{}",
        stderr(&output)
    );
    // Without --config there is no current epoch to default to.
    let (output, _) = offline(dir, &master, None, &numbers[1..]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));

    // The window closes: epoch 1 is rekey-only, for the tool too (by the
    // policy with --config, by the store's marks with --master-key).
    let (running, _) = start(dir, &policy(CLOSED), GEN2).await.unwrap();
    running.stop().await.unwrap();
    for keys in [&config, &master] {
        let (output, codes) = offline(dir, keys, Some("1"), &numbers[1..]);
        assert_eq!(output.status.code(), Some(1));
        let error = stderr(&output);
        assert!(
            error.contains("agency city: epoch 1 is rekey-only"),
            "{error}"
        );
        assert!(codes.is_empty());
    }
    // Even when the policy file is edited back: the store's mark holds.
    fs::write(dir.join("policy.toml"), policy(ROTATING)).unwrap();
    let (output, _) = offline(dir, &config, Some("1"), &numbers[1..]);
    assert!(
        stderr(&output).contains("epoch 1 is rekey-only"),
        "{}",
        stderr(&output)
    );

    // The store keeps epoch 2 bound to generation 2: a policy binding it
    // to generation 1 stops the start, and the offline tool refuses it.
    let error = start(dir, &policy(REBOUND), GEN2).await.err().unwrap();
    assert!(
        error.contains(
            "agency city: epoch 2 is bound to key generation 2 and may not be bound to generation 1"
        ),
        "{error}"
    );
    let (output, _) = offline(dir, &config, Some("2"), &numbers[1..]);
    assert!(
        stderr(&output).contains(
            "binds epoch 2 to key generation 1, but it is bound to generation 2 in the store"
        ),
        "{}",
        stderr(&output)
    );
    // A generation held by custodians: their shares reach only a running
    // server, so the tool sends the caller there.
    let toml = fs::read_to_string(dir.join("fugo.toml")).unwrap();
    let held = toml.replace(
        &format!("key_file = \"{}\"\n", path(dir, "generation-2.key")),
        "",
    ) + "[keyring.custody]\nthreshold = 2\n";
    assert_ne!(held, toml);
    fs::write(dir.join("fugo.toml"), held).unwrap();
    fs::write(dir.join("policy.toml"), policy(CLOSED)).unwrap();
    let (output, _) = offline(dir, &config, None, &numbers[1..]);
    let error = stderr(&output);
    assert!(
        error.contains("epoch 2 is bound to key generation 2; its key is held by custodians: derive through the server"),
        "{error}"
    );

    // And generation 2's key is the one first used: another key, even
    // with its fingerprint configured, stops the start.
    let error = start(dir, &policy(CLOSED), OTHER).await.err().unwrap();
    assert!(
        error.contains(&format!(
            "key generation 2 was the key with fingerprint {}",
            fingerprint(GEN2)
        )),
        "{error}"
    );
    // The offline tool, given that configuration, refuses as well.
    let (output, codes) = offline(dir, &config, Some("2"), &numbers[1..]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains(&format!(
            "keeps key generation 2 as the key with fingerprint {}",
            fingerprint(GEN2)
        )),
        "{}",
        stderr(&output)
    );
    assert!(codes.is_empty());
}
