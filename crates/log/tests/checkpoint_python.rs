//! src/checkpoint.rs against tests/vectors/note.py, an independent C2SP
//! signed-note / tlog-checkpoint implementation in Python (`cryptography`'s
//! Ed25519; .ci/run installs it). Notes go both ways: Python signs, fugo-log
//! opens; fugo-log signs, Python opens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use fugo_log::checkpoint::{Checkpoint, LogSigner, LogVerifier, NoteError};

const NAME: &str = "audit.fugo.example/log";

fn note_py(args: &[&str], stdin: &str) -> Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/note.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to run tests/vectors/note.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stderr).contains("ModuleNotFoundError"),
        "note.py needs the `cryptography` package (.ci/run installs it)"
    );
    output
}

fn stdout_of(args: &[&str]) -> String {
    let output = note_py(args, "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn seed(i: u8) -> [u8; 32] {
    std::array::from_fn(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn root(i: u8) -> [u8; 32] {
    std::array::from_fn(|j| (j as u8) ^ i.wrapping_mul(101))
}

#[test]
fn python_signed_notes_open_here() {
    for (i, size) in [(1u8, 0u64), (2, 1), (3, 4099), (4, u64::MAX)] {
        let signer = LogSigner::from_seed(NAME, &seed(i)).unwrap();
        let seed_hex = hex(&seed(i));
        let verifier_text = stdout_of(&["verifier", &seed_hex, NAME]);
        assert_eq!(verifier_text.trim_end(), signer.verifier().to_string());
        let verifier = LogVerifier::parse(verifier_text.trim_end()).unwrap();
        assert_eq!(verifier, signer.verifier());

        let note = stdout_of(&["sign", &seed_hex, NAME, &size.to_string(), &hex(&root(i))]);
        let want = Checkpoint {
            origin: NAME.to_owned(),
            size,
            root: root(i),
        };
        assert_eq!(verifier.open(&note), Ok(want.clone()));
        // Ed25519 signing is deterministic: both sides write the same note.
        assert_eq!(signer.sign(&want).unwrap(), note);
    }
}

#[test]
fn notes_signed_here_open_in_python() {
    for (i, size) in [(5u8, 0u64), (6, 77), (7, u64::MAX)] {
        let signer = LogSigner::from_seed(NAME, &seed(i)).unwrap();
        let checkpoint = Checkpoint {
            origin: NAME.to_owned(),
            size,
            root: root(i),
        };
        let note = signer.sign(&checkpoint).unwrap();
        let verifier = signer.verifier().to_string();
        let output = note_py(&["open", &verifier], &note);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            format!("{NAME}\n{size}\n{}\n", hex(&root(i)))
        );
        // The Python side is a real check: a changed size fails there too.
        let tampered = note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size / 2 + 1), 1);
        let output = note_py(&["open", &verifier], &tampered);
        assert!(!output.status.success());
        assert!(String::from_utf8_lossy(&output.stderr).contains("bad signature"));
    }
}

#[test]
fn python_note_by_another_key_of_our_name_is_refused() {
    let ours = LogSigner::from_seed(NAME, &seed(8)).unwrap();
    let note = stdout_of(&["sign", &hex(&seed(9)), NAME, "3", &hex(&root(1))]);
    assert_eq!(
        ours.verifier().open(&note),
        Err(NoteError::WrongKeyId { line: 5 })
    );
}
