//! The policy file and putting a policy in force: reading and checking it,
//! the record of its loading (its text, and the store's marks it raises,
//! in one commit), and a reload that swaps it in atomically or leaves the
//! policy in force, saying why. Used at start, on SIGHUP, by the admin
//! plane's ReloadPolicy and by the offline `fugo derive --config`.

use std::path::Path;
use std::sync::{Arc, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::ServeError;
use super::state::State;
use crate::audit::entries::{BatchFacts, policy_digest};
use crate::files;
use crate::policy::{Policy, PolicyVersion};
use fugo_log::record::{Group, Operation, Outcome};
use fugo_log::store::{Append, Marks};

/// Reads and checks a policy file: a regular file of at most
/// [`files::MAX_POLICY`] bytes (a named pipe or a device is refused at once,
/// not waited on).
pub fn load_policy(path: &Path) -> Result<Policy, ServeError> {
    load_policy_text(path).map(|(policy, _)| policy)
}

/// [`load_policy`], also giving the text (the audit trail stores it).
pub(crate) fn load_policy_text(path: &Path) -> Result<(Policy, String), ServeError> {
    let shown = path.display().to_string();
    let text =
        files::read_text(path, files::MAX_POLICY).map_err(|source| ServeError::PolicyRead {
            path: shown.clone(),
            source,
        })?;
    let policy = crate::policy::parse(&text).map_err(|problems| ServeError::Policy {
        path: shown,
        problems,
    })?;
    Ok((policy, text.to_string()))
}

/// The record of loading a policy: its text stored once under its
/// version, one record saying it came into force, and the store's `marks`
/// it raises ([`super::lifecycle::marks_of`]), in one commit.
pub(crate) fn policy_loaded(policy: &Policy, text: &str, marks: Marks) -> Append {
    let digest = policy_digest(policy);
    let facts = BatchFacts {
        agent: "",
        time_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64),
        caller: "fugo",
        batch_id: String::new(),
        policy,
    };
    let mut header = facts.header(Operation::PolicyLoaded);
    header.note = format!("policy {} in force", policy.version());
    Append {
        groups: vec![Group::single(header, Outcome::Done, None)],
        policies: vec![(digest, text.to_owned())],
        now_ms: facts.time_ms,
        marks,
        ..Append::default()
    }
}

pub(crate) fn reload(
    state: &OnceLock<Arc<State>>,
    path: &Path,
) -> Result<PolicyVersion, ServeError> {
    let Some(state) = state.get() else {
        tracing::warn!("sealed: the policy file is read when the server unseals");
        return Err(ServeError::Sealed);
    };
    let loaded = load_policy_text(path).and_then(|(policy, text)| {
        // The marks hold every agency and epoch state of the policies in
        // force so far, the current one included (D211, D217).
        let lifecycle = |reason| ServeError::Lifecycle {
            path: path.display().to_string(),
            reason,
        };
        super::lifecycle::check_keyring(&state.exchange, &policy).map_err(lifecycle)?;
        let mut marks = state.marks.lock().unwrap_or_else(PoisonError::into_inner);
        super::lifecycle::check(&policy, &marks).map_err(lifecycle)?;
        let new = super::lifecycle::marks_of(&policy, state.exchange.keyring());
        super::lifecycle::raise(&mut marks, &new);
        Ok((policy, text, new))
    });
    match loaded {
        Ok((policy, text, marks)) => {
            let version = policy.version().clone();
            // Queued before the swap, so it commits before (or with) the
            // first call decided under the new policy.
            state
                .recorder
                .record_detached(policy_loaded(&policy, &text, marks));
            *state.policy.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(policy);
            tracing::info!(version = %version, "policy reloaded");
            Ok(version)
        }
        Err(error) => {
            tracing::error!(error = %error, "policy reload refused; the old policy stays in force");
            Err(error)
        }
    }
}
