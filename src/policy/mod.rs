//! The policy file: 別表第二 (the My Number Act's table of who may ask whom
//! for what) as TOML, read into the core's [`Policy`] model.
//!
//! Reading collects every problem with its line instead of stopping at the
//! first, so an operator fixes a file in one pass; a file that reads is a
//! consistent policy. Its version is the SHA-256 of the text.
//!
//! ```toml
//! [[agency]]
//! id = "city-shinjuku"
//! name = "Shinjuku City"
//! certificates = ["city-shinjuku"]     # client certificate identities
//! capabilities = ["derive", "reidentify"]
//! epoch = 1                            # current key epoch
//! accepted_epochs = [1]                # epochs still accepted on input
//!
//! [[affair]]
//! id = "health-insurance-benefit"
//! name = "健康保険法による保険給付の支給に関する事務"
//! legal_basis = "番号法 別表第二 第二項"
//!
//! [[rule]]
//! requester = "mhlw"
//! affair = "health-insurance-benefit"
//! provider = "city-shinjuku"
//! items = ["local-tax", "resident-register"]
//! token_lifetime_seconds = 3600
//! non_disclosure = false               # true: a seal may set a date
//! # non_disclosure_max_days = 365      # how far ahead (with true only)
//! ```

mod check;

pub use check::{IdentityError, MAX_IDENTITY_LEN, check_certificate_identity};

use std::fmt;

use thiserror::Error;

pub use fugo_core::policy::*;

/// One problem in a policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line (0 when the problem has no place, e.g. an empty file).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every problem found in a policy file, in line order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("policy has {} problem(s):\n{}", .0.len(), render(.0))]
pub struct PolicyError(pub Vec<Problem>);

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and checks a policy file's text.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let version = PolicyVersion::of_text(text);
    let raw: check::RawPolicy = toml::from_str(text).map_err(|error| {
        let line = error
            .span()
            .map_or(0, |span| check::line_of(text, span.start));
        PolicyError(vec![Problem {
            line,
            message: error.message().trim().to_owned(),
        }])
    })?;
    check::Checker::new(text).check(raw, version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::{AffairId, AgencyId, ItemId};

    pub(super) const GOOD: &str = r#"
[[agency]]
id = "mhlw"
name = "Ministry of Health, Labour and Welfare"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "city-shinjuku"
name = "Shinjuku City"
certificates = ["city-shinjuku", "city-shinjuku-2027"]
capabilities = ["derive", "reidentify"]
epoch = 1

[[affair]]
id = "health-insurance-benefit"
name = "健康保険法による保険給付の支給に関する事務"
legal_basis = "番号法 別表第二 第二項"

[[rule]]
requester = "mhlw"
affair = "health-insurance-benefit"
provider = "city-shinjuku"
items = ["local-tax", "resident-register"]
token_lifetime_seconds = 3600
"#;

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    #[test]
    fn a_good_policy_answers_questions() {
        let policy = parse(GOOD).unwrap();
        assert_eq!(policy.version().as_str().len(), 64);
        let mhlw = id("mhlw");
        let shinjuku = id("city-shinjuku");
        let affair = AffairId::new("health-insurance-benefit").unwrap();
        let tax = ItemId::new("local-tax").unwrap();
        assert!(
            policy
                .authorize(&mhlw, &affair, &shinjuku, std::slice::from_ref(&tax), false)
                .is_ok()
        );
        assert_eq!(
            policy
                .authorize(&shinjuku, &affair, &mhlw, std::slice::from_ref(&tax), false)
                .unwrap_err()
                .to_string(),
            "no rule lets city-shinjuku ask mhlw under affair health-insurance-benefit"
        );
        // An item no rule names is refused without being repeated (D152).
        let pension = ItemId::new("pension").unwrap();
        assert!(matches!(
            policy.authorize(&mhlw, &affair, &shinjuku, &[pension], false),
            Err(Denied::UnknownItem { position: 1 })
        ));
        assert!(matches!(
            policy.authorize(&mhlw, &affair, &shinjuku, &[tax], true),
            Err(Denied::NonDisclosureNotAllowed { .. })
        ));
        assert_eq!(
            policy
                .agency_for_certificate("city-shinjuku-2027")
                .unwrap()
                .id,
            shinjuku
        );
        assert!(policy.agency_for_certificate("nta").is_none());
        assert!(policy.require(&shinjuku, Capability::Reidentify).is_ok());
        assert_eq!(
            policy
                .require(&mhlw, Capability::Reidentify)
                .unwrap_err()
                .to_string(),
            "agency mhlw does not have the reidentify capability"
        );
        assert_eq!(policy.agency(&mhlw).unwrap().accepted_epochs().count(), 2);
        assert_eq!(policy.longest_token_lifetime(), 3600);
    }

    #[test]
    fn the_version_changes_with_the_file() {
        let a = parse(GOOD).unwrap();
        let b = parse(&format!("{GOOD}\n# comment\n")).unwrap();
        assert_ne!(a.version(), b.version());
    }

    /// The generations form: each epoch bound to a generation and in a
    /// state; the old form means generation 1; the file's mistakes are
    /// named with their lines.
    #[test]
    fn epochs_bind_generations_and_states() {
        use crate::agency::Epoch;
        use crate::generation::Generation;
        let text = GOOD.replace(
            "epoch = 2\naccepted_epochs = [1, 2]",
            "epochs = [\n  { epoch = 1, generation = 1, state = \"rekey-only\" },\n  \
             { epoch = 2, generation = 2, state = \"current\" },\n]",
        );
        let policy = parse(&text).unwrap();
        let mhlw = policy.agency(&id("mhlw")).unwrap();
        assert_eq!(mhlw.epoch, Epoch::new(2).unwrap());
        assert_eq!(mhlw.current_generation(), Generation::new(2).unwrap());
        assert_eq!(
            mhlw.binding(Epoch::new(1).unwrap()).unwrap().state,
            EpochState::RekeyOnly
        );
        // The old form: generation 1, the current epoch current.
        let old = parse(GOOD).unwrap();
        let old_mhlw = old.agency(&id("mhlw")).unwrap();
        assert_eq!(
            old_mhlw.binding(Epoch::new(1).unwrap()),
            Some(EpochBinding {
                generation: Generation::FIRST,
                state: EpochState::Accepted
            })
        );
        assert_eq!(old_mhlw.current_generation(), Generation::FIRST);

        let problems = |text: &str| {
            let error = parse(text).unwrap_err();
            let lines: Vec<String> = error.0.iter().map(ToString::to_string).collect();
            lines.join("\n")
        };
        // (An agency whose epochs are refused is left out, so a rule
        // naming it is reported too: only the first line is compared.)
        let assert_starts = |got: &str, want: &str| assert!(got.starts_with(want), "{got}");
        assert_starts(
            &problems(&text.replace("\"rekey-only\"", "\"retired\"")),
            "line 8: unknown epoch state 'retired' (known: current, accepted, rekey-only, destroyed)",
        );
        assert_starts(
            &problems(&text.replace("\"rekey-only\"", "\"current\"")),
            "line 7: agency mhlw: exactly one epoch must be in state current (2 are)",
        );
        assert_starts(
            &problems(&text.replace("generation = 2", "generation = 0")),
            "line 9: generation 0 is outside 1 to 65535",
        );
        assert_starts(
            &problems(&text.replace("epochs = [", "epoch = 2\nepochs = [")),
            "line 8: agency mhlw: `epochs` replaces `epoch` and `accepted_epochs`; give one form",
        );
        assert_eq!(
            problems(&format!("destroyed_generations = [1]\n{text}")),
            "line 9: agency mhlw: epoch 1 is bound to generation 1, which is destroyed; \
             the epoch must be destroyed too\n\
             line 14: agency city-shinjuku: epoch 1 is bound to generation 1, which is destroyed; \
             the epoch must be destroyed too"
        );
        let destroyed = format!(
            "destroyed_generations = [1]\n{}",
            text.replace("\"rekey-only\"", "\"destroyed\"").replace(
                "epoch = 1\n",
                "epochs = [{ epoch = 1, generation = 1, state = \"destroyed\" }, \
                 { epoch = 3, generation = 2, state = \"current\" }]\n"
            )
        );
        let policy = parse(&destroyed).unwrap();
        assert_eq!(
            policy
                .destroyed_generations()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [Generation::FIRST]
        );
        assert_eq!(
            policy.generations_in_use().into_iter().collect::<Vec<_>>(),
            [Generation::new(2).unwrap()]
        );
    }
}
