//! `pemba permission check | bulk | expand | lookup-resources | lookup-subjects`.
//!
//! `check` prints `true`, `false` or `caveated` and exits 0, 1 or 2 accordingly, so a shell
//! can branch on it; `--explain` draws the server's trace of the check as a tree: which
//! relation, arrow or caveat gave or denied the answer, with the time each step took.

use std::process::ExitCode;

use futures::StreamExt as _;

use super::{EXIT_CONDITIONAL, EXIT_NO, failed, with_client};
use crate::api::proto::authzed::api::v1 as pb;
use crate::cli::client::ClientArgs;
use crate::cli::output::{
    Paint, QueryFlags, caveat_context, object_ref, object_text, subject, subject_text, token_text,
};
use pb::permissions_service_client::PermissionsServiceClient;

/// `pemba permission` arguments.
#[derive(Debug, clap::Args)]
pub struct PermissionArgs {
    /// what to do
    #[command(subcommand)]
    pub command: PermissionCommand,
}

/// Flags every permission question takes.
#[derive(Debug, clap::Args)]
pub struct Asking {
    /// connection
    #[command(flatten)]
    pub client: ClientArgs,
    /// consistency and output
    #[command(flatten)]
    pub query: QueryFlags,
    /// caveat context, a JSON object: `--context '{"ip": "10.0.0.1"}'`
    #[arg(long)]
    pub context: Option<String>,
}

/// `pemba permission` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PermissionCommand {
    /// Does SUBJECT have PERMISSION on RESOURCE? Prints true / false / caveated; exits 0 / 1 / 2.
    Check {
        /// `type:id`
        resource: String,
        /// a permission or relation
        permission: String,
        /// `type:id` or `type:id#relation`
        subject: String,
        /// the question
        #[command(flatten)]
        asking: Asking,
        /// draw the check's trace as a tree
        #[arg(long)]
        explain: bool,
    },
    /// Many checks at once: `resource#permission@subject` each; one answer per line.
    #[command(alias = "check-bulk")]
    Bulk {
        /// `document:plan#view@user:ann` ...
        #[arg(required = true)]
        checks: Vec<String>,
        /// the question
        #[command(flatten)]
        asking: Asking,
    },
    /// The tree of who has PERMISSION on RESOURCE, one level deep (subject sets unexpanded).
    Expand {
        /// `type:id`
        resource: String,
        /// a permission or relation
        permission: String,
        /// connection
        #[command(flatten)]
        client: ClientArgs,
        /// consistency and output
        #[command(flatten)]
        query: QueryFlags,
    },
    /// Every resource of TYPE on which SUBJECT has PERMISSION, one id per line.
    LookupResources {
        /// the resource type
        resource_type: String,
        /// a permission or relation
        permission: String,
        /// `type:id` or `type:id#relation`
        subject: String,
        /// the question
        #[command(flatten)]
        asking: Asking,
        /// at most this many (0: all)
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// resume after this cursor (printed with --json)
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every subject of SUBJECT_TYPE (`user` or `group#member`) with PERMISSION on RESOURCE.
    LookupSubjects {
        /// `type:id`
        resource: String,
        /// a permission or relation
        permission: String,
        /// `type` or `type#relation`
        subject_type: String,
        /// the question
        #[command(flatten)]
        asking: Asking,
    },
}

fn answer(p: i32) -> (&'static str, u8) {
    use pb::check_permission_response::Permissionship as P;
    match P::try_from(p) {
        Ok(P::HasPermission) => ("true", 0),
        Ok(P::ConditionalPermission) => ("caveated", EXIT_CONDITIONAL),
        _ => ("false", EXIT_NO),
    }
}

fn painted(paint: &Paint, word: &str) -> String {
    match word {
        "true" => paint.good(word),
        "caveated" => paint.maybe(word),
        _ => paint.bad(word),
    }
}

fn missing(info: Option<&pb::PartialCaveatInfo>) -> Vec<String> {
    info.map(|i| i.missing_required_context.clone())
        .unwrap_or_default()
}

/// Runs `pemba permission ...`.
pub fn run(args: PermissionArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PermissionCommand::Check {
            resource,
            permission,
            subject: who,
            asking,
            explain,
        } => {
            let request = pb::CheckPermissionRequest {
                consistency: Some(asking.query.consistency()?),
                resource: Some(object_ref(&resource)?),
                permission,
                subject: Some(subject(&who)?),
                context: caveat_context(asking.context.as_deref())?,
                with_tracing: explain,
            };
            let json = asking.query.json;
            with_client(&asking.client, |c| async move {
                let resp = PermissionsServiceClient::new(c.channel.clone())
                    .check_permission(c.request(request))
                    .await
                    .map_err(|s| failed("CheckPermission", &s))?
                    .into_inner();
                let (word, code) = answer(resp.permissionship);
                let missing = missing(resp.partial_caveat_info.as_ref());
                let trace = resp.debug_trace.as_ref().and_then(|d| d.check.as_ref());
                if json {
                    let mut out = serde_json::json!({
                        "permissionship": word,
                        "checked_at": token_text(resp.checked_at.as_ref()),
                        "missing_context": missing,
                    });
                    if let Some(t) = trace {
                        out["trace"] = trace_json(t);
                    }
                    println!("{out}");
                } else {
                    let paint = Paint::stdout();
                    if missing.is_empty() {
                        println!("{}", painted(&paint, word));
                    } else {
                        println!(
                            "{} (missing context: {})",
                            painted(&paint, word),
                            missing.join(", ")
                        );
                    }
                    if let Some(t) = trace {
                        let mut out = String::new();
                        draw_trace(&paint, t, "", true, true, &mut out);
                        print!("{out}");
                    }
                }
                Ok(ExitCode::from(code))
            })
        }
        PermissionCommand::Bulk { checks, asking } => {
            let context = caveat_context(asking.context.as_deref())?;
            let mut items = Vec::with_capacity(checks.len());
            for text in &checks {
                let r = crate::cli::output::relationship(text)?;
                items.push(pb::CheckBulkPermissionsRequestItem {
                    resource: r.resource,
                    permission: r.relation,
                    subject: r.subject,
                    context: context.clone(),
                });
            }
            let request = pb::CheckBulkPermissionsRequest {
                consistency: Some(asking.query.consistency()?),
                items,
                with_tracing: false,
            };
            let json = asking.query.json;
            with_client(&asking.client, |c| async move {
                let resp = PermissionsServiceClient::new(c.channel.clone())
                    .check_bulk_permissions(c.request(request))
                    .await
                    .map_err(|s| failed("CheckBulkPermissions", &s))?
                    .into_inner();
                let paint = Paint::stdout();
                let mut failures = 0;
                for (text, pair) in checks.iter().zip(resp.pairs) {
                    use pb::check_bulk_permissions_pair::Response;
                    let (word, missing) = match pair.response {
                        Some(Response::Item(i)) => (
                            answer(i.permissionship).0.to_string(),
                            missing(i.partial_caveat_info.as_ref()),
                        ),
                        Some(Response::Error(e)) => {
                            failures += 1;
                            (format!("error: {}", e.message), Vec::new())
                        }
                        None => {
                            failures += 1;
                            ("error: no answer".to_string(), Vec::new())
                        }
                    };
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "check": text,
                                "permissionship": word,
                                "missing_context": missing,
                            })
                        );
                    } else {
                        println!("{text} {}", painted(&paint, &word));
                    }
                }
                if failures > 0 {
                    anyhow::bail!("{failures} of the checks failed");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        PermissionCommand::Expand {
            resource,
            permission,
            client,
            query,
        } => {
            let request = pb::ExpandPermissionTreeRequest {
                consistency: Some(query.consistency()?),
                resource: Some(object_ref(&resource)?),
                permission,
            };
            with_client(&client, |c| async move {
                let resp = PermissionsServiceClient::new(c.channel.clone())
                    .expand_permission_tree(c.request(request))
                    .await
                    .map_err(|s| failed("ExpandPermissionTree", &s))?
                    .into_inner();
                let Some(root) = resp.tree_root.as_ref() else {
                    anyhow::bail!("the server sent no tree");
                };
                if query.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "expanded_at": token_text(resp.expanded_at.as_ref()),
                            "tree": tree_json(root),
                        })
                    );
                } else {
                    let mut out = String::new();
                    draw_tree(root, "", true, true, &mut out);
                    print!("{out}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        PermissionCommand::LookupResources {
            resource_type,
            permission,
            subject: who,
            asking,
            limit,
            cursor,
        } => {
            let request = pb::LookupResourcesRequest {
                consistency: Some(asking.query.consistency()?),
                resource_object_type: resource_type,
                permission,
                subject: Some(subject(&who)?),
                context: caveat_context(asking.context.as_deref())?,
                optional_limit: limit,
                optional_cursor: cursor.map(|token| pb::Cursor { token }),
                ..Default::default()
            };
            let json = asking.query.json;
            with_client(&asking.client, |c| async move {
                let mut stream = PermissionsServiceClient::new(c.channel.clone())
                    .lookup_resources(c.request(request))
                    .await
                    .map_err(|s| failed("LookupResources", &s))?
                    .into_inner();
                while let Some(item) = stream.next().await {
                    let r = item.map_err(|s| failed("LookupResources", &s))?;
                    let conditional =
                        r.permissionship == pb::LookupPermissionship::ConditionalPermission as i32;
                    let missing = missing(r.partial_caveat_info.as_ref());
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "resource_id": r.resource_object_id,
                                "permissionship": if conditional { "caveated" } else { "true" },
                                "missing_context": missing,
                                "cursor": r.after_result_cursor.map(|c| c.token),
                                "looked_up_at": token_text(r.looked_up_at.as_ref()),
                            })
                        );
                    } else if conditional {
                        println!(
                            "{} (caveated, missing context: {})",
                            r.resource_object_id,
                            missing.join(", ")
                        );
                    } else {
                        println!("{}", r.resource_object_id);
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        PermissionCommand::LookupSubjects {
            resource,
            permission,
            subject_type,
            asking,
        } => {
            let (subject_object_type, relation) = match subject_type.split_once('#') {
                Some((t, r)) => (t.to_string(), r.to_string()),
                None => (subject_type, String::new()),
            };
            let request = pb::LookupSubjectsRequest {
                consistency: Some(asking.query.consistency()?),
                resource: Some(object_ref(&resource)?),
                permission,
                subject_object_type,
                optional_subject_relation: relation,
                context: caveat_context(asking.context.as_deref())?,
                ..Default::default()
            };
            let json = asking.query.json;
            with_client(&asking.client, |c| async move {
                let mut stream = PermissionsServiceClient::new(c.channel.clone())
                    .lookup_subjects(c.request(request))
                    .await
                    .map_err(|s| failed("LookupSubjects", &s))?
                    .into_inner();
                while let Some(item) = stream.next().await {
                    let r = item.map_err(|s| failed("LookupSubjects", &s))?;
                    let Some(s) = r.subject.as_ref() else {
                        continue;
                    };
                    let conditional =
                        s.permissionship == pb::LookupPermissionship::ConditionalPermission as i32;
                    let excluded: Vec<&str> = r
                        .excluded_subjects
                        .iter()
                        .map(|e| e.subject_object_id.as_str())
                        .collect();
                    let missing = missing(s.partial_caveat_info.as_ref());
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "subject_id": s.subject_object_id,
                                "permissionship": if conditional { "caveated" } else { "true" },
                                "missing_context": missing,
                                "excluded": excluded,
                            })
                        );
                    } else {
                        let mut line = s.subject_object_id.clone();
                        if !excluded.is_empty() {
                            line.push_str(&format!(" - {{{}}}", excluded.join(", ")));
                        }
                        if conditional {
                            line.push_str(&format!(
                                " (caveated, missing context: {})",
                                missing.join(", ")
                            ));
                        }
                        println!("{line}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}

fn duration_text(d: Option<&prost_types::Duration>) -> String {
    let Some(d) = d else { return String::new() };
    let micros = d.seconds.saturating_mul(1_000_000) + i64::from(d.nanos / 1000);
    if micros >= 1000 {
        format!("{:.2} ms", micros as f64 / 1000.0)
    } else {
        format!("{micros} µs")
    }
}

fn trace_result(t: &pb::CheckDebugTrace) -> &'static str {
    use pb::check_debug_trace::Permissionship as P;
    match P::try_from(t.result) {
        Ok(P::HasPermission) => "true",
        Ok(P::ConditionalPermission) => "caveated",
        Ok(P::NoPermission) => "false",
        _ => "?",
    }
}

/// The branch drawn before a tree node, and the prefix of its children's lines.
fn branches(prefix: &str, last: bool, root: bool) -> (&'static str, String) {
    match (root, last) {
        (true, _) => ("", prefix.to_string()),
        (false, true) => ("└── ", format!("{prefix}    ")),
        (false, false) => ("├── ", format!("{prefix}│   ")),
    }
}

/// Draws one trace node and its sub-problems with box-drawing branches.
fn draw_trace(
    paint: &Paint,
    t: &pb::CheckDebugTrace,
    prefix: &str,
    last: bool,
    root: bool,
    out: &mut String,
) {
    use pb::check_debug_trace::Resolution;
    use std::fmt::Write as _;
    let (branch, child_prefix) = branches(prefix, last, root);
    let result = trace_result(t);
    let mark = match result {
        "true" => paint.good("✓"),
        "caveated" => paint.maybe("?"),
        _ => paint.bad("⨯"),
    };
    let cached = matches!(t.resolution, Some(Resolution::WasCachedResult(true)));
    let _ = write!(
        out,
        "{prefix}{branch}{mark} {}#{} @ {} {}",
        object_text(t.resource.as_ref()),
        t.permission,
        subject_text(t.subject.as_ref()),
        paint.dim(&duration_text(t.duration.as_ref())),
    );
    if cached {
        let _ = write!(out, " {}", paint.dim("(cached)"));
    }
    if let Some(c) = &t.caveat_evaluation_info {
        let _ = write!(out, "  caveat {}: {}", c.caveat_name, c.expression);
    }
    out.push('\n');
    if let Some(Resolution::SubProblems(sub)) = &t.resolution {
        let n = sub.traces.len();
        for (i, s) in sub.traces.iter().enumerate() {
            draw_trace(paint, s, &child_prefix, i + 1 == n, false, out);
        }
    }
}

fn trace_json(t: &pb::CheckDebugTrace) -> serde_json::Value {
    use pb::check_debug_trace::Resolution;
    let sub: Vec<serde_json::Value> = match &t.resolution {
        Some(Resolution::SubProblems(s)) => s.traces.iter().map(trace_json).collect(),
        _ => Vec::new(),
    };
    serde_json::json!({
        "resource": object_text(t.resource.as_ref()),
        "permission": t.permission,
        "subject": subject_text(t.subject.as_ref()),
        "result": trace_result(t),
        "duration": duration_text(t.duration.as_ref()),
        "caveat": t.caveat_evaluation_info.as_ref().map(|c| &c.caveat_name),
        "sub_problems": sub,
    })
}

/// Draws an expansion tree with box-drawing branches.
fn draw_tree(
    t: &pb::PermissionRelationshipTree,
    prefix: &str,
    last: bool,
    root: bool,
    out: &mut String,
) {
    use pb::permission_relationship_tree::TreeType;
    use std::fmt::Write as _;
    let (branch, child_prefix) = branches(prefix, last, root);
    let name = format!(
        "{}#{}",
        object_text(t.expanded_object.as_ref()),
        t.expanded_relation
    );
    match &t.tree_type {
        Some(TreeType::Intermediate(set)) => {
            let op = match pb::algebraic_subject_set::Operation::try_from(set.operation) {
                Ok(pb::algebraic_subject_set::Operation::Intersection) => "intersection",
                Ok(pb::algebraic_subject_set::Operation::Exclusion) => "exclusion",
                _ => "union",
            };
            let _ = writeln!(out, "{prefix}{branch}{name} ({op})");
            let n = set.children.len();
            for (i, c) in set.children.iter().enumerate() {
                draw_tree(c, &child_prefix, i + 1 == n, false, out);
            }
        }
        Some(TreeType::Leaf(set)) => {
            let _ = writeln!(out, "{prefix}{branch}{name}");
            let n = set.subjects.len();
            for (i, s) in set.subjects.iter().enumerate() {
                let b = if i + 1 == n {
                    "└── "
                } else {
                    "├── "
                };
                let _ = writeln!(out, "{child_prefix}{b}{}", subject_text(Some(s)));
            }
        }
        None => {
            let _ = writeln!(out, "{prefix}{branch}{name}");
        }
    }
}

fn tree_json(t: &pb::PermissionRelationshipTree) -> serde_json::Value {
    use pb::permission_relationship_tree::TreeType;
    let name = format!(
        "{}#{}",
        object_text(t.expanded_object.as_ref()),
        t.expanded_relation
    );
    match &t.tree_type {
        Some(TreeType::Intermediate(set)) => serde_json::json!({
            "expanded": name,
            "operation": pb::algebraic_subject_set::Operation::try_from(set.operation)
                .map_or("unspecified", |o| o.as_str_name()),
            "children": set.children.iter().map(tree_json).collect::<Vec<_>>(),
        }),
        Some(TreeType::Leaf(set)) => serde_json::json!({
            "expanded": name,
            "subjects": set.subjects.iter().map(|s| subject_text(Some(s))).collect::<Vec<_>>(),
        }),
        None => serde_json::json!({ "expanded": name }),
    }
}
