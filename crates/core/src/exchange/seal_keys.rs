//! The sealing keys in use, and AES-GCM's per-key message bound enforced.
//!
//! Per (addressee, window) the exchange seals under one key at a time,
//! K_seal(b, w, k), and counts the tokens each key seals. A seal batch
//! reserves all its tokens at once under one lock, so the count is exact
//! however many batches seal in parallel: when the current key has room
//! for only part of a batch, the batch takes that part and the rest goes
//! to a fresh key index. No key ever seals more than the bound
//! ([`MAX_SEALS_PER_KEY`] unless lowered with [`Exchange::with_seal_bound`]).
//!
//! The counts live in memory only. What keeps a restart from sealing on
//! under a key whose count was lost is that every key index is drawn at
//! random (32 bits) from the exchange's [`RandomSource`], per process and
//! per rotation, and never reused within the process; two processes (a
//! restart, a second replica) share a key only if they draw the same index
//! for the same addressee and day. SPEC §7.3 gives the numbers.
//!
//! A reservation counts every item of the batch, including the ones that
//! then fail (a bad code): the count bounds the messages a key sealed from
//! above, never from below.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use super::{BatchError, Exchange, RandomFailed};
use crate::agency::AgencyId;
use crate::generation::Generation;
use crate::keys::KeyHierarchy;
use crate::token::{KeyName, MAX_SEALS_PER_KEY, SealKey, Window};

/// Draws of a key index that may land on an index this process already
/// used for the same addressee and window before the source is taken to be
/// broken. (A sound source repeats a 32-bit draw with chance about 2^-32.)
const INDEX_DRAWS: usize = 8;

/// The key each (addressee, generation, window) seals under now, and its
/// count.
pub(super) struct SealingKeys {
    bound: u64,
    current: Mutex<HashMap<(AgencyId, Generation, Window), Current>>,
}

/// One (addressee, window)'s sealing state.
struct Current {
    key: Arc<SealKey>,
    /// Tokens reserved under `key`: never more than the bound.
    used: u64,
    /// Every index this process has sealed under for this addressee and
    /// window, the current one included.
    spent: HashSet<u32>,
}

impl SealingKeys {
    /// Sealing state for keys that seal at most `bound` tokens each.
    pub(super) fn new(bound: u64) -> Self {
        SealingKeys {
            bound: bound.clamp(1, MAX_SEALS_PER_KEY),
            current: Mutex::new(HashMap::new()),
        }
    }

    /// The most tokens one key seals.
    pub(super) fn bound(&self) -> u64 {
        self.bound
    }
}

/// The keys a batch seals under, in order, with how many of its tokens
/// each seals: the first `n₀` items under the first key, and so on.
#[derive(Debug)]
pub(super) struct Reservation(Vec<(Arc<SealKey>, u64)>);

impl Reservation {
    /// The key of each item of the batch, in order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &SealKey> {
        self.0.iter().flat_map(|(key, count)| {
            std::iter::repeat_n(&**key, usize::try_from(*count).unwrap_or(usize::MAX))
        })
    }
}

impl Exchange {
    /// Reserves `count` tokens to `addressee` in `window`: the keys to seal
    /// them under, rotating to a fresh key index whenever the current key
    /// reaches the bound. Fails only if no fresh index can be drawn; the
    /// tokens reserved before that stay counted.
    pub(super) fn reserve_seals(
        &self,
        addressee: &AgencyId,
        generation: Generation,
        window: Window,
        count: usize,
    ) -> Result<Reservation, BatchError> {
        let keys = self
            .keyring
            .get(generation)
            .map_err(BatchError::Generation)?;
        let bound = self.sealing.bound;
        let mut left = u64::try_from(count).unwrap_or(u64::MAX);
        let mut segments = Vec::with_capacity(1);
        if left == 0 {
            return Ok(Reservation(segments));
        }
        let mut map = self
            .sealing
            .current
            .lock()
            // The state is updated by plain assignments that cannot panic
            // half-way, so a poisoned lock holds consistent counts.
            .unwrap_or_else(PoisonError::into_inner);
        let slot = (addressee.clone(), generation, window);
        if !map.contains_key(&slot) {
            // Keys of days before yesterday seal nothing more; their counts
            // can go (a late batch for such a day starts a fresh index).
            map.retain(|(_, _, w), _| w.get().saturating_add(1) >= window.get());
        }
        let current = match map.entry(slot) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let index = self.draw_key_index(&HashSet::new())?;
                let name = KeyName::generational(generation, window, index);
                let key = self.new_sealing_key(keys, addressee, name)?;
                entry.insert(Current {
                    key,
                    used: 0,
                    spent: HashSet::from([index]),
                })
            }
        };
        loop {
            let room = bound - current.used;
            if room == 0 {
                let index = self.draw_key_index(&current.spent)?;
                let name = KeyName::generational(generation, window, index);
                current.key = self.new_sealing_key(keys, addressee, name)?;
                current.used = 0;
                current.spent.insert(index);
                continue;
            }
            let take = room.min(left);
            current.used += take;
            segments.push((Arc::clone(&current.key), take));
            left -= take;
            if left == 0 {
                break;
            }
        }
        Ok(Reservation(segments))
    }

    /// A random key index that is not in `spent`.
    fn draw_key_index(&self, spent: &HashSet<u32>) -> Result<u32, RandomFailed> {
        for _ in 0..INDEX_DRAWS {
            let mut bytes = [0u8; 4];
            self.random.fill(&mut bytes)?;
            let index = u32::from_be_bytes(bytes);
            if !spent.contains(&index) {
                return Ok(index);
            }
        }
        Err(RandomFailed)
    }

    /// A new sealing key (of the generation of `keys`, which `name` names),
    /// also made known to redemption in this process.
    fn new_sealing_key(
        &self,
        keys: &KeyHierarchy,
        addressee: &AgencyId,
        name: KeyName,
    ) -> Result<Arc<SealKey>, BatchError> {
        let key = Arc::new(SealKey::new(keys, addressee, name).map_err(BatchError::Generation)?);
        self.keep_opening_key(addressee, Arc::clone(&key));
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::agency::{AffairId, Epoch, ItemId};
    use crate::code::Coder;
    use crate::exchange::{ItemError, RandomSource};
    use crate::keys::MasterKey;
    use crate::mynumber::MyNumber;
    use crate::policy::{Affair, Agency, Policy, PolicyVersion, Rule};
    use crate::token::{Claims, Serial, TokenError};

    /// Counts up, four bytes at a time; counts its draws.
    #[derive(Default)]
    struct Counting(AtomicU32);

    impl RandomSource for Counting {
        fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
            for chunk in out.chunks_mut(4) {
                let next = self.0.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                chunk.copy_from_slice(&next[..chunk.len()]);
            }
            Ok(())
        }
    }

    const G1: Generation = Generation::FIRST;

    fn keys() -> KeyHierarchy {
        KeyHierarchy::new(&MasterKey::from_bytes([7; 32]))
    }

    fn id(text: &str) -> AgencyId {
        AgencyId::new(text).unwrap()
    }

    fn counts(reservation: &Reservation) -> Vec<(Option<u32>, u64)> {
        let segments = reservation.0.iter();
        segments.map(|(key, n)| (key.name().index(), *n)).collect()
    }

    #[test]
    fn reservations_split_at_the_bound_and_never_reuse_an_index() {
        let exchange = Exchange::new(keys(), Box::new(Counting::default())).with_seal_bound(100);
        let (b, w) = (id("nta"), Window::new(20_000));
        assert!(counts(&exchange.reserve_seals(&b, G1, w, 0).unwrap()).is_empty());
        assert_eq!(
            counts(&exchange.reserve_seals(&b, G1, w, 30).unwrap()),
            [(Some(0), 30)]
        );
        assert_eq!(
            counts(&exchange.reserve_seals(&b, G1, w, 120).unwrap()),
            [(Some(0), 70), (Some(1), 50)]
        );
        assert_eq!(
            counts(&exchange.reserve_seals(&b, G1, w, 250).unwrap()),
            [(Some(1), 50), (Some(2), 100), (Some(3), 100)]
        );
        // Exactly full: the next batch starts a new key, not an empty segment.
        assert_eq!(
            counts(&exchange.reserve_seals(&b, G1, w, 1).unwrap()),
            [(Some(4), 1)]
        );
        // Another addressee and another day have keys and counts of their own.
        assert_eq!(
            counts(&exchange.reserve_seals(&id("mhlw"), G1, w, 100).unwrap()),
            [(Some(5), 100)]
        );
        let tomorrow = Window::new(20_001);
        let next_day = exchange.reserve_seals(&b, G1, tomorrow, 1).unwrap();
        assert_eq!(
            next_day.0[0].0.name(),
            KeyName::generational(G1, tomorrow, 6)
        );
        // Each item of a batch gets the key of its segment, in order.
        let batch = exchange.reserve_seals(&b, G1, w, 101).unwrap();
        let per_item: Vec<_> = batch.keys().map(|k| k.name().index()).collect();
        assert_eq!(per_item.len(), 101);
        assert!(per_item[..99].iter().all(|i| *i == Some(4)));
        assert!(per_item[99..].iter().all(|i| *i == Some(7)));
    }

    /// A key index the source repeats is drawn again, not reused.
    #[test]
    fn a_repeated_draw_is_skipped() {
        struct Repeats(AtomicU32);
        impl RandomSource for Repeats {
            fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
                // 5, 5, 5, 9, 9, ...
                let n = self.0.fetch_add(1, Ordering::Relaxed);
                out.copy_from_slice(&(if n < 3 { 5u32 } else { 9 }).to_be_bytes());
                Ok(())
            }
        }
        let exchange = Exchange::new(keys(), Box::new(Repeats(AtomicU32::new(0))));
        let exchange = exchange.with_seal_bound(2);
        let (b, w) = (id("nta"), Window::new(20_000));
        assert_eq!(
            counts(&exchange.reserve_seals(&b, G1, w, 4).unwrap()),
            [(Some(5), 2), (Some(9), 2)]
        );
        // Only 9 is left to draw now: spent, eight times over.
        assert_eq!(
            exchange.reserve_seals(&b, G1, w, 1).unwrap_err(),
            BatchError::Random(RandomFailed)
        );
    }

    fn policy() -> Policy {
        let agency = |name: &str| Agency {
            id: id(name),
            name: name.to_owned(),
            certificates: vec![name.to_owned()],
            capabilities: BTreeSet::new(),
            epoch: Epoch::new(1).unwrap(),
            epochs: crate::policy::epochs_of_generation_one(
                Epoch::new(1).unwrap(),
                &Default::default(),
            ),
            quotas: Default::default(),
        };
        Policy::new(
            PolicyVersion::of_text("test"),
            vec![agency("mhlw"), agency("nta")],
            vec![Affair {
                id: AffairId::new("health").unwrap(),
                name: "health".to_owned(),
                legal_basis: "test".to_owned(),
            }],
            vec![Rule {
                requester: id("mhlw"),
                affair: AffairId::new("health").unwrap(),
                provider: id("nta"),
                items: [ItemId::new("income").unwrap()].into(),
                token_lifetime: 3600,
                non_disclosure: false,
                non_disclosure_max_days: None,
            }],
        )
        .unwrap()
    }

    /// Redemption derives the key a header names, but caches it only once
    /// it opened an authentic token: forged key names cost no memory.
    #[test]
    fn only_keys_that_opened_an_authentic_token_are_cached() {
        let now = 1_790_000_000;
        let keys = keys();
        let number = MyNumber::parse(b"123456789018").unwrap();
        let claims = Claims {
            handle: Coder::new(&keys, id("mhlw"), Epoch::new(1).unwrap()).handle(&number),
            serial: Serial::from_bytes([1; 16]),
            requester: id("mhlw"),
            affair: AffairId::new("health").unwrap(),
            items: vec![ItemId::new("income").unwrap()],
            expires_at: now + 3600,
            non_disclosure_until: None,
        };
        // Sealed by another process under its key index 77.
        let name = KeyName::indexed(Window::containing(now), 77);
        let token = SealKey::new(&keys, &id("nta"), name)
            .unwrap()
            .seal(&claims, [2; 12])
            .unwrap();
        let exchange = Exchange::new(keys, Box::new(Counting::default()));
        let policy = policy();
        let cached = || exchange.opening_keys.0.read().unwrap().len();
        let forged: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                let mut bytes = token.as_bytes().to_vec();
                bytes[5..9].copy_from_slice(&(1000 + i).to_be_bytes());
                bytes
            })
            .collect();
        let slices: Vec<&[u8]> = forged.iter().map(Vec::as_slice).collect();
        let done = exchange.redeem(&policy, &id("nta"), &slices, now).unwrap();
        assert!(
            done.iter()
                .all(|r| { r.as_ref().unwrap_err().error == ItemError::Token(TokenError::Forged) })
        );
        assert_eq!(cached(), 0);
        for _ in 0..2 {
            let done = exchange
                .redeem(&policy, &id("nta"), &[token.as_bytes()], now)
                .unwrap();
            assert!(done[0].is_ok());
            assert_eq!(cached(), 1);
        }
        assert!(exchange.opening_keys.get(&(id("nta"), name)).is_some());
    }
}
