//! The client's witness of the server's audit log: it keeps the newest
//! signed checkpoint it has seen in a file and, on its next call, accepts
//! the server's log only if a consistency proof shows the new tree extends
//! the kept one. An operator who rewrites the log and re-signs it from
//! record 0 is caught here, by every agency that keeps a checkpoint.
//!
//! ```text
//!  kept file:  "fugo-checkpoint v1" / verifier key / signed note
//!  check:      same key · new size ≥ kept size · RFC 6962 consistency
//!              proof from (kept size, kept root) to (new size, new root)
//!  keep:       written beside, synced, renamed (never half a file)
//! ```
//!
//! The first contact trusts the server's key (trust on first use, as SSH
//! does) and says so; pinning it is keeping the file.

use std::io::Write;
use std::path::{Path, PathBuf};

use fugo_log::checkpoint::{Checkpoint, LogVerifier, NoteError};
use fugo_log::merkle::{self, Hash, MerkleError};
use thiserror::Error;

/// The first line of a kept-checkpoint file.
pub const MAGIC: &str = "fugo-checkpoint v1";
/// The largest kept-checkpoint file read.
const MAX_FILE: u64 = 128 * 1024;

/// Why the server's log was not accepted, or the file not kept.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The kept file could not be read or written.
    #[error("checkpoint file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's log key is not the one kept.
    #[error(
        "the server's audit log key changed (kept {kept}, now {now}); the log may have been replaced. \
         If the operator announced a new key, move {path} away to accept it"
    )]
    KeyChanged {
        /// The kept key.
        kept: String,
        /// The server's key now.
        now: String,
        /// The kept file.
        path: String,
    },
    /// The server's log was restored from a backup at a checkpoint before
    /// the one kept: records seen before are gone from it.
    #[error(
        "the server's audit log was restored from checkpoint {restored} and continues as {now} \
         (same key): the checkpoint of {kept} records kept in {path} is beyond it, so records \
         after {restored} that this client saw were lost. Report it to the operator with that \
         file; move {path} away to go on"
    )]
    Restored {
        /// The checkpoint the log was restored from.
        restored: u64,
        /// Size kept.
        kept: u64,
        /// The server's log key now.
        now: String,
        /// The kept file.
        path: String,
    },
    /// A note did not verify under the key.
    #[error("the server's {what} does not verify: {source}")]
    Note {
        /// Which note.
        what: &'static str,
        /// Why.
        #[source]
        source: NoteError,
    },
    /// The log is smaller than the one kept: records were removed.
    #[error(
        "the server's audit log has {now} records, fewer than the {kept} seen before: it was rolled back or rewritten"
    )]
    Shrunk {
        /// Size kept.
        kept: u64,
        /// Size now.
        now: u64,
    },
    /// The new tree does not extend the kept one.
    #[error(
        "the server's audit log of {now} records does not extend the one of {kept} records seen before ({source}): it was rewritten"
    )]
    Inconsistent {
        /// Size kept.
        kept: u64,
        /// Size now.
        now: u64,
        /// Why the proof failed.
        #[source]
        source: MerkleError,
    },
}

/// A checkpoint the client has seen and checked.
#[derive(Debug, Clone)]
pub struct Kept {
    /// The log's key.
    pub verifier: LogVerifier,
    /// The signed note, as received.
    pub note: String,
    /// What it says.
    pub checkpoint: Checkpoint,
}

impl Kept {
    /// Opens `note` under `verifier` (the server's answer to GetCheckpoint).
    pub fn open(verifier: LogVerifier, note: &str) -> Result<Self, WitnessError> {
        let checkpoint = verifier.open(note).map_err(|source| WitnessError::Note {
            what: "checkpoint",
            source,
        })?;
        Ok(Kept {
            verifier,
            note: note.to_owned(),
            checkpoint,
        })
    }

    /// Reads a kept file; `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, WitnessError> {
        let failed = |reason: String| WitnessError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = match crate::files::read_text(path, MAX_FILE) {
            Ok(text) => text,
            Err(crate::files::ReadError::Io(error))
                if error.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(error) => return Err(failed(error.to_string())),
        };
        let mut parts = text.splitn(3, '\n');
        if parts.next() != Some(MAGIC) {
            return Err(failed(format!(
                "not a kept checkpoint (first line is not '{MAGIC}')"
            )));
        }
        let verifier = parts
            .next()
            .map(LogVerifier::parse)
            .ok_or_else(|| failed("no verifier key line".into()))?
            .map_err(|error| failed(format!("verifier key: {error}")))?;
        let note = parts.next().unwrap_or_default();
        let kept = Kept::open(verifier, note).map_err(|error| failed(error.to_string()))?;
        Ok(Some(kept))
    }

    /// Writes the kept file: beside it, synced, then renamed into place.
    pub fn save(&self, path: &Path) -> Result<(), WitnessError> {
        let failed = |error: std::io::Error| WitnessError::File {
            path: path.display().to_string(),
            reason: error.to_string(),
        };
        let temporary = sibling(path);
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        write!(file, "{MAGIC}\n{}\n{}", self.verifier, self.note).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        drop(file);
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Accepts `newer` (already opened under the server's key) if it
    /// extends this checkpoint: same key, no fewer records, and `proof`
    /// (the server's consistency proof from this size to the newer one)
    /// verifies.
    pub fn check_newer(
        &self,
        newer: &Kept,
        proof: &[Hash],
        path: &Path,
    ) -> Result<(), WitnessError> {
        if newer.verifier != self.verifier
            && let Some(restored) = restored_from(&self.verifier, &newer.verifier)
        {
            // A restore (same key, the kept origin plus `/restored-N-…`):
            // what was seen up to N must still be there (checked below);
            // a kept checkpoint beyond N saw records that are lost.
            if self.checkpoint.size > restored {
                return Err(WitnessError::Restored {
                    restored,
                    kept: self.checkpoint.size,
                    now: newer.verifier.to_string(),
                    path: path.display().to_string(),
                });
            }
        } else if newer.verifier != self.verifier {
            return Err(WitnessError::KeyChanged {
                kept: self.verifier.to_string(),
                now: newer.verifier.to_string(),
                path: path.display().to_string(),
            });
        }
        let (kept, now) = (&self.checkpoint, &newer.checkpoint);
        if now.size < kept.size {
            return Err(WitnessError::Shrunk {
                kept: kept.size,
                now: now.size,
            });
        }
        merkle::verify_consistency(kept.size, now.size, &kept.root, &now.root, proof).map_err(
            |source| WitnessError::Inconsistent {
                kept: kept.size,
                now: now.size,
                source,
            },
        )
    }
}

/// The checkpoint a restore started `now`'s origin at, when `now` is the
/// same key as `kept` under the same base origin with a
/// `/restored-<N>-<time>` suffix (see `fugo_log::restore`).
pub fn restored_from(kept: &LogVerifier, now: &LogVerifier) -> Option<u64> {
    use fugo_log::restore::base_origin;
    if !kept.same_key(now) || base_origin(kept.name()) != base_origin(now.name()) {
        return None;
    }
    let suffix = now.name()[base_origin(now.name()).len()..].strip_prefix("/restored-")?;
    let (checkpoint, time) = suffix.split_once('-')?;
    if time.is_empty() || !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    checkpoint.parse().ok()
}

/// The signed note inside a kept-checkpoint file's text (after its first
/// line and the verifier key line), or `None` if it is not one: so `fugo
/// audit verify --checkpoint` takes the file a client kept as it is.
pub fn kept_note(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(MAGIC)?.strip_prefix('\n')?;
    rest.split_once('\n').map(|(_, note)| note)
}

/// Where a file is written before it is renamed over `path`.
fn sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The default kept file for an output file: beside it.
pub fn beside(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".checkpoint");
    output.with_file_name(name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use fugo_log::checkpoint::LogSigner;
    use fugo_log::merkle::{Frontier, NodeSource};

    struct Leaves(Vec<Hash>);

    impl NodeSource for Leaves {
        type Error = std::convert::Infallible;
        fn node(&mut self, level: u8, index: u64) -> Result<Hash, Self::Error> {
            let width = 1u64 << level;
            let start = (index * width) as usize;
            let mut frontier = Frontier::new();
            for leaf in &self.0[start..start + width as usize] {
                frontier.append(*leaf, |_, _, _| {});
            }
            Ok(frontier.root())
        }
    }

    fn log(records: &[&[u8]], signer: &LogSigner) -> (Kept, Leaves) {
        let leaves: Vec<Hash> = records.iter().map(|r| merkle::leaf_hash(r)).collect();
        let mut frontier = Frontier::new();
        for leaf in &leaves {
            frontier.append(*leaf, |_, _, _| {});
        }
        let checkpoint = Checkpoint {
            origin: signer.verifier().name().to_owned(),
            size: frontier.size(),
            root: frontier.root(),
        };
        let note = signer.sign(&checkpoint).unwrap();
        (
            Kept::open(signer.verifier(), &note).unwrap(),
            Leaves(leaves),
        )
    }

    #[test]
    fn an_extended_log_is_accepted_and_a_rewritten_one_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv.checkpoint");
        let signer = LogSigner::from_seed("fugo.test/audit", &[5; 32]).unwrap();
        let (old, _) = log(&[b"a", b"b", b"c"], &signer);
        old.save(&path).unwrap();
        let kept = Kept::load(&path).unwrap().unwrap();
        assert_eq!(kept.checkpoint, old.checkpoint);

        let (new, mut leaves) = log(&[b"a", b"b", b"c", b"d", b"e"], &signer);
        let proof = merkle::consistency_proof(&mut leaves, 3, 5).unwrap();
        kept.check_newer(&new, &proof, &path).unwrap();

        // Rewritten from record 0 and re-signed with the same key.
        let (forged, mut leaves) = log(&[b"a", b"X", b"c", b"d", b"e"], &signer);
        let proof = merkle::consistency_proof(&mut leaves, 3, 5).unwrap();
        assert!(matches!(
            kept.check_newer(&forged, &proof, &path),
            Err(WitnessError::Inconsistent {
                kept: 3,
                now: 5,
                ..
            })
        ));
        // Rolled back.
        let (short, _) = log(&[b"a", b"b"], &signer);
        assert!(matches!(
            kept.check_newer(&short, &[], &path),
            Err(WitnessError::Shrunk { kept: 3, now: 2 })
        ));
        // Another key.
        let other = LogSigner::from_seed("fugo.test/audit", &[6; 32]).unwrap();
        let (replaced, _) = log(&[b"a", b"b", b"c"], &other);
        assert!(matches!(
            kept.check_newer(&replaced, &[], &path),
            Err(WitnessError::KeyChanged { .. })
        ));
    }

    #[test]
    fn a_damaged_kept_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kept");
        assert!(Kept::load(&path).unwrap().is_none());
        std::fs::write(&path, "something else\n").unwrap();
        let error = Kept::load(&path).unwrap_err().to_string();
        assert!(error.contains("not a kept checkpoint"), "{error}");
        let signer = LogSigner::from_seed("fugo.test/audit", &[5; 32]).unwrap();
        let (kept, _) = log(&[b"a"], &signer);
        kept.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\n1\n", "\n2\n")).unwrap();
        let error = Kept::load(&path).unwrap_err().to_string();
        assert!(error.contains("checkpoint"), "{error}");
    }

    #[test]
    fn a_restored_origin_is_recognised_only_for_the_same_key_and_base() {
        let seed = [9u8; 32];
        let base = LogSigner::from_seed("fugo.test/audit", &seed).unwrap();
        let restored = base
            .renamed("fugo.test/audit/restored-12-1700000000")
            .unwrap();
        assert_eq!(
            restored_from(&base.verifier(), &restored.verifier()),
            Some(12)
        );
        // Restored twice: the second name replaces the first suffix.
        let again = base
            .renamed("fugo.test/audit/restored-30-1700000100")
            .unwrap();
        assert_eq!(
            restored_from(&restored.verifier(), &again.verifier()),
            Some(30)
        );
        // Another key, another base, or no time: not a restore.
        let other =
            LogSigner::from_seed("fugo.test/audit/restored-12-1700000000", &[8; 32]).unwrap();
        assert_eq!(restored_from(&base.verifier(), &other.verifier()), None);
        let elsewhere = base
            .renamed("other.test/audit/restored-12-1700000000")
            .unwrap();
        assert_eq!(restored_from(&base.verifier(), &elsewhere.verifier()), None);
        let no_time = base.renamed("fugo.test/audit/restored-12").unwrap();
        assert_eq!(restored_from(&base.verifier(), &no_time.verifier()), None);
    }
}
