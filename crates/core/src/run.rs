//! The one job path both front doors take (`bosun execute` and the agent): prepare a
//! request, then run what it names — one job, the parallel nodes of a job, or a whole
//! workflow. It sits above `job` and `workflow` so that neither imports the other's caller:
//! `workflow` runs jobs, `job` knows nothing of workflows.

use crate::config;
use crate::executor::Executor;
use crate::job::request::{self, PrepareError, Prepared, What};
use crate::job::{self, JobRequest, JobSpec, Secrets, Target};
use crate::stream::{Event, EventSink, JobStatus};
use crate::workflow::{node_specs, run_nodes, run_workflow, WorkflowOptions};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What came of a request.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub status: JobStatus,
    /// Why it could not run (masked).
    pub error: Option<String>,
}

/// Prepare and run a request to its end: what both front doors call. A request that cannot
/// be prepared ends `infrastructure_fail` (or `canceled`, `timedout`) with its reason in a
/// `job_finished` event, masked like everything else.
pub async fn run(
    executor: Arc<dyn Executor>,
    req: JobRequest,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
    on_prepared: &(dyn Fn(&Prepared) + Sync),
) -> RequestOutcome {
    let started = Instant::now();
    // Gathered once: they mask what preparation says, then every job's output.
    let secrets = Secrets::of(
        req.env
            .iter()
            .chain(&req.project_env)
            .chain(req.contexts.iter().flat_map(|(_, e)| e)),
        &req.keys,
        &req.additional_keys,
    );
    let label = match &req.target {
        Target::Job(j) | Target::Node { job: j, .. } => j.clone(),
        Target::Workflow { name, .. } => name.clone(),
    };
    let limit = req.time_limit;
    let preparing = request::prepare_with(req, secrets.clone(), Arc::clone(&sink));
    let prepared = tokio::select! {
        r = async {
            match limit {
                Some(l) => tokio::time::timeout(l, preparing).await.unwrap_or(Err(PrepareError::TimedOut(l))),
                None => preparing.await,
            }
        } => r,
        () = cancel.cancelled() => Err(PrepareError::Canceled),
    };
    let mut prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let status = match e {
                PrepareError::Canceled => JobStatus::Canceled,
                PrepareError::TimedOut(_) => JobStatus::TimedOut,
                _ => JobStatus::InfrastructureFail,
            };
            let error = secrets.mask(&e.to_string());
            sink.emit(&Event::JobFinished {
                job: label,
                status,
                duration_ms: job::millis(started.elapsed()),
                steps: Vec::new(),
                error: Some(error.clone()),
            });
            return RequestOutcome {
                status,
                error: Some(error),
            };
        }
    };
    // Preparation used part of the time limit.
    prepared.context.time_limit = limit.map(|l| l.saturating_sub(started.elapsed()));
    on_prepared(&prepared);
    run_prepared(prepared, executor, sink, cancel).await
}

/// Runs what a prepared request names.
async fn run_prepared(
    prepared: Prepared,
    executor: Arc<dyn Executor>,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> RequestOutcome {
    let context = Arc::new(prepared.context);
    let id = &context.workspace;
    match prepared.what {
        What::Job {
            plan,
            node: Some((index, total)),
        } => {
            let mut spec = JobSpec::new(&context, id.clone(), *plan);
            spec.context_env = job::context_env(&context, None);
            spec.node_index = index;
            spec.node_total = total;
            let o = job::run_job(executor, spec, sink, cancel).await;
            RequestOutcome {
                status: o.status,
                error: o.error,
            }
        }
        What::Job { plan, node: None } => {
            let parallelism = plan.parallelism;
            let nodes = node_specs(
                &|| {
                    let mut spec = JobSpec::new(&context, id.clone(), (*plan).clone());
                    spec.context_env = job::context_env(&context, None);
                    spec
                },
                parallelism,
            );
            RequestOutcome {
                status: run_nodes(executor, nodes, sink, cancel).await,
                error: None,
            }
        }
        What::Workflow {
            workflow,
            max_parallel,
            approve,
        } => {
            // A job naming a context nobody gave runs without it, and says so once.
            for wj in &workflow.jobs {
                for name in &wj.context {
                    if !context.contexts.iter().any(|(n, _)| n == name) {
                        sink.emit(&Event::Info {
                            message: format!(
                                "warning: job {} names context {name}, which was not given \
                                 (--context {name}=FILE): it runs without its variables",
                                wj.name
                            ),
                        });
                    }
                }
            }
            let make = |wj: &config::WorkflowJob, cj: &config::CompiledJob| {
                let mut spec = JobSpec::new(&context, format!("{id}-{}", wj.name), cj.plan.clone());
                spec.context_env = job::context_env(&context, Some(&wj.context));
                spec
            };
            let git = match (&prepared.git_tag, &prepared.git_branch) {
                (Some(t), _) => config::GitRef::Tag(t),
                (None, b) => config::GitRef::Branch(b),
            };
            let opts = WorkflowOptions {
                max_parallel,
                approve,
            };
            let o = run_workflow(executor, &workflow, git, &opts, &make, sink, cancel).await;
            RequestOutcome {
                status: o.status,
                error: None,
            }
        }
    }
}
