//! `pemba relationship create | touch | delete | read | bulk-delete`, in SpiceDB's text form.
//!
//! Relationships are written as `document:plan#viewer@user:ann`, optionally with
//! `[caveat_name:{"json":1}]` and `[expiration:2030-01-01T00:00:00Z]`, from the arguments or,
//! with none, one per line on stdin. Filters are `type[:id][#relation][@type[:id][#relation]]`.

use std::process::ExitCode;

use anyhow::bail;
use futures::StreamExt as _;

use super::{failed, with_client, write_in_batches};
use crate::api::proto::authzed::api::v1 as pb;
use crate::cli::client::ClientArgs;
use crate::cli::output::{QueryFlags, relationship_text, relationships_from, token_text};
use pb::permissions_service_client::PermissionsServiceClient;

/// `pemba relationship` arguments.
#[derive(Debug, clap::Args)]
pub struct RelationshipArgs {
    /// what to do
    #[command(subcommand)]
    pub command: RelationshipCommand,
}

/// Relationships to write, and where to send them.
#[derive(Debug, clap::Args)]
pub struct WriteArgs {
    /// relationships (`document:plan#viewer@user:ann`); none: one per line on stdin
    pub relationships: Vec<String>,
    /// connection
    #[command(flatten)]
    pub client: ClientArgs,
    /// print JSON: `{"written_at": TOKEN, "count": N}`
    #[arg(long)]
    pub json: bool,
}

/// `pemba relationship` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RelationshipCommand {
    /// Create relationships; fails (ALREADY_EXISTS) if one exists. Prints the write's token.
    #[command(alias = "write")]
    Create(WriteArgs),
    /// Create relationships, or update the caveat and expiration of existing ones.
    Touch(WriteArgs),
    /// Delete relationships (absent ones are ignored).
    Delete(WriteArgs),
    /// Print the relationships matching a filter, one per line.
    Read {
        /// `type[:id][#relation][@type[:id][#relation]]`, e.g. `document:plan#viewer`
        filter: String,
        /// connection
        #[command(flatten)]
        client: ClientArgs,
        /// consistency and output
        #[command(flatten)]
        query: QueryFlags,
        /// at most this many (0: all)
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Delete every relationship matching a filter; prints how many were deleted.
    BulkDelete {
        /// `type[:id][#relation][@type[:id][#relation]]`
        filter: String,
        /// connection
        #[command(flatten)]
        client: ClientArgs,
        /// needed when the filter names no resource id or relation (it could delete a lot)
        #[arg(long)]
        force: bool,
        /// print JSON
        #[arg(long)]
        json: bool,
    },
}

/// Parses `type[:id][#relation][@type[:id][#relation]]` into a filter.
pub fn filter(text: &str) -> anyhow::Result<pb::RelationshipFilter> {
    let (resource, subject) = match text.split_once('@') {
        Some((r, s)) => (r, Some(s)),
        None => (text, None),
    };
    let (resource, relation) = match resource.split_once('#') {
        Some((r, rel)) => (r, rel),
        None => (resource, ""),
    };
    let (resource_type, resource_id) = match resource.split_once(':') {
        Some((t, id)) => (t, id),
        None => (resource, ""),
    };
    if resource_type.is_empty() {
        bail!("the filter `{text}` needs a resource type: `type[:id][#relation][@subject]`");
    }
    let optional_subject_filter = match subject {
        None => None,
        Some(s) => {
            let (s, rel) = match s.split_once('#') {
                Some((s, r)) => (s, Some(r)),
                None => (s, None),
            };
            let (t, id) = match s.split_once(':') {
                Some((t, id)) => (t, id),
                None => (s, ""),
            };
            if t.is_empty() {
                bail!("the filter `{text}` needs a subject type after `@`");
            }
            Some(pb::SubjectFilter {
                subject_type: t.to_string(),
                optional_subject_id: id.to_string(),
                optional_relation: rel.map(|r| pb::subject_filter::RelationFilter {
                    relation: if r == "..." {
                        String::new()
                    } else {
                        r.to_string()
                    },
                }),
            })
        }
    };
    Ok(pb::RelationshipFilter {
        resource_type: resource_type.to_string(),
        optional_resource_id: resource_id.to_string(),
        optional_relation: relation.to_string(),
        optional_subject_filter,
        optional_resource_id_prefix: String::new(),
    })
}

fn write(args: WriteArgs, op: pb::relationship_update::Operation) -> anyhow::Result<ExitCode> {
    let rels = relationships_from(&args.relationships)?;
    if rels.is_empty() {
        bail!("no relationships given (as arguments or on stdin)");
    }
    let json = args.json;
    with_client(&args.client, |c| async move {
        let count = rels.len();
        let token = write_in_batches(&c, &rels, op, |_| {}).await?;
        if json {
            println!(
                "{}",
                serde_json::json!({ "written_at": token, "count": count })
            );
        } else {
            println!("{token}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `pemba relationship ...`.
pub fn run(args: RelationshipArgs) -> anyhow::Result<ExitCode> {
    use pb::relationship_update::Operation;
    match args.command {
        RelationshipCommand::Create(w) => write(w, Operation::Create),
        RelationshipCommand::Touch(w) => write(w, Operation::Touch),
        RelationshipCommand::Delete(w) => write(w, Operation::Delete),
        RelationshipCommand::Read {
            filter: text,
            client,
            query,
            limit,
        } => {
            let f = filter(&text)?;
            let consistency = query.consistency()?;
            with_client(&client, |c| async move {
                let mut stream = PermissionsServiceClient::new(c.channel.clone())
                    .read_relationships(c.request(pb::ReadRelationshipsRequest {
                        consistency: Some(consistency),
                        relationship_filter: Some(f),
                        optional_limit: limit,
                        optional_cursor: None,
                    }))
                    .await
                    .map_err(|s| failed("ReadRelationships", &s))?
                    .into_inner();
                while let Some(item) = stream.next().await {
                    let item = item.map_err(|s| failed("ReadRelationships", &s))?;
                    let Some(r) = item.relationship.as_ref() else {
                        continue;
                    };
                    if query.json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "relationship": relationship_text(r),
                                "read_at": token_text(item.read_at.as_ref()),
                            })
                        );
                    } else {
                        println!("{}", relationship_text(r));
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        RelationshipCommand::BulkDelete {
            filter: text,
            client,
            force,
            json,
        } => {
            let f = filter(&text)?;
            if !force && f.optional_resource_id.is_empty() && f.optional_relation.is_empty() {
                bail!(
                    "`{text}` would delete every `{}` relationship: add --force to do it",
                    f.resource_type
                );
            }
            with_client(&client, |c| async move {
                let resp = PermissionsServiceClient::new(c.channel.clone())
                    .delete_relationships(c.request(pb::DeleteRelationshipsRequest {
                        relationship_filter: Some(f),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|s| failed("DeleteRelationships", &s))?
                    .into_inner();
                let token = token_text(resp.deleted_at.as_ref());
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "deleted_at": token,
                            "deleted": resp.relationships_deleted_count,
                        })
                    );
                } else {
                    println!(
                        "deleted {} relationships at {token}",
                        resp.relationships_deleted_count
                    );
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::filter;

    #[test]
    fn filters_parse_from_their_text() {
        let f = filter("document:plan#viewer@group:eng#member").unwrap();
        assert_eq!(f.resource_type, "document");
        assert_eq!(f.optional_resource_id, "plan");
        assert_eq!(f.optional_relation, "viewer");
        let s = f.optional_subject_filter.unwrap();
        assert_eq!(
            (s.subject_type.as_str(), s.optional_subject_id.as_str()),
            ("group", "eng")
        );
        assert_eq!(s.optional_relation.unwrap().relation, "member");
        let bare = filter("document").unwrap();
        assert!(bare.optional_resource_id.is_empty() && bare.optional_subject_filter.is_none());
        assert!(filter(":x").is_err());
        assert!(filter("document@").is_err());
    }
}
