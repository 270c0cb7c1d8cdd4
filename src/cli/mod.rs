//! The `fugo` command line: a thin shell around the library.
//!
//! Flags are parsed in two stages (`args` → `settings`); each command
//! lives in its own module; every fatal error is one [`CliError`], printed
//! once by [`main`] and mapped to an exit status there.

mod admin;
mod args;
mod audit;
mod client;
mod derive;
mod files;
mod logging;
mod progress;
mod serve;
mod settings;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use thiserror::Error;

use args::{Cli, Command, KeysCommand, PolicyCommand};
use fugo::bulk::BulkError;
use fugo::keyfile::{self, KeySource};

/// Exit status when some rows were rejected but the run finished.
pub(crate) const EXIT_REJECTS: u8 = 3;
/// Exit status of a fatal error.
pub(crate) const EXIT_FATAL: u8 = 1;
/// Exit status when standard output was closed by its reader: 128 + SIGPIPE,
/// what a shell reports for a program the closed pipe stopped.
pub(crate) const EXIT_CLOSED_PIPE: u8 = 141;

/// A fatal CLI error. Messages name files and positions, never key material
/// or input values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// A key file could not be loaded or written.
    #[error(transparent)]
    Key(#[from] fugo::keyfile::KeyLoadError),
    /// The input file could not be opened.
    #[error("cannot open input {path}: {source}")]
    OpenInput {
        /// The input file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An output file could not be created.
    #[error("cannot create {path}: {source}")]
    CreateOutput {
        /// The output file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bulk run could not start (a CSV header problem).
    #[error(transparent)]
    Bulk(BulkError),
    /// The bulk run stopped; the output file (if any) was not written.
    #[error("{error}\nfugo: stopped after {rows} rows; {}", match output {
        Some(path) => format!("{path} was not written"),
        None => "the output is incomplete".to_owned(),
    })]
    Stopped {
        /// What stopped it.
        #[source]
        error: BulkError,
        /// Rows whose results were written before it stopped.
        rows: u64,
        /// The output file, when not standard output.
        output: Option<String>,
    },
    /// Standard output was closed by its reader (`| head`): a quiet end.
    #[error("standard output closed")]
    ClosedPipe,
    /// The server could not start or stopped abnormally.
    #[error(transparent)]
    Serve(#[from] fugo::service::ServeError),
    /// Dev certificates could not be written.
    #[error(transparent)]
    Certs(#[from] fugo::certs::CertError),
    /// The async runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// A file could not be read (missing, not a regular file, too large).
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: fugo::files::ReadError,
    },
    /// A policy file has problems; each is already printed with its line.
    #[error("{path}: {count} problem(s); the policy is not valid")]
    InvalidPolicy {
        /// The policy file.
        path: String,
        /// How many problems were printed.
        count: usize,
    },
    /// A client run stopped.
    #[error(transparent)]
    Client(#[from] fugo::client::ClientError),
    /// A command-line value is unacceptable.
    #[error("{0}")]
    BadArgument(String),
    /// The audit store is held by another process.
    #[error("the audit store {path} is in use by another fugo process (a running server?): {hint}")]
    AuditLocked {
        /// The store file.
        path: String,
        /// What to do.
        hint: &'static str,
    },
    /// A restore was refused or failed.
    #[error(transparent)]
    Restore(#[from] fugo::admin::restore::RestoreError),
    /// The audit store could not be opened or read.
    #[error("audit store {path}: {source}")]
    AuditStore {
        /// The store file.
        path: String,
        /// Why.
        #[source]
        source: fugo_log::store::StoreError,
    },
    /// `fugo audit verify` found something wrong.
    #[error("audit verify FAILED: {problem}")]
    VerifyFailed {
        /// The first bad record or checkpoint.
        problem: String,
    },
    /// `fugo audit export` stopped.
    #[error(transparent)]
    Export(fugo::audit::export::ExportError),
    /// The audit trail could not be opened or written (`fugo derive`).
    #[error(transparent)]
    Recorder(#[from] fugo::audit::RecorderError),
    /// A share file is not a valid share.
    #[error("share file {path}: {source}")]
    Share {
        /// The share file.
        path: String,
        /// What is wrong.
        #[source]
        source: fugo::custody::ShareError,
    },
    /// The key could not be split or the shares written.
    #[error(transparent)]
    Split(#[from] fugo::custody::SplitError),
    /// The sealed server could not be reached.
    #[error(transparent)]
    UnsealSend(#[from] fugo::custody::SendError),
    /// The sealed server refused the share.
    #[error("share file {path} refused by the server: {message}")]
    UnsealRefused {
        /// The share file.
        path: String,
        /// The server's reason.
        message: String,
    },
    /// Core dumps or dumpability could not be switched off.
    #[error(transparent)]
    Hardening(#[from] fugo::hardening::HardeningError),
    /// Writing to standard output failed.
    #[error("writing to standard output: {0}")]
    Stdout(#[source] io::Error),
}

/// Parses the command line, runs the command, and returns its exit status:
/// 0 success, 3 finished with rejected rows, 1 fatal error (2 is clap's for
/// a bad command line).
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    ignore_file_size_signal();
    match run(cli.command) {
        Ok(status) => ExitCode::from(status),
        Err(CliError::ClosedPipe) => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(error) => {
            let _ = writeln!(io::stderr(), "fugo: error: {error}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// A file-size limit (`ulimit -f`) would kill the process with SIGXFSZ
/// mid-write, leaving a partial file and no message; with the signal
/// handled, the write fails with EFBIG and the run stops cleanly.
fn ignore_file_size_signal() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Failing to install the handler only keeps the default behaviour.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen);
}

fn run(command: Command) -> Result<u8, CliError> {
    match command {
        Command::Keygen { out } => {
            let keys = keyfile::generate(&out)?;
            let _ = writeln!(
                io::stderr(),
                "fugo: wrote a new master key to {} (mode 0600); its fingerprint:",
                out.display()
            );
            print_line(&keys.fingerprint().to_string())?;
            Ok(0)
        }
        Command::Keys(KeysCommand::Fingerprint {
            file,
            expect_fingerprint,
        }) => {
            let source = KeySource {
                path: file,
                expect: expect_fingerprint,
            };
            let keys = keyfile::load(&source, &mut io::stderr())?;
            print_line(&keys.fingerprint().to_string())?;
            Ok(0)
        }
        Command::Keys(KeysCommand::Split {
            shares,
            threshold,
            expect_fingerprint,
            file,
            out,
        }) => {
            split_key(&file, expect_fingerprint, shares, threshold, &out)?;
            Ok(0)
        }
        Command::Unseal { data_dir, share } => {
            unseal(&data_dir, &share)?;
            Ok(0)
        }
        Command::Serve { config } => {
            serve::run(&config)?;
            Ok(0)
        }
        Command::DevCerts { out, agencies } => {
            let for_agencies = agencies
                .iter()
                .map(|name| fugo::agency::AgencyId::new(name).map(|_| name.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| CliError::BadArgument(error.to_string()))?;
            fugo::certs::write_dev_certs(&out, &for_agencies)?;
            let _ = writeln!(
                io::stderr(),
                "fugo: wrote a demo CA, a server certificate and {} client certificates to {} \
                 (demo material: never for real data)",
                for_agencies.len(),
                out.display()
            );
            Ok(0)
        }
        Command::Policy(PolicyCommand::Check { file }) => {
            check_policy(&file)?;
            Ok(0)
        }
        Command::Audit(command) => audit::run(command),
        Command::Admin(command) => admin::run(command),
        Command::Client(args) => finish(client::run(args)?),
        Command::Derive(args) => finish(derive::run(args.into())?),
    }
}

/// Exit status of a bulk run: 3 if rows were rejected (and says how many).
fn finish(summary: fugo::bulk::Summary) -> Result<u8, CliError> {
    if summary.rejected > 0 {
        let _ = writeln!(
            io::stderr(),
            "fugo: {} of {} rows rejected",
            summary.rejected,
            summary.rows
        );
        Ok(EXIT_REJECTS)
    } else {
        Ok(0)
    }
}

/// `fugo policy check`: every problem on stderr as `FILE:LINE: message`,
/// a one-line summary on stdout when the file is valid.
fn check_policy(path: &std::path::Path) -> Result<(), CliError> {
    let shown = path.display().to_string();
    let contents =
        fugo::files::read(path, fugo::files::MAX_POLICY).map_err(|source| CliError::ReadFile {
            path: shown.clone(),
            source,
        })?;
    let bytes = contents.bytes.as_slice();
    let problems = match std::str::from_utf8(bytes) {
        Err(error) => vec![fugo::policy::Problem {
            line: 1 + bytes[..error.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            message: "the file is not valid UTF-8".to_owned(),
        }],
        Ok(text) => match fugo::policy::parse(text) {
            Ok(policy) => {
                return print_line(&format!(
                    "{shown}: valid policy: {} agencies, {} affairs, {} rules; version {}",
                    policy.agencies().count(),
                    policy.affairs().count(),
                    policy.rules().count(),
                    policy.version()
                ));
            }
            Err(error) => error.0,
        },
    };
    let mut stderr = io::stderr().lock();
    for problem in &problems {
        let _ = writeln!(stderr, "{shown}:{}: {}", problem.line, problem.message);
    }
    Err(CliError::InvalidPolicy {
        path: shown,
        count: problems.len(),
    })
}

/// `fugo keys split`: the share files, their paths on stdout, and the
/// configuration of a sealed start.
fn split_key(
    file: &std::path::Path,
    expect: Option<fugo::keys::Fingerprint>,
    shares: u8,
    threshold: u8,
    out: &std::path::Path,
) -> Result<(), CliError> {
    // The key is in memory: no core file may catch it.
    fugo::hardening::disable_dumps()?;
    let source = KeySource {
        path: file.to_path_buf(),
        expect,
    };
    let (master, keys) = keyfile::load_master(&source, &mut io::stderr())?;
    let fingerprint = keys.fingerprint();
    let files = fugo::custody::split_key(&master, shares, threshold)?;
    let paths = fugo::custody::write_shares(out, &files)?;
    let _ = writeln!(
        io::stderr(),
        "fugo: wrote {shares} shares of key {fingerprint} (mode 0600); any {threshold} rebuild \
         it. Give each to one custodian; then keep {} offline or destroy it.",
        file.display()
    );
    for path in &paths {
        print_line(&path.display().to_string())?;
    }
    print_line(&format!(
        "# fugo.toml for a sealed start (no master_key line):\n\
         master_key_fingerprint = \"{fingerprint}\"\n[custody]\nthreshold = {threshold}\n\
         # or, if it is a later generation N of the keyring (no key_file line):\n\
         # [[keyring]]\n# generation = N\n# fingerprint = \"{fingerprint}\"\n\
         # [keyring.custody]\n# threshold = {threshold}"
    ))
}

/// `fugo unseal`: checks the share file here (naming it), sends it, and
/// prints the server's answer.
fn unseal(data_dir: &std::path::Path, share: &std::path::Path) -> Result<(), CliError> {
    let text = read_share_file(share)?;
    let shown = share.display().to_string();
    let reply = fugo::custody::send_share(data_dir, &text)?;
    match reply.strip_prefix("refused: ") {
        Some(message) => Err(CliError::UnsealRefused {
            path: shown,
            message: message.to_owned(),
        }),
        None => print_line(&reply),
    }
}

/// Reads and checks one custodian's share file (`fugo unseal`, `fugo admin
/// unseal`), core dumps off first: a share is in memory.
fn read_share_file(share: &std::path::Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    fugo::hardening::disable_dumps()?;
    let shown = share.display().to_string();
    let contents =
        fugo::files::read(share, fugo::custody::share::MAX_SHARE_FILE).map_err(|source| {
            CliError::ReadFile {
                path: shown.clone(),
                source,
            }
        })?;
    if fugo::files::readable_by_others(&contents.metadata) {
        let _ = writeln!(
            io::stderr(),
            "fugo: warning: share file {shown} can be read by group or others; run `chmod 600` on it"
        );
    }
    let text = std::str::from_utf8(&contents.bytes).map_err(|_| CliError::Share {
        path: shown.clone(),
        source: fugo::custody::ShareError::Format {
            line: 0,
            message: "the file is not UTF-8 text".to_owned(),
        },
    })?;
    fugo::custody::ShareFile::parse(text).map_err(|source| CliError::Share {
        path: shown.clone(),
        source,
    })?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// The one place that prints a result line on standard output.
fn print_line(line: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").map_err(CliError::Stdout)
}
