//! Validated settings, built from [`super::args`]: every decision about
//! defaults and flag combinations is made here, once.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::thread;

use super::args::{DeriveArgs, Encoding, FileArgs};
use fugo::agency::{AgencyId, Epoch};
use fugo::bulk::{CsvOptions, Shape, TextEncoding};
use fugo::keyfile::KeySource;

/// The files of a bulk run and how to read them: the same for `fugo derive`
/// and every `fugo client` command.
#[derive(Debug, Clone)]
pub(crate) struct FileSettings {
    pub(crate) input: Option<PathBuf>,
    pub(crate) output: Option<PathBuf>,
    pub(crate) rejects: Option<PathBuf>,
    pub(crate) shape: Shape,
    pub(crate) encoding: TextEncoding,
}

impl From<FileArgs> for FileSettings {
    fn from(args: FileArgs) -> Self {
        let shape = match (args.csv, args.column) {
            (true, Some(column)) => Shape::Csv(CsvOptions {
                column,
                append: args.append_column,
            }),
            // clap's `requires` makes --csv and --column come together.
            _ => Shape::Lines,
        };
        FileSettings {
            input: args.input,
            output: args.output,
            rejects: args.rejects,
            shape,
            encoding: match args.encoding {
                Encoding::Utf8 => TextEncoding::Utf8,
                Encoding::Cp932 => TextEncoding::Cp932,
            },
        }
    }
}

/// Everything `fugo derive` needs, decided.
#[derive(Debug, Clone)]
pub(crate) struct DeriveSettings {
    pub(crate) keys: DeriveKeys,
    pub(crate) agency: AgencyId,
    /// `None`: the agency's current epoch in the configured policy.
    pub(crate) epoch: Option<Epoch>,
    pub(crate) files: FileSettings,
    pub(crate) threads: usize,
    pub(crate) data_dir: Option<PathBuf>,
}

/// Where `fugo derive` takes its keys from.
#[derive(Debug, Clone)]
pub(crate) enum DeriveKeys {
    /// One key file, generation 1's (`--master-key`).
    File(KeySource),
    /// The server's configuration file (`--config`).
    Config(PathBuf),
}

impl From<DeriveArgs> for DeriveSettings {
    fn from(args: DeriveArgs) -> Self {
        let threads = args
            .threads
            .or_else(|| thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        let keys = match (args.config, args.master_key) {
            (Some(config), _) => DeriveKeys::Config(config),
            // clap requires one of the two.
            (None, path) => DeriveKeys::File(KeySource {
                path: path.unwrap_or_default(),
                expect: args.expect_fingerprint,
            }),
        };
        DeriveSettings {
            keys,
            agency: args.agency,
            epoch: args.epoch,
            files: args.files.into(),
            threads,
            data_dir: args.data_dir,
        }
    }
}
