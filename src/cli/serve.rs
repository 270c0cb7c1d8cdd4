//! `fugo serve`: loads the configuration, starts the server, reloads the
//! policy and the CRLs on SIGHUP (on a thread of its own), stops gracefully on SIGTERM or
//! SIGINT.

use std::io::{self, Write};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender, TrySendError};

use tokio::signal::unix::{SignalKind, signal};

use super::{CliError, print_line};
use fugo::service::{self, LogFormat, Reloader, ServeConfig};

/// Runs the server until a stop signal; exit status 0 after a graceful stop.
pub(crate) fn run(config_path: &Path) -> Result<(), CliError> {
    // Before any key is read and before the runtime's threads exist: no
    // core dumps, not dumpable (no ptrace, no /proc/PID/mem), and memory
    // locked where that is safe (D112, D113).
    fugo::hardening::disable_dumps()?;
    let memory = fugo::hardening::lock_memory();
    let (config, log) = ServeConfig::load_all(config_path).map_err(service::ServeError::from)?;
    // Logs go to stderr as [log] says; RUST_LOG overrides the level.
    super::logging::init(&log);
    match memory {
        fugo::hardening::MemoryLock::Locked => {
            tracing::info!("memory locked against swapping (mlockall)");
        }
        fugo::hardening::MemoryLock::NotLocked(reason) => tracing::warn!("{reason}"),
    }
    let json = log.format == LogFormat::Json;
    if config.dev_mode && json {
        // JSON lines stay JSON lines: the banner is a warning event.
        tracing::warn!(
            "DEV MODE: the public demo key is allowed and demo certificates are generated. \
             Never use this configuration with real data."
        );
    } else if config.dev_mode {
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
        let running = if json {
            service::start(config, &mut super::logging::Warnings::default()).await?
        } else {
            service::start(config, &mut io::stderr()).await?
        };
        // The one line on stdout: where to connect (tests start on port 0).
        print_line(&format!("fugo: listening on {}", running.addr))?;
        let reload = reload_thread(running.reloader()).map_err(CliError::Runtime)?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                // One reload waits at most; SIGHUPs while it waits are one.
                if let Err(TrySendError::Disconnected(())) = reload.try_send(()) {
                    tracing::error!("the reload thread is gone; SIGHUP is ignored");
                }
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

/// Reloads run on their own thread, never on the async runtime: reading a
/// file can still block (a slow disk, a hung network filesystem), and a
/// blocked runtime thread would stall calls and the stop signal. The
/// thread is not joined, so a reload that hangs cannot keep the process
/// from exiting.
fn reload_thread(reloader: Reloader) -> io::Result<SyncSender<()>> {
    let (sender, requests) = mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("fugo-reload".to_owned())
        .spawn(move || {
            while requests.recv().is_ok() {
                // Errors are logged by the reload itself; the old policy or CRLs stay.
                let _ = reloader.reload();
            }
        })?;
    Ok(sender)
}
