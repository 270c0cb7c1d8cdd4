//! src/merkle.rs and src/checkpoint.rs against other implementations on
//! crates.io: `ct-merkle` (RFC 6962 proofs from its own in-memory tree) and
//! `signed_note` (a port of Go's sumdb/note, the reference C2SP signed-note
//! code). Why they are test dependencies only: the crate doc (src/lib.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use fugo_log::checkpoint::{Checkpoint, LogSigner};
use fugo_log::merkle::{Frontier, Hash, NodeSource, consistency_proof, inclusion_proof, leaf_hash};
use sha2::Sha256;
use signed_note::{Note, StandardSigner, StandardVerifier, Verifier, VerifierList};

/// Every perfect subtree's root by level, filled from `Frontier::append`.
#[derive(Default)]
struct Levels {
    frontier: Frontier,
    levels: Vec<Vec<Hash>>,
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

fn record(i: u64) -> Vec<u8> {
    format!("record {i}").into_bytes()
}

fn flat(proof: &[Hash]) -> Vec<u8> {
    proof.concat()
}

#[test]
fn proofs_match_ct_merkle() {
    let mut ours = Levels::default();
    let mut theirs = MemoryBackedTree::<Sha256, Vec<u8>>::new();
    // Sizes 1..=300 all, then a few larger ones; proofs for several leaves
    // and old sizes each.
    let sizes = (1..=300u64).chain([511, 512, 513, 1000, 1500]);
    for size in sizes {
        while ours.frontier.size() < size {
            let i = ours.frontier.size();
            let levels = &mut ours.levels;
            ours.frontier
                .append(leaf_hash(&record(i)), |level, _, hash| {
                    if levels.len() <= level as usize {
                        levels.resize(level as usize + 1, Vec::new());
                    }
                    levels[level as usize].push(*hash);
                });
            theirs.push(record(i));
        }
        let root = theirs.root();
        assert_eq!(
            root.as_bytes().as_slice(),
            ours.frontier.root(),
            "root of {size}"
        );
        for index in [0, size / 3, size / 2, size - 1] {
            let proof = inclusion_proof(&mut ours, index, size).unwrap();
            let their_proof = theirs.prove_inclusion(index as usize);
            assert_eq!(their_proof.as_bytes(), flat(&proof), "{index} in {size}");
            let parsed = InclusionProof::<Sha256>::try_from_bytes(flat(&proof)).unwrap();
            root.verify_inclusion(&record(index), index, &parsed)
                .unwrap();
        }
        for old in [1, size / 2, size - 1] {
            if old == 0 || old == size {
                continue;
            }
            let proof = consistency_proof(&mut ours, old, size).unwrap();
            let their_proof = theirs.prove_consistency((size - old) as usize);
            assert_eq!(their_proof.as_bytes(), flat(&proof), "{old} to {size}");
            let old_root = fugo_log::merkle::range_root(&mut ours, 0, old).unwrap();
            let old_root = RootHash::<Sha256>::new(old_root.into(), old);
            let parsed = ConsistencyProof::<Sha256>::try_from_bytes(flat(&proof)).unwrap();
            root.verify_consistency(&old_root, &parsed).unwrap();
        }
    }
}

const NAME: &str = "audit.fugo.example/log";

#[test]
fn signed_note_accepts_our_notes_and_we_accept_its() {
    let seed = [42u8; 32];
    let signer = LogSigner::from_seed(NAME, &seed).unwrap();
    let checkpoint = Checkpoint {
        origin: NAME.to_owned(),
        size: 987_654,
        root: [3; 32],
    };

    // Ours, opened by signed_note with our published verifier key.
    let note = signer.sign(&checkpoint).unwrap();
    let verifier = StandardVerifier::new(&signer.verifier().to_string()).unwrap();
    assert_eq!(verifier.name(), NAME);
    let known = VerifierList::new(vec![Box::new(verifier)]);
    let parsed = Note::from_bytes(note.as_bytes()).unwrap();
    let (verified, unverified) = parsed.verify(&known).unwrap();
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    assert_eq!(parsed.text(), checkpoint.body().as_bytes());

    // A tampered note of ours is refused there too.
    let tampered = note.replacen("987654", "987655", 1);
    assert!(
        Note::from_bytes(tampered.as_bytes())
            .unwrap()
            .verify(&known)
            .is_err()
    );

    // Theirs (signer key PRIVATE+KEY+<name>+<id>+<base64(0x01 ‖ seed)>),
    // opened by us.
    let id = &signer.verifier().to_string()[NAME.len() + 1..NAME.len() + 9];
    let mut key = vec![0x01];
    key.extend_from_slice(&seed);
    let their_signer = StandardSigner::new(&format!(
        "PRIVATE+KEY+{NAME}+{id}+{}",
        STANDARD.encode(&key)
    ))
    .unwrap();
    let mut their_note = Note::new(checkpoint.body().as_bytes(), &[]).unwrap();
    their_note.add_sigs(&[&their_signer]).unwrap();
    let their_text = String::from_utf8(their_note.to_bytes()).unwrap();
    assert_eq!(signer.verifier().open(&their_text), Ok(checkpoint));
    assert_eq!(their_text, note, "Ed25519 is deterministic: the same note");
}
