//! The queue and its leases as a trait: what the agent API, the CLI, the lease reaper and the
//! pages ask of the job queue, in types that say nothing of the database. [`Store`] (SQLite)
//! is one implementation; another database goes beside it (see `docs/architecture.md`, "The
//! coordinator's store").
//!
//! A job is queued ([`enqueue`](QueueStore::enqueue)), leased to one agent
//! ([`claim`](QueueStore::claim)), kept by heartbeats, and ends with
//! [`finish`](QueueStore::finish) (which also closes its log, see [`super::LogStore`]), a
//! cancel, or a lapsed lease ([`expire_leases`](QueueStore::expire_leases): queued again or
//! failed). Every write is one transaction; no two claimers ever get the same job.

use super::{FinishOutcome, HeartbeatOutcome, JobFilter, JobRow, NewJob, Result, Store};
use bosun_protocol::{FinishRequest, RunningJob, WireJob};
use std::collections::HashMap;
use std::time::Duration;

pub trait QueueStore: Send + Sync {
    /// Queue a job: its id.
    fn enqueue(&self, j: &NewJob) -> Result<i64>;
    /// Queue `j`, letting `ssh_keys` (`authorized_keys` lines, checked by the caller) SSH into
    /// it while it runs and while it is held after its last step.
    fn enqueue_ssh(&self, j: &NewJob, ssh_keys: &[String]) -> Result<i64>;
    /// Queue job `id` again (same project, commit, job, pipeline and limits), with
    /// `ssh_keys` let in (none: a plain rerun): the new job's id.
    fn rerun(&self, id: i64, ssh_keys: &[String]) -> Result<i64>;
    /// Lease the oldest queued job this agent may run, so that two claimers never get the
    /// same job; `None`: nothing for it now.
    fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>>;
    /// Renew the leases of the jobs the agent says it runs: which to cancel, which it should
    /// not have.
    fn heartbeat(
        &self,
        agent_id: &str,
        running: &[RunningJob],
        lease: Duration,
    ) -> Result<HeartbeatOutcome>;
    /// Jobs leased to `agent_id` whose cancel is pending (no lease renewal).
    fn pending_cancels(&self, agent_id: &str) -> Result<Vec<String>>;
    /// The agent's final word on job `id`: its status commits once the whole log is in and
    /// its digest matches.
    fn finish(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        req: &FinishRequest,
    ) -> Result<FinishOutcome>;
    /// Jobs whose lease lapsed go back to the queue (or fail after their last attempt):
    /// how many were queued again.
    fn expire_leases(&self) -> Result<usize>;
    /// Cancel job `id` (queued: at once; running: at its agent's next heartbeat): its status
    /// afterwards.
    fn cancel(&self, id: i64) -> Result<String>;
    /// How recently an agent must have called to count as online (read by other processes).
    fn record_online_window(&self, window: Duration) -> Result<()>;
    fn job(&self, id: i64) -> Result<Option<JobRow>>;
    /// Jobs newest first, at most `limit`.
    fn list_jobs(&self, limit: u32) -> Result<Vec<JobRow>>;
    /// Jobs newest first that match `f`, at most `limit`.
    fn list_jobs_filtered(&self, f: &JobFilter, limit: u32) -> Result<Vec<JobRow>>;
    /// (jobs queued, jobs running, agents seen at or after `online_since`), for the metrics.
    fn counts(&self, online_since: i64) -> Result<(i64, i64, i64)>;
    /// Why job `id` waits, when it is queued.
    fn wait_reason(&self, id: i64) -> Result<Option<String>>;
    /// Why each of `ids` that is queued waits (the others are left out).
    fn wait_reasons(&self, ids: &[i64]) -> Result<HashMap<i64, String>>;
}

impl QueueStore for Store {
    fn enqueue(&self, j: &NewJob) -> Result<i64> {
        Store::enqueue(self, j)
    }
    fn enqueue_ssh(&self, j: &NewJob, ssh_keys: &[String]) -> Result<i64> {
        super::ssh::enqueue_ssh(self, j, ssh_keys)
    }
    fn rerun(&self, id: i64, ssh_keys: &[String]) -> Result<i64> {
        super::ssh::rerun(self, id, ssh_keys)
    }
    fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>> {
        Store::claim(self, agent_id, lease)
    }
    fn heartbeat(
        &self,
        agent_id: &str,
        running: &[RunningJob],
        lease: Duration,
    ) -> Result<HeartbeatOutcome> {
        Store::heartbeat(self, agent_id, running, lease)
    }
    fn pending_cancels(&self, agent_id: &str) -> Result<Vec<String>> {
        Store::pending_cancels(self, agent_id)
    }
    fn finish(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        req: &FinishRequest,
    ) -> Result<FinishOutcome> {
        Store::finish(self, id, agent_id, attempt, req)
    }
    fn expire_leases(&self) -> Result<usize> {
        Store::expire_leases(self)
    }
    fn cancel(&self, id: i64) -> Result<String> {
        Store::cancel(self, id)
    }
    fn record_online_window(&self, window: Duration) -> Result<()> {
        super::waiting::record_online_window(self, window)
    }
    fn job(&self, id: i64) -> Result<Option<JobRow>> {
        Store::job(self, id)
    }
    fn list_jobs(&self, limit: u32) -> Result<Vec<JobRow>> {
        Store::list_jobs(self, limit)
    }
    fn list_jobs_filtered(&self, f: &JobFilter, limit: u32) -> Result<Vec<JobRow>> {
        Store::list_jobs_filtered(self, f, limit)
    }
    fn counts(&self, online_since: i64) -> Result<(i64, i64, i64)> {
        Store::counts(self, online_since)
    }
    fn wait_reason(&self, id: i64) -> Result<Option<String>> {
        Ok(super::waiting::wait_reasons(self, &[id])?.remove(&id))
    }
    fn wait_reasons(&self, ids: &[i64]) -> Result<HashMap<i64, String>> {
        super::waiting::wait_reasons(self, ids)
    }
}
