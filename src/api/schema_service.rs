//! `SchemaService`: write, read, reflect and diff the schema, and ask what reaches what.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, now};
use super::error::ApiError;
use super::proto::authzed::api::v1 as pb;
use super::{Api, blocking, query, reflect};
use crate::consistency::choose_revision;
use crate::schema::{self, diff, reachability};

/// The tonic `SchemaService`.
#[derive(Debug, Clone)]
pub struct SchemaApi(pub Arc<Api>);

impl SchemaApi {
    /// Wraps it for tonic's router.
    pub fn into_server(self) -> pb::schema_service_server::SchemaServiceServer<SchemaApi> {
        pb::schema_service_server::SchemaServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::schema_service_server::SchemaService for SchemaApi {
    async fn read_schema(
        &self,
        _request: Request<pb::ReadSchemaRequest>,
    ) -> Result<Response<pb::ReadSchemaResponse>, Status> {
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            let head = api.store.head_revision()?;
            let stored = api.store.read_schema(head)?.ok_or_else(|| {
                ApiError::NotFound(
                    "No schema has been defined; please call WriteSchema to start".into(),
                )
            })?;
            Ok(pb::ReadSchemaResponse {
                schema_text: stored.text,
                read_at: Some(convert::zed_token_out(head, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn write_schema(
        &self,
        request: Request<pb::WriteSchemaRequest>,
    ) -> Result<Response<pb::WriteSchemaResponse>, Status> {
        let text = request.into_inner().schema;
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            if text.len() > api.limits.max_schema_bytes {
                return Err(ApiError::field(
                    "schema",
                    format!(
                        "value length must be at most {} bytes",
                        api.limits.max_schema_bytes
                    ),
                ));
            }
            let compiled = schema::compile(&text)?;
            let _gate = api.lock_writes()?;
            let head = api.store.head_revision()?;
            let old = api.schema_at(head)?;
            if let Some(why) = schema::incompatible_caveat_changes(&old, &compiled).into_iter().next() {
                return Err(ApiError::invalid(
                    super::error::Reason::SchemaTypeError,
                    why,
                    super::error::Metadata::new(),
                ));
            }
            let checks = schema::orphan_checks(&old, &compiled);
            let rev = api.store.write_schema(&text, &checks, now())?;
            tracing::info!(revision = %rev, definitions = compiled.definitions.len(), "schema written");
            Ok(pb::WriteSchemaResponse {
                written_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn reflect_schema(
        &self,
        request: Request<pb::ReflectSchemaRequest>,
    ) -> Result<Response<pb::ReflectSchemaResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            let requirement = convert::consistency(req.consistency.as_ref())?;
            let rev = choose_revision(
                api.store.as_ref(),
                &requirement,
                api.limits.mismatched_tokens,
            )?;
            if api.store.read_schema(rev)?.is_none() {
                return Err(ApiError::NotFound(
                    "No schema has been defined; please call WriteSchema to start".into(),
                ));
            }
            let compiled = api.schema_at(rev)?;
            let (definitions, caveats) = reflect::reflect(&compiled, &req.optional_filters);
            Ok(pb::ReflectSchemaResponse {
                definitions,
                caveats,
                read_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn computable_permissions(
        &self,
        request: Request<pb::ComputablePermissionsRequest>,
    ) -> Result<Response<pb::ComputablePermissionsResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            let (rev, compiled) = query::snapshot_parts(&api, req.consistency.as_ref())?;
            let relation = Some(req.relation_name.as_str()).filter(|r| !r.is_empty());
            let found = reachability::computable_permissions(
                &compiled,
                &req.definition_name,
                relation,
                &req.optional_definition_name_filter,
            )?;
            Ok(pb::ComputablePermissionsResponse {
                permissions: reflect::relation_references_out(found),
                read_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn dependent_relations(
        &self,
        request: Request<pb::DependentRelationsRequest>,
    ) -> Result<Response<pb::DependentRelationsResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            let (rev, compiled) = query::snapshot_parts(&api, req.consistency.as_ref())?;
            let found = reachability::dependent_relations(
                &compiled,
                &req.definition_name,
                &req.permission_name,
            )?;
            Ok(pb::DependentRelationsResponse {
                relations: reflect::relation_references_out(found),
                read_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }

    async fn diff_schema(
        &self,
        request: Request<pb::DiffSchemaRequest>,
    ) -> Result<Response<pb::DiffSchemaResponse>, Status> {
        let req = request.into_inner();
        let api = Arc::clone(&self.0);
        let out = blocking(move || {
            let (rev, existing) = query::snapshot_parts(&api, req.consistency.as_ref())?;
            // As SpiceDB: the comparison is compiled, not type checked.
            let comparison = schema::compile_without_type_checks(&req.comparison_schema)?;
            let changes = diff::diff_schemas(&existing, &comparison);
            Ok(pb::DiffSchemaResponse {
                diffs: reflect::schema_diff_out(&changes, &existing, &comparison)?,
                read_at: Some(convert::zed_token_out(rev, api.store.unique_id())),
            })
        })
        .await?;
        Ok(Response::new(out))
    }
}
