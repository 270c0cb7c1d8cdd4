//! Validated settings, built from [`super::args`]: every decision about
//! defaults and flag combinations is made here, once.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::thread;

use super::args::DeriveArgs;
use crate::agency::{AgencyId, Epoch};
use crate::bulk::CsvOptions;
use crate::keyfile::KeySource;

/// Lines or CSV.
#[derive(Debug, Clone)]
pub(crate) enum InputShape {
    Lines,
    Csv(CsvOptions),
}

/// Everything `fugo derive` needs, decided.
#[derive(Debug, Clone)]
pub(crate) struct DeriveSettings {
    pub(crate) key: KeySource,
    pub(crate) agency: AgencyId,
    pub(crate) epoch: Epoch,
    pub(crate) input: Option<PathBuf>,
    pub(crate) output: Option<PathBuf>,
    pub(crate) rejects: Option<PathBuf>,
    pub(crate) shape: InputShape,
    pub(crate) threads: usize,
}

impl From<DeriveArgs> for DeriveSettings {
    fn from(args: DeriveArgs) -> Self {
        let shape = match (args.files.csv, args.files.column) {
            (true, Some(column)) => InputShape::Csv(CsvOptions {
                column,
                append: args.files.append_column,
            }),
            // clap's `requires` makes --csv and --column come together.
            _ => InputShape::Lines,
        };
        let threads = args
            .threads
            .or_else(|| thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get);
        DeriveSettings {
            key: KeySource {
                path: args.master_key,
                expect: args.expect_fingerprint,
            },
            agency: args.agency,
            epoch: args.epoch,
            input: args.files.input,
            output: args.files.output,
            rejects: args.files.rejects,
            shape,
            threads,
        }
    }
}
