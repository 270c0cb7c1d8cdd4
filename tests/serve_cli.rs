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
    client_with(server, &dir.join("data/certs"), agency, args)
}

/// `fugo client` with the certificates in `certs`; fails after 30 s.
fn client_with(server: &Server, certs: &Path, agency: &str, args: &[&str]) -> Output {
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
    output_within(&mut command, Duration::from_secs(30))
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
        text(&out.stderr).contains("line 2502: check digit does not match"),
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
    assert!(
        redeemed
            .lines()
            .all(|l| l.ends_with(" mhlw health-insurance-benefit local-tax,resident-register"))
    );

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
    let numbers = dir.path().join("n");
    fs::write(&numbers, "123456789018\n").unwrap();
    let out = client(
        &server,
        dir.path(),
        "mhlw",
        &["derive", numbers.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
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
