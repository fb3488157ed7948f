//! The store over the protocol, as a job sees it: a coordinator (protocol v2) that keeps the
//! job's workspace, its project's caches, its artifacts and test results, so that a job on
//! another agent attaches the workspace and restores the caches.
//!
//! The [`LocalStore`] stays the agent's cache in front of it: a blob is uploaded from, and
//! downloaded into, the local store, and a blob already there is not downloaded again.
//! [`Remote`] is the door to the coordinator (the agent implements it over HTTP); what a
//! step does with it is in `job::builtin`.

use super::{BlobId, CacheEntry, Layer, LocalStore, StoreError};
use crate::protocol::WireTestResults;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// 403: e.g. a forked pull request's job saving a cache, or a lease that lapsed.
    #[error("the coordinator refused: {0}")]
    Refused(String),
    /// 413: the project's quota.
    #[error("the coordinator refused: {0}")]
    Quota(String),
    /// The bytes do not hash to the blob's name (the coordinator's 422, or a download).
    #[error("{0}")]
    Corrupt(String),
    #[error("the coordinator has no {0}")]
    NotFound(String),
    /// Connection errors, timeouts, 5xx, after the retries.
    #[error("the coordinator could not be reached: {0}")]
    Transport(String),
    /// An answer this agent does not understand.
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    #[error(transparent)]
    Local(#[from] StoreError),
}

/// What an upload sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uploaded {
    /// Bytes sent in this call (less than the size when the coordinator had part already).
    pub sent: u64,
    /// The coordinator had the whole blob for this project already.
    pub already: bool,
}

/// A coordinator's store, bound to one job (which names its project and workspace).
#[async_trait::async_trait]
pub trait Remote: Send + Sync {
    /// `false` for a build of a pull request from a fork: caches are read, never written.
    fn cache_writes(&self) -> bool;
    /// Send the blob `blob` (`size` bytes, the file at `file`), resuming from what the
    /// coordinator holds; it checks the SHA-256.
    async fn upload(&self, file: &Path, blob: &BlobId, size: u64) -> Result<Uploaded, RemoteError>;
    /// Fetch the blob into `part`, continuing from its length (a `Range` request).
    async fn download(&self, blob: &BlobId, size: u64, part: &Path) -> Result<(), RemoteError>;
    async fn add_layer(&self, blob: &BlobId, size: u64) -> Result<(), RemoteError>;
    /// The job's workspace, oldest layer first.
    async fn layers(&self) -> Result<Vec<Layer>, RemoteError>;
    /// The project's newest cache whose key starts with `prefix`.
    async fn find_cache(&self, prefix: &str) -> Result<Option<CacheEntry>, RemoteError>;
    /// `false`: the key exists already.
    async fn save_cache(&self, key: &str, blob: &BlobId, size: u64) -> Result<bool, RemoteError>;
    async fn add_artifact(&self, path: &str, blob: &BlobId, size: u64) -> Result<(), RemoteError>;
    async fn test_results(&self, results: &WireTestResults) -> Result<(), RemoteError>;
}

/// The SHA-256 and size of the file at `path`, read in pieces.
pub fn hash_file(path: &Path) -> Result<(BlobId, u64), StoreError> {
    let mut f = std::fs::File::open(path).map_err(super::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(super::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((BlobId(super::hex(&h.finalize())), size))
}

impl LocalStore {
    /// Where a download of `blob` gathers until it is whole (kept across retries).
    fn download_part(&self, blob: &BlobId) -> PathBuf {
        self.root.join("tmp").join(format!("{}.download", blob.0))
    }

    /// Make sure the local store holds `blob`, downloading it from `remote` when it does not
    /// (the local store is the cache). Returns whether it was downloaded.
    pub async fn fetch_blob(
        &self,
        remote: &dyn Remote,
        blob: &BlobId,
        size: u64,
    ) -> Result<bool, RemoteError> {
        if !super::is_blob_name(&blob.0) {
            return Err(RemoteError::Protocol(format!(
                "`{}` is not a blob name",
                blob.0.chars().take(80).collect::<String>()
            )));
        }
        let dest = self.blob_path(blob);
        if dest.exists() {
            return Ok(false);
        }
        let part = self.download_part(blob);
        remote.download(blob, size, &part).await?;
        let check = part.clone();
        let (got, got_size) = tokio::task::spawn_blocking(move || hash_file(&check))
            .await
            .map_err(|e| RemoteError::Protocol(format!("the hashing task failed: {e}")))??;
        if got != *blob || got_size != size {
            let _ = std::fs::remove_file(&part);
            return Err(RemoteError::Corrupt(format!(
                "the downloaded blob {} hashes to {} ({got_size} bytes, {size} expected): \
                 discarded",
                blob.0, got.0
            )));
        }
        std::fs::rename(&part, &dest).map_err(super::io(&dest))?;
        Ok(true)
    }
}
