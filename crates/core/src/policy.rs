//! The exchange policy: 別表第二 (the My Number Act's table of who may ask
//! whom for what) as data.
//!
//! A policy lists agencies, affairs and rules. Deny by default: a seal is
//! allowed only if a rule names that requester, affair and provider, and
//! only for data items the rule lists. [`Policy::new`] accepts only an
//! internally consistent policy. The policy's version is the SHA-256 of the
//! file it came from, so every response and audit record can say which
//! table it was decided under.
//!
//! This module is the model. Its file form is TOML, read (with every
//! problem located by line) in the `fugo` package's `policy` module:
//!
//! ```toml
//! [[agency]]
//! id = "city-shinjuku"
//! name = "Shinjuku City"
//! certificates = ["city-shinjuku"]     # client certificate identities
//! capabilities = ["derive", "reidentify"]
//! epoch = 1                            # current key epoch
//! accepted_epochs = [1]                # epochs still accepted on input
//! # or, with key generations and epoch states (SPEC §11):
//! # epochs = [{ epoch = 1, generation = 1, state = "rekey-only" },
//! #           { epoch = 2, generation = 2, state = "current" }]
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::agency::{AffairId, AgencyId, Epoch, ItemId};
use crate::generation::Generation;
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
    /// Record that a person's My Number was re-issued (old → new): the
    /// issuing authority's role (J-LIS).
    Reissue,
    /// Suspend a person (deceased, removed from the register, fraud hold)
    /// and lift it.
    Suspend,
}

impl Capability {
    /// The capability named `text` in a policy file, if any.
    pub fn from_name(text: &str) -> Option<Self> {
        match text {
            "derive" => Some(Capability::Derive),
            "reidentify" => Some(Capability::Reidentify),
            "disclose" => Some(Capability::Disclose),
            "reissue" => Some(Capability::Reissue),
            "suspend" => Some(Capability::Suspend),
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
            Capability::Reissue => "reissue",
            Capability::Suspend => "suspend",
        })
    }
}

/// Where an epoch of an agency is in its life. The order is the one-way
/// order of the store's high-water mark: an epoch only moves forward
/// (current → accepted → rekey-only → destroyed); a new epoch may start as
/// current or accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EpochState {
    /// New codes are made in it; one per agency.
    Current,
    /// Its codes work everywhere; derive and redeem make them when named.
    Accepted,
    /// Its codes open only in Rekey (quota'd, audited), to move people over.
    RekeyOnly,
    /// Its codes open nowhere (FAILED_PRECONDITION naming the epoch).
    Destroyed,
}

impl EpochState {
    /// Every state, in life order.
    pub const ALL: [EpochState; 4] = [
        EpochState::Current,
        EpochState::Accepted,
        EpochState::RekeyOnly,
        EpochState::Destroyed,
    ];

    /// The policy file's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            EpochState::Current => "current",
            EpochState::Accepted => "accepted",
            EpochState::RekeyOnly => "rekey-only",
            EpochState::Destroyed => "destroyed",
        }
    }

    /// The state of a policy file name.
    pub fn from_name(text: &str) -> Option<Self> {
        EpochState::ALL.into_iter().find(|s| s.name() == text)
    }

    /// A number for the store's high-water mark: later states are larger.
    /// (Current and accepted both count as "in use": a current epoch may
    /// become accepted and an accepted one current again, e.g. rolling a
    /// rotation back before anyone lost anything.)
    pub fn rank(self) -> u8 {
        match self {
            EpochState::Current | EpochState::Accepted => 0,
            EpochState::RekeyOnly => 1,
            EpochState::Destroyed => 2,
        }
    }

    /// The state of that rank's first name (for messages).
    pub fn of_rank(rank: u8) -> Self {
        match rank {
            0 => EpochState::Accepted,
            1 => EpochState::RekeyOnly,
            _ => EpochState::Destroyed,
        }
    }

    /// Whether codes of this state work in derive, seal, redeem, reidentify.
    pub fn is_usable(self) -> bool {
        matches!(self, EpochState::Current | EpochState::Accepted)
    }
}

impl fmt::Display for EpochState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One epoch of an agency: the master-key generation its codes are made
/// under, and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochBinding {
    /// The generation of K_agency(a, e) and of the handles behind its codes.
    pub generation: Generation,
    /// Where the epoch is in its life.
    pub state: EpochState,
}

/// The epoch table of the old policy form (`epoch` and `accepted_epochs`):
/// every epoch in generation 1, the current one current, the rest accepted.
pub fn epochs_of_generation_one(
    current: Epoch,
    accepted: &BTreeSet<Epoch>,
) -> BTreeMap<Epoch, EpochBinding> {
    accepted
        .iter()
        .chain([&current])
        .map(|epoch| {
            let state = if *epoch == current {
                EpochState::Current
            } else {
                EpochState::Accepted
            };
            let binding = EpochBinding {
                generation: Generation::FIRST,
                state,
            };
            (*epoch, binding)
        })
        .collect()
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
    /// The epoch new codes are made in (the one in state current).
    pub epoch: Epoch,
    /// Every epoch the policy knows for this agency, bound to a generation
    /// and in a state; epochs not listed are unknown (retired long ago).
    pub epochs: BTreeMap<Epoch, EpochBinding>,
    /// How much it may do per second and per day.
    pub quotas: Quotas,
}

impl Agency {
    /// Whether the agency has `capability`.
    pub fn can(&self, capability: Capability) -> bool {
        self.capabilities.contains(&capability)
    }

    /// The binding of `epoch`, if the policy lists it.
    pub fn binding(&self, epoch: Epoch) -> Option<EpochBinding> {
        self.epochs.get(&epoch).copied()
    }

    /// Whether codes of `epoch` work in every operation (current or
    /// accepted).
    pub fn accepts(&self, epoch: Epoch) -> bool {
        self.binding(epoch).is_some_and(|b| b.state.is_usable())
    }

    /// The epochs whose codes work everywhere (current and accepted).
    pub fn accepted_epochs(&self) -> impl Iterator<Item = Epoch> + '_ {
        self.epochs
            .iter()
            .filter(|(_, b)| b.state.is_usable())
            .map(|(e, _)| *e)
    }

    /// The generation of the current epoch.
    pub fn current_generation(&self) -> Generation {
        self.binding(self.epoch)
            .map_or(Generation::FIRST, |b| b.generation)
    }
}

/// What a quota counts: the four exchange operations and `Migrate`, in
/// items, and the reads of the log (the portal's `Disclose`, and `ReadCopy`
/// pages), in calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metered {
    /// My Numbers turned into codes.
    Derive,
    /// Codes sealed into tokens.
    Seal,
    /// Tokens redeemed.
    Redeem,
    /// Codes turned back into My Numbers.
    Reidentify,
    /// Disclosure pages and copy pages read from the audit trail.
    Disclose,
    /// A merged agency's codes converted into the surviving agency's.
    Migrate,
    /// Old codes turned into current-epoch codes (Rekey).
    Rekey,
}

impl Metered {
    /// Every metered operation, in the order of [`Quotas`].
    pub const ALL: [Metered; 7] = [
        Metered::Derive,
        Metered::Seal,
        Metered::Redeem,
        Metered::Reidentify,
        Metered::Disclose,
        Metered::Migrate,
        Metered::Rekey,
    ];

    /// Its name in the policy file, logs, metrics and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Metered::Derive => "derive",
            Metered::Seal => "seal",
            Metered::Redeem => "redeem",
            Metered::Reidentify => "reidentify",
            Metered::Disclose => "disclose",
            Metered::Migrate => "migrate",
            Metered::Rekey => "rekey",
        }
    }

    /// The operation named `text`, if any.
    pub fn from_name(text: &str) -> Option<Self> {
        Metered::ALL.into_iter().find(|m| m.name() == text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Metered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation's limits for one agency: a token bucket (`per_second`
/// refill, `burst` capacity) and a count per day (Japan Standard Time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Items (or reads) added to the bucket each second.
    pub per_second: u64,
    /// The bucket's size: the most one burst (and one batch) may take.
    pub burst: u64,
    /// Items (or reads) per day, from 00:00 JST.
    pub per_day: u64,
}

/// Bounds of a [`Limit`]'s fields that a policy may set.
pub const MAX_PER_SECOND: u64 = 100_000_000;
/// See [`MAX_PER_SECOND`].
pub const MAX_BURST: u64 = 1_300_000_000;
/// See [`MAX_PER_SECOND`]: ten times Japan's population.
pub const MAX_PER_DAY: u64 = 1_300_000_000;

/// The day limit of the exchange operations when the policy does not set
/// one: 4,000,000, a little above the population of Japan's largest
/// municipality (Yokohama, about 3.8 million), so a city can run its whole
/// population through once a day, while the 10^11 valid My Numbers would
/// take 25,000 days (D121).
pub const DEFAULT_ITEMS_PER_DAY: u64 = 4_000_000;
/// The refill rate of the exchange operations by default: a full
/// population batch of 3.8 million takes about three minutes.
pub const DEFAULT_ITEMS_PER_SECOND: u64 = 20_000;
/// The bucket of the exchange operations by default: twenty full batches
/// (`MAX_BATCH` = 10,000) at once.
pub const DEFAULT_ITEMS_BURST: u64 = 200_000;
/// Disclosure and copy pages per day by default.
pub const DEFAULT_READS_PER_DAY: u64 = 100_000;
/// Disclosure and copy pages per second by default.
pub const DEFAULT_READS_PER_SECOND: u64 = 50;
/// Disclosure and copy pages in one burst by default.
pub const DEFAULT_READS_BURST: u64 = 500;
/// The share of its daily limit at which an agency's crossing is logged as
/// a warning, in percent, by default.
pub const DEFAULT_WARN_PERCENT: u8 = 80;

/// An agency's limits, one per [`Metered`] operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas([Limit; 7]);

impl Quotas {
    /// The limit of `operation`.
    pub fn limit(&self, operation: Metered) -> Limit {
        self.0[operation.index()]
    }

    /// Sets the limit of `operation`.
    pub fn set(&mut self, operation: Metered, limit: Limit) {
        self.0[operation.index()] = limit;
    }
}

impl Default for Quotas {
    /// The defaults (D121): sized to a municipality's population.
    fn default() -> Self {
        let items = Limit {
            per_second: DEFAULT_ITEMS_PER_SECOND,
            burst: DEFAULT_ITEMS_BURST,
            per_day: DEFAULT_ITEMS_PER_DAY,
        };
        let reads = Limit {
            per_second: DEFAULT_READS_PER_SECOND,
            burst: DEFAULT_READS_BURST,
            per_day: DEFAULT_READS_PER_DAY,
        };
        Quotas([items, items, items, items, reads, items, items])
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

/// A merger (合併): `merged` joined `survivor`, which converts the merged
/// agency's codes into its own (`Migrate`). Agency ids are immutable (they
/// are inside the keys), so the merged agency stays in the policy; once
/// `retired`, it can no longer act (D212).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merger {
    /// The agency that ends.
    pub merged: AgencyId,
    /// The agency that takes its people over.
    pub survivor: AgencyId,
    /// Whether the merged agency is retired: its certificates are refused
    /// and no rule or delegation may name it. `Migrate` keeps working.
    pub retired: bool,
}

/// A delegation (代理): `agent` may derive, seal and redeem on behalf of
/// each of `principals` (as 支払基金 and 国保中央会 do for insurers). The
/// results are the principal's codes; every record names both (D213).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The agency that acts.
    pub agent: AgencyId,
    /// The agencies it may act for.
    pub principals: BTreeSet<AgencyId>,
}

/// The SHA-256 of the policy file, as 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyVersion(String);

impl PolicyVersion {
    /// The version of a policy file with this text: its SHA-256.
    pub fn of_text(text: &str) -> Self {
        PolicyVersion(hex::encode(&Sha256::digest(text.as_bytes())))
    }

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

/// Why a set of agencies, affairs and rules is not a consistent policy.
/// The file reader reports the same problems with their lines first; this
/// is the model's own guard.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Inconsistent {
    /// The policy lists no agency.
    #[error("the policy lists no agency")]
    NoAgency,
    /// Two agencies, affairs or rules share an id (or a rule's triple).
    #[error("{what} {id} is listed twice")]
    Duplicate {
        /// "agency", "affair", "rule" or "certificate identity".
        what: &'static str,
        /// The repeated id.
        id: String,
    },
    /// An agency's current epoch is not among its accepted epochs.
    #[error("agency {0}: the current epoch must be among the accepted epochs")]
    EpochNotAccepted(AgencyId),
    /// Not exactly one epoch in state current, or it is not `epoch`.
    #[error("agency {0}: exactly one epoch must be in state current")]
    NotOneCurrent(AgencyId),
    /// An epoch bound to a destroyed generation that is not destroyed.
    #[error(
        "agency {agency}: epoch {epoch} is bound to generation {generation}, which is destroyed; the epoch must be destroyed too"
    )]
    DestroyedGeneration {
        /// The agency.
        agency: AgencyId,
        /// Its epoch.
        epoch: Epoch,
        /// The destroyed generation.
        generation: Generation,
    },
    /// A rule names an agency or affair the policy does not list.
    #[error("rule {requester} → {provider} under {affair}: names an unknown {missing}")]
    UnknownReference {
        /// The rule's requester.
        requester: AgencyId,
        /// Its affair.
        affair: AffairId,
        /// Its provider.
        provider: AgencyId,
        /// What is missing: "requester", "provider" or "affair".
        missing: &'static str,
    },
    /// A delegation naming an unknown or retired agency, an agent acting
    /// for itself, no principal, or an agent listed twice.
    #[error("delegation of {agent}: {reason}")]
    BadDelegation {
        /// The delegation's agent.
        agent: String,
        /// What is wrong.
        reason: String,
    },
    /// A merger naming an unknown agency, an agency merged into itself or
    /// twice, a retired survivor, or a retired agency still in a rule.
    #[error("merger of {merged}: {reason}")]
    BadMerger {
        /// The merged agency.
        merged: String,
        /// What is wrong.
        reason: String,
    },
    /// A rule whose requester is its provider, with no item, or with a
    /// token lifetime outside 1 s to [`MAX_TOKEN_LIFETIME`].
    #[error("rule {requester} → {provider} under {affair}: {reason}")]
    BadRule {
        /// The rule's requester.
        requester: AgencyId,
        /// Its affair.
        affair: AffairId,
        /// Its provider.
        provider: AgencyId,
        /// What is wrong.
        reason: &'static str,
    },
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
    /// The provider or affair a request named is not in the policy. The
    /// value is not repeated: a caller may have typed anything there, a
    /// My Number included, and this message reaches logs and the audit
    /// trail (D152).
    #[error("the {field} named is not in the policy")]
    NotInPolicy {
        /// "provider" or "affair".
        field: &'static str,
    },
    /// A data item asked for is named by no rule of the policy (not
    /// repeated, as above).
    #[error("data item {position} (from 1) is not in the policy")]
    UnknownItem {
        /// 1-based position in the request's items.
        position: usize,
    },
    /// No delegation lets `agent` act for `principal` (both ids the policy
    /// knows; an unknown one is [`Denied::NotInPolicy`]).
    #[error("no delegation lets {agent} act on behalf of {principal}")]
    NotRepresented {
        /// The agency that asked.
        agent: AgencyId,
        /// The agency it named.
        principal: AgencyId,
    },
    /// No merger lets `survivor` migrate `merged`'s codes.
    #[error("no merger lets {survivor} migrate the codes of {merged}")]
    NoMerger {
        /// The agency that asked.
        survivor: AgencyId,
        /// The agency it named.
        merged: AgencyId,
    },
    /// The agency is retired: it was merged into `survivor`.
    #[error("agency {agency} is retired: it was merged into {survivor}")]
    Retired {
        /// The retired agency.
        agency: AgencyId,
        /// The agency it was merged into.
        survivor: AgencyId,
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
    warn_percent: u8,
    /// Agent → the agencies it may act for.
    delegations: BTreeMap<AgencyId, BTreeSet<AgencyId>>,
    /// Merged agency → its merger.
    mergers: BTreeMap<AgencyId, Merger>,
    destroyed_generations: BTreeSet<Generation>,
}

impl Policy {
    /// A policy from its parts, if they are consistent: unique ids and
    /// certificate identities, current epochs accepted, rules that name
    /// listed agencies and affairs, at least one item, a requester that is
    /// not the provider, and a lifetime within [`MAX_TOKEN_LIFETIME`].
    pub fn new(
        version: PolicyVersion,
        agencies: Vec<Agency>,
        affairs: Vec<Affair>,
        rules: Vec<Rule>,
    ) -> Result<Self, Inconsistent> {
        if agencies.is_empty() {
            return Err(Inconsistent::NoAgency);
        }
        let duplicate = |what, id: &dyn fmt::Display| Inconsistent::Duplicate {
            what,
            id: id.to_string(),
        };
        let mut by_id = BTreeMap::new();
        let mut certificates = HashMap::new();
        for agency in agencies {
            let currents: Vec<Epoch> = agency
                .epochs
                .iter()
                .filter(|(_, b)| b.state == EpochState::Current)
                .map(|(e, _)| *e)
                .collect();
            if !agency.epochs.contains_key(&agency.epoch) {
                return Err(Inconsistent::EpochNotAccepted(agency.id));
            }
            if currents != [agency.epoch] {
                return Err(Inconsistent::NotOneCurrent(agency.id));
            }
            for identity in &agency.certificates {
                if certificates
                    .insert(identity.clone(), agency.id.clone())
                    .is_some()
                {
                    return Err(duplicate("certificate identity", identity));
                }
            }
            if let Some(again) = by_id.insert(agency.id.clone(), agency) {
                return Err(duplicate("agency", &again.id));
            }
        }
        let mut affairs_by_id = BTreeMap::new();
        for affair in affairs {
            if let Some(again) = affairs_by_id.insert(affair.id.clone(), affair) {
                return Err(duplicate("affair", &again.id));
            }
        }
        let mut rules_by_key = HashMap::new();
        for rule in rules {
            let bad = |reason| Inconsistent::BadRule {
                requester: rule.requester.clone(),
                affair: rule.affair.clone(),
                provider: rule.provider.clone(),
                reason,
            };
            let unknown = |missing| Inconsistent::UnknownReference {
                requester: rule.requester.clone(),
                affair: rule.affair.clone(),
                provider: rule.provider.clone(),
                missing,
            };
            if !by_id.contains_key(&rule.requester) {
                return Err(unknown("requester"));
            }
            if !by_id.contains_key(&rule.provider) {
                return Err(unknown("provider"));
            }
            if !affairs_by_id.contains_key(&rule.affair) {
                return Err(unknown("affair"));
            }
            if rule.requester == rule.provider {
                return Err(bad("the requester cannot be the provider"));
            }
            if rule.items.is_empty() {
                return Err(bad("lists no data item"));
            }
            if rule.token_lifetime == 0 || rule.token_lifetime > MAX_TOKEN_LIFETIME {
                return Err(bad("token lifetime must be 1 second to 30 days"));
            }
            match (rule.non_disclosure, rule.non_disclosure_max_days) {
                (true, Some(days)) if (1..=NON_DISCLOSURE_MAX_DAYS_LIMIT).contains(&days) => {}
                (false, None) => {}
                _ => {
                    return Err(bad(
                        "a non-disclosure period of 1 to 3,653 days goes with non_disclosure = true only",
                    ));
                }
            }
            let key = (
                rule.requester.clone(),
                rule.affair.clone(),
                rule.provider.clone(),
            );
            if rules_by_key.insert(key, rule).is_some() {
                return Err(Inconsistent::Duplicate {
                    what: "rule",
                    id: "(requester, affair, provider)".to_owned(),
                });
            }
        }
        Ok(Policy {
            version,
            agencies: by_id,
            affairs: affairs_by_id,
            rules: rules_by_key,
            certificates,
            warn_percent: DEFAULT_WARN_PERCENT,
            delegations: BTreeMap::new(),
            mergers: BTreeMap::new(),
            destroyed_generations: BTreeSet::new(),
        })
    }

    /// This policy with `delegations` and `mergers`, if they are
    /// consistent with it: every agency they name is listed; an agent does
    /// not act for itself, names at least one principal and is listed
    /// once; an agency is merged once, not into itself, into a survivor
    /// that is not retired; and a retired agency is in no rule and no
    /// delegation.
    pub fn with_relations(
        mut self,
        delegations: Vec<Delegation>,
        mergers: Vec<Merger>,
    ) -> Result<Self, Inconsistent> {
        for merger in mergers {
            let bad = |reason: &str| Inconsistent::BadMerger {
                merged: merger.merged.to_string(),
                reason: reason.to_owned(),
            };
            if !self.agencies.contains_key(&merger.merged)
                || !self.agencies.contains_key(&merger.survivor)
            {
                return Err(bad("names an agency the policy does not list"));
            }
            if merger.merged == merger.survivor {
                return Err(bad("an agency cannot be merged into itself"));
            }
            if self.mergers.contains_key(&merger.merged) {
                return Err(bad("the agency is merged twice"));
            }
            self.mergers.insert(merger.merged.clone(), merger);
        }
        for merger in self.mergers.values() {
            if self.retired(&merger.survivor).is_some() {
                return Err(Inconsistent::BadMerger {
                    merged: merger.merged.to_string(),
                    reason: format!(
                        "the survivor {} is itself retired; name the agency it was merged into",
                        merger.survivor
                    ),
                });
            }
        }
        for rule in self.rules.values() {
            for named in [&rule.requester, &rule.provider] {
                if let Some(merger) = self.retired(named) {
                    return Err(Inconsistent::BadMerger {
                        merged: merger.merged.to_string(),
                        reason: "a retired agency cannot be in a rule".to_owned(),
                    });
                }
            }
        }
        for delegation in delegations {
            let bad = |reason: String| Inconsistent::BadDelegation {
                agent: delegation.agent.to_string(),
                reason,
            };
            if delegation.principals.is_empty() {
                return Err(bad("names no agency to act for".to_owned()));
            }
            if delegation.principals.contains(&delegation.agent) {
                return Err(bad("an agency cannot act for itself".to_owned()));
            }
            for named in std::iter::once(&delegation.agent).chain(&delegation.principals) {
                if !self.agencies.contains_key(named) {
                    return Err(bad(format!("names unknown agency {named}")));
                }
                if self.retired(named).is_some() {
                    return Err(bad(format!("names retired agency {named}")));
                }
            }
            if self.delegations.contains_key(&delegation.agent) {
                return Err(bad("the agent is listed twice".to_owned()));
            }
            self.delegations
                .insert(delegation.agent, delegation.principals);
        }
        Ok(self)
    }

    /// The merger that retired `agency`, if it is retired.
    pub fn retired(&self, agency: &AgencyId) -> Option<&Merger> {
        self.mergers.get(agency).filter(|merger| merger.retired)
    }

    /// All mergers, by merged agency.
    pub fn mergers(&self) -> impl Iterator<Item = &Merger> {
        self.mergers.values()
    }

    /// The agencies `agent` may act for (empty if none).
    pub fn principals_of(&self, agent: &AgencyId) -> impl Iterator<Item = &AgencyId> {
        self.delegations.get(agent).into_iter().flatten()
    }

    /// The agency `agent` acts for when it names `principal`: refused
    /// without repeating the value when the policy does not know it (the
    /// field is the caller's text), and when no delegation allows it.
    pub fn acting_for(&self, agent: &AgencyId, principal: &AgencyId) -> Result<&Agency, Denied> {
        let Some(found) = self.agencies.get(principal) else {
            return Err(Denied::NotInPolicy {
                field: "on_behalf_of",
            });
        };
        let allowed = self
            .delegations
            .get(agent)
            .is_some_and(|principals| principals.contains(principal));
        if !allowed {
            return Err(Denied::NotRepresented {
                agent: agent.clone(),
                principal: principal.clone(),
            });
        }
        Ok(found)
    }

    /// The merged agency whose codes `survivor` may migrate when it names
    /// `merged` (unknown values are not repeated, as above).
    pub fn merger(&self, survivor: &AgencyId, merged: &AgencyId) -> Result<&Agency, Denied> {
        let Some(found) = self.agencies.get(merged) else {
            return Err(Denied::NotInPolicy { field: "merged" });
        };
        match self.mergers.get(merged) {
            Some(merger) if merger.survivor == *survivor => Ok(found),
            _ => Err(Denied::NoMerger {
                survivor: survivor.clone(),
                merged: merged.clone(),
            }),
        }
    }

    /// Whether this policy may follow `previous` (at a reload or a start
    /// after it): agency ids are immutable (D211), so every agency of
    /// `previous` must still be listed, and a retired one stays retired.
    /// Each problem is one message.
    pub fn may_follow(&self, previous: &Policy) -> Result<(), Vec<String>> {
        self.keeps_agencies(
            previous
                .agencies
                .keys()
                .map(|id| (id.as_str(), previous.retired(id).is_some())),
        )
    }

    /// Whether this policy keeps every agency id of `listed` (id, retired)
    /// — what earlier policies in force listed — and keeps the retired ones
    /// retired (D211). Each problem is one message.
    pub fn keeps_agencies<'a>(
        &self,
        listed: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (id, retired) in listed {
            let listed = AgencyId::new(id).ok();
            let Some(agency) = listed.as_ref().and_then(|id| self.agencies.get(id)) else {
                problems.push(format!(
                    "agency {id} was listed by a policy in force and may not be removed or \
                     renamed (ids are inside the keys); change its name, or retire it with a \
                     [[merger]]"
                ));
                continue;
            };
            if retired && self.retired(&agency.id).is_none() {
                problems.push(format!(
                    "agency {id} was retired by a policy in force and stays retired"
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The same policy with `generations` destroyed: no epoch bound to one
    /// may be in another state than destroyed, and no token of one opens.
    pub fn with_destroyed_generations(
        mut self,
        generations: BTreeSet<Generation>,
    ) -> Result<Self, Inconsistent> {
        for agency in self.agencies.values() {
            for (epoch, binding) in &agency.epochs {
                if generations.contains(&binding.generation)
                    && binding.state != EpochState::Destroyed
                {
                    return Err(Inconsistent::DestroyedGeneration {
                        agency: agency.id.clone(),
                        epoch: *epoch,
                        generation: binding.generation,
                    });
                }
            }
        }
        self.destroyed_generations = generations;
        Ok(self)
    }

    /// The generations the policy says are destroyed.
    pub fn destroyed_generations(&self) -> &BTreeSet<Generation> {
        &self.destroyed_generations
    }

    /// Every generation an epoch that is not destroyed is bound to: the
    /// keyring must hold each.
    pub fn generations_in_use(&self) -> BTreeSet<Generation> {
        self.agencies
            .values()
            .flat_map(|a| a.epochs.values())
            .filter(|b| b.state != EpochState::Destroyed)
            .map(|b| b.generation)
            .collect()
    }

    /// This policy with quota warnings at `percent` (1 to 100) of a daily
    /// limit instead of [`DEFAULT_WARN_PERCENT`]; other values are clamped.
    pub fn with_warn_percent(mut self, percent: u8) -> Self {
        self.warn_percent = percent.clamp(1, 100);
        self
    }

    /// The share of a daily limit, in percent, at which crossing it is
    /// logged as a warning.
    pub fn warn_percent(&self) -> u8 {
        self.warn_percent
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
        // Values the policy does not know are refused without repeating
        // them; values it knows (its own ids) may be named.
        if !self.agencies.contains_key(provider) {
            return Err(Denied::NotInPolicy { field: "provider" });
        }
        if !self.affairs.contains_key(affair) {
            return Err(Denied::NotInPolicy { field: "affair" });
        }
        let key = (requester.clone(), affair.clone(), provider.clone());
        let rule = self.rules.get(&key).ok_or_else(|| Denied::NoRule {
            requester: requester.clone(),
            affair: affair.clone(),
            provider: provider.clone(),
        })?;
        if let Some(position) = items.iter().position(|item| !rule.items.contains(item)) {
            let item = &items[position];
            if !self.rules.values().any(|rule| rule.items.contains(item)) {
                return Err(Denied::UnknownItem {
                    position: position + 1,
                });
            }
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

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    fn agency(name: &str, certificate: &str) -> Agency {
        let epoch = Epoch::new(1).unwrap();
        Agency {
            id: id(name),
            name: name.to_owned(),
            certificates: vec![certificate.to_owned()],
            capabilities: BTreeSet::new(),
            epoch,
            epochs: epochs_of_generation_one(epoch, &BTreeSet::new()),
            quotas: Quotas::default(),
        }
    }

    fn rule(requester: &str, provider: &str, lifetime: u64) -> Rule {
        Rule {
            requester: id(requester),
            affair: AffairId::new("health").unwrap(),
            provider: id(provider),
            items: BTreeSet::from([ItemId::new("local-tax").unwrap()]),
            token_lifetime: lifetime,
            non_disclosure: false,
            non_disclosure_max_days: None,
        }
    }

    fn affair() -> Affair {
        Affair {
            id: AffairId::new("health").unwrap(),
            name: "health insurance".to_owned(),
            legal_basis: "table 2".to_owned(),
        }
    }

    fn build(agencies: Vec<Agency>, rules: Vec<Rule>) -> Result<Policy, Inconsistent> {
        Policy::new(PolicyVersion::of_text(""), agencies, vec![affair()], rules)
    }

    #[test]
    fn the_model_refuses_what_the_file_reader_would_have_located() {
        let two = || vec![agency("mhlw", "mhlw"), agency("nta", "nta")];
        assert!(build(two(), vec![rule("mhlw", "nta", 60)]).is_ok());
        assert_eq!(build(vec![], vec![]).unwrap_err(), Inconsistent::NoAgency);
        assert!(matches!(
            build(vec![agency("mhlw", "x"), agency("nta", "x")], vec![]),
            Err(Inconsistent::Duplicate {
                what: "certificate identity",
                ..
            })
        ));
        assert!(matches!(
            build(two(), vec![rule("mhlw", "moj", 60)]),
            Err(Inconsistent::UnknownReference {
                missing: "provider",
                ..
            })
        ));
        assert!(matches!(
            build(two(), vec![rule("mhlw", "mhlw", 60)]),
            Err(Inconsistent::BadRule { .. })
        ));
        assert!(matches!(
            build(two(), vec![rule("mhlw", "nta", MAX_TOKEN_LIFETIME + 1)]),
            Err(Inconsistent::BadRule { .. })
        ));
        let mut secret = rule("mhlw", "nta", 60);
        secret.non_disclosure_max_days = Some(30);
        assert!(matches!(
            build(two(), vec![secret.clone()]),
            Err(Inconsistent::BadRule { .. })
        ));
        secret.non_disclosure = true;
        assert!(build(two(), vec![secret.clone()]).is_ok());
        secret.non_disclosure_max_days = Some(NON_DISCLOSURE_MAX_DAYS_LIMIT + 1);
        assert!(matches!(
            build(two(), vec![secret]),
            Err(Inconsistent::BadRule { .. })
        ));
        let mut drifting = agency("mhlw", "mhlw");
        drifting.epochs.clear();
        assert!(matches!(
            build(vec![drifting], vec![]),
            Err(Inconsistent::EpochNotAccepted(_))
        ));
    }

    /// One current epoch per agency, and it is `epoch`; an epoch bound to a
    /// destroyed generation must be destroyed.
    #[test]
    fn epoch_states_are_consistent() {
        let two = Generation::new(2).unwrap();
        let bound = |generation, state| EpochBinding { generation, state };
        let mut rotating = agency("mhlw", "mhlw");
        rotating.epoch = Epoch::new(2).unwrap();
        rotating.epochs = BTreeMap::from([
            (
                Epoch::new(1).unwrap(),
                bound(Generation::FIRST, EpochState::RekeyOnly),
            ),
            (Epoch::new(2).unwrap(), bound(two, EpochState::Current)),
        ]);
        let policy = build(vec![rotating.clone()], vec![]).unwrap();
        let found = policy.agency(&id("mhlw")).unwrap();
        assert_eq!(found.current_generation(), two);
        assert!(!found.accepts(Epoch::new(1).unwrap()));
        assert_eq!(
            found.accepted_epochs().collect::<Vec<_>>(),
            [Epoch::new(2).unwrap()]
        );
        assert_eq!(
            policy.generations_in_use(),
            BTreeSet::from([Generation::FIRST, two])
        );
        assert!(matches!(
            policy.clone().with_destroyed_generations(BTreeSet::from([Generation::FIRST])),
            Err(Inconsistent::DestroyedGeneration { epoch, .. }) if epoch.get() == 1
        ));
        let mut destroyed = rotating.clone();
        destroyed.epochs.insert(
            Epoch::new(1).unwrap(),
            bound(Generation::FIRST, EpochState::Destroyed),
        );
        let policy = build(vec![destroyed], vec![])
            .unwrap()
            .with_destroyed_generations(BTreeSet::from([Generation::FIRST]))
            .unwrap();
        assert_eq!(policy.generations_in_use(), BTreeSet::from([two]));
        let mut two_current = rotating;
        two_current.epochs.insert(
            Epoch::new(1).unwrap(),
            bound(Generation::FIRST, EpochState::Current),
        );
        assert!(matches!(
            build(vec![two_current], vec![]),
            Err(Inconsistent::NotOneCurrent(_))
        ));
        assert_eq!(
            EpochState::from_name("rekey-only"),
            Some(EpochState::RekeyOnly)
        );
        assert!(EpochState::Accepted.rank() < EpochState::RekeyOnly.rank());
    }

    #[test]
    fn a_refusal_never_repeats_a_value_the_policy_does_not_know() {
        let policy = build(
            vec![agency("mhlw", "mhlw"), agency("nta", "nta")],
            vec![rule("mhlw", "nta", 60)],
        )
        .unwrap();
        let number = "123456789018";
        let health = AffairId::new("health").unwrap();
        let tax = ItemId::new("local-tax").unwrap();
        let refusals = [
            policy.authorize(
                &id("mhlw"),
                &health,
                &id(number),
                std::slice::from_ref(&tax),
                false,
            ),
            policy.authorize(
                &id("mhlw"),
                &AffairId::new(number).unwrap(),
                &id("nta"),
                std::slice::from_ref(&tax),
                false,
            ),
            policy.authorize(
                &id("mhlw"),
                &health,
                &id("nta"),
                &[tax.clone(), ItemId::new(number).unwrap()],
                false,
            ),
        ];
        let shown: Vec<String> = refusals
            .iter()
            .map(|refusal| refusal.as_ref().unwrap_err().to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "the provider named is not in the policy",
                "the affair named is not in the policy",
                "data item 2 (from 1) is not in the policy",
            ]
        );
        // Ids the policy knows are named, as before.
        assert_eq!(
            policy
                .authorize(&id("nta"), &health, &id("mhlw"), &[tax], false)
                .unwrap_err()
                .to_string(),
            "no rule lets nta ask mhlw under affair health"
        );
    }

    #[test]
    fn the_version_is_the_sha256_of_the_text() {
        assert_eq!(
            PolicyVersion::of_text("").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
