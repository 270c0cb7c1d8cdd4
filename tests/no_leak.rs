//! "Never leak the number": every way fugo can talk — stderr, reject files,
//! error messages, `Debug` output, and the output of rejected rows — is
//! searched for each test number in every form and for every code.
//!
//! fugo has no tracing yet (it arrives with the server); when it does, its
//! log output joins the haystack here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{demo_key_path, valid_number};
use fugo::agency::{AgencyId, Epoch};
use fugo::code::{AgencyCode, Coder};
use fugo::keys::{KeyHierarchy, MasterKey};
use fugo::mynumber::MyNumber;

/// Every form a number might take in a leak.
fn forms(number: &str) -> Vec<String> {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let mut forms = vec![
        digits.clone(),
        format!("{} {} {}", &digits[..4], &digits[4..8], &digits[8..]),
        format!("{}-{}-{}", &digits[..4], &digits[4..8], &digits[8..]),
        digits[..11].to_owned(),
        digits.bytes().map(|b| format!("{b:02x}")).collect(),
    ];
    if let Ok(value) = digits.parse::<u64>() {
        forms.push(format!("{value:x}"));
        forms.push(format!("{value:016x}"));
        forms.push(format!("{value:X}"));
        forms.push(
            value
                .to_be_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
    }
    forms.into_iter().filter(|f| f.len() >= 8).collect()
}

fn assert_clean(haystack: &str, needles: &[String], what: &str) {
    for needle in needles {
        assert!(
            !haystack.to_lowercase().contains(&needle.to_lowercase()),
            "{what} contains {needle:?}"
        );
    }
}

struct Run {
    stdout: String,
    stderr: String,
}

fn fugo(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_fugo"))
        .args(args)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn no_output_channel_carries_a_number_or_a_code() {
    let valid: Vec<String> = (1..200u64).map(|i| valid_number(i * 104_729_003)).collect();
    // Bad rows that still contain a whole number somewhere.
    let mut invalid: Vec<String> = Vec::new();
    for (i, number) in valid.iter().take(40).enumerate() {
        let mut wrong_check = number.clone().into_bytes();
        wrong_check[11] = b'0' + (wrong_check[11] - b'0' + 1) % 10;
        invalid.push(match i % 5 {
            0 => String::from_utf8(wrong_check).unwrap(),
            1 => format!("{} {} {}", &number[..4], &number[4..8], &number[8..]),
            2 => format!("{number}x"),
            3 => format!(" {number}"),
            _ => number.repeat(30),
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let key = demo_key_path();
    let key = key.to_str().unwrap();
    let lines = dir.path().join("numbers.txt");
    let mut body = String::new();
    for (i, number) in valid.iter().enumerate() {
        body.push_str(number);
        body.push('\n');
        if let Some(bad) = invalid.get(i) {
            body.push_str(bad);
            body.push('\n');
        }
    }
    fs::write(&lines, &body).unwrap();
    let csv = dir.path().join("numbers.csv");
    let mut csv_body = String::from("id,mynumber\n");
    for (i, value) in valid.iter().chain(&invalid).enumerate() {
        csv_body.push_str(&format!("{i},\"{value}\"\n"));
    }
    csv_body.push_str(&format!("{},{},extra\n", valid.len(), valid[0]));
    fs::write(&csv, &csv_body).unwrap();
    let rejects = dir.path().join("rejects.txt");
    let derive = |extra: &[&str]| {
        let mut args = vec![
            "derive",
            "--master-key",
            key,
            "--agency",
            "nta",
            "--epoch",
            "2",
        ];
        args.extend_from_slice(extra);
        fugo(&args)
    };

    let line_run = derive(&[lines.to_str().unwrap()]);
    let reject_run = derive(&[
        lines.to_str().unwrap(),
        "--rejects",
        rejects.to_str().unwrap(),
    ]);
    let csv_run = derive(&["--csv", "--column", "mynumber", csv.to_str().unwrap()]);
    let mismatch = derive(&[
        "--expect-fingerprint",
        "ffffffffffffffffffffffffffffffff",
        lines.to_str().unwrap(),
    ]);
    assert!(line_run.stderr.contains("rows rejected"));
    assert!(csv_run.stderr.contains("rows rejected"));
    assert!(mismatch.stderr.contains("refusing"));

    let codes: Vec<String> = line_run
        .stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(codes.len(), valid.len());
    let mut needles: Vec<String> = valid
        .iter()
        .chain(&invalid)
        .flat_map(|n| forms(n))
        .collect();
    let talk = [
        line_run.stderr.as_str(),
        reject_run.stderr.as_str(),
        csv_run.stderr.as_str(),
        mismatch.stderr.as_str(),
        mismatch.stdout.as_str(),
        &fs::read_to_string(&rejects).unwrap(),
    ]
    .join("\n");
    needles.extend(codes.iter().cloned());
    assert_clean(&talk, &needles, "stderr or a reject file");

    // Output: codes only, never a number (the CSV was in replace mode).
    let numbers: Vec<String> = valid
        .iter()
        .chain(&invalid)
        .flat_map(|n| forms(n))
        .collect();
    assert_clean(&line_run.stdout, &numbers, "line-mode output");
    assert_clean(&csv_run.stdout, &numbers, "CSV output");
}

#[test]
fn the_search_finds_a_planted_leak() {
    for planted in [
        "row 9832 0567 3214",
        "0x000000e4eb9ff8fe",
        "393833323035363733323134",
    ] {
        let caught =
            std::panic::catch_unwind(|| assert_clean(planted, &forms("983205673214"), "x"));
        assert!(caught.is_err(), "{planted}");
    }
}

#[test]
fn debug_and_error_messages_are_redacted() {
    let master = MasterKey::from_bytes(*b"0123456789abcdef0123456789abcdef");
    let keys = KeyHierarchy::new(&master);
    let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(1).unwrap());
    let number = MyNumber::parse(b"983205673214").unwrap();
    let code = coder.derive(&number);
    let code_text = String::from_utf8(code.to_text().to_vec()).unwrap();
    let handle = coder.handle(&number);
    let mut printed = vec![
        format!("{master:?}"),
        format!("{keys:?}"),
        format!("{coder:?}"),
        format!("{number:?}"),
        format!("{code:?}"),
        format!("{handle:?}"),
        format!("{:?}", keys.person_key()),
    ];
    for bad in ["983205673215", "9832 0567 3214", "98320567321x", ""] {
        let error = MyNumber::parse(bad.as_bytes()).unwrap_err();
        printed.push(format!("{error} {error:?}"));
    }
    for bad in [code_text.replace('1', "U"), code_text[..20].to_owned()] {
        let error = AgencyCode::parse(bad.as_bytes()).unwrap_err();
        printed.push(format!("{error} {error:?}"));
    }
    let other = Coder::new(
        &keys,
        AgencyId::new("mhlw").unwrap(),
        Epoch::new(1).unwrap(),
    );
    let error = other.reidentify(&code).unwrap_err();
    printed.push(format!("{error} {error:?}"));
    let key_error =
        MasterKey::from_file_contents(b"0123456789abcdef0123456789abcdefXX").unwrap_err();
    printed.push(format!("{key_error} {key_error:?}"));

    let mut needles = forms("983205673214");
    needles.push(code_text.clone());
    needles.push(common::to_hex(code.bytes()));
    needles.push(common::to_hex(handle.expose_bytes()));
    needles.push("0123456789abcdef".to_owned());
    needles.push(common::to_hex(b"0123456789abcdef"));
    assert_clean(&printed.join("\n"), &needles, "Debug or error output");
}
