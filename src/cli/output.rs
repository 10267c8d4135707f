//! What the client commands share: reading relationship text, consistency and context flags,
//! and writing human or JSON output.

use std::io::IsTerminal as _;

use anyhow::{Context as _, bail};

use crate::api::proto::authzed::api::v1 as pb;
use crate::model::{Relationship, parse_relationship};

/// Flags every query command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct QueryFlags {
    /// how fresh the answer must be: `min` (minimize latency), `full` (fully consistent),
    /// `at-least:TOKEN` or `exact:TOKEN`
    #[arg(long, default_value = "min")]
    pub consistency: String,
    /// print JSON (one object per line for streams) instead of text
    #[arg(long)]
    pub json: bool,
}

impl QueryFlags {
    /// The consistency requirement asked for.
    pub fn consistency(&self) -> anyhow::Result<pb::Consistency> {
        consistency(&self.consistency)
    }
}

/// Parses `--consistency`.
pub fn consistency(text: &str) -> anyhow::Result<pb::Consistency> {
    use pb::consistency::Requirement;
    let token = |t: &str| pb::ZedToken {
        token: t.to_string(),
    };
    let requirement = match text {
        "min" | "minimize-latency" => Requirement::MinimizeLatency(true),
        "full" | "fully-consistent" => Requirement::FullyConsistent(true),
        other => match other.split_once(':') {
            Some(("at-least", t)) if !t.is_empty() => Requirement::AtLeastAsFresh(token(t)),
            Some(("exact", t)) if !t.is_empty() => Requirement::AtExactSnapshot(token(t)),
            _ => bail!(
                "--consistency must be `min`, `full`, `at-least:TOKEN` or `exact:TOKEN`, not \
                 `{other}`"
            ),
        },
    };
    Ok(pb::Consistency {
        requirement: Some(requirement),
    })
}

/// Parses `--context '{"k": 1}'` into a protobuf Struct.
pub fn caveat_context(text: Option<&str>) -> anyhow::Result<Option<prost_types::Struct>> {
    let Some(text) = text else { return Ok(None) };
    let value: serde_json::Value =
        serde_json::from_str(text).context("--context must be a JSON object")?;
    let serde_json::Value::Object(map) = value else {
        bail!("--context must be a JSON object");
    };
    Ok(Some(crate::api::client::struct_from_json(&map)))
}

/// A relationship in SpiceDB's text form, as a proto.
pub fn relationship(text: &str) -> anyhow::Result<pb::Relationship> {
    let rel = parse_relationship(text.trim())
        .map_err(|e| anyhow::anyhow!("`{}`: {}", e.text, e.reason))?;
    Ok(crate::api::client::relationship_to_proto(&rel))
}

/// A proto relationship in SpiceDB's text form.
pub fn relationship_text(r: &pb::Relationship) -> String {
    match crate::api::client::relationship_from_proto(Some(r), "relationship", usize::MAX) {
        Ok(rel) => Relationship::to_string(&rel),
        Err(_) => format!("{r:?}"),
    }
}

/// `type:id` or `type:id#relation` as a proto subject.
pub fn subject(text: &str) -> anyhow::Result<pb::SubjectReference> {
    let (object, relation) = match text.split_once('#') {
        Some((o, r)) => (o, r),
        None => (text, ""),
    };
    Ok(pb::SubjectReference {
        object: Some(object_ref(object)?),
        optional_relation: relation.to_string(),
    })
}

/// `type:id` as a proto object reference.
pub fn object_ref(text: &str) -> anyhow::Result<pb::ObjectReference> {
    match text.split_once(':') {
        Some((t, id)) if !t.is_empty() && !id.is_empty() => Ok(pb::ObjectReference {
            object_type: t.to_string(),
            object_id: id.to_string(),
        }),
        _ => bail!("`{text}` must be `type:id`"),
    }
}

/// `type:id` of a proto object reference.
pub fn object_text(o: Option<&pb::ObjectReference>) -> String {
    o.map_or_else(String::new, |o| {
        format!("{}:{}", o.object_type, o.object_id)
    })
}

/// `type:id[#relation]` of a proto subject.
pub fn subject_text(s: Option<&pb::SubjectReference>) -> String {
    let Some(s) = s else { return String::new() };
    let mut out = object_text(s.object.as_ref());
    if !s.optional_relation.is_empty() {
        out.push('#');
        out.push_str(&s.optional_relation);
    }
    out
}

/// A token's text.
pub fn token_text(t: Option<&pb::ZedToken>) -> &str {
    t.map_or("", |t| t.token.as_str())
}

/// Colours for a terminal (none when stdout is not one, or `NO_COLOR` is set).
pub struct Paint {
    on: bool,
}

impl Paint {
    /// Colours if stdout is a terminal and `NO_COLOR` is unset.
    pub fn stdout() -> Paint {
        Paint {
            on: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn wrap(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// Green.
    pub fn good(&self, s: &str) -> String {
        self.wrap("32", s)
    }

    /// Red.
    pub fn bad(&self, s: &str) -> String {
        self.wrap("31", s)
    }

    /// Yellow.
    pub fn maybe(&self, s: &str) -> String {
        self.wrap("33", s)
    }

    /// Dim.
    pub fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
}

/// Reads relationships, one per line (blank lines and `//` comments skipped), from the
/// arguments or, when there are none, from stdin.
pub fn relationships_from(args: &[String]) -> anyhow::Result<Vec<pb::Relationship>> {
    let lines: Vec<String> = if args.is_empty() {
        std::io::read_to_string(std::io::stdin())
            .context("cannot read stdin")?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        args.to_vec()
    };
    lines
        .iter()
        .flat_map(|l| crate::cli::validate::relationship_lines(l))
        .map(relationship)
        .collect()
}
