//! `fugo client`: connects, then runs [`fugo::bulk`] with the remote
//! operation over the files.

use super::CliError;
use super::args::{ClientArgs, ClientOperation};
use super::settings::FileSettings;
use fugo::bulk::Summary;
use fugo::client::{Connection, Operation, Remote, Witnessed};

/// A line on stderr for the operator.
fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "fugo: {text}");
}

/// Runs `fugo client`; returns the run's counts.
pub(crate) fn run(args: ClientArgs) -> Result<Summary, CliError> {
    if args.on_behalf_of.is_some()
        && matches!(
            args.operation,
            ClientOperation::Reidentify | ClientOperation::Migrate
        )
    {
        return Err(CliError::BadArgument(
            "--on-behalf-of goes with derive, seal and redeem only".to_owned(),
        ));
    }
    if args.merged.is_some() && args.operation != ClientOperation::Migrate {
        return Err(CliError::BadArgument(
            "--merged goes with migrate only".to_owned(),
        ));
    }
    let operation = match args.operation {
        ClientOperation::Derive => Operation::Derive {
            on_behalf_of: args.on_behalf_of.unwrap_or_default(),
        },
        ClientOperation::Seal => Operation::Seal {
            provider: args.provider.unwrap_or_default(),
            affair: args.affair.unwrap_or_default(),
            items: args.items,
            non_disclosure_until: args.non_disclosure_until,
            on_behalf_of: args.on_behalf_of.unwrap_or_default(),
        },
        ClientOperation::Redeem => Operation::Redeem {
            on_behalf_of: args.on_behalf_of.unwrap_or_default(),
        },
        ClientOperation::Reidentify => Operation::Reidentify,
        ClientOperation::Migrate => Operation::Migrate {
            merged: args.merged.unwrap_or_default(),
        },
        ClientOperation::Rekey => Operation::Rekey,
    };
    let kept = args
        .checkpoint
        .clone()
        .or_else(|| args.files.output.as_deref().map(fugo::witness::beside));
    let files = FileSettings::from(args.files);
    let connection = Connection {
        server: args.server,
        server_name: args.server_name,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let (remote, witnessed) = runtime.block_on(Remote::open_witnessed(
        &connection,
        operation,
        runtime.handle(),
        kept.as_deref(),
    ))?;
    match (&kept, witnessed) {
        // Writing to standard output without --checkpoint: a pipeline
        // stays quiet, and the log is not checked (the help says so).
        (None, _) => {}
        (Some(path), Some(Witnessed::FirstUse(key))) => note(&format!(
            "first contact: the server's audit log key {key} is trusted from now on (kept in {})",
            path.display()
        )),
        (
            Some(path),
            Some(Witnessed::Restored {
                restored,
                from,
                key,
                ..
            }),
        ) => note(&format!(
            "the server's audit log was restored from checkpoint {restored}; the {from} records \
             this client had seen are all in it. It continues under the log key {key} (kept in {})",
            path.display()
        )),
        (_, Some(Witnessed::NoCheckpoint)) => {
            note("the server has signed no audit log checkpoint yet; nothing to check")
        }
        _ => {}
    }
    let summary = super::files::run(&remote, &files);
    // The log again, now holding this run's records: keep its newest
    // checkpoint for the next run (a failure here is reported, the output
    // stands).
    if let (Ok(_), Some(path)) = (&summary, &kept)
        && let Err(error) = runtime.block_on(remote.witness_again(path))
    {
        note(&format!("{error}"));
    }
    drop(remote);
    runtime.shutdown_background();
    summary
}
