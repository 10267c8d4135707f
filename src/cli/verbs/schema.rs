//! `pemba schema read | write | check | diff`: the schema, on a server or in files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::{failed, with_client};
use crate::api::proto::authzed::api::v1 as pb;
use crate::cli::client::ClientArgs;
use crate::cli::output::token_text;
use pb::schema_service_client::SchemaServiceClient;

/// `pemba schema` arguments.
#[derive(Debug, clap::Args)]
pub struct SchemaArgs {
    /// what to do
    #[command(subcommand)]
    pub command: SchemaCommand,
}

/// `pemba schema` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SchemaCommand {
    /// Print the server's schema.
    Read {
        /// connection
        #[command(flatten)]
        client: ClientArgs,
        /// print JSON: `{"schema_text": ..., "read_at": TOKEN}`
        #[arg(long)]
        json: bool,
    },
    /// Write a schema file (`-` for stdin) to the server; prints the token of the write.
    Write {
        /// the schema file, or `-`
        file: PathBuf,
        /// connection
        #[command(flatten)]
        client: ClientArgs,
        /// print JSON: `{"written_at": TOKEN}`
        #[arg(long)]
        json: bool,
    },
    /// Compile and type-check schema files locally (no server); errors show the line and a
    /// caret under the column.
    Check {
        /// schema files
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// What changed from one schema file to another (locally, no server).
    Diff {
        /// the schema before
        before: PathBuf,
        /// the schema after
        after: PathBuf,
    },
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read stdin");
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

/// Compiles a schema file, or fails with the report `pemba schema check` prints.
fn compile(path: &Path) -> anyhow::Result<crate::schema::CompiledSchema> {
    let text = read_file(path)?;
    crate::schema::compile(&text)
        .map_err(|e| anyhow::anyhow!(crate::cli::validate::schema_report(path, &text, &e)))
}

/// Runs `pemba schema ...`.
pub fn run(args: SchemaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SchemaCommand::Read { client, json } => with_client(&client, |c| async move {
            let resp = SchemaServiceClient::new(c.channel.clone())
                .read_schema(c.request(pb::ReadSchemaRequest {}))
                .await
                .map_err(|s| failed("ReadSchema", &s))?
                .into_inner();
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "schema_text": resp.schema_text,
                        "read_at": token_text(resp.read_at.as_ref()),
                    })
                );
            } else {
                println!("{}", resp.schema_text.trim_end());
            }
            Ok(ExitCode::SUCCESS)
        }),
        SchemaCommand::Write { file, client, json } => {
            let text = read_file(&file)?;
            if text.trim().is_empty() {
                bail!(
                    "`{}` is empty: an empty schema is not written",
                    file.display()
                );
            }
            with_client(&client, |c| async move {
                let resp = SchemaServiceClient::new(c.channel.clone())
                    .write_schema(c.request(pb::WriteSchemaRequest { schema: text }))
                    .await
                    .map_err(|s| failed("WriteSchema", &s))?
                    .into_inner();
                let token = token_text(resp.written_at.as_ref());
                if json {
                    println!("{}", serde_json::json!({ "written_at": token }));
                } else {
                    println!("{token}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        SchemaCommand::Check { files } => {
            let mut bad = 0;
            for f in &files {
                match compile(f) {
                    Ok(schema) => println!(
                        "{}: ok ({} definitions, {} caveats)",
                        f.display(),
                        schema.definitions.len(),
                        schema.caveats.len()
                    ),
                    Err(e) => {
                        bad += 1;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(super::EXIT_NO)
            })
        }
        SchemaCommand::Diff { before, after } => {
            let (old, new) = (compile(&before)?, compile(&after)?);
            let changes = crate::schema::diff::diff_schemas(&old, &new);
            if changes.is_empty() {
                println!("no changes");
            }
            for c in changes {
                println!("{c}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
