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

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Exchange, RandomFailed};
use crate::agency::AgencyId;
use crate::token::{KeyName, MAX_SEALS_PER_KEY, SealKey, Window};

/// Draws of a key index that may land on an index this process already
/// used for the same addressee and window before the source is taken to be
/// broken. (A sound source repeats a 32-bit draw with chance about 2^-32.)
const INDEX_DRAWS: usize = 8;

/// The key each (addressee, window) seals under now, and its count.
pub(super) struct SealingKeys {
    bound: u64,
    current: Mutex<HashMap<(AgencyId, Window), Current>>,
}

/// One (addressee, window)'s sealing state.
struct Current {
    key: Arc<SealKey>,
    /// Tokens reserved under `key`: never more than the bound.
    used: u64,
    /// Every index this process has sealed under for this addressee and
    /// window, the current one included.
    spent: Vec<u32>,
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
        window: Window,
        count: usize,
    ) -> Result<Reservation, RandomFailed> {
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
        let slot = (addressee.clone(), window);
        if !map.contains_key(&slot) {
            // Keys of days before yesterday seal nothing more; their counts
            // can go (a late batch for such a day starts a fresh index).
            map.retain(|(_, w), _| w.get().saturating_add(1) >= window.get());
        }
        let current = match map.entry(slot) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let index = self.draw_key_index(&[])?;
                let key = self.new_sealing_key(addressee, KeyName::indexed(window, index));
                entry.insert(Current {
                    key,
                    used: 0,
                    spent: vec![index],
                })
            }
        };
        loop {
            let room = bound - current.used;
            if room == 0 {
                let index = self.draw_key_index(&current.spent)?;
                current.key = self.new_sealing_key(addressee, KeyName::indexed(window, index));
                current.used = 0;
                current.spent.push(index);
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
    fn draw_key_index(&self, spent: &[u32]) -> Result<u32, RandomFailed> {
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

    /// A new sealing key, also made known to redemption in this process.
    fn new_sealing_key(&self, addressee: &AgencyId, name: KeyName) -> Arc<SealKey> {
        let key = Arc::new(SealKey::new(&self.keys, addressee, name));
        self.keep_opening_key(addressee, Arc::clone(&key));
        key
    }
}
