//! `pemba backup`: create, restore, export and import.
//!
//! `pemba backup create` (an online checkpoint taken by a running server),
//! `pemba backup restore` (copies a checkpoint into a data dir while no server runs), and
//! `pemba backup export|import` (a schema and relationships file, see [`super::backup_file`]).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::backup_file::{ExportArgs, ImportArgs};
use super::client::{Client, ClientArgs, call_failed, runtime};
use crate::api::proto::pemba::admin::v1::CreateBackupRequest;
use crate::api::proto::pemba::admin::v1::backup_service_client::BackupServiceClient;
use crate::api::valid_backup_name;
use crate::store::{Datastore as _, RocksStore};

/// `pemba backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// what to do
    #[command(subcommand)]
    pub command: BackupCommand,
}

/// Subcommands of `pemba backup`.
#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Ask a running server to write a consistent checkpoint into `<--backup-dir>/NAME`.
    Create(CreateArgs),
    /// Copy a checkpoint into a data dir (no server may be running on it).
    Restore(RestoreArgs),
    /// Write a running server's schema and relationships, at one revision, to a YAML file that
    /// `pemba backup import` and SpiceDB's `zed import` read.
    Export(ExportArgs),
    /// Write the schema and relationships of an exported file (or a text file of
    /// relationships) into a running server, all relationships or none.
    Import(ImportArgs),
}

/// Flags of `pemba backup create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// name of the backup: one path component of [A-Za-z0-9._-]
    pub name: String,
    /// how to reach the server
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of `pemba backup restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// the checkpoint directory (as printed by `pemba backup create`)
    #[arg(long)]
    pub from: PathBuf,
    /// the data dir to restore into
    #[arg(long, default_value = "./pemba-data")]
    pub data_dir: PathBuf,
    /// restore even if the data dir exists and is not empty (its files are replaced)
    #[arg(long)]
    pub force: bool,
}

/// Runs `pemba backup`.
pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    match args.command {
        BackupCommand::Create(a) => create(&a),
        BackupCommand::Restore(a) => restore(&a),
        BackupCommand::Export(a) => super::backup_file::export(&a),
        BackupCommand::Import(a) => super::backup_file::import(&a),
    }
}

fn create(args: &CreateArgs) -> anyhow::Result<()> {
    if !valid_backup_name(&args.name) {
        bail!(
            "invalid backup name `{}`: one path component of 1 to 128 characters from \
             [A-Za-z0-9._-], not `.` or `..`",
            args.name
        );
    }
    runtime()?.block_on(async {
        let client = Client::connect(&args.client).await?;
        let request = client.request(CreateBackupRequest {
            name: args.name.clone(),
        });
        let mut client = BackupServiceClient::new(client.channel);
        let response = client
            .create_backup(request)
            .await
            .map_err(|s| call_failed("CreateBackup", &s))?
            .into_inner();
        let token = response
            .backup_revision
            .map(|t| t.token)
            .unwrap_or_default();
        println!("path: {}", response.path);
        println!("revision: {token}");
        anyhow::Ok(())
    })
}

/// Is `dir` absent or an empty directory?
fn absent_or_empty(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("cannot read `{}`", dir.display())),
    }
}

fn restore(args: &RestoreArgs) -> anyhow::Result<()> {
    if !args.from.join("CURRENT").is_file() {
        bail!(
            "`{}` is not a checkpoint (no CURRENT file)",
            args.from.display()
        );
    }
    if !absent_or_empty(&args.data_dir)? {
        if !args.force {
            bail!(
                "the data dir `{}` exists and is not empty; pass --force to replace it",
                args.data_dir.display()
            );
        }
        std::fs::remove_dir_all(&args.data_dir)
            .with_context(|| format!("cannot remove `{}`", args.data_dir.display()))?;
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create `{}`", args.data_dir.display()))?;
    // A checkpoint is one flat directory of files.
    for entry in std::fs::read_dir(&args.from)
        .with_context(|| format!("cannot read `{}`", args.from.display()))?
    {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            bail!(
                "unexpected entry `{}` in the checkpoint",
                entry.path().display()
            );
        }
        let to = args.data_dir.join(entry.file_name());
        std::fs::copy(entry.path(), &to).with_context(|| {
            format!(
                "cannot copy `{}` to `{}`",
                entry.path().display(),
                to.display()
            )
        })?;
    }
    let store = RocksStore::open(&args.data_dir).with_context(|| {
        format!(
            "the restored data dir `{}` does not open",
            args.data_dir.display()
        )
    })?;
    let head = store.head_revision()?;
    println!("restored into: {}", args.data_dir.display());
    println!("head revision: {head}");
    Ok(())
}
