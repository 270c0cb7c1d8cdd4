//! `fugo serve`: loads the configuration, starts the server, reloads the
//! policy on SIGHUP, stops gracefully on SIGTERM or SIGINT.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use super::{CliError, print_line};
use crate::service::{self, ServeConfig};

/// Runs the server until a stop signal; exit status 0 after a graceful stop.
pub(crate) fn run(config_path: &Path) -> Result<(), CliError> {
    // Logs go to stderr; RUST_LOG overrides the default level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
    let config = ServeConfig::load(config_path).map_err(service::ServeError::from)?;
    if config.dev_mode {
        let _ = writeln!(
            io::stderr(),
            "fugo: ************************************************************\n\
             fugo: DEV MODE: the public demo key is allowed and demo certificates\n\
             fugo: are generated. Never use this configuration with real data.\n\
             fugo: ************************************************************"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async {
        // Handlers first: a SIGHUP that arrives before its handler exists
        // would kill the process (its default action).
        let mut hangup = signal(SignalKind::hangup()).map_err(CliError::Runtime)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Runtime)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Runtime)?;
        let running = service::start(config, &mut io::stderr()).await?;
        // The one line on stdout: where to connect (tests start on port 0).
        print_line(&format!("fugo: listening on {}", running.addr))?;
        let reloader = running.reloader();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // Errors are logged by the reload itself; the old policy stays.
                let _ = reloader.reload();
            }
        });
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("stopping: no new calls; in-flight calls may finish");
        running.stop().await?;
        tracing::info!("stopped");
        Ok(())
    })
}
