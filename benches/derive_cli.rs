//! End-to-end throughput and peak memory of the `fugo derive` binary, file to
//! file, next to a plain copy of the same file (the I/O baseline) measured in
//! the same run.
//!
//! Full form (the README's figures): `cargo bench --bench derive_cli`
//! — 10 million lines, a CSV of 10 million rows, and a 1 GB file that is one
//! line without a newline. Short form (CI): `FUGO_BENCH_LINES=200000
//! FUGO_BENCH_ONE_LINE_MB=16 cargo bench --bench derive_cli`.
//! Peak RSS comes from `/usr/bin/time -f %M` (Debian package `time`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test/bench code: a panic is a failure report; printing is the report

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use fugo::mynumber;

const FUGO: &str = env!("CARGO_BIN_EXE_fugo");

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A stream of valid numbers from a fixed xorshift seed.
fn valid_numbers() -> impl Iterator<Item = [u8; 12]> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    std::iter::from_fn(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        Some(mynumber::with_check_digit(state))
    })
}

fn write_lines(path: &Path, lines: u64) {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    for number in valid_numbers().take(lines as usize) {
        out.write_all(&number).unwrap();
        out.write_all(b"\n").unwrap();
    }
    out.flush().unwrap();
}

fn write_csv(path: &Path, rows: u64) {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    out.write_all(b"id,mynumber,city,note\n").unwrap();
    for (i, number) in valid_numbers().take(rows as usize).enumerate() {
        write!(out, "{i},").unwrap();
        out.write_all(&number).unwrap();
        out.write_all(b",Shinjuku,\"a, quoted note\"\n").unwrap();
    }
    out.flush().unwrap();
}

fn write_one_line(path: &Path, megabytes: u64) {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let block = vec![b'7'; 1 << 20];
    for _ in 0..megabytes {
        out.write_all(&block).unwrap();
    }
    out.flush().unwrap();
}

/// Runs `args` under `/usr/bin/time`, returning (seconds, peak RSS in KiB,
/// exit code).
fn timed(args: &[&str]) -> (f64, u64, i32) {
    let dir = tempfile::tempdir().unwrap();
    let rss_file = dir.path().join("rss");
    let start = Instant::now();
    let status = Command::new("/usr/bin/time")
        .arg("-o")
        .arg(&rss_file)
        .args(["-f", "%M"])
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("/usr/bin/time is needed (Debian package `time`)");
    let seconds = start.elapsed().as_secs_f64();
    let rss = fs::read_to_string(&rss_file)
        .unwrap()
        .lines()
        .last()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0);
    (seconds, rss, status.code().unwrap_or(-1))
}

fn main() {
    // cargo passes `--bench`; nothing here takes arguments.
    let lines = env_number("FUGO_BENCH_LINES", 10_000_000);
    let one_line_mb = env_number("FUGO_BENCH_ONE_LINE_MB", 1024);
    let dir = tempfile::tempdir().unwrap();
    let key = concat!(env!("CARGO_MANIFEST_DIR"), "/keys-example/master.key");
    let input = dir.path().join("numbers.txt");
    let csv = dir.path().join("numbers.csv");
    let one_line = dir.path().join("one-line.txt");
    let out = dir.path().join("out");
    let out_str = out.to_str().unwrap();
    write_lines(&input, lines);
    write_csv(&csv, lines);
    write_one_line(&one_line, one_line_mb);
    let derive = |input: &Path, extra: &[&str]| {
        let mut args = vec![
            FUGO,
            "derive",
            "--master-key",
            key,
            "--agency",
            "city-shinjuku",
            "--epoch",
            "1",
            input.to_str().unwrap(),
            "-o",
            out_str,
        ];
        args.extend_from_slice(extra);
        timed(&args)
    };

    println!("fugo derive, file to file, {lines} rows, all cores (best of 3):");
    let best = |name: &str, run: &dyn Fn() -> (f64, u64, i32)| {
        let mut fastest = f64::MAX;
        let mut peak = 0;
        for _ in 0..3 {
            let (seconds, rss, code) = run();
            assert_eq!(code, 0, "{name} exited {code}");
            fastest = fastest.min(seconds);
            peak = peak.max(rss);
        }
        println!(
            "  {name:<26} {:>8.2} M rows/s  {:>6.2} s  peak RSS {:>6.1} MiB",
            lines as f64 / fastest / 1e6,
            fastest,
            peak as f64 / 1024.0
        );
        fastest
    };
    let copy = best("baseline: cp of the input", &|| {
        timed(&["cp", input.to_str().unwrap(), out_str])
    });
    let line_mode = best("line mode", &|| derive(&input, &[]));
    let csv_mode = best("CSV mode (--column)", &|| {
        derive(&csv, &["--csv", "--column", "mynumber"])
    });
    println!(
        "  line mode takes {:.1}× the time of copying its input; CSV mode {:.1}×",
        line_mode / copy,
        csv_mode / copy
    );
    println!("  (targets: line mode ≥ 10 M lines/s, CSV mode ≥ 3 M rows/s, peak RSS ≤ 64 MiB)");

    let (seconds, rss, code) = derive(&one_line, &["--rejects", "/dev/null"]);
    println!(
        "one line of {one_line_mb} MiB without a newline: exit {code}, {seconds:.2} s, peak RSS {:.1} MiB",
        rss as f64 / 1024.0
    );
}
