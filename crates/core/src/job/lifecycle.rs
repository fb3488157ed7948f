//! The only place that knows a job's order: fetch (in parallel with) the primary's start →
//! services → files → steps → release → the job's end told; or, when something holds the job
//! after its steps (an SSH session), steps → the end told → holds → release. And what decides
//! how a job ended (its time limit, cancel, a panic, a step's status).

use super::bootstrap::{ask_user, install_files, main_line, main_process, parse_banner};
use super::environment::{builtin_env, expand_home};
use super::registry::{Attachment, Registered};
use super::resources::{Resources, Role};
use super::steps::{run_steps, Ctx};
use super::SetupError;
use super::{fetch_source, machine, millis, services, JobOutcome, JobSpec, Prefetched};
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
    // The request's secrets, and registry passwords, masked like any secret (a literal one in
    // the config too).
    let mut secrets = spec.context.secrets.clone();
    let passwords: Vec<String> = std::iter::once(&spec.plan.image_auth)
        .chain(spec.plan.services.iter().map(|s| &s.auth))
        .filter_map(|a| registry_auth(&spec, a.as_ref()))
        .map(|a| a.password)
        .collect();
    for p in passwords {
        secrets.push("a registry password".to_owned(), p);
    }
    let spec = Arc::new(spec);

    // Secret values and key text never leave the job unmasked, whatever the sink.
    let masking =
        (!secrets.is_empty()).then(|| Arc::new(MaskingSink::new(sink.clone(), secrets.as_slice())));
    let sink: Arc<dyn EventSink> = match &masking {
        Some(m) => m.clone(),
        None => sink,
    };
    if let Some(m) = &masking {
        for name in m.unmasked() {
            sink.emit(&Event::Info {
                message: format!(
                    "warning: a secret value ({name}) is shorter than {} characters and is not masked",
                    crate::stream::mask::MIN_SECRET_LEN
                ),
            });
        }
    }

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
        Ok(Ok((o, held))) => (Ok(Ok(o)), held),
        Ok(Err(e)) => (Ok(Err(e)), None),
        Err(panic) => (Err(panic), None),
    };
    if held.is_none() {
        release(&resources, sink.as_ref()).await;
    }

    let mut outcome = match result {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => JobOutcome {
            status: if cancel.is_cancelled() {
                JobStatus::Canceled
            } else {
                JobStatus::InfrastructureFail
            },
            // No step ran; list them so every consumer sees the whole job.
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
        },
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
        password: crate::runtime::cmd::subst::subst(password, &lookup),
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

async fn run_inner(
    executor: &Arc<dyn Executor>,
    spec: &Arc<JobSpec>,
    sink: &Arc<dyn EventSink>,
    cancel: &CancellationToken,
    prefetched: Option<Prefetched>,
    resources: &Resources,
) -> Result<(JobOutcome, Option<Registered>), SetupError> {
    let plan = &spec.plan;
    let needs_checkout = plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Checkout { .. }));

    // The fetch runs on a blocking thread while the engine creates the containers: the two
    // slowest parts of a job's start overlap.
    let fetch = if needs_checkout && prefetched.is_none() {
        spec.context.source.clone().map(|src| {
            let spec = Arc::clone(spec);
            let sink = Arc::clone(sink);
            tokio::task::spawn_blocking(move || {
                fetch_source(&spec.context.access, &src, sink.as_ref())
            })
        })
    } else {
        None
    };

    let t = Instant::now();
    let steps_done = CancellationToken::new();
    // Stop watching services when this function returns, however it returns.
    let _stop_watching = steps_done.clone().drop_guard();
    let engine = job_engine(spec, resources)?;
    let (engine_binds, engine_env) = match &engine {
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
    let (container, user, step_user, image_env, services, runner) = match &plan.executor {
        ExecutorKind::Machine => {
            let image = machine::local_image(spec, &plan.image)?;
            // Missing image: an error before anything is created.
            let info = image_info(executor.as_ref(), &image, None, sink.as_ref()).await?;
            let id = machine::boot(
                executor.as_ref(),
                resources,
                spec,
                &image,
                engine.as_deref(),
            )
            .await?;
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
            (id, user, Some(step_user), info.env, None, None)
        }
        ExecutorKind::Docker => {
            if let Some(why) = &plan.unsupported {
                return Err(SetupError::Unsupported(why.clone()));
            }
            let limits = super::limits::for_plan(plan, spec.context.limits).map(|(l, line)| {
                sink.emit(&Event::Info { message: line });
                l
            });
            // Every image first: a missing service image is an error before anything runs.
            let info = image_info(
                executor.as_ref(),
                &plan.image,
                registry_auth(spec, plan.image_auth.as_ref()).as_ref(),
                sink.as_ref(),
            )
            .await?;
            for svc in &plan.services {
                image_info(
                    executor.as_ref(),
                    &svc.image,
                    registry_auth(spec, svc.auth.as_ref()).as_ref(),
                    sink.as_ref(),
                )
                .await
                .map_err(|e| SetupError::Service {
                    service: svc.name.clone().unwrap_or_else(|| svc.image.clone()),
                    image: svc.image.clone(),
                    reason: e.to_string(),
                })?;
            }
            tracing::debug!(ms = millis(t.elapsed()), "images inspected");
            let role = Role::Primary;
            let cspec = ContainerSpec {
                image: plan.image.clone(),
                user: plan.user.clone(),
                env: plan
                    .image_environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .chain(engine_env.iter().cloned())
                    .collect(),
                binds: engine_binds.clone(),
                labels: resources.labels(&role),
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
            };
            // A ready container only for a job that owns nothing else on the engine (no
            // services beside it, no engine proxy): then the spec alone says what it is.
            let poolable = plan.services.is_empty() && engine.is_none();
            let ready = spec
                .context
                .ready
                .as_ref()
                .filter(|_| poolable)
                .and_then(|r| r.take(&cspec));
            let (id, main, banner) = match ready {
                Some(r) => {
                    resources.track(role, &r.id);
                    tracing::debug!(ms = millis(t.elapsed()), "took a ready container");
                    (r.id, r.main, r.banner)
                }
                None => {
                    let id = executor.create(&cspec).await?;
                    resources.track(role, &id);
                    tracing::debug!(ms = millis(t.elapsed()), "container created");
                    let mut main = executor.start(&id).await?;
                    let banner = main_line(&mut main.output, "bosun-ready").await?;
                    tracing::debug!(ms = millis(t.elapsed()), "container started");
                    (id, main, banner)
                }
            };
            if let Some(r) = spec.context.ready.as_ref().filter(|_| poolable) {
                r.used(&cspec);
            }
            sink.emit(&Event::ContainerStarted {
                role: ContainerRole::Primary,
                name: "primary".to_owned(),
                image: plan.image.clone(),
                container: id.clone(),
            });
            let user = parse_banner(&banner)?;
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
                        &steps_done,
                        limits,
                    )
                    .await?,
                )
            };
            let runner =
                install_files_into(executor.as_ref(), spec, &id, Some(main), &user, sink).await?;
            (id, user, plan.user.clone(), info.env, services, runner)
        }
    };
    if matches!(plan.executor, ExecutorKind::Machine) {
        // No main process of ours (systemd is PID 1): no runner, steps go through exec.
        install_files_into(executor.as_ref(), spec, &container, None, &user, sink).await?;
    }
    tracing::debug!(ms = millis(t.elapsed()), "files installed");
    let workdir = expand_home(&plan.working_directory, &user.home);

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

    // Built-ins first, then the image's own ENV and `environment:` (so an image may override
    // a built-in), then executor/job. Step env and `--env` come last, per step.
    let mut env = builtin_env(spec, &user, &workdir, checkout.as_ref().map(|c| &c.outcome));
    merge_env(
        &mut env,
        image_env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    merge_env(&mut env, plan.image_environment.clone());
    merge_env(&mut env, plan.environment.clone());

    let mut attach_env = env.clone();
    merge_env(&mut attach_env, spec.context.env.clone());
    let ssh = spec.context.registry.ssh_for(&spec.id);
    let mut attachment = Attachment::new(
        &spec.id,
        &container,
        step_user.clone(),
        user.uid,
        user.gid,
        &user.home,
        &workdir,
        attach_env,
    );
    if let Some((gateway, keys)) = &ssh {
        attachment = attachment.with_ssh_keys(Arc::clone(keys));
        for message in crate::gateway::announce(&spec.id, gateway, keys.len()) {
            sink.emit(&Event::Info { message });
        }
    }
    let registered = spec.context.registry.register(attachment);
    let ctx = Ctx {
        container,
        user,
        step_user,
        workdir,
        base_env: env,
        checkout,
        engine,
        runner: runner.map(Arc::new),
    };
    let outcome = run_steps(executor, spec, sink, cancel, &ctx).await;
    steps_done.cancel();
    registered.attachment.steps_done.cancel();
    if outcome.status != JobStatus::Success {
        if let Some(s) = &services {
            s.report_output(sink.as_ref());
        }
    }
    if let Some((gateway, _)) = &ssh {
        registered
            .attachment
            .wait_for_sessions(Instant::now() + gateway.wait);
    }
    // Held (an SSH session, or the wait for one): the caller tells the job's end first, then
    // waits for the holds before it releases anything.
    let Some(until) = registered.attachment.held_until() else {
        return Ok((outcome, None));
    };
    sink.emit(&Event::Info {
        message: format!(
            "the job's containers are held for an attached session (at most {})",
            crate::stream::format_duration(millis(until.saturating_duration_since(Instant::now())))
        ),
    });
    Ok((outcome, Some(registered)))
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
    user: &super::bootstrap::ContainerUser,
    sink: &Arc<dyn EventSink>,
) -> Result<Option<super::runner::StepRunner>, SetupError> {
    let workdir = expand_home(&spec.plan.working_directory, &user.home);
    let runner = install_files(executor, spec, container, main, user, &workdir).await?;
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
