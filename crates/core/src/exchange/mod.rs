//! The four operations of the linkage model — derive, seal, redeem,
//! reidentify — on batches, for one calling agency under one policy.
//!
//! ```text
//!  derive      numbers ─► the caller's codes                   (derive.rs)
//!  seal        the caller's codes ─► tokens for a provider      (seal.rs)
//!  redeem      tokens addressed to the caller ─► its codes      (redeem.rs)
//!  reidentify  the caller's codes ─► numbers                    (reidentify.rs)
//!  migrate     a merged agency's codes ─► the survivor's codes  (migrate.rs)
//!  outcome     what each item and batch can end in              (outcome.rs)
//! ```
//!
//! This is everything the gRPC service does except transport: it checks the
//! policy, opens and makes codes, seals and opens tokens, and answers one
//! result per item in input order. A bad item becomes an [`ItemFailure`]
//! (its index and a typed [`ItemError`], never the value) and never fails
//! the batch; only a [`BatchError`] (no rule, no capability, a bad shared
//! field) refuses a whole batch. The service edge maps both to gRPC codes
//! in one place; the audit trail records the same types.
//!
//! Nothing here reads a clock or draws randomness of its own: `now` is an
//! argument and the [`RandomSource`] is given to [`Exchange::new`], so every
//! operation is reproducible under test. Key schedules are built once per
//! (agency, epoch) and sealing keys once per key name and kept, so a batch
//! rarely does key derivation. Sealing counts the tokens each key seals and
//! moves to a fresh key before AES-GCM's per-key bound (seal_keys.rs).

mod derive;
mod migrate;
mod outcome;
mod persons;
mod redeem;
mod reidentify;
mod rekey;
mod seal;
mod seal_keys;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use crate::agency::{AgencyId, Epoch};
use crate::code::{self, AgencyCode, Coder, PersonHandle};
use crate::generation::{Generation, GenerationError};
use crate::keyring::Keyring;
use crate::keys::{KeyHierarchy, PersonKey};
use crate::link::{Linker, PersonLink};
use crate::persons::Persons;
use crate::policy::{Agency, EpochState, Policy};
use crate::token::{KeyName, MAX_SEALS_PER_KEY, SealKey};

pub use outcome::{BatchError, Done, ItemError, ItemFailure, RandomFailed, Results};
pub use persons::{PlanError, Planned};
pub use redeem::Redeemed;
pub use rekey::Rekeyed;
pub use seal::{SealContext, Sealed};

/// Most items in one batch.
pub const MAX_BATCH: usize = 10_000;

/// Where sealing draws its serials and nonces: the operating system's
/// CSPRNG in the service, a fixed sequence in known-answer tests.
pub trait RandomSource: Send + Sync {
    /// Fills `out` with random bytes.
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed>;
}

/// Holds the keys and key caches; shared by every connection.
pub struct Exchange {
    keyring: Keyring,
    /// K_person of every generation held: the explicit crossing step.
    person_keys: BTreeMap<Generation, PersonKey>,
    coders: Cache<(Generation, AgencyId, Epoch), Coder>,
    /// Keys that have sealed or opened an authentic token, for redemption.
    opening_keys: Cache<(AgencyId, KeyName), SealKey>,
    /// The key each addressee's tokens are sealed under now, and its count.
    sealing: seal_keys::SealingKeys,
    linker: Linker,
    /// Re-issued numbers and suspended people, in memory (persons.rs).
    persons: Persons,
    random: Box<dyn RandomSource>,
}

impl Exchange {
    /// An exchange over one hierarchy (a keyring of its generation alone),
    /// sealing with randomness from `random`; each sealing key seals at
    /// most [`MAX_SEALS_PER_KEY`] tokens.
    pub fn new(keys: KeyHierarchy, random: Box<dyn RandomSource>) -> Self {
        Self::with_keyring(Keyring::single(keys), random)
    }

    /// An exchange over every generation of `keyring`. The audit trail's
    /// links come from the keyring's audit generation.
    pub fn with_keyring(keyring: Keyring, random: Box<dyn RandomSource>) -> Self {
        let person_keys = keyring
            .hierarchies()
            .map(|keys| (keys.generation(), keys.person_key()))
            .collect();
        Exchange {
            coders: Cache::default(),
            opening_keys: Cache::default(),
            sealing: seal_keys::SealingKeys::new(MAX_SEALS_PER_KEY),
            // Re-issues and suspensions are keyed, like the audit trail,
            // from the audit generation (D190: by number, so they hold in
            // every generation).
            persons: Persons::new(keyring.audit()),
            linker: Linker::new(keyring.audit()),
            person_keys,
            keyring,
            random,
        }
    }

    /// The keyring.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Checks that the keyring holds every generation `policy` binds an
    /// epoch in use to (not destroyed): the check a server makes before it
    /// serves under a policy.
    pub fn check_policy(&self, policy: &Policy) -> Result<(), GenerationError> {
        match policy
            .generations_in_use()
            .into_iter()
            .find(|g| !self.keyring.holds(*g))
        {
            Some(missing) => Err(GenerationError::NotInKeyring(missing)),
            None => Ok(()),
        }
    }

    /// The same exchange with each sealing key sealing at most `bound`
    /// tokens before the next batch moves to a fresh key. The bound can
    /// only be lowered: it is taken between 1 and [`MAX_SEALS_PER_KEY`].
    /// (Tests lower it to see rotation; an operator could lower it to
    /// rotate sooner.)
    pub fn with_seal_bound(mut self, bound: u64) -> Self {
        self.sealing = seal_keys::SealingKeys::new(bound);
        self
    }

    /// The most tokens one sealing key seals.
    pub fn seal_bound(&self) -> u64 {
        self.sealing.bound()
    }

    /// The link of the person behind one of the caller's own codes (of an
    /// accepted epoch): how the citizen portal names the person whose
    /// records it asks for.
    pub fn link_of_own_code(
        &self,
        policy: &Policy,
        caller: &AgencyId,
        code: &[u8],
    ) -> Result<PersonLink, ItemError> {
        let agency = policy.agency(caller).map_err(|_| ItemError::UnknownCode)?;
        let handle = OwnCodes::new(self, agency).open(code)?;
        self.link(&handle)
    }

    /// `agency`'s code in `epoch` (an epoch `policy` lists as current or
    /// accepted, in the generation it binds) for the person behind `link`,
    /// or [`ItemError::UnknownCode`] if the link is not one of this key's:
    /// how a reader of the audit trail sees people, in its own codes only.
    pub fn code_for_link(
        &self,
        policy: &Policy,
        agency: &AgencyId,
        epoch: Epoch,
        link: &PersonLink,
    ) -> Result<AgencyCode, ItemError> {
        let found = policy.agency(agency).map_err(|_| ItemError::UnknownCode)?;
        let binding = usable_binding(found, epoch)?;
        let coder = self
            .coder(agency, epoch, binding.generation)
            .map_err(ItemError::Generation)?;
        let linked = self.linker.handle(link);
        self.check_audit_handle(&linked)?;
        let handle = self.cross(&linked, coder.generation())?;
        coder
            .check_handle(&handle)
            .map_err(|_| ItemError::UnknownCode)?;
        coder.code_of(&handle).map_err(ItemError::Generation)
    }

    /// The coder of `agency`'s `epoch` in `generation`, or
    /// [`GenerationError::NotInKeyring`].
    fn coder(
        &self,
        agency: &AgencyId,
        epoch: Epoch,
        generation: Generation,
    ) -> Result<Arc<Coder>, GenerationError> {
        if let Some(coder) = self.coders.get(&(generation, agency.clone(), epoch)) {
            return Ok(coder);
        }
        let keys = self.keyring.get(generation)?;
        Ok(self
            .coders
            .get_or_make((generation, agency.clone(), epoch), || {
                Coder::new(keys, agency.clone(), epoch)
            }))
    }

    /// The same person's handle in generation `to`: the explicit step of
    /// crossing generations (handle → number → handle), done here and only
    /// here. The number never leaves this function; a handle of the same
    /// generation is copied.
    fn cross(&self, handle: &PersonHandle, to: Generation) -> Result<PersonHandle, ItemError> {
        let from = handle.generation();
        if from == to {
            return Ok(PersonHandle::from_bytes(to, *handle.expose_bytes()));
        }
        let missing = |g| ItemError::Generation(GenerationError::NotInKeyring(g));
        let source = self.person_keys.get(&from).ok_or_else(|| missing(from))?;
        let target = self.person_keys.get(&to).ok_or_else(|| missing(to))?;
        let number = code::number_of(source, handle).map_err(|_| ItemError::UnknownCode)?;
        Ok(code::handle_of(target, to, &number))
    }

    /// Checks that a handle out of a link is a real one of the audit
    /// generation (a link from the store could hold anything).
    fn check_audit_handle(&self, handle: &PersonHandle) -> Result<(), ItemError> {
        let person = self
            .person_keys
            .get(&handle.generation())
            .ok_or(ItemError::UnknownCode)?;
        code::number_of(person, handle)
            .map(drop)
            .map_err(|_| ItemError::UnknownCode)
    }

    /// The audit trail's link of a person, from a handle of any generation.
    fn link(&self, handle: &PersonHandle) -> Result<PersonLink, ItemError> {
        let audit = self.cross(handle, self.linker.generation())?;
        self.linker.link(&audit).map_err(ItemError::Generation)
    }

    /// The audit trail's link of the person behind `handle` (any
    /// generation), if that person is not suspended: seal and redeem.
    /// Re-issues and suspensions are keyed from the audit generation.
    fn available_link(&self, handle: &PersonHandle) -> Result<PersonLink, ItemError> {
        let audit = self.cross(handle, self.linker.generation())?;
        self.persons.check_available(&audit)?;
        self.linker.link(&audit).map_err(ItemError::Generation)
    }

    /// The key named `name` of `addressee`'s tokens, for opening: the
    /// cached one, or a new one that is not cached (see
    /// [`Exchange::keep_opening_key`]) and `false`.
    fn opening_key(
        &self,
        addressee: &AgencyId,
        name: KeyName,
    ) -> Result<(Arc<SealKey>, bool), GenerationError> {
        match self.opening_keys.get(&(addressee.clone(), name)) {
            Some(key) => Ok((key, true)),
            None => {
                let keys = self.keyring.get(name.generation())?;
                Ok((Arc::new(SealKey::new(keys, addressee, name)?), false))
            }
        }
    }

    /// Caches `key` for opening. Only keys that sealed here or opened an
    /// authentic token are kept: a key name comes from the token, so
    /// caching every name asked for would let forged tokens fill memory
    /// with keys (2^32 indices a day).
    fn keep_opening_key(&self, addressee: &AgencyId, key: Arc<SealKey>) {
        let window = key.window();
        self.opening_keys
            .insert((addressee.clone(), key.name()), key);
        // Keep the cache small: keys of windows long past are not needed.
        self.opening_keys
            .retain(|(_, name)| name.window().get().saturating_add(64) >= window.get());
    }
}

impl Exchange {
    /// The coder that makes `agency`'s new codes: of the epoch the caller
    /// named (current or accepted) or, with `None`, of the current epoch.
    fn making_coder(
        &self,
        agency: &Agency,
        epoch: Option<Epoch>,
    ) -> Result<Arc<Coder>, BatchError> {
        let epoch = epoch.unwrap_or(agency.epoch);
        let refused = |why| BatchError::Epoch {
            agency: agency.id.clone(),
            epoch,
            why,
        };
        let binding = match usable_binding(agency, epoch) {
            Ok(binding) => binding,
            Err(ItemError::RekeyOnlyEpoch(_)) => return Err(refused("is rekey-only")),
            Err(ItemError::DestroyedEpoch(_)) => return Err(refused("is destroyed")),
            Err(_) => return Err(refused("is not in the policy")),
        };
        self.coder(&agency.id, epoch, binding.generation)
            .map_err(BatchError::Generation)
    }
}

/// The binding of `agency`'s `epoch` if its codes work everywhere, else the
/// error that names why not (unknown, rekey-only, destroyed).
fn usable_binding(agency: &Agency, epoch: Epoch) -> Result<crate::policy::EpochBinding, ItemError> {
    let binding = agency
        .binding(epoch)
        .ok_or(ItemError::RetiredEpoch(epoch))?;
    match binding.state {
        EpochState::Current | EpochState::Accepted => Ok(binding),
        EpochState::RekeyOnly => Err(ItemError::RekeyOnlyEpoch(epoch)),
        EpochState::Destroyed => Err(ItemError::DestroyedEpoch(epoch)),
    }
}

/// The coders one batch has used, by epoch (a batch rarely spans more than
/// one or two epochs, so a short list beats a map), and the one way a batch
/// opens the caller's own codes. Each epoch's coder is of the generation
/// the policy binds the epoch to: selection by explicit match.
struct OwnCodes<'a> {
    exchange: &'a Exchange,
    agency: &'a Agency,
    coders: Vec<(Epoch, Arc<Coder>)>,
    /// Whether codes of rekey-only epochs open too (Rekey alone).
    rekey: bool,
}

impl<'a> OwnCodes<'a> {
    fn new(exchange: &'a Exchange, agency: &'a Agency) -> Self {
        OwnCodes {
            exchange,
            agency,
            coders: Vec::new(),
            rekey: false,
        }
    }

    /// The same, opening rekey-only epochs too.
    fn for_rekey(exchange: &'a Exchange, agency: &'a Agency) -> Self {
        OwnCodes {
            rekey: true,
            ..OwnCodes::new(exchange, agency)
        }
    }

    /// Reads `text` as one of the agency's codes of an accepted epoch (or a
    /// rekey-only one, for Rekey) and returns the code and the coder of its
    /// epoch.
    fn read(&mut self, text: &[u8]) -> Result<(AgencyCode, &Coder), ItemError> {
        let code = AgencyCode::parse(text)?;
        let epoch = code.epoch();
        let binding = match usable_binding(self.agency, epoch) {
            Err(ItemError::RekeyOnlyEpoch(_)) if self.rekey => self
                .agency
                .binding(epoch)
                .ok_or(ItemError::RetiredEpoch(epoch))?,
            other => other?,
        };
        let position = match self.coders.iter().position(|(e, _)| *e == epoch) {
            Some(position) => position,
            None => {
                let coder = self
                    .exchange
                    .coder(&self.agency.id, epoch, binding.generation)
                    .map_err(ItemError::Generation)?;
                self.coders.push((epoch, coder));
                self.coders.len() - 1
            }
        };
        Ok((code, &self.coders[position].1))
    }

    /// Opens `text` to the person handle.
    fn open(&mut self, text: &[u8]) -> Result<PersonHandle, ItemError> {
        let (code, coder) = self.read(text)?;
        coder.open(&code).map_err(|_| ItemError::UnknownCode)
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

    /// The value for `key`, if there is one.
    fn get(&self, key: &K) -> Option<Arc<V>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(Arc::clone)
    }

    /// Stores `value` for `key` (replacing any earlier one).
    fn insert(&self, key: K, value: Arc<V>) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, value);
    }

    /// Drops the entries whose keys fail `keep`.
    fn retain(&self, keep: impl Fn(&K) -> bool) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|key, _| keep(key));
    }
}

fn check_size(items: usize) -> Result<(), BatchError> {
    if items > MAX_BATCH {
        Err(BatchError::TooLarge(items))
    } else {
        Ok(())
    }
}

/// Runs `each` over the items, numbering failures by their index. `each`
/// reports the person it opened (if it got that far) through its second
/// argument, success or not, for the audit trail.
fn per_item<I, T>(
    items: impl IntoIterator<Item = I>,
    mut each: impl FnMut(I, &mut Option<PersonLink>) -> Result<T, ItemError>,
) -> Done<T> {
    let items = items.into_iter();
    let mut done = Done::with_capacity(items.size_hint().0);
    for (index, item) in items.enumerate() {
        let mut person = None;
        let result = each(item, &mut person).map_err(|error| ItemFailure { index, error });
        done.results.push(result);
        done.people.push(person);
    }
    done
}
