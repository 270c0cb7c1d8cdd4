//! The re-issue and suspension tables (`fugo_core::persons`) in the
//! store: how a [`Change`] becomes stored entries, and how the server and
//! the offline `fugo derive` load them into memory at start (D193).

use fugo_log::store::{PersonsEntry, Store};

use crate::persons::{Change, Persons, PersonsError, StoredEntry, Table};

/// Why the tables could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The store could not be read.
    #[error("cannot read the re-issue and suspension tables: {0}")]
    Store(#[from] fugo_log::store::StoreError),
    /// An entry does not open under this master key.
    #[error("{0}")]
    Entry(#[from] PersonsError),
    /// An entry of a table this version does not know.
    #[error("the persons table holds an entry of unknown table {0} (written by a newer fugo?)")]
    UnknownTable(u8),
}

/// The entries of `change`, as the store keeps them.
pub fn stored(change: &Change) -> Vec<PersonsEntry> {
    change
        .entries
        .iter()
        .map(|entry| PersonsEntry {
            table: entry.table.code(),
            key: entry.key,
            value: entry.value.clone(),
        })
        .collect()
}

/// Loads every stored entry of `store` into `persons`; returns how many.
pub fn load(store: &mut impl Store, persons: &Persons) -> Result<usize, LoadError> {
    load_entries(store.persons()?, persons)
}

/// Loads `entries` (all of a store's, as [`Store::persons`] gives them)
/// into `persons`, replacing what it held; returns how many.
pub fn load_entries(entries: Vec<PersonsEntry>, persons: &Persons) -> Result<usize, LoadError> {
    let entries = entries
        .into_iter()
        .map(|entry| {
            Ok(StoredEntry {
                table: Table::from_code(entry.table).ok_or(LoadError::UnknownTable(entry.table))?,
                key: entry.key,
                value: entry.value,
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    persons.load(&entries)?;
    Ok(entries.len())
}
