//! The `fugo` command line: a thin shell around the library.
//!
//! Flags are parsed in two stages ([`args`] → [`settings`]); each command
//! lives in its own module; every fatal error is one [`CliError`], printed
//! once by [`main`] and mapped to an exit status there.

mod args;
mod derive;
mod keyfile;
mod settings;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use thiserror::Error;

use crate::bulk::BulkError;
use crate::keys::KeyFileError;
use args::{Cli, Command, KeysCommand, PolicyCommand};
use settings::KeySource;

/// Exit status when some rows were rejected but the run finished.
pub const EXIT_REJECTS: u8 = 3;
/// Exit status of a fatal error.
pub const EXIT_FATAL: u8 = 1;

/// A fatal CLI error. Messages name files and positions, never key material
/// or input values.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    KeyRead {
        /// The key file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The key file's contents are not a key.
    #[error("key file {path}: {source}")]
    KeyFormat {
        /// The key file.
        path: String,
        /// What is wrong.
        #[source]
        source: KeyFileError,
    },
    /// The key is not the one the caller expected.
    #[error("key file {path} has fingerprint {actual}, expected {expected}; refusing to use it")]
    FingerprintMismatch {
        /// The key file.
        path: String,
        /// The fingerprint asked for.
        expected: String,
        /// The key's fingerprint.
        actual: String,
    },
    /// `fugo keygen` would overwrite a file.
    #[error("{path} already exists; refusing to overwrite a key file")]
    KeyExists {
        /// The existing file.
        path: String,
    },
    /// Writing a new key failed.
    #[error("cannot write key file {path}: {source}")]
    KeyWrite {
        /// The key file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The operating system's random generator failed.
    #[error("the system random number generator failed")]
    Random,
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
    /// The bulk run stopped.
    #[error(transparent)]
    Bulk(#[from] BulkError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A policy file has problems; each is already printed with its line.
    #[error("{path}: {count} problem(s); the policy is not valid")]
    InvalidPolicy {
        /// The policy file.
        path: String,
        /// How many problems were printed.
        count: usize,
    },
    /// Writing to standard output failed.
    #[error("writing to standard output: {0}")]
    Stdout(#[source] io::Error),
}

/// Parses the command line, runs the command, and returns its exit status:
/// 0 success, 3 finished with rejected rows, 1 fatal error (2 is clap's for
/// a bad command line).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            let _ = writeln!(io::stderr(), "fugo: error: {error}");
            ExitCode::from(EXIT_FATAL)
        }
    }
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
        Command::Policy(PolicyCommand::Check { file }) => {
            check_policy(&file)?;
            Ok(0)
        }
        Command::Derive(args) => {
            let summary = derive::run(args.into())?;
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
    }
}

/// `fugo policy check`: every problem on stderr as `FILE:LINE: message`,
/// a one-line summary on stdout when the file is valid.
fn check_policy(path: &std::path::Path) -> Result<(), CliError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CliError::ReadFile {
        path: shown.clone(),
        source,
    })?;
    let problems = match std::str::from_utf8(&bytes) {
        Err(error) => vec![crate::policy::Problem {
            line: 1 + bytes[..error.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            message: "the file is not valid UTF-8".to_owned(),
        }],
        Ok(text) => match crate::policy::Policy::parse(text) {
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

/// The one place that prints a result line on standard output.
fn print_line(line: &str) -> Result<(), CliError> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{line}").map_err(CliError::Stdout)
}
