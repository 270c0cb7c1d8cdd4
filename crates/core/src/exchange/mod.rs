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
mod seal;
mod seal_keys;

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::agency::{AgencyId, Epoch};
use crate::code::{AgencyCode, Coder, PersonHandle};
use crate::keys::KeyHierarchy;
use crate::link::{Linker, PersonLink};
use crate::persons::Persons;
use crate::policy::{Agency, Policy};
use crate::token::{KeyName, MAX_SEALS_PER_KEY, SealKey};

pub use outcome::{BatchError, Done, ItemError, ItemFailure, RandomFailed, Results};
pub use persons::{PlanError, Planned};
pub use redeem::Redeemed;
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
    keys: KeyHierarchy,
    coders: Cache<(AgencyId, Epoch), Coder>,
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
    /// An exchange over `keys`, sealing with randomness from `random`; each
    /// sealing key seals at most [`MAX_SEALS_PER_KEY`] tokens.
    pub fn new(keys: KeyHierarchy, random: Box<dyn RandomSource>) -> Self {
        Exchange {
            coders: Cache::default(),
            opening_keys: Cache::default(),
            sealing: seal_keys::SealingKeys::new(MAX_SEALS_PER_KEY),
            linker: Linker::new(&keys),
            persons: Persons::new(&keys),
            keys,
            random,
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
        Ok(self.linker.link(&handle))
    }

    /// `agency`'s code in `epoch` for the person behind `link`, or
    /// [`ItemError::UnknownCode`] if the link is not one of this key's: how
    /// a reader of the audit trail sees people, in its own codes only.
    pub fn code_for_link(
        &self,
        agency: &AgencyId,
        epoch: Epoch,
        link: &PersonLink,
    ) -> Result<AgencyCode, ItemError> {
        let coder = self.coder(agency, epoch);
        let handle = self.linker.handle(link);
        coder
            .check_handle(&handle)
            .map_err(|_| ItemError::UnknownCode)?;
        Ok(coder.code_of(&handle))
    }

    fn coder(&self, agency: &AgencyId, epoch: Epoch) -> Arc<Coder> {
        self.coders.get_or_make((agency.clone(), epoch), || {
            Coder::new(&self.keys, agency.clone(), epoch)
        })
    }

    /// The key named `name` of `addressee`'s tokens, for opening: the
    /// cached one, or a new one that is not cached (see
    /// [`Exchange::keep_opening_key`]) and `false`.
    fn opening_key(&self, addressee: &AgencyId, name: KeyName) -> (Arc<SealKey>, bool) {
        match self.opening_keys.get(&(addressee.clone(), name)) {
            Some(key) => (key, true),
            None => (Arc::new(SealKey::new(&self.keys, addressee, name)), false),
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

/// The coders one batch has used, by epoch (a batch rarely spans more than
/// one or two epochs, so a short list beats a map), and the one way a batch
/// opens the caller's own codes.
struct OwnCodes<'a> {
    exchange: &'a Exchange,
    agency: &'a Agency,
    coders: Vec<(Epoch, Arc<Coder>)>,
}

impl<'a> OwnCodes<'a> {
    fn new(exchange: &'a Exchange, agency: &'a Agency) -> Self {
        OwnCodes {
            exchange,
            agency,
            coders: Vec::new(),
        }
    }

    /// Reads `text` as one of the agency's codes of an accepted epoch and
    /// returns the code and the coder of its epoch.
    fn read(&mut self, text: &[u8]) -> Result<(AgencyCode, &Coder), ItemError> {
        let code = AgencyCode::parse(text)?;
        let epoch = code.epoch();
        if !self.agency.accepted_epochs.contains(&epoch) {
            return Err(ItemError::RetiredEpoch(epoch));
        }
        let position = match self.coders.iter().position(|(e, _)| *e == epoch) {
            Some(position) => position,
            None => {
                let coder = self.exchange.coder(&self.agency.id, epoch);
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
