//! The fuzz targets of `fuzz/` on stable Rust, as bounded property tests
//! (D153, D154): per target, a few thousand inputs from a seeded generator
//! — random bytes, byte-level mutations of valid inputs (bit flips, byte
//! changes, insertions, deletions, duplications, truncation, splices of two
//! inputs), and the valid inputs themselves. The target bodies are the ones
//! libFuzzer runs (`tests/fuzz_targets/mod.rs`); each asserts no panic and
//! the documented error.
//!
//! FUGO_FUZZ_CASES (default 3000) sets the cases per target and
//! FUGO_FUZZ_SEED (default fixed) the generator's seed; a failure prints
//! the seed, the case number and the input in hex, which reproduce it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failure report

#[path = "fuzz_targets/mod.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Bytes that matter to the parsers: digits, separators, quotes, line
/// ends, protobuf tags and lengths, UTF-8 and Shift_JIS lead bytes.
const INTERESTING: &[u8] =
    b"0123456789 -,\"\r\n\t=[]#'\x00\x01\x02\x0a\x12\x1a\x22\x7f\x80\xff\xef\xbb\xbf\x82\xe3";

/// One mutation of `input`, possibly with bytes of `other`.
fn mutate(rng: &mut Generator, input: &mut Vec<u8>, other: &[u8]) {
    let at = rng.below(input.len() + 1);
    match rng.below(9) {
        0 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] ^= 1 << rng.below(8);
        }
        1 if !input.is_empty() => {
            let i = rng.below(input.len());
            input[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => input.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
        3 => input.insert(at, rng.next() as u8),
        4 if !input.is_empty() => {
            let end = (at + 1 + rng.below(8)).min(input.len());
            input.drain(at.min(end)..end);
        }
        5 if !input.is_empty() => {
            let start = rng.below(input.len());
            let end = (start + 1 + rng.below(16)).min(input.len());
            let piece = input[start..end].to_vec();
            input.splice(at..at, piece);
        }
        6 => input.truncate(at),
        7 if !other.is_empty() => {
            let start = rng.below(other.len());
            let end = (start + 1 + rng.below(64)).min(other.len());
            input.splice(at..at, other[start..end].iter().copied());
        }
        _ => {
            let len = 1 + rng.below(4);
            let noise = rng.bytes(len);
            input.splice(at..at, noise);
        }
    }
}

/// The inputs of one run: the seeds as they are, then mutations of them
/// (one to eight each) and random bytes.
fn inputs(seeds: &[Vec<u8>], cases: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Generator(seed | 1);
    let mut out: Vec<Vec<u8>> = seeds.to_vec();
    while out.len() < cases.max(seeds.len()) {
        if seeds.is_empty() || rng.below(8) == 0 {
            let len = rng.below(96);
            out.push(rng.bytes(len));
            continue;
        }
        let mut input = seeds[rng.below(seeds.len())].clone();
        let other = &seeds[rng.below(seeds.len())];
        for _ in 0..1 + rng.below(8) {
            mutate(&mut rng, &mut input, other);
        }
        out.push(input);
    }
    out
}

fn cases() -> usize {
    std::env::var("FUGO_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("FUGO_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0f0c_5eed_2026_1128)
}

/// Runs one target over its inputs; on a failure, names the case.
fn run(name: &str) {
    let body = targets::TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, body)| *body)
        .expect("a target");
    let seeds = targets::seeds(name);
    let seed = seed()
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let inputs = inputs(&seeds, cases(), seed);
    for (case, input) in inputs.iter().enumerate() {
        if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!(
                "target {name}, FUGO_FUZZ_SEED={} case {case}: input {hex}",
                self::seed()
            );
        }
    }
    println!("{name}: {} inputs", inputs.len());
}

#[test]
fn number_parser() {
    run("number");
}

#[test]
fn code_text_parser() {
    run("code_text");
}

#[test]
fn token_opening() {
    run("token");
}

#[test]
fn policy_parser() {
    run("policy");
}

#[test]
fn csv_reader() {
    run("csv");
}

#[test]
fn protobuf_requests() {
    run("request");
}

/// The seeds are what they claim: each opens, parses or answers as valid
/// input, so mutations start from deep inside each parser.
#[test]
fn the_seeds_are_valid_inputs() {
    assert!(fugo::mynumber::MyNumber::parse(&targets::seeds("number")[0]).is_ok());
    assert!(fugo::code::AgencyCode::parse(&targets::seeds("code_text")[2]).is_ok());
    for policy in targets::seeds("policy").iter().take(2) {
        assert!(fugo::policy::parse(std::str::from_utf8(policy).unwrap()).is_ok());
    }
    // 4 with numbers for names, 3 on behalf of others, and each of the 6
    // operations' valid requests, 2 forms, from each of the 4 callers.
    assert_eq!(targets::seeds("request").len(), 4 + 3 + 6 * 4 * 2);
}

/// The properties can fail: an echoed number is caught, a genuine token
/// opens, and the generator really mutates.
#[test]
fn the_properties_and_the_generator_are_not_blind() {
    for echoed in ["line 3: 123456789018", "reason 1234567890"] {
        let caught = catch_unwind(|| targets::assert_no_digits_echoed("x", echoed));
        assert!(caught.is_err(), "{echoed}");
    }
    assert!(
        catch_unwind(|| targets::assert_no_digits_echoed("x", "line 1234567: position 12")).is_ok()
    );
    let seeds = targets::seeds("token");
    assert!(catch_unwind(|| targets::token(&seeds[0])).is_ok());
    let inputs = inputs(&seeds, 500, 7);
    let changed = inputs.iter().filter(|i| !seeds.contains(i)).count();
    assert!(changed > 400, "{changed}");
}
