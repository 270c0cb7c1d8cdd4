//! The four operations of the linkage model — derive, seal, redeem,
//! reidentify — on batches, for one calling agency under one policy.
//!
//! This is everything the gRPC service does except transport: it checks the
//! policy, opens and makes codes, seals and opens tokens, and answers one
//! result per item in input order. A bad item becomes an [`ItemFailure`]
//! (its index, a [`FailureKind`] and a reason without the value) and never
//! fails the batch; only a [`Denied`] (no rule, no capability, unknown
//! caller) refuses a whole batch. The service edge maps both to gRPC codes
//! in one place.
//!
//! Key schedules are built once per (agency, epoch) and sealing keys once
//! per (addressee, day) and kept, so a batch does no key derivation.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use crate::agency::{AffairId, AgencyId, Epoch, ItemId};
use crate::batch::BatchDeriver;
use crate::code::{AgencyCode, Coder};
use crate::keys::KeyHierarchy;
use crate::mynumber::ParseError;
use crate::policy::{Agency, Capability, Denied, Policy};
use crate::token::{
    self, RequestContext, SealKey, SealedToken, Serial, SharedClaims, TokenError, Window,
};

/// Most items in one batch.
pub const MAX_BATCH: usize = 10_000;

/// What kind of failure an item had; the service maps each to one gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Malformed input: a bad number, code text or token.
    InvalidArgument,
    /// A well-formed code that is not the caller's.
    NotFound,
    /// Valid input the state of things refuses: an expired token, a token
    /// addressed to someone else, a code of a retired epoch.
    FailedPrecondition,
    /// The rule behind a token was withdrawn since it was sealed.
    PermissionDenied,
}

/// Why one item of a batch has no result. The reason never holds the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("item {index}: {reason}")]
pub struct ItemFailure {
    /// Position in the batch, from 0.
    pub index: usize,
    /// The kind, for the status code.
    pub kind: FailureKind,
    /// What is wrong.
    pub reason: String,
}

/// Why a whole batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The policy refuses the exchange.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// More than [`MAX_BATCH`] items.
    #[error("a batch holds at most {MAX_BATCH} items; this one has {0}")]
    TooLarge(usize),
    /// A request field common to the batch is malformed.
    #[error("field {field}: {reason}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// One result per item.
pub type Results<T> = Vec<Result<T, ItemFailure>>;

/// A token ready to hand to the requester.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The token.
    pub token: SealedToken,
    /// Its serial.
    pub serial: Serial,
    /// Unix seconds after which it is void.
    pub expires_at: u64,
}

/// What the provider learns from a token.
#[derive(Debug, Clone)]
pub struct Redeemed {
    /// The provider's own code for the person.
    pub code: AgencyCode,
    /// The serial to quote.
    pub serial: Serial,
    /// Who asked, under which affair, for which items, until when (shared by
    /// the tokens of one seal).
    pub context: Arc<RequestContext>,
}

/// The context common to a seal batch.
#[derive(Debug, Clone)]
pub struct SealContext {
    /// Addressee.
    pub provider: AgencyId,
    /// Affair the caller acts under.
    pub affair: AffairId,
    /// Items asked for.
    pub items: Vec<ItemId>,
    /// Non-disclosure date, if asked for.
    pub non_disclosure_until: Option<u64>,
}

/// Holds the keys and key caches; shared by every connection.
pub struct Exchange {
    keys: KeyHierarchy,
    coders: Cache<(AgencyId, Epoch), Coder>,
    seal_keys: Cache<(AgencyId, Window), SealKey>,
    random: SystemRandom,
}

impl Exchange {
    /// An exchange over `keys`.
    pub fn new(keys: KeyHierarchy) -> Self {
        Exchange {
            keys,
            coders: Cache::default(),
            seal_keys: Cache::default(),
            random: SystemRandom::new(),
        }
    }

    fn coder(&self, agency: &AgencyId, epoch: Epoch) -> Arc<Coder> {
        self.coders.get_or_make((agency.clone(), epoch), || {
            Coder::new(&self.keys, agency.clone(), epoch)
        })
    }

    fn seal_key(&self, addressee: &AgencyId, window: Window) -> Arc<SealKey> {
        let key = self.seal_keys.get_or_make((addressee.clone(), window), || {
            self.keys.seal_key(addressee, window)
        });
        // Keep the cache small: keys of windows long past are not needed.
        self.seal_keys.retain(|(_, w)| w.get() + 64 >= window.get());
        key
    }

    /// The caller's codes for `numbers` (ASCII digits).
    pub fn derive(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        numbers: &[&[u8]],
    ) -> Result<Results<String>, BatchError> {
        check_size(numbers.len())?;
        let agency = policy.require(caller, Capability::Derive)?;
        let coder = self.coder(caller, agency.epoch);
        let mut results = Vec::with_capacity(numbers.len());
        BatchDeriver::new(&coder).derive(
            numbers.iter().map(|n| Ok::<_, ParseError>(*n)),
            |result| {
                let index = results.len();
                results.push(match result {
                    Ok(text) => Ok(String::from_utf8_lossy(text).into_owned()),
                    Err(error) => Err(failure(index, FailureKind::InvalidArgument, error)),
                });
            },
        );
        Ok(results)
    }

    /// Opens one of the caller's codes to a handle, checking its epoch.
    /// `coders` remembers the coders this batch has used, so a batch looks
    /// each up once.
    fn open_own(
        &self,
        agency: &Agency,
        coders: &mut Coders,
        index: usize,
        text: &[u8],
    ) -> Result<crate::code::PersonHandle, ItemFailure> {
        let code = AgencyCode::parse(text)
            .map_err(|error| failure(index, FailureKind::InvalidArgument, error))?;
        if !agency.accepted_epochs.contains(&code.epoch()) {
            return Err(failure(
                index,
                FailureKind::FailedPrecondition,
                format!(
                    "code of epoch {}, which is no longer accepted",
                    code.epoch()
                ),
            ));
        }
        coders
            .get(self, &agency.id, code.epoch())
            .open(&code)
            .map_err(|error| failure(index, FailureKind::NotFound, error))
    }

    /// Tokens addressed to `context.provider`, one per code of the caller's.
    pub fn seal(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        context: &SealContext,
        codes: &[&[u8]],
        now: u64,
    ) -> Result<Results<Sealed>, BatchError> {
        check_size(codes.len())?;
        let agency = policy.agency(caller)?;
        policy.agency(&context.provider)?;
        let rule = policy.authorize(
            caller,
            &context.affair,
            &context.provider,
            &context.items,
            context.non_disclosure_until.is_some(),
        )?;
        let expires_at = now + rule.token_lifetime;
        let key = self.seal_key(&context.provider, Window::containing(now));
        // One draw from the system's generator per batch, not two per token:
        // 16 bytes of serial and 12 of nonce for each item.
        let mut random = vec![0u8; 28 * codes.len()];
        self.random
            .fill(&mut random)
            .map_err(|_| BatchError::Random)?;
        let shared = SharedClaims::new(
            caller,
            &context.affair,
            &context.items,
            expires_at,
            context.non_disclosure_until,
        )
        .map_err(|error| BatchError::BadField {
            field: "items",
            reason: error.to_string(),
        })?;
        let mut coders = Coders::default();
        let mut results = Vec::with_capacity(codes.len());
        for ((index, text), fresh) in codes.iter().enumerate().zip(random.chunks_exact(28)) {
            let handle = match self.open_own(agency, &mut coders, index, text) {
                Ok(handle) => handle,
                Err(item) => {
                    results.push(Err(item));
                    continue;
                }
            };
            let (serial, nonce) = fresh.split_at(16);
            let serial = Serial::from_bytes(serial.try_into().map_err(|_| BatchError::Random)?);
            let nonce = nonce.try_into().map_err(|_| BatchError::Random)?;
            let token = key
                .seal_person(&handle, serial, &shared, nonce)
                .map_err(|error| BatchError::BadField {
                    field: "items",
                    reason: error.to_string(),
                })?;
            results.push(Ok(Sealed {
                token,
                serial,
                expires_at,
            }));
        }
        Ok(results)
    }

    /// The caller's codes and the request context for tokens addressed to it.
    pub fn redeem(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        tokens: &[&[u8]],
        now: u64,
    ) -> Result<Results<Redeemed>, BatchError> {
        check_size(tokens.len())?;
        let agency = policy.agency(caller)?;
        let coder = self.coder(caller, agency.epoch);
        // Tokens from windows older than the longest lifetime cannot be valid.
        let oldest = Window::containing(now.saturating_sub(policy.longest_token_lifetime()));
        let current = Window::containing(now);
        let mut last_key: Option<Arc<SealKey>> = None;
        type Verdict = Result<Arc<RequestContext>, (FailureKind, String)>;
        let mut last_context: Option<(SharedClaims, Verdict)> = None;
        let results = tokens
            .iter()
            .enumerate()
            .map(|(index, bytes)| {
                let (window, addressee) =
                    token::peek(bytes).map_err(|error| token_failure(index, error))?;
                if addressee != caller.as_str().as_bytes() {
                    return Err(token_failure(index, TokenError::WrongAddressee));
                }
                if window < oldest || window > current {
                    return Err(failure(
                        index,
                        FailureKind::FailedPrecondition,
                        "token was sealed in a key window that is no longer accepted",
                    ));
                }
                let key = match &last_key {
                    Some(key) if key.window() == window => Arc::clone(key),
                    _ => {
                        let key = self.seal_key(caller, window);
                        last_key = Some(Arc::clone(&key));
                        key
                    }
                };
                let opened = key
                    .open_parts(bytes)
                    .map_err(|error| token_failure(index, error))?;
                // Tokens of one seal share their context: decode and check
                // it once, then reuse the verdict while it repeats.
                if last_context
                    .as_ref()
                    .is_none_or(|(shared, _)| *shared != opened.shared)
                {
                    let verdict = match opened.shared.decode() {
                        None => Err((FailureKind::InvalidArgument, TokenError::Forged.to_string())),
                        Some(context) => match policy.authorize(
                            &context.requester,
                            &context.affair,
                            caller,
                            &context.items,
                            context.non_disclosure_until.is_some(),
                        ) {
                            Ok(_) => Ok(Arc::new(context)),
                            Err(denied) => Err((FailureKind::PermissionDenied, denied.to_string())),
                        },
                    };
                    last_context = Some((opened.shared.clone(), verdict));
                }
                let verdict = last_context.as_ref().map(|(_, verdict)| verdict.clone());
                let context = match verdict {
                    Some(Ok(context)) => context,
                    Some(Err((kind, reason))) => return Err(failure(index, kind, reason)),
                    None => return Err(token_failure(index, TokenError::Forged)),
                };
                if context.expires_at <= now {
                    return Err(failure(
                        index,
                        FailureKind::FailedPrecondition,
                        "token has expired",
                    ));
                }
                Ok(Redeemed {
                    code: coder.code_of(&opened.handle),
                    serial: opened.serial,
                    context,
                })
            })
            .collect();
        Ok(results)
    }

    /// My Numbers (12 ASCII digits) for the caller's own codes.
    pub fn reidentify(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        codes: &[&[u8]],
    ) -> Result<Results<zeroize::Zeroizing<String>>, BatchError> {
        check_size(codes.len())?;
        let agency = policy.require(caller, Capability::Reidentify)?;
        let mut coders = Coders::default();
        let results = codes
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let code = AgencyCode::parse(text)
                    .map_err(|error| failure(index, FailureKind::InvalidArgument, error))?;
                if !agency.accepted_epochs.contains(&code.epoch()) {
                    return Err(failure(
                        index,
                        FailureKind::FailedPrecondition,
                        format!(
                            "code of epoch {}, which is no longer accepted",
                            code.epoch()
                        ),
                    ));
                }
                let number = coders
                    .get(self, caller, code.epoch())
                    .reidentify(&code)
                    .map_err(|error| failure(index, FailureKind::NotFound, error))?;
                let digits = number.expose_digits();
                Ok(zeroize::Zeroizing::new(
                    String::from_utf8_lossy(&digits[..]).into_owned(),
                ))
            })
            .collect();
        Ok(results)
    }
}

/// A read-mostly cache of key schedules, built once and shared.
struct Cache<K, V>(RwLock<HashMap<K, Arc<V>>>);

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Cache(RwLock::new(HashMap::new()))
    }
}

impl<K: Eq + std::hash::Hash, V> Cache<K, V> {
    /// The value for `key`, made by `make` on first use. A poisoned lock
    /// holds nothing half-written (inserts are single calls), so it is used.
    fn get_or_make(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        if let Some(found) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(found);
        }
        let made = Arc::new(make());
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key).or_insert(made))
    }

    /// Drops the entries whose keys fail `keep`.
    fn retain(&self, keep: impl Fn(&K) -> bool) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|key, _| keep(key));
    }
}

/// The coders one batch has used, by epoch (a batch rarely spans more than
/// one or two epochs, so a short list beats a map).
#[derive(Default)]
struct Coders(Vec<(Epoch, Arc<Coder>)>);

impl Coders {
    fn get(&mut self, exchange: &Exchange, agency: &AgencyId, epoch: Epoch) -> &Coder {
        let position = match self.0.iter().position(|(e, _)| *e == epoch) {
            Some(position) => position,
            None => {
                self.0.push((epoch, exchange.coder(agency, epoch)));
                self.0.len() - 1
            }
        };
        &self.0[position].1
    }
}

fn check_size(items: usize) -> Result<(), BatchError> {
    if items > MAX_BATCH {
        Err(BatchError::TooLarge(items))
    } else {
        Ok(())
    }
}

fn failure(index: usize, kind: FailureKind, reason: impl ToString) -> ItemFailure {
    ItemFailure {
        index,
        kind,
        reason: reason.to_string(),
    }
}

fn token_failure(index: usize, error: TokenError) -> ItemFailure {
    let kind = match error {
        TokenError::WrongAddressee | TokenError::WrongWindow => FailureKind::FailedPrecondition,
        _ => FailureKind::InvalidArgument,
    };
    failure(index, kind, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    const POLICY: &str = r#"
[[agency]]
id = "mhlw"
name = "MHLW"
certificates = ["mhlw"]
capabilities = ["derive"]
epoch = 1

[[agency]]
id = "city-shinjuku"
name = "Shinjuku"
certificates = ["city-shinjuku"]
capabilities = ["derive", "reidentify"]
epoch = 2
accepted_epochs = [1, 2]

[[agency]]
id = "moj"
name = "MOJ"
certificates = ["moj"]
epoch = 1

[[affair]]
id = "health"
name = "health insurance"
legal_basis = "table 2"

[[rule]]
requester = "mhlw"
affair = "health"
provider = "city-shinjuku"
items = ["local-tax"]
token_lifetime_seconds = 3600

[[rule]]
requester = "mhlw"
affair = "health"
provider = "moj"
items = ["family-register"]
token_lifetime_seconds = 3600
"#;

    const NOW: u64 = 1_790_000_000;

    fn setup() -> (Exchange, Policy) {
        let keys = KeyHierarchy::new(&MasterKey::from_bytes([3; 32]));
        (Exchange::new(keys), Policy::parse(POLICY).unwrap())
    }

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    fn context(provider: &str, item: &str) -> SealContext {
        SealContext {
            provider: id(provider),
            affair: AffairId::new("health").unwrap(),
            items: vec![ItemId::new(item).unwrap()],
            non_disclosure_until: None,
        }
    }

    fn numbers(count: u64) -> Vec<String> {
        (0..count)
            .map(|i| {
                let digits = crate::mynumber::with_check_digit(i * 7_919_007 + 13);
                String::from_utf8_lossy(&digits).into_owned()
            })
            .collect()
    }

    fn ok<T: std::fmt::Debug>(results: Results<T>) -> Vec<T> {
        results.into_iter().map(Result::unwrap).collect()
    }

    fn bytes(items: &[String]) -> Vec<&[u8]> {
        items.iter().map(String::as_bytes).collect()
    }

    #[test]
    fn derive_seal_redeem_gives_the_providers_own_codes() {
        let (exchange, policy) = setup();
        let numbers = numbers(2000);
        let mhlw = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&numbers))
            .unwrap());
        let shinjuku = ok(exchange
            .derive(&policy, &id("city-shinjuku"), &bytes(&numbers))
            .unwrap());
        assert!(mhlw.iter().zip(&shinjuku).all(|(a, b)| a != b));
        let sealed = ok(exchange
            .seal(
                &policy,
                &id("mhlw"),
                &context("city-shinjuku", "local-tax"),
                &bytes(&mhlw),
                NOW,
            )
            .unwrap());
        let tokens: Vec<&[u8]> = sealed.iter().map(|s| s.token.as_bytes()).collect();
        let redeemed = ok(exchange
            .redeem(&policy, &id("city-shinjuku"), &tokens, NOW + 10)
            .unwrap());
        for ((r, expected), s) in redeemed.iter().zip(&shinjuku).zip(&sealed) {
            assert_eq!(
                String::from_utf8(r.code.to_text().to_vec()).unwrap(),
                *expected
            );
            assert_eq!(r.context.requester, id("mhlw"));
            assert_eq!(r.serial, s.serial);
            assert_eq!(r.context.expires_at, NOW + 3600);
        }
        let serials: std::collections::HashSet<_> = sealed.iter().map(|s| s.serial).collect();
        assert_eq!(serials.len(), sealed.len());
    }

    #[test]
    fn tokens_fail_for_the_wrong_agency_late_or_without_a_rule() {
        let (exchange, policy) = setup();
        let number = numbers(1);
        let code = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&number))
            .unwrap());
        let sealed = ok(exchange
            .seal(
                &policy,
                &id("mhlw"),
                &context("moj", "family-register"),
                &bytes(&code),
                NOW,
            )
            .unwrap());
        let token = [sealed[0].token.as_bytes()];
        let kind = |caller: &str, now: u64, policy: &Policy| {
            exchange.redeem(policy, &id(caller), &token, now).unwrap()[0]
                .as_ref()
                .unwrap_err()
                .kind
        };
        assert_eq!(
            kind("city-shinjuku", NOW, &policy),
            FailureKind::FailedPrecondition
        );
        assert_eq!(
            kind("moj", NOW + 3600, &policy),
            FailureKind::FailedPrecondition
        );
        // The rule mhlw → moj is the last one; without it the token is void.
        let withdrawn = Policy::parse(&POLICY[..POLICY.rfind("[[rule]]").unwrap()]).unwrap();
        assert_eq!(kind("moj", NOW, &withdrawn), FailureKind::PermissionDenied);
        assert!(exchange.redeem(&policy, &id("moj"), &token, NOW).unwrap()[0].is_ok());
        let mut forged = sealed[0].token.as_bytes().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let result = exchange
            .redeem(&policy, &id("moj"), &[&forged], NOW)
            .unwrap();
        assert_eq!(
            result[0].as_ref().unwrap_err().kind,
            FailureKind::InvalidArgument
        );
    }

    #[test]
    fn seal_needs_a_rule_and_reidentify_a_capability() {
        let (exchange, policy) = setup();
        let number = numbers(1);
        let code = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&number))
            .unwrap());
        let denied = exchange
            .seal(
                &policy,
                &id("mhlw"),
                &context("city-shinjuku", "pension"),
                &bytes(&code),
                NOW,
            )
            .unwrap_err();
        assert!(
            denied
                .to_string()
                .contains("does not include data item pension"),
            "{denied}"
        );
        let reverse = exchange
            .seal(
                &policy,
                &id("city-shinjuku"),
                &context("mhlw", "local-tax"),
                &bytes(&code),
                NOW,
            )
            .unwrap_err();
        assert_eq!(
            reverse.to_string(),
            "no rule lets city-shinjuku ask mhlw under affair health"
        );
        assert!(matches!(
            exchange.reidentify(&policy, &id("mhlw"), &bytes(&code)),
            Err(BatchError::Denied(Denied::MissingCapability { .. }))
        ));
        assert!(matches!(
            exchange.derive(&policy, &id("moj"), &bytes(&number)),
            Err(BatchError::Denied(Denied::MissingCapability { .. }))
        ));
    }

    #[test]
    fn reidentify_per_item_and_epochs() {
        let (exchange, policy) = setup();
        let number = numbers(3);
        let codes = ok(exchange
            .derive(&policy, &id("city-shinjuku"), &bytes(&number))
            .unwrap());
        let mhlw_code = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&number))
            .unwrap());
        let inputs: Vec<&[u8]> = vec![
            codes[0].as_bytes(),
            b"not a code",
            mhlw_code[1].as_bytes(),
            codes[2].as_bytes(),
        ];
        let results = exchange
            .reidentify(&policy, &id("city-shinjuku"), &inputs)
            .unwrap();
        assert_eq!(results[0].as_ref().unwrap().as_str(), number[0]);
        assert_eq!(
            results[1].as_ref().unwrap_err().kind,
            FailureKind::InvalidArgument
        );
        assert_eq!(results[1].as_ref().unwrap_err().index, 1);
        // The MHLW code has epoch 1, accepted by Shinjuku, but is not its code.
        assert_eq!(results[2].as_ref().unwrap_err().kind, FailureKind::NotFound);
        assert_eq!(results[3].as_ref().unwrap().as_str(), number[2]);
        let retired =
            Policy::parse(&POLICY.replace("accepted_epochs = [1, 2]", "accepted_epochs = [2]"))
                .unwrap();
        let old = exchange.coder(&id("city-shinjuku"), Epoch::new(1).unwrap());
        let old_code = old.derive(&crate::mynumber::MyNumber::parse(number[0].as_bytes()).unwrap());
        let text = old_code.to_text();
        let results = exchange
            .reidentify(&retired, &id("city-shinjuku"), &[&text[..]])
            .unwrap();
        assert_eq!(
            results[0].as_ref().unwrap_err().kind,
            FailureKind::FailedPrecondition
        );
        assert!(
            results
                .iter()
                .all(|r| !format!("{r:?}").contains(&number[0]))
        );
    }

    #[test]
    fn a_non_disclosure_date_travels_only_where_the_rule_allows_it() {
        let (exchange, policy) = setup();
        let code = ok(exchange
            .derive(&policy, &id("mhlw"), &bytes(&numbers(1)))
            .unwrap());
        let mut hidden = context("moj", "family-register");
        hidden.non_disclosure_until = Some(NOW + 86_400);
        assert!(matches!(
            exchange.seal(&policy, &id("mhlw"), &hidden, &bytes(&code), NOW),
            Err(BatchError::Denied(Denied::NonDisclosureNotAllowed { .. }))
        ));
        let allowing = Policy::parse(&format!("{POLICY}non_disclosure = true\n")).unwrap();
        let sealed = ok(exchange
            .seal(&allowing, &id("mhlw"), &hidden, &bytes(&code), NOW)
            .unwrap());
        let token = [sealed[0].token.as_bytes()];
        let redeemed = ok(exchange.redeem(&allowing, &id("moj"), &token, NOW).unwrap());
        assert_eq!(redeemed[0].context.non_disclosure_until, Some(NOW + 86_400));
        // Withdrawing the permission voids the token: the rule is checked again.
        let result = exchange.redeem(&policy, &id("moj"), &token, NOW).unwrap();
        assert_eq!(
            result[0].as_ref().unwrap_err().kind,
            FailureKind::PermissionDenied
        );
    }

    #[test]
    fn batches_are_bounded() {
        let (exchange, policy) = setup();
        let many = vec![&b"123456789018"[..]; MAX_BATCH + 1];
        assert_eq!(
            exchange.derive(&policy, &id("mhlw"), &many).unwrap_err(),
            BatchError::TooLarge(MAX_BATCH + 1)
        );
    }
}
