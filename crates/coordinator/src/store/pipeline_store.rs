//! The pipelines part of the store as a trait: what the pipeline runner, the Bitbucket
//! intake, the CLI and the pages ask of it, in types that say nothing of the database.
//! Implemented once for both databases, over [`SqlStore`].

use super::db::SqlStore;
use super::pipelines::{
    NewPipeline, NewWorkflow, OutgoingStatus, PipelineRow, PipelineToFetch, Statuses,
};
use super::{intake, pipeline_actions, pipelines, Result};
use crate::model::contexts::Principal;
use std::time::Duration;

pub trait PipelineStore: Send + Sync {
    /// Record a pipeline (status `created`): (id, number).
    fn create_pipeline(&self, p: &NewPipeline) -> Result<(i64, i64)>;
    /// Pipelines waiting for their config, oldest first.
    fn pipelines_to_fetch(&self) -> Result<Vec<PipelineToFetch>>;
    /// The config could not be fetched or compiled: the pipeline ends `errored`.
    fn pipeline_errored(&self, id: i64, revision: Option<&str>, error: &str) -> Result<()>;
    /// The config compiled: its workflows and jobs are recorded; the pipeline runs.
    fn pipeline_compiled(&self, id: i64, revision: &str, workflows: &[NewWorkflow]) -> Result<()>;
    /// Ids of pipelines whose jobs may still move.
    fn active_pipelines(&self) -> Result<Vec<i64>>;
    /// Pipelines with serial-group jobs waiting for their turn.
    fn pipelines_waiting_in_serial_groups(&self) -> Result<Vec<i64>>;
    /// Move pipeline `id` forward (see `pipelines::advance`); whether anything changed.
    fn advance(&self, id: i64, statuses: &Statuses<'_>) -> Result<bool>;
    /// Pipeline id of `project#number`, or `id` itself.
    fn pipeline_id(&self, reference: &str) -> Result<i64>;
    /// Approve approval job `job` of pipeline `id` as `by`: the workflow it was in.
    /// `Forbidden` when a job downstream uses a context restricted to groups `by` is not in.
    fn approve(
        &self,
        id: i64,
        job: &str,
        by: &Principal,
        statuses: &Statuses<'_>,
    ) -> Result<String>;
    /// Cancel pipeline `id`.
    fn cancel_pipeline(&self, id: i64, statuses: &Statuses<'_>) -> Result<()>;
    /// Rerun pipeline `id`'s workflows from their failed jobs: how many jobs wait again.
    /// `by`: the Bitbucket account of the person who reruns it (its jobs run for them),
    /// `None` for an operator.
    fn rerun_failed(&self, id: i64, by: Option<&str>, statuses: &Statuses<'_>) -> Result<usize>;
    /// Pipelines newest first (of one project when given).
    fn list_pipelines(&self, project: Option<&str>, limit: u32) -> Result<Vec<PipelineRow>>;
    fn pipeline(&self, id: i64) -> Result<Option<PipelineRow>>;
}

/// One implementation for both databases ([`SqlStore`]): the code is in `pipelines.rs` and
/// `pipeline_actions.rs`.
impl<S: SqlStore> PipelineStore for S {
    fn create_pipeline(&self, p: &NewPipeline) -> Result<(i64, i64)> {
        pipelines::create_pipeline(self, p)
    }
    fn pipelines_to_fetch(&self) -> Result<Vec<PipelineToFetch>> {
        pipelines::pipelines_to_fetch(self)
    }
    fn pipeline_errored(&self, id: i64, revision: Option<&str>, error: &str) -> Result<()> {
        pipelines::pipeline_errored(self, id, revision, error)
    }
    fn pipeline_compiled(&self, id: i64, revision: &str, workflows: &[NewWorkflow]) -> Result<()> {
        pipelines::pipeline_compiled(self, id, revision, workflows)
    }
    fn active_pipelines(&self) -> Result<Vec<i64>> {
        pipelines::active_pipelines(self)
    }
    fn pipelines_waiting_in_serial_groups(&self) -> Result<Vec<i64>> {
        pipelines::pipelines_waiting_in_serial_groups(self)
    }
    fn advance(&self, id: i64, statuses: &Statuses<'_>) -> Result<bool> {
        pipelines::advance(self, id, statuses)
    }
    fn pipeline_id(&self, reference: &str) -> Result<i64> {
        pipeline_actions::pipeline_id(self, reference)
    }
    fn approve(
        &self,
        id: i64,
        job: &str,
        by: &Principal,
        statuses: &Statuses<'_>,
    ) -> Result<String> {
        pipeline_actions::approve(self, id, job, by, statuses)
    }
    fn cancel_pipeline(&self, id: i64, statuses: &Statuses<'_>) -> Result<()> {
        pipeline_actions::cancel_pipeline(self, id, statuses)
    }
    fn rerun_failed(&self, id: i64, by: Option<&str>, statuses: &Statuses<'_>) -> Result<usize> {
        pipeline_actions::rerun_failed(self, id, by, statuses)
    }
    fn list_pipelines(&self, project: Option<&str>, limit: u32) -> Result<Vec<PipelineRow>> {
        pipeline_actions::list_pipelines(self, project, limit)
    }
    fn pipeline(&self, id: i64) -> Result<Option<PipelineRow>> {
        pipeline_actions::pipeline(self, id)
    }
}

/// The commit status outbox: statuses [`PipelineStore`]'s changes put there, sent by the
/// Bitbucket status sender in the order they happened, retried until sent or given up.
pub trait StatusOutbox: Send + Sync {
    /// Statuses due now, for each (commit, key) only the oldest unsent one.
    fn due_statuses(&self, limit: u32) -> Result<Vec<OutgoingStatus>>;
    fn status_sent(&self, id: i64) -> Result<()>;
    /// Sending failed: try again after `retry_in`; `give_up`: dropped, marked sent with its
    /// error, so later ones of the job can go.
    fn status_failed(&self, id: i64, error: &str, retry_in: Duration, give_up: bool) -> Result<()>;
    /// Where the server's pages are reached (commit statuses link them; the CLI reads it).
    fn record_public_url(&self, url: &str) -> Result<()>;
}

/// One implementation for both databases ([`SqlStore`]): the code is in `intake.rs` and
/// `pipelines.rs`.
impl<S: SqlStore> StatusOutbox for S {
    fn due_statuses(&self, limit: u32) -> Result<Vec<OutgoingStatus>> {
        intake::due_statuses(self, limit)
    }
    fn status_sent(&self, id: i64) -> Result<()> {
        intake::status_sent(self, id)
    }
    fn status_failed(&self, id: i64, error: &str, retry_in: Duration, give_up: bool) -> Result<()> {
        intake::status_failed(self, id, error, retry_in, give_up)
    }
    fn record_public_url(&self, url: &str) -> Result<()> {
        pipelines::record_public_url(self, url)
    }
}
