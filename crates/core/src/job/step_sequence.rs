//! The steps of a job, in order: `when:` decides which run, `run` steps go to
//! [`super::shell_step`], `checkout` uploads the fetched tree, the rest are carried out by the
//! agent itself ([`super::builtin`], [`super::extra_keys`]); background steps are stopped when
//! the job ends.

use super::archive::tar_tree_stream;
use super::bootstrap::ContainerUser;
use super::environment::expand_home;
use super::shell_step::{run_step, stop_step};
use super::{builtin, extra_keys, millis, JobOutcome, JobSpec, Prefetched};
use crate::config::{merge_env, StepKind};
use crate::executor::Executor;
use crate::stream::{Event, EventSink, JobStatus, StepStatus, StepSummary, Stream};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A started job: what its steps run with, decided once at start-up.
pub(super) struct StepContext {
    pub executor: Arc<dyn Executor>,
    pub spec: Arc<JobSpec>,
    /// The job's sink (masking already).
    pub sink: Arc<dyn EventSink>,
    /// The job's (its time limit's child of the caller's).
    pub cancel: CancellationToken,
    pub container: String,
    pub user: ContainerUser,
    /// The user steps run as (`None`: the container's own).
    pub step_user: Option<String>,
    pub workdir: String,
    /// Built-ins, image, executor/job env; step env and `--env` are layered per step.
    pub base_env: Vec<(String, String)>,
    pub checkout: Option<Prefetched>,
    /// The job's Docker engine proxy (`setup_remote_docker` starts serving it).
    pub engine: Option<Arc<crate::engine_proxy::JobEngine>>,
    /// The main process's step runner, when it could start (`run` steps go through it).
    pub runner: Option<super::step_transport::StepTransport>,
    /// The working directory prepared on the host, mounted at `workdir`: the checkout is
    /// put there, not uploaded.
    pub work_tree: Option<Arc<super::work_tree::WorkTree>>,
}

/// Where a `checkout` step with `path` puts the tree.
pub(super) fn checkout_dest(path: Option<&str>, workdir: &str, home: &str) -> String {
    match path {
        None => workdir.to_owned(),
        Some(p) if p.starts_with('/') || p.starts_with('~') => expand_home(p, home),
        Some(p) => format!(
            "{}/{}",
            workdir.trim_end_matches('/'),
            p.trim_start_matches("./")
        ),
    }
}

pub(super) async fn run_steps(ctx: &Arc<StepContext>) -> JobOutcome {
    let (executor, spec, sink, cancel) = (&ctx.executor, &ctx.spec, &ctx.sink, &ctx.cancel);
    let mut summaries: Vec<StepSummary> = Vec::new();
    let mut failed = false;
    let mut status = JobStatus::Success;
    let mut background: Vec<Background> = Vec::new();
    let mut halted = false;

    for (i, step) in spec.plan.steps.iter().enumerate() {
        let skipped = StepSummary {
            step: i,
            name: step.name.clone(),
            status: StepStatus::Skipped,
            exit_code: None,
            duration_ms: 0,
        };
        // store_artifacts / store_test_results run after a failed step too (not after a
        // timeout or cancel): the results of a red build are what people need.
        let when = match &step.kind {
            StepKind::StoreArtifacts { .. } | StepKind::StoreTestResults { .. }
                if step.when == crate::config::When::OnSuccess && status == JobStatus::Failed =>
            {
                crate::config::When::Always
            }
            _ => step.when,
        };
        // After `circleci step halt` only `when: always` steps still run.
        let halted_away = halted && when != crate::config::When::Always;
        if cancel.is_cancelled() || !when.should_run(failed) || halted_away {
            sink.emit(&Event::StepFinished(skipped.clone()));
            summaries.push(skipped);
            continue;
        }
        let background_step = matches!(&step.kind, StepKind::Run(r) if r.background);
        sink.emit(&Event::StepStarted {
            step: i,
            name: step.name.clone(),
            background: background_step,
        });
        let t0 = Instant::now();
        let summary = match &step.kind {
            StepKind::Checkout { path } => {
                checkout_step(ctx, i, &step.name, path.as_deref(), t0).await
            }
            StepKind::Run(_) => {
                let control = Arc::new(StepControl::default());
                let task = {
                    let (ctx, step, control) =
                        (Arc::clone(ctx), step.clone(), Arc::clone(&control));
                    tokio::spawn(async move { run_step(&ctx, i, &step, &control).await })
                };
                if background_step {
                    background.push(Background {
                        i,
                        name: step.name.clone(),
                        t0,
                        task,
                        control,
                    });
                    continue;
                }
                match task.await {
                    Ok(s) => s,
                    Err(e) => {
                        // A panic in a step's task fails the step and the job; cleanup goes on.
                        sink.emit(&Event::Info {
                            message: format!("internal error in step {}: {e}", i + 1),
                        });
                        StepSummary {
                            step: i,
                            name: step.name.clone(),
                            status: StepStatus::Failed,
                            exit_code: None,
                            duration_ms: millis(t0.elapsed()),
                        }
                    }
                }
            }
            other => {
                let say = |line: String| {
                    sink.emit(&Event::Output {
                        step: i,
                        stream: Stream::Stdout,
                        data: Bytes::from(line + "\n"),
                    })
                };
                let result = builtin_step(ctx, other, &say).await;
                if let Err(e) = &result {
                    say(format!("Error: {e}"));
                }
                StepSummary {
                    step: i,
                    name: step.name.clone(),
                    status: if result.is_ok() {
                        StepStatus::Success
                    } else {
                        StepStatus::Failed
                    },
                    exit_code: None,
                    duration_ms: millis(t0.elapsed()),
                }
            }
        };
        tracing::debug!(step = i, ms = summary.duration_ms, "step finished");
        sink.emit(&Event::StepFinished(summary.clone()));
        // Asked only when a later step would be skipped by a halt: the last step (and one
        // followed only by `when: always` steps) costs no round trip; the runner's answer
        // came with the step's exit, the engine is asked otherwise.
        let halt_matters = spec.plan.steps[i + 1..]
            .iter()
            .any(|s| s.when != crate::config::When::Always);
        if !halted
            && halt_matters
            && summary.status == StepStatus::Success
            && matches!(step.kind, StepKind::Run(_))
            && match ctx.runner.as_ref().and_then(|r| r.halt_seen()) {
                // The runner looked when the step ended: no round trip.
                Some(seen) => seen,
                None => halt_requested(executor.as_ref(), &ctx.container, &spec.id).await,
            }
        {
            halted = true;
            sink.emit(&Event::Info {
                message: format!(
                    "`circleci step halt` in step {}: the job ends successfully; the steps after it are skipped (`when: always` steps still run)",
                    i + 1
                ),
            });
        }
        match summary.status {
            StepStatus::Success | StepStatus::Skipped | StepStatus::Stopped => {}
            StepStatus::Failed => {
                failed = true;
                if status == JobStatus::Success {
                    status = JobStatus::Failed;
                }
            }
            StepStatus::TimedOut => {
                failed = true;
                if status == JobStatus::Success {
                    status = JobStatus::TimedOut;
                }
            }
            StepStatus::Canceled => {
                failed = true;
                status = JobStatus::Canceled;
            }
        }
        summaries.push(summary);
    }

    // Background steps end with the job: stop what still runs, report each once.
    for Background {
        i,
        name,
        t0,
        task,
        control,
    } in background
    {
        if !task.is_finished() {
            control
                .stopped_by_job
                .store(true, std::sync::atomic::Ordering::SeqCst);
            stop_step(
                executor.as_ref(),
                &ctx.container,
                &spec.id,
                i,
                spec.context.kill_grace,
            )
            .await;
        }
        let summary = match tokio::time::timeout(
            spec.context.kill_grace + Duration::from_secs(5),
            task,
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => StepSummary {
                step: i,
                name,
                status: StepStatus::Stopped,
                exit_code: None,
                duration_ms: millis(t0.elapsed()),
            },
        };
        sink.emit(&Event::StepFinished(summary.clone()));
        summaries.push(summary);
    }
    summaries.sort_by_key(|s| s.step);
    if cancel.is_cancelled() {
        status = JobStatus::Canceled;
    }
    JobOutcome {
        status,
        steps: summaries,
        error: None,
    }
}

/// Did the step run `circleci step halt` (which leaves a file in the scratch directory)? One
/// archive request, answered "not found" in the usual case.
async fn halt_requested(executor: &dyn Executor, container: &str, job_id: &str) -> bool {
    let path = format!(
        "{}/{}",
        super::bootstrap::scratch_dir(job_id),
        crate::runtime::cmd::HALT_FILE
    );
    matches!(executor.download_tar(container, &path).await, Ok(Some(_)))
}

/// Caches, workspaces, artifacts, test results, extra keys: the steps the agent carries out
/// itself against the container and the local store.
async fn builtin_step(
    ctx: &StepContext,
    kind: &StepKind,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), String> {
    let (executor, spec) = (ctx.executor.as_ref(), &ctx.spec);
    let mut env = ctx.base_env.clone();
    merge_env(&mut env, spec.context.env.clone());
    let outcome = ctx.checkout.as_ref().map(|c| &c.outcome);
    let b = builtin::Ctx {
        executor,
        container: &ctx.container,
        home: &ctx.user.home,
        workdir: &ctx.workdir,
        env: &env,
        branch: outcome.and_then(|o| o.branch.as_deref()).unwrap_or(""),
        revision: outcome.map(|o| o.sha.as_str()).unwrap_or(""),
        build_num: spec.context.build_num,
        store: &spec.context.store,
        workspace: &spec.context.workspace,
        job_id: &spec.id,
        job_name: &spec.plan.name,
        say,
        mounted: ctx.work_tree.as_ref().and_then(|t| {
            Some(super::in_place::Mounted {
                host: t.path().to_path_buf(),
                workdir: ctx.workdir.clone(),
                uid: u32::try_from(ctx.user.uid).ok()?,
                gid: u32::try_from(ctx.user.gid).ok()?,
            })
        }),
    };
    match kind {
        StepKind::SaveCache { key, paths, .. } => b.save_cache(key, paths).await,
        StepKind::RestoreCache { keys } => b.restore_cache(keys).await,
        StepKind::PersistToWorkspace { root, paths } => b.persist_to_workspace(root, paths).await,
        StepKind::AttachWorkspace { at } => b.attach_workspace(at).await,
        StepKind::StoreArtifacts { path, destination } => {
            b.store_artifacts(path, destination.as_deref()).await
        }
        StepKind::StoreTestResults { path } => b.store_test_results(path).await,
        StepKind::AddSshKeys { fingerprints } => {
            extra_keys::add_ssh_keys(ctx, fingerprints, say).await
        }
        StepKind::SetupRemoteDocker {
            docker_layer_caching,
            version,
        } => match &ctx.engine {
            Some(engine) => {
                say("Allocating a remote Docker Engine".to_owned());
                engine.serve().map_err(|e| e.to_string())?;
                say(format!(
                    "Remote Docker engine created: DOCKER_HOST={} (this agent's engine, scoped to the job: it sees and removes only what the job makes)",
                    crate::engine_proxy::docker_host()
                ));
                if let Some(v) = version {
                    say(format!("version: {v} was asked for; jobs get this agent's engine, whatever its version (`docker version` shows it)"));
                }
                if *docker_layer_caching {
                    say(if engine.keeps_images() {
                        "layer cache: the images this job builds stay on the agent's engine, and later jobs reuse their layers".to_owned()
                    } else {
                        "layer cache: layers of the images already on the agent's engine are reused; the images this job builds are removed at its end (the agent does not keep images: engine_keep_images)".to_owned()
                    });
                }
                say("As on CircleCI the engine is remote: bind mounts of the job's files do not work (use docker cp or a volume), and ports of its containers are reached at the engine's address, not localhost".to_owned());
                Ok(())
            }
            None => Err("setup_remote_docker: this runner offers no Docker engine to jobs (its engine settings could not be read; see the agent's log)".to_owned()),
        },
        StepKind::Checkout { .. } | StepKind::Run(_) => Ok(()),
    }
}

/// A background step: it runs beside the next ones and is stopped when the job ends.
struct Background {
    i: usize,
    name: String,
    t0: Instant,
    task: tokio::task::JoinHandle<StepSummary>,
    control: Arc<StepControl>,
}

#[derive(Default)]
pub(super) struct StepControl {
    pub(super) stopped_by_job: std::sync::atomic::AtomicBool,
}

async fn checkout_step(
    ctx: &StepContext,
    i: usize,
    name: &str,
    path: Option<&str>,
    t0: Instant,
) -> StepSummary {
    let (executor, spec, sink) = (ctx.executor.as_ref(), &ctx.spec, &ctx.sink);
    let say = |msg: String| {
        sink.emit(&Event::Output {
            step: i,
            stream: Stream::Stdout,
            data: Bytes::from(msg + "\n"),
        })
    };
    let status = match &ctx.checkout {
        None => {
            say(match &spec.context.source {
                None => "No repository to check out: run bosun execute inside a git repository, or give --repo".to_owned(),
                Some(_) => "The checkout was not fetched".to_owned(),
            });
            StepStatus::Failed
        }
        Some(Prefetched { dir, outcome }) => {
            let dest = checkout_dest(path, &ctx.workdir, &ctx.user.home);
            let src = dir.path().join("repo");
            // Written on the host only while no step of the job has run a command (none
            // could have planted a link, and none runs beside the writes) and the directory
            // is as it was made; else through the engine, in the container's own view.
            // A person may SSH into the job meanwhile: the container is paused while the
            // directory is checked and written, so that no command of theirs runs beside.
            let no_code_yet = !spec.plan.steps[..i.min(spec.plan.steps.len())]
                .iter()
                .any(|s| matches!(s.kind, StepKind::Run(_)));
            let candidate = ctx
                .work_tree
                .as_ref()
                .filter(|_| dest == ctx.workdir && no_code_yet);
            let paused = match candidate {
                Some(_) if spec.context.registry.ssh_for(&spec.id).is_some() => {
                    match executor.pause(&ctx.container).await {
                        Ok(()) => Some(true),
                        Err(e) => {
                            tracing::debug!("could not pause the container for the checkout: {e}");
                            Some(false)
                        }
                    }
                }
                _ => None,
            };
            let on_host = candidate.filter(|t| paused != Some(false) && t.pristine());
            if ctx.work_tree.is_some() && dest == ctx.workdir && on_host.is_none() {
                tracing::debug!("the working directory is not as it was made, or a step ran before: the checkout goes in through the engine");
            }
            let unpause = || async {
                if paused == Some(true) {
                    if let Err(e) = executor.unpause(&ctx.container).await {
                        tracing::warn!("could not unpause the container after the checkout: {e}");
                    }
                }
            };
            if on_host.is_none() {
                unpause().await;
            }
            if let Some(tree) = on_host {
                let (tree, uid, gid) = (Arc::clone(tree), ctx.user.uid, ctx.user.gid);
                // The fetched tree is this job's alone (no other job of a workflow holds
                // it, no other `checkout` step reads it): moved into place, not copied.
                let checkouts = spec
                    .plan
                    .steps
                    .iter()
                    .filter(|s| matches!(s.kind, StepKind::Checkout { .. }))
                    .count();
                let movable = checkouts == 1 && Arc::strong_count(dir) == 1;
                let filled = tokio::task::spawn_blocking(move || {
                    let (uid, gid) = (
                        u32::try_from(uid).map_err(std::io::Error::other)?,
                        u32::try_from(gid).map_err(std::io::Error::other)?,
                    );
                    if movable {
                        if let Some(f) = super::work_tree::fill_by_move(
                            &src,
                            tree.path(),
                            &tree.shared_objects(),
                            uid,
                            gid,
                        )? {
                            return Ok(f);
                        }
                    }
                    super::work_tree::fill(&src, tree.path(), &tree.shared_objects(), uid, gid)
                })
                .await;
                unpause().await;
                tracing::debug!(
                    ms = millis(t0.elapsed()),
                    "checkout written into the working directory"
                );
                let status = match filled {
                    Ok(Ok(f)) => {
                        let how = if f.by_move {
                            format!("moved, {:.1} MB", (f.moved + f.copied) as f64 / 1e6)
                        } else {
                            format!("{:.1} MB written", f.copied as f64 / 1e6)
                        };
                        say(format!(
                            "Checked out {} {} into {dest}: in place ({how}, {:.1} MB of objects shared read-only with the mirror) in {}",
                            outcome.sha,
                            ref_words(outcome),
                            f.shared as f64 / 1e6,
                            crate::stream::format_duration(millis(t0.elapsed()))
                        ));
                        for (p, sha) in &outcome.submodules {
                            say(format!("  submodule {p} at {sha}"));
                        }
                        StepStatus::Success
                    }
                    Ok(Err(e)) => {
                        say(format!(
                            "Writing the checkout into the working directory failed: {e}"
                        ));
                        StepStatus::Failed
                    }
                    Err(e) => {
                        say(format!(
                            "Writing the checkout into the working directory failed: {e}"
                        ));
                        StepStatus::Failed
                    }
                };
                return StepSummary {
                    step: i,
                    name: name.to_owned(),
                    status,
                    exit_code: None,
                    duration_ms: millis(t0.elapsed()),
                };
            }
            let (stream, producer) = tar_tree_stream(src, dest.clone(), ctx.user.uid, ctx.user.gid);
            let uploaded = executor.upload_tar(&ctx.container, "/", stream).await;
            let produced = producer.await;
            match (uploaded, produced) {
                (Ok(()), Ok(Ok(bytes))) => {
                    say(format!(
                        "Checked out {} {} into {dest}: {:.1} MB uploaded to the container in {}",
                        outcome.sha,
                        ref_words(outcome),
                        bytes as f64 / 1e6,
                        crate::stream::format_duration(millis(t0.elapsed()))
                    ));
                    for (p, sha) in &outcome.submodules {
                        say(format!("  submodule {p} at {sha}"));
                    }
                    StepStatus::Success
                }
                (Err(e), _) => {
                    say(format!("Uploading the checkout failed: {e}"));
                    StepStatus::Failed
                }
                (_, Ok(Err(e))) => {
                    say(format!("Reading the checkout failed: {e}"));
                    StepStatus::Failed
                }
                (_, Err(e)) => {
                    say(format!("Reading the checkout failed: {e}"));
                    StepStatus::Failed
                }
            }
        }
    };
    StepSummary {
        step: i,
        name: name.to_owned(),
        status,
        exit_code: None,
        duration_ms: millis(t0.elapsed()),
    }
}

/// `(branch main)`, `(tag v1)` or `(detached)`.
fn ref_words(outcome: &crate::checkout::CheckoutOutcome) -> String {
    match (&outcome.branch, &outcome.tag) {
        (_, Some(t)) => format!("(tag {t})"),
        (Some(b), None) => format!("(branch {b})"),
        (None, None) => "(detached)".to_owned(),
    }
}
