//! fugo from outside, with other people's tools: a production-mode `fugo
//! serve` (real binary, a fresh master key) on certificates that `openssl`
//! made, called by a Python grpcio client whose stubs grpcio-tools generates
//! from `proto/` (tests/interop/client.py), of both `fugo.v1.Codes` and
//! `fugo.v1.Audit`: the client checks the log's signed checkpoints and a
//! consistency proof with its own Python code. `.ci/run` installs grpcio
//! and cryptography.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {program}: {error}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A CA, a server certificate for localhost and 127.0.0.1, and one client
/// certificate per agency, all made by `openssl` in `dir`.
fn openssl_pki(dir: &Path, agencies: &[&str]) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=interop test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run("openssl", &ca, dir);
    let mut leaves = vec![(
        "server",
        "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )];
    leaves.extend(
        agencies
            .iter()
            .map(|a| (*a, *a, "extendedKeyUsage=clientAuth")),
    );
    for (name, common_name, extension) in leaves {
        let subject = format!("/CN={common_name}");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut request = vec![
            "req", "-new", "-subj", &subject, "-keyout", &key, "-out", &csr,
        ];
        request.extend(ec);
        run("openssl", &request, dir);
        let sign = [
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            "/dev/stdin",
        ];
        let mut child = Command::new("openssl")
            .args(sign)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), extension.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "openssl x509 {name}");
        set_owner_only(&dir.join(&key));
    }
}

fn set_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_python_grpcio_client_works_against_openssl_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    openssl_pki(
        dir.path(),
        &["mhlw", "city-shinjuku", "hellowork-shinjuku", "jps"],
    );
    run(FUGO, &["keygen", "--out", "master.key"], dir.path());
    let fingerprint = run(FUGO, &["keys", "fingerprint", "master.key"], dir.path());
    // The example policy, with a low derive quota for Hello Work, whose
    // refusal the client reads (RetryInfo).
    let policy = fs::read_to_string(root.join("policy.example.toml")).unwrap();
    let agency = "certificates = [\"hellowork-shinjuku\"]\n";
    assert!(policy.contains(agency));
    let policy = policy.replace(
        agency,
        &format!("{agency}quota.derive = {{ per_second = 1, burst = 2, per_day = 100 }}\n"),
    );
    // The Japan Pension Service may also suspend a person (fugo.v1.Persons).
    let jps = "certificates = [\"jps\"]\ncapabilities = [\"derive\"]\n";
    assert!(policy.contains(jps));
    let policy = policy.replace(
        jps,
        "certificates = [\"jps\"]\ncapabilities = [\"derive\", \"suspend\"]\n",
    );
    fs::write(dir.path().join("policy.toml"), policy).unwrap();
    fs::write(
        dir.path().join("fugo.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\npolicy = \"policy.toml\"\n\
             master_key = \"master.key\"\nmaster_key_fingerprint = \"{}\"\n\
             dev_mode = false\n\n[tls]\nca = \"ca.pem\"\ncert = \"server.pem\"\nkey = \"server.key\"\n",
            fingerprint.trim()
        ),
    )
    .unwrap();

    let mut child = Command::new(FUGO)
        .args(["serve", "--config", "fugo.toml"])
        .current_dir(dir.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // Drain the (full-trace) logs as they come, so the server never blocks
    // on a full pipe; they are searched for numbers at the end.
    let mut stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let server = Server(child);
    let addr = line
        .trim()
        .strip_prefix("fugo: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let numbers = [
        common::valid_number(31_415_926_535),
        common::valid_number(27_182_818_284),
    ];
    let output = Command::new("python3")
        .arg(root.join("tests/interop/client.py"))
        .args([
            addr.as_str(),
            dir.path().to_str().unwrap(),
            &numbers[0],
            &numbers[1],
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    drop(server);
    let server_logs = logs.join().unwrap();
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{stderr}\nserver:\n{server_logs}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        24,
        "{stdout}"
    );
    for number in &numbers {
        for text in [&stdout, &stderr, &server_logs] {
            assert!(!text.contains(number.as_str()), "a number leaked");
        }
    }
}
