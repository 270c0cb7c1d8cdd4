//! What the log records, and the exact bytes that become Merkle leaves.
//!
//! A [`Record`] is one leaf: one operation on one person (or one tally of
//! refusals that opened nobody). Records are written in [`Group`]s, one per
//! batch of one call: the batch-wide fields live once in the group's
//! [`Header`], each record adds a small [`Entry`].
//!
//! Two encodings are fixed here and must never change for version 1:
//!
//! - the canonical **header encoding** ([`encode_header`]): the store keeps
//!   it once per group and its SHA-256 ([`header_digest`]) goes into every
//!   leaf of the group;
//! - the **leaf bytes** ([`leaf_bytes`]) whose RFC 6962 leaf hash is the tree
//!   leaf. They hold the header digest and the entry, with the person link
//!   and the processing serial replaced by a per-record commitment
//!   ([`link_commitment`]), so an export or a proof can carry leaf bytes
//!   without person links or serials (a serial is known to both parties of
//!   an exchange: in a leaf it would be a value shared across agencies),
//!   and two records of one person share no value.
//!
//! Header encoding, version 1 (all integers big-endian, every string and list
//! prefixed with its length as u64):
//!
//! ```text
//! 0x01 ‖ time_ms u64 ‖ operation u8 ‖ caller ‖ counterpart ‖ affair ‖
//! items (count u64, then each string) ‖ non_disclosure_until u64 ‖
//! policy_version [32] ‖ batch_id ‖ note ‖ count u64
//! ```
//!
//! Header encoding, version 2: a call made by an agency on behalf of another
//! (D214). The caller is the agency acted for (whose codes were made or
//! opened), `agent` the agency that made the call. A header without an
//! agent is always encoded as version 1, so every version-1 record keeps
//! its bytes and digest; version 2 is version 1's fields with the version
//! byte 0x02 and one more string, never empty:
//!
//! ```text
//! 0x02 ‖ (the fields of version 1) ‖ agent
//! ```
//!
//! Leaf bytes, version 1 (74 bytes):
//!
//! ```text
//! 0x01 ‖ header_digest [32] ‖ index u32 ‖ outcome u8 ‖ epoch u32 ‖ commitment [32]
//! commitment = SHA-256("fugo-log/v1/link" ‖ header_digest [32] ‖ index u32 ‖
//!              flags u8 ‖ serial [16] if flags & 1 ‖ person link [16] if flags & 2)
//!              or 32 zero bytes when the record has neither
//! ```
//!
//! `index` is the record's position in its group. A leaf does not hold its
//! sequence number (its position in the tree is that), so the leaves of a
//! group can be computed before the group has a place in the log — on the
//! caller's thread, not the one thread that commits (see [`prepare`]).
//! Header digests differ between groups (each names its call's batch id
//! and time), so (header digest, index) names one record.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The version byte that starts a header encoding and the leaf bytes.
pub const ENCODING_VERSION: u8 = 0x01;

/// The version byte of a header encoding that names an agent (see the
/// module doc); leaf bytes stay version 1.
pub const AGENT_HEADER_VERSION: u8 = 0x02;

/// Domain-separation label of [`link_commitment`].
const LINK_LABEL: &[u8] = b"fugo-log/v1/link";

/// What the caller did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Operation {
    /// Made an agency code from a number.
    Derive = 1,
    /// Made a sealed linkage token for a counterpart.
    Seal = 2,
    /// Opened a sealed token into the redeemer's own code.
    Redeem = 3,
    /// Turned a code back into the person (a privileged operation).
    Reidentify = 4,
    /// The provider confirmed (or refused) an exchange.
    Provision = 5,
    /// A person's records were read through disclosure.
    Disclosure = 6,
    /// An agency read a page of its copy of the log.
    CopyPage = 7,
    /// The server loaded a policy text.
    PolicyLoaded = 8,
    /// A tally of refusals that opened no person (per agency, reason, minute).
    Refusals = 9,
    /// Turned an agency's old codes into its current-epoch codes.
    Rekey = 10,
    /// A person's My Number was re-issued (old → new); the record is
    /// about the person (their link stays the same).
    Reissue = 11,
    /// A person was suspended, the suspension lifted, or its reason read
    /// (the note says which; the reason itself is not in the log).
    Suspension = 12,
    /// The surviving agency of a merger converted the merged agency's
    /// codes into its own (the counterpart is the merged agency).
    Migrate = 13,
    /// An administrator acted through the admin plane (caller
    /// `admin:<identity>`, note: what was done).
    Admin = 14,
    /// The log was restored from a backup: the first record of a new log
    /// origin, whose note says from which checkpoint (see
    /// [`crate::restore`]).
    Restored = 15,
}

impl Operation {
    /// Every operation, in code order.
    pub const ALL: [Operation; 15] = [
        Operation::Derive,
        Operation::Seal,
        Operation::Redeem,
        Operation::Reidentify,
        Operation::Provision,
        Operation::Disclosure,
        Operation::CopyPage,
        Operation::PolicyLoaded,
        Operation::Refusals,
        Operation::Rekey,
        Operation::Reissue,
        Operation::Suspension,
        Operation::Migrate,
        Operation::Admin,
        Operation::Restored,
    ];

    /// The stored code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The operation with stored code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.code() == code)
    }

    /// A lower-case name for exports and logs (`"derive"`, `"copy_page"`...).
    pub fn name(self) -> &'static str {
        match self {
            Operation::Derive => "derive",
            Operation::Seal => "seal",
            Operation::Redeem => "redeem",
            Operation::Reidentify => "reidentify",
            Operation::Provision => "provision",
            Operation::Disclosure => "disclosure",
            Operation::CopyPage => "copy_page",
            Operation::PolicyLoaded => "policy_loaded",
            Operation::Refusals => "refusals",
            Operation::Rekey => "rekey",
            Operation::Reissue => "reissue",
            Operation::Suspension => "suspension",
            Operation::Migrate => "migrate",
            Operation::Admin => "admin",
            Operation::Restored => "restored",
        }
    }
}

/// How one item of an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Outcome {
    /// Done as asked.
    Done = 0,
    /// A redeem of a serial already redeemed: the first answer was given again.
    Repeat = 1,
    /// The provider confirmed it provided the data.
    Provided = 2,
    /// The provider confirmed it did not provide the data.
    NotProvided = 3,
    /// The token had expired.
    Expired = 10,
    /// The token's window is no longer accepted.
    StaleWindow = 11,
    /// The rule that allowed it has been withdrawn.
    Withdrawn = 12,
    /// The code matched no person.
    UnknownCode = 20,
    /// The code's epoch is retired.
    RetiredEpoch = 21,
    /// The item could not be parsed.
    Malformed = 22,
    /// Policy or capability refused it.
    Refused = 30,
}

impl Outcome {
    /// Every outcome, in code order.
    pub const ALL: [Outcome; 11] = [
        Outcome::Done,
        Outcome::Repeat,
        Outcome::Provided,
        Outcome::NotProvided,
        Outcome::Expired,
        Outcome::StaleWindow,
        Outcome::Withdrawn,
        Outcome::UnknownCode,
        Outcome::RetiredEpoch,
        Outcome::Malformed,
        Outcome::Refused,
    ];

    /// The stored code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The outcome with stored code `code`, if there is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.code() == code)
    }

    /// A lower-case name for exports and logs (`"done"`, `"not_provided"`...).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Repeat => "repeat",
            Outcome::Provided => "provided",
            Outcome::NotProvided => "not_provided",
            Outcome::Expired => "expired",
            Outcome::StaleWindow => "stale_window",
            Outcome::Withdrawn => "withdrawn",
            Outcome::UnknownCode => "unknown_code",
            Outcome::RetiredEpoch => "retired_epoch",
            Outcome::Malformed => "malformed",
            Outcome::Refused => "refused",
        }
    }
}

/// A person as the log knows them: the person handle encrypted under the
/// audit key (AES-256, one block; fugo-core makes it). It never leaves the
/// server: leaves carry only [`link_commitment`], and `Debug` redacts it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PersonLink(pub [u8; 16]);

impl fmt::Debug for PersonLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PersonLink([REDACTED])")
    }
}

/// The fields one batch of one call shares; stored once per group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// When, in unix milliseconds.
    pub time_ms: u64,
    /// What was done.
    pub operation: Operation,
    /// The calling agency's id.
    pub caller: String,
    /// The counterpart agency's id; empty when none.
    pub counterpart: String,
    /// The affair (事務) the law names for the exchange; empty when none.
    pub affair: String,
    /// The data items exchanged.
    pub items: Vec<String>,
    /// Unix seconds until which the person is not shown the record; 0 = none.
    pub non_disclosure_until: u64,
    /// SHA-256 of the policy text in force.
    pub policy_version: [u8; 32],
    /// The request id (`"<request id>/<index>"` in a stream).
    pub batch_id: String,
    /// Refusals: the reason; CopyPage: `"after N"`. Never a value.
    pub note: String,
    /// Refusals: how many items were refused; otherwise 0.
    pub count: u64,
    /// The agency that made the call on behalf of `caller` (a delegation,
    /// D213); empty when the caller called itself.
    pub agent: String,
}

/// What one record adds to its group's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// How the item ended.
    pub outcome: Outcome,
    /// Epoch of the code made or opened; 0 when none.
    pub epoch: u32,
    /// The processing serial (seal, redeem, provision).
    pub serial: Option<[u8; 16]>,
    /// The person the record is about.
    pub person: Option<PersonLink>,
}

/// The records of one batch of one call: one header, one entry per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The batch-wide fields.
    pub header: Header,
    /// One entry per record, in sequence order.
    pub entries: Vec<Entry>,
}

impl Group {
    /// A group of one record that ended `outcome`, about `person` if any,
    /// with no code and no serial: what an administrative act (a policy's
    /// loading, a backup, a suspension, a refused call) records.
    pub fn single(header: Header, outcome: Outcome, person: Option<PersonLink>) -> Group {
        Group {
            header,
            entries: vec![Entry {
                outcome,
                epoch: 0,
                serial: None,
                person,
            }],
        }
    }
}

/// One record as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its position in the log (the leaf index).
    pub seq: u64,
    /// Its position in its group.
    pub index: u32,
    /// Its group's header, shared by the records of the group.
    pub header: Arc<Header>,
    /// [`header_digest`] of the header.
    pub header_digest: Hash,
    /// The record's own fields.
    pub entry: Entry,
}

impl Record {
    /// The bytes whose leaf hash is this record's tree leaf.
    pub fn leaf_bytes(&self) -> Vec<u8> {
        leaf_bytes(self.index, &self.header_digest, &self.entry)
    }

    /// The record's tree leaf: RFC 6962 leaf hash of [`Record::leaf_bytes`].
    pub fn leaf_hash(&self) -> Hash {
        crate::merkle::leaf_hash(&self.leaf_bytes())
    }
}

/// Why stored bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The encoding starts with a version this code does not know.
    #[error("unknown encoding version {0}")]
    UnknownVersion(u8),
    /// The bytes end inside a field.
    #[error("truncated in field {0}")]
    Truncated(&'static str),
    /// A string field is not UTF-8.
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// An operation code this code does not know.
    #[error("unknown operation code {0}")]
    UnknownOperation(u8),
    /// An outcome code this code does not know.
    #[error("unknown outcome code {0}")]
    UnknownOutcome(u8),
    /// Flags with bits this code does not know.
    #[error("unknown entry flags {0:#04x}")]
    UnknownFlags(u8),
    /// Bytes remain after the last field.
    #[error("{0} bytes after the last field")]
    TrailingBytes(usize),
}

/// The canonical encoding of `header` (see the module doc for the layout).
pub fn encode_header(header: &Header) -> Vec<u8> {
    let strings: usize = [
        &header.caller,
        &header.counterpart,
        &header.affair,
        &header.batch_id,
        &header.note,
    ]
    .iter()
    .map(|s| s.len() + 8)
    .sum::<usize>()
        + header.items.iter().map(|s| s.len() + 8).sum::<usize>();
    let mut out = Vec::with_capacity(1 + 8 + 1 + 8 + 8 + 32 + 8 + strings + 8 + header.agent.len());
    out.push(if header.agent.is_empty() {
        ENCODING_VERSION
    } else {
        AGENT_HEADER_VERSION
    });
    out.extend_from_slice(&header.time_ms.to_be_bytes());
    out.push(header.operation.code());
    put_str(&mut out, &header.caller);
    put_str(&mut out, &header.counterpart);
    put_str(&mut out, &header.affair);
    out.extend_from_slice(&(header.items.len() as u64).to_be_bytes());
    for item in &header.items {
        put_str(&mut out, item);
    }
    out.extend_from_slice(&header.non_disclosure_until.to_be_bytes());
    out.extend_from_slice(&header.policy_version);
    put_str(&mut out, &header.batch_id);
    put_str(&mut out, &header.note);
    out.extend_from_slice(&header.count.to_be_bytes());
    if !header.agent.is_empty() {
        put_str(&mut out, &header.agent);
    }
    out
}

/// Decodes exactly one canonical header encoding (no trailing bytes).
pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    let mut reader = Reader::new(bytes);
    let header = read_header(&mut reader)?;
    reader.finish()?;
    Ok(header)
}

/// SHA-256 of the canonical header encoding.
pub fn header_digest(header: &Header) -> Hash {
    Sha256::digest(encode_header(header)).into()
}

/// The commitment to a record's serial and person in its leaf:
/// SHA-256("fugo-log/v1/link" ‖ header digest ‖ index u32 BE ‖ flags ‖
/// serial? ‖ person?), or 32 zero bytes when the record has neither. The
/// header digest and the index make two records of one person (or one
/// serial) differ.
pub fn link_commitment(
    header_digest: &Hash,
    index: u32,
    serial: Option<&[u8; 16]>,
    person: Option<&PersonLink>,
) -> Hash {
    if serial.is_none() && person.is_none() {
        return [0; 32];
    }
    let mut flags = 0u8;
    if serial.is_some() {
        flags |= HAS_SERIAL;
    }
    if person.is_some() {
        flags |= HAS_PERSON;
    }
    let mut hasher = Sha256::new();
    hasher.update(LINK_LABEL);
    hasher.update(header_digest);
    hasher.update(index.to_be_bytes());
    hasher.update([flags]);
    if let Some(serial) = serial {
        hasher.update(serial);
    }
    if let Some(link) = person {
        hasher.update(link.0);
    }
    hasher.finalize().into()
}

/// Length of [`leaf_bytes`].
pub const LEAF_BYTES_LEN: usize = 1 + 32 + 4 + 1 + 4 + 32;

/// The bytes whose leaf hash is the tree leaf (see the module doc).
pub fn leaf_bytes(index: u32, header_digest: &Hash, entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(LEAF_BYTES_LEN);
    out.push(ENCODING_VERSION);
    out.extend_from_slice(header_digest);
    out.extend_from_slice(&index.to_be_bytes());
    out.push(entry.outcome.code());
    out.extend_from_slice(&entry.epoch.to_be_bytes());
    out.extend_from_slice(&link_commitment(
        header_digest,
        index,
        entry.serial.as_ref(),
        entry.person.as_ref(),
    ));
    out
}

/// Most entries one stored group value holds; a longer group is stored in
/// several values sharing its header encoding.
pub const CHUNK: usize = 256;

/// A group made ready for the store off the committing thread: its header
/// encoding and digest, its stored values (one per [`CHUNK`] entries) and
/// the tree leaf of every entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// [`header_digest`] of the header.
    pub header_digest: Hash,
    /// The stored values, in order; value `k` holds entries
    /// `k·CHUNK ..` ([`encode_group_with`] with offset `k·CHUNK`).
    pub values: Vec<Vec<u8>>,
    /// The RFC 6962 leaf hash of each entry, in order.
    pub leaves: Vec<Hash>,
}

/// Encodes `group` and hashes its leaves: everything the store writes for
/// it except where it lands.
pub fn prepare(group: &Group) -> Prepared {
    let header_bytes = encode_header(&group.header);
    let header_digest: Hash = Sha256::digest(&header_bytes).into();
    let values = group
        .entries
        .chunks(CHUNK)
        .enumerate()
        .map(|(k, chunk)| encode_group_with(&header_bytes, (k * CHUNK) as u64, chunk))
        .collect();
    let leaves = group
        .entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            crate::merkle::leaf_hash(&leaf_bytes(index, &header_digest, entry))
        })
        .collect();
    Prepared {
        header_digest,
        values,
        leaves,
    }
}

/// Flag bit of a packed entry: a serial follows.
const HAS_SERIAL: u8 = 0b01;
/// Flag bit of a packed entry: a person link follows.
const HAS_PERSON: u8 = 0b10;

/// Appends the packed form of `entry` (what the store keeps per record):
/// `outcome u8 ‖ epoch u32 BE ‖ flags u8 ‖ [serial 16] ‖ [person 16]`,
/// 6 to 38 bytes.
pub fn pack_entry(out: &mut Vec<u8>, entry: &Entry) {
    out.push(entry.outcome.code());
    out.extend_from_slice(&entry.epoch.to_be_bytes());
    let mut flags = 0;
    if entry.serial.is_some() {
        flags |= HAS_SERIAL;
    }
    if entry.person.is_some() {
        flags |= HAS_PERSON;
    }
    out.push(flags);
    if let Some(serial) = &entry.serial {
        out.extend_from_slice(serial);
    }
    if let Some(link) = &entry.person {
        out.extend_from_slice(&link.0);
    }
}

/// Encodes a group as the store keeps it: the header encoding
/// (length-prefixed), the entry count, then the packed entries.
pub fn encode_group(header: &Header, entries: &[Entry]) -> Vec<u8> {
    encode_group_with(&encode_header(header), 0, entries)
}

/// [`encode_group`] with the header already encoded, for the value holding
/// the group's entries from `offset` on (a long group is stored in several
/// values that share one header encoding).
pub fn encode_group_with(header_bytes: &[u8], offset: u64, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_bytes.len() + 24 + entries.len() * 38);
    out.extend_from_slice(&(header_bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(header_bytes);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for entry in entries {
        pack_entry(&mut out, entry);
    }
    out
}

/// A group as decoded from the store: the header with its digest, and the
/// entries in sequence order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedGroup {
    /// The shared header.
    pub header: Arc<Header>,
    /// SHA-256 of the header's canonical encoding, as stored.
    pub header_digest: Hash,
    /// The position in its group of the first entry of this value.
    pub offset: u64,
    /// The entries.
    pub entries: Vec<Entry>,
}

/// Decodes what [`encode_group`] wrote.
pub fn decode_group(bytes: &[u8]) -> Result<DecodedGroup, DecodeError> {
    let mut reader = Reader::new(bytes);
    let header_len = reader.len("group header")?;
    let header_bytes = reader.take(header_len, "group header")?;
    let header = decode_header(header_bytes)?;
    let header_digest: Hash = Sha256::digest(header_bytes).into();
    let offset = reader.u64("group offset")?;
    let count = reader.len("entry count")?;
    // Every entry takes at least 6 bytes: a count beyond that is corrupt.
    if count > reader.remaining() / 6 {
        return Err(DecodeError::Truncated("entries"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(read_entry(&mut reader)?);
    }
    reader.finish()?;
    Ok(DecodedGroup {
        header: Arc::new(header),
        header_digest,
        offset,
        entries,
    })
}

fn read_entry(reader: &mut Reader<'_>) -> Result<Entry, DecodeError> {
    let code = reader.u8("outcome")?;
    let outcome = Outcome::from_code(code).ok_or(DecodeError::UnknownOutcome(code))?;
    let epoch = reader.u32("epoch")?;
    let flags = reader.u8("entry flags")?;
    if flags & !(HAS_SERIAL | HAS_PERSON) != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    let serial = if flags & HAS_SERIAL != 0 {
        Some(reader.array::<16>("serial")?)
    } else {
        None
    };
    let person = if flags & HAS_PERSON != 0 {
        Some(PersonLink(reader.array::<16>("person")?))
    } else {
        None
    };
    Ok(Entry {
        outcome,
        epoch,
        serial,
        person,
    })
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u64).to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn read_header(reader: &mut Reader<'_>) -> Result<Header, DecodeError> {
    let version = reader.u8("version")?;
    if version != ENCODING_VERSION && version != AGENT_HEADER_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    let time_ms = reader.u64("time_ms")?;
    let code = reader.u8("operation")?;
    let operation = Operation::from_code(code).ok_or(DecodeError::UnknownOperation(code))?;
    let caller = reader.string("caller")?;
    let counterpart = reader.string("counterpart")?;
    let affair = reader.string("affair")?;
    let count = reader.len("items")?;
    // Every item takes at least its 8-byte length.
    if count > reader.remaining() / 8 {
        return Err(DecodeError::Truncated("items"));
    }
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(reader.string("items")?);
    }
    let non_disclosure_until = reader.u64("non_disclosure_until")?;
    let policy_version = reader.array::<32>("policy_version")?;
    let batch_id = reader.string("batch_id")?;
    let note = reader.string("note")?;
    let count = reader.u64("count")?;
    let agent = if version == AGENT_HEADER_VERSION {
        let agent = reader.string("agent")?;
        // One header, one encoding: no agent is version 1.
        if agent.is_empty() {
            return Err(DecodeError::Truncated("agent"));
        }
        agent
    } else {
        String::new()
    };
    Ok(Header {
        time_ms,
        operation,
        caller,
        counterpart,
        affair,
        items,
        non_disclosure_until,
        policy_version,
        batch_id,
        note,
        count,
        agent,
    })
}

/// A cursor over stored bytes that names the field it fails in.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn remaining(&self) -> usize {
        self.bytes.len()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if n > self.bytes.len() {
            return Err(DecodeError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A u64 length or count, as usize.
    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(self.u64(field)?).map_err(|_| DecodeError::Truncated(field))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.len(field)?;
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8(field))
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.bytes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            time_ms: 1_764_000_000_123,
            operation: Operation::Seal,
            caller: "A001".into(),
            counterpart: "B002".into(),
            affair: "児童手当".into(),
            items: vec!["income".into(), "residence".into()],
            non_disclosure_until: 1_800_000_000,
            policy_version: [7; 32],
            batch_id: "req-1/3".into(),
            note: String::new(),
            count: 0,
            agent: String::new(),
        }
    }

    fn entries() -> Vec<Entry> {
        vec![
            Entry {
                outcome: Outcome::Done,
                epoch: 3,
                serial: Some([9; 16]),
                person: Some(PersonLink([5; 16])),
            },
            Entry {
                outcome: Outcome::UnknownCode,
                epoch: 0,
                serial: None,
                person: None,
            },
            Entry {
                outcome: Outcome::Refused,
                epoch: 1,
                serial: None,
                person: Some(PersonLink([6; 16])),
            },
        ]
    }

    #[test]
    fn header_round_trips() {
        let header = header();
        assert_eq!(decode_header(&encode_header(&header)), Ok(header));
    }

    /// A header without an agent keeps its version-1 bytes (the digest of
    /// every record written before version 2 existed); one with an agent is
    /// version 2, round-trips, and differs from the same header without.
    #[test]
    fn an_agent_makes_a_version_2_header_and_nothing_else_changes() {
        let plain = header();
        let v1 = encode_header(&plain);
        assert_eq!(v1[0], ENCODING_VERSION);
        // The version-1 layout, byte for byte: nothing follows `count`.
        assert_eq!(&v1[v1.len() - 8..], &0u64.to_be_bytes());
        let mut acted = header();
        acted.agent = "shiharai-kikin".into();
        let v2 = encode_header(&acted);
        assert_eq!(v2[0], AGENT_HEADER_VERSION);
        assert_eq!(&v2[1..v1.len()], &v1[1..]);
        assert_eq!(&v2[v1.len()..v1.len() + 8], &14u64.to_be_bytes());
        assert_eq!(decode_header(&v2), Ok(acted.clone()));
        assert_ne!(header_digest(&acted), header_digest(&plain));
        // Version 2 with an empty agent is not canonical: refused.
        let mut empty = v1.clone();
        empty[0] = AGENT_HEADER_VERSION;
        empty.extend_from_slice(&0u64.to_be_bytes());
        assert!(decode_header(&empty).is_err());
        // Every truncation of a version-2 header is refused.
        for cut in 0..v2.len() {
            assert!(decode_header(&v2[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn group_round_trips_with_digest() {
        let header = header();
        let decoded = decode_group(&encode_group(&header, &entries())).unwrap();
        assert_eq!(*decoded.header, header);
        assert_eq!(decoded.header_digest, header_digest(&header));
        assert_eq!(decoded.entries, entries());
    }

    #[test]
    fn every_truncation_of_a_group_is_refused() {
        let bytes = encode_group(&header(), &entries());
        for cut in 0..bytes.len() {
            assert!(decode_group(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_group(&longer), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn unknown_codes_are_refused() {
        let mut bytes = encode_header(&header());
        bytes[9] = 200; // the operation code
        assert_eq!(
            decode_header(&bytes),
            Err(DecodeError::UnknownOperation(200))
        );
        bytes[0] = 3;
        assert_eq!(decode_header(&bytes), Err(DecodeError::UnknownVersion(3)));
    }

    #[test]
    fn codes_round_trip() {
        for op in Operation::ALL {
            assert_eq!(Operation::from_code(op.code()), Some(op));
        }
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::from_code(outcome.code()), Some(outcome));
        }
        assert_eq!(Operation::from_code(0), None);
        assert_eq!(Outcome::from_code(4), None);
    }

    #[test]
    fn leaf_bytes_layout() {
        let digest = header_digest(&header());
        let entry = &entries()[0];
        let bytes = leaf_bytes(42, &digest, entry);
        assert_eq!(bytes.len(), LEAF_BYTES_LEN);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..33], &digest);
        assert_eq!(&bytes[33..37], &42u32.to_be_bytes());
        assert_eq!(bytes[37], Outcome::Done.code());
        assert_eq!(&bytes[38..42], &3u32.to_be_bytes());
        assert_eq!(
            &bytes[42..],
            &link_commitment(&digest, 42, entry.serial.as_ref(), entry.person.as_ref())
        );
        // Neither the person link nor the serial is in the leaf.
        assert!(!bytes.windows(16).any(|w| w == [5; 16]));
        assert!(!bytes.windows(16).any(|w| w == [9; 16]));
        let none = leaf_bytes(42, &digest, &entries()[1]);
        assert_eq!(&none[42..], &[0; 32]);
    }

    #[test]
    fn one_person_shares_no_commitment_across_records() {
        let link = PersonLink([5; 16]);
        let (a, b) = ([1; 32], [2; 32]);
        let commitments = [
            link_commitment(&a, 0, None, Some(&link)),
            link_commitment(&a, 1, None, Some(&link)),
            link_commitment(&b, 0, None, Some(&link)),
        ];
        assert_ne!(commitments[0], commitments[1]);
        assert_ne!(commitments[0], commitments[2]);
        assert_ne!(commitments[1], commitments[2]);
    }

    /// What a caller prepares is what the store would write: the values
    /// decode to the entries with their offsets, and each leaf is the leaf
    /// of its record.
    #[test]
    fn a_prepared_group_holds_its_values_and_leaves() {
        let group = Group {
            header: header(),
            entries: (0..600).map(|i| entries()[i % 2].clone()).collect(),
        };
        let prepared = prepare(&group);
        assert_eq!(prepared.values.len(), 3);
        assert_eq!(prepared.leaves.len(), 600);
        for (k, value) in prepared.values.iter().enumerate() {
            let decoded = decode_group(value).unwrap();
            assert_eq!(decoded.offset, (k * CHUNK) as u64);
            assert_eq!(decoded.header_digest, prepared.header_digest);
            assert_eq!(
                decoded.entries[..],
                group.entries[k * CHUNK..][..decoded.entries.len()]
            );
        }
        let leaf = crate::merkle::leaf_hash(&leaf_bytes(
            300,
            &prepared.header_digest,
            &group.entries[300],
        ));
        assert_eq!(prepared.leaves[300], leaf);
    }

    #[test]
    fn person_link_debug_is_redacted() {
        let text = format!("{:?}", entries());
        assert!(!text.contains("5, 5"));
        assert!(text.contains("REDACTED"));
    }
}
