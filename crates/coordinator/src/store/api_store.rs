//! What CircleCI's API v2 (`crate::api_v2`) asks of the store beside the pipeline, queue and
//! blob traits, in types that say nothing of the database: project tokens (read-only or
//! trigger-only, one project), lookups by the UUIDs the API hands out, pages of a project's pipelines, and the
//! config each pipeline was compiled from. Implemented once for SQLite and PostgreSQL, in
//! `api_v2.rs`.

use super::api_v2::{
    ApiProject, Continuation, ContinuationTarget, ContinueRefusal, PipelineConfig, PipelineDetails,
    ProjectToken,
};
use super::Result;
use crate::model::tokens::ProjectScope;

pub trait ApiStore: Send + Sync {
    /// A new API token for project `project` (a slug, old or current, or its UUID), named
    /// `name`, for `scope` (read-only or trigger-only): the token, printed once and kept as a
    /// digest.
    fn create_project_token(
        &self,
        project: &str,
        name: &str,
        scope: ProjectScope,
    ) -> Result<String>;
    /// The project (current slug) of a project token, with its scope and name, unless
    /// unknown or revoked.
    fn project_token(&self, token: &str) -> Result<Option<ProjectToken>>;
    /// Revoke every project token named (or with the id) `name`: how many.
    fn revoke_project_tokens(&self, name: &str) -> Result<usize>;
    /// Project `project` (a slug, old or current, or its UUID); `None`: no such project.
    fn api_project(&self, project: &str) -> Result<Option<ApiProject>>;
    /// The pipeline whose UUID is `uuid`.
    fn pipeline_by_uuid(&self, uuid: &str) -> Result<Option<i64>>;
    /// The pipeline of the workflow whose UUID is `uuid`.
    fn workflow_pipeline(&self, uuid: &str) -> Result<Option<i64>>;
    /// Ids of `project`'s pipelines (on `branch` when given), newest first, older than
    /// pipeline `before` when given, at most `limit`.
    fn pipeline_page(
        &self,
        project: &str,
        branch: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<i64>>;
    /// What the API shows of pipeline `id` beyond its row.
    fn pipeline_details(&self, id: i64) -> Result<Option<PipelineDetails>>;
    /// Keep the config pipeline `id` was compiled from (and its processed form); a second
    /// call (a continuation) keeps the first as the setup config.
    fn record_pipeline_config(&self, id: i64, source: &str, compiled: &str) -> Result<()>;
    fn pipeline_config(&self, id: i64) -> Result<Option<PipelineConfig>>;
    /// The pipeline job `job` belongs to (`None`: a job queued on its own, or none).
    fn job_pipeline(&self, job: i64) -> Result<Option<i64>>;
    /// Pipeline `id` runs a setup config: make its continuation key (sealed; its setup
    /// workflow's jobs get it as `CIRCLE_CONTINUATION_KEY`).
    fn create_continuation(&self, id: i64) -> Result<()>;
    /// The pipeline continuation key `key` may continue, or why not.
    fn continuation(
        &self,
        key: &str,
    ) -> Result<std::result::Result<ContinuationTarget, ContinueRefusal>>;
    /// Continue with `key` (once): the config and the workflows compiled from it join the
    /// key's pipeline, in one transaction. The pipeline's id, or why not.
    fn continue_pipeline(
        &self,
        key: &str,
        c: &Continuation<'_>,
    ) -> Result<std::result::Result<i64, ContinueRefusal>>;
}
