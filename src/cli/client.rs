//! `fugo client`: connects, then runs [`fugo::bulk`] with the remote
//! operation over the files.

use super::CliError;
use super::args::{ClientArgs, ClientOperation};
use super::settings::FileSettings;
use fugo::bulk::Summary;
use fugo::client::{Connection, Operation, Remote};

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
    let remote = runtime.block_on(Remote::open(&connection, operation, runtime.handle()))?;
    let summary = super::files::run(&remote, &files);
    drop(remote);
    runtime.shutdown_background();
    summary
}
