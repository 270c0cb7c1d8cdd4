//! `fugo admin backup | reload-policy | status | restore`: the first three
//! call the server's admin listener with an admin certificate; restore
//! works on the data directory with the server stopped, its admin proven
//! by the same certificate and key.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fugo::admin::backup::BACKUP_FILE;
use fugo::admin::restore::{self, RestoreRequest};
use fugo::client::{ClientError, Connection};
use fugo::custody::{SealProgress, Supplied, Unsealer};
use fugo::keyfile::{self, KeySource};
use fugo::keys::KeyHierarchy;
use fugo::proto::fugo::v1::admin_client::AdminClient;
use fugo::proto::fugo::v1::{
    AdminStatusRequest, BackupRequest, ReloadCrlsRequest, ReloadPolicyRequest, UnsealRequest,
};
use fugo::service::{MasterKeySource, ServeConfig};
use tonic::transport::Channel;

use super::args::{AdminCommand, AdminConnection};
use super::{CliError, print_line};

/// Runs an admin command; returns the exit status.
pub(crate) fn run(command: AdminCommand) -> Result<u8, CliError> {
    match command {
        AdminCommand::Backup { connection, out } => {
            call(connection, |client| Box::pin(backup(client, out)))
        }
        AdminCommand::ReloadPolicy { connection } => call(connection, |mut client| {
            Box::pin(async move {
                let response = client
                    .reload_policy(ReloadPolicyRequest {})
                    .await
                    .map_err(ClientError::Refused)?;
                print_line(&format!(
                    "policy {} in force",
                    response.into_inner().policy_version
                ))?;
                Ok(0)
            })
        }),
        AdminCommand::ReloadCrls { connection } => call(connection, |mut client| {
            Box::pin(async move {
                let response = client
                    .reload_crls(ReloadCrlsRequest {})
                    .await
                    .map_err(ClientError::Refused)?;
                print_line(&format!(
                    "CRLs in force: {} serial numbers revoked",
                    response.into_inner().revoked
                ))?;
                Ok(0)
            })
        }),
        AdminCommand::Status { connection } => call(connection, |mut client| {
            Box::pin(async move {
                let status = client
                    .get_status(AdminStatusRequest {})
                    .await
                    .map_err(ClientError::Refused)?
                    .into_inner();
                print_line(&format!(
                    "policy {}\nlog size {}\ncheckpoint {}\norigin {}",
                    status.policy_version, status.log_size, status.checkpoint, status.origin
                ))?;
                Ok(0)
            })
        }),
        AdminCommand::Unseal { connection, share } => {
            let text = super::read_share_file(&share)?;
            let shown = share.display().to_string();
            call(connection, move |client| {
                Box::pin(unseal(client, text, shown))
            })
        }
        AdminCommand::Restore {
            config,
            from,
            cert,
            key,
            shares,
            force,
        } => restore(&config, &from, (&cert, &key), &shares, force),
    }
}

type Call = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u8, CliError>>>>;

/// Connects to the admin listener and runs `work` on a runtime.
fn call(
    connection: AdminConnection,
    work: impl FnOnce(AdminClient<Channel>) -> Call,
) -> Result<u8, CliError> {
    let connection = Connection {
        server: connection.server,
        server_name: connection.server_name,
        ca: connection.ca,
        cert: connection.cert,
        key: connection.key,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    runtime.block_on(async move {
        let channel = fugo::client::channel(&connection).await?;
        work(AdminClient::new(channel)).await
    })
}

/// Hands the share over; a refused share is named by its file.
async fn unseal(
    mut client: AdminClient<Channel>,
    share: zeroize::Zeroizing<String>,
    shown: String,
) -> Result<u8, CliError> {
    let request = UnsealRequest {
        share: share.as_str().to_owned(),
    };
    drop(share);
    match client.unseal(request).await {
        Ok(response) => {
            print_line(&response.into_inner().outcome)?;
            Ok(0)
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            Err(CliError::UnsealRefused {
                path: shown,
                message: status
                    .message()
                    .strip_prefix("share refused: ")
                    .unwrap_or(status.message())
                    .to_owned(),
            })
        }
        Err(status) => Err(ClientError::Refused(status).into()),
    }
}

/// Streams the backup into `out/fugo.backup.part`, then renames it.
async fn backup(mut client: AdminClient<Channel>, out: std::path::PathBuf) -> Result<u8, CliError> {
    let final_path = out.join(BACKUP_FILE);
    if final_path.exists() {
        return Err(CliError::BadArgument(format!(
            "{} exists: a backup is never overwritten; give another --out folder",
            final_path.display()
        )));
    }
    let create = |source: io::Error, path: &Path| CliError::CreateOutput {
        path: path.display().to_string(),
        source,
    };
    fs::create_dir_all(&out).map_err(|error| create(error, &out))?;
    let part = out.join(format!("{BACKUP_FILE}.part"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&part).map_err(|error| create(error, &part))?;
    let mut stream = client
        .backup(BackupRequest {})
        .await
        .map_err(ClientError::Refused)?
        .into_inner();
    let mut checkpoint = None;
    let mut bytes = 0u64;
    let mut done = false;
    while let Some(message) = stream.message().await.map_err(ClientError::Refused)? {
        if checkpoint.is_none() {
            checkpoint = Some(message.checkpoint);
        }
        file.write_all(&message.data)
            .map_err(|error| create(error, &part))?;
        bytes += message.data.len() as u64;
        if message.done {
            done = true;
            break;
        }
    }
    if !done {
        let _ = fs::remove_file(&part);
        return Err(CliError::BadArgument(
            "the server ended the backup before its end; nothing was kept, run it again".into(),
        ));
    }
    file.sync_all().map_err(|error| create(error, &part))?;
    fs::rename(&part, &final_path).map_err(|error| create(error, &final_path))?;
    print_line(&format!(
        "backup of checkpoint {} written to {} ({bytes} bytes, encrypted under the master key)",
        checkpoint.unwrap_or(0),
        final_path.display()
    ))?;
    Ok(0)
}

/// The master key of `config`: its key file, or the custodians' shares.
fn master_key(config: &ServeConfig, shares: &[PathBuf]) -> Result<KeyHierarchy, CliError> {
    match (&config.master_key, shares.is_empty()) {
        (MasterKeySource::File(path), true) => Ok(keyfile::load(
            &KeySource {
                path: path.clone(),
                expect: Some(config.fingerprint),
            },
            &mut io::stderr(),
        )?),
        (MasterKeySource::File(_), false) => Err(CliError::BadArgument(
            "--share is for a key held by custodians ([custody]); this configuration names \
             a key file"
                .into(),
        )),
        (MasterKeySource::Shares { threshold }, _) => {
            // Shares are in memory: no core file may catch them.
            fugo::hardening::disable_dumps()?;
            let progress = Arc::new(SealProgress::new(*threshold));
            let mut unsealer = Unsealer::new(config.fingerprint, progress);
            for path in shares {
                let shown = path.display().to_string();
                let text = fugo::files::read_text(path, fugo::custody::share::MAX_SHARE_FILE)
                    .map_err(|source| CliError::ReadFile {
                        path: shown.clone(),
                        source,
                    })?;
                match unsealer.supply(&text) {
                    Ok(Supplied::Complete(keys)) => return Ok(keys),
                    Ok(_) => {}
                    Err(error) => {
                        return Err(CliError::BadArgument(format!("share {shown}: {error}")));
                    }
                }
            }
            Err(CliError::BadArgument(format!(
                "the key is held by custodians ([custody], threshold {threshold}): give \
                 {threshold} share files with --share (got {})",
                shares.len()
            )))
        }
        _ => Err(CliError::BadArgument(
            "no master key in the configuration".into(),
        )),
    }
}

/// Restores with the server stopped; the admin is proven by their admin
/// certificate and key, as the admin listener would prove them (D203).
fn restore(
    config: &Path,
    from: &Path,
    (cert, key): (&Path, &Path),
    shares: &[PathBuf],
    force: bool,
) -> Result<u8, CliError> {
    let config = ServeConfig::load(config).map_err(fugo::service::ServeError::from)?;
    let Some(admin_plane) = &config.admin else {
        return Err(CliError::BadArgument(
            "a restore is recorded under the admin who does it, proven by an admin \
             certificate: configure [admin] (ca, identities) as for the admin listener"
                .into(),
        ));
    };
    let admin = fugo::service::prove_admin(admin_plane, cert, key)?;
    let keys = master_key(&config, shares)?;
    let origin = fugo::audit::origin(config.audit.origin.as_deref(), &keys);
    let restored = restore::restore(&RestoreRequest {
        keys: &keys,
        origin: &origin,
        data_dir: &config.data_dir,
        backup: &from.join(BACKUP_FILE),
        admin: &admin,
        force,
    })?;
    if let Some(kept) = &restored.kept {
        let _ = writeln!(
            io::stderr(),
            "fugo: the audit store that was there is kept as {}",
            kept.display()
        );
    }
    print_line(&format!(
        "restored from checkpoint {n} of {origin}; records after {n} lost\n\
         the log continues under a new origin; publish its key:\n{key}",
        n = restored.checkpoint,
        origin = restored.previous_origin,
        key = restored.verifier
    ))?;
    Ok(0)
}
