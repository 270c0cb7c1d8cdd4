//! The layer rule, checked: `fugo-core` (crates/core) is the part a
//! security reviewer audits alone, so it may depend on cryptographic and
//! error crates only and may not reach files, the network, threads, the
//! clock, the environment or the system's randomness.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::fs;
use std::path::{Path, PathBuf};

fn core() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/core")
}

/// The dependency names of one `[section]` of a Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            names.push(line.split(['=', ' ']).next().unwrap().to_owned());
        }
    }
    names
}

#[test]
fn the_core_depends_on_cryptographic_and_error_crates_only() {
    let manifest = fs::read_to_string(core().join("Cargo.toml")).unwrap();
    let allowed = ["aes", "hkdf", "sha2", "zeroize", "aes-gcm", "thiserror"];
    for name in dependencies(&manifest, "[dependencies]") {
        assert!(
            allowed.contains(&name.as_str()),
            "fugo-core may not depend on {name}"
        );
    }
    assert!(dependencies(&manifest, "[build-dependencies]").is_empty());
}

#[test]
fn the_core_reaches_no_file_socket_thread_clock_or_os_randomness() {
    let forbidden = [
        "std::fs",
        "std::net",
        "std::thread",
        "std::process",
        "std::env",
        "std::io",
        "SystemTime",
        "Instant",
        "OsRng",
        "getrandom",
        "thread_rng",
    ];
    let mut files = vec![core().join("src")];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{} uses {word}; the core gets it passed in or does without",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 10, "found only {checked} source files");
}

/// The audit log (crates/log) sits beside the core, not above or below it:
/// neither crate depends on the other, and the log's pure parts (records,
/// tree, checkpoints) reach no file, socket, thread or clock — only its
/// store does.
#[test]
fn the_log_and_the_core_stand_side_by_side() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let log = fs::read_to_string(root.join("crates/log/Cargo.toml")).unwrap();
    let core_manifest = fs::read_to_string(core().join("Cargo.toml")).unwrap();
    let log_deps = dependencies(&log, "[dependencies]");
    for name in ["fugo", "fugo-core"] {
        assert!(
            !log_deps.iter().any(|dep| dep == name),
            "fugo-log may not depend on {name}"
        );
    }
    assert!(
        !dependencies(&core_manifest, "[dependencies]")
            .iter()
            .any(|dep| dep == "fugo-log"),
        "fugo-core may not depend on fugo-log"
    );
    let allowed = ["sha2", "ring", "base64", "zeroize", "thiserror", "redb"];
    for name in &log_deps {
        assert!(
            allowed.contains(&name.as_str()),
            "fugo-log may not depend on {name}"
        );
    }
    for pure in ["record.rs", "merkle.rs", "checkpoint.rs"] {
        let text = fs::read_to_string(root.join("crates/log/src").join(pure)).unwrap();
        for word in [
            "std::fs",
            "std::net",
            "std::thread",
            "SystemTime",
            "Instant",
            "redb",
        ] {
            assert!(
                !text.contains(word),
                "{pure} uses {word}; only the store touches the world"
            );
        }
    }
}
