//! A whole workflow, locally: its jobs in dependency order, independent ones at once (up to a
//! limit), workspaces handed along `requires` through the store, filters evaluated for the
//! checked-out branch or tag, approvals held (or approved), and a final table.
//!
//! A failed job stops its dependants, not its siblings.

use crate::config::{GitRef, Readiness, Workflow, WorkflowJob, WorkflowJobKind};
use crate::executor::Executor;
use crate::job::{self, JobSpec};
use crate::stream::{Event, EventSink, JobStatus, WorkflowJobStatus, WorkflowJobSummary};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct WorkflowOptions {
    /// Jobs running at once.
    pub max_parallel: usize,
    /// Treat `type: approval` jobs as approved.
    pub approve: bool,
}

#[derive(Debug, Clone)]
pub struct WorkflowOutcome {
    pub status: JobStatus,
    pub jobs: Vec<WorkflowJobSummary>,
}

/// Forwards a job's events wrapped with its workflow name.
struct JobSink {
    job: String,
    inner: Arc<dyn EventSink>,
}

impl EventSink for JobSink {
    fn emit(&self, event: &Event) {
        self.inner.emit(&Event::Job {
            job: self.job.clone(),
            inner: Box::new(event.clone()),
        });
    }
}

/// Run a job on all its `parallelism` nodes at once (one container each, CIRCLE_NODE_INDEX
/// 0..N); the job's status is the worst of its nodes'. A single node runs as it is.
pub async fn run_nodes(
    executor: Arc<dyn Executor>,
    mut nodes: Vec<JobSpec>,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> JobStatus {
    if nodes.len() <= 1 {
        return match nodes.pop() {
            Some(spec) => job::run_job(executor, spec, sink, cancel).await.status,
            None => JobStatus::Success,
        };
    }
    let mut set = tokio::task::JoinSet::new();
    for node in nodes {
        let node_sink: Arc<dyn EventSink> = Arc::new(JobSink {
            job: format!("{}.{}", node.plan.name, node.node_index),
            inner: Arc::clone(&sink),
        });
        set.spawn(job::run_job(
            Arc::clone(&executor),
            node,
            node_sink,
            cancel.clone(),
        ));
    }
    let mut statuses = Vec::new();
    while let Some(r) = set.join_next().await {
        statuses.push(r.map(|o| o.status).unwrap_or(JobStatus::InfrastructureFail));
    }
    worst(&statuses)
}

/// The specs of a job's `parallelism` nodes, from one spec.
pub fn node_specs(make: &dyn Fn() -> JobSpec, parallelism: u32) -> Vec<JobSpec> {
    let total = parallelism.max(1);
    (0..total)
        .map(|n| {
            let mut s = make();
            if total > 1 {
                s.id = format!("{}-{n}", s.id);
            }
            s.node_index = n;
            s.node_total = total;
            s
        })
        .collect()
}

/// Canceled beats infrastructure failure beats timed out beats failed beats success.
fn worst(statuses: &[JobStatus]) -> JobStatus {
    let rank = |s: &JobStatus| match s {
        JobStatus::Success => 0,
        JobStatus::Failed => 1,
        JobStatus::TimedOut => 2,
        JobStatus::InfrastructureFail => 3,
        JobStatus::Canceled => 4,
    };
    statuses
        .iter()
        .copied()
        .max_by_key(rank)
        .unwrap_or(JobStatus::Success)
}

/// Run `workflow` for `git`. `make_spec` turns a build job into the spec `job::run_job` runs
/// (the caller owns keys, store, checkout).
pub async fn run_workflow(
    executor: Arc<dyn Executor>,
    workflow: &Workflow,
    git: GitRef<'_>,
    opts: &WorkflowOptions,
    make_spec: &(dyn Fn(&WorkflowJob, &crate::config::CompiledJob) -> JobSpec + Sync),
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> WorkflowOutcome {
    let started = Instant::now();
    let selected: Vec<&WorkflowJob> = workflow.jobs_to_run(git);
    let mut state: HashMap<String, (WorkflowJobStatus, u64)> = HashMap::new();
    for j in &workflow.jobs {
        if !selected.iter().any(|s| s.name == j.name) {
            let reason = match git {
                GitRef::Branch(b) => format!("filters exclude branch {b}"),
                GitRef::Tag(t) => format!("filters exclude tag {t} (tags are opt-in)"),
            };
            sink.emit(&Event::JobNotRun {
                job: j.name.clone(),
                status: WorkflowJobStatus::NotRun,
                reason,
            });
            state.insert(j.name.clone(), (WorkflowJobStatus::NotRun, 0));
        }
    }
    let mut pending: Vec<&WorkflowJob> = selected;
    let mut running = tokio::task::JoinSet::new();
    let mut in_flight = 0usize;
    loop {
        // Settle everything that can be decided without running anything.
        let mut progressed = true;
        while progressed {
            progressed = false;
            let mut still = Vec::new();
            for j in pending.drain(..) {
                // An approval nobody approved here never will be: it counts as not run.
                let status_of = |r: &str| {
                    state.get(r).map(|(s, _)| match s {
                        WorkflowJobStatus::OnHold => WorkflowJobStatus::Blocked,
                        s => *s,
                    })
                };
                match j.readiness(status_of) {
                    Readiness::Ready => {}
                    Readiness::Wait => {
                        still.push(j);
                        continue;
                    }
                    Readiness::Blocked { by, ended } => {
                        let wanted: Vec<&str> =
                            j.accepted(&by).iter().map(|s| s.as_str()).collect();
                        let reason = if wanted == ["success"] {
                            format!("requires {by}, which did not succeed")
                        } else {
                            format!(
                                "requires {by} to end {}, and it ended {}",
                                wanted.join(" or "),
                                ended.as_str()
                            )
                        };
                        sink.emit(&Event::JobNotRun {
                            job: j.name.clone(),
                            status: WorkflowJobStatus::Blocked,
                            reason,
                        });
                        state.insert(j.name.clone(), (WorkflowJobStatus::Blocked, 0));
                        progressed = true;
                        continue;
                    }
                }
                match &j.kind {
                    WorkflowJobKind::Approval => {
                        let s = if opts.approve {
                            WorkflowJobStatus::Success
                        } else {
                            sink.emit(&Event::JobNotRun {
                                job: j.name.clone(),
                                status: WorkflowJobStatus::OnHold,
                                reason: "waiting for approval; run with --approve to approve it"
                                    .into(),
                            });
                            WorkflowJobStatus::OnHold
                        };
                        state.insert(j.name.clone(), (s, 0));
                        progressed = true;
                    }
                    WorkflowJobKind::NotRunnable { reason } => {
                        sink.emit(&Event::JobNotRun {
                            job: j.name.clone(),
                            status: WorkflowJobStatus::NotRunnable,
                            reason: reason.clone(),
                        });
                        state.insert(j.name.clone(), (WorkflowJobStatus::NotRunnable, 0));
                        progressed = true;
                    }
                    WorkflowJobKind::Build(compiled) => {
                        if in_flight < opts.max_parallel.max(1) && !cancel.is_cancelled() {
                            let job_sink: Arc<dyn EventSink> = Arc::new(JobSink {
                                job: j.name.clone(),
                                inner: Arc::clone(&sink),
                            });
                            let name = j.name.clone();
                            let exec = Arc::clone(&executor);
                            let cancel = cancel.clone();
                            let nodes =
                                node_specs(&|| make_spec(j, compiled), compiled.plan.parallelism);
                            running.spawn(async move {
                                let t0 = Instant::now();
                                let status = run_nodes(exec, nodes, job_sink, cancel).await;
                                (name, status, t0.elapsed())
                            });
                            in_flight += 1;
                        } else {
                            still.push(j);
                        }
                    }
                }
            }
            pending = still;
        }
        if in_flight == 0 {
            break;
        }
        match running.join_next().await {
            Some(Ok((name, status, took))) => {
                state.insert(
                    name,
                    (
                        WorkflowJobStatus::from(status),
                        u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                    ),
                );
            }
            Some(Err(e)) => {
                // run_job never panics outward; a join error means the task was aborted.
                tracing::error!("workflow job task failed: {e}");
            }
            None => {}
        }
        in_flight = in_flight.saturating_sub(1);
    }
    // Anything left pending could never start (canceled before its turn).
    for j in pending {
        state.insert(j.name.clone(), (WorkflowJobStatus::Canceled, 0));
    }
    let jobs: Vec<WorkflowJobSummary> = workflow
        .jobs
        .iter()
        .map(|j| {
            let (status, duration_ms) = state
                .get(&j.name)
                .copied()
                .unwrap_or((WorkflowJobStatus::Canceled, 0));
            WorkflowJobSummary {
                job: j.name.clone(),
                status,
                duration_ms,
            }
        })
        .collect();
    let status = if cancel.is_cancelled() {
        JobStatus::Canceled
    } else if jobs.iter().any(|j| {
        matches!(
            j.status,
            WorkflowJobStatus::Failed
                | WorkflowJobStatus::TimedOut
                | WorkflowJobStatus::InfrastructureFail
                | WorkflowJobStatus::Blocked
        )
    }) {
        JobStatus::Failed
    } else {
        JobStatus::Success
    };
    sink.emit(&Event::WorkflowFinished {
        workflow: workflow.name.clone(),
        status,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        jobs: jobs.clone(),
    });
    WorkflowOutcome { status, jobs }
}
