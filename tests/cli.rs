//! The `fugo` binary end to end: stdout, stderr and exit status pinned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{DEMO_FINGERPRINT, demo_key_path, valid_number};

fn fugo(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        // The child may exit before reading everything; that is its business.
        let _ = pipe.write_all(&input);
    });
    let output = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    output
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

const DEMO_NOTICE: &str = "is the PUBLIC demo key; codes made with it protect nothing";

/// stderr without the notice every run with the demo key prints.
fn errors(out: &Output) -> String {
    text(&out.stderr)
        .lines()
        .filter(|line| !line.contains(DEMO_NOTICE))
        .map(|line| format!("{line}\n"))
        .collect()
}

fn derive_args<'a>(key: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "derive",
        "--master-key",
        key,
        "--agency",
        "city-shinjuku",
        "--epoch",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

fn key() -> String {
    demo_key_path().to_str().unwrap().to_owned()
}

#[test]
fn line_mode_reports_bad_lines_and_keeps_alignment() {
    let long = "7".repeat(300);
    let input = format!(
        "123456789018\n983205673214\r\n123456789012\n\n1234 5678 9018\n\u{ff11}23456789018\n{long}\n12345678901\n983205673214"
    );
    let key = key();
    let out = fugo(&derive_args(&key, &[]), input.as_bytes());
    assert_eq!(out.status.code(), Some(3));
    let shinjuku_983205673214 = {
        let ok = fugo(&derive_args(&key, &[]), b"983205673214\n");
        assert_eq!(ok.status.code(), Some(0));
        assert!(errors(&ok).is_empty());
        text(&ok.stdout).trim_end().to_owned()
    };
    assert_eq!(
        text(&out.stdout),
        format!(
            "117SQFZDBBY20YB707P62RD1R8FGJ\n{c}\n\n\n\n\n\n\n{c}\n",
            c = shinjuku_983205673214
        )
    );
    assert_eq!(
        errors(&out),
        "line 3: check digit does not match\n\
         line 4: empty: expected 12 digits\n\
         line 5: not a digit at position 5: expected 12 ASCII digits\n\
         line 6: not a digit at position 1: expected 12 ASCII digits\n\
         line 7: too long\n\
         line 8: wrong length: expected 12 digits, found 11\n\
         fugo: 6 of 9 rows rejected\n"
    );
}

#[test]
fn rejects_file_output_file_and_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.txt");
    let rejects = dir.path().join("rejects.txt");
    fs::write(&input, "123456789018\nnope\n").unwrap();
    let key = key();
    let out = fugo(
        &derive_args(
            &key,
            &[
                input.to_str().unwrap(),
                "-o",
                output.to_str().unwrap(),
                "--rejects",
                rejects.to_str().unwrap(),
            ],
        ),
        b"",
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert_eq!(errors(&out), "fugo: 1 of 2 rows rejected\n");
    assert_eq!(
        fs::read_to_string(&output).unwrap(),
        "117SQFZDBBY20YB707P62RD1R8FGJ\n\n"
    );
    assert_eq!(
        fs::read_to_string(&rejects).unwrap(),
        "line 2: not a digit at position 1: expected 12 ASCII digits\n"
    );
}

#[test]
fn csv_mode_replaces_or_appends_the_column() {
    let key = key();
    let input = "id,mynumber,note\n1,123456789018,\"a, b\"\n2,123456789012,x\n3,983205673214\n";
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "mynumber"]),
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    let lines: Vec<&str> = text(&out.stdout).lines().collect();
    assert_eq!(lines[0], "id,mynumber,note");
    assert_eq!(lines[1], "1,117SQFZDBBY20YB707P62RD1R8FGJ,\"a, b\"");
    assert_eq!(lines[2], "2,,x");
    assert_eq!(
        lines[3], ",,",
        "a row of the wrong width keeps none of its fields"
    );
    assert_eq!(
        errors(&out),
        "line 3: column 'mynumber': check digit does not match\n\
         line 4: has 2 fields, the header has 3\n\
         fugo: 2 of 3 rows rejected\n"
    );

    let out = fugo(
        &derive_args(
            &key,
            &["--csv", "--column", "mynumber", "--append-column", "code"],
        ),
        b"mynumber\n123456789018\r\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert_eq!(
        text(&out.stdout),
        "mynumber,code\n123456789018,117SQFZDBBY20YB707P62RD1R8FGJ\n"
    );
}

#[test]
fn csv_header_problems_are_fatal_and_named() {
    let key = key();
    let cases: [(&[&str], &str, &str); 3] = [
        (
            &["--csv", "--column", "number"],
            "id,mynumber\n",
            "no column named 'number'",
        ),
        (
            &["--csv", "--column", "n"],
            "n,n\n",
            "column 'n' appears 2 times",
        ),
        (
            &["--csv", "--column", "n", "--append-column", "c"],
            "n,c\n",
            "column 'c' already exists",
        ),
    ];
    for (flags, input, message) in cases {
        let out = fugo(&derive_args(&key, flags), input.as_bytes());
        assert_eq!(out.status.code(), Some(1));
        assert!(errors(&out).contains(message), "{}", errors(&out));
    }
}

#[test]
fn a_huge_line_without_newline_is_one_reject() {
    let key = key();
    let input = vec![b'1'; 8 << 20];
    let out = fugo(&derive_args(&key, &[]), &input);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "\n");
    assert_eq!(
        errors(&out),
        "line 1: too long\nfugo: 1 of 1 rows rejected\n"
    );
}

#[test]
fn output_is_the_same_for_any_thread_count() {
    // Lines of every kind, some far longer than a line may be, so that chunk
    // boundaries fall inside lines of each kind.
    let mut input = String::new();
    let mut expected_rejects = 0;
    for i in 0..120_000u64 {
        match i % 97 {
            13 => {
                input.push_str(&"9".repeat(1000 + (i as usize % 5000)));
                expected_rejects += 1;
            }
            29 => {
                input.push_str("12345678901x");
                expected_rejects += 1;
            }
            31 => expected_rejects += 1, // empty line
            _ => input.push_str(&valid_number(i * 7919)),
        }
        input.push_str(if i % 3 == 0 { "\r\n" } else { "\n" });
    }
    let key = key();
    let one = fugo(&derive_args(&key, &["--threads", "1"]), input.as_bytes());
    let three = fugo(&derive_args(&key, &["--threads", "3"]), input.as_bytes());
    assert_eq!(one.status.code(), Some(3));
    assert_eq!(one.stdout, three.stdout);
    assert_eq!(one.stderr, three.stderr);
    assert_eq!(text(&one.stdout).lines().count(), 120_000);
    assert!(errors(&one).ends_with(&format!(
        "fugo: {expected_rejects} of 120000 rows rejected\n"
    )));
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    let path_str = path.to_str().unwrap();
    let out = fugo(&["keygen", "--out", path_str], b"");
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let fingerprint = text(&out.stdout).trim_end().to_owned();
    assert_eq!(fingerprint.len(), 32);
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let contents = fs::read_to_string(&path).unwrap();
    assert_eq!(contents.len(), 65);
    assert!(!errors(&out).contains(contents.trim_end()));
    assert_ne!(fingerprint, DEMO_FINGERPRINT);

    let again = fugo(&["keys", "fingerprint", path_str], b"");
    assert_eq!(text(&again.stdout).trim_end(), fingerprint);

    let refused = fugo(&["keygen", "--out", path_str], b"");
    assert_eq!(refused.status.code(), Some(1));
    assert!(errors(&refused).contains("already exists; refusing to overwrite"));
    assert_eq!(fs::read_to_string(&path).unwrap(), contents);
}

#[test]
fn fingerprints_are_checked_when_asked() {
    let key = key();
    let out = fugo(&["keys", "fingerprint", &key], b"");
    assert_eq!(text(&out.stdout), format!("{DEMO_FINGERPRINT}\n"));
    let good = fugo(
        &[
            "keys",
            "fingerprint",
            &key,
            "--expect-fingerprint",
            DEMO_FINGERPRINT,
        ],
        b"",
    );
    assert_eq!(good.status.code(), Some(0));

    let wrong = "00000000000000000000000000000000";
    let out = fugo(
        &derive_args(&key, &["--expect-fingerprint", wrong]),
        b"123456789018\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(errors(&out).contains(&format!(
        "has fingerprint {DEMO_FINGERPRINT}, expected {wrong}; refusing to use it"
    )));
    let ok = fugo(
        &derive_args(&key, &["--expect-fingerprint", DEMO_FINGERPRINT]),
        b"123456789018\n",
    );
    assert_eq!(ok.status.code(), Some(0));
}

#[test]
fn key_file_problems_are_fatal_and_never_echo_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write_key = |name: &str, contents: &str, mode: u32| {
        let path = dir.path().join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let secret = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let mut bad = secret.to_owned();
    bad.replace_range(20..21, "z");
    let cases = [
        (
            write_key("short.key", &secret[..40], 0o600),
            "expected 64 hex characters and an optional newline, found 40 characters",
        ),
        (
            write_key("bad.key", &bad, 0o600),
            "character 21 is not a hex digit",
        ),
        (
            dir.path().join("missing.key").to_str().unwrap().to_owned(),
            "cannot read key file",
        ),
    ];
    for (path, message) in &cases {
        let out = fugo(&derive_args(path, &[]), b"123456789018\n");
        assert_eq!(out.status.code(), Some(1), "{path}");
        let stderr = errors(&out);
        assert!(stderr.contains(message), "{stderr}");
        assert!(!stderr.contains(&secret[..16]), "{stderr}");
        assert!(!stderr.contains(&bad[..16]), "{stderr}");
    }

    let open = write_key("open.key", secret, 0o644);
    // A real key's run is recorded in the audit trail of --data-dir.
    let data = dir.path().join("data");
    let out = fugo(
        &derive_args(&open, &["--data-dir", data.to_str().unwrap()]),
        b"123456789018\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(errors(&out).contains("can be read by group or others; run `chmod 600` on it"));
}

#[test]
fn unreadable_input_and_bad_flags() {
    let key = key();
    let out = fugo(&derive_args(&key, &["/nonexistent/numbers.txt"]), b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(errors(&out).contains("cannot open input /nonexistent/numbers.txt"));

    let out = fugo(
        &[
            "derive",
            "--master-key",
            &key,
            "--agency",
            "City",
            "--epoch",
            "1",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(errors(&out).contains("agency id must start with a-z or 0-9"));
    let out = fugo(
        &[
            "derive",
            "--master-key",
            &key,
            "--agency",
            "nta",
            "--epoch",
            "32",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(errors(&out).contains("epoch must be a whole number from 1 to 31"));
    let out = fugo(&derive_args(&key, &["--csv"]), b"");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_demo_key_is_labelled_loudly() {
    let key = key();
    let out = fugo(&derive_args(&key, &[]), b"123456789018\n");
    assert_eq!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(DEMO_NOTICE), "{stderr}");
}

#[test]
fn help_says_what_the_offline_tool_bypasses() {
    let out = fugo(&["derive", "--help"], b"");
    let help = text(&out.stdout);
    assert!(help.contains("bypasses the server's"));
    assert!(help.contains("audit"));
    // Stale before D199: D193 made the tool honour re-issues.
    assert!(!help.contains("does not yet honour"), "{help}");
    assert!(help.contains("Re-issued and superseded numbers\nresolve as on the server"));
    // D200: the epoch's generation is read, never guessed.
    assert!(
        help.contains("--master-key FILE (key generation 1)"),
        "{help}"
    );
    assert!(help.contains("--config fugo.toml"), "{help}");
    assert!(help.contains("never guessed"), "{help}");
    assert!(help.contains("through the server"));
    assert!(help.contains("every derived person is recorded"));
    assert!(help.contains("demo key (development only) nothing is recorded"));
    assert!(Path::new(&key()).exists());
}

#[test]
fn csv_line_numbers_count_quoted_newlines_and_long_records_are_fatal() {
    let key = key();
    let input = "\u{feff}id,note,mynumber\n1,\"two\nlines\",123456789018\n2,x,bad\n";
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "mynumber"]),
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stdout),
        "id,note,mynumber\n1,\"two\nlines\",117SQFZDBBY20YB707P62RD1R8FGJ\n2,x,\n"
    );
    assert_eq!(
        errors(&out),
        "line 4: column 'mynumber': not a digit at position 1: expected 12 ASCII digits\n\
         fugo: 1 of 2 rows rejected\n"
    );

    let mut huge = b"mynumber\n123456789018\n".to_vec();
    huge.extend(std::iter::repeat_n(b'9', 3 << 20));
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "mynumber"]),
        &huge,
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        errors(&out),
        "fugo: error: CSV input, line 3: record is longer than 1 MiB\n\
         fugo: stopped after 0 rows; the output is incomplete\n"
    );

    let out = fugo(&derive_args(&key, &["--csv", "--column", "mynumber"]), b"");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        errors(&out),
        "fugo: error: CSV header: the input is empty\n"
    );
}

#[test]
fn csv_output_is_the_same_for_any_thread_count() {
    let mut input = String::from("n,mynumber,note\n");
    for i in 0..50_000u64 {
        let number = if i % 41 == 7 {
            "12345".to_owned()
        } else {
            valid_number(i * 31)
        };
        let note = if i % 3 == 0 {
            "\"multi\nline, quoted\""
        } else {
            "plain"
        };
        if i % 53 == 0 {
            input.push_str(&format!("{i},{number}\n"));
        } else {
            input.push_str(&format!("{i},{number},{note}\n"));
        }
    }
    let key = key();
    let flags = |threads| vec!["--csv", "--column", "mynumber", "--threads", threads];
    let one = fugo(&derive_args(&key, &flags("1")), input.as_bytes());
    let three = fugo(&derive_args(&key, &flags("3")), input.as_bytes());
    assert_eq!(one.status.code(), Some(3));
    assert_eq!(one.stdout, three.stdout);
    assert_eq!(one.stderr, three.stderr);
    assert!(errors(&one).ends_with("rows rejected\n"));
    assert!(
        errors(&one).contains("fugo: 2141 of 50000 rows rejected"),
        "{}",
        errors(&one).lines().last().unwrap()
    );
}

/// A progress line with a rate appears when stderr is a terminal (here the
/// pseudo-terminal of util-linux `script`), and never otherwise.
#[test]
fn progress_shows_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    fs::write(&input, "123456789018\n".repeat(200_000)).unwrap();
    let output = dir.path().join("out.txt");
    let command = format!(
        "{} derive --master-key {} --agency nta --epoch 1 {} -o {}",
        env!("CARGO_BIN_EXE_fugo"),
        key(),
        input.display(),
        output.display()
    );
    let typescript = dir.path().join("typescript");
    let status = Command::new("script")
        .args(["-qec", &command])
        .arg(&typescript)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .expect("`script` (util-linux) runs the command on a pseudo-terminal");
    assert!(status.success());
    let screen = String::from_utf8_lossy(&fs::read(&typescript).unwrap()).into_owned();
    assert!(screen.contains("200,000 rows"), "{screen}");
    assert!(screen.contains("M rows/s"), "{screen}");

    let quiet = fugo(
        &[
            "derive",
            "--master-key",
            &key(),
            "--agency",
            "nta",
            "--epoch",
            "1",
        ],
        b"123456789018\n",
    );
    assert!(!text(&quiet.stderr).contains("rows/s"));
}

#[test]
fn policy_check_accepts_the_example_and_names_every_problem() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy.example.toml");
    let out = fugo(&["policy", "check", example.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(text(&out.stdout).contains("valid policy: 7 agencies, 4 affairs, 6 rules; version "));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let original = fs::read_to_string(&example).unwrap();
    let broken = original
        .replace("provider = \"jps\"", "provider = \"jsp\"")
        .replace("epoch = 2\n", "epoch = 5\n");
    fs::write(&bad, broken).unwrap();
    let out = fugo(&["policy", "check", bad.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(1));
    let shown = bad.display().to_string();
    assert_eq!(
        errors(&out),
        format!(
            "{shown}:72: accepted_epochs must include the current epoch 5\n\
             {shown}:167: rule names unknown agency jsp\n\
             fugo: error: {shown}: 2 problem(s); the policy is not valid\n"
        )
    );
}

#[test]
fn dev_certs_writes_a_ca_a_server_and_one_client_per_agency() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let out = fugo(
        &[
            "dev-certs",
            "--out",
            out_dir.to_str().unwrap(),
            "--agencies",
            "mhlw,city-shinjuku",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(errors(&out).contains("2 client certificates"));
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "mhlw.pem",
        "mhlw.key",
        "city-shinjuku.pem",
        "city-shinjuku.key",
    ] {
        let text = fs::read_to_string(out_dir.join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN"), "{name}");
    }
    let mode = fs::metadata(out_dir.join("mhlw.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The server certificate holds the names a client uses as given.
    let pem = fs::read(out_dir.join("server.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string(),
                _ => std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["localhost", "127.0.0.1", "::1"]);
    let bad = fugo(
        &[
            "dev-certs",
            "--out",
            out_dir.to_str().unwrap(),
            "--agencies",
            "Bad Name",
        ],
        b"",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(errors(&bad).contains("agency id must start with a-z or 0-9"));
}

#[test]
fn csv_reject_lines_are_file_lines_after_blank_lines_and_crlf() {
    let key = key();
    let input = "id,mynumber\r\n1,bad\r\n\r\n\n2,123456789012\r\n3\r\n";
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "mynumber"]),
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        errors(&out),
        "line 2: column 'mynumber': not a digit at position 1: expected 12 ASCII digits\n\
         line 5: column 'mynumber': check digit does not match\n\
         line 6: has 1 fields, the header has 2\n\
         fugo: 3 of 3 rows rejected\n"
    );
}

#[test]
fn cp932_files_are_read_and_written_as_cp932() {
    let key = key();
    let csv = "番号,個人番号,氏名\r\n1,123456789018,山田\r\n2,983205673214\r\n3,bad,鈴木,余分\r\n";
    let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(csv);
    let out = fugo(
        &derive_args(
            &key,
            &["--csv", "--column", "個人番号", "--encoding", "cp932"],
        ),
        &sjis,
    );
    assert_eq!(out.status.code(), Some(3), "{}", errors(&out));
    let (decoded, _, bad) = encoding_rs::SHIFT_JIS.decode(&out.stdout);
    assert!(!bad);
    assert_eq!(
        decoded,
        "番号,個人番号,氏名\n1,117SQFZDBBY20YB707P62RD1R8FGJ,山田\n,,\n,,\n"
    );
    assert_eq!(
        errors(&out),
        "line 3: has 2 fields, the header has 3\n\
         line 4: has 4 fields, the header has 3\n\
         fugo: 2 of 3 rows rejected\n"
    );
    // Line mode too; and the default UTF-8 refuses the file, naming the line.
    let (lines, _, _) = encoding_rs::SHIFT_JIS.encode("123456789018\n\n個人番号\n");
    let out = fugo(&derive_args(&key, &["--encoding", "cp932"]), &lines);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "117SQFZDBBY20YB707P62RD1R8FGJ\n\n\n");
    let out = fugo(&derive_args(&key, &[]), &lines);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        errors(&out).starts_with(
            "fugo: error: line 3 is not valid UTF-8; if the file is Shift_JIS, use --encoding cp932\n"
        ),
        "{}",
        errors(&out)
    );
}

#[test]
fn a_utf8_bom_is_accepted_in_line_mode() {
    let key = key();
    let out = fugo(&derive_args(&key, &[]), "\u{feff}123456789018\n".as_bytes());
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert_eq!(text(&out.stdout), "117SQFZDBBY20YB707P62RD1R8FGJ\n");
}

#[test]
fn a_wrong_column_lists_the_header_but_no_number() {
    let key = key();
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "number"]),
        b"id,mynumber,note\n1,123456789018,x\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        errors(&out),
        "fugo: error: CSV header: no column named 'number'; the header has 3 column(s): \
         'id', 'mynumber', 'note'\n"
    );
    // A file without a header: its "header" is a row of data.
    let out = fugo(
        &derive_args(&key, &["--csv", "--column", "mynumber"]),
        b"1,123456789018,x\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!errors(&out).contains("123456789018"), "{}", errors(&out));
    assert!(errors(&out).contains("(a name that looks like data, not shown)"));
}

#[test]
fn a_stopped_run_leaves_no_output_file_and_says_how_far_it_got() {
    let key = key();
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::from("mynumber\n");
    for i in 0..20_000u64 {
        input.push_str(&valid_number(i));
        input.push('\n');
    }
    input.push_str(&"9".repeat(2 << 20));
    let target = dir.path().join("codes.csv");
    let out = fugo(
        &derive_args(
            &key,
            &[
                "--csv",
                "--column",
                "mynumber",
                "--threads",
                "2",
                "-o",
                target.to_str().unwrap(),
            ],
        ),
        input.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        errors(&out),
        format!(
            "fugo: error: CSV input, line 20002: record is longer than 1 MiB\n\
             fugo: stopped after 16384 rows; {} was not written\n",
            target.display()
        )
    );
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "no output and no temporary file: {left:?}");

    // A finished run puts the file in place.
    let out = fugo(
        &derive_args(&key, &["-o", target.to_str().unwrap()]),
        b"123456789018\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        fs::read_to_string(&target).unwrap(),
        "117SQFZDBBY20YB707P62RD1R8FGJ\n"
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn a_file_size_limit_stops_the_run_with_a_message_and_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("numbers");
    let mut body = String::new();
    for i in 0..100_000u64 {
        body.push_str(&valid_number(i));
        body.push('\n');
    }
    fs::write(&input, body).unwrap();
    let key = key();
    // Without and with SIGXFSZ ignored by the parent shell.
    for trap in ["", "trap '' XFSZ; "] {
        let target = dir.path().join("codes");
        let script = format!(
            "{trap}ulimit -f 200; exec \"$0\" derive --master-key \"$1\" --agency nta --epoch 1 \"$2\" -o \"$3\""
        );
        let out = Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_fugo"), &key])
            .arg(&input)
            .arg(&target)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{trap}: {}", errors(&out));
        let message = errors(&out);
        assert!(
            message.contains("writing output: File too large"),
            "{trap}: {message}"
        );
        assert!(message.contains("was not written"), "{message}");
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "{trap}");
    }
}

#[test]
fn a_closed_stdout_is_a_quiet_end() {
    let mut input = String::new();
    for i in 0..300_000u64 {
        input.push_str(&valid_number(i));
        input.push('\n');
    }
    let key = key();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(derive_args(&key, &[]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let mut first = [0u8; 30];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut first).unwrap();
    drop(child.stdout.take()); // as `| head -1` does
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(141));
    assert_eq!(errors(&out), "", "no panic, no error message");
}

#[test]
fn output_to_a_device_or_through_a_link_is_written_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let key = key();
    let out = fugo(&derive_args(&key, &["-o", "/dev/null"]), b"123456789018\n");
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    let null = fs::metadata("/dev/null").unwrap();
    assert!(
        null.file_type().is_char_device(),
        "/dev/null is still a device"
    );

    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.txt");
    let link = dir.path().join("link.txt");
    fs::write(&real, "old\n").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = fugo(
        &derive_args(&key, &["-o", link.to_str().unwrap()]),
        b"123456789018\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", errors(&out));
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(&real).unwrap(),
        "117SQFZDBBY20YB707P62RD1R8FGJ\n"
    );
}
