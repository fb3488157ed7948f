//! The workflow state machine, pure: a workflow's jobs as they are in, the transitions that
//! move them forward out. The store loads the jobs, calls [`advance`], and applies what it
//! returns in order (statuses, the `jobs` rows agents claim, the commit-status outbox) in one
//! transaction; nothing here reads or writes anything.

use super::contexts::{Member, RunsFor};
use super::JobKind;
use bosun_config::{readiness, Readiness, RequiredStatus};
use bosun_protocol::{JobState, PipelineState, WorkflowJobStatus, WorkflowState};

/// A workflow job as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowJob {
    pub name: String,
    pub kind: JobKind,
    pub requires: Vec<(String, Vec<RequiredStatus>)>,
    pub serial_group: Option<String>,
    pub status: WorkflowJobStatus,
    /// The state of its `jobs` row, once one was queued: what the agents did.
    pub job_state: Option<JobState>,
    /// Why it may not use its contexts (`model::contexts::authorize`): when it is ready it
    /// ends `unauthorized` with this reason instead of starting.
    pub denied: Option<String>,
}

/// What happens to the job at `job` (an index into the slice given to [`advance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub job: usize,
    pub to: WorkflowJobStatus,
    /// The job's new `reason` (`None` clears it).
    pub reason: Option<String>,
    /// Queue the `jobs` row an agent claims now (a build job outside any serial group; one
    /// in a group waits for its turn, which the store decides across pipelines).
    pub queue: bool,
}

/// The status a `jobs` row's state gives its workflow job.
fn status_of_job(state: JobState) -> WorkflowJobStatus {
    match state {
        JobState::Queued => WorkflowJobStatus::Queued,
        JobState::Running => WorkflowJobStatus::Running,
        JobState::Success => WorkflowJobStatus::Success,
        JobState::Failed => WorkflowJobStatus::Failed,
        JobState::Canceled => WorkflowJobStatus::Canceled,
        JobState::TimedOut => WorkflowJobStatus::TimedOut,
        JobState::InfrastructureFail => WorkflowJobStatus::InfrastructureFail,
    }
}

/// Move a workflow forward: first what the agents did (each job whose `jobs` row says
/// otherwise takes its state), then every waiting job whose requirements are decided starts
/// (queued, held for approval, waiting its serial group's turn, or not runnable) or is
/// blocked, again and again until nothing moves. The transitions are in the order they were
/// decided; a later one may depend on an earlier one's status.
pub fn advance(jobs: &[WorkflowJob]) -> Vec<Transition> {
    let mut status: Vec<WorkflowJobStatus> = jobs.iter().map(|j| j.status).collect();
    let mut out = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        if let Some(state) = j.job_state {
            let now = status_of_job(state);
            if now != status[i] {
                status[i] = now;
                out.push(Transition {
                    job: i,
                    to: now,
                    reason: None,
                    queue: false,
                });
            }
        }
    }
    loop {
        let mut progressed = false;
        for (i, j) in jobs.iter().enumerate() {
            if status[i] != WorkflowJobStatus::Waiting {
                continue;
            }
            let names: Vec<String> = j.requires.iter().map(|(n, _)| n.clone()).collect();
            let status_of = |n: &str| jobs.iter().position(|o| o.name == n).map(|k| status[k]);
            let t = match readiness(&names, &j.requires, status_of) {
                Readiness::Wait => continue,
                Readiness::Blocked { by, ended } => Transition {
                    job: i,
                    to: WorkflowJobStatus::Blocked,
                    reason: Some(format!("requires {by}, which ended {}", ended.as_str())),
                    queue: false,
                },
                Readiness::Ready => match j.kind {
                    JobKind::Approval => Transition {
                        job: i,
                        to: WorkflowJobStatus::OnHold,
                        reason: Some("waiting for approval".to_owned()),
                        queue: false,
                    },
                    JobKind::Build if j.denied.is_some() => Transition {
                        job: i,
                        to: WorkflowJobStatus::Unauthorized,
                        reason: j.denied.clone(),
                        queue: false,
                    },
                    JobKind::Build => match &j.serial_group {
                        None => Transition {
                            job: i,
                            to: WorkflowJobStatus::Queued,
                            reason: None,
                            queue: true,
                        },
                        Some(group) => Transition {
                            job: i,
                            to: WorkflowJobStatus::Queued,
                            reason: Some(format!("waiting for its turn in serial group {group}")),
                            queue: false,
                        },
                    },
                    JobKind::NotRunnable => Transition {
                        job: i,
                        to: WorkflowJobStatus::NotRunnable,
                        reason: None,
                        queue: false,
                    },
                },
            };
            status[i] = t.to;
            out.push(t);
            progressed = true;
        }
        if !progressed {
            return out;
        }
    }
}

/// A workflow's state from its jobs' statuses.
pub fn workflow_state(jobs: &[WorkflowJobStatus]) -> WorkflowState {
    use WorkflowJobStatus as W;
    let any = |f: &dyn Fn(W) -> bool| jobs.iter().any(|s| f(*s));
    let failed = any(&|s| {
        matches!(
            s,
            W::Failed | W::TimedOut | W::InfrastructureFail | W::Blocked | W::Unauthorized
        )
    });
    if any(&|s| matches!(s, W::Waiting | W::Queued | W::Running)) {
        // Jobs waiting only on an approval make the workflow on hold.
        let moving = any(&|s| matches!(s, W::Queued | W::Running));
        if !moving && any(&|s| s == W::OnHold) {
            return WorkflowState::OnHold;
        }
        return if failed {
            WorkflowState::Failing
        } else {
            WorkflowState::Running
        };
    }
    if any(&|s| s == W::OnHold) {
        return WorkflowState::OnHold;
    }
    if jobs.iter().all(|s| matches!(s, W::NotRun)) {
        return WorkflowState::NotRun;
    }
    if failed {
        WorkflowState::Failed
    } else if any(&|s| s == W::Canceled) {
        WorkflowState::Canceled
    } else {
        WorkflowState::Success
    }
}

/// Whether a workflow in state `s` has ended (its `finished` time is then set).
pub fn workflow_final(s: WorkflowState) -> bool {
    !matches!(
        s,
        WorkflowState::Running | WorkflowState::Failing | WorkflowState::OnHold
    )
}

/// A pipeline's state from its workflows' states. `None`: every workflow was filtered out.
pub fn pipeline_state(wfs: &[WorkflowState]) -> Option<PipelineState> {
    use WorkflowState as S;
    if wfs.iter().all(|s| *s == S::NotRun) {
        return None;
    }
    let any = |x: S| wfs.contains(&x);
    Some(if any(S::Running) || any(S::Failing) {
        PipelineState::Running
    } else if any(S::OnHold) {
        PipelineState::OnHold
    } else if any(S::Failed) {
        PipelineState::Failed
    } else if any(S::Canceled) {
        PipelineState::Canceled
    } else {
        PipelineState::Success
    })
}

/// The waiting build jobs that name contexts (`contexts[i]`, by the job's index): those
/// authorized before they may start. A restricted build (a forked pull request's without
/// the project's secrets) gets no context, so none needs one.
pub fn naming_contexts(
    jobs: &[WorkflowJob],
    contexts: &[Vec<String>],
    restricted: bool,
) -> Vec<usize> {
    if restricted {
        return Vec::new();
    }
    (0..jobs.len())
        .filter(|&i| {
            jobs[i].status == WorkflowJobStatus::Waiting
                && jobs[i].kind == JobKind::Build
                && contexts.get(i).is_some_and(|c| !c.is_empty())
        })
        .collect()
}

/// The jobs of [`naming_contexts`], each with who it runs for, as CircleCI decides it: the
/// approvers of every approval job upstream of it (`approvers[k]`: who approved job `k`),
/// else whoever triggered (or reran) the pipeline (`trigger`: a Bosun person), else
/// nobody. Only approval jobs approve: a build job's row never names an approver.
pub fn to_authorize(
    jobs: &[WorkflowJob],
    contexts: &[Vec<String>],
    approvers: &[Option<Member>],
    trigger: Option<&Member>,
    restricted: bool,
) -> Vec<(usize, RunsFor)> {
    naming_contexts(jobs, contexts, restricted)
        .into_iter()
        .map(|i| {
            let approved: Vec<Member> = upstream(jobs, i)
                .into_iter()
                .filter(|&k| jobs[k].kind == JobKind::Approval)
                .filter_map(|k| approvers.get(k).cloned().flatten())
                .collect();
            let runs_for = if !approved.is_empty() {
                RunsFor::Approvers(approved)
            } else if let Some(t) = trigger {
                RunsFor::Trigger(t.clone())
            } else {
                RunsFor::Nobody
            };
            (i, runs_for)
        })
        .collect()
}

/// The jobs upstream of job `of`: those it requires, directly or through others, by index
/// (each once; a name no job has is skipped).
pub fn upstream(jobs: &[WorkflowJob], of: usize) -> Vec<usize> {
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let mut seen = vec![false; jobs.len()];
    let mut todo = vec![of];
    let mut out = Vec::new();
    while let Some(i) = todo.pop() {
        for (name, _) in &jobs[i].requires {
            if let Some(k) = names.iter().position(|n| n == name) {
                if !seen[k] && k != of {
                    seen[k] = true;
                    out.push(k);
                    todo.push(k);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// The jobs downstream of the job named `from`: those that require it, directly or through
/// others, by index; `requires[i]` names what job `i` (named `names[i]`) requires.
pub fn downstream(names: &[String], requires: &[Vec<String>], from: &str) -> Vec<usize> {
    let mut seen = vec![false; names.len()];
    let mut todo = vec![from.to_owned()];
    let mut out = Vec::new();
    while let Some(name) = todo.pop() {
        for (i, r) in requires.iter().enumerate() {
            if !seen[i] && names[i] != from && r.contains(&name) {
                seen[i] = true;
                out.push(i);
                todo.push(names[i].clone());
            }
        }
    }
    out.sort_unstable();
    out
}

/// Whether a pipeline in state `p` has ended.
pub fn pipeline_final(p: PipelineState) -> bool {
    !matches!(p, PipelineState::Running | PipelineState::OnHold)
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkflowJobStatus as W;

    fn job(name: &str, kind: JobKind, requires: &[&str]) -> WorkflowJob {
        WorkflowJob {
            name: name.to_owned(),
            kind,
            requires: requires
                .iter()
                .map(|r| (r.to_string(), vec![RequiredStatus::Success]))
                .collect(),
            serial_group: None,
            status: W::Waiting,
            job_state: None,
            denied: None,
        }
    }

    fn build(name: &str, requires: &[&str]) -> WorkflowJob {
        job(name, JobKind::Build, requires)
    }

    /// Apply `advance` as the store does: the statuses after it.
    fn after(jobs: &mut [WorkflowJob]) -> Vec<Transition> {
        let t = advance(jobs);
        for x in &t {
            jobs[x.job].status = x.to;
            if x.queue {
                jobs[x.job].job_state = Some(JobState::Queued);
            }
        }
        t
    }

    fn statuses(jobs: &[WorkflowJob]) -> Vec<W> {
        jobs.iter().map(|j| j.status).collect()
    }

    #[test]
    fn jobs_without_requirements_are_queued_and_their_dependants_wait() {
        let mut jobs = vec![build("a", &[]), build("b", &["a"])];
        let t = after(&mut jobs);
        assert_eq!(
            t,
            vec![Transition {
                job: 0,
                to: W::Queued,
                reason: None,
                queue: true
            }]
        );
        assert_eq!(statuses(&jobs), [W::Queued, W::Waiting]);
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::Running);
        assert!(after(&mut jobs).is_empty(), "nothing moves twice");
    }

    #[test]
    fn the_agents_states_come_first_and_a_fan_in_waits_for_every_requirement() {
        let mut jobs = vec![build("a", &[]), build("b", &[]), build("c", &["a", "b"])];
        after(&mut jobs);
        jobs[0].job_state = Some(JobState::Success);
        jobs[1].job_state = Some(JobState::Running);
        let t = after(&mut jobs);
        assert_eq!(
            t.iter().map(|t| (t.job, t.to)).collect::<Vec<_>>(),
            [(0, W::Success), (1, W::Running)]
        );
        assert_eq!(jobs[2].status, W::Waiting);
        jobs[1].job_state = Some(JobState::Success);
        let t = after(&mut jobs);
        assert_eq!(
            t.iter().map(|t| (t.job, t.to, t.queue)).collect::<Vec<_>>(),
            [(1, W::Success, false), (2, W::Queued, true)]
        );
    }

    #[test]
    fn a_failure_blocks_its_dependants_down_the_chain_in_one_pass() {
        let mut jobs = vec![build("a", &[]), build("b", &["a"]), build("c", &["b"])];
        after(&mut jobs);
        jobs[0].job_state = Some(JobState::Failed);
        let t = after(&mut jobs);
        assert_eq!(
            t.iter()
                .map(|t| (t.job, t.to, t.reason.as_deref()))
                .collect::<Vec<_>>(),
            [
                (0, W::Failed, None),
                (1, W::Blocked, Some("requires a, which ended failed")),
                // A blocked job counts as not run for the jobs that require it.
                (2, W::Blocked, Some("requires b, which ended not_run")),
            ]
        );
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::Failed);
    }

    #[test]
    fn a_requirement_written_with_statuses_accepts_them() {
        let mut jobs = vec![build("a", &[]), build("notify", &["a"])];
        jobs[1].requires[0].1 = RequiredStatus::TERMINAL.to_vec();
        after(&mut jobs);
        jobs[0].job_state = Some(JobState::Failed);
        after(&mut jobs);
        assert_eq!(statuses(&jobs), [W::Failed, W::Queued]);
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::Failing);
    }

    #[test]
    fn an_approval_holds_the_workflow_and_its_approval_lets_the_rest_run() {
        let mut jobs = vec![
            job("hold", JobKind::Approval, &[]),
            build("deploy", &["hold"]),
        ];
        let t = after(&mut jobs);
        assert_eq!(
            t,
            vec![Transition {
                job: 0,
                to: W::OnHold,
                reason: Some("waiting for approval".into()),
                queue: false
            }]
        );
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::OnHold);
        assert_eq!(
            pipeline_state(&[workflow_state(&statuses(&jobs))]),
            Some(PipelineState::OnHold)
        );
        // Approving (the store sets `success`) lets `deploy` start.
        jobs[0].status = W::Success;
        after(&mut jobs);
        assert_eq!(statuses(&jobs), [W::Success, W::Queued]);
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::Running);
    }

    #[test]
    fn a_serial_group_job_waits_for_its_turn_and_a_not_runnable_job_ends() {
        let mut jobs = vec![build("deploy", &[]), job("odd", JobKind::NotRunnable, &[])];
        jobs[0].serial_group = Some("prod".into());
        let t = after(&mut jobs);
        assert_eq!(
            t,
            vec![
                Transition {
                    job: 0,
                    to: W::Queued,
                    reason: Some("waiting for its turn in serial group prod".into()),
                    queue: false
                },
                Transition {
                    job: 1,
                    to: W::NotRunnable,
                    reason: None,
                    queue: false
                },
            ]
        );
    }

    #[test]
    fn a_job_denied_its_contexts_ends_unauthorized_and_its_dependants_do_not_run() {
        let mut jobs = vec![
            build("test", &[]),
            build("deploy", &["test"]),
            build("notify", &["deploy"]),
        ];
        jobs[1].denied = Some("context prod: the pipeline does not meet its restriction".into());
        after(&mut jobs);
        // Authorization is decided when the job is ready, not before.
        assert_eq!(statuses(&jobs), [W::Queued, W::Waiting, W::Waiting]);
        jobs[0].job_state = Some(JobState::Success);
        let t = after(&mut jobs);
        assert_eq!(
            t.iter()
                .map(|t| (t.job, t.to, t.queue, t.reason.as_deref()))
                .collect::<Vec<_>>(),
            [
                (0, W::Success, false, None),
                (
                    1,
                    W::Unauthorized,
                    false,
                    Some("context prod: the pipeline does not meet its restriction")
                ),
                (
                    2,
                    W::Blocked,
                    false,
                    Some("requires deploy, which ended unauthorized")
                ),
            ]
        );
        assert_eq!(workflow_state(&statuses(&jobs)), WorkflowState::Failed);
        // A requirement that accepts it lets the dependant run.
        let mut jobs = vec![build("deploy", &[]), build("cleanup", &["deploy"])];
        jobs[0].denied = Some("no".into());
        jobs[1].requires[0].1 = vec![RequiredStatus::Unauthorized];
        after(&mut jobs);
        assert_eq!(statuses(&jobs), [W::Unauthorized, W::Queued]);
    }

    #[test]
    fn workflows_of_filtered_jobs_are_not_run_and_a_pipeline_of_them_errs() {
        let s = workflow_state(&[W::NotRun, W::NotRun]);
        assert_eq!(s, WorkflowState::NotRun);
        assert_eq!(pipeline_state(&[s]), None);
        assert_eq!(
            pipeline_state(&[s, WorkflowState::Success]),
            Some(PipelineState::Success)
        );
        assert_eq!(
            workflow_state(&[W::Success, W::Canceled]),
            WorkflowState::Canceled
        );
        assert_eq!(
            pipeline_state(&[WorkflowState::Failed, WorkflowState::Canceled]),
            Some(PipelineState::Failed)
        );
        assert!(workflow_final(WorkflowState::Failed));
        assert!(!workflow_final(WorkflowState::Failing));
        assert!(!pipeline_final(PipelineState::OnHold));
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.to_owned(),
            groups: vec!["release".to_owned()],
        }
    }

    #[test]
    fn a_job_runs_for_the_approvers_upstream_else_for_who_triggered_the_pipeline() {
        let mut hold = job("hold", JobKind::Approval, &[]);
        hold.status = W::Success;
        let jobs = vec![
            hold,
            build("deploy", &["hold"]),
            build("lint", &[]),
            build("test", &[]),
            // Behind `deploy`, so behind the approval too.
            build("smoke", &["deploy"]),
        ];
        let ctx = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let contexts = vec![
            ctx(&[]),
            ctx(&["prod"]),
            ctx(&["ci"]),
            ctx(&[]),
            ctx(&["prod"]),
        ];
        let approvers = vec![Some(member("ana")), None, None, None, None];
        let ana = || RunsFor::Approvers(vec![member("ana")]);
        // `test` names no context; `lint` has no approval upstream and nobody triggered it.
        assert_eq!(
            to_authorize(&jobs, &contexts, &approvers, None, false),
            vec![(1, ana()), (2, RunsFor::Nobody), (4, ana())]
        );
        // A person who triggered the pipeline: jobs without an approval upstream run for
        // them; the approver still counts over them where there is one.
        let pusher = member("pia");
        assert_eq!(
            to_authorize(&jobs, &contexts, &approvers, Some(&pusher), false),
            vec![
                (1, ana()),
                (2, RunsFor::Trigger(pusher.clone())),
                (4, ana())
            ]
        );
        // A restricted build gets no context, so none is authorized.
        assert!(to_authorize(&jobs, &contexts, &approvers, Some(&pusher), true).is_empty());
        // Only a waiting build job: a running one was authorized when it started.
        let mut started = jobs.clone();
        started[1].status = W::Running;
        assert_eq!(
            to_authorize(&started, &contexts, &approvers, None, false),
            vec![(2, RunsFor::Nobody), (4, ana())]
        );
        // A build job in front is not an approver, whoever its row names.
        let mut not_approval = jobs.clone();
        not_approval[0].kind = JobKind::Build;
        assert_eq!(
            to_authorize(&not_approval, &contexts, &approvers, Some(&pusher), false),
            vec![
                (1, RunsFor::Trigger(pusher.clone())),
                (2, RunsFor::Trigger(pusher.clone())),
                (4, RunsFor::Trigger(pusher.clone()))
            ]
        );
        // Two approvals upstream: the job runs for both approvers.
        let mut two = jobs;
        let mut hold2 = job("hold2", JobKind::Approval, &["deploy"]);
        hold2.status = W::Success;
        two.push(hold2);
        two[4]
            .requires
            .push(("hold2".into(), vec![RequiredStatus::Success]));
        let mut contexts = contexts;
        contexts.push(ctx(&[]));
        let mut approvers = approvers;
        approvers.push(Some(member("bo")));
        assert_eq!(
            to_authorize(&two, &contexts, &approvers, None, false)[2],
            (4, RunsFor::Approvers(vec![member("ana"), member("bo")]))
        );
    }

    #[test]
    fn upstream_and_downstream_follow_requires_through_other_jobs_and_cycles_end() {
        let jobs = vec![
            build("a", &[]),
            build("b", &["a"]),
            build("c", &["b", "missing"]),
            build("d", &[]),
        ];
        assert_eq!(upstream(&jobs, 2), vec![0, 1]);
        assert!(upstream(&jobs, 3).is_empty());
        let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
        let requires: Vec<Vec<String>> = jobs
            .iter()
            .map(|j| j.requires.iter().map(|(n, _)| n.clone()).collect())
            .collect();
        assert_eq!(downstream(&names, &requires, "a"), vec![1, 2]);
        assert!(downstream(&names, &requires, "c").is_empty());
        // A cycle (refused by the compiler, but a stored row is not trusted) ends.
        let cyclic = vec![build("x", &["y"]), build("y", &["x"])];
        assert_eq!(upstream(&cyclic, 0), vec![1]);
        let n = vec!["x".to_owned(), "y".to_owned()];
        let r = vec![vec!["y".to_owned()], vec!["x".to_owned()]];
        assert_eq!(downstream(&n, &r, "x"), vec![1]);
    }
}
