//! What the offline `fugo derive --config fugo.toml` takes from the
//! server's configuration: the keys of every generation held in a key
//! file, the policy file (which binds each epoch to a generation) and the
//! data directory, each read and checked as the server does at start.
//!
//! The tool never guesses an epoch's generation (D200): it reads it from
//! the policy, and [`super::offline_epoch`] checks it against the store's
//! marks.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::generation::Generation;
use crate::keyring::Keyring;
use crate::policy::Policy;

use super::config::ServeConfig;
use super::error::ServeError;
use super::policy_file::load_policy_text;
use super::server::read_key_files;

/// The server's keys, policy and data directory, for an offline run.
pub struct OfflineSetup {
    /// Every generation whose key the configuration reads from a file.
    pub keyring: Keyring,
    /// Generations held by custodians (their shares reach only a running
    /// server): the offline tool cannot derive their epochs.
    pub custodied: Vec<Generation>,
    /// The policy file of the configuration, checked.
    pub policy: Policy,
    /// The server's data directory (its audit store records the run).
    pub data_dir: PathBuf,
    /// The configured audit log name, for a store that has none yet.
    pub origin: Option<String>,
}

/// Reads `config_path` (with `FUGO_` overrides, as `fugo serve` does), the
/// key file of every generation (pinned fingerprints checked; outside dev
/// mode the demo key and keys others may read refused) and the policy.
/// Generation 1 held by custodians is refused: the audit trail's keys come
/// from it, and only the server can gather its shares.
pub fn load(config_path: &Path, warnings: &mut dyn Write) -> Result<OfflineSetup, ServeError> {
    let config = ServeConfig::load(config_path)?;
    let (held, custodied) = read_key_files(&config, warnings)?;
    if custodied
        .iter()
        .any(|(generation, ..)| *generation == Generation::FIRST)
    {
        return Err(ServeError::Keyring(
            "generation 1's key is held by custodians: the offline tool cannot open the \
             audit trail; derive through the server"
                .to_owned(),
        ));
    }
    let keyring = Keyring::new(held).map_err(|e| ServeError::Keyring(e.to_string()))?;
    let (policy, _) = load_policy_text(&config.policy)?;
    Ok(OfflineSetup {
        keyring,
        custodied: custodied
            .iter()
            .map(|(generation, ..)| *generation)
            .collect(),
        policy,
        data_dir: config.data_dir,
        origin: config.audit.origin,
    })
}
