//! `fugo serve` and `fugo client` as an operator runs them: the real binary,
//! signals, dev-mode certificates, and a CSV pushed through derive → seal →
//! redeem → reidentify.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a configuration into `dir` and returns its path.
fn config(dir: &Path, dev_mode: bool, fingerprint: &str) -> PathBuf {
    config_with(dir, dev_mode, &common::demo_key_path(), fingerprint, None)
}

/// Like [`config`], with a chosen master key and, if `tls` names a folder
/// made by [`test_pki`], a `[tls]` section using it.
fn config_with(
    dir: &Path,
    dev_mode: bool,
    master_key: &Path,
    fingerprint: &str,
    tls: Option<&Path>,
) -> PathBuf {
    fs::copy(root().join("policy.example.toml"), dir.join("policy.toml")).unwrap();
    let path = dir.join("fugo.toml");
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
         master_key = \"{}\"\nmaster_key_fingerprint = \"{fingerprint}\"\n\
         shutdown_grace_seconds = 5\ndev_mode = {dev_mode}\n",
        master_key.display()
    );
    // These tests run the debug binary beside each other on two cores: a
    // commit may wait longer than the 2 s default there (the fail-closed
    // timing is durability.rs's to test).
    text.push_str("\n[audit]\ncommit_timeout_ms = 15000\n");
    // [tls] last: a test may add lines to it.
    if let Some(pki) = tls {
        text.push_str(&format!(
            "\n[tls]\nca = \"{0}/ca.pem\"\ncert = \"{0}/server.pem\"\nkey = \"{0}/server.key\"\n",
            pki.display()
        ));
    }
    fs::write(&path, text).unwrap();
    path
}

/// Certificates made for the test (a CA, the server, mhlw) in `dir/pki`.
fn test_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    fugo::certs::write_dev_certs(&pki, &["mhlw".to_owned()]).unwrap();
    pki
}

/// A fresh (non-demo) master key with mode 0600; returns its path and
/// fingerprint.
fn private_key(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("master.key");
    let keys = fugo::keyfile::generate(&path).unwrap();
    (path, keys.fingerprint().to_string())
}

/// Runs `command` to its end, or kills it after `limit` and fails. Its
/// output is collected as it comes, so a full pipe never blocks it.
fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            let _ = child.wait();
            let stderr = text(&stderr.join().unwrap());
            panic!("still running after {limit:?}; stderr {stderr:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `fugo serve` that must refuse to start: its output, within 20 s.
fn serve_refused(config: &Path) -> Output {
    let out = output_within(
        Command::new(FUGO).args(["serve", "--config", config.to_str().unwrap()]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    out
}

struct Server {
    child: Child,
    addr: String,
    /// Collects stderr as it comes, so the server never blocks on a full pipe.
    logs: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Server {
    /// A test that fails before `stop` must not leave its server running.
    fn drop(&mut self) {
        if self.logs.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    fn start(config: &Path) -> Self {
        let mut child = Command::new(FUGO)
            .args(["serve", "--config", config.to_str().unwrap()])
            // Full tracing, every crate: the logs are searched for secrets.
            .env("RUST_LOG", "trace")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("fugo: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let mut stderr = child.stderr.take().unwrap();
        let logs = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Server {
            child,
            addr,
            logs: Some(logs),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM and returns the exit code and everything on stderr.
    fn stop(mut self) -> (i32, String) {
        self.signal("TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let logs = self.logs.take().unwrap().join().unwrap();
                return (status.code().unwrap_or(-1), logs);
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "server did not stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn client(server: &Server, dir: &Path, agency: &str, args: &[&str]) -> Output {
    output_within(
        &mut client_command(server, dir, agency, args),
        Duration::from_secs(30),
    )
}

/// mhlw derives one number through `fugo client`, which must succeed.
fn derive_one(server: &Server, dir: &Path) {
    let numbers = dir.join("n");
    fs::write(&numbers, "123456789018\n").unwrap();
    let out = client(server, dir, "mhlw", &["derive", numbers.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// `fugo client` with the certificates in `certs`; fails after 30 s.
fn client_with(server: &Server, certs: &Path, agency: &str, args: &[&str]) -> Output {
    output_within(
        &mut client_command_with(server, certs, agency, args),
        Duration::from_secs(30),
    )
}

/// `fugo client OPERATION --server … --ca … --cert … --key … REST…` with
/// the dev certificates in `dir`.
fn client_command(server: &Server, dir: &Path, agency: &str, args: &[&str]) -> Command {
    client_command_with(server, &dir.join("data/certs"), agency, args)
}

/// `fugo client OPERATION …` with the certificates in `certs`.
fn client_command_with(server: &Server, certs: &Path, agency: &str, args: &[&str]) -> Command {
    let mut command = Command::new(FUGO);
    command
        .args(["client"])
        .args(&args[..1])
        .args(["--server", &format!("https://{}", server.addr)])
        .args(["--ca", certs.join("ca.pem").to_str().unwrap()])
        .args([
            "--cert",
            certs.join(format!("{agency}.pem")).to_str().unwrap(),
        ])
        .args([
            "--key",
            certs.join(format!("{agency}.key")).to_str().unwrap(),
        ])
        .args(&args[1..]);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_csv_goes_through_derive_seal_redeem_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    assert!(
        dir.path().join("data/certs/mhlw.pem").exists(),
        "dev mode writes certificates"
    );

    let mut csv = String::from("id,mynumber,note\n");
    let mut numbers = Vec::new();
    for i in 0..2500u64 {
        let number = common::valid_number(i * 48_271 + 11);
        csv.push_str(&format!("{i},{number},\"note, {i}\"\n"));
        numbers.push(number);
    }
    csv.push_str("2500,123456789012,bad\n");
    let input = dir.path().join("people.csv");
    fs::write(&input, &csv).unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &[
            "derive",
            "--csv",
            "--column",
            "mynumber",
            &at("people.csv"),
            "-o",
            &at("mhlw.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 2502: column 'mynumber': check digit does not match"),
        "{}",
        text(&out.stderr)
    );
    let mhlw_csv = fs::read_to_string(dir.path().join("mhlw.csv")).unwrap();
    assert!(mhlw_csv.starts_with("id,mynumber,note\n0,"));
    assert!(mhlw_csv.contains("\"note, 1\""));
    for number in &numbers {
        assert!(
            !mhlw_csv.contains(number.as_str()),
            "replace mode leaves no number"
        );
    }
    let mhlw_codes: Vec<String> = mhlw_csv
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(1).unwrap().to_owned())
        .filter(|code| !code.is_empty())
        .collect();
    fs::write(dir.path().join("mhlw.codes"), mhlw_codes.join("\n") + "\n").unwrap();

    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &[
            "seal",
            "--provider",
            "city-shinjuku",
            "--affair",
            "health-insurance-benefit",
            "--items",
            "local-tax,resident-register",
            &at("mhlw.codes"),
            "-o",
            &at("tokens"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = client(
        &server,
        dir.path(),
        "city-shinjuku",
        &["redeem", &at("tokens"), "-o", &at("redeemed")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let redeemed = fs::read_to_string(dir.path().join("redeemed")).unwrap();
    let shinjuku_codes: Vec<&str> = redeemed
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    // CODE SERIAL REQUESTER AFFAIR ITEMS EXPIRES NON_DISCLOSURE
    for line in redeemed.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert_eq!(
            fields[2..5],
            [
                "mhlw",
                "health-insurance-benefit",
                "local-tax,resident-register"
            ]
        );
        assert!(is_utc_time(fields[5]), "{line}");
        assert_eq!(fields[6], "-", "no non-disclosure date was asked for");
    }

    // Shinjuku's own derive of the same numbers gives the same codes.
    fs::write(dir.path().join("numbers"), numbers.join("\n") + "\n").unwrap();
    let out = client(
        &server,
        dir.path(),
        "city-shinjuku",
        &["derive", &at("numbers")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        shinjuku_codes
    );

    // And Shinjuku, which may reidentify, gets the numbers back.
    fs::write(
        dir.path().join("shinjuku.codes"),
        shinjuku_codes.join("\n") + "\n",
    )
    .unwrap();
    let out = client(
        &server,
        dir.path(),
        "city-shinjuku",
        &["reidentify", &at("shinjuku.codes")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), numbers);

    // MHLW may not reidentify: the whole request is refused.
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &["reidentify", &at("mhlw.codes")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not have the reidentify capability"),
        "{}",
        text(&out.stderr)
    );

    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("TRACE"), "full tracing was on");
    for number in &numbers {
        assert!(
            !stderr.contains(number.as_str()),
            "server logs hold no number"
        );
    }
    for code in mhlw_codes.iter().chain(
        shinjuku_codes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        assert!(!stderr.contains(code.as_str()), "server logs hold no code");
    }
}

#[test]
fn sighup_reloads_the_policy_and_keeps_the_old_one_when_broken() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let policy = dir.path().join("policy.toml");
    let original = fs::read_to_string(&policy).unwrap();
    fs::write(&policy, "[[agency]]\nid = \"BROKEN\"\n").unwrap();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let numbers = dir.path().join("n");
    fs::write(&numbers, "123456789018\n").unwrap();
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", numbers.to_str().unwrap()],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "still serving under the old policy: {}",
        text(&out.stderr)
    );
    // A valid change (mhlw loses derive) takes effect.
    fs::write(
        &policy,
        original.replacen(
            "capabilities = [\"derive\"]\nepoch = 1\n",
            "capabilities = []\nepoch = 1\n",
            1,
        ),
    )
    .unwrap();
    server.signal("HUP");
    // The reload is asynchronous: poll until it shows (or give up).
    let started = Instant::now();
    let out = loop {
        let out = client(
            &server,
            dir.path(),
            "mhlw",
            &["derive", numbers.to_str().unwrap()],
        );
        if out.status.code() == Some(1) || started.elapsed() > Duration::from_secs(15) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("does not have the derive capability"));
    let (code, stderr) = server.stop();
    assert_eq!(code, 0);
    assert!(stderr.contains("policy reload refused"), "{stderr}");
    assert!(stderr.contains("policy reloaded"), "{stderr}");
}

/// D202: SIGTERM closes the audit store before the process exits, at
/// once, although the SIGHUP thread still holds a handle on the server's
/// state: no wait for the grace period, and no commit cut off by the exit
/// (which `fugo audit verify` would refuse as a torn last commit).
#[test]
fn a_clean_stop_closes_the_audit_store_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    derive_one(&server, dir.path());
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let (code, logs) = server.stop();
    let took = started.elapsed();
    assert_eq!(code, 0, "{logs}");
    assert!(
        !logs.contains("still open after the grace period"),
        "the store was left open: {logs}"
    );
    // The configured grace is 5 s; a stop with nothing in flight waits
    // for nothing.
    assert!(took < Duration::from_secs(3), "the stop took {took:?}");
    let verify = output_within(
        Command::new(FUGO).args([
            "audit",
            "verify",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify.stderr));
}

#[test]
fn production_mode_refuses_the_demo_key_and_a_wrong_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let out = Command::new(FUGO)
        .args([
            "serve",
            "--config",
            config_with(
                dir.path(),
                false,
                &common::demo_key_path(),
                common::DEMO_FINGERPRINT,
                Some(&pki),
            )
            .to_str()
            .unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is the public demo key; it is refused outside dev mode"),
        "{}",
        text(&out.stderr)
    );

    let wrong = "0123456789abcdef0123456789abcdef";
    let out = Command::new(FUGO)
        .args([
            "serve",
            "--config",
            config(dir.path(), true, wrong).to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refusing to use it"),
        "{}",
        text(&out.stderr)
    );

    let broken_policy = dir.path().join("policy.toml");
    let path = config(dir.path(), true, common::DEMO_FINGERPRINT);
    fs::write(&broken_policy, "[[rule]]\nrequester = \"x\"\n").unwrap();
    let out = Command::new(FUGO)
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("policy"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn production_mode_needs_a_tls_section_and_does_not_use_the_demo_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (key, fingerprint) = private_key(dir.path());
    // Demo certificates lie ready in data/certs: production must not use them.
    fugo::certs::write_dev_certs(&dir.path().join("data/certs"), &["mhlw".to_owned()]).unwrap();
    let out = serve_refused(&config_with(dir.path(), false, &key, &fingerprint, None));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no [tls] section"), "{stderr}");
    assert!(
        stderr.contains("[tls]\nca = "),
        "says what to add: {stderr}"
    );
}

#[cfg(unix)]
#[test]
fn production_mode_refuses_a_tls_key_others_can_read_and_serves_with_a_private_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, fingerprint) = private_key(dir.path());
    let pki = test_pki(dir.path());
    let server_key = pki.join("server.key");
    assert_eq!(
        fs::metadata(&server_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    fs::set_permissions(&server_key, fs::Permissions::from_mode(0o640)).unwrap();
    let config = config_with(dir.path(), false, &key, &fingerprint, Some(&pki));
    let out = serve_refused(&config);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "TLS private key {} can be read by group or others; run `chmod 600` on it",
            server_key.display()
        )),
        "{stderr}"
    );

    fs::set_permissions(&server_key, fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&config);
    let numbers = dir.path().join("n");
    fs::write(&numbers, "123456789018\n").unwrap();
    let out = client_with(
        &server,
        &pki,
        "mhlw",
        &["derive", numbers.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !dir.path().join("data/certs").exists(),
        "production writes no demo certificates"
    );
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_master_key_that_is_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let urandom = Path::new("/dev/urandom");
    let started = Instant::now();
    let out = serve_refused(&config_with(
        dir.path(),
        true,
        urandom,
        common::DEMO_FINGERPRINT,
        None,
    ));
    assert!(
        text(&out.stderr).contains(
            "cannot read key file /dev/urandom: it is a character device, not a regular file"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = output_within(
        Command::new(FUGO).args(["keys", "fingerprint", "/dev/urandom"]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("it is a character device"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn an_oversized_policy_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), true, common::DEMO_FINGERPRINT);
    let policy = dir.path().join("policy.toml");
    let mut big = fs::read_to_string(&policy).unwrap();
    let comment = format!("# {}\n", "x".repeat(1000));
    while big.len() <= 4 << 20 {
        big.push_str(&comment);
    }
    fs::write(&policy, &big).unwrap();
    let out = serve_refused(&config);
    assert!(
        text(&out.stderr).contains(&format!(
            "cannot read policy {}: it is larger than 4194304 bytes",
            policy.display()
        )),
        "{}",
        text(&out.stderr)
    );
    let out = output_within(
        Command::new(FUGO).args(["policy", "check", policy.to_str().unwrap()]),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("it is larger than 4194304 bytes"),
        "{}",
        text(&out.stderr)
    );
}

#[cfg(unix)]
#[test]
fn a_named_pipe_at_the_policy_path_is_refused_on_sighup_and_the_server_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let policy = dir.path().join("policy.toml");
    fs::remove_file(&policy).unwrap();
    let made = Command::new("mkfifo").arg(&policy).status().unwrap();
    assert!(made.success());
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    derive_one(&server, dir.path());
    // A second SIGHUP is handled too: nothing is stuck.
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    let refusal = format!(
        "cannot read policy {}: it is a named pipe (FIFO), not a regular file",
        policy.display()
    );
    assert_eq!(stderr.matches(refusal.as_str()).count(), 2, "{stderr}");
    assert!(stderr.contains("policy reload refused"), "{stderr}");
}

/// `fugo derive` offline with the demo key, as the server derives for
/// `agency` at `epoch`.
fn offline_derive(agency: &str, epoch: &str, args: &[&str]) -> Output {
    Command::new(FUGO)
        .args(["derive", "--master-key"])
        .arg(common::demo_key_path())
        .args(["--agency", agency, "--epoch", epoch])
        .args(args)
        .output()
        .unwrap()
}

/// Forms a number might leak in: as is, and grouped by spaces or dashes.
fn leak_forms(number: &str) -> Vec<String> {
    vec![
        number.to_owned(),
        format!("{} {} {}", &number[..4], &number[4..8], &number[8..]),
        format!("{}-{}-{}", &number[..4], &number[4..8], &number[8..]),
    ]
}

/// The reject lines' `line N` parts.
fn reject_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter(|l| l.starts_with("line "))
        .map(str::to_owned)
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_utc_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn the_client_keeps_every_file_rule_of_derive_and_leaks_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    // Numbers of eleven significant digits, as real ones are: the search
    // below looks for each value's eight bytes, and a small value's bytes
    // (seven zeros and one more) turn up by chance in any binary file.
    let n: Vec<String> = (0..8u64)
        .map(|i| common::valid_number(40_000_000_000 + i * 7_919_003))
        .collect();

    // CSV: a BOM, a blank line, a record with too few fields and one with
    // too many (each holding a whole number), a bad number, a quoted newline.
    let csv = format!(
        "\u{feff}id,mynumber,note\n1,{},a\n\n2,{}\n3,{},b,{}\n4,bad,c\n5,{},\"two\nlines\"\n6,{},z\n",
        n[0], n[1], n[2], n[3], n[4], n[5]
    );
    fs::write(at("in.csv"), &csv).unwrap();
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &[
            "derive",
            "--csv",
            "--column",
            "mynumber",
            &at("in.csv"),
            "-o",
            &at("client.csv"),
            "--rejects",
            &at("client.rejects"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let local = offline_derive(
        "mhlw",
        "1",
        &[
            "--csv",
            "--column",
            "mynumber",
            &at("in.csv"),
            "-o",
            &at("local.csv"),
            "--rejects",
            &at("local.rejects"),
        ],
    );
    assert_eq!(local.status.code(), Some(3));
    let client_csv = fs::read_to_string(at("client.csv")).unwrap();
    assert_eq!(client_csv, fs::read_to_string(at("local.csv")).unwrap());
    assert!(client_csv.contains("\n,,\n,,\n4,,c\n"), "{client_csv}");
    let client_rejects = fs::read_to_string(at("client.rejects")).unwrap();
    assert_eq!(
        reject_lines(&client_rejects),
        ["line 4", "line 5", "line 6"],
        "line numbers as in the file: {client_rejects}"
    );
    assert_eq!(
        reject_lines(&client_rejects),
        reject_lines(&fs::read_to_string(at("local.rejects")).unwrap())
    );

    // Lines: a blank line, an overlong line holding a number, CRLF, a BOM.
    let overlong = format!("{}{}", "0".repeat(300), n[6]);
    let lines = format!("\u{feff}{}\n\n{}\n{overlong}\n{}\r\n", n[0], n[1], n[7]);
    fs::write(at("in.txt"), &lines).unwrap();
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("in.txt"), "-o", &at("client.txt")],
    );
    assert_eq!(out.status.code(), Some(3));
    let client_errors = text(&out.stderr);
    assert_eq!(
        reject_lines(&client_errors),
        ["line 2", "line 4"],
        "{client_errors}"
    );
    assert!(
        client_errors.contains("line 4: too long"),
        "{client_errors}"
    );
    let local = offline_derive("mhlw", "1", &[&at("in.txt"), "-o", &at("local.txt")]);
    assert_eq!(local.status.code(), Some(3));
    let client_txt = fs::read_to_string(at("client.txt")).unwrap();
    assert_eq!(client_txt, fs::read_to_string(at("local.txt")).unwrap());
    assert_eq!(client_txt.lines().count(), 5);

    // No input number anywhere: output files, reject files, stderr.
    let mut haystack = String::new();
    for file in ["client.csv", "client.rejects", "client.txt"] {
        haystack.push_str(&fs::read_to_string(at(file)).unwrap());
    }
    haystack.push_str(&client_errors);
    for number in &n {
        for form in leak_forms(number) {
            assert!(!haystack.contains(&form), "an output holds {form}");
        }
    }
    let (code, logs) = server.stop();
    assert_eq!(code, 0);
    for number in &n {
        assert!(!logs.contains(number.as_str()), "server logs hold a number");
    }

    // Nor in the audit store, nor in its export: no number in any form
    // (digits, spaced, dashed, hex of the digits, the value's 8 bytes, a
    // plain person block), and no code the client received.
    let store = fs::read(dir.path().join("data/audit.redb")).unwrap();
    let export = Command::new(FUGO)
        .args(["audit", "export", "--data-dir", &at("data")])
        .output()
        .unwrap();
    assert_eq!(export.status.code(), Some(0), "{}", text(&export.stderr));
    assert!(text(&export.stdout).contains("\"operation\":\"derive\""));
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for place in [&store, &export.stdout] {
        assert!(!contains(place, b"fugo-pn1"), "a plain person block");
        for number in &n {
            let mut forms: Vec<Vec<u8>> = leak_forms(number)
                .into_iter()
                .map(String::into_bytes)
                .collect();
            forms.push(common::to_hex(number.as_bytes()).into_bytes());
            forms.push(number.parse::<u64>().unwrap().to_be_bytes().to_vec());
            for (kind, form) in forms.iter().enumerate() {
                assert!(
                    !contains(place, form),
                    "the audit store or export holds a number (form {kind} of: digits, \
                     spaced, dashed, hex of the digits, the value's bytes)"
                );
            }
        }
        for code in client_txt.lines().filter(|line| line.len() == 29) {
            assert!(
                !contains(place, code.as_bytes()),
                "the audit store holds a code"
            );
        }
    }
}

#[test]
fn a_client_reads_and_writes_shift_jis() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let n: Vec<String> = (0..3u64).map(common::valid_number).collect();
    let csv = format!(
        "番号,個人番号,氏名\r\n1,{},山田 太郎\r\n2,{}\r\n3,{},鈴木\r\n",
        n[0], n[1], n[2]
    );
    let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&csv);
    assert!(!unmappable);
    fs::write(at("sjis.csv"), &sjis).unwrap();
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &[
            "derive",
            "--csv",
            "--column",
            "個人番号",
            "--encoding",
            "cp932",
            &at("sjis.csv"),
            "-o",
            &at("out.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("line 3: has 2 fields, the header has 3"),
        "{}",
        text(&out.stderr)
    );
    let written = fs::read(at("out.csv")).unwrap();
    let (decoded, had_errors) = encoding_rs::SHIFT_JIS.decode_without_bom_handling(&written);
    assert!(!had_errors, "the output is cp932 as the input");
    let rows: Vec<&str> = decoded.lines().collect();
    assert_eq!(rows[0], "番号,個人番号,氏名");
    assert!(rows[1].starts_with("1,") && rows[1].ends_with(",山田 太郎"));
    assert_eq!(rows[1].split(',').nth(1).unwrap().len(), 29);
    assert_eq!(rows[2], ",,");
    assert!(rows[3].starts_with("3,") && rows[3].ends_with(",鈴木"));

    // Read as UTF-8, the same file is refused with its line and a hint.
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &[
            "derive",
            "--csv",
            "--column",
            "個人番号",
            &at("sjis.csv"),
            "-o",
            &at("wrong.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("line 1 is not valid UTF-8; if the file is Shift_JIS, use --encoding cp932"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("wrong.csv").exists());
    server.stop();
}

#[test]
fn seal_and_redeem_write_every_field_as_csv_columns() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let numbers: Vec<String> = (0..5u64).map(|i| common::valid_number(i + 40)).collect();
    fs::write(at("numbers"), numbers.join("\n") + "\n").unwrap();
    let out = client(&server, dir.path(), "nta", &["derive", &at("numbers")]);
    assert_eq!(out.status.code(), Some(0));
    let mut csv = String::from("case,code\n");
    for (i, code) in text(&out.stdout).lines().enumerate() {
        csv.push_str(&format!("c{i},{code}\n"));
    }
    fs::write(at("codes.csv"), csv).unwrap();
    // Thirty days ahead, at a UTC midnight: within the rule's one-year
    // maximum (docs/DECISIONS.md D36).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let until = ((now / 86_400 + 30) * 86_400).to_string();
    let until = until.as_str();
    let shown = Command::new("date")
        .args(["-u", "-d", &format!("@{until}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    let shown = text(&shown.stdout).trim().to_owned();
    let out = client(
        &server,
        dir.path(),
        "nta",
        &[
            "seal",
            "--provider",
            "city-shinjuku",
            "--affair",
            "national-tax-investigation",
            "--items",
            "local-tax",
            "--non-disclosure-until",
            until,
            "--csv",
            "--column",
            "code",
            &at("codes.csv"),
            "-o",
            &at("tokens.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let tokens = fs::read_to_string(at("tokens.csv")).unwrap();
    assert!(tokens.starts_with("case,code,serial\nc0,"), "{tokens}");
    // Seal output feeds redeem directly: the `serial` column is rewritten
    // in place, the other fields are appended.
    let out = client(
        &server,
        dir.path(),
        "city-shinjuku",
        &["redeem", "--csv", "--column", "code", &at("tokens.csv")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let sealed_serials: Vec<&str> = tokens
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    let redeemed = text(&out.stdout);
    let mut rows = redeemed.lines();
    assert_eq!(
        rows.next(),
        Some("case,code,serial,requester,affair,items,expires_at,non_disclosure_until")
    );
    for (i, row) in rows.enumerate() {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 8, "{row}");
        assert_eq!(fields[0], format!("c{i}"));
        assert_eq!(fields[1].len(), 29);
        assert_eq!(fields[2], sealed_serials[i]);
        assert_eq!(
            fields[3..6],
            ["nta", "national-tax-investigation", "local-tax"]
        );
        assert!(is_utc_time(fields[6]), "{row}");
        assert_eq!(fields[7], shown);
    }
    // The line form carries the same fields.
    let token_lines: String = tokens
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_owned() + "\n")
        .collect();
    fs::write(at("tokens.txt"), token_lines).unwrap();
    let out = client(
        &server,
        dir.path(),
        "city-shinjuku",
        &["redeem", &at("tokens.txt")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for line in text(&out.stdout).lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 7, "{line}");
        assert_eq!(
            fields[2..5],
            ["nta", "national-tax-investigation", "local-tax"]
        );
        assert!(is_utc_time(fields[5]), "{line}");
        assert_eq!(fields[6], shown);
    }
    server.stop();
}

/// `fugo client derive` on one number with explicit connection flags.
fn connect_with(
    dir: &Path,
    server: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    extra: &[&str],
) -> Output {
    let input = dir.join("one-number");
    fs::write(&input, "123456789018\n").unwrap();
    Command::new(FUGO)
        .args(["client", "derive", "--server", server])
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(extra)
        .arg(&input)
        .output()
        .unwrap()
}

#[test]
fn connection_failures_name_the_cause_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let certs = dir.path().join("data/certs");
    let other = dir.path().join("other-pki");
    let made = Command::new(FUGO)
        .args([
            "dev-certs",
            "--out",
            other.to_str().unwrap(),
            "--agencies",
            "mhlw",
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let url = format!("https://{}", server.addr);
    let (ca, cert, key) = (
        certs.join("ca.pem"),
        certs.join("mhlw.pem"),
        certs.join("mhlw.key"),
    );
    let stranger_ca = dir.path().join("stranger-ca.pem");
    fs::write(
        &stranger_ca,
        fugo::certs::DevCa::new("another CA").unwrap().cert_pem(),
    )
    .unwrap();
    let port_without_server = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let cases: Vec<(&str, Output, &str)> = vec![
        (
            "refused",
            connect_with(
                dir.path(),
                &format!("https://127.0.0.1:{port_without_server}"),
                &ca,
                &cert,
                &key,
                &[],
            ),
            "connection refused: nothing listens there",
        ),
        (
            "unknown CA",
            connect_with(dir.path(), &url, &other.join("ca.pem"), &cert, &key, &[]),
            "not signed by the CA in",
        ),
        (
            "a CA of another name",
            connect_with(dir.path(), &url, &stranger_ca, &cert, &key, &[]),
            "(an unknown CA)",
        ),
        (
            "certificate and key do not match",
            connect_with(
                dir.path(),
                &url,
                &ca,
                &cert,
                &certs.join("city-shinjuku.key"),
                &[],
            ),
            "do not match",
        ),
        (
            "name mismatch",
            connect_with(
                dir.path(),
                &url,
                &ca,
                &cert,
                &key,
                &["--server-name", "fugo.example"],
            ),
            "not valid for the name 'fugo.example' (a server name mismatch)",
        ),
        (
            "client certificate from another CA",
            connect_with(
                dir.path(),
                &url,
                &ca,
                &other.join("mhlw.pem"),
                &other.join("mhlw.key"),
                &[],
            ),
            "refused this client's certificate",
        ),
        (
            "plain http",
            connect_with(
                dir.path(),
                &format!("http://{}", server.addr),
                &ca,
                &cert,
                &key,
                &[],
            ),
            "fugo servers speak TLS only: use https://",
        ),
    ];
    for (case, out, expected) in cases {
        let message = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {message}");
        assert!(message.contains(expected), "{case}: {message}");
        assert!(!message.contains("transport error\n"), "{case}: {message}");
    }

    // The name as given (127.0.0.1, an IP name in the dev certificate), or
    // the one --server-name gives.
    let out = connect_with(dir.path(), &url, &ca, &cert, &key, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = connect_with(
        dir.path(),
        &url,
        &ca,
        &cert,
        &key,
        &["--server-name", "localhost"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    server.stop();
}

#[test]
fn flags_from_the_environment_bounded_memory_and_a_lost_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&config(dir.path(), true, common::DEMO_FINGERPRINT));
    let certs = dir.path().join("data/certs");
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let env = [
        ("FUGO_SERVER", format!("https://{}", server.addr)),
        ("FUGO_CA", certs.join("ca.pem").to_str().unwrap().to_owned()),
        (
            "FUGO_CERT",
            certs.join("mhlw.pem").to_str().unwrap().to_owned(),
        ),
        (
            "FUGO_KEY",
            certs.join("mhlw.key").to_str().unwrap().to_owned(),
        ),
    ];

    // The four connection flags come from the environment.
    fs::write(at("one"), "123456789018\n").unwrap();
    let out = Command::new(FUGO)
        .args(["client", "derive", &at("one")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end().len(), 29);

    // A 128 MiB line costs the client no more than a small file.
    let mut huge = vec![b'5'; 128 << 20];
    huge.extend_from_slice(b"\n123456789018\n");
    fs::write(at("huge"), &huge).unwrap();
    drop(huge);
    let report = dir.path().join("rss");
    let out = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&report)
        .args([
            "-f",
            "%M",
            FUGO,
            "client",
            "derive",
            &at("huge"),
            "-o",
            &at("huge.out"),
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("/usr/bin/time is missing: install Debian's `time` package");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("line 1: too long"));
    let kib: u64 = fs::read_to_string(&report)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        kib < 64 * 1024,
        "the client used {kib} KiB on one huge line"
    );
    fs::remove_file(at("huge")).unwrap();

    // Many chunks through two workers sharing the stream: the same output
    // and rejects as `fugo derive`, in order.
    let mut lines = String::new();
    for i in 0..300_000u64 {
        if i % 9_999 == 0 {
            lines.push_str("bad\n");
        }
        lines.push_str(&common::valid_number(i));
        lines.push('\n');
    }
    fs::write(at("many"), &lines).unwrap();
    let out = Command::new(FUGO)
        .args(["client", "derive", &at("many"), "-o", &at("many.client")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let local = offline_derive("mhlw", "1", &[&at("many"), "-o", &at("many.local")]);
    assert_eq!(local.status.code(), Some(3));
    assert!(fs::read(at("many.client")).unwrap() == fs::read(at("many.local")).unwrap());
    assert_eq!(
        reject_lines(&text(&out.stderr)),
        reject_lines(&text(&local.stderr))
    );
    assert_eq!(reject_lines(&text(&out.stderr)).len(), 31);

    // `fugo client … | head -1`: a quiet end, no panic, no message.
    let mut child = Command::new(FUGO)
        .args(["client", "derive", &at("many")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 30];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(141), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");

    // The server dies mid-run: no output file, and how far it got.
    let mut child = Command::new(FUGO)
        .args(["client", "derive", "-o", &at("codes")])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = String::new();
    for i in 0..200_000u64 {
        lines.push_str(&common::valid_number(i));
        lines.push('\n');
    }
    std::io::Write::write_all(&mut stdin, lines.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    server.signal("KILL");
    // The client's next chunk meets the dead server.
    let _ = std::io::Write::write_all(&mut stdin, lines.as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let message = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{message}");
    assert!(
        message.contains("the connection to the server was lost"),
        "{message}"
    );
    let rows: u64 = message
        .split("stopped after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count: {message}"));
    assert!(rows > 0 && rows < 400_000, "{message}");
    assert!(
        message.contains(&format!("{} was not written", at("codes"))),
        "{message}"
    );
    let left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The kept audit checkpoint is the client's state, not output.
        .filter(|name| name.contains("codes") && name != "codes.checkpoint")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The client keeps the newest audit log checkpoint it has seen beside its
/// output and, on its next run, asks for a consistency proof from it: a
/// log that was wiped and rebuilt (same key, re-signed from record 0) is
/// refused before anything is sent, and so is one rolled back.
#[test]
fn the_client_catches_a_rewritten_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), true, common::DEMO_FINGERPRINT);
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let numbers: Vec<String> = (0..3u64).map(|i| common::valid_number(i * 7 + 5)).collect();
    fs::write(dir.path().join("in.txt"), numbers.join("\n") + "\n").unwrap();
    let kept = dir.path().join("out.txt.checkpoint");

    let server = Server::start(&config);
    // The server signs its first checkpoint (the policy's loading) within a
    // second of starting.
    std::thread::sleep(Duration::from_millis(1500));
    let first = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("in.txt"), "-o", &at("out.txt")],
    );
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("first contact"),
        "{}",
        text(&first.stderr)
    );
    let seen = fs::read_to_string(&kept).unwrap();
    assert!(seen.starts_with("fugo-checkpoint v1\n"), "{seen}");

    std::thread::sleep(Duration::from_millis(1500));
    let second = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("in.txt"), "-o", &at("out.txt")],
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let kept_size = |text: &str| text.lines().nth(3).unwrap().parse::<u64>().unwrap();
    let grown = fs::read_to_string(&kept).unwrap();
    assert!(
        kept_size(&grown) > kept_size(&seen),
        "the kept checkpoint advances:\n{seen}\n{grown}"
    );
    let (code, _) = server.stop();
    assert_eq!(code, 0);
    // The kept file is also what `fugo audit verify --checkpoint` takes.
    let verify = |kept: &Path| {
        Command::new(FUGO)
            .args(["audit", "verify", "--data-dir", &at("data"), "--checkpoint"])
            .arg(kept)
            .output()
            .unwrap()
    };
    let intact = verify(&kept);
    assert_eq!(intact.status.code(), Some(0), "{}", text(&intact.stderr));

    // The operator wipes the log and starts again: same key, new history,
    // more records than before.
    fs::remove_file(dir.path().join("data/audit.redb")).unwrap();
    let server = Server::start(&config);
    let many: Vec<String> = (0..40u64)
        .map(|i| common::valid_number(i * 13 + 1))
        .collect();
    fs::write(dir.path().join("many.txt"), many.join("\n") + "\n").unwrap();
    let filler = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("many.txt"), "-o", &at("filler.txt")],
    );
    assert_eq!(filler.status.code(), Some(0), "{}", text(&filler.stderr));
    std::thread::sleep(Duration::from_millis(1500));
    fs::remove_file(dir.path().join("out.txt")).unwrap();
    let refused = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("in.txt"), "-o", &at("out.txt")],
    );
    assert_ne!(refused.status.code(), Some(0));
    assert!(
        text(&refused.stderr).contains("does not extend the one of"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!dir.path().join("out.txt").exists(), "nothing was written");
    assert_eq!(
        fs::read_to_string(&kept).unwrap(),
        grown,
        "the kept checkpoint stays"
    );

    // A log rolled back to fewer records is refused as well.
    fs::write(&kept, &grown).unwrap();
    let (code, _) = server.stop();
    assert_eq!(code, 0);
    fs::remove_file(dir.path().join("data/audit.redb")).unwrap();
    let server = Server::start(&config);
    std::thread::sleep(Duration::from_millis(1500));
    let rolled = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", &at("in.txt"), "-o", &at("out.txt")],
    );
    assert_ne!(rolled.status.code(), Some(0));
    assert!(
        text(&rolled.stderr).contains("fewer than"),
        "{}",
        text(&rolled.stderr)
    );
    server.stop();
    // The store that replaced the log fails verify against the kept
    // checkpoint, though it would pass on its own.
    let replaced = verify(&kept);
    assert_eq!(
        replaced.status.code(),
        Some(1),
        "{}",
        text(&replaced.stdout)
    );
}

/// A CRL from the dev CA in `pki` (its key in ca.key) revoking `serials`
/// (DER content of serial numbers), valid for 30 days, as PEM.
fn crl_from(pki: &Path, serials: &[&[u8]]) -> String {
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fugo dev CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign];
    let issuer = rcgen::Issuer::new(params, key);
    let now = time::OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::days(1),
        next_update: now + time::Duration::days(30),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(serial),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

#[test]
fn sighup_installs_a_crl_and_keeps_it_when_the_new_one_is_broken() {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let dir = tempfile::tempdir().unwrap();
    let (key, fingerprint) = private_key(dir.path());
    let pki = test_pki(dir.path());
    let crl = pki.join("agencies.crl");
    fs::write(&crl, crl_from(&pki, &[])).unwrap();
    let config = config_with(dir.path(), false, &key, &fingerprint, Some(&pki));
    let mut text_config = fs::read_to_string(&config).unwrap();
    text_config.push_str(&format!("crl = \"{}\"\n", crl.display()));
    fs::write(&config, text_config).unwrap();
    let server = Server::start(&config);
    let numbers = dir.path().join("n");
    fs::write(&numbers, "123456789018\n").unwrap();
    let derive = || {
        client_with(
            &server,
            &pki,
            "mhlw",
            &["derive", numbers.to_str().unwrap()],
        )
    };
    let out = derive();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // The CA revokes mhlw's certificate; SIGHUP installs the new list.
    let pem = fs::read_to_string(pki.join("mhlw.pem")).unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, mhlw) = X509Certificate::from_der(&der).unwrap();
    fs::write(&crl, crl_from(&pki, &[mhlw.raw_serial()])).unwrap();
    server.signal("HUP");
    let started = Instant::now();
    let out = loop {
        let out = derive();
        // Generous: the reload also records the policy it re-reads, and
        // this binary's tests run servers side by side on two cores.
        if out.status.code() == Some(1) || started.elapsed() > Duration::from_secs(40) {
            break out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    // The alert names the revocation, unless the closed connection reached
    // the call first (TLS 1.3: the client already thinks it is connected),
    // or the connection was made while the reload was installing the list
    // (the per-call check refuses it: UNAUTHENTICATED, "is revoked").
    assert!(
        stderr.contains("it has been revoked")
            || stderr.contains("the client certificate is revoked")
            || stderr.contains("most likely refused"),
        "{stderr}"
    );

    // A broken list is refused; the revocation stays in force.
    fs::write(&crl, "not a CRL\n").unwrap();
    server.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(derive().status.code(), Some(1));
    let (code, stderr) = server.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("certificate revocation lists reloaded"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CRL reload refused; the revocation lists in force stay"),
        "{stderr}"
    );
}
