//! Key custody and production hardening, as operators and custodians meet
//! them: the real `fugo` binary splits a key, a real server started sealed
//! answers UNAVAILABLE and NOT_SERVING until custodians hand it shares with
//! `fugo unseal` over its socket; damaged, foreign and mixed shares are
//! refused by name; production refuses unsafe settings; the server runs
//! without core dumps, not dumpable, memory locked where possible.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fugo::custody::ShareFile;
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::proto::fugo::v1::DeriveRequest;
use fugo::proto::fugo::v1::codes_client::CodesClient;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");
const CALLER: &str = "mhlw";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn fugo(args: &[&str]) -> Output {
    Command::new(FUGO).args(args).output().unwrap()
}

/// A server's folder: a key (split, then the key file removed when
/// sealed), certificates, the example policy and a configuration.
struct Setup {
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = fugo::keyfile::generate(&dir.path().join("master.key")).unwrap();
        fugo::certs::write_dev_certs(&dir.path().join("pki"), &[CALLER.to_owned()]).unwrap();
        fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml"),
            dir.path().join("policy.toml"),
        )
        .unwrap();
        Setup {
            dir,
            fingerprint: keys.fingerprint().to_string(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Writes fugo.toml: `key` is the `master_key` line or the
    /// `[custody]` section, `tls` the `[tls]` section.
    fn config(&self, key: &str, tls: &str) -> PathBuf {
        let config = self.path("fugo.toml");
        let pki = self.path("pki");
        let tls = tls.replace("PKI", &pki.display().to_string());
        let (key_line, custody) = if key.starts_with('[') {
            (String::new(), key.to_owned())
        } else {
            (format!("{key}\n"), String::new())
        };
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
                 {key_line}master_key_fingerprint = \"{}\"\nshutdown_grace_seconds = 5\n\
                 dev_mode = false\n\n{tls}\n{custody}\n",
                self.fingerprint
            ),
        )
        .unwrap();
        config
    }

    /// A production configuration that starts sealed, waiting for
    /// `threshold` shares.
    fn sealed_config(&self, threshold: u8) -> PathBuf {
        self.config(&format!("[custody]\nthreshold = {threshold}"), TLS)
    }

    /// `fugo keys split` of the key into `out`; the share files' paths.
    fn split(&self, shares: u8, threshold: u8, out: &str) -> Vec<PathBuf> {
        let output = fugo(&[
            "keys",
            "split",
            "--shares",
            &shares.to_string(),
            "--threshold",
            &threshold.to_string(),
            self.path("master.key").to_str().unwrap(),
            "--out",
            self.path(out).to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let stdout = text(&output.stdout);
        let paths: Vec<PathBuf> = stdout
            .lines()
            .take(usize::from(shares))
            .map(PathBuf::from)
            .collect();
        assert!(
            stdout.contains(&format!(
                "master_key_fingerprint = \"{}\"\n[custody]\nthreshold = {threshold}",
                self.fingerprint
            )),
            "split prints the sealed start's configuration: {stdout}"
        );
        paths
    }

    /// `fugo unseal` with one share file.
    fn unseal(&self, share: &Path) -> Output {
        fugo(&[
            "unseal",
            "--data-dir",
            self.data_dir().to_str().unwrap(),
            share.to_str().unwrap(),
        ])
    }

    async fn client(&self, server: &Server) -> Channel {
        let pki = self.path("pki");
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(fs::read(pki.join("ca.pem")).unwrap()))
            .identity(Identity::from_pem(
                fs::read(pki.join(format!("{CALLER}.pem"))).unwrap(),
                fs::read(pki.join(format!("{CALLER}.key"))).unwrap(),
            ))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", server.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .connect()
            .await
            .unwrap()
    }
}

const TLS: &str =
    "[tls]\nca = \"PKI/ca.pem\"\ncert = \"PKI/server.pem\"\nkey = \"PKI/server.key\"\n";

/// `fugo serve` as a child process.
struct Server {
    child: Child,
    addr: String,
    logs: Option<std::thread::JoinHandle<String>>,
}

impl Server {
    fn start(config: &Path) -> Server {
        Self::start_with(Command::new(FUGO), config)
    }

    fn start_with(mut command: Command, config: &Path) -> Server {
        let mut child = command
            .args(["serve", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line.trim().strip_prefix("fugo: listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the server did not start: {line:?}\n{}",
                logs.join().unwrap()
            );
        };
        Server {
            addr: addr.to_owned(),
            child,
            logs: Some(logs),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM; the exit code and the logs.
    fn stop(mut self) -> (Option<i32>, String) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        (status.code(), self.logs.take().unwrap().join().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.logs.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A derive call: its status code and message on failure.
async fn derive(channel: &Channel) -> Result<(), (Code, String)> {
    CodesClient::new(channel.clone())
        .derive(DeriveRequest {
            numbers: vec![common::valid_number(1)],
            on_behalf_of: String::new(),
            epoch: 0,
        })
        .await
        .map(|_| ())
        .map_err(|status| (status.code(), status.message().to_owned()))
}

/// Health's overall status and the reason header.
async fn health(channel: &Channel) -> (ServingStatus, Option<String>) {
    let response = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let reason = response
        .metadata()
        .get(fugo::service::sealed::HEALTH_REASON)
        .map(|value| value.to_str().unwrap().to_owned());
    (
        ServingStatus::try_from(response.into_inner().status).unwrap(),
        reason,
    )
}

async fn assert_sealed(channel: &Channel, supplied: u8, threshold: u8) {
    let reason = format!("sealed: {supplied} of {threshold} shares supplied");
    assert_eq!(
        derive(channel).await,
        Err((Code::Unavailable, reason.clone()))
    );
    assert_eq!(
        health(channel).await,
        (ServingStatus::NotServing, Some(reason))
    );
}

fn assert_refused(output: &Output, share: &Path, says: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&share.display().to_string()) && stderr.contains(says),
        "names the file and says {says:?}: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_server_waits_for_its_shares_then_serves() {
    let setup = Setup::new();
    let shares = setup.split(5, 3, "shares");
    assert_eq!(shares.len(), 5);
    for share in &shares {
        let mode = fs::metadata(share).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", share.display());
        let body = fs::read_to_string(share).unwrap();
        assert!(
            body.contains(&format!("key: {}", setup.fingerprint)),
            "{body}"
        );
        assert!(
            body.contains("threshold: 3") && body.contains("checksum: "),
            "{body}"
        );
    }
    // A second split of the same key, and a split of another key.
    let other_split = setup.split(5, 3, "again");
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign_key = foreign_dir.path().join("other.key");
    fugo::keyfile::generate(&foreign_key).unwrap();
    let output = fugo(&[
        "keys",
        "split",
        "--shares",
        "3",
        "--threshold",
        "3",
        foreign_key.to_str().unwrap(),
        "--out",
        foreign_dir.path().join("s").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let foreign = foreign_dir.path().join("s/share-1-of-3.txt");
    // The custodians hold the shares; the key file is gone.
    fs::remove_file(setup.path("master.key")).unwrap();

    let server = Server::start(&setup.sealed_config(3));
    let socket = setup.data_dir().join("unseal.sock");
    assert_eq!(
        fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let channel = setup.client(&server).await;
    assert_sealed(&channel, 0, 3).await;

    let output = setup.unseal(&shares[0]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "accepted: share 1 for generation 1; 1 of 3 shares supplied\n"
    );
    assert_sealed(&channel, 1, 3).await;

    // A damaged share is named by file (here) and index, and does not count.
    let damaged = setup.path("damaged.txt");
    let body = fs::read_to_string(&shares[1]).unwrap();
    let at = body.find("value: ").unwrap() + 7;
    let mut bytes = body.into_bytes();
    bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    fs::write(&damaged, bytes).unwrap();
    assert_refused(
        &setup.unseal(&damaged),
        &damaged,
        "share 2: the checksum does not match",
    );
    // The same damage sent straight to the socket is refused by the server too.
    let reply =
        fugo::custody::send_share(&setup.data_dir(), &fs::read_to_string(&damaged).unwrap())
            .unwrap();
    assert!(
        reply.starts_with("refused: share 2: the checksum does not match"),
        "{reply}"
    );
    // Shares of another split (even of the same key) and of another key.
    assert_refused(
        &setup.unseal(&other_split[1]),
        &other_split[1],
        "shares of two different splits cannot be combined",
    );
    assert_refused(&setup.unseal(&foreign), &foreign, "belongs to another key");
    assert_refused(
        &setup.unseal(&shares[0]),
        &shares[0],
        "share 1 was already supplied",
    );
    assert_sealed(&channel, 1, 3).await;

    let output = setup.unseal(&shares[3]);
    assert_eq!(
        text(&output.stdout),
        "accepted: share 4 for generation 1; 2 of 3 shares supplied\n"
    );
    let output = setup.unseal(&shares[4]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!(
            "unsealed: key {} rebuilt; the server is serving\n",
            setup.fingerprint
        )
    );
    // Serving without a restart, on the same connection.
    assert_eq!(derive(&channel).await, Ok(()));
    assert_eq!(health(&channel).await, (ServingStatus::Serving, None));
    assert!(!socket.exists(), "the unseal socket is gone once unsealed");
    let output = setup.unseal(&shares[2]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("cannot reach a sealed server"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        setup.data_dir().join(fugo::audit::STORE_FILE).exists(),
        "the audit trail opened on unsealing"
    );
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("SEALED: waiting for the master key's shares"),
        "{logs}"
    );
    for share in &shares {
        let value = fs::read_to_string(share).unwrap();
        let value = value.lines().find(|l| l.starts_with("value: ")).unwrap();
        assert!(!logs.contains(&value[7..]), "a share value in the logs");
    }
}

/// Shares of another key whose `key:` lines were rewritten (checksums
/// recomputed) pass the per-share checks; the combined key's fingerprint
/// does not match, so the server refuses it, forgets the shares and stays
/// sealed; the right shares then unseal it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_combined_key_with_the_wrong_fingerprint_is_refused() {
    let setup = Setup::new();
    let shares = setup.split(3, 2, "shares");
    let pinned = fugo::keys::Fingerprint::parse(&setup.fingerprint).unwrap();
    let other = MasterKey::from_bytes([0x42; 32]);
    let forged: Vec<PathBuf> = fugo::custody::split_key(&other, 3, 2)
        .unwrap()
        .into_iter()
        .take(2)
        .map(|mut share| {
            share.key = pinned;
            let path = setup.path(&format!("forged-{}.txt", share.share.index()));
            fs::write(&path, share.to_text().as_bytes()).unwrap();
            assert!(ShareFile::parse(&fs::read_to_string(&path).unwrap()).is_ok());
            path
        })
        .collect();
    fs::remove_file(setup.path("master.key")).unwrap();
    let server = Server::start(&setup.sealed_config(2));
    let channel = setup.client(&server).await;
    let output = setup.unseal(&forged[0]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let output = setup.unseal(&forged[1]);
    let other_fingerprint = KeyHierarchy::new(&other).fingerprint().to_string();
    assert_refused(
        &output,
        &forged[1],
        &format!(
            "combine to a key with fingerprint {other_fingerprint}, not the configured {}",
            setup.fingerprint
        ),
    );
    assert_sealed(&channel, 0, 2).await;
    assert_eq!(setup.unseal(&shares[2]).status.code(), Some(0));
    assert_eq!(setup.unseal(&shares[0]).status.code(), Some(0));
    assert_eq!(derive(&channel).await, Ok(()));
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
}

/// The socket is 0600 and the server checks the peer's uid itself
/// (SO_PEERCRED): with the socket opened up on purpose, another user's
/// share is still refused. Needs root, to run a client as another user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unseal_socket_takes_shares_only_from_the_servers_user() {
    if !rustix::process::geteuid().is_root() {
        println!("skipped: needs root to run a client as another user (CI runs as root)");
        return;
    }
    let setup = Setup::new();
    let shares = setup.split(2, 2, "shares");
    fs::remove_file(setup.path("master.key")).unwrap();
    let server = Server::start(&setup.sealed_config(2));
    let channel = setup.client(&server).await;
    // Open the way for user nobody: the folders, the socket, a share copy.
    for dir in [setup.dir.path().to_path_buf(), setup.data_dir()] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let socket = setup.data_dir().join("unseal.sock");
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let readable = setup.path("readable-share.txt");
    fs::copy(&shares[0], &readable).unwrap();
    fs::set_permissions(&readable, fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(FUGO)
        .args([
            "unseal",
            "--data-dir",
            setup.data_dir().to_str().unwrap(),
            readable.to_str().unwrap(),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_refused(
        &output,
        &readable,
        "the unseal socket takes shares only from uid 0 (the server's), not 65534",
    );
    assert_sealed(&channel, 0, 2).await;
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
}

/// A configured fingerprint of the public demo key, a master key file
/// others can read, and a `[tls]` without a client CA each stop a
/// production server with what to do.
#[test]
fn production_refuses_the_demo_key_open_key_files_and_no_client_ca() {
    let setup = Setup::new();
    let refused = |config: &Path| {
        let output = Command::new(FUGO)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
        assert!(output.stdout.is_empty(), "it never listened");
        text(&output.stderr)
    };
    let key = setup.path("master.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let stderr = refused(&setup.config(&format!("master_key = \"{}\"", key.display()), TLS));
    assert!(
        stderr.contains(&format!(
            "key file {} can be read by group or others; run `chmod 600` on it",
            key.display()
        )),
        "{stderr}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

    let no_ca = "[tls]\ncert = \"PKI/server.pem\"\nkey = \"PKI/server.key\"\n";
    let stderr = refused(&setup.config(&format!("master_key = \"{}\"", key.display()), no_ca));
    assert!(stderr.contains("[tls] has no ca: name the CA"), "{stderr}");

    // Sealed, pinned to the demo key's fingerprint: refused before any share.
    let demo = Setup {
        dir: tempfile::tempdir().unwrap(),
        fingerprint: common::DEMO_FINGERPRINT.to_owned(),
    };
    fugo::certs::write_dev_certs(&demo.path("pki"), &[CALLER.to_owned()]).unwrap();
    fs::copy(setup.path("policy.toml"), demo.path("policy.toml")).unwrap();
    let stderr = refused(&demo.sealed_config(2));
    assert!(
        stderr.contains(
            "master_key_fingerprint is the public demo key; it is refused outside dev mode"
        ) && stderr.contains("fugo keygen --out"),
        "{stderr}"
    );
    assert!(!demo.data_dir().join("unseal.sock").exists());
}

/// Reads one line of /proc/PID/status or /proc/PID/limits.
fn proc_line(pid: u32, file: &str, prefix: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /proc/{pid}/{file}"))
        .to_owned()
}

/// Whether a process of user `uid` (a sibling of the same user as the
/// target) can read the target's environment.
fn sibling_reads_environ(pid: u32, uid: Option<u32>) -> bool {
    let mut command = Command::new("cat");
    command
        .arg(format!("/proc/{pid}/environ"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    command.status().unwrap().success()
}

/// `fugo serve` has no core dumps (soft and hard limit 0), is not dumpable
/// (a process of the same user cannot read its /proc/PID/environ, while it
/// can read that of an ordinary process of that user), and locks its
/// memory when allowed or says why not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_has_no_core_dumps_and_is_not_dumpable() {
    let setup = Setup::new();
    let root = rustix::process::geteuid().is_root();
    // As root, run the server as user nobody: root may read any process.
    let user = root.then_some(65534u32);
    let config = setup.config(
        &format!("master_key = \"{}\"", setup.path("master.key").display()),
        TLS,
    );
    let mut command = Command::new(FUGO);
    if let Some(uid) = user {
        for entry in walk(setup.dir.path()) {
            std::os::unix::fs::chown(&entry, Some(uid), Some(uid)).unwrap();
        }
        command.uid(uid).gid(uid);
    }
    let server = Server::start_with(command, &config);
    let pid = server.pid();
    let limits = proc_line(pid, "limits", "Max core file size");
    let fields: Vec<&str> = limits.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{limits}");

    let mut ordinary = Command::new("sleep");
    ordinary.arg("30");
    if let Some(uid) = user {
        ordinary.uid(uid).gid(uid);
    }
    let mut ordinary = ordinary.spawn().unwrap();
    let control = sibling_reads_environ(ordinary.id(), user);
    let _ = ordinary.kill();
    let _ = ordinary.wait();
    assert!(control, "a sibling reads an ordinary process's environ");
    assert!(
        !sibling_reads_environ(pid, user),
        "a sibling of the same user read the server's environ: it is dumpable"
    );
    // Non-dumpable processes' /proc files belong to root.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(format!("/proc/{pid}/environ")).unwrap().uid(),
        0
    );

    let locked = proc_line(pid, "status", "VmLck:");
    let locked_kb: u64 = locked.split_whitespace().nth(1).unwrap().parse().unwrap();
    let channel = setup.client(&server).await;
    assert_eq!(derive(&channel).await, Ok(()));
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    let limited = rustix::process::getrlimit(rustix::process::Resource::Memlock)
        .current
        .is_some();
    if user.is_some() && limited {
        // nobody (no capabilities) under this process's finite RLIMIT_MEMLOCK.
        assert_eq!(locked_kb, 0, "{locked}");
        assert!(
            logs.contains("memory is not locked against swapping: RLIMIT_MEMLOCK is"),
            "{logs}"
        );
    } else if logs.contains("memory locked against swapping") {
        assert!(locked_kb > 0, "{locked}");
    } else {
        assert!(
            logs.contains("memory is not locked against swapping"),
            "{logs}"
        );
    }
}

/// The locked case: with CAP_IPC_LOCK (root on CI) or an unlimited
/// RLIMIT_MEMLOCK, the server locks its memory.
#[test]
fn the_server_locks_its_memory_when_it_may() {
    let may = rustix::thread::capabilities(None).is_ok_and(|sets| {
        sets.effective
            .contains(rustix::thread::CapabilitySet::IPC_LOCK)
    }) || rustix::process::getrlimit(rustix::process::Resource::Memlock)
        .current
        .is_none();
    if !may {
        println!("skipped: needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK (CI runs as root)");
        return;
    }
    let setup = Setup::new();
    let config = setup.config(
        &format!("master_key = \"{}\"", setup.path("master.key").display()),
        TLS,
    );
    let server = Server::start(&config);
    let locked = proc_line(server.pid(), "status", "VmLck:");
    let locked_kb: u64 = locked.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    assert!(
        logs.contains("memory locked against swapping (mlockall)"),
        "{logs}"
    );
    assert!(locked_kb > 0, "{locked}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// An in-process server's configuration in `dir` with the example policy,
/// its key `master` held by custodians (threshold 2, the key file gone),
/// and the CA of its certificates.
fn sealed_in_process(
    dir: &Path,
    master: [u8; 32],
) -> (fugo::service::ServeConfig, fugo::certs::DevCa) {
    let policy =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml"))
            .unwrap();
    let (mut config, ca) = common::server_config(dir, &policy, master);
    fs::remove_file(dir.join("master.key")).unwrap();
    config.master_key = fugo::service::MasterKeySource::Shares { threshold: 2 };
    (config, ca)
}

/// The library's sealed start, in process: `Running::is_sealed`, a policy
/// reload refused while sealed (the file is read at unsealing), and
/// serving after the shares arrive through the real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_start_refuses_policy_reloads_until_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _ca) = sealed_in_process(dir.path(), [7; 32]);
    config.metrics = Some("127.0.0.1:0".parse().unwrap());
    let data_dir = config.data_dir.clone();
    let running = fugo::service::start(config, &mut std::io::sink())
        .await
        .unwrap();
    assert!(running.is_sealed());
    // While sealed there is nothing to count: /metrics answers 503.
    let metrics = running.metrics_addr.unwrap();
    let page = scrape(metrics).await;
    assert!(
        page.starts_with("HTTP/1.1 503") && page.contains("sealed"),
        "{page}"
    );
    let error = running.reload_policy().unwrap_err();
    assert!(
        matches!(error, fugo::service::ServeError::Sealed),
        "{error}"
    );
    let shares = fugo::custody::split_key(&MasterKey::from_bytes([7; 32]), 2, 2).unwrap();
    for share in &shares {
        let text = share.to_text();
        let data_dir = data_dir.clone();
        tokio::task::spawn_blocking(move || fugo::custody::send_share(&data_dir, &text))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(!running.is_sealed());
    let page = scrape(metrics).await;
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("fugo_audit_commit_failures_total"),
        "{page}"
    );
    running.reload_policy().unwrap();
    running.stop().await.unwrap();
}

/// `GET /metrics` on `addr`: the whole HTTP answer.
async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_string(&mut page),
    )
    .await
    .unwrap()
    .unwrap();
    page
}

/// `fugo keys split` of `key` into `out`; the share files' paths.
fn split_file(key: &Path, shares: u8, threshold: u8, out: &Path) -> Vec<PathBuf> {
    let output = fugo(&[
        "keys",
        "split",
        "--shares",
        &shares.to_string(),
        "--threshold",
        &threshold.to_string(),
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    text(&output.stdout)
        .lines()
        .take(usize::from(shares))
        .map(PathBuf::from)
        .collect()
}

/// A second master key for the keyring: its file (mode 0600) in the
/// setup's folder and its fingerprint.
fn second_key(setup: &Setup) -> (PathBuf, String) {
    let path = setup.path("master-2.key");
    let keys = fugo::keyfile::generate(&path).unwrap();
    (path, keys.fingerprint().to_string())
}

/// The example policy with mhlw rotated onto generation 2: epoch 1 of
/// generation 1 still accepted, epoch 2 of generation 2 current.
fn rotate_mhlw(setup: &Setup) {
    let path = setup.path("policy.toml");
    let policy = fs::read_to_string(&path).unwrap();
    let before = "certificates = [\"mhlw\"]\ncapabilities = [\"derive\"]\nepoch = 1\n";
    assert!(
        policy.contains(before),
        "the example policy's mhlw entry changed"
    );
    let after = "certificates = [\"mhlw\"]\ncapabilities = [\"derive\"]\n\
                 epochs = [{ epoch = 1, generation = 1, state = \"accepted\" }, \
                 { epoch = 2, generation = 2, state = \"current\" }]\n";
    fs::write(&path, policy.replace(before, after)).unwrap();
}

/// `config` with a `[[keyring]]` entry for generation 2 appended: `source`
/// is its `key_file` line or `[keyring.custody]` sub-table (or both, or
/// neither).
fn with_generation_2(config: &Path, fingerprint: &str, source: &str) -> PathBuf {
    let mut text = fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[[keyring]]\ngeneration = 2\nfingerprint = \"{fingerprint}\"\n{source}\n"
    ));
    fs::write(config, text).unwrap();
    config.to_path_buf()
}

const NUMBERS: std::ops::Range<u64> = 1..4;

/// mhlw's codes of a few numbers in `epoch` (0: its current one).
async fn codes(channel: &Channel, epoch: u32) -> Result<Vec<String>, (Code, String)> {
    use fugo::proto::fugo::v1::derive_result;
    let response = CodesClient::new(channel.clone())
        .derive(DeriveRequest {
            numbers: NUMBERS.map(common::valid_number).collect(),
            on_behalf_of: String::new(),
            epoch,
        })
        .await
        .map_err(|status| (status.code(), status.message().to_owned()))?;
    Ok(response
        .into_inner()
        .results
        .into_iter()
        .map(|r| match r.result {
            Some(derive_result::Result::Code(code)) => code,
            other => panic!("{other:?}"),
        })
        .collect())
}

/// mhlw's codes in epochs 1 and 2 from a server reading both generations'
/// key files: what the sealed servers must give once unsealed.
async fn reference_codes(setup: &Setup, key2: &Path, fingerprint2: &str) -> [Vec<String>; 2] {
    let key1 = setup.path("master.key");
    let config = with_generation_2(
        &setup.config(&format!("master_key = \"{}\"", key1.display()), TLS),
        fingerprint2,
        &format!("key_file = \"{}\"", key2.display()),
    );
    let server = Server::start(&config);
    let channel = setup.client(&server).await;
    let epoch1 = codes(&channel, 1).await.unwrap();
    let epoch2 = codes(&channel, 2).await.unwrap();
    assert_eq!(
        codes(&channel, 0).await.unwrap(),
        epoch2,
        "epoch 2 is current"
    );
    assert_ne!(epoch1, epoch2);
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
    [epoch1, epoch2]
}

/// Generation 1 from a key file, generation 2 held by custodians
/// (`[keyring.custody]`, D181, D182): the server reads generation 1's file,
/// listens sealed with today's reason, refuses a share of a key it does not
/// wait for (naming generation 2's fingerprint), counts generation 2's
/// shares for generation 2, and once they are in derives in the epoch bound
/// to generation 2 exactly the codes a server reading generation 2's key
/// file gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_generation_held_by_custodians_seals_the_start_until_its_shares_arrive() {
    let setup = Setup::new();
    rotate_mhlw(&setup);
    let (key2, fingerprint2) = second_key(&setup);
    let [epoch1, epoch2] = reference_codes(&setup, &key2, &fingerprint2).await;
    let shares = split_file(&key2, 3, 2, &setup.path("shares-2"));
    let shares1 = split_file(&setup.path("master.key"), 2, 2, &setup.path("shares-1"));
    // The custodians hold generation 2; its key file is gone.
    fs::remove_file(&key2).unwrap();
    let key1 = setup.path("master.key");
    let config = with_generation_2(
        &setup.config(&format!("master_key = \"{}\"", key1.display()), TLS),
        &fingerprint2,
        "[keyring.custody]\nthreshold = 2",
    );
    let server = Server::start(&config);
    let channel = setup.client(&server).await;
    assert_sealed(&channel, 0, 2).await;
    // Generation 1 is read from its file: its shares are for nothing here.
    let output = setup.unseal(&shares1[0]);
    assert_refused(
        &output,
        &shares1[0],
        &format!(
            "no sealed generation expects it: the sealed generations expect generation 2: key \
             {fingerprint2}"
        ),
    );
    let output = setup.unseal(&shares[2]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        "accepted: share 3 for generation 2; 1 of 2 shares supplied\n"
    );
    assert_sealed(&channel, 1, 2).await;
    let output = setup.unseal(&shares[0]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!("unsealed: key {fingerprint2} rebuilt; the server is serving\n")
    );
    assert_eq!(codes(&channel, 2).await, Ok(epoch2.clone()));
    assert_eq!(codes(&channel, 0).await, Ok(epoch2));
    assert_eq!(codes(&channel, 1).await, Ok(epoch1));
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
}

/// Both generations held by custodians: the reason names each generation's
/// progress, shares arrive interleaved and each counts for the generation
/// whose key it names, a generation already rebuilt takes no more shares, a
/// share of an unknown key is refused naming both expected fingerprints,
/// and the server opens on the last share of the last generation with the
/// same codes as from key files (D182, D183).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_generations_under_custody_unseal_with_interleaved_shares() {
    let setup = Setup::new();
    rotate_mhlw(&setup);
    let (key2, fingerprint2) = second_key(&setup);
    let [epoch1, epoch2] = reference_codes(&setup, &key2, &fingerprint2).await;
    let fingerprint1 = setup.fingerprint.clone();
    let shares1 = setup.split(5, 3, "shares-1");
    let shares2 = split_file(&key2, 2, 2, &setup.path("shares-2"));
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign_key = foreign_dir.path().join("other.key");
    fugo::keyfile::generate(&foreign_key).unwrap();
    let foreign = split_file(&foreign_key, 2, 2, &foreign_dir.path().join("s"));
    fs::remove_file(setup.path("master.key")).unwrap();
    fs::remove_file(&key2).unwrap();
    let config = with_generation_2(
        &setup.sealed_config(3),
        &fingerprint2,
        "[keyring.custody]\nthreshold = 2",
    );
    let server = Server::start(&config);
    let channel = setup.client(&server).await;
    let sealed = |reason: &str| (Code::Unavailable, format!("sealed: {reason}"));
    assert_eq!(
        codes(&channel, 0).await,
        Err(sealed(
            "generation 1: 0 of 3 shares supplied; generation 2: 0 of 2 shares supplied"
        ))
    );
    let said = |share: &Path| {
        let output = setup.unseal(share);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        text(&output.stdout)
    };
    assert_eq!(
        said(&shares1[0]),
        "accepted: share 1 for generation 1; 1 of 3 shares supplied\n"
    );
    assert_eq!(
        said(&shares2[1]),
        "accepted: share 2 for generation 2; 1 of 2 shares supplied\n"
    );
    assert_eq!(
        said(&shares1[3]),
        "accepted: share 4 for generation 1; 2 of 3 shares supplied\n"
    );
    assert_refused(
        &setup.unseal(&foreign[0]),
        &foreign[0],
        &format!(
            "no sealed generation expects it: the sealed generations expect generation 1: key \
             {fingerprint1}, generation 2: key {fingerprint2}"
        ),
    );
    assert_eq!(
        said(&shares2[0]),
        format!(
            "accepted: share 1 for generation 2; its key {fingerprint2} is rebuilt; still \
             sealed: generation 1: 2 of 3 shares supplied; generation 2: key rebuilt\n"
        )
    );
    let reason = "generation 1: 2 of 3 shares supplied; generation 2: key rebuilt";
    assert_eq!(codes(&channel, 0).await, Err(sealed(reason)));
    assert_eq!(
        health(&channel).await,
        (ServingStatus::NotServing, Some(format!("sealed: {reason}")))
    );
    assert_refused(
        &setup.unseal(&shares2[1]),
        &shares2[1],
        "share 2 is of generation 2, whose key is already rebuilt",
    );
    assert_eq!(
        said(&shares1[4]),
        format!(
            "unsealed: key {fingerprint1} rebuilt for generation 1, the last sealed \
             generation; the server is serving\n"
        )
    );
    assert_eq!(codes(&channel, 0).await, Ok(epoch2));
    assert_eq!(codes(&channel, 1).await, Ok(epoch1));
    assert_eq!(health(&channel).await, (ServingStatus::Serving, None));
    let (code, logs) = server.stop();
    assert_eq!(code, Some(0), "{logs}");
}

/// A `[[keyring]]` entry with both sources, with none, or with a custody
/// threshold below 2 stops `fugo serve` naming the entry; and with
/// generation 1 sealed, generation 2's key file is still read and checked
/// at start, before listening (D181, D182).
#[test]
fn keyring_key_sources_are_checked_before_listening() {
    let setup = Setup::new();
    rotate_mhlw(&setup);
    let (key2, fingerprint2) = second_key(&setup);
    // Bounded: a server that does start is killed and reported.
    let refused = |config: &Path| {
        let mut child = Command::new(FUGO)
            .args(["serve", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let output = child.wait_with_output().unwrap();
                panic!("it started: {}", text(&output.stdout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
        assert!(output.stdout.is_empty(), "it never listened");
        text(&output.stderr)
    };
    let file = format!("key_file = \"{}\"", key2.display());
    let key1 = format!("master_key = \"{}\"", setup.path("master.key").display());
    let cases = [
        (
            format!("{file}\n[keyring.custody]\nthreshold = 2"),
            "[[keyring]] generation 2: both key_file and [keyring.custody] are set",
        ),
        (String::new(), "[[keyring]] generation 2: no key source"),
        (
            "[keyring.custody]\nthreshold = 1".to_owned(),
            "[[keyring]] generation 2: [keyring.custody] threshold must be at least 2",
        ),
    ];
    for (source, says) in &cases {
        let stderr = refused(&with_generation_2(
            &setup.config(&key1, TLS),
            &fingerprint2,
            source,
        ));
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    // A generation held by custodians pinned to the public demo key.
    let stderr = refused(&with_generation_2(
        &setup.config(&key1, TLS),
        common::DEMO_FINGERPRINT,
        "[keyring.custody]\nthreshold = 2",
    ));
    assert!(
        stderr.contains("[[keyring]] generation 2 fingerprint is the public demo key"),
        "{stderr}"
    );
    // Sealed generation 1, generation 2 from a key file pinned to another
    // fingerprint: refused at start, no socket made.
    let wrong = "0123456789abcdef0123456789abcdef";
    let stderr = refused(&with_generation_2(&setup.sealed_config(2), wrong, &file));
    assert!(
        stderr.contains(&key2.display().to_string()) && stderr.contains(wrong),
        "{stderr}"
    );
    assert!(!setup.data_dir().join("unseal.sock").exists());
}

/// D204: custodians hand their shares to a sealed server over the admin
/// listener, with admin certificates, from wherever that listener is
/// reachable. A refused share is FAILED_PRECONDITION naming why, a
/// certificate of no listed admin is refused, the share that completes the
/// key opens the server (and closes the unseal socket), and every share's
/// admin is in the audit trail once it opens, without the share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodians_unseal_over_the_admin_plane_and_each_share_is_recorded() {
    use fugo::proto::fugo::v1::UnsealRequest;
    use fugo::proto::fugo::v1::admin_client::AdminClient;
    use fugo_log::record::{Operation, Outcome};

    let dir = tempfile::tempdir().unwrap();
    let (mut config, ca) = sealed_in_process(dir.path(), [9; 32]);
    let admin_ca = fugo::certs::DevCa::new("admin CA").unwrap();
    fs::write(dir.path().join("admin-ca.pem"), admin_ca.cert_pem()).unwrap();
    config.admin = Some(fugo::service::AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ca: dir.path().join("admin-ca.pem"),
        identities: vec!["custodian-a".to_owned(), "custodian-b".to_owned()],
        crls: Vec::new(),
    });
    let data_dir = config.data_dir.clone();
    let running = fugo::service::start(config, &mut std::io::sink())
        .await
        .unwrap();
    assert!(running.is_sealed());
    let addr = running.admin_addr.unwrap();
    let mut a = AdminClient::new(common::channel_with(addr, &ca, &admin_ca, "custodian-a").await);
    let mut b = AdminClient::new(common::channel_with(addr, &ca, &admin_ca, "custodian-b").await);
    let shares: Vec<String> = fugo::custody::split_key(&MasterKey::from_bytes([9; 32]), 3, 2)
        .unwrap()
        .iter()
        .map(|share| share.to_text().to_string())
        .collect();
    let unseal = |share: &str| UnsealRequest {
        share: share.to_owned(),
    };

    // A damaged share: refused, naming why, and it does not count.
    let at = shares[0].find("value: ").unwrap() + 7;
    let mut damaged = shares[0].clone().into_bytes();
    damaged[at] = if damaged[at] == b'a' { b'b' } else { b'a' };
    let refused = a
        .unseal(unseal(std::str::from_utf8(&damaged).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("share 1: the checksum does not match"),
        "{refused:?}"
    );
    // More than a share file can be: refused unread, as on the socket.
    let oversized = a.unseal(unseal(&"x".repeat(5_000))).await.unwrap_err();
    assert_eq!(oversized.code(), Code::FailedPrecondition, "{oversized:?}");
    assert!(
        oversized.message().contains("not a share file"),
        "{oversized:?}"
    );
    let first = a.unseal(unseal(&shares[0])).await.unwrap().into_inner();
    assert_eq!(
        first.outcome,
        "accepted: share 1 for generation 1; 1 of 2 shares supplied"
    );
    assert!(!first.unsealed && running.is_sealed());

    // An admin CA certificate of no listed admin.
    let mut intruder =
        AdminClient::new(common::channel_with(addr, &ca, &admin_ca, "intruder").await);
    let denied = intruder.unseal(unseal(&shares[1])).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(running.is_sealed(), "the intruder's share did not count");

    // The last share by `fugo admin unseal`, from its share file.
    let pem = admin_ca.client("custodian-b").unwrap();
    for (name, body) in [
        ("b.pem", pem.cert.as_bytes()),
        ("b.key", pem.key.as_bytes()),
        ("ca.pem", ca.cert_pem().as_bytes()),
        ("share-3.txt", shares[2].as_bytes()),
    ] {
        fs::write(dir.path().join(name), body).unwrap();
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(0o600)).unwrap();
    }
    let at = |name: &str| dir.path().join(name).display().to_string();
    let args = [
        "admin".to_owned(),
        "unseal".to_owned(),
        "--server".to_owned(),
        format!("https://{addr}"),
        "--server-name".to_owned(),
        "localhost".to_owned(),
        "--ca".to_owned(),
        at("ca.pem"),
        "--cert".to_owned(),
        at("b.pem"),
        "--key".to_owned(),
        at("b.key"),
        at("share-3.txt"),
    ];
    let output = tokio::task::spawn_blocking(move || Command::new(FUGO).args(args).output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let said = text(&output.stdout);
    assert!(
        said.starts_with("unsealed: key ") && said.ends_with("the server is serving\n"),
        "{said}"
    );
    assert!(!running.is_sealed());
    let socket = data_dir.join("unseal.sock");
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() {
        assert!(Instant::now() < deadline, "the unseal socket is closed too");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = b.unseal(unseal(&shares[1])).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("not sealed"), "{again:?}");
    running.stop().await.unwrap();

    // Every share, refused or not, is a record naming its admin.
    use fugo_log::store::Store;
    let mut store =
        fugo_log::store::RedbStore::open(data_dir.join(fugo::audit::STORE_FILE)).unwrap();
    let unseals: Vec<(String, String, Outcome)> = store
        .records(0, 1_000)
        .unwrap()
        .into_iter()
        .filter_map(|record| match record {
            fugo_log::store::StoredRecord::Body(record)
                if record.header.operation == Operation::Admin =>
            {
                Some((
                    record.header.caller.clone(),
                    record.header.note.clone(),
                    record.entry.outcome,
                ))
            }
            _ => None,
        })
        .collect();
    let callers: Vec<(&str, Outcome)> = unseals
        .iter()
        .map(|(caller, _, outcome)| (caller.as_str(), *outcome))
        .collect();
    assert_eq!(
        callers,
        [
            ("admin:custodian-a", Outcome::Refused),
            ("admin:custodian-a", Outcome::Refused),
            ("admin:custodian-a", Outcome::Done),
            ("admin:custodian-b", Outcome::Done),
            ("admin:custodian-b", Outcome::Refused),
        ],
        "{unseals:?}"
    );
    assert!(
        unseals[2].1.contains("share 1 for generation 1"),
        "{unseals:?}"
    );
    assert!(
        unseals[3].1.starts_with("unseal: unsealed: key "),
        "{unseals:?}"
    );
    for share in &shares {
        let value = share.lines().find(|l| l.starts_with("value: ")).unwrap();
        assert!(
            unseals
                .iter()
                .all(|(_, note, _)| !note.contains(&value[7..])),
            "a share in the trail"
        );
    }
}
