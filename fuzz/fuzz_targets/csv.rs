//! cargo-fuzz target `csv`: the body shared with the stable property
//! tests (tests/fuzz.rs), in tests/fuzz_targets/mod.rs.
#![no_main]

#[path = "../../tests/fuzz_targets/mod.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::csv(data));
