//! The query RPCs: Check, CheckBulk, Expand, LookupResources and LookupSubjects.
//!
//! Each is validated, run by the engine at the chosen revision, and turned back into proto
//! messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::convert::{self, now};
use super::error::{ApiError, ApiResult, Metadata, Reason};
use super::proto::authzed::api::v1 as pb;
use super::{Api, validate};
use crate::consistency::{self, Cursor, choose_revision};
use crate::engine::{
    CheckRequest, CheckResult, CheckTrace, ExpandTree, Permissionship, ResolvedSubject,
    ResourceLookup, SetOperation, Snapshot,
};
use crate::model::{Revision, SubjectRef};
use crate::schema::CompiledSchema;

/// How long a query may run and whether its caller is still there.
#[derive(Debug, Default, Clone)]
pub struct Control {
    /// stop once this instant has passed (the request's `grpc-timeout`, capped by the
    /// server's maximum request duration)
    pub deadline: Option<Instant>,
    /// set when the client goes away
    pub cancelled: Arc<AtomicBool>,
}

impl Control {
    /// The deadline of a request: its `grpc-timeout`, but at most `max` from now.
    pub fn for_request(metadata: &tonic::metadata::MetadataMap, max: Duration) -> Control {
        let asked = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(max, |d| d.min(max));
        Control {
            deadline: Instant::now().checked_add(asked),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A guard that marks the query cancelled when dropped before [`CancelGuard::finish`]:
    /// tonic drops the handler's future when the client cancels or disconnects.
    pub fn guard(&self) -> CancelGuard {
        CancelGuard(Some(Arc::clone(&self.cancelled)))
    }

    fn apply<'a>(&'a self, snap: Snapshot<'a>) -> Snapshot<'a> {
        let snap = snap.with_cancel_flag(&self.cancelled);
        match self.deadline {
            Some(d) => snap.with_deadline(d),
            None => snap,
        }
    }
}

/// Sets the cancel flag when dropped, unless finished.
#[derive(Debug)]
pub struct CancelGuard(Option<Arc<AtomicBool>>);

impl CancelGuard {
    /// The query finished: dropping the guard no longer cancels anything.
    pub fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Parses gRPC's `grpc-timeout` header: an integer of at most 8 digits and a unit.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The revision a query (or a schema question) reads at, and the schema there (empty if none
/// was written).
pub(super) fn snapshot_parts(
    api: &Api,
    consistency_req: Option<&pb::Consistency>,
) -> ApiResult<(Revision, Arc<CompiledSchema>)> {
    let requirement = convert::consistency(consistency_req)?;
    let rev = choose_revision(
        api.store.as_ref(),
        &requirement,
        api.limits.mismatched_tokens,
    )?;
    Ok((rev, api.schema_at(rev)?))
}

fn no_wildcard_subject(s: &SubjectRef) -> ApiResult<()> {
    if s.is_wildcard() {
        return Err(ApiError::invalid(
            Reason::WildcardNotAllowed,
            "wildcard subjects are not allowed in checks",
            Metadata::new(),
        ));
    }
    Ok(())
}

fn permissionship_out(p: Permissionship) -> i32 {
    use pb::check_permission_response::Permissionship as P;
    match p {
        Permissionship::NoPermission => P::NoPermission as i32,
        Permissionship::HasPermission => P::HasPermission as i32,
        Permissionship::ConditionalPermission => P::ConditionalPermission as i32,
    }
}

fn lookup_permissionship_out(p: Permissionship) -> i32 {
    match p {
        Permissionship::ConditionalPermission => {
            pb::LookupPermissionship::ConditionalPermission as i32
        }
        Permissionship::HasPermission | Permissionship::NoPermission => {
            pb::LookupPermissionship::HasPermission as i32
        }
    }
}

fn partial_caveat(missing: &[String]) -> Option<pb::PartialCaveatInfo> {
    (!missing.is_empty()).then(|| pb::PartialCaveatInfo {
        missing_required_context: missing.to_vec(),
    })
}

fn trace_out(t: &CheckTrace) -> pb::CheckDebugTrace {
    use pb::check_debug_trace::{PermissionType, Permissionship as TP, Resolution, SubProblems};
    pb::CheckDebugTrace {
        resource: Some(convert::object_out(&t.resource)),
        permission: t.permission.clone(),
        permission_type: match t.permission_type {
            crate::engine::PermissionType::Permission => PermissionType::Permission as i32,
            crate::engine::PermissionType::Relation => PermissionType::Relation as i32,
        },
        subject: Some(convert::subject_out(&t.subject)),
        result: match t.result {
            Permissionship::NoPermission => TP::NoPermission as i32,
            Permissionship::HasPermission => TP::HasPermission as i32,
            Permissionship::ConditionalPermission => TP::ConditionalPermission as i32,
        },
        caveat_evaluation_info: None,
        duration: prost_types::Duration::try_from(t.duration).ok(),
        resolution: Some(if t.cached {
            Resolution::WasCachedResult(true)
        } else {
            Resolution::SubProblems(SubProblems {
                traces: t.children.iter().map(trace_out).collect(),
            })
        }),
        optional_expires_at: None,
        trace_operation_id: String::new(),
        source: "pemba".into(),
    }
}

fn check_request(
    api: &Api,
    resource: Option<&pb::ObjectReference>,
    permission: &str,
    subject: Option<&pb::SubjectReference>,
    context: Option<&prost_types::Struct>,
    with_tracing: bool,
) -> ApiResult<CheckRequest> {
    let resource = convert::resource_ref(resource, "resource")?;
    let permission = convert::relation_name(permission, "permission")?;
    let subject = convert::subject_ref(subject, "subject")?;
    no_wildcard_subject(&subject)?;
    let context =
        convert::request_context(context, "context", api.limits.max_caveat_context_bytes)?;
    Ok(CheckRequest {
        resource,
        permission,
        subject,
        context,
        with_tracing,
    })
}

fn debug_info(result: &CheckResult, schema: &CompiledSchema) -> Option<pb::DebugInformation> {
    result.trace.as_ref().map(|t| pb::DebugInformation {
        check: Some(trace_out(t)),
        schema_used: schema.source.clone(),
    })
}

/// CheckPermission.
pub fn check(
    api: &Api,
    req: pb::CheckPermissionRequest,
    control: &Control,
) -> ApiResult<pb::CheckPermissionResponse> {
    let creq = check_request(
        api,
        req.resource.as_ref(),
        &req.permission,
        req.subject.as_ref(),
        req.context.as_ref(),
        req.with_tracing,
    )?;
    let (rev, schema) = snapshot_parts(api, req.consistency.as_ref())?;
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &schema, rev, now()));
    let result = api.engine.check(&snap, &creq)?;
    Ok(pb::CheckPermissionResponse {
        checked_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
        permissionship: permissionship_out(result.permissionship),
        partial_caveat_info: partial_caveat(&result.missing_context),
        debug_trace: debug_info(&result, &schema),
        optional_expires_at: result.expires_at.map(convert::timestamp_out),
    })
}

/// CheckBulkPermissions: answers in request order, an error in one item fails only that item.
pub fn check_bulk(
    api: &Api,
    req: pb::CheckBulkPermissionsRequest,
    control: &Control,
) -> ApiResult<pb::CheckBulkPermissionsResponse> {
    if req.items.len() > api.limits.max_bulk_checks {
        return Err(ApiError::invalid(
            Reason::TooManyChecksInRequest,
            format!(
                "check count of {} is greater than maximum allowed of {}",
                req.items.len(),
                api.limits.max_bulk_checks
            ),
            Metadata::new(),
        ));
    }
    let (rev, schema) = snapshot_parts(api, req.consistency.as_ref())?;
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &schema, rev, now()));
    let parsed: Vec<ApiResult<CheckRequest>> = req
        .items
        .iter()
        .map(|i| {
            check_request(
                api,
                i.resource.as_ref(),
                &i.permission,
                i.subject.as_ref(),
                i.context.as_ref(),
                req.with_tracing,
            )
        })
        .collect();
    let valid: Vec<CheckRequest> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut answers = api.engine.check_bulk(&snap, &valid).into_iter();
    let pairs = req
        .items
        .into_iter()
        .zip(parsed)
        .map(|(item, p)| {
            let outcome = match p {
                Err(e) => Err(e),
                Ok(_) => answers
                    .next()
                    // the engine answers every request it is given: a missing answer is a bug
                    .unwrap_or_else(|| {
                        Err(crate::engine::EngineError::internal(
                            "CheckBulk returned fewer answers than requests",
                        ))
                    })
                    .map_err(ApiError::from),
            };
            let response = match outcome {
                Ok(r) => pb::check_bulk_permissions_pair::Response::Item(
                    pb::CheckBulkPermissionsResponseItem {
                        permissionship: permissionship_out(r.permissionship),
                        partial_caveat_info: partial_caveat(&r.missing_context),
                        debug_trace: debug_info(&r, &schema),
                    },
                ),
                Err(e) => {
                    let status: tonic::Status = e.into();
                    pb::check_bulk_permissions_pair::Response::Error(rpc_status(&status))
                }
            };
            pb::CheckBulkPermissionsPair {
                request: Some(item),
                response: Some(response),
            }
        })
        .collect();
    Ok(pb::CheckBulkPermissionsResponse {
        checked_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
        pairs,
    })
}

/// A `google.rpc.Status` with the same code, message and details as `s`.
fn rpc_status(s: &tonic::Status) -> tonic_types::pb::Status {
    use prost::Message as _;
    let details = tonic_types::pb::Status::decode(s.details())
        .map(|d| d.details)
        .unwrap_or_default();
    tonic_types::pb::Status {
        code: s.code() as i32,
        message: s.message().to_string(),
        details,
    }
}

fn expand_out(t: &ExpandTree) -> pb::PermissionRelationshipTree {
    use pb::permission_relationship_tree::TreeType;
    match t {
        ExpandTree::Intermediate {
            operation,
            children,
            object,
            relation,
            ..
        } => pb::PermissionRelationshipTree {
            tree_type: Some(TreeType::Intermediate(pb::AlgebraicSubjectSet {
                operation: match operation {
                    SetOperation::Union => pb::algebraic_subject_set::Operation::Union as i32,
                    SetOperation::Intersection => {
                        pb::algebraic_subject_set::Operation::Intersection as i32
                    }
                    SetOperation::Exclusion => {
                        pb::algebraic_subject_set::Operation::Exclusion as i32
                    }
                },
                children: children.iter().map(expand_out).collect(),
            })),
            expanded_object: Some(convert::object_out(object)),
            expanded_relation: relation.clone(),
        },
        ExpandTree::Leaf {
            object,
            relation,
            subjects,
            ..
        } => pb::PermissionRelationshipTree {
            tree_type: Some(TreeType::Leaf(pb::DirectSubjectSet {
                subjects: subjects.iter().map(convert::subject_out).collect(),
            })),
            expanded_object: Some(convert::object_out(object)),
            expanded_relation: relation.clone(),
        },
    }
}

/// ExpandPermissionTree.
pub fn expand(
    api: &Api,
    req: pb::ExpandPermissionTreeRequest,
    control: &Control,
) -> ApiResult<pb::ExpandPermissionTreeResponse> {
    let resource = convert::resource_ref(req.resource.as_ref(), "resource")?;
    let permission = convert::relation_name(&req.permission, "permission")?;
    let (rev, schema) = snapshot_parts(api, req.consistency.as_ref())?;
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &schema, rev, now()));
    let tree = api.engine.expand(&snap, &resource, &permission)?;
    Ok(pb::ExpandPermissionTreeResponse {
        expanded_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
        tree_root: Some(expand_out(&tree)),
    })
}

/// A LookupResources answer ready to be streamed: the walk, where the page starts in it, how
/// many results it may have, and what its cursors are bound to.
pub struct LookupStart {
    /// the walk's candidates (at the page's revision)
    pub lookup: Arc<ResourceLookup>,
    /// the schema at that revision
    pub schema: Arc<CompiledSchema>,
    /// the position of the first candidate after the request's cursor
    pub from: usize,
    /// how many results the page may have (`usize::MAX`: no limit)
    pub limit: usize,
    /// the request's hash, which its cursors carry
    pub hash: u64,
}

/// LookupResources, first half: validates the request, picks the revision (the cursor's, if
/// it has one) and walks from the subject, or takes up the walk kept for the cursor.
pub fn start_lookup_resources(
    api: &Api,
    req: pb::LookupResourcesRequest,
    control: &Control,
) -> ApiResult<LookupStart> {
    let resource_type = convert::type_name(&req.resource_object_type, "resource_object_type")?;
    let permission = convert::relation_name(&req.permission, "permission")?;
    let subject = convert::subject_ref(req.subject.as_ref(), "subject")?;
    let context = convert::request_context(
        req.context.as_ref(),
        "context",
        api.limits.max_caveat_context_bytes,
    )?;
    validate::limit(
        req.optional_limit,
        api.limits.max_lookup_limit,
        "looking up resources",
    )?;
    let hash = consistency::hash_request(&[
        b"lr",
        resource_type.as_bytes(),
        permission.as_bytes(),
        subject.to_string().as_bytes(),
        serde_json::Value::Object(context.clone())
            .to_string()
            .as_bytes(),
    ]);
    let (rev, after) = match convert::cursor_token(req.optional_cursor.as_ref(), "optional_cursor")?
    {
        Some(token) => {
            let c = consistency::decode_cursor(&token, api.store.unique_id(), hash)?;
            consistency::reach(api.store.as_ref(), c.revision)?;
            let after = String::from_utf8(c.position).map_err(|_| {
                ApiError::Consistency(consistency::ConsistencyError::InvalidCursor(
                    "bad position".into(),
                ))
            })?;
            (c.revision, Some(after))
        }
        None => {
            let requirement = convert::consistency(req.consistency.as_ref())?;
            (
                choose_revision(
                    api.store.as_ref(),
                    &requirement,
                    api.limits.mismatched_tokens,
                )?,
                None,
            )
        }
    };
    let schema = api.schema_at(rev)?;
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &schema, rev, now()));
    let lookup = api.engine.start_lookup_resources(
        &snap,
        &resource_type,
        &permission,
        &subject,
        &context,
        after.is_some(),
    )?;
    let from = lookup.position_after(after.as_deref());
    let limit = if req.optional_limit == 0 {
        usize::MAX
    } else {
        req.optional_limit as usize
    };
    Ok(LookupStart {
        lookup,
        schema,
        from,
        limit,
        hash,
    })
}

/// How many LookupResources results are resolved and streamed at a time.
const LOOKUP_BATCH: usize = 1000;

/// LookupResources, second half, one batch: resolves candidates from position `from` until
/// a batch of results is found (or the candidates end) and returns at most `remaining`
/// responses, each with the cursor that resumes after it, and the position to go on from.
/// When the batch completes the page's limit with candidates left, the walk is kept for the
/// cursor before the responses go out.
pub fn lookup_resources_batch(
    api: &Api,
    start: &LookupStart,
    from: usize,
    remaining: usize,
    control: &Control,
) -> ApiResult<(Vec<pb::LookupResourcesResponse>, usize)> {
    let rev = start.lookup.revision();
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &start.schema, rev, now()));
    let want = remaining.min(LOOKUP_BATCH);
    let (mut results, next) =
        api.engine
            .resolve_lookup_resources(&snap, &start.lookup, from, want)?;
    let cut = results.len() > remaining;
    results.truncate(remaining);
    if results.len() == remaining && (cut || next < start.lookup.len()) {
        api.engine.keep_lookup(Arc::clone(&start.lookup));
    }
    let token = convert::zed_token_out(rev, api.store.unique_id());
    let responses = results
        .into_iter()
        .map(|r| {
            let cursor = consistency::encode_cursor(
                &Cursor {
                    revision: rev,
                    position: r.resource_id.clone().into_bytes(),
                },
                api.store.unique_id(),
                start.hash,
            );
            pb::LookupResourcesResponse {
                looked_up_at: Some(token.clone()),
                permissionship: lookup_permissionship_out(r.permissionship),
                partial_caveat_info: partial_caveat(&r.missing_context),
                resource_object_id: r.resource_id,
                after_result_cursor: Some(pb::Cursor { token: cursor }),
            }
        })
        .collect();
    Ok((responses, next))
}

/// A LookupSubjects answer: the subjects found, sorted by id (without the wildcard if the
/// request excluded it), and the token of the revision they were found at.
pub struct LookupSubjectsAnswer {
    /// the subjects
    pub subjects: Vec<ResolvedSubject>,
    /// `looked_up_at`
    pub token: pb::ZedToken,
}

/// LookupSubjects: every subject of the type with the permission on the resource; a wildcard
/// result carries the subjects it excludes. As in SpiceDB, the whole answer is found before
/// it is sent (an exclusion or an intersection further down can remove any subject), and the
/// request has no limit or cursor.
pub fn lookup_subjects(
    api: &Api,
    req: pb::LookupSubjectsRequest,
    control: &Control,
) -> ApiResult<LookupSubjectsAnswer> {
    let resource = convert::resource_ref(req.resource.as_ref(), "resource")?;
    let permission = convert::relation_name(&req.permission, "permission")?;
    let subject_type = convert::type_name(&req.subject_object_type, "subject_object_type")?;
    let subject_relation =
        convert::optional_relation(&req.optional_subject_relation, "optional_subject_relation")?;
    let context = convert::request_context(
        req.context.as_ref(),
        "context",
        api.limits.max_caveat_context_bytes,
    )?;
    if req.optional_concrete_limit != 0 {
        return Err(ApiError::Unimplemented(
            "concrete limit is not yet supported".into(),
        ));
    }
    let include_wildcards =
        req.wildcard_option != pb::lookup_subjects_request::WildcardOption::ExcludeWildcards as i32;
    let (rev, schema) = snapshot_parts(api, req.consistency.as_ref())?;
    let snap = control.apply(Snapshot::new(api.store.as_ref(), &schema, rev, now()));
    let mut subjects = api.engine.lookup_subjects(
        &snap,
        &resource,
        &permission,
        &subject_type,
        subject_relation.as_deref(),
        &context,
    )?;
    if !include_wildcards {
        subjects.retain(|s| s.subject_id != "*");
    }
    Ok(LookupSubjectsAnswer {
        subjects,
        token: convert::zed_token_out(rev, api.store.unique_id()),
    })
}

/// One LookupSubjects response. The deprecated fields are filled too, because older clients
/// read them.
#[allow(
    deprecated,
    reason = "older clients read the deprecated LookupSubjectsResponse fields"
)]
pub fn lookup_subjects_response(
    token: &pb::ZedToken,
    s: &ResolvedSubject,
) -> pb::LookupSubjectsResponse {
    let resolved = |r: &ResolvedSubject| pb::ResolvedSubject {
        subject_object_id: r.subject_id.clone(),
        permissionship: lookup_permissionship_out(r.permissionship),
        partial_caveat_info: partial_caveat(&r.missing_context),
    };
    let excluded: Vec<pb::ResolvedSubject> = s.excluded_subjects.iter().map(resolved).collect();
    pb::LookupSubjectsResponse {
        looked_up_at: Some(token.clone()),
        subject_object_id: s.subject_id.clone(),
        excluded_subject_ids: excluded
            .iter()
            .map(|e| e.subject_object_id.clone())
            .collect(),
        permissionship: lookup_permissionship_out(s.permissionship),
        partial_caveat_info: partial_caveat(&s.missing_context),
        subject: Some(resolved(s)),
        excluded_subjects: excluded,
        after_result_cursor: None,
    }
}

#[cfg(test)]
mod tests {
    use super::{Control, parse_grpc_timeout};
    use std::time::{Duration, Instant};

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn every_query_gets_a_deadline_capped_by_the_server() {
        let max = Duration::from_secs(30);
        let before = Instant::now();
        let none = Control::for_request(&tonic::metadata::MetadataMap::new(), max);
        let d = none.deadline.unwrap();
        assert!(d >= before + max && d <= Instant::now() + max);

        let mut md = tonic::metadata::MetadataMap::new();
        md.insert("grpc-timeout", "2S".parse().unwrap());
        let short = Control::for_request(&md, max).deadline.unwrap();
        assert!(short <= Instant::now() + Duration::from_secs(2));

        md.insert("grpc-timeout", "5H".parse().unwrap());
        let long = Control::for_request(&md, max).deadline.unwrap();
        assert!(long <= Instant::now() + max);
    }
}
