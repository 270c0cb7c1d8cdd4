//! Turning a policy file's raw TOML into a checked [`Policy`]: every
//! problem is collected with its line, so one run of `fugo policy check`
//! names them all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

use super::{
    Affair, Agency, Capability, DEFAULT_NON_DISCLOSURE_MAX_DAYS, DEFAULT_WARN_PERCENT, Delegation,
    EpochBinding, EpochState, MAX_BURST, MAX_PER_DAY, MAX_PER_SECOND, MAX_TOKEN_LIFETIME, Merger,
    Metered, NON_DISCLOSURE_MAX_DAYS_LIMIT, Policy, PolicyError, PolicyVersion, Problem, Quotas,
    Rule, epochs_of_generation_one,
};
use crate::agency::{AffairId, AgencyId, Epoch, ItemId};
use crate::generation::Generation;

/// Longest certificate identity, in characters: 64, the X.520 upper bound
/// for a Common Name.
pub const MAX_IDENTITY_LEN: usize = 64;

/// Why a certificate identity is refused. Identities name client
/// certificates and, for `fugo dev-certs` and dev mode, files; so they are
/// kept to a charset that is a safe file name everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Nothing at all.
    #[error("is empty")]
    Empty,
    /// Over [`MAX_IDENTITY_LEN`] characters.
    #[error("is longer than {MAX_IDENTITY_LEN} characters")]
    TooLong,
    /// A `/` or `\`.
    #[error("contains a path separator")]
    Separator,
    /// `..` anywhere.
    #[error("contains '..'")]
    DotDot,
    /// A control character (newline, NUL, escape, …).
    #[error("contains a control character")]
    Control,
    /// A character outside the allowed set.
    #[error("contains {0:?}; allowed are A-Z a-z 0-9 and . - _ @")]
    Character(char),
    /// Starts with something other than a letter or digit.
    #[error("must start with a letter or a digit")]
    Start,
}

/// Checks a certificate identity: 1 to 64 characters of `A-Z a-z 0-9 . - _
/// @`, starting with a letter or digit, without `..`.
pub fn check_certificate_identity(identity: &str) -> Result<(), IdentityError> {
    if identity.is_empty() {
        return Err(IdentityError::Empty);
    }
    if identity.chars().count() > MAX_IDENTITY_LEN {
        return Err(IdentityError::TooLong);
    }
    if let Some(c) = identity
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@')))
    {
        return Err(match c {
            '/' | '\\' => IdentityError::Separator,
            c if c.is_control() => IdentityError::Control,
            c => IdentityError::Character(c),
        });
    }
    if identity.contains("..") {
        return Err(IdentityError::DotDot);
    }
    if !identity.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(IdentityError::Start);
    }
    Ok(())
}

/// An identity for a message: escaped and cut short, since it is not valid.
fn shown_identity(identity: &str) -> String {
    let escaped: String = identity.escape_debug().collect();
    match escaped.char_indices().nth(MAX_IDENTITY_LEN) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    }
}

/// 1-based line of byte offset `at` in `text`.
pub(super) fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    #[serde(default)]
    agency: Vec<Spanned<RawAgency>>,
    #[serde(default)]
    affair: Vec<Spanned<RawAffair>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default)]
    quota: Option<RawQuotaDefaults>,
    #[serde(default)]
    delegation: Vec<Spanned<RawDelegation>>,
    #[serde(default)]
    merger: Vec<Spanned<RawMerger>>,
    /// Master-key generations whose keys are destroyed (SPEC §11).
    #[serde(default)]
    destroyed_generations: Option<Spanned<Vec<Spanned<i64>>>>,
}

/// A `[[delegation]]`: an agent and the agencies it acts for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelegation {
    agent: Spanned<String>,
    on_behalf_of: Spanned<Vec<Spanned<String>>>,
}

/// A `[[merger]]`: the merged agency, its survivor, and whether it is
/// retired yet.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMerger {
    merged: Spanned<String>,
    into: Spanned<String>,
    #[serde(default)]
    retired: bool,
}

/// The policy's `[quota]` table: defaults for every agency.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotaDefaults {
    #[serde(default)]
    warn_percent: Option<Spanned<i64>>,
    #[serde(default)]
    derive: Option<RawLimit>,
    #[serde(default)]
    seal: Option<RawLimit>,
    #[serde(default)]
    redeem: Option<RawLimit>,
    #[serde(default)]
    reidentify: Option<RawLimit>,
    #[serde(default)]
    disclose: Option<RawLimit>,
    #[serde(default)]
    migrate: Option<RawLimit>,
    rekey: Option<RawLimit>,
}

/// An agency's `quota` table: what it changes of the defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    #[serde(default)]
    derive: Option<RawLimit>,
    #[serde(default)]
    seal: Option<RawLimit>,
    #[serde(default)]
    redeem: Option<RawLimit>,
    #[serde(default)]
    reidentify: Option<RawLimit>,
    #[serde(default)]
    disclose: Option<RawLimit>,
    #[serde(default)]
    migrate: Option<RawLimit>,
    rekey: Option<RawLimit>,
}

impl RawQuotaDefaults {
    fn limits(&self) -> [(Metered, Option<&RawLimit>); 7] {
        [
            (Metered::Derive, self.derive.as_ref()),
            (Metered::Seal, self.seal.as_ref()),
            (Metered::Redeem, self.redeem.as_ref()),
            (Metered::Reidentify, self.reidentify.as_ref()),
            (Metered::Disclose, self.disclose.as_ref()),
            (Metered::Migrate, self.migrate.as_ref()),
            (Metered::Rekey, self.rekey.as_ref()),
        ]
    }
}

impl RawQuotas {
    fn limits(&self) -> [(Metered, Option<&RawLimit>); 7] {
        [
            (Metered::Derive, self.derive.as_ref()),
            (Metered::Seal, self.seal.as_ref()),
            (Metered::Redeem, self.redeem.as_ref()),
            (Metered::Reidentify, self.reidentify.as_ref()),
            (Metered::Disclose, self.disclose.as_ref()),
            (Metered::Migrate, self.migrate.as_ref()),
            (Metered::Rekey, self.rekey.as_ref()),
        ]
    }
}

/// One operation's limits; a field left out keeps the default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    #[serde(default)]
    per_second: Option<Spanned<i64>>,
    #[serde(default)]
    burst: Option<Spanned<i64>>,
    #[serde(default)]
    per_day: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgency {
    id: Spanned<String>,
    name: Spanned<String>,
    #[serde(default)]
    certificates: Vec<Spanned<String>>,
    #[serde(default)]
    capabilities: Vec<Spanned<String>>,
    #[serde(default)]
    epoch: Option<Spanned<i64>>,
    #[serde(default)]
    accepted_epochs: Option<Vec<Spanned<i64>>>,
    /// The generations form: every epoch with its generation and state.
    #[serde(default)]
    epochs: Option<Spanned<Vec<Spanned<RawEpoch>>>>,
    #[serde(default)]
    quota: Option<RawQuotas>,
}

/// One entry of an agency's `epochs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEpoch {
    epoch: Spanned<i64>,
    generation: Spanned<i64>,
    state: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAffair {
    id: Spanned<String>,
    name: Spanned<String>,
    legal_basis: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    requester: Spanned<String>,
    affair: Spanned<String>,
    provider: Spanned<String>,
    items: Spanned<Vec<Spanned<String>>>,
    token_lifetime_seconds: Spanned<i64>,
    #[serde(default)]
    non_disclosure: bool,
    #[serde(default)]
    non_disclosure_max_days: Option<Spanned<i64>>,
}

/// Collects problems while turning raw entries into checked ones.
pub(super) struct Checker<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl<'t> Checker<'t> {
    pub(super) fn new(text: &'t str) -> Self {
        Checker {
            text,
            problems: Vec::new(),
        }
    }

    fn report<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: line_of(self.text, at.span().start),
            message: message.into(),
        });
    }

    fn id<T, E: fmt::Display>(
        &mut self,
        at: &Spanned<String>,
        parse: impl Fn(&str) -> Result<T, E>,
    ) -> Option<T> {
        match parse(at.get_ref()) {
            Ok(id) => Some(id),
            Err(error) => {
                self.report(at, error.to_string());
                None
            }
        }
    }

    fn text_field(&mut self, at: &Spanned<String>, what: &str) -> String {
        if at.get_ref().trim().is_empty() {
            self.report(at, format!("{what} is empty"));
        }
        at.get_ref().clone()
    }

    fn epoch(&mut self, at: &Spanned<i64>) -> Option<Epoch> {
        let epoch = u8::try_from(*at.get_ref())
            .ok()
            .and_then(|e| Epoch::new(e).ok());
        if epoch.is_none() {
            self.report(at, format!("epoch {} is outside 1 to 31", at.get_ref()));
        }
        epoch
    }

    /// An agency's current epoch and epoch table, from either form: the
    /// old `epoch` + `accepted_epochs` (all generation 1) or `epochs`
    /// (each with its generation and state, exactly one current).
    fn epoch_table(&mut self, entry: &RawAgency) -> Option<(Epoch, BTreeMap<Epoch, EpochBinding>)> {
        let agency = shown_identity(entry.id.get_ref());
        let Some(list) = &entry.epochs else {
            let Some(raw_epoch) = &entry.epoch else {
                self.report(
                    &entry.id,
                    format!("agency {agency}: give `epoch` (and `accepted_epochs`) or `epochs`"),
                );
                return None;
            };
            let epoch = self.epoch(raw_epoch);
            let accepted: Option<BTreeSet<Epoch>> = match &entry.accepted_epochs {
                None => epoch.map(|e| BTreeSet::from([e])),
                Some(list) => list.iter().map(|e| self.epoch(e)).collect(),
            };
            if let (Some(epoch), Some(accepted)) = (epoch, &accepted)
                && !accepted.contains(&epoch)
            {
                self.report(
                    raw_epoch,
                    format!("accepted_epochs must include the current epoch {epoch}"),
                );
            }
            let (epoch, accepted) = (epoch?, accepted?);
            return Some((epoch, epochs_of_generation_one(epoch, &accepted)));
        };
        if entry.epoch.is_some() || entry.accepted_epochs.is_some() {
            self.report(
                list,
                format!(
                    "agency {agency}: `epochs` replaces `epoch` and `accepted_epochs`; give one form"
                ),
            );
            return None;
        }
        let mut table = BTreeMap::new();
        let mut current = Vec::new();
        let mut complete = true;
        for raw in list.get_ref() {
            let raw = raw.get_ref();
            let epoch = self.epoch(&raw.epoch);
            let generation = u16::try_from(*raw.generation.get_ref())
                .ok()
                .and_then(|g| Generation::new(g).ok());
            if generation.is_none() {
                self.report(
                    &raw.generation,
                    format!(
                        "generation {} is outside 1 to 65535",
                        raw.generation.get_ref()
                    ),
                );
            }
            let state = EpochState::from_name(raw.state.get_ref());
            if state.is_none() {
                self.report(
                    &raw.state,
                    format!(
                        "unknown epoch state '{}' (known: current, accepted, rekey-only, destroyed)",
                        raw.state.get_ref().escape_debug()
                    ),
                );
            }
            let (Some(epoch), Some(generation), Some(state)) = (epoch, generation, state) else {
                complete = false;
                continue;
            };
            if table
                .insert(epoch, EpochBinding { generation, state })
                .is_some()
            {
                self.report(
                    &raw.epoch,
                    format!("agency {agency}: epoch {epoch} is listed twice"),
                );
            }
            if state == EpochState::Current {
                current.push(epoch);
            }
        }
        match current.as_slice() {
            [epoch] if complete => Some((*epoch, table)),
            // An entry was refused above: counting the rest says nothing.
            _ if !complete => None,
            _ => {
                self.report(
                    list,
                    format!(
                        "agency {agency}: exactly one epoch must be in state current ({} are)",
                        current.len()
                    ),
                );
                None
            }
        }
    }

    /// The policy's `destroyed_generations`.
    fn destroyed_generations(&mut self, raw: &RawPolicy) -> BTreeSet<Generation> {
        let mut out = BTreeSet::new();
        for raw in raw.destroyed_generations.iter().flat_map(|l| l.get_ref()) {
            match u16::try_from(*raw.get_ref())
                .ok()
                .and_then(|g| Generation::new(g).ok())
            {
                Some(generation) => {
                    out.insert(generation);
                }
                None => self.report(
                    raw,
                    format!("generation {} is outside 1 to 65535", raw.get_ref()),
                ),
            }
        }
        out
    }

    pub(super) fn check(
        mut self,
        raw: RawPolicy,
        version: PolicyVersion,
    ) -> Result<Policy, PolicyError> {
        let (defaults, warn_percent) = self.quota_defaults(raw.quota.as_ref());
        // A retired agency may list no certificate: it no longer acts.
        let retired: BTreeSet<String> = raw
            .merger
            .iter()
            .filter(|merger| merger.get_ref().retired)
            .map(|merger| merger.get_ref().merged.get_ref().clone())
            .collect();
        let agencies = self.agencies(&raw.agency, &defaults, &retired);
        let destroyed = self.destroyed_generations(&raw);
        for agency in agencies.values() {
            for (epoch, binding) in &agency.epochs {
                if destroyed.contains(&binding.generation) && binding.state != EpochState::Destroyed
                {
                    let at = raw
                        .agency
                        .iter()
                        .find(|a| a.get_ref().id.get_ref() == agency.id.as_str());
                    // Located at the epoch's entry (or the agency's id).
                    let entry = at
                        .and_then(|a| a.get_ref().epochs.as_ref())
                        .and_then(|list| {
                            list.get_ref()
                                .iter()
                                .find(|e| *e.get_ref().epoch.get_ref() == i64::from(epoch.get()))
                        });
                    let line_of_at = match (entry, at) {
                        (Some(entry), _) => Some(entry.span().start),
                        (None, Some(at)) => Some(at.get_ref().id.span().start),
                        (None, None) => None,
                    };
                    if let Some(start) = line_of_at {
                        self.problems.push(Problem {
                            line: line_of(self.text, start),
                            message: format!(
                                "agency {}: epoch {epoch} is bound to generation {}, which is destroyed; the epoch must be destroyed too",
                                agency.id, binding.generation
                            ),
                        });
                    }
                }
            }
        }
        let affairs = self.affairs(&raw.affair);
        let rules = self.rules(&raw.rule, &agencies, &affairs);
        let mergers = self.mergers(&raw.merger, &agencies);
        self.retired_in_rules(&raw.rule, &mergers);
        let delegations = self.delegations(&raw.delegation, &agencies, &mergers);
        let mut certificates = HashMap::new();
        for raw_agency in &raw.agency {
            for certificate in &raw_agency.get_ref().certificates {
                let owner = raw_agency.get_ref().id.get_ref().clone();
                if let Some(other) = certificates.insert(certificate.get_ref().clone(), owner) {
                    self.report(
                        certificate,
                        format!(
                            "certificate identity '{}' already belongs to agency {other}",
                            certificate.get_ref()
                        ),
                    );
                }
            }
        }
        if agencies.is_empty() && self.problems.is_empty() {
            self.problems.push(Problem {
                line: 0,
                message: "the policy lists no agency".to_owned(),
            });
        }
        if !self.problems.is_empty() {
            self.problems.sort_by_key(|problem| problem.line);
            return Err(PolicyError(self.problems));
        }
        // Every problem the model would refuse was located above; should the
        // two ever disagree, the model's word stands, without a line.
        Policy::new(
            version,
            agencies.into_values().collect(),
            affairs.into_values().collect(),
            rules.into_values().collect(),
        )
        .and_then(|policy| policy.with_relations(delegations, mergers))
        .map(|policy| policy.with_warn_percent(warn_percent))
        .and_then(|policy| policy.with_destroyed_generations(destroyed))
        .map_err(|inconsistent| {
            PolicyError(vec![Problem {
                line: 0,
                message: inconsistent.to_string(),
            }])
        })
    }

    /// One quota field: `None` (with a problem naming `what`) when outside
    /// 1 to `max`.
    fn quota_field(&mut self, at: &Spanned<i64>, what: &str, max: u64) -> Option<u64> {
        match u64::try_from(*at.get_ref()) {
            Ok(value) if (1..=max).contains(&value) => Some(value),
            _ => {
                self.report(at, format!("{what} {} is outside 1 to {max}", at.get_ref()));
                None
            }
        }
    }

    /// `base` with what `raw` sets, each field checked; `prefix` names the
    /// table in messages ("quota" or "agency mhlw: quota").
    fn quotas<'r>(
        &mut self,
        base: &Quotas,
        raw: impl IntoIterator<Item = (Metered, Option<&'r RawLimit>)>,
        prefix: &str,
    ) -> Quotas {
        let mut quotas = *base;
        for (operation, limit) in raw {
            let Some(limit) = limit else { continue };
            let mut value = quotas.limit(operation);
            let name = |field: &str| format!("{prefix}.{operation}.{field}");
            if let Some(at) = &limit.per_second
                && let Some(v) = self.quota_field(at, &name("per_second"), MAX_PER_SECOND)
            {
                value.per_second = v;
            }
            if let Some(at) = &limit.burst
                && let Some(v) = self.quota_field(at, &name("burst"), MAX_BURST)
            {
                value.burst = v;
            }
            if let Some(at) = &limit.per_day
                && let Some(v) = self.quota_field(at, &name("per_day"), MAX_PER_DAY)
            {
                value.per_day = v;
            }
            quotas.set(operation, value);
        }
        quotas
    }

    /// The `[quota]` table: every agency's defaults and the warning share.
    fn quota_defaults(&mut self, raw: Option<&RawQuotaDefaults>) -> (Quotas, u8) {
        let Some(raw) = raw else {
            return (Quotas::default(), DEFAULT_WARN_PERCENT);
        };
        let quotas = self.quotas(&Quotas::default(), raw.limits(), "quota");
        let warn = match &raw.warn_percent {
            None => DEFAULT_WARN_PERCENT,
            Some(at) => self
                .quota_field(at, "quota.warn_percent", 100)
                .and_then(|v| u8::try_from(v).ok())
                .unwrap_or(DEFAULT_WARN_PERCENT),
        };
        (quotas, warn)
    }

    fn agencies(
        &mut self,
        raw: &[Spanned<RawAgency>],
        defaults: &Quotas,
        retired: &BTreeSet<String>,
    ) -> BTreeMap<AgencyId, Agency> {
        let mut agencies = BTreeMap::new();
        for entry in raw {
            let entry = entry.get_ref();
            let id = self.id(&entry.id, AgencyId::new);
            let name = self.text_field(&entry.name, "agency name");
            let mut capabilities = BTreeSet::new();
            for capability in &entry.capabilities {
                match Capability::from_name(capability.get_ref()) {
                    Some(known) => {
                        capabilities.insert(known);
                    }
                    None => self.report(
                        capability,
                        format!(
                            "unknown capability '{}' (known: derive, reidentify, disclose, reissue, suspend)",
                            capability.get_ref()
                        ),
                    ),
                }
            }
            if entry.certificates.is_empty() && !retired.contains(entry.id.get_ref()) {
                self.report(&entry.id, "agency lists no certificate identity");
            }
            for certificate in &entry.certificates {
                if let Err(error) = check_certificate_identity(certificate.get_ref()) {
                    self.report(
                        certificate,
                        format!(
                            "agency {}: certificate identity '{}' {error}",
                            shown_identity(entry.id.get_ref()),
                            shown_identity(certificate.get_ref())
                        ),
                    );
                }
            }
            let quotas = match &entry.quota {
                None => *defaults,
                Some(raw) => {
                    let prefix = format!("agency {}: quota", shown_identity(entry.id.get_ref()));
                    self.quotas(defaults, raw.limits(), &prefix)
                }
            };
            let table = self.epoch_table(entry);
            let (Some(id), Some((epoch, epochs))) = (id, table) else {
                continue;
            };
            if agencies.contains_key(&id) {
                self.report(&entry.id, format!("agency {id} is defined twice"));
                continue;
            }
            let certificates = entry
                .certificates
                .iter()
                .map(|c| c.get_ref().clone())
                .collect();
            agencies.insert(
                id.clone(),
                Agency {
                    id,
                    name,
                    certificates,
                    capabilities,
                    epoch,
                    epochs,
                    quotas,
                },
            );
        }
        agencies
    }

    /// An agency named in a delegation or merger: known, else a problem
    /// naming `what` refers to it.
    fn listed_agency(
        &mut self,
        at: &Spanned<String>,
        agencies: &BTreeMap<AgencyId, Agency>,
        what: &str,
    ) -> Option<AgencyId> {
        let id = self.id(at, AgencyId::new)?;
        if agencies.contains_key(&id) {
            Some(id)
        } else {
            self.report(at, format!("{what} names unknown agency {id}"));
            None
        }
    }

    /// The `[[merger]]` entries (D212).
    fn mergers(
        &mut self,
        raw: &[Spanned<RawMerger>],
        agencies: &BTreeMap<AgencyId, Agency>,
    ) -> Vec<Merger> {
        let mut mergers: Vec<Merger> = Vec::new();
        for entry in raw {
            let entry = entry.get_ref();
            let merged = self.listed_agency(&entry.merged, agencies, "merger");
            let survivor = self.listed_agency(&entry.into, agencies, "merger");
            let (Some(merged), Some(survivor)) = (merged, survivor) else {
                continue;
            };
            if merged == survivor {
                self.report(&entry.into, "an agency cannot be merged into itself");
                continue;
            }
            if mergers.iter().any(|m| m.merged == merged) {
                self.report(&entry.merged, format!("agency {merged} is merged twice"));
                continue;
            }
            mergers.push(Merger {
                merged,
                survivor,
                retired: entry.retired,
            });
        }
        let retired: Vec<AgencyId> = mergers
            .iter()
            .filter(|m| m.retired)
            .map(|m| m.merged.clone())
            .collect();
        for (entry, merger) in raw.iter().filter_map(|entry| {
            let merged = AgencyId::new(entry.get_ref().merged.get_ref()).ok()?;
            mergers
                .iter()
                .find(|m| m.merged == merged)
                .map(|m| (entry, m))
        }) {
            if retired.contains(&merger.survivor) {
                self.report(
                    &entry.get_ref().into,
                    format!(
                        "the survivor {} is itself retired; name the agency it was merged into",
                        merger.survivor
                    ),
                );
            }
        }
        mergers
    }

    /// A retired agency may be in no rule.
    fn retired_in_rules(&mut self, raw: &[Spanned<RawRule>], mergers: &[Merger]) {
        for entry in raw {
            let entry = entry.get_ref();
            for at in [&entry.requester, &entry.provider] {
                if let Some(merger) = mergers
                    .iter()
                    .find(|m| m.retired && m.merged.as_str() == at.get_ref())
                {
                    self.report(
                        at,
                        format!(
                            "agency {} is retired (merged into {}): remove its rules",
                            merger.merged, merger.survivor
                        ),
                    );
                }
            }
        }
    }

    /// The `[[delegation]]` entries (D213).
    fn delegations(
        &mut self,
        raw: &[Spanned<RawDelegation>],
        agencies: &BTreeMap<AgencyId, Agency>,
        mergers: &[Merger],
    ) -> Vec<Delegation> {
        let retired = |id: &AgencyId| mergers.iter().any(|m| m.retired && m.merged == *id);
        let mut delegations: Vec<Delegation> = Vec::new();
        for entry in raw {
            let entry = entry.get_ref();
            let agent = self.listed_agency(&entry.agent, agencies, "delegation");
            let mut principals = BTreeSet::new();
            for principal in entry.on_behalf_of.get_ref() {
                let Some(id) = self.listed_agency(principal, agencies, "delegation") else {
                    continue;
                };
                if retired(&id) {
                    self.report(
                        principal,
                        format!("agency {id} is retired: no one acts for it"),
                    );
                } else if Some(&id) == agent.as_ref() {
                    self.report(principal, "an agency cannot act on behalf of itself");
                } else if !principals.insert(id.clone()) {
                    self.report(principal, format!("agency {id} is listed twice"));
                }
            }
            if entry.on_behalf_of.get_ref().is_empty() {
                self.report(&entry.on_behalf_of, "delegation names no agency to act for");
            }
            let Some(agent) = agent else { continue };
            if retired(&agent) {
                self.report(
                    &entry.agent,
                    format!("agency {agent} is retired: it cannot act"),
                );
                continue;
            }
            if delegations.iter().any(|d| d.agent == agent) {
                self.report(
                    &entry.agent,
                    format!(
                        "agency {agent} has a delegation already; list all its agencies in one"
                    ),
                );
                continue;
            }
            if !principals.is_empty() {
                delegations.push(Delegation { agent, principals });
            }
        }
        delegations
    }

    fn affairs(&mut self, raw: &[Spanned<RawAffair>]) -> BTreeMap<AffairId, Affair> {
        let mut affairs = BTreeMap::new();
        for entry in raw {
            let entry = entry.get_ref();
            let id = self.id(&entry.id, AffairId::new);
            let name = self.text_field(&entry.name, "affair name");
            let legal_basis = self.text_field(&entry.legal_basis, "legal basis");
            let Some(id) = id else { continue };
            if affairs.contains_key(&id) {
                self.report(&entry.id, format!("affair {id} is defined twice"));
                continue;
            }
            affairs.insert(
                id.clone(),
                Affair {
                    id,
                    name,
                    legal_basis,
                },
            );
        }
        affairs
    }

    fn known_agency(
        &mut self,
        at: &Spanned<String>,
        agencies: &BTreeMap<AgencyId, Agency>,
    ) -> Option<AgencyId> {
        let id = self.id(at, AgencyId::new)?;
        if agencies.contains_key(&id) {
            Some(id)
        } else {
            self.report(at, format!("rule names unknown agency {id}"));
            None
        }
    }

    /// A rule's `non_disclosure_max_days`: `Some(None)` when the rule
    /// allows no non-disclosure date, `None` (with a problem) when invalid.
    fn non_disclosure_max_days(&mut self, entry: &RawRule) -> Option<Option<u32>> {
        match (&entry.non_disclosure_max_days, entry.non_disclosure) {
            (None, false) => Some(None),
            (None, true) => Some(Some(DEFAULT_NON_DISCLOSURE_MAX_DAYS)),
            (Some(days), false) => {
                self.report(
                    days,
                    "non_disclosure_max_days needs non_disclosure = true in the same rule",
                );
                None
            }
            (Some(days), true) => match u32::try_from(*days.get_ref()) {
                Ok(valid) if (1..=NON_DISCLOSURE_MAX_DAYS_LIMIT).contains(&valid) => {
                    Some(Some(valid))
                }
                _ => {
                    self.report(
                        days,
                        format!(
                            "non_disclosure_max_days {} is outside 1 to {NON_DISCLOSURE_MAX_DAYS_LIMIT} (ten years)",
                            days.get_ref()
                        ),
                    );
                    None
                }
            },
        }
    }

    fn rules(
        &mut self,
        raw: &[Spanned<RawRule>],
        agencies: &BTreeMap<AgencyId, Agency>,
        affairs: &BTreeMap<AffairId, Affair>,
    ) -> HashMap<(AgencyId, AffairId, AgencyId), Rule> {
        let mut rules = HashMap::new();
        for spanned in raw {
            let entry = spanned.get_ref();
            let requester = self.known_agency(&entry.requester, agencies);
            let provider = self.known_agency(&entry.provider, agencies);
            let affair = self.id(&entry.affair, AffairId::new).and_then(|id| {
                if affairs.contains_key(&id) {
                    Some(id)
                } else {
                    self.report(&entry.affair, format!("rule names unknown affair {id}"));
                    None
                }
            });
            let mut items = BTreeSet::new();
            for item in entry.items.get_ref() {
                if let Some(id) = self.id(item, ItemId::new)
                    && !items.insert(id.clone())
                {
                    self.report(item, format!("data item {id} is listed twice"));
                }
            }
            if entry.items.get_ref().is_empty() {
                self.report(&entry.items, "rule lists no data item");
            }
            if entry.items.get_ref().len() > crate::token::MAX_ITEMS {
                self.report(&entry.items, "a rule lists at most 64 data items");
            }
            let lifetime = *entry.token_lifetime_seconds.get_ref();
            let lifetime = match u64::try_from(lifetime) {
                Ok(seconds) if (1..=MAX_TOKEN_LIFETIME).contains(&seconds) => Some(seconds),
                _ => {
                    self.report(
                        &entry.token_lifetime_seconds,
                        format!(
                            "token_lifetime_seconds {lifetime} is outside 1 to {MAX_TOKEN_LIFETIME} (30 days)"
                        ),
                    );
                    None
                }
            };
            let non_disclosure_max_days = self.non_disclosure_max_days(entry);
            let (
                Some(requester),
                Some(affair),
                Some(provider),
                Some(token_lifetime),
                Some(non_disclosure_max_days),
            ) = (
                requester,
                affair,
                provider,
                lifetime,
                non_disclosure_max_days,
            )
            else {
                continue;
            };
            if requester == provider {
                self.report(
                    &entry.provider,
                    "requester and provider are the same agency",
                );
                continue;
            }
            let key = (requester.clone(), affair.clone(), provider.clone());
            if rules.contains_key(&key) {
                self.report(
                    spanned,
                    format!("a rule for {requester} → {provider} under {affair} is defined twice"),
                );
                continue;
            }
            rules.insert(
                key,
                Rule {
                    requester,
                    affair,
                    provider,
                    items,
                    token_lifetime,
                    non_disclosure: entry.non_disclosure,
                    non_disclosure_max_days,
                },
            );
        }
        rules
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::super::tests::GOOD;
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_problem_is_named_with_its_line() {
        let bad = GOOD
            .replace("provider = \"city-shinjuku\"", "provider = \"city-minato\"")
            .replace("epoch = 2\n", "epoch = 3\n")
            .replace(
                "capabilities = [\"derive\"]",
                "capabilities = [\"derive\", \"fly\"]",
            )
            .replace(
                "token_lifetime_seconds = 3600",
                "token_lifetime_seconds = 0",
            );
        assert_eq!(
            problems(&bad),
            vec![
                "line 6: unknown capability 'fly' (known: derive, reidentify, disclose, reissue, suspend)",
                "line 7: accepted_epochs must include the current epoch 3",
                "line 25: rule names unknown agency city-minato",
                "line 27: token_lifetime_seconds 0 is outside 1 to 2592000 (30 days)",
            ]
        );
    }

    #[test]
    fn duplicates_and_shared_certificates_are_refused() {
        let twice = format!(
            "{GOOD}\n[[agency]]\nid = \"mhlw\"\nname = \"again\"\ncertificates = [\"mhlw\"]\nepoch = 1\n"
        );
        assert_eq!(
            problems(&twice),
            vec![
                "line 30: agency mhlw is defined twice",
                "line 32: certificate identity 'mhlw' already belongs to agency mhlw",
            ]
        );
        let rule_twice = format!(
            "{GOOD}\n[[rule]]\nrequester = \"mhlw\"\naffair = \"health-insurance-benefit\"\nprovider = \"city-shinjuku\"\nitems = [\"x\"]\ntoken_lifetime_seconds = 60\n"
        );
        let found = problems(&rule_twice);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with("is defined twice"), "{found:?}");
    }

    #[test]
    fn non_disclosure_has_a_checked_maximum_period() {
        let rule = |extra: &str| format!("{GOOD}{extra}");
        let policy = parse(&rule("")).unwrap();
        let only = policy.rules().next().unwrap();
        assert_eq!(only.non_disclosure_max_days, None);
        let policy = parse(&rule("non_disclosure = true\n")).unwrap();
        assert_eq!(
            policy.rules().next().unwrap().non_disclosure_max_days,
            Some(DEFAULT_NON_DISCLOSURE_MAX_DAYS)
        );
        let policy = parse(&rule(
            "non_disclosure = true\nnon_disclosure_max_days = 90\n",
        ))
        .unwrap();
        assert_eq!(
            policy.rules().next().unwrap().non_disclosure_max_days,
            Some(90)
        );
        assert_eq!(
            problems(&rule("non_disclosure_max_days = 90\n")),
            vec!["line 28: non_disclosure_max_days needs non_disclosure = true in the same rule"]
        );
        for bad in ["0", "-1", "3654", "99999999999"] {
            assert_eq!(
                problems(&rule(&format!(
                    "non_disclosure = true\nnon_disclosure_max_days = {bad}\n"
                ))),
                vec![format!(
                    "line 29: non_disclosure_max_days {bad} is outside 1 to 3653 (ten years)"
                )]
            );
        }
    }

    #[test]
    fn certificate_identities_must_be_safe_file_names() {
        for bad in [
            "../../etc/cron.d/x",
            "a/b",
            "a\\b",
            "..",
            "a..b",
            ".hidden",
            "-rf",
            "",
            "new\nline",
            "nul\0",
            "space name",
            "新宿",
        ] {
            assert!(check_certificate_identity(bad).is_err(), "{bad:?}");
        }
        let long = "a".repeat(MAX_IDENTITY_LEN + 1);
        assert_eq!(
            check_certificate_identity(&long),
            Err(IdentityError::TooLong)
        );
        for good in [
            "mhlw",
            "city-shinjuku-2027",
            "fugo.mhlw.go.jp",
            "ops@nta",
            "A_1",
        ] {
            assert_eq!(check_certificate_identity(good), Ok(()), "{good}");
        }
        let bad = GOOD.replace(
            "certificates = [\"city-shinjuku\", \"city-shinjuku-2027\"]",
            "certificates = [\"city-shinjuku\", \"../../x\", \"tab\\there\"]",
        );
        assert_eq!(
            problems(&bad),
            vec![
                "line 13: agency city-shinjuku: certificate identity '../../x' contains a path separator",
                "line 13: agency city-shinjuku: certificate identity 'tab\\there' contains a control character",
            ]
        );
    }

    #[test]
    fn quotas_default_to_a_municipality_and_are_overridden_per_agency() {
        let policy = parse(GOOD).unwrap();
        let mhlw = policy.agency(&AgencyId::new("mhlw").unwrap()).unwrap();
        assert_eq!(mhlw.quotas, Quotas::default());
        assert_eq!(policy.warn_percent(), DEFAULT_WARN_PERCENT);
        let derive = mhlw.quotas.limit(Metered::Derive);
        assert_eq!(derive.per_day, super::super::DEFAULT_ITEMS_PER_DAY);
        // A full batch fits in one burst; the whole number space does not
        // fit in a human lifetime of days.
        assert!(derive.burst >= crate::exchange::MAX_BATCH as u64);
        assert!(100_000_000_000 / derive.per_day > 365 * 60);

        let text = format!(
            "[quota]\nwarn_percent = 50\nseal = {{ per_day = 1000 }}\n{GOOD}\
             [agency.quota]\nderive = {{ per_second = 5, burst = 10 }}\n"
        );
        let policy = parse(&text).unwrap();
        assert_eq!(policy.warn_percent(), 50);
        let shinjuku = policy
            .agency(&AgencyId::new("city-shinjuku").unwrap())
            .unwrap();
        let derive = shinjuku.quotas.limit(Metered::Derive);
        assert_eq!((derive.per_second, derive.burst), (5, 10));
        assert_eq!(derive.per_day, super::super::DEFAULT_ITEMS_PER_DAY);
        // The [quota] defaults reach every agency; an override keeps them.
        assert_eq!(shinjuku.quotas.limit(Metered::Seal).per_day, 1000);
        let mhlw = policy.agency(&AgencyId::new("mhlw").unwrap()).unwrap();
        assert_eq!(mhlw.quotas.limit(Metered::Seal).per_day, 1000);
        assert_eq!(mhlw.quotas.limit(Metered::Derive).per_second, 20_000);
    }

    /// policy.example.toml shows the built-in defaults in its `[quota]`
    /// table: the two must not drift apart.
    #[test]
    fn the_example_policy_shows_the_built_in_quota_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/policy.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains("\n[quota]\n"));
        let policy = parse(&text).unwrap();
        assert_eq!(policy.warn_percent(), DEFAULT_WARN_PERCENT);
        let mhlw = policy.agency(&AgencyId::new("mhlw").unwrap()).unwrap();
        assert_eq!(mhlw.quotas, Quotas::default());
        let jps = policy.agency(&AgencyId::new("jps").unwrap()).unwrap();
        assert_eq!(jps.quotas.limit(Metered::Derive).per_day, 70_000_000);
        assert_eq!(
            jps.quotas.limit(Metered::Derive).per_second,
            super::super::DEFAULT_ITEMS_PER_SECOND
        );
    }

    #[test]
    fn quota_problems_name_their_line_and_field() {
        let text = format!(
            "[quota]\nwarn_percent = 0\nredeem = {{ per_day = 0 }}\n{GOOD}\
             [agency.quota]\ndisclose = {{ burst = -1, per_second = 200000000 }}\n"
        );
        assert_eq!(
            problems(&text),
            vec![
                "line 2: quota.warn_percent 0 is outside 1 to 100",
                "line 3: quota.redeem.per_day 0 is outside 1 to 1300000000",
                "line 32: agency city-shinjuku: quota.disclose.per_second 200000000 is outside 1 to 100000000",
                "line 32: agency city-shinjuku: quota.disclose.burst -1 is outside 1 to 1300000000",
            ]
        );
        let found = problems(&format!(
            "{GOOD}[agency.quota]\nderive = {{ per_minute = 5 }}\n"
        ));
        assert!(
            found[0].starts_with("line 29: unknown field `per_minute`"),
            "{found:?}"
        );
        let found = problems(&format!("{GOOD}[agency.quota]\nfly = {{ per_day = 5 }}\n"));
        assert!(
            found[0].starts_with("line 29: unknown field `fly`"),
            "{found:?}"
        );
    }

    const RELATIONS: &str = r#"
[[agency]]
id = "kikin"
name = "支払基金"
certificates = ["kikin"]
epoch = 1

[[agency]]
id = "insurer-a"
name = "A"
certificates = ["insurer-a"]
epoch = 1

[[agency]]
id = "city"
name = "city"
certificates = ["city"]
epoch = 1

[[agency]]
id = "town"
name = "town"
epoch = 1

[[delegation]]
agent = "kikin"
on_behalf_of = ["insurer-a", "city"]

[[merger]]
merged = "town"
into = "city"
retired = true
"#;

    #[test]
    fn delegations_and_mergers_are_read_and_answer_questions() {
        let policy = parse(RELATIONS).unwrap();
        let id = |text: &str| AgencyId::new(text).unwrap();
        assert_eq!(
            policy.acting_for(&id("kikin"), &id("city")).unwrap().id,
            id("city")
        );
        assert!(matches!(
            policy.acting_for(&id("city"), &id("kikin")),
            Err(super::super::Denied::NotRepresented { .. })
        ));
        assert!(matches!(
            policy.acting_for(&id("kikin"), &id("nowhere")),
            Err(super::super::Denied::NotInPolicy {
                field: "on_behalf_of"
            })
        ));
        assert_eq!(policy.retired(&id("town")).unwrap().survivor, id("city"));
        assert!(policy.retired(&id("city")).is_none());
        assert_eq!(
            policy.merger(&id("city"), &id("town")).unwrap().id,
            id("town")
        );
        assert!(policy.merger(&id("kikin"), &id("town")).is_err());
        // A retired agency may list no certificate; a working one must.
        assert_eq!(
            problems(&RELATIONS.replace("retired = true\n", "")),
            vec!["line 21: agency lists no certificate identity"]
        );
    }

    #[test]
    fn bad_delegations_and_mergers_are_located() {
        let bad = RELATIONS
            .replace(
                "on_behalf_of = [\"insurer-a\", \"city\"]",
                "on_behalf_of = [\"insurer-a\", \"kikin\", \"town\", \"insurer-a\", \"ghost\"]",
            )
            .replace("into = \"city\"", "into = \"town\"");
        assert_eq!(
            problems(&bad),
            vec![
                "line 27: an agency cannot act on behalf of itself",
                "line 27: agency insurer-a is listed twice",
                "line 27: delegation names unknown agency ghost",
                "line 31: an agency cannot be merged into itself",
            ]
        );
        // A retired agency in a delegation or a rule; a retired survivor.
        let retired = format!(
            "{RELATIONS}\n[[affair]]\nid = \"x\"\nname = \"x\"\nlegal_basis = \"x\"\n\n\
             [[rule]]\nrequester = \"town\"\naffair = \"x\"\nprovider = \"city\"\n\
             items = [\"y\"]\ntoken_lifetime_seconds = 60\n\n\
             [[merger]]\nmerged = \"insurer-a\"\ninto = \"town\"\n"
        )
        .replace(
            "on_behalf_of = [\"insurer-a\", \"city\"]",
            "on_behalf_of = [\"town\"]",
        );
        assert_eq!(
            problems(&retired),
            vec![
                "line 27: agency town is retired: no one acts for it",
                "line 40: agency town is retired (merged into city): remove its rules",
                "line 48: the survivor town is itself retired; name the agency it was merged into",
            ]
        );
        let twice = format!("{RELATIONS}\n[[merger]]\nmerged = \"town\"\ninto = \"kikin\"\n");
        assert_eq!(
            problems(&twice),
            vec!["line 35: agency town is merged twice"]
        );
        let again = format!(
            "{RELATIONS}\n[[delegation]]\nagent = \"kikin\"\non_behalf_of = [\"insurer-a\"]\n"
        );
        assert_eq!(
            problems(&again),
            vec!["line 35: agency kikin has a delegation already; list all its agencies in one"]
        );
    }

    #[test]
    fn a_policy_may_not_drop_an_agency_or_revive_a_retired_one() {
        let before = parse(RELATIONS).unwrap();
        let renamed = parse(&RELATIONS.replace("name = \"A\"", "name = \"A (renamed)\"")).unwrap();
        assert_eq!(renamed.may_follow(&before), Ok(()));
        let dropped = parse(&RELATIONS.replace(
            "[[agency]]\nid = \"insurer-a\"\nname = \"A\"\ncertificates = [\"insurer-a\"]\nepoch = 1\n",
            "",
        ).replace("[\"insurer-a\", \"city\"]", "[\"city\"]"))
        .unwrap();
        let refused = dropped.may_follow(&before).unwrap_err();
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].starts_with("agency insurer-a was listed by a policy in force"),
            "{refused:?}"
        );
        let revived = parse(&RELATIONS.replace("retired = true\n", "").replace(
            "id = \"town\"\nname = \"town\"\n",
            "id = \"town\"\nname = \"town\"\ncertificates = [\"town\"]\n",
        ))
        .unwrap();
        assert_eq!(
            revived.may_follow(&before).unwrap_err(),
            vec!["agency town was retired by a policy in force and stays retired"]
        );
        // Retiring is a step forward.
        assert_eq!(before.may_follow(&revived), Ok(()));
    }

    #[test]
    fn syntax_and_unknown_fields_are_located() {
        let found = problems("[[agency]]\nid = \"a\"\nnmae = \"typo\"\n");
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("line 3: unknown field `nmae`"),
            "{found:?}"
        );
        let found = problems("[[agency]\n");
        assert!(found[0].starts_with("line 1:"), "{found:?}");
        assert_eq!(problems(""), vec!["line 0: the policy lists no agency"]);
        let bad_id = GOOD.replace("id = \"mhlw\"", "id = \"MHLW\"");
        assert!(problems(&bad_id)[0].starts_with("line 3: agency id must start with a-z or 0-9"));
    }
}
