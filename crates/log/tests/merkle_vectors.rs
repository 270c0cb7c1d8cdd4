//! src/merkle.rs against tests/vectors/merkle.json, written by
//! tests/vectors/merkle.py: an independent Python implementation of RFC 6962
//! §2.1 (the recursive MTH, PATH and SUBPROOF definitions, nothing shared
//! with the Rust code). Sizes up to 4099 with inclusion and consistency
//! proofs; the proofs must match exactly and verify.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::PathBuf;

use fugo_log::merkle::{
    Frontier, Hash, NodeSource, consistency_proof, inclusion_proof, leaf_hash, range_root,
    verify_consistency, verify_inclusion,
};
use serde_json::Value;

/// Every perfect subtree's root by level, filled from `Frontier::append`.
#[derive(Default)]
struct Levels {
    frontier: Frontier,
    levels: Vec<Vec<Hash>>,
}

impl Levels {
    fn with_leaves(n: u64) -> Self {
        let mut tree = Self::default();
        for i in 0..n {
            let levels = &mut tree.levels;
            tree.frontier.append(
                leaf_hash(format!("leaf {i}").as_bytes()),
                |level, _, hash| {
                    if levels.len() <= level as usize {
                        levels.resize(level as usize + 1, Vec::new());
                    }
                    levels[level as usize].push(*hash);
                },
            );
        }
        tree
    }
}

impl NodeSource for Levels {
    type Error = ();
    fn node(&mut self, level: u8, index: u64) -> Result<Hash, ()> {
        self.levels
            .get(level as usize)
            .and_then(|nodes| nodes.get(index as usize))
            .copied()
            .ok_or(())
    }
}

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn hash(value: &Value) -> Hash {
    let text = value.as_str().unwrap();
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn hashes(value: &Value) -> Vec<Hash> {
    value.as_array().unwrap().iter().map(hash).collect()
}

#[test]
fn proofs_match_the_python_reference() {
    let text = std::fs::read_to_string(vectors_dir().join("merkle.json")).unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    let trees = document["trees"].as_array().unwrap();
    let max = trees
        .iter()
        .map(|t| t["size"].as_u64().unwrap())
        .max()
        .unwrap();
    let mut tree = Levels::with_leaves(max);
    let (mut inclusions, mut consistencies) = (0, 0);
    for vector in trees {
        let size = vector["size"].as_u64().unwrap();
        let root = hash(&vector["root"]);
        assert_eq!(
            range_root(&mut tree, 0, size).unwrap(),
            root,
            "root of {size}"
        );
        let mut prefix = Levels::with_leaves(size);
        assert_eq!(prefix.frontier.root(), root, "frontier root of {size}");
        for case in vector["inclusion"].as_array().unwrap() {
            let index = case["index"].as_u64().unwrap();
            let want = hashes(&case["proof"]);
            assert_eq!(
                inclusion_proof(&mut tree, index, size).unwrap(),
                want,
                "{index} in {size}"
            );
            // A source holding exactly `size` leaves answers the same.
            assert_eq!(inclusion_proof(&mut prefix, index, size).unwrap(), want);
            let leaf = leaf_hash(format!("leaf {index}").as_bytes());
            assert_eq!(verify_inclusion(&leaf, index, size, &want, &root), Ok(()));
            inclusions += 1;
        }
        for case in vector["consistency"].as_array().unwrap() {
            let old = case["old"].as_u64().unwrap();
            let old_root = hash(&case["old_root"]);
            let want = hashes(&case["proof"]);
            assert_eq!(range_root(&mut tree, 0, old).unwrap(), old_root);
            assert_eq!(
                consistency_proof(&mut tree, old, size).unwrap(),
                want,
                "{old} to {size}"
            );
            assert_eq!(consistency_proof(&mut prefix, old, size).unwrap(), want);
            assert_eq!(
                verify_consistency(old, size, &old_root, &root, &want),
                Ok(())
            );
            consistencies += 1;
        }
    }
    assert!(trees.len() >= 30 && inclusions >= 100 && consistencies >= 100);
}

/// The committed file is what the script writes: re-run it (python3 is
/// needed, as for the root package's tests/vectors/gen.py).
#[test]
fn vector_file_is_the_scripts_output() {
    let dir = vectors_dir();
    let output = std::process::Command::new("python3")
        .arg(dir.join("merkle.py"))
        .output()
        .expect("python3 is needed to re-run tests/vectors/merkle.py");
    assert!(
        output.status.success(),
        "merkle.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read(dir.join("merkle.json")).unwrap();
    assert!(
        output.stdout == committed,
        "tests/vectors/merkle.json differs from merkle.py's output; regenerate with \
         `python3 crates/log/tests/vectors/merkle.py > crates/log/tests/vectors/merkle.json`"
    );
}
