//! The exchange policy: 別表第二 (the My Number Act's table of who may ask
//! whom for what) as data.
//!
//! A policy file (TOML) lists agencies, affairs and rules. Deny by default:
//! a seal is allowed only if a rule names that requester, affair and
//! provider, and only for data items the rule lists. Parsing collects every
//! problem with its line instead of stopping at the first, so an operator
//! fixes a file in one pass; a policy that parses is internally consistent.
//! The policy's version is the SHA-256 of the file, so every response and
//! audit record can say which table it was decided under.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::agency::{AffairId, AgencyId, Epoch, ItemId};
use crate::hex;

/// Longest token lifetime a rule may set: 30 days.
pub const MAX_TOKEN_LIFETIME: u64 = 30 * 86_400;

/// How far ahead a non-disclosure date may lie when a rule allowing one
/// does not say: 365 days.
pub const DEFAULT_NON_DISCLOSURE_MAX_DAYS: u32 = 365;

/// The most a rule may set for `non_disclosure_max_days`: 3,653 days (ten
/// years).
pub const NON_DISCLOSURE_MAX_DAYS_LIMIT: u32 = 3_653;

/// What an agency may do besides sealing and redeeming under rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Turn My Numbers into its own codes.
    Derive,
    /// Turn its own codes back into My Numbers.
    Reidentify,
    /// Read exchange records for the citizen portal.
    Disclose,
}

impl Capability {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "derive" => Some(Capability::Derive),
            "reidentify" => Some(Capability::Reidentify),
            "disclose" => Some(Capability::Disclose),
            _ => None,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Derive => "derive",
            Capability::Reidentify => "reidentify",
            Capability::Disclose => "disclose",
        })
    }
}

/// An agency as the policy knows it.
#[derive(Debug, Clone)]
pub struct Agency {
    /// Immutable id.
    pub id: AgencyId,
    /// Display name.
    pub name: String,
    /// Client certificate identities that act as this agency.
    pub certificates: Vec<String>,
    /// Capabilities beyond rule-based exchange.
    pub capabilities: BTreeSet<Capability>,
    /// The epoch new codes are made in.
    pub epoch: Epoch,
    /// Epochs whose codes are still accepted (the current one included).
    pub accepted_epochs: BTreeSet<Epoch>,
}

impl Agency {
    /// Whether the agency has `capability`.
    pub fn can(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }
}

/// An affair (事務): the legal task an exchange serves.
#[derive(Debug, Clone)]
pub struct Affair {
    /// Immutable id.
    pub id: AffairId,
    /// Name as in the law.
    pub name: String,
    /// Where the law allows it.
    pub legal_basis: String,
}

/// One row of the table: requester may ask provider under affair.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The agency that asks.
    pub requester: AgencyId,
    /// The affair it acts under.
    pub affair: AffairId,
    /// The agency that answers.
    pub provider: AgencyId,
    /// The data items that may be asked for.
    pub items: BTreeSet<ItemId>,
    /// How long a sealed token stays valid, in seconds.
    pub token_lifetime: u64,
    /// Whether a seal may carry a non-disclosure date.
    pub non_disclosure: bool,
    /// How many days ahead of the seal a non-disclosure date may lie:
    /// `Some` exactly when `non_disclosure` is true (default
    /// [`DEFAULT_NON_DISCLOSURE_MAX_DAYS`]).
    pub non_disclosure_max_days: Option<u32>,
}

/// The SHA-256 of the policy file, as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyVersion(String);

impl PolicyVersion {
    /// The version text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

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

/// Why an exchange is not allowed. The message names the missing rule or
/// capability, which is policy, not personal data.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Denied {
    /// The agency is not in the policy.
    #[error("agency {0} is not in the policy")]
    UnknownAgency(AgencyId),
    /// No rule names this triple.
    #[error("no rule lets {requester} ask {provider} under affair {affair}")]
    NoRule {
        /// Who asked.
        requester: AgencyId,
        /// Under which affair.
        affair: AffairId,
        /// Whom.
        provider: AgencyId,
    },
    /// The rule exists but does not list an item.
    #[error(
        "the rule for {requester} → {provider} under {affair} does not include data item {item}"
    )]
    ItemNotAllowed {
        /// Who asked.
        requester: AgencyId,
        /// Under which affair.
        affair: AffairId,
        /// Whom.
        provider: AgencyId,
        /// The item asked for.
        item: ItemId,
    },
    /// The rule does not allow a non-disclosure date.
    #[error(
        "the rule for {requester} → {provider} under {affair} does not allow a non-disclosure date"
    )]
    NonDisclosureNotAllowed {
        /// Who asked.
        requester: AgencyId,
        /// Under which affair.
        affair: AffairId,
        /// Whom.
        provider: AgencyId,
    },
    /// The agency lacks a capability.
    #[error("agency {agency} does not have the {capability} capability")]
    MissingCapability {
        /// The agency.
        agency: AgencyId,
        /// What it lacks.
        capability: Capability,
    },
}

/// A parsed, consistent policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: PolicyVersion,
    agencies: BTreeMap<AgencyId, Agency>,
    affairs: BTreeMap<AffairId, Affair>,
    rules: HashMap<(AgencyId, AffairId, AgencyId), Rule>,
    certificates: HashMap<String, AgencyId>,
}

impl Policy {
    /// Parses and checks a policy file's text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let version = PolicyVersion(hex::encode(&Sha256::digest(text.as_bytes())));
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

    /// The version (SHA-256 of the file).
    pub fn version(&self) -> &PolicyVersion {
        &self.version
    }

    /// The agency with this id.
    pub fn agency(&self, id: &AgencyId) -> Result<&Agency, Denied> {
        self.agencies
            .get(id)
            .ok_or_else(|| Denied::UnknownAgency(id.clone()))
    }

    /// The agency a client certificate identity acts as.
    pub fn agency_for_certificate(&self, identity: &str) -> Option<&Agency> {
        self.certificates
            .get(identity)
            .and_then(|id| self.agencies.get(id))
    }

    /// All agencies, by id.
    pub fn agencies(&self) -> impl Iterator<Item = &Agency> {
        self.agencies.values()
    }

    /// All affairs, by id.
    pub fn affairs(&self) -> impl Iterator<Item = &Affair> {
        self.affairs.values()
    }

    /// All rules, in no particular order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// The affair with this id.
    pub fn affair(&self, id: &AffairId) -> Option<&Affair> {
        self.affairs.get(id)
    }

    /// Checks an agency's capability.
    pub fn require(&self, agency: &AgencyId, capability: Capability) -> Result<&Agency, Denied> {
        let found = self.agency(agency)?;
        if found.can(capability) {
            Ok(found)
        } else {
            Err(Denied::MissingCapability {
                agency: agency.clone(),
                capability,
            })
        }
    }

    /// The rule allowing `requester` to ask `provider` under `affair` for
    /// `items` (with a non-disclosure date if `non_disclosure`).
    pub fn authorize(
        &self,
        requester: &AgencyId,
        affair: &AffairId,
        provider: &AgencyId,
        items: &[ItemId],
        non_disclosure: bool,
    ) -> Result<&Rule, Denied> {
        let key = (requester.clone(), affair.clone(), provider.clone());
        let rule = self.rules.get(&key).ok_or_else(|| Denied::NoRule {
            requester: requester.clone(),
            affair: affair.clone(),
            provider: provider.clone(),
        })?;
        if let Some(item) = items.iter().find(|item| !rule.items.contains(*item)) {
            return Err(Denied::ItemNotAllowed {
                requester: requester.clone(),
                affair: affair.clone(),
                provider: provider.clone(),
                item: item.clone(),
            });
        }
        if non_disclosure && !rule.non_disclosure {
            return Err(Denied::NonDisclosureNotAllowed {
                requester: requester.clone(),
                affair: affair.clone(),
                provider: provider.clone(),
            });
        }
        Ok(rule)
    }

    /// The longest token lifetime of any rule, in seconds: tokens sealed in
    /// key windows older than this can no longer be valid.
    pub fn longest_token_lifetime(&self) -> u64 {
        self.rules
            .values()
            .map(|rule| rule.token_lifetime)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let policy = Policy::parse(GOOD).unwrap();
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
        let pension = ItemId::new("pension").unwrap();
        assert!(matches!(
            policy.authorize(&mhlw, &affair, &shinjuku, &[pension], false),
            Err(Denied::ItemNotAllowed { .. })
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
        assert_eq!(policy.agency(&mhlw).unwrap().accepted_epochs.len(), 2);
        assert_eq!(policy.longest_token_lifetime(), 3600);
    }

    #[test]
    fn the_version_changes_with_the_file() {
        let a = Policy::parse(GOOD).unwrap();
        let b = Policy::parse(&format!("{GOOD}\n# comment\n")).unwrap();
        assert_ne!(a.version(), b.version());
    }
}
