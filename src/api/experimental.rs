//! `ExperimentalService`: the older names of bulk import, export and check and of the schema
//! RPCs, which the official clients still call, and the relationship counters.
//!
//! SpiceDB serves the older RPCs with the same logic as their stable names, and their messages
//! copy the stable ones field for field (`BulkCheckPermissionPair` ↔ `CheckBulkPermissionsPair`,
//! `ExpDefinition` ↔ `ReflectionDefinition`, ...). So each is served here by re-reading its
//! request as the stable message, calling the stable handler, and re-reading the answer back:
//! every rule is written once, in the stable service.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::error::ApiError;
use super::permissions::{ResponseStream, export_bulk, import_bulk};
use super::proto::authzed::api::v1 as pb;
use super::{Api, PermissionsApi, SchemaApi};
use pb::permissions_service_server::PermissionsService as _;
use pb::schema_service_server::SchemaService as _;

/// Most relationships one page of BulkExportRelationships may ask for, and its page size when
/// it asks for none: the experimental RPC's own limit in SpiceDB, not the stable one's flag.
const EXPERIMENTAL_EXPORT_MAX_LIMIT: u32 = 100_000;

/// The tonic `ExperimentalService`.
#[derive(Debug, Clone)]
pub struct ExperimentalApi(pub Arc<Api>);

impl ExperimentalApi {
    /// Wraps it for tonic's router.
    pub fn into_server(
        self,
    ) -> pb::experimental_service_server::ExperimentalServiceServer<ExperimentalApi> {
        pb::experimental_service_server::ExperimentalServiceServer::new(self)
    }
}

/// Re-reads message `a` as `B`, a message with the same fields under other names. Both come
/// from the same .proto file, so a failure is a broken build, reported as an internal error.
fn transcode<A: prost::Message, B: prost::Message + Default>(a: &A) -> Result<B, ApiError> {
    B::decode(a.encode_to_vec().as_slice()).map_err(|e| {
        let why = format!("experimental message does not match its stable twin: {e}");
        tracing::error!("{why}");
        ApiError::Internal(why)
    })
}

/// `request` with its message re-read as `B`, its metadata (the deadline, the key) kept.
fn transcode_request<A: prost::Message, B: prost::Message + Default>(
    request: Request<A>,
) -> Result<Request<B>, ApiError> {
    let (metadata, extensions, message) = request.into_parts();
    Ok(Request::from_parts(
        metadata,
        extensions,
        transcode(&message)?,
    ))
}

/// A stable handler's response re-read as the experimental message `B`.
fn transcode_response<A: prost::Message, B: prost::Message + Default>(
    response: Result<Response<A>, Status>,
) -> Result<Response<B>, Status> {
    let response = response?;
    Ok(Response::new(transcode(response.get_ref())?))
}

#[tonic::async_trait]
impl pb::experimental_service_server::ExperimentalService for ExperimentalApi {
    type BulkExportRelationshipsStream = ResponseStream<pb::BulkExportRelationshipsResponse>;

    async fn bulk_import_relationships(
        &self,
        request: Request<Streaming<pb::BulkImportRelationshipsRequest>>,
    ) -> Result<Response<pb::BulkImportRelationshipsResponse>, Status> {
        let stream = request.into_inner().map(|m| m.map(|m| m.relationships));
        let loaded = import_bulk(Arc::clone(&self.0), stream).await?;
        Ok(Response::new(pb::BulkImportRelationshipsResponse {
            num_loaded: loaded.num_loaded,
        }))
    }

    async fn bulk_export_relationships(
        &self,
        request: Request<pb::BulkExportRelationshipsRequest>,
    ) -> Result<Response<Self::BulkExportRelationshipsStream>, Status> {
        let req = transcode(request.get_ref())?;
        let pages = export_bulk(Arc::clone(&self.0), req, EXPERIMENTAL_EXPORT_MAX_LIMIT).await?;
        let pages = pages.map(|page| Ok(transcode(&page?)?));
        Ok(Response::new(Box::pin(pages)))
    }

    async fn bulk_check_permission(
        &self,
        request: Request<pb::BulkCheckPermissionRequest>,
    ) -> Result<Response<pb::BulkCheckPermissionResponse>, Status> {
        let stable = PermissionsApi(Arc::clone(&self.0));
        transcode_response(
            stable
                .check_bulk_permissions(transcode_request(request)?)
                .await,
        )
    }

    async fn experimental_reflect_schema(
        &self,
        request: Request<pb::ExperimentalReflectSchemaRequest>,
    ) -> Result<Response<pb::ExperimentalReflectSchemaResponse>, Status> {
        let stable = SchemaApi(Arc::clone(&self.0));
        transcode_response(stable.reflect_schema(transcode_request(request)?).await)
    }

    async fn experimental_computable_permissions(
        &self,
        request: Request<pb::ExperimentalComputablePermissionsRequest>,
    ) -> Result<Response<pb::ExperimentalComputablePermissionsResponse>, Status> {
        let stable = SchemaApi(Arc::clone(&self.0));
        transcode_response(
            stable
                .computable_permissions(transcode_request(request)?)
                .await,
        )
    }

    async fn experimental_dependent_relations(
        &self,
        request: Request<pb::ExperimentalDependentRelationsRequest>,
    ) -> Result<Response<pb::ExperimentalDependentRelationsResponse>, Status> {
        let stable = SchemaApi(Arc::clone(&self.0));
        transcode_response(
            stable
                .dependent_relations(transcode_request(request)?)
                .await,
        )
    }

    async fn experimental_diff_schema(
        &self,
        request: Request<pb::ExperimentalDiffSchemaRequest>,
    ) -> Result<Response<pb::ExperimentalDiffSchemaResponse>, Status> {
        let stable = SchemaApi(Arc::clone(&self.0));
        transcode_response(stable.diff_schema(transcode_request(request)?).await)
    }

    async fn experimental_register_relationship_counter(
        &self,
        _request: Request<pb::ExperimentalRegisterRelationshipCounterRequest>,
    ) -> Result<Response<pb::ExperimentalRegisterRelationshipCounterResponse>, Status> {
        Err(ApiError::Unimplemented("relationship counters are not implemented yet".into()).into())
    }

    async fn experimental_count_relationships(
        &self,
        _request: Request<pb::ExperimentalCountRelationshipsRequest>,
    ) -> Result<Response<pb::ExperimentalCountRelationshipsResponse>, Status> {
        Err(ApiError::Unimplemented("relationship counters are not implemented yet".into()).into())
    }

    async fn experimental_unregister_relationship_counter(
        &self,
        _request: Request<pb::ExperimentalUnregisterRelationshipCounterRequest>,
    ) -> Result<Response<pb::ExperimentalUnregisterRelationshipCounterResponse>, Status> {
        Err(ApiError::Unimplemented("relationship counters are not implemented yet".into()).into())
    }
}
