//! Raw command-line flags, as clap parses them. [`super::settings`] turns
//! them into validated settings; nothing else reads these types.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use fugo::agency::{AgencyId, Epoch};
use fugo::keys::Fingerprint;

/// fugo: agency-specific codes for My Number linkage.
#[derive(Debug, Parser)]
#[command(name = "fugo", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write a fresh random master key (mode 0600) and print its fingerprint.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Inspect master key files, or split one into shares for custodians.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Derive agency codes from My Numbers, in bulk, offline.
    #[command(long_about = DERIVE_ABOUT)]
    Derive(DeriveArgs),
    /// Hand one custodian's share to a sealed server (same host and user,
    /// through DIR/unseal.sock) and print which key generation it counted
    /// for and how many shares that generation has.
    Unseal {
        /// The sealed server's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The share file (from `fugo keys split`).
        #[arg(value_name = "SHAREFILE")]
        share: PathBuf,
    },
    /// Run the gRPC service for agencies (mutual TLS, policy, tokens).
    Serve {
        /// The server configuration (see fugo.example.toml).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a demo CA, a server certificate and one client certificate per
    /// agency identity (for demos and tests, never production).
    DevCerts {
        /// Folder to write into (created if absent).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Agency certificate identities, comma-separated.
        #[arg(long, value_name = "A,B,…", value_delimiter = ',', required = true)]
        agencies: Vec<String>,
    },
    /// Call a running server in bulk: one streaming connection, line or CSV
    /// input, per-line rejects (exit 3).
    Client(ClientArgs),
    /// Work with exchange policy files (別表第二 as data).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The audit trail in a data directory: its public key, verification
    /// and export (the server must be stopped: one process opens the store).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The admin plane: calls to a server's admin listener (admin client
    /// certificate), and restoring a backup with the server stopped.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Where the admin listener is and the admin certificate to call it with.
#[derive(Debug, Args)]
pub(crate) struct AdminConnection {
    /// The admin listener, e.g. https://127.0.0.1:7444.
    #[arg(long, value_name = "URL")]
    pub(crate) server: String,
    /// The name the server's certificate must carry; by default the host of
    /// --server.
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// The CA that signed the server's certificate.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: PathBuf,
    /// The admin's client certificate (signed by the admin CA).
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: PathBuf,
    /// Its private key.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Take a consistent, encrypted backup of the running server's audit
    /// store into DIR/fugo.backup (the file appears only when complete).
    Backup {
        #[command(flatten)]
        connection: AdminConnection,
        /// Folder to write fugo.backup into (created if absent); an
        /// existing backup there is never overwritten.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Make the server re-read its policy file (audited under your name).
    ReloadPolicy {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Make the server re-read the agencies' CRL files (audited under your
    /// name).
    ReloadCrls {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Print the server's policy version, log size, checkpoint and origin.
    Status {
        #[command(flatten)]
        connection: AdminConnection,
    },
    /// Hand one custodian's share to a sealed server over the admin
    /// listener (recorded under your name once the server opens) and print
    /// which key generation it counted for.
    Unseal {
        #[command(flatten)]
        connection: AdminConnection,
        /// The share file (from `fugo keys split`).
        #[arg(value_name = "SHAREFILE")]
        share: PathBuf,
    },
    /// Restore DIR/fugo.backup as the audit store of the configuration's
    /// data directory, the server STOPPED. The log continues under a new
    /// origin whose first record says "restored from checkpoint N; records
    /// after N lost"; prints the new log key to publish.
    Restore {
        /// The server's configuration (master key, data directory, origin).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The folder holding fugo.backup (as `fugo admin backup --out`).
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The admin certificate of who restores (as for the admin
        /// listener): checked against `[admin] ca`, `crl` and
        /// `identities`; its name is recorded in the Restored record.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The private key of --cert.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// With the key held by custodians (`[custody]`): a share file
        /// (`fugo keys split`); give as many as the threshold.
        #[arg(long = "share", value_name = "SHAREFILE")]
        shares: Vec<PathBuf>,
        /// Replace an audit store that is there (it is kept beside,
        /// renamed audit.redb.before-restore-<time>).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Print the log's public key (C2SP verifier key text) kept in the store.
    Pubkey {
        /// The server's data directory (holds audit.redb).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Recompute every leaf and the tree from the records, check every
    /// stored hash and checkpoint signature, and each --checkpoint kept
    /// outside; exit 0 only if all holds, else name the first bad record or
    /// checkpoint and exit 1.
    #[command(long_about = VERIFY_ABOUT)]
    Verify {
        /// The server's data directory (holds audit.redb).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// A signed checkpoint a client kept (the note text, or its base64
        /// as in x-fugo-checkpoint); repeatable.
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// The log's published public key (verifier key text); without it
        /// the key stored in the store is used, which proves little.
        #[arg(long, value_name = "KEY")]
        pubkey: Option<String>,
    },
    /// Write records as JSON lines (no person links), then the checkpoints
    /// that cover them.
    #[command(long_about = EXPORT_ABOUT)]
    Export {
        /// The server's data directory (holds audit.redb).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Records from this time on: unix seconds, a date (UTC) or RFC 3339.
        #[arg(long, value_name = "T", value_parser = parse_time)]
        since: Option<u64>,
        /// Records before this time: unix seconds, a date (UTC) or RFC 3339.
        #[arg(long, value_name = "T", value_parser = parse_time)]
        until: Option<u64>,
        /// Output file (mode 0600, appears only when complete); standard
        /// output when absent.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the text of a policy the server loaded, by its version (the
    /// SHA-256 every response and record names): the rule that allowed an
    /// exchange, even after it was withdrawn.
    Policy {
        /// The server's data directory (holds audit.redb).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The policy version: 64 hex digits.
        #[arg(value_name = "VERSION")]
        version: String,
    },
}

const VERIFY_ABOUT: &str = "\
Verify the audit store in a data directory, offline.

Reads every record, recomputes its leaf from its body (a purged record: its
stored leaf hash), rebuilds the RFC 6962 tree, and checks that every stored
leaf and tree hash equals the recomputed one, that every checkpoint kept in
the store is signed by the log's key and has the recomputed root at its size,
and that every --checkpoint FILE (a signed checkpoint a client kept) is
signed and has the recomputed root at its size. Only that last check catches
a store rebuilt from scratch and signed again with the same key: keep
checkpoints outside the server and pass them here.

Signatures are checked under --pubkey (the published key) when given, else
under the key kept in the store itself, with a warning.
The server must be stopped (redb lets one process open the store); the file
is opened with every page checksum checked, and a damaged file is refused.
Exit status: 0 intact, 1 anything wrong (the first bad record or checkpoint
is named) or the store cannot be read.";

const EXPORT_ABOUT: &str = "\
Export the audit store as JSON lines, for archiving and review.

One line per record whose time is in [--since, --until), oldest first: seq,
time, operation, caller, counterpart, affair, items, outcome, epoch, serial
(hex), non_disclosure_until, policy_version, batch_id, note, count,
header_digest, and the leaf bytes (hex) with their leaf hash, so a reviewer
can recompute every leaf. No person link is exported: the leaf bytes carry
only a per-record commitment to the person. Without --since and --until,
purged records appear as their leaf hashes, so the whole tree can be
recomputed from the file. Then the checkpoints that cover every exported
record (size > the last exported seq), or the latest when none was exported.

T is unix seconds, a date YYYY-MM-DD (00:00 UTC) or an RFC 3339 time
(2025-11-27T09:00:00+09:00).";

fn parse_time(text: &str) -> Result<u64, String> {
    fugo::audit::export::parse_time(text).map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check a policy file and name every problem with its line.
    Check {
        /// The policy file (TOML).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

const DERIVE_ABOUT: &str = "\
Derive agency codes from My Numbers, in bulk, offline.

Reads one My Number a line (or a CSV column with --csv) and writes one code a
line in input order. A bad line is reported on stderr (or --rejects) as its
line number and reason, never its value, and its output line is left empty.
Exit status: 0 all good, 3 some lines rejected, 1 fatal error.

This offline tool holds the whole master key and bypasses the server's
controls (policy, identity). It is for test vectors, demos and an operator's
controlled key ceremony, not for agencies. Re-issued and superseded numbers
resolve as on the server, from the re-issue tables of --data-dir.

Keys come from --master-key FILE (key generation 1) or from the server's
configuration, --config fugo.toml: its key files of every generation, its
policy and its data directory. The epoch's key generation is never guessed
(D200): --config takes it from the policy (and the agency's current epoch
when --epoch is not given); --master-key takes it from the marks of the
store in --data-dir and refuses an epoch bound to a later generation. An
epoch that is rekey-only or destroyed is refused, naming it. A generation
held by custodians is derived through the server.

With any key but the public demo key, every derived person is recorded in
the audit trail of --data-dir (the server's data directory; required), one
record per person, committed per chunk before the codes are written out; the
run takes the store's lock and is refused while a server holds it. With the
demo key (development only) nothing is recorded.";

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a master key file's fingerprint (key check value).
    Fingerprint {
        /// The master key file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Refuse (exit 1) unless the key has this fingerprint.
        #[arg(long, value_name = "HEX", value_parser = parse_fingerprint)]
        expect_fingerprint: Option<Fingerprint>,
    },
    /// Split a master key file into share files for custodians: any
    /// THRESHOLD of the N shares rebuild the key, fewer tell nothing about it.
    #[command(long_about = SPLIT_ABOUT)]
    Split {
        /// How many share files to write (one per custodian), 2 to 255.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(2..))]
        shares: u8,
        /// How many shares rebuild the key, 2 to N.
        #[arg(long, value_name = "M", value_parser = clap::value_parser!(u8).range(2..))]
        threshold: u8,
        /// Refuse (exit 1) unless the key has this fingerprint.
        #[arg(long, value_name = "HEX", value_parser = parse_fingerprint)]
        expect_fingerprint: Option<Fingerprint>,
        /// The master key file.
        #[arg(value_name = "KEYFILE")]
        file: PathBuf,
        /// Folder for the share files (created with mode 0700; existing
        /// share files are never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

const SPLIT_ABOUT: &str = "\
Split a master key file into N share files (Shamir's secret sharing over
GF(256)), any M of which rebuild the key. Each file (mode 0600) names its
index, the threshold, the fingerprint of the key and the split it belongs to,
and carries a checksum, so a damaged share or one of another key or split is
refused by name.

Give each share to one custodian, start the server with [custody] threshold = M
and no master_key (it waits sealed), and have M custodians run
`fugo unseal --data-dir DIR SHAREFILE`. A later key generation is held the same
way: its [[keyring]] entry gets a [keyring.custody] sub-table with the threshold
instead of key_file, and each share counts for the generation whose key it names. Then keep the key file offline or
destroy it: whoever holds it can start the server alone.";

#[derive(Debug, Args)]
pub(crate) struct DeriveArgs {
    /// The master key file (64 hex characters): key generation 1.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub(crate) master_key: Option<PathBuf>,
    /// The server's configuration: its keyring, policy and data directory.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["expect_fingerprint", "data_dir"])]
    pub(crate) config: Option<PathBuf>,
    /// Refuse to run unless the key has this fingerprint.
    #[arg(long, value_name = "HEX", value_parser = parse_fingerprint)]
    pub(crate) expect_fingerprint: Option<Fingerprint>,
    /// The agency whose codes to derive.
    #[arg(long, value_name = "ID", value_parser = parse_agency)]
    pub(crate) agency: AgencyId,
    /// The agency's key epoch, 1 to 31 (with --config, the agency's
    /// current epoch by default).
    #[arg(
        long,
        value_name = "N",
        value_parser = parse_epoch,
        required_unless_present = "config"
    )]
    pub(crate) epoch: Option<Epoch>,
    #[command(flatten)]
    pub(crate) files: FileArgs,
    /// Worker threads; every core by default.
    #[arg(long, value_name = "N")]
    pub(crate) threads: Option<NonZeroUsize>,
    /// The data directory whose audit trail records the run (required with
    /// any key but the demo key; created if absent).
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
}

fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(text).map_err(|e| e.to_string())
}

fn parse_agency(text: &str) -> Result<AgencyId, String> {
    AgencyId::new(text).map_err(|e| e.to_string())
}

fn parse_epoch(text: &str) -> Result<Epoch, String> {
    text.parse()
        .map_err(|e: fugo::agency::EpochError| e.to_string())
}

/// The operations of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ClientOperation {
    /// My Numbers → this agency's codes.
    Derive,
    /// This agency's codes → tokens for a provider (`TOKEN SERIAL` a line).
    Seal,
    /// Tokens addressed to this agency → `CODE SERIAL REQUESTER AFFAIR ITEMS
    /// EXPIRES NON_DISCLOSURE_UNTIL`.
    Redeem,
    /// This agency's codes → My Numbers.
    Reidentify,
    /// Codes of an agency merged into this one (--merged) → this agency's
    /// current-epoch codes (`NEW_CODE OLD_CODE` a line; in CSV the new
    /// code replaces the old, which goes to `old_code`).
    Migrate,
    /// This agency's codes of an earlier epoch (current, accepted or
    /// rekey-only) → its current-epoch codes (`NEW_CODE OLD_CODE` a line;
    /// in CSV the new code replaces the old, which goes to `old_code`).
    Rekey,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// What to do with each input item.
    #[arg(value_enum)]
    pub(crate) operation: ClientOperation,
    /// The server, e.g. https://127.0.0.1:7443.
    #[arg(long, value_name = "URL", env = "FUGO_SERVER")]
    pub(crate) server: String,
    /// The name the server's certificate must carry; by default the host of
    /// --server, as given.
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// The CA that signed the server's certificate.
    #[arg(long, value_name = "FILE", env = "FUGO_CA")]
    pub(crate) ca: PathBuf,
    /// This agency's client certificate.
    #[arg(long, value_name = "FILE", env = "FUGO_CERT")]
    pub(crate) cert: PathBuf,
    /// Its private key.
    #[arg(long, value_name = "FILE", env = "FUGO_KEY")]
    pub(crate) key: PathBuf,
    /// Seal: the agency the tokens are for.
    #[arg(long, value_name = "ID", required_if_eq("operation", "seal"))]
    pub(crate) provider: Option<String>,
    /// Seal: the affair this agency acts under.
    #[arg(long, value_name = "ID", required_if_eq("operation", "seal"))]
    pub(crate) affair: Option<String>,
    /// Seal: the data items asked for, comma-separated.
    #[arg(
        long,
        value_name = "A,B",
        value_delimiter = ',',
        required_if_eq("operation", "seal")
    )]
    pub(crate) items: Vec<String>,
    /// Seal: unix seconds until which the person may not see the exchange.
    #[arg(long, value_name = "UNIX_SECONDS", default_value_t = 0)]
    pub(crate) non_disclosure_until: i64,
    /// Derive, seal, redeem: act on behalf of this agency, under a
    /// delegation of the policy; the results are its codes.
    #[arg(long, value_name = "ID")]
    pub(crate) on_behalf_of: Option<String>,
    /// Migrate: the agency merged into this one, whose codes the input
    /// holds.
    #[arg(long, value_name = "ID", required_if_eq("operation", "migrate"))]
    pub(crate) merged: Option<String>,
    /// Where to keep the newest audit log checkpoint seen; each run first
    /// checks the server's log extends it (a consistency proof) and stops
    /// if not. By default OUTPUT.checkpoint beside the output file; with
    /// output to standard output, give it to have the log checked.
    #[arg(long, value_name = "FILE", env = "FUGO_CHECKPOINT")]
    pub(crate) checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) files: FileArgs,
}

/// Input, output and reject files, and the CSV options: the same for
/// `fugo derive` and `fugo client`.
#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// Input file; standard input when absent.
    #[arg(value_name = "INPUT")]
    pub(crate) input: Option<PathBuf>,
    /// Output file; standard output when absent.
    #[arg(short, long, value_name = "OUTPUT")]
    pub(crate) output: Option<PathBuf>,
    /// Read CSV with a header row instead of one item a line.
    #[arg(long, requires = "column")]
    pub(crate) csv: bool,
    /// With --csv: the column holding the items, replaced by the results.
    #[arg(long, value_name = "NAME", requires = "csv")]
    pub(crate) column: Option<String>,
    /// With --csv: keep the column and append the results as NEW.
    #[arg(long, value_name = "NEW", requires = "column")]
    pub(crate) append_column: Option<String>,
    /// Write rejected line numbers and reasons here instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub(crate) rejects: Option<PathBuf>,
    /// The input's text encoding; the output is written in the same one.
    #[arg(long, value_enum, value_name = "NAME", default_value = "utf-8")]
    pub(crate) encoding: Encoding,
}

/// Text encodings of input and output files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Encoding {
    /// UTF-8 (a byte-order mark is accepted and dropped).
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// Windows Shift_JIS (code page 932), as Japanese Excel saves CSV.
    #[value(name = "cp932", alias = "shift_jis", alias = "sjis")]
    Cp932,
}
