//! `pemba.admin.v1.BackupService`: online datastore checkpoints in the operator's backup dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::error::ApiError;
use super::proto::pemba::admin::v1 as pb;
use super::{Api, blocking, convert};

/// The longest backup name accepted.
const MAX_NAME_LEN: usize = 128;

/// The tonic `BackupService`: writes checkpoints into `root` only.
#[derive(Debug, Clone)]
pub struct BackupApi {
    /// the shared state
    pub api: Arc<Api>,
    /// the operator-chosen directory every backup goes under
    pub root: PathBuf,
}

impl BackupApi {
    /// Wraps it for tonic's router.
    pub fn into_server(self) -> pb::backup_service_server::BackupServiceServer<BackupApi> {
        pb::backup_service_server::BackupServiceServer::new(self)
    }
}

/// Is `name` one plain path component: `[A-Za-z0-9._-]{1,128}`, not `.` or `..`?
pub fn valid_backup_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn create(api: &Api, root: &Path, name: &str) -> Result<pb::CreateBackupResponse, ApiError> {
    std::fs::create_dir_all(root).map_err(|e| {
        ApiError::Internal(format!(
            "cannot create the backup directory `{}`: {e}",
            root.display()
        ))
    })?;
    let target = root.join(name);
    let rev = api.store.checkpoint(&target)?;
    tracing::info!(path = %target.display(), revision = %rev, "backup written");
    Ok(pb::CreateBackupResponse {
        path: target.display().to_string(),
        backup_revision: Some(convert::zed_token_out(rev, api.store.unique_id())),
    })
}

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for BackupApi {
    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<pb::CreateBackupResponse>, Status> {
        let name = request.into_inner().name;
        if !valid_backup_name(&name) {
            return Err(ApiError::field(
                "name",
                "must be one path component of 1 to 128 characters from [A-Za-z0-9._-], \
                 not `.` or `..`",
            )
            .into());
        }
        let api = Arc::clone(&self.api);
        let root = self.root.clone();
        let out = blocking(move || create(&api, &root, &name)).await?;
        Ok(Response::new(out))
    }
}

#[cfg(test)]
mod tests {
    use super::valid_backup_name;

    #[test]
    fn backup_names_are_one_plain_component() {
        for ok in ["a", "nightly-2026.12.05_1", &"x".repeat(128)] {
            assert!(valid_backup_name(ok), "{ok:?} refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/abs",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!valid_backup_name(bad), "{bad:?} accepted");
        }
    }
}
