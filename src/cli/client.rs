//! `fugo client`: opens the files, connects, runs [`crate::client::run`].

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use super::CliError;
use super::args::{ClientArgs, ClientOperation};
use super::derive::{AboveProgress, progress_bar};
use crate::bulk::Summary;
use crate::client::{self, Connection, Operation, Shape};

/// Runs `fugo client`; returns the run's counts.
pub(crate) fn run(args: ClientArgs) -> Result<Summary, CliError> {
    let operation = match args.operation {
        ClientOperation::Derive => Operation::Derive,
        ClientOperation::Seal => Operation::Seal {
            provider: args.provider.unwrap_or_default(),
            affair: args.affair.unwrap_or_default(),
            items: args.items,
            non_disclosure_until: args.non_disclosure_until,
        },
        ClientOperation::Redeem => Operation::Redeem,
        ClientOperation::Reidentify => Operation::Reidentify,
    };
    let shape = match (args.files.csv, args.files.column) {
        (true, Some(column)) => Shape::Csv {
            column,
            append: args.files.append_column,
        },
        _ => Shape::Lines,
    };
    let input: Box<dyn Read + Send> = match &args.files.input {
        Some(path) => Box::new(File::open(path).map_err(|source| CliError::OpenInput {
            path: path.display().to_string(),
            source,
        })?),
        None => Box::new(io::stdin()),
    };
    let create = |path: &std::path::PathBuf| {
        File::create(path).map_err(|source| CliError::CreateOutput {
            path: path.display().to_string(),
            source,
        })
    };
    let mut output: Box<dyn Write> = match &args.files.output {
        Some(path) => Box::new(BufWriter::new(create(path)?)),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let progress = progress_bar();
    let mut rejects: Box<dyn Write> = match &args.files.rejects {
        Some(path) => Box::new(BufWriter::new(create(path)?)),
        None => Box::new(BufWriter::new(AboveProgress {
            bar: progress.clone(),
        })),
    };
    let connection = Connection {
        server: args.server,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let summary = runtime.block_on(async {
        let mut connected = client::connect(&connection).await?;
        client::run(
            &mut connected,
            operation,
            input,
            shape,
            &mut *output,
            &mut *rejects,
            progress.as_ref(),
        )
        .await
    })?;
    if let Some(bar) = progress {
        bar.finish();
    }
    Ok(summary)
}
