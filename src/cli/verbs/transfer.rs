//! `pemba watch`, `pemba import` and `pemba export`: changes as they happen, and a whole
//! store in and out as a validation file (or relationship text).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;

use super::{failed, with_client, write_in_batches};
use crate::api::proto::authzed::api::v1 as pb;
use crate::cli::client::ClientArgs;
use crate::cli::output::{relationship, relationship_text, token_text};
use crate::cli::validate;
use pb::permissions_service_client::PermissionsServiceClient;
use pb::schema_service_client::SchemaServiceClient;
use pb::watch_service_client::WatchServiceClient;

/// `pemba watch` arguments.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// only these resource types (default: all)
    pub object_types: Vec<String>,
    /// start after this token (default: from now)
    #[arg(long)]
    pub start: Option<String>,
    /// stop after this many relationship updates (default: run until interrupted)
    #[arg(long)]
    pub limit: Option<usize>,
    /// connection
    #[command(flatten)]
    pub client: ClientArgs,
    /// print JSON lines: `{"operation", "relationship", "changes_through"}`
    #[arg(long)]
    pub json: bool,
}

/// `pemba import` arguments.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// a validation file (`.yaml`/`.yml`: its schema, then its relationships) or a text file
    /// of relationships, one per line
    pub file: PathBuf,
    /// connection
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `pemba export` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// a validation file: `schema` and `relationships` (loadable with `pemba import`)
    Yaml,
    /// relationships only, one per line
    Text,
}

/// `pemba export` arguments.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// output format
    #[arg(long, value_enum, default_value = "yaml")]
    pub format: ExportFormat,
    /// connection
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `pemba watch`.
pub fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    with_client(&args.client, |c| async move {
        let request = pb::WatchRequest {
            optional_object_types: args.object_types.clone(),
            optional_start_cursor: args.start.map(|token| pb::ZedToken { token }),
            ..Default::default()
        };
        let mut stream = WatchServiceClient::new(c.channel.clone())
            .watch(c.request(request))
            .await
            .map_err(|s| failed("Watch", &s))?
            .into_inner();
        let mut seen = 0usize;
        let mut stdout = std::io::stdout();
        while let Some(resp) = stream.next().await {
            let resp = resp.map_err(|s| failed("Watch", &s))?;
            let through = token_text(resp.changes_through.as_ref()).to_string();
            for u in &resp.updates {
                let op = pb::relationship_update::Operation::try_from(u.operation).map_or(
                    "UNKNOWN",
                    |o| match o {
                        pb::relationship_update::Operation::Create => "CREATE",
                        pb::relationship_update::Operation::Touch => "TOUCH",
                        pb::relationship_update::Operation::Delete => "DELETE",
                        pb::relationship_update::Operation::Unspecified => "UNKNOWN",
                    },
                );
                let rel = u
                    .relationship
                    .as_ref()
                    .map(relationship_text)
                    .unwrap_or_default();
                if args.json {
                    writeln!(
                        stdout,
                        "{}",
                        serde_json::json!({
                            "operation": op,
                            "relationship": rel,
                            "changes_through": through,
                        })
                    )?;
                } else {
                    writeln!(stdout, "{op} {rel}")?;
                }
                seen += 1;
                if args.limit.is_some_and(|l| seen >= l) {
                    stdout.flush()?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
            stdout.flush()?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The schema and relationships of a validation file (read as `pemba validate` reads it, but
/// not checked: the server checks them), or of a relationship text file.
fn import_parts(file: &Path) -> anyhow::Result<(Option<String>, Vec<pb::Relationship>)> {
    let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let (schema, text) = if yaml {
        let contents = validate::read_contents(file).map_err(|e| anyhow::anyhow!("{e}"))?;
        (
            contents.schema.map(|p| p.text),
            contents.relationships.map(|p| p.text).unwrap_or_default(),
        )
    } else {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read `{}`", file.display()))?;
        (None, text)
    };
    let rels = validate::relationship_lines(&text)
        .map(relationship)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((schema, rels))
}

/// Runs `pemba import`.
pub fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let (schema, rels) = import_parts(&args.file)?;
    with_client(&args.client, |c| async move {
        if let Some(schema) = schema {
            SchemaServiceClient::new(c.channel.clone())
                .write_schema(c.request(pb::WriteSchemaRequest { schema }))
                .await
                .map_err(|s| failed("WriteSchema", &s))?;
            eprintln!("schema written");
        }
        let progress = std::io::stderr().is_terminal();
        let total = rels.len();
        let token = write_in_batches(
            &c,
            &rels,
            pb::relationship_update::Operation::Touch,
            |done| {
                if progress {
                    eprint!("\r{done} / {total} relationships");
                }
            },
        )
        .await?;
        let done = total;
        if progress {
            eprintln!();
        }
        eprintln!("{done} relationships written");
        println!("{token}");
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `pemba export`.
pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    with_client(&args.client, |c| async move {
        let schema = SchemaServiceClient::new(c.channel.clone())
            .read_schema(c.request(pb::ReadSchemaRequest {}))
            .await
            .map_err(|s| failed("ReadSchema", &s))?
            .into_inner();
        // Every relationship at the revision the schema was read at.
        let consistency = pb::Consistency {
            requirement: Some(match schema.read_at.clone() {
                Some(t) => pb::consistency::Requirement::AtExactSnapshot(t),
                None => pb::consistency::Requirement::FullyConsistent(true),
            }),
        };
        let mut stream = PermissionsServiceClient::new(c.channel.clone())
            .export_bulk_relationships(c.request(pb::ExportBulkRelationshipsRequest {
                consistency: Some(consistency),
                ..Default::default()
            }))
            .await
            .map_err(|s| failed("ExportBulkRelationships", &s))?
            .into_inner();
        let mut out = std::io::BufWriter::new(std::io::stdout());
        if matches!(args.format, ExportFormat::Yaml) {
            writeln!(out, "schema: |-")?;
            for line in schema.schema_text.trim_end().lines() {
                if line.is_empty() {
                    writeln!(out)?;
                } else {
                    writeln!(out, "  {line}")?;
                }
            }
            writeln!(out, "relationships: |-")?;
        }
        let indent = if matches!(args.format, ExportFormat::Yaml) {
            "  "
        } else {
            ""
        };
        let progress = std::io::stderr().is_terminal();
        let mut n = 0usize;
        while let Some(page) = stream.next().await {
            let page = page.map_err(|s| failed("ExportBulkRelationships", &s))?;
            for r in &page.relationships {
                writeln!(out, "{indent}{}", relationship_text(r))?;
                n += 1;
            }
            if progress {
                eprint!("\r{n} relationships");
            }
        }
        out.flush()?;
        if progress {
            eprintln!();
        }
        if n == 0 && schema.schema_text.is_empty() {
            bail!("the server has no schema and no relationships");
        }
        Ok(ExitCode::SUCCESS)
    })
}
