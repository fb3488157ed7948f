//! The blobs index as a trait: which project holds which blob (within its quota) and what
//! names them (workspace layers, caches, artifacts, test results), in types that say nothing
//! of the database. The bytes themselves are not the store's: they are files kept by the
//! coordinator's blob module, which calls this trait once a blob is whole and checked.
//! Implemented once for SQLite and PostgreSQL, in `blobs.rs`.
//!
//! Everything an agent reaches goes through a [`JobScope`], made only for the agent that
//! holds the job's lease ([`BlobIndex::job_scope`]).

use super::blobs::{JobResults, JobScope, OverQuota};
use super::{Lease, Result};
use bosun_protocol::{WireCache, WireLayer, WireTestResults};

pub trait BlobIndex: Send + Sync {
    /// The scope of job `id` for `agent_id` writing as `attempt`: only while it holds the
    /// lease; otherwise why not.
    fn job_scope(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
    ) -> Result<std::result::Result<JobScope, Lease>>;
    /// Bytes of blobs project `project_id` holds.
    fn blob_usage(&self, project_id: i64) -> Result<u64>;
    /// The size of blob `sha256` when the project holds it.
    fn project_blob(&self, project_id: i64, sha256: &str) -> Result<Option<u64>>;
    /// May the project take `size` more bytes?
    fn check_quota(&self, scope: &JobScope, size: u64, quota: u64) -> Result<Option<OverQuota>>;
    /// Record that the project holds blob `sha256`, within its quota (a blob it holds
    /// already is not counted twice).
    fn add_blob_ref(
        &self,
        scope: &JobScope,
        sha256: &str,
        size: u64,
        quota: u64,
    ) -> Result<std::result::Result<(), OverQuota>>;
    /// Add a layer to the job's workspace; `false`: the project does not hold the blob.
    fn add_layer(&self, scope: &JobScope, sha256: &str) -> Result<bool>;
    /// The job's workspace: its layers, oldest first.
    fn layers(&self, scope: &JobScope) -> Result<Vec<WireLayer>>;
    /// The project's newest cache whose key starts with `prefix`.
    fn find_cache(&self, project_id: i64, prefix: &str) -> Result<Option<WireCache>>;
    /// Save a cache under `key`: `Some(false)` when the key exists (caches are immutable),
    /// `None` when the project does not hold the blob.
    fn save_cache(&self, scope: &JobScope, key: &str, sha256: &str) -> Result<Option<bool>>;
    /// Name a blob the project holds as the job's artifact `path`; `false`: it does not
    /// hold it.
    fn add_artifact(&self, scope: &JobScope, path: &str, sha256: &str) -> Result<bool>;
    /// Add one step's test results to the job's.
    fn add_test_results(&self, scope: &JobScope, t: &WireTestResults) -> Result<()>;
    /// A job's artifacts and test results, for its page.
    fn job_results(&self, id: i64) -> Result<JobResults>;
    /// The blob and size of job `id`'s artifact `path`.
    fn artifact(&self, id: i64, path: &str) -> Result<Option<(String, u64)>>;
}
