//! The only place that knows a job's order: fetch (in parallel with) the primary's start →
//! services → files → steps → release → the job's end told; or, when something holds the job
//! after its steps (an SSH session), steps → the end told → holds → release. And what decides
//! how a job ended (its time limit, cancel, a panic, a step's status).

use super::bootstrap::{
    ask_user, install_files, main_line, main_process, mounted_main_process, parse_banner,
    ContainerUser,
};
use super::environment::{builtin_env, expand_home};
use super::mounted::{home_key, homes_dir, job_home, new_work_tree, work_tree_target};
use super::registry::{Attachment, Registered, SshSettings};
use super::resources::{Resources, Role};
use super::step_sequence::{run_steps, StepContext};
use super::step_transport::StepTransport;
use super::work_tree::{self, WorkTree};
use super::SetupError;
use super::{fetch_source, machine, millis, services, JobOutcome, JobSpec, Prefetched, Secrets};
use crate::config::{merge_env, ExecutorKind, StepKind};
use crate::executor::{short_id, ContainerSpec, Executor, NetworkMode};
use crate::stream::mask::MaskingSink;
use crate::stream::{ContainerRole, Event, EventSink, JobStatus, StepStatus, StepSummary};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Run a job to the end. Never panics outward and always removes what it made — after
/// success, failure, cancellation, its time limit, or a panic inside a step.
///
/// `cancel` is the caller's (a signal, the coordinator); the job's own time limit cancels a
/// child of it and turns the outcome into `timedout`.
pub async fn run_job(
    executor: Arc<dyn Executor>,
    spec: JobSpec,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> JobOutcome {
    let started = Instant::now();
    let prefetched = spec.context.prefetched.clone();
    let (sink, masking) = masked(sink, &job_secrets(&spec));
    let spec = Arc::new(spec);

    // The job's time limit cancels the job, and only the job.
    let cancel = cancel.child_token();
    let timed_out = Arc::new(AtomicBool::new(false));
    let timer = spec.context.time_limit.map(|limit| {
        let (cancel, timed_out) = (cancel.clone(), Arc::clone(&timed_out));
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            timed_out.store(true, Ordering::SeqCst);
            cancel.cancel();
        })
    });

    sink.emit(&Event::JobStarted {
        id: spec.id.clone(),
        job: spec.plan.name.clone(),
        image: spec.plan.image.clone(),
    });
    tracing::debug!(job = %spec.id, "job started");
    let resources = Resources::new(Arc::clone(&executor), &spec.id, &spec.context.agent_id);
    let result = AssertUnwindSafe(run_inner(
        &executor, &spec, &sink, &cancel, prefetched, &resources,
    ))
    .catch_unwind()
    .await;
    if let Some(t) = timer {
        t.abort();
    }
    let (result, held) = match result {
        Ok(Ok(Ran { outcome, held })) => (Ok(Ok(outcome)), held),
        Ok(Err(e)) => (Ok(Err(e)), None),
        Err(panic) => (Err(panic), None),
    };
    if held.is_none() {
        release(&resources, sink.as_ref()).await;
    }

    let mut outcome = match result {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => not_started(&spec, &e, cancel.is_cancelled()),
        Err(panic) => JobOutcome {
            status: JobStatus::InfrastructureFail,
            steps: Vec::new(),
            error: Some(format!("internal error: {}", panic_text(&panic))),
        },
    };
    if timed_out.load(Ordering::SeqCst) && outcome.status == JobStatus::Canceled {
        outcome.status = JobStatus::TimedOut;
        if let Some(limit) = spec.context.time_limit {
            sink.emit(&Event::Info {
                message: format!(
                    "the job ran out of its time limit ({}) and was stopped",
                    crate::stream::format_duration(millis(limit))
                ),
            });
        }
    }
    sink.emit(&Event::JobFinished {
        job: spec.plan.name.clone(),
        status: outcome.status,
        duration_ms: millis(started.elapsed()),
        steps: outcome.steps.clone(),
        error: outcome.error.clone(),
    });
    // A held job has told its end at once (the coordinator reports it, dependants go on);
    // its containers stay for whoever holds them, then go. What their removal says now
    // reaches the operator's log: the job's own log is closed.
    if let Some(held) = held {
        held.attachment.holds_released(&cancel).await;
        drop(held);
        release(&resources, &Discard).await;
    }
    if let Some(m) = &masking {
        // What the masker still holds is what the error text would show: masked already.
        outcome.error = outcome.error.map(|e| m.mask_text(&e));
    }
    outcome
}

/// The request's secrets, and the job's registry passwords: masked like any secret (a literal
/// one in the config too).
fn job_secrets(spec: &JobSpec) -> Secrets {
    let mut secrets = spec.context.secrets.clone();
    let passwords: Vec<String> = std::iter::once(&spec.plan.image_auth)
        .chain(spec.plan.services.iter().map(|s| &s.auth))
        .filter_map(|a| registry_auth(spec, a.as_ref()))
        .map(|a| a.password.into_inner())
        .collect();
    for p in passwords {
        secrets.push("a registry password".to_owned(), p);
    }
    secrets
}

/// The job's sink: `sink` behind a masker when there is anything to mask (secret values and
/// key text never leave the job unmasked, whatever the sink), the masker itself, and a
/// warning on it for each secret too short to mask.
fn masked(
    sink: Arc<dyn EventSink>,
    secrets: &Secrets,
) -> (Arc<dyn EventSink>, Option<Arc<MaskingSink>>) {
    if secrets.is_empty() {
        return (sink, None);
    }
    let masking = Arc::new(MaskingSink::new(sink, secrets.as_slice()));
    for name in masking.unmasked() {
        masking.emit(&Event::Info {
            message: format!(
                "warning: a secret value ({name}) is shorter than {} characters and is not masked",
                crate::stream::mask::MIN_SECRET_LEN
            ),
        });
    }
    (masking.clone(), Some(masking))
}

/// The outcome of a job that failed before its steps: canceled or an infrastructure failure,
/// every step listed as skipped so every consumer sees the whole job.
fn not_started(spec: &JobSpec, e: &SetupError, canceled: bool) -> JobOutcome {
    JobOutcome {
        status: if canceled {
            JobStatus::Canceled
        } else {
            JobStatus::InfrastructureFail
        },
        steps: spec
            .plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepSummary {
                step: i,
                name: s.name.clone(),
                status: StepStatus::Skipped,
                exit_code: None,
                duration_ms: 0,
            })
            .collect(),
        error: Some(e.to_string()),
    }
}

/// Remove everything the job made, telling `sink` what could not be removed.
async fn release(resources: &Resources, sink: &dyn EventSink) {
    let t = Instant::now();
    for (r, e) in resources.release().await {
        tracing::warn!(
            "could not remove the job's {:?} {}: {e}",
            r.role,
            short_id(&r.id)
        );
        sink.emit(&Event::Info {
            message: format!(
                "warning: could not remove the job's {:?} {}: {e}",
                r.role,
                short_id(&r.id)
            ),
        });
    }
    tracing::debug!(ms = millis(t.elapsed()), "resources released");
}

/// A sink for what happens after a job's end was told: nothing more goes to its log.
struct Discard;

impl EventSink for Discard {
    fn emit(&self, _: &Event) {}
}

/// An image's `auth:` with `$VAR` / `${VAR}` taken from the job's variables (project
/// settings, contexts, `--env`), as CircleCI interpolates them.
fn registry_auth(
    spec: &JobSpec,
    auth: Option<&(String, String)>,
) -> Option<crate::executor::RegistryAuth> {
    let (user, password) = auth?;
    let lookup = |k: &str| {
        spec.context
            .env
            .iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    Some(crate::executor::RegistryAuth {
        username: crate::runtime::cmd::subst::subst(user, &lookup),
        password: crate::runtime::cmd::subst::subst(password, &lookup).into(),
    })
}

/// The image's config, pulling it first (its progress shown) when the engine lacks it.
async fn image_info(
    executor: &dyn Executor,
    image: &str,
    auth: Option<&crate::executor::RegistryAuth>,
    sink: &dyn EventSink,
) -> Result<crate::executor::ImageInfo, crate::executor::ExecutorError> {
    let report = super::pull::PullReport::new(image, sink);
    let info = executor
        .image_info(image, auth, &|p| report.observe(p))
        .await?;
    report.finish();
    Ok(info)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a task panicked".to_owned())
}

/// How the job's steps ended, and what holds its containers after them, if anything does.
struct Ran {
    outcome: JobOutcome,
    /// Set when an attached session (or the wait for one) holds the job: the caller tells the
    /// job's end first, then waits for the holds before it releases anything.
    held: Option<Registered>,
}

/// The primary container, once it is up with the job's files in it.
struct Primary {
    container: String,
    user: ContainerUser,
    /// The user steps run as (`None`: the container's own).
    step_user: Option<String>,
    /// The image's own `ENV`, as `KEY=VALUE`.
    image_env: Vec<String>,
    services: Option<services::Services>,
    /// The main process's step runner, when it could start.
    runner: Option<StepTransport>,
    /// The working directory prepared on the host and mounted at the job's working
    /// directory, when the checkout goes there without a copy.
    work_tree: Option<Arc<WorkTree>>,
}

/// Start → steps → what holds the job: the phases in order.
async fn run_inner(
    executor: &Arc<dyn Executor>,
    spec: &Arc<JobSpec>,
    sink: &Arc<dyn EventSink>,
    cancel: &CancellationToken,
    prefetched: Option<Prefetched>,
    resources: &Resources,
) -> Result<Ran, SetupError> {
    let plan = &spec.plan;
    // The fetch runs on a blocking thread while the engine creates the containers: the two
    // slowest parts of a job's start overlap.
    let fetch = start_fetch(spec, sink, prefetched.is_some());

    let t = Instant::now();
    let steps_done = CancellationToken::new();
    // Stop watching services when this function returns, however it returns.
    let _stop_watching = steps_done.clone().drop_guard();
    let engine = job_engine(spec, resources)?;
    let primary = match &plan.executor {
        ExecutorKind::Machine => {
            start_machine(executor, spec, sink, resources, engine.as_deref(), t).await?
        }
        ExecutorKind::Docker => {
            start_docker(
                executor,
                spec,
                sink,
                resources,
                engine.as_deref(),
                &steps_done,
                t,
            )
            .await?
        }
    };
    tracing::debug!(ms = millis(t.elapsed()), "files installed");
    let workdir = expand_home(&plan.working_directory, &primary.user.home);

    let checkout = match fetch {
        None => prefetched,
        Some(handle) => {
            let fetched = tokio::select! {
                r = handle => r.map_err(|e| SetupError::Prepare(format!("checkout task failed: {e}")))?,
                () = cancel.cancelled() => return Err(SetupError::Canceled),
            };
            Some(fetched?)
        }
    };

    let env = job_env(spec, &primary, &workdir, checkout.as_ref());
    let attached = attach(spec, sink, &primary, &workdir, &env);
    let Primary {
        container,
        user,
        step_user,
        services,
        runner,
        work_tree,
        ..
    } = primary;
    let ctx = Arc::new(StepContext {
        executor: Arc::clone(executor),
        spec: Arc::clone(spec),
        sink: Arc::clone(sink),
        cancel: cancel.clone(),
        container,
        user,
        step_user,
        workdir,
        base_env: env,
        checkout,
        engine,
        runner,
        work_tree,
    });
    let outcome = run_steps(&ctx).await;
    steps_done.cancel();
    let held = after_steps(sink.as_ref(), attached, services.as_ref(), &outcome);
    Ok(Ran { outcome, held })
}

/// The checkout's fetch, started when a `checkout` step needs one and none was fetched
/// before the job.
fn start_fetch(
    spec: &Arc<JobSpec>,
    sink: &Arc<dyn EventSink>,
    prefetched: bool,
) -> Option<tokio::task::JoinHandle<Result<Prefetched, SetupError>>> {
    let needs_checkout = spec
        .plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Checkout { .. }));
    if !needs_checkout || prefetched {
        return None;
    }
    spec.context.source.clone().map(|src| {
        let spec = Arc::clone(spec);
        let sink = Arc::clone(sink);
        tokio::task::spawn_blocking(move || fetch_source(&spec.context.access, &src, sink.as_ref()))
    })
}

/// A `machine` job's system booted, its step user known and its files installed. No main
/// process of ours (systemd is PID 1): no runner, steps go through exec.
async fn start_machine(
    executor: &Arc<dyn Executor>,
    spec: &JobSpec,
    sink: &Arc<dyn EventSink>,
    resources: &Resources,
    engine: Option<&crate::engine_proxy::JobEngine>,
    t: Instant,
) -> Result<Primary, SetupError> {
    let plan = &spec.plan;
    let image = machine::local_image(spec, &plan.image)?;
    // Missing image: an error before anything is created.
    let info = image_info(executor.as_ref(), &image, None, sink.as_ref()).await?;
    let id = machine::boot(executor.as_ref(), resources, spec, &image, engine).await?;
    tracing::debug!(ms = millis(t.elapsed()), "machine booted");
    sink.emit(&Event::ContainerStarted {
        role: ContainerRole::Primary,
        name: "primary".to_owned(),
        image: image.clone(),
        container: id.clone(),
    });
    let step_user = plan
        .user
        .clone()
        .unwrap_or_else(|| machine::MACHINE_USER.to_owned());
    let user = ask_user(executor.as_ref(), &id, Some(&step_user)).await?;
    install_files_into(executor.as_ref(), spec, &id, None, &user, sink, false).await?;
    Ok(Primary {
        container: id,
        user,
        step_user: Some(step_user),
        image_env: info.env,
        services: None,
        runner: None,
        work_tree: None,
    })
}

/// A docker job's images inspected (pulled when missing), its primary container created (or
/// taken ready-made) and started, its services up, its files installed.
async fn start_docker(
    executor: &Arc<dyn Executor>,
    spec: &JobSpec,
    sink: &Arc<dyn EventSink>,
    resources: &Resources,
    engine: Option<&crate::engine_proxy::JobEngine>,
    steps_done: &CancellationToken,
    t: Instant,
) -> Result<Primary, SetupError> {
    let plan = &spec.plan;
    if let Some(why) = &plan.unsupported {
        return Err(SetupError::Unsupported(why.clone()));
    }
    let limits = super::limits::for_plan(plan, spec.context.limits).map(|(l, line)| {
        sink.emit(&Event::Info { message: line });
        l
    });
    let role = Role::Primary;
    let mut cspec = primary_container(spec, resources, engine, limits);
    // Where the working directory is mounted depends on the image's user: inspect first.
    let wants_tree = executor.shares_host_paths()
        && plan
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Checkout { .. }));
    let (mut info, mut target) = (None, None);
    if wants_tree {
        let i = inspect_images(executor.as_ref(), spec, sink.as_ref()).await?;
        tracing::debug!(ms = millis(t.elapsed()), "images inspected");
        target = work_tree_target(executor.as_ref(), spec, &i, resources).await;
        info = Some(i);
    }
    // The spec names where the working directory is mounted; its host side is the
    // container's own (a ready container's came with it, a fresh one's is made below).
    cspec.work_tree = target.clone().map(|t| (String::new(), t));
    // On a local engine the in-job executable is the main process from its start, mounted
    // from a copy of the container's own (made with a ready container, or below).
    let shell_entrypoint = cspec.entrypoint.clone();
    if executor.shares_host_paths() {
        cspec.runtime = Some(String::new());
        cspec.entrypoint = Some(mounted_main_process());
    }
    // A ready container only for a job that owns nothing else on the engine (no services
    // beside it, no engine proxy): then the spec alone says what it is.
    let poolable = plan.services.is_empty() && engine.is_none();
    let ready_source = spec.context.ready.as_ref().filter(|_| poolable);
    // What the next job may find ready: this spec as it stands, before the fresh
    // container's own directory and executable are added to it.
    let pool_spec = cspec.clone();
    let mut tree: Option<(Arc<WorkTree>, String)> = None;
    let taken = ready_source.and_then(|r| r.take(&cspec));
    let (info, id, main, banner) = match taken {
        Some(r) => {
            resources.track(role, &r.id);
            tracing::debug!(ms = millis(t.elapsed()), "took a ready container");
            if let Some(dir) = r.runtime {
                resources.track_work_tree(Arc::new(dir));
            }
            if let (Some(t), Some(target)) = (r.work_tree, target) {
                let t = Arc::new(t);
                resources.track_work_tree(Arc::clone(&t));
                tree = Some((t, target));
            }
            let info = match info {
                Some(i) => i,
                None => inspect_images(executor.as_ref(), spec, sink.as_ref()).await?,
            };
            (info, r.id, r.main, r.banner)
        }
        None => {
            cspec.work_tree = None;
            if let Some(target) = target {
                if let Some(t) = new_work_tree(spec, resources) {
                    cspec.work_tree = Some((t.path().display().to_string(), target.clone()));
                    tree = Some((t, target));
                }
            }
            if cspec.runtime.is_some() {
                match work_tree::runtime_copy(&spec.context.agent_id, &spec.id) {
                    Ok((dir, file)) => {
                        tracing::debug!(ms = millis(t.elapsed()), "in-job executable copied");
                        resources.track_work_tree(Arc::new(dir));
                        cspec.runtime = Some(file.display().to_string());
                    }
                    Err(e) => {
                        tracing::debug!(
                            "no copy of the in-job executable to mount ({e}): the shell main process"
                        );
                        cspec.runtime = None;
                        cspec.entrypoint = shell_entrypoint;
                    }
                }
            }
            // A job with services inspects every image before it creates anything (a
            // missing service image fails it with nothing made).
            let info = match info {
                None if !plan.services.is_empty() => {
                    Some(inspect_images(executor.as_ref(), spec, sink.as_ref()).await?)
                }
                i => i,
            };
            let (info, id) = match info {
                Some(i) => {
                    let id = executor.create(&cspec).await?;
                    resources.track(role, &id);
                    (i, id)
                }
                None => {
                    // One image, and nothing the create needs comes from its inspection: the
                    // two overlap. An image the engine lacks fails the create and is pulled
                    // by the inspection; the create then goes again.
                    let (inspected, created) = tokio::join!(
                        inspect_images(executor.as_ref(), spec, sink.as_ref()),
                        executor.create(&cspec)
                    );
                    if let Ok(id) = &created {
                        resources.track(role.clone(), id);
                    }
                    let i = inspected?;
                    let id = match created {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::debug!("create before the image was there: {e}; again");
                            let id = executor.create(&cspec).await?;
                            resources.track(role, &id);
                            id
                        }
                    };
                    (i, id)
                }
            };
            tracing::debug!(ms = millis(t.elapsed()), "container created");
            let mut main = executor.start(&id).await?;
            let banner = main_line(&mut main.output, "bosun-ready").await?;
            tracing::debug!(ms = millis(t.elapsed()), "container started");
            (info, id, main, banner)
        }
    };
    if let Some(r) = ready_source {
        r.used(&pool_spec);
    }
    let mounted_runtime = cspec.runtime.is_some();
    sink.emit(&Event::ContainerStarted {
        role: ContainerRole::Primary,
        name: "primary".to_owned(),
        image: plan.image.clone(),
        container: id.clone(),
    });
    let user = parse_banner(&banner)?;
    let image_user = plan.user.as_deref().or(info.user.as_deref());
    // Only a home the image gave is kept for later jobs: one the job's own `environment:`
    // set is the job's, and would misplace another job's mount (`HOME=/usr/bin` with a
    // working directory of `~` would hide the next job's `/usr/bin`).
    if job_home(plan).is_none() {
        work_tree::learn_home(home_key(&plan.image, &info), image_user, &user.home);
        if tree.is_some() {
            if let (Some(dir), Some(id)) = (homes_dir(spec), info.id.as_deref()) {
                work_tree::store_home(&dir, id, image_user.unwrap_or("root"), &user.home);
            }
        }
    }
    if let Some((t, target)) = tree.take() {
        let workdir = expand_home(&plan.working_directory, &user.home);
        let owned = (target == workdir)
            .then(|| {
                let (uid, gid) = (u32::try_from(user.uid), u32::try_from(user.gid));
                match (uid, gid) {
                    (Ok(uid), Ok(gid)) => work_tree::own_top(t.path(), uid, gid).ok(),
                    _ => None,
                }
            })
            .flatten();
        if owned.is_some() {
            tree = Some((t, target));
        } else {
            // Mounted elsewhere than the working directory turned out to be: unused (the
            // checkout goes in as a tar stream), removed with the job.
            tracing::debug!(%target, %workdir, "the prepared working directory is not the job's: the checkout is copied in");
        }
    }
    let services = if plan.services.is_empty() {
        None
    } else {
        Some(
            services::start_all(
                executor,
                resources,
                &id,
                &plan.services,
                sink,
                steps_done,
                limits,
            )
            .await?,
        )
    };
    let runner = install_files_into(
        executor.as_ref(),
        spec,
        &id,
        Some(main),
        &user,
        sink,
        mounted_runtime,
    )
    .await?;
    Ok(Primary {
        container: id,
        user,
        step_user: plan.user.clone(),
        image_env: info.env,
        services,
        runner,
        work_tree: tree.map(|(t, _)| t),
    })
}

/// Every image of a docker job (pulled when the engine lacks it), the primary's config: a
/// missing service image is an error before anything runs.
async fn inspect_images(
    executor: &dyn Executor,
    spec: &JobSpec,
    sink: &dyn EventSink,
) -> Result<crate::executor::ImageInfo, SetupError> {
    let plan = &spec.plan;
    let info = image_info(
        executor,
        &plan.image,
        registry_auth(spec, plan.image_auth.as_ref()).as_ref(),
        sink,
    )
    .await?;
    for svc in &plan.services {
        image_info(
            executor,
            &svc.image,
            registry_auth(spec, svc.auth.as_ref()).as_ref(),
            sink,
        )
        .await
        .map_err(|e| SetupError::Service {
            service: svc.name.clone().unwrap_or_else(|| svc.image.clone()),
            image: svc.image.clone(),
            reason: e.to_string(),
        })?;
    }
    Ok(info)
}

/// A docker job's primary container: its image and user, our main process, the engine
/// proxy's socket when the job has one, the job's network and limits.
fn primary_container(
    spec: &JobSpec,
    resources: &Resources,
    engine: Option<&crate::engine_proxy::JobEngine>,
    limits: Option<crate::executor::Limits>,
) -> ContainerSpec {
    let plan = &spec.plan;
    let (engine_binds, engine_env) = match engine {
        Some(e) => (
            vec![(
                e.dir().display().to_string(),
                crate::engine_proxy::CONTAINER_DIR.to_owned(),
            )],
            vec![format!(
                "DOCKER_HOST={}",
                crate::engine_proxy::docker_host()
            )],
        ),
        None => (Vec::new(), Vec::new()),
    };
    ContainerSpec {
        image: plan.image.clone(),
        user: plan.user.clone(),
        env: plan
            .image_environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(engine_env)
            .collect(),
        binds: engine_binds,
        labels: resources.labels(&Role::Primary),
        network: spec
            .context
            .network
            .clone()
            .map_or(NetworkMode::Default, NetworkMode::Named),
        entrypoint: Some(main_process()),
        cmd: Some(Vec::new()),
        stdin: true,
        init: true,
        unlogged: true,
        extra_hosts: services::host_entries(&plan.services),
        limits,
        ..Default::default()
    }
}

/// The job's environment under the steps' own: the project's and its contexts' variables
/// first (CircleCI's lowest layer), the built-ins over them, then the image's own ENV and
/// `environment:` (so an image may override a built-in), then executor/job. Step env and
/// `--env` come last, per step.
fn job_env(
    spec: &JobSpec,
    primary: &Primary,
    workdir: &str,
    checkout: Option<&Prefetched>,
) -> Vec<(String, String)> {
    let plan = &spec.plan;
    let mut env = spec.context.project_env.clone();
    merge_env(&mut env, spec.context_env.clone());
    merge_env(
        &mut env,
        builtin_env(spec, &primary.user, workdir, checkout.map(|c| &c.outcome)),
    );
    merge_env(
        &mut env,
        primary
            .image_env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    merge_env(&mut env, plan.image_environment.clone());
    merge_env(&mut env, plan.environment.clone());
    env
}

/// The running job in the registry, for others (SSH sessions, a scoped engine) to attach to.
struct Attached {
    registered: Registered,
    /// The SSH gateway that lets sessions in, when there is one.
    gateway: Option<Arc<SshSettings>>,
}

/// Register the job for others to attach to, and say how to reach it over SSH.
fn attach(
    spec: &JobSpec,
    sink: &Arc<dyn EventSink>,
    primary: &Primary,
    workdir: &str,
    env: &[(String, String)],
) -> Attached {
    let mut attach_env = env.to_vec();
    merge_env(&mut attach_env, spec.context.env.clone());
    let ssh = spec.context.registry.ssh_for(&spec.id);
    let user = &primary.user;
    let mut attachment = Attachment::new(
        &spec.id,
        &primary.container,
        primary.step_user.clone(),
        user.uid,
        user.gid,
        &user.home,
        workdir,
        attach_env,
    );
    if let Some((gateway, keys)) = &ssh {
        attachment = attachment.with_ssh_keys(Arc::clone(keys));
        for message in gateway.announce(&spec.id, keys.len()) {
            sink.emit(&Event::Info { message });
        }
    }
    Attached {
        registered: spec.context.registry.register(attachment),
        gateway: ssh.map(|(gateway, _)| gateway),
    }
}

/// After the last step: the services' output when the job went wrong, the wait for an SSH
/// session, and what holds the job then.
fn after_steps(
    sink: &dyn EventSink,
    attached: Attached,
    services: Option<&services::Services>,
    outcome: &JobOutcome,
) -> Option<Registered> {
    let Attached {
        registered,
        gateway,
    } = attached;
    registered.attachment.steps_done.cancel();
    if outcome.status != JobStatus::Success {
        if let Some(s) = services {
            s.report_output(sink);
        }
    }
    if let Some(gateway) = &gateway {
        registered
            .attachment
            .wait_for_sessions(Instant::now() + gateway.wait);
    }
    let until = registered.attachment.held_until()?;
    sink.emit(&Event::Info {
        message: format!(
            "the job's containers are held for an attached session (at most {})",
            crate::stream::format_duration(millis(until.saturating_duration_since(Instant::now())))
        ),
    });
    Some(registered)
}

/// The job's engine proxy, when the job may use Docker (`setup_remote_docker`, `machine`) and
/// this runner offers one: its socket directory made and handed to the job's resources.
/// Nothing listens until the step (or a machine's boot) serves it.
fn job_engine(
    spec: &JobSpec,
    resources: &Resources,
) -> Result<Option<Arc<crate::engine_proxy::JobEngine>>, SetupError> {
    let remote = spec.plan.steps.iter().filter_map(|s| match s.kind {
        StepKind::SetupRemoteDocker {
            docker_layer_caching,
            ..
        } => Some(docker_layer_caching),
        _ => None,
    });
    let (mut wants, mut layer_caching) = (false, false);
    for dlc in remote {
        wants = true;
        layer_caching |= dlc;
    }
    wants |= matches!(spec.plan.executor, ExecutorKind::Machine);
    let Some(settings) = spec.context.engine.as_ref().filter(|_| wants) else {
        return Ok(None);
    };
    let scope = crate::engine_proxy::Scope {
        job: spec.id.clone(),
        agent: spec.context.agent_id.clone(),
        limits: settings.limits.clone(),
    };
    let engine = crate::engine_proxy::JobEngine::prepare(settings, scope, layer_caching)
        .map_err(|e| SetupError::Prepare(e.to_string()))?;
    let engine = Arc::new(engine);
    resources.track_engine(Arc::clone(&engine));
    Ok(Some(engine))
}

async fn install_files_into(
    executor: &dyn Executor,
    spec: &JobSpec,
    container: &str,
    main: Option<crate::executor::Attached>,
    user: &ContainerUser,
    sink: &Arc<dyn EventSink>,
    mounted_runtime: bool,
) -> Result<Option<StepTransport>, SetupError> {
    let workdir = expand_home(&spec.plan.working_directory, &user.home);
    let runner = install_files(
        executor,
        spec,
        container,
        main,
        user,
        &workdir,
        mounted_runtime,
    )
    .await?;
    sink.emit(&Event::Info {
        message: format!(
            "Prepared {} for {} (working directory {workdir}{})",
            if spec.context.access.keys.is_empty() {
                "no SSH keys"
            } else {
                "~/.ssh"
            },
            match spec.plan.user.as_deref() {
                Some(name) => format!("user {name} ({}:{})", user.uid, user.gid),
                None => format!("uid {}:{}", user.uid, user.gid),
            },
            match spec.context.access.keys.len() {
                0 => String::new(),
                n => format!(", {n} key{}", if n == 1 { "" } else { "s" }),
            }
        ),
    });
    Ok(runner)
}
