//! Key custody: the master key held split among custodians (Shamir's
//! secret sharing, [`crate::shamir`]) instead of in one file.
//!
//! `fugo keys split` turns a key file into share files ([`share`]); a
//! server configured with `[custody] threshold = M` and no `master_key`
//! (or a `[[keyring]]` generation with `[keyring.custody]`) starts sealed
//! and rebuilds each such generation's key from its shares, which
//! custodians hand it with `fugo unseal` over a Unix-domain socket
//! ([`unseal`]) or, as admins, with `fugo admin unseal` over the admin
//! listener; each share goes to the generation whose key it names
//! ([`KeyringUnsealer`]). No single custodian can start it, and shares of
//! another key or of another split are refused by name.

pub mod share;
pub mod unseal;

pub use share::{ShareError, ShareFile, SplitError, split_key, write_shares};
pub use unseal::{
    Answer, KeyringSupplied, KeyringUnsealer, Open, SealProgress, SealStatus, SendError, Supplied,
    UnsealError, Unsealer, Unsealing, send_share,
};
