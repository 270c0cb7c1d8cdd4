//! Peak memory of `fugo derive` stays bounded whatever the input: measured
//! with `/usr/bin/time` (Debian package `time`, installed by .ci/run).
//! The README's full-size figures (10 million lines, a 1 GB line) come from
//! `cargo bench --bench derive_cli`; this is the short form for CI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

mod common;

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::process::Command;

/// The bound the issue sets, in KiB.
const LIMIT_KIB: u64 = 64 * 1024;

fn peak_rss_kib(args: &[&str]) -> (u64, i32) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("rss");
    let status = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&report)
        .args(["-f", "%M", env!("CARGO_BIN_EXE_fugo")])
        .args(args)
        .status()
        .expect("/usr/bin/time is missing: install Debian's `time` package (.ci/run does)");
    let text = fs::read_to_string(report).unwrap();
    let kib = text.lines().last().unwrap().trim().parse().unwrap();
    (kib, status.code().unwrap())
}

#[test]
fn peak_memory_is_bounded_on_many_lines_and_on_one_huge_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = common::demo_key_path();
    let key = key.to_str().unwrap();
    let many = dir.path().join("many.txt");
    let mut out = BufWriter::new(File::create(&many).unwrap());
    for i in 0..1_000_000u64 {
        writeln!(out, "{}", common::valid_number(i * 1_000_003)).unwrap();
    }
    out.flush().unwrap();
    let huge = dir.path().join("huge.txt");
    let mut out = BufWriter::new(File::create(&huge).unwrap());
    for _ in 0..128 {
        out.write_all(&[b'5'; 1 << 20]).unwrap();
    }
    out.flush().unwrap();
    let huge_csv = dir.path().join("huge.csv");
    let mut out = BufWriter::new(File::create(&huge_csv).unwrap());
    out.write_all(b"mynumber\n").unwrap();
    for _ in 0..128 {
        out.write_all(&[b'5'; 1 << 20]).unwrap();
    }
    out.flush().unwrap();
    let output = dir.path().join("out.txt");
    let runs: [(&std::path::Path, &[&str], i32); 3] = [
        (&many, &[], 0),
        (&huge, &[], 3),
        (&huge_csv, &["--csv", "--column", "mynumber"], 1),
    ];
    for (input, extra, expected_exit) in runs {
        let mut args = vec![
            "derive",
            "--master-key",
            key,
            "--agency",
            "nta",
            "--epoch",
            "1",
            input.to_str().unwrap(),
            "-o",
            output.to_str().unwrap(),
            "--rejects",
            "/dev/null",
        ];
        args.extend_from_slice(extra);
        let (kib, code) = peak_rss_kib(&args);
        assert_eq!(code, expected_exit);
        assert!(kib <= LIMIT_KIB, "{} used {kib} KiB", input.display());
        println!("{}: peak RSS {kib} KiB", input.display());
    }
}
