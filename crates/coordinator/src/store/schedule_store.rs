//! The schedules part of the store as a trait: what the scheduler (`crate::schedules`), the
//! pipeline runner (scheduled workflows read from the default branch's config) and the CLI
//! (`schedule add|ls|rm|pause|resume`) ask of it. [`Store`] (SQLite) is one implementation.
//!
//! The contract a second database keeps: [`ScheduleStore::fire_tick`] claims (schedule, tick)
//! and creates the tick's pipelines in one transaction, and a second claim of the same pair —
//! from this process after a restart, or from another replica at the same moment — finds it
//! taken and creates nothing (a unique key on the pair; PostgreSQL's `INSERT … ON CONFLICT DO
//! NOTHING` behaves as SQLite's here).

use super::pipelines::NewPipeline;
use super::schedules::{
    NewSchedule, RepoAccess, ScheduleRow, WorkflowScheduleRow, WorkflowTrigger,
};
use super::Result;

pub trait ScheduleStore: Send + Sync {
    /// Add a scheduled pipeline (its name unique in its project); its ticks fire from now on.
    fn add_schedule(&self, s: &NewSchedule) -> Result<ScheduleRow>;
    /// Scheduled pipelines (of one project when given), by project and name.
    fn list_schedules(&self, project: Option<&str>) -> Result<Vec<ScheduleRow>>;
    fn remove_schedule(&self, project: &str, name: &str) -> Result<()>;
    /// Pause or resume; a resumed schedule does not fire the ticks it was paused over.
    fn pause_schedule(&self, project: &str, name: &str, paused: bool) -> Result<()>;
    /// Replace `project`'s scheduled workflows with those of its default branch's config at
    /// `revision` (an unchanged one keeps its ticks): whether any changed.
    fn set_workflow_schedules(
        &self,
        project: &str,
        revision: &str,
        triggers: &[WorkflowTrigger],
    ) -> Result<bool>;
    /// Every project's scheduled workflows.
    fn workflow_schedules(&self) -> Result<Vec<WorkflowScheduleRow>>;
    /// Project `project_id`'s repository and keys, to list its branches.
    fn repo_access(&self, project_id: i64) -> Result<RepoAccess>;
    /// Claim tick `tick` of `schedule` and create `pipelines`, in one transaction: their ids,
    /// or `None` when the tick was claimed already or the schedule is gone or paused.
    fn fire_tick(
        &self,
        schedule: &str,
        tick: i64,
        pipelines: &[NewPipeline],
    ) -> Result<Option<Vec<i64>>>;
}
