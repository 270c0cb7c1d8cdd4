//! Re-issued My Numbers (個人番号の変更) and suspended people.
//!
//! A person whose number leaked gets a new one, but keeps every agency
//! code: the codes hang on the person's *original* number. fugo resolves a
//! number before it becomes a handle:
//!
//! ```text
//! number n ──r = AES-256(K_ref, B(n))──► alias table
//!     no alias:            n is used as it is
//!     alias current(n₀):   n₀ is used: derive(n) gives n₀'s codes
//!     alias superseded:    refused, "number superseded"
//! ```
//!
//! and, for the person (keyed by r(n₀)), keeps the current number (for
//! reidentify) and any suspension. Nothing is stored plain: table keys are
//! keyed references r (a keyed permutation of the number block under a key
//! of its own, so a reference is neither a number nor a handle), values are
//! AES-256-GCM under K_persons with the table and the reference as
//! associated data, so a value moved to another key does not open.
//!
//! Resolving by number rather than by handle keeps the mapping independent
//! of which master key makes the handles (D190). The [`Persons`] registry
//! holds the opened tables in memory, so derive stays pure computation; it
//! changes only through [`Persons::apply`], after the store has committed
//! the [`Change`] (the service and the CLI do the storing; this crate
//! opens no file).

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{PoisonError, RwLock};

use aes::cipher::{BlockCipherEncrypt, KeyInit};
use aes::{Aes256, Block};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::code::{PersonHandle, number_with, person_block};
use crate::keys::{KeyHierarchy, PersonKey};
use crate::mynumber::MyNumber;

/// HKDF-Expand info of K_ref, the key of the tables' keyed references.
pub const INFO_PERSONS_REFERENCE: &[u8] = b"fugo/v1/persons/reference";
/// HKDF-Expand info of K_persons, the AEAD key of the tables' values.
pub const INFO_PERSONS_SEAL: &[u8] = b"fugo/v1/persons/seal";

/// Length of an AES-GCM nonce of a stored value.
pub const NONCE_LEN: usize = 12;

/// The number is one a re-issue replaced: it derives nothing any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("number superseded")]
pub struct Superseded;

/// The person is suspended: seal and redeem refuse, saying no more (the
/// reason is for holders of `suspend` or `reissue` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("person unavailable")]
pub struct Unavailable;

/// Which table a stored entry belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// r(n) → whether n is the current or a superseded number of the
    /// person, and the person's original number.
    Alias = 1,
    /// r(n₀) → the person's current number and suspension.
    Person = 2,
}

impl Table {
    /// The stored code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The table of stored code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Table::Alias),
            2 => Some(Table::Person),
            _ => None,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Table::Alias => b"fugo/v1/persons/alias",
            Table::Person => b"fugo/v1/persons/person",
        }
    }
}

/// Why a person is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The person died.
    Deceased = 1,
    /// Removed from the resident register (住民票の消除).
    RemovedFromRegister = 2,
    /// Held while fraud is investigated.
    FraudHold = 3,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 3] = [
        Reason::Deceased,
        Reason::RemovedFromRegister,
        Reason::FraudHold,
    ];

    /// The stored code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The reason of stored code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// Its name (`deceased`, `removed_from_register`, `fraud_hold`).
    pub fn name(self) -> &'static str {
        match self {
            Reason::Deceased => "deceased",
            Reason::RemovedFromRegister => "removed_from_register",
            Reason::FraudHold => "fraud_hold",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A suspension: why and since when (unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspension {
    /// Why.
    pub reason: Reason,
    /// Since when, unix milliseconds.
    pub since_ms: u64,
}

/// Why a re-issue, a suspension or a lift was refused, or a stored entry
/// could not be read. Never holds a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PersonsError {
    /// The number was replaced by a re-issue.
    #[error("field {field}: number superseded (a re-issue replaced it)")]
    Superseded {
        /// The request field.
        field: &'static str,
    },
    /// Old and new number are the same.
    #[error("field new_number: the new number is the old number")]
    SameNumber,
    /// The new number is already known to the re-issue tables.
    #[error(
        "field new_number: the new number is already recorded (re-issued to, or superseded); \
         a number is re-issued to once"
    )]
    NewNumberKnown,
    /// Lift of a person who is not suspended.
    #[error("field number: the person is not suspended")]
    NotSuspended,
    /// A value could not be sealed (AES-GCM refused it: cannot happen for
    /// these 9- and 17-byte values, and is not hidden if it does).
    #[error("a persons table value could not be sealed")]
    Sealing,
    /// A stored entry that does not open or decode under this key.
    #[error("the persons table is corrupt or of another master key: {table:?} entry {position}")]
    Corrupt {
        /// Its table.
        table: Table,
        /// Its position in the load, from 0.
        position: usize,
    },
}

/// One stored entry: the table, the keyed reference, the sealed value
/// (nonce ‖ AES-256-GCM ciphertext and tag).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The table.
    pub table: Table,
    /// The keyed reference r.
    pub key: [u8; 16],
    /// nonce ‖ ciphertext ‖ tag.
    pub value: Vec<u8>,
}

impl fmt::Debug for StoredEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredEntry")
            .field("table", &self.table)
            .field("bytes", &self.value.len())
            .finish()
    }
}

/// An alias: a re-issued number (current) or a replaced one (superseded).
#[derive(Debug)]
struct Alias {
    superseded: bool,
    original: MyNumber,
}

/// A person with a re-issue or a suspension on record.
#[derive(Debug)]
struct Person {
    current: MyNumber,
    suspension: Option<Suspension>,
}

#[derive(Debug)]
enum Update {
    Alias([u8; 16], Alias),
    Person([u8; 16], Person),
}

/// What a re-issue, a suspension or a lift changes: the entries to store
/// (in the same commit as its audit record), then to [`Persons::apply`].
/// `Debug` shows counts only.
pub struct Change {
    /// The entries to store, replacing any under the same table and key.
    pub entries: Vec<StoredEntry>,
    updates: Vec<Update>,
    original: MyNumber,
    new_number: Option<MyNumber>,
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl Change {
    /// The person's original number (whose handle is the person's in every
    /// code and in the audit trail).
    pub fn original(&self) -> &MyNumber {
        &self.original
    }

    /// The new number of a re-issue.
    pub fn new_number(&self) -> Option<&MyNumber> {
        self.new_number.as_ref()
    }
}

/// What holders of `suspend` and `reissue` may read about a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Whether a re-issue replaced the number.
    pub superseded: bool,
    /// Whether the number is a re-issued one (the person had another).
    pub reissued: bool,
    /// The person's suspension, if any.
    pub suspension: Option<Suspension>,
}

/// Hashes a keyed reference by folding its bytes: a reference is already a
/// keyed pseudorandom permutation's output, which no caller can steer
/// without the key, so it needs no keyed hash of its own (SipHash made
/// derive with re-issues on record a third slower).
#[derive(Default)]
struct ReferenceHasher(u64);

impl Hasher for ReferenceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(23) ^ u64::from_le_bytes(word);
        }
    }
}

/// A table keyed by references.
type ByReference<V> = HashMap<[u8; 16], V, BuildHasherDefault<ReferenceHasher>>;

#[derive(Debug, Default)]
struct State {
    aliases: ByReference<Alias>,
    people: ByReference<Person>,
    suspended: usize,
}

impl State {
    fn put(&mut self, update: Update) {
        match update {
            Update::Alias(key, alias) => {
                self.aliases.insert(key, alias);
            }
            Update::Person(key, person) => {
                let now = person.suspension.is_some();
                let before = self
                    .people
                    .insert(key, person)
                    .is_some_and(|old| old.suspension.is_some());
                self.suspended = self.suspended + usize::from(now) - usize::from(before);
            }
        }
    }
}

/// The re-issue and suspension tables, opened, in memory.
pub struct Persons {
    reference: Aes256,
    seal: Aes256Gcm,
    /// K_person of the generation the tables are keyed from (the audit
    /// trail's): suspension checks open handles of that generation.
    person: PersonKey,
    state: RwLock<State>,
}

impl fmt::Debug for Persons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.read();
        f.debug_struct("Persons")
            .field("aliases", &state.aliases.len())
            .field("people", &state.people.len())
            .finish()
    }
}

impl Persons {
    /// Empty tables under `keys`.
    pub fn new(keys: &KeyHierarchy) -> Self {
        let reference = keys.expand_labelled(INFO_PERSONS_REFERENCE);
        let seal = keys.expand_labelled(INFO_PERSONS_SEAL);
        Persons {
            reference: Aes256::new((&*reference).into()),
            seal: Aes256Gcm::new((&*seal).into()),
            person: keys.person_key(),
            state: RwLock::new(State::default()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // Updates are whole inserts; a poisoned lock holds consistent maps.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens stored entries into memory (at start). Every entry must open.
    pub fn load(&self, entries: &[StoredEntry]) -> Result<(), PersonsError> {
        let mut state = State::default();
        for (position, entry) in entries.iter().enumerate() {
            let corrupt = PersonsError::Corrupt {
                table: entry.table,
                position,
            };
            let plain = self.open(entry).ok_or(corrupt)?;
            state.put(decode(entry.table, entry.key, &plain).ok_or(corrupt)?);
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
        Ok(())
    }

    /// How many aliases and people are on record.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.read();
        (state.aliases.len(), state.people.len())
    }

    /// The keyed reference of a number.
    fn reference(&self, value: u64) -> [u8; 16] {
        let mut block = [person_block(value)];
        self.reference
            .encrypt_blocks(Block::cast_slice_from_core_mut(&mut block));
        block[0]
    }

    /// Resolves person blocks in place, before they become handles: a
    /// re-issued number's block becomes its original number's; superseded
    /// numbers' blocks are removed. Returns the positions (in `blocks` as
    /// given) of the removed ones, ascending; `scratch` is working space.
    pub(crate) fn resolve_blocks(
        &self,
        blocks: &mut Vec<[u8; 16]>,
        scratch: &mut Vec<[u8; 16]>,
    ) -> Vec<usize> {
        let state = self.read();
        if state.aliases.is_empty() || blocks.is_empty() {
            return Vec::new();
        }
        scratch.clear();
        scratch.extend_from_slice(blocks);
        self.reference
            .encrypt_blocks(Block::cast_slice_from_core_mut(scratch));
        let mut removed = Vec::new();
        for (position, reference) in scratch.iter().enumerate() {
            if let Some(alias) = state.aliases.get(reference) {
                if alias.superseded {
                    removed.push(position);
                } else {
                    blocks[position] = person_block(alias.original.expose_value());
                }
            }
        }
        scratch.zeroize();
        if !removed.is_empty() {
            let mut position = 0;
            blocks.retain_mut(|block| {
                let keep = removed.binary_search(&position).is_err();
                if !keep {
                    block.zeroize();
                }
                position += 1;
                keep
            });
        }
        removed
    }

    /// The number derive uses for `number`: its original one, or
    /// [`Superseded`].
    pub fn resolve(&self, number: &MyNumber) -> Result<MyNumber, Superseded> {
        let state = self.read();
        match state.aliases.get(&self.reference(number.expose_value())) {
            None => Ok(number.duplicate()),
            Some(alias) if alias.superseded => Err(Superseded),
            Some(alias) => Ok(alias.original.duplicate()),
        }
    }

    /// The original number of the person `number` is (or was) a number of.
    pub fn original(&self, number: &MyNumber) -> MyNumber {
        let state = self.read();
        match state.aliases.get(&self.reference(number.expose_value())) {
            Some(alias) => alias.original.duplicate(),
            None => number.duplicate(),
        }
    }

    /// The current number of the person whose original number is
    /// `original` (what reidentify returns).
    pub fn current(&self, original: MyNumber) -> MyNumber {
        let state = self.read();
        match state.people.get(&self.reference(original.expose_value())) {
            Some(person) => person.current.duplicate(),
            None => original,
        }
    }

    /// [`Unavailable`] if the person behind `handle` (a handle of an
    /// original number) is suspended. Free while no one is.
    pub(crate) fn check_available(&self, handle: &PersonHandle) -> Result<(), Unavailable> {
        let state = self.read();
        if state.suspended == 0 {
            return Ok(());
        }
        // A handle that opens no number was refused before it got here.
        let Ok(original) = number_with(&self.person, handle) else {
            return Ok(());
        };
        match state.people.get(&self.reference(original.expose_value())) {
            Some(Person {
                suspension: Some(_),
                ..
            }) => Err(Unavailable),
            _ => Ok(()),
        }
    }

    /// What a holder of `suspend` or `reissue` may read about `number`.
    pub fn status(&self, number: &MyNumber) -> Status {
        let state = self.read();
        let alias = state.aliases.get(&self.reference(number.expose_value()));
        let original = match alias {
            Some(alias) => alias.original.expose_value(),
            None => number.expose_value(),
        };
        Status {
            superseded: alias.is_some_and(|alias| alias.superseded),
            reissued: alias.is_some_and(|alias| !alias.superseded),
            suspension: state
                .people
                .get(&self.reference(original))
                .and_then(|person| person.suspension),
        }
    }

    /// The change that re-issues `old` (the person's current number) as
    /// `new`, sealed with `nonces` (one per entry, [`NONCE_LEN`] bytes
    /// each, three in all). Checks only the tables: that `new` has no
    /// history in the audit trail is the caller's to check.
    pub fn plan_reissue(
        &self,
        old: &MyNumber,
        new: &MyNumber,
        nonces: &[u8; 3 * NONCE_LEN],
    ) -> Result<Change, PersonsError> {
        if old.expose_value() == new.expose_value() {
            return Err(PersonsError::SameNumber);
        }
        let state = self.read();
        let old_ref = self.reference(old.expose_value());
        let new_ref = self.reference(new.expose_value());
        let original = match state.aliases.get(&old_ref) {
            Some(alias) if alias.superseded => {
                return Err(PersonsError::Superseded {
                    field: "old_number",
                });
            }
            Some(alias) => alias.original.duplicate(),
            None => old.duplicate(),
        };
        if state.aliases.contains_key(&new_ref) || state.people.contains_key(&new_ref) {
            return Err(PersonsError::NewNumberKnown);
        }
        let person_ref = self.reference(original.expose_value());
        let suspension = state
            .people
            .get(&person_ref)
            .and_then(|person| person.suspension);
        let updates = vec![
            Update::Alias(
                old_ref,
                Alias {
                    superseded: true,
                    original: original.duplicate(),
                },
            ),
            Update::Alias(
                new_ref,
                Alias {
                    superseded: false,
                    original: original.duplicate(),
                },
            ),
            Update::Person(
                person_ref,
                Person {
                    current: new.duplicate(),
                    suspension,
                },
            ),
        ];
        self.change(updates, nonces, original, Some(new.duplicate()))
    }

    /// The change that suspends the person of `number` (a current number)
    /// for `suspension`, or lifts the suspension (`None`), sealed with the
    /// one `nonce`.
    pub fn plan_suspension(
        &self,
        number: &MyNumber,
        suspension: Option<Suspension>,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Change, PersonsError> {
        let state = self.read();
        let original = match state.aliases.get(&self.reference(number.expose_value())) {
            Some(alias) if alias.superseded => {
                return Err(PersonsError::Superseded { field: "number" });
            }
            Some(alias) => alias.original.duplicate(),
            None => number.duplicate(),
        };
        let person_ref = self.reference(original.expose_value());
        let person = state.people.get(&person_ref);
        if suspension.is_none() && person.is_none_or(|person| person.suspension.is_none()) {
            return Err(PersonsError::NotSuspended);
        }
        let current = person.map_or_else(|| original.duplicate(), |p| p.current.duplicate());
        let updates = vec![Update::Person(
            person_ref,
            Person {
                current,
                suspension,
            },
        )];
        self.change(updates, nonce, original, None)
    }

    fn change(
        &self,
        updates: Vec<Update>,
        nonces: &[u8],
        original: MyNumber,
        new_number: Option<MyNumber>,
    ) -> Result<Change, PersonsError> {
        let entries = updates
            .iter()
            .zip(nonces.chunks_exact(NONCE_LEN))
            .map(|(update, nonce)| self.seal(update, nonce))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Change {
            entries,
            updates,
            original,
            new_number,
        })
    }

    /// Takes a change into memory, once the store has committed it.
    pub fn apply(&self, change: Change) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        for update in change.updates {
            state.put(update);
        }
    }

    fn seal(&self, update: &Update, nonce: &[u8]) -> Result<StoredEntry, PersonsError> {
        let (table, key, mut plain) = encode(update);
        let aad = aad(table, &key);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let sealed = self.seal.encrypt(
            &Nonce::from(nonce_bytes),
            Payload {
                msg: &plain[..],
                aad: &aad,
            },
        );
        plain.zeroize();
        let mut value = nonce_bytes.to_vec();
        value.extend_from_slice(&sealed.map_err(|_| PersonsError::Sealing)?);
        Ok(StoredEntry { table, key, value })
    }

    fn open(&self, entry: &StoredEntry) -> Option<Zeroizing<Vec<u8>>> {
        if entry.value.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = entry.value.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let aad = aad(entry.table, &entry.key);
        self.seal
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

fn aad(table: Table, key: &[u8; 16]) -> Vec<u8> {
    let mut aad = table.label().to_vec();
    aad.push(b'/');
    aad.extend_from_slice(key);
    aad
}

/// Plain value forms: Alias = state (1 current, 2 superseded) ‖ original
/// (u64 BE); Person = current (u64 BE) ‖ reason (0 none) ‖ since_ms (u64 BE).
fn encode(update: &Update) -> (Table, [u8; 16], Vec<u8>) {
    match update {
        Update::Alias(key, alias) => {
            let mut plain = vec![if alias.superseded { 2 } else { 1 }];
            plain.extend_from_slice(&alias.original.expose_value().to_be_bytes());
            (Table::Alias, *key, plain)
        }
        Update::Person(key, person) => {
            let mut plain = person.current.expose_value().to_be_bytes().to_vec();
            let (reason, since) = person
                .suspension
                .map_or((0, 0), |s| (s.reason.code(), s.since_ms));
            plain.push(reason);
            plain.extend_from_slice(&since.to_be_bytes());
            (Table::Person, *key, plain)
        }
    }
}

fn decode(table: Table, key: [u8; 16], plain: &[u8]) -> Option<Update> {
    let u64_at = |at: usize| -> Option<u64> {
        let bytes: [u8; 8] = plain.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    };
    match table {
        Table::Alias if plain.len() == 9 => {
            let superseded = match plain[0] {
                1 => false,
                2 => true,
                _ => return None,
            };
            let original = MyNumber::from_value(u64_at(1)?).ok()?;
            Some(Update::Alias(
                key,
                Alias {
                    superseded,
                    original,
                },
            ))
        }
        Table::Person if plain.len() == 17 => {
            let current = MyNumber::from_value(u64_at(0)?).ok()?;
            let suspension = match plain[8] {
                0 => None,
                code => Some(Suspension {
                    reason: Reason::from_code(code)?,
                    since_ms: u64_at(9)?,
                }),
            };
            Some(Update::Person(
                key,
                Person {
                    current,
                    suspension,
                },
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::{AgencyId, Epoch};
    use crate::batch::BatchDeriver;
    use crate::code::Coder;
    use crate::keys::MasterKey;
    use crate::mynumber::{ParseError, with_check_digit};

    fn keys(byte: u8) -> KeyHierarchy {
        KeyHierarchy::new(&MasterKey::from_bytes([byte; 32]))
    }

    fn number(seed: u64) -> MyNumber {
        MyNumber::parse(&with_check_digit(seed)).unwrap()
    }

    fn nonces(n: u8) -> [u8; 3 * NONCE_LEN] {
        [n; 3 * NONCE_LEN]
    }

    /// Plans and applies a re-issue; returns the stored entries.
    fn reissue(persons: &Persons, old: &MyNumber, new: &MyNumber) -> Vec<StoredEntry> {
        let change = persons.plan_reissue(old, new, &nonces(1)).unwrap();
        let entries = change.entries.clone();
        persons.apply(change);
        entries
    }

    #[derive(Debug, PartialEq)]
    enum Row {
        Code(Vec<u8>),
        Bad(ParseError),
        Superseded,
    }

    impl From<ParseError> for Row {
        fn from(error: ParseError) -> Self {
            Row::Bad(error)
        }
    }

    impl From<Superseded> for Row {
        fn from(_: Superseded) -> Self {
            Row::Superseded
        }
    }

    fn derive_rows(coder: &Coder, persons: &Persons, inputs: &[&[u8]]) -> Vec<Row> {
        let mut rows = Vec::new();
        BatchDeriver::new(coder).derive_resolved(
            persons,
            inputs.iter().map(|input| Ok::<_, Row>(*input)),
            |result| {
                rows.push(match result {
                    Ok(text) => Row::Code(text.to_vec()),
                    Err(row) => row,
                })
            },
        );
        rows
    }

    #[test]
    fn a_chain_resolves_to_the_original_and_supersedes_the_rest() {
        let keys = keys(7);
        let persons = Persons::new(&keys);
        let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(3).unwrap());
        let (n0, n1, n2, other) = (number(1), number(2), number(3), number(4));
        reissue(&persons, &n0, &n1);
        reissue(&persons, &n1, &n2);
        let original = coder.derive(&n0).to_text().to_vec();
        let digits = |n: &MyNumber| n.expose_digits().to_vec();
        // Items keep their places: a bad row, superseded ones, resolved ones.
        let (d0, d1, d2, d4) = (digits(&n0), digits(&n1), digits(&n2), digits(&other));
        let rows = derive_rows(&coder, &persons, &[&d2, b"12", &d0, &d4, &d1, &d2]);
        assert_eq!(
            rows,
            [
                Row::Code(original.clone()),
                Row::Bad(ParseError::WrongLength { length: 2 }),
                Row::Superseded,
                Row::Code(coder.derive(&other).to_text().to_vec()),
                Row::Superseded,
                Row::Code(original),
            ]
        );
        assert_eq!(
            persons.resolve(&n2).unwrap().expose_value(),
            n0.expose_value()
        );
        assert_eq!(persons.resolve(&n1).unwrap_err(), Superseded);
        assert_eq!(
            persons.current(n0.duplicate()).expose_value(),
            n2.expose_value()
        );
        assert_eq!(
            persons.current(other.duplicate()).expose_value(),
            other.expose_value()
        );
        // Refusals: a replaced old number, a known new one, the same one.
        let refuse = |old: &MyNumber, new: &MyNumber| {
            persons.plan_reissue(old, new, &nonces(2)).unwrap_err()
        };
        assert_eq!(
            refuse(&n1, &number(9)),
            PersonsError::Superseded {
                field: "old_number"
            }
        );
        assert_eq!(refuse(&n2, &n0), PersonsError::NewNumberKnown);
        assert_eq!(refuse(&n2, &n1), PersonsError::NewNumberKnown);
        assert_eq!(refuse(&n2, &n2), PersonsError::SameNumber);
    }

    #[test]
    fn without_re_issues_derive_is_unchanged() {
        let keys = keys(7);
        let persons = Persons::new(&keys);
        let coder = Coder::new(&keys, AgencyId::new("nta").unwrap(), Epoch::new(1).unwrap());
        let n = number(5);
        let rows = derive_rows(&coder, &persons, &[&n.expose_digits()[..]]);
        assert_eq!(rows, [Row::Code(coder.derive(&n).to_text().to_vec())]);
    }

    #[test]
    fn stored_entries_reload_only_under_their_key_and_reference() {
        let keys7 = keys(7);
        let persons = Persons::new(&keys7);
        let (n0, n1, n2) = (number(11), number(12), number(13));
        let mut entries = reissue(&persons, &n0, &n1);
        let suspend = persons
            .plan_suspension(
                &n1,
                Some(Suspension {
                    reason: Reason::FraudHold,
                    since_ms: 77,
                }),
                &[3; NONCE_LEN],
            )
            .unwrap();
        entries.extend(suspend.entries.clone());
        persons.apply(suspend);
        // No entry holds a number, its value bytes or a handle in the plain.
        for entry in &entries {
            for n in [&n0, &n1] {
                let value = n.expose_value().to_be_bytes();
                let handle = *crate::code::handle_of(&keys7.person_key(), keys7.generation(), n)
                    .expose_bytes();
                for needle in [&value[3..], &handle[..], &n.expose_digits()[..]] {
                    let mut stored = entry.key.to_vec();
                    stored.extend_from_slice(&entry.value);
                    assert!(!stored.windows(needle.len()).any(|w| w == needle));
                }
            }
            let shown = format!("{entry:?}");
            assert!(
                shown.ends_with(&format!("bytes: {} }}", entry.value.len())),
                "{shown}"
            );
        }
        // Reloaded by a fresh process of the same key: the same answers.
        let again = Persons::new(&keys7);
        again.load(&entries).unwrap();
        assert_eq!(
            again.resolve(&n1).unwrap().expose_value(),
            n0.expose_value()
        );
        assert_eq!(again.resolve(&n0).unwrap_err(), Superseded);
        let status = again.status(&n1);
        assert!(status.reissued && !status.superseded);
        assert_eq!(status.suspension.unwrap().reason, Reason::FraudHold);
        assert_eq!(status.suspension.unwrap().since_ms, 77);
        // Another key opens nothing.
        let other = Persons::new(&keys(8));
        assert!(matches!(
            other.load(&entries).unwrap_err(),
            PersonsError::Corrupt { position: 0, .. }
        ));
        // A value moved to another reference does not open.
        let mut moved = entries.clone();
        let aliases: Vec<usize> = (0..moved.len())
            .filter(|i| moved[*i].table == Table::Alias)
            .collect();
        let (a, b) = (aliases[0], aliases[1]);
        let value = moved[a].value.clone();
        moved[a].value = moved[b].value.clone();
        moved[b].value = value;
        assert!(matches!(
            Persons::new(&keys7).load(&moved).unwrap_err(),
            PersonsError::Corrupt { .. }
        ));
        // Nor into another table.
        let mut retabled = entries.clone();
        retabled[a].table = Table::Person;
        assert!(Persons::new(&keys7).load(&retabled).is_err());
        // n2 unused so far: a later re-issue goes on from the reloaded state.
        assert!(again.plan_reissue(&n1, &n2, &nonces(4)).is_ok());
    }

    #[test]
    fn suspension_is_by_person_and_lifts() {
        let keys = keys(7);
        let persons = Persons::new(&keys);
        let (n0, n1, other) = (number(21), number(22), number(23));
        let handle =
            |n: &MyNumber| crate::code::handle_of(&keys.person_key(), keys.generation(), n);
        assert_eq!(persons.check_available(&handle(&n0)), Ok(()));
        let hold = Some(Suspension {
            reason: Reason::Deceased,
            since_ms: 1,
        });
        persons.apply(persons.plan_suspension(&n0, hold, &[1; 12]).unwrap());
        assert_eq!(persons.check_available(&handle(&n0)), Err(Unavailable));
        assert_eq!(persons.check_available(&handle(&other)), Ok(()));
        // A re-issue keeps it with the person (whose handle stays n0's).
        reissue(&persons, &n0, &n1);
        assert_eq!(persons.check_available(&handle(&n0)), Err(Unavailable));
        assert_eq!(
            persons.plan_suspension(&n0, None, &[2; 12]).unwrap_err(),
            PersonsError::Superseded { field: "number" }
        );
        persons.apply(persons.plan_suspension(&n1, None, &[2; 12]).unwrap());
        assert_eq!(persons.check_available(&handle(&n0)), Ok(()));
        assert_eq!(
            persons.plan_suspension(&n1, None, &[3; 12]).unwrap_err(),
            PersonsError::NotSuspended
        );
        assert_eq!(format!("{persons:?}"), "Persons { aliases: 2, people: 1 }");
    }
}
