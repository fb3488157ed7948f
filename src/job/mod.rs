//! One job's lifecycle, and the only place that knows its order:
//! fetch (in parallel with) container start → install keys → steps → remove.
//!
//! `bosun execute` and (later) `bosun agent` both call [`run_job`]; they differ only in the
//! [`EventSink`] they pass.

mod builtin;

use crate::checkout::{self, CheckoutOutcome, CheckoutSpec, Credentials};
use crate::config::{merge_env, JobPlan, RunStep, StepKind};
use crate::executor::{
    Attached, ContainerSpec, ExecSpec, Executor, Output, TarStream, LABEL_AGENT, LABEL_JOB,
};
use crate::ssh::{self, KnownHosts, SshKey, VcsHosts};
use crate::stream::{Event, EventSink, JobStatus, StepStatus, StepSummary, Stream};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

/// Where a job's code comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// As the user wrote it: `git@bitbucket.org:acme/widget.git`, `ssh://…`, or a local path.
    pub url: String,
    /// Branch, tag or SHA; `None` = the remote's HEAD.
    pub reference: Option<String>,
}

/// What opens the job's repositories: keys, trusted host keys, host mappings.
#[derive(Clone)]
pub struct Access {
    /// User key first, then deploy key: the order SSH offers them in.
    pub keys: Vec<SshKey>,
    pub known_hosts: KnownHosts,
    pub vcs_hosts: VcsHosts,
}

/// The pull request a job builds, as the coordinator names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    pub url: String,
    /// From a fork of the project's repository.
    pub fork: bool,
}

pub struct JobSpec {
    /// Unique per run; labels the container.
    pub id: String,
    pub agent_id: String,
    pub plan: JobPlan,
    pub source: Option<Source>,
    pub access: Access,
    /// Highest-precedence variables (`--env`, later the project's settings).
    pub env: Vec<(String, String)>,
    pub network: Option<String>,
    pub build_num: u64,
    /// Grace between TERM and KILL when a step is stopped.
    pub kill_grace: Duration,
    /// A checkout already fetched (when the config itself had to come from the repository).
    pub prefetched: Option<Prefetched>,
    /// Where caches, workspaces and artifacts live.
    pub store: crate::store::Store,
    /// Workspace identity shared by the jobs of one workflow run (the job id when alone).
    pub workspace: String,
    /// Keys only an `add_ssh_keys` step installs (CircleCI's "additional SSH keys").
    pub additional_keys: Vec<SshKey>,
    /// This container's place among the job's `parallelism` nodes (0-based) and their count.
    pub node_index: u32,
    pub node_total: u32,
    /// Set for a pull request build (the agent's jobs only; `bosun execute` has none).
    pub pull_request: Option<PullRequest>,
}

/// A fetched tree waiting to be uploaded by the `checkout` step.
#[derive(Clone)]
pub struct Prefetched {
    /// Shared by the jobs of a workflow run, which all check out the same commit.
    pub dir: Arc<tempfile::TempDir>,
    pub outcome: CheckoutOutcome,
}

#[derive(Debug, Clone)]
pub struct JobOutcome {
    pub status: JobStatus,
    pub steps: Vec<StepSummary>,
    /// Set when the job could not run (infrastructure failure).
    pub error: Option<String>,
}

/// Errors before any step could run: the job is an infrastructure failure, not a red build.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
    #[error(transparent)]
    Checkout(#[from] checkout::CheckoutError),
    #[error("the container could not be prepared: {0}")]
    Prepare(String),
}

/// Per-job scratch directory inside the container (step scripts, pid files).
fn scratch_dir(job_id: &str) -> String {
    format!("/tmp/.bosun-{job_id}")
}

/// Run a job to the end. Never panics outward and always removes the container it made —
/// after success, failure, cancellation, or a panic inside a step.
pub async fn run_job<E: Executor>(
    executor: Arc<E>,
    spec: JobSpec,
    sink: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> JobOutcome {
    let started = Instant::now();
    let mut spec = spec;
    let prefetched = spec.prefetched.take();
    let spec = Arc::new(spec);
    sink.emit(&Event::JobStarted {
        id: spec.id.clone(),
        job: spec.plan.name.clone(),
        image: spec.plan.image.clone(),
    });
    let mut container: Option<String> = None;
    let result = AssertUnwindSafe(run_inner(
        &executor,
        &spec,
        &sink,
        &cancel,
        prefetched,
        &mut container,
    ))
    .catch_unwind()
    .await;
    if let Some(id) = &container {
        let t = Instant::now();
        let removed = executor.remove(id).await;
        tracing::debug!(ms = millis(t.elapsed()), "container removed");
        if let Err(e) = removed {
            sink.emit(&Event::Info {
                message: format!("warning: could not remove container {id}: {e}"),
            });
        }
    }
    let outcome = match result {
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
    sink.emit(&Event::JobFinished {
        job: spec.plan.name.clone(),
        status: outcome.status,
        duration_ms: millis(started.elapsed()),
        steps: outcome.steps.clone(),
        error: outcome.error.clone(),
    });
    outcome
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a task panicked".to_owned())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What the container told us about its user, once, at start.
struct ContainerUser {
    home: String,
    uid: u64,
    gid: u64,
    has_bash: bool,
}

/// Everything decided after setup that the steps need.
struct Ctx {
    container: String,
    user: ContainerUser,
    workdir: String,
    /// Built-ins, image, executor/job env; step env and `--env` are layered per step.
    base_env: Vec<(String, String)>,
    checkout: Option<Prefetched>,
}

async fn run_inner<E: Executor>(
    executor: &Arc<E>,
    spec: &Arc<JobSpec>,
    sink: &Arc<dyn EventSink>,
    cancel: &CancellationToken,
    prefetched: Option<Prefetched>,
    container_slot: &mut Option<String>,
) -> Result<JobOutcome, SetupError> {
    let plan = &spec.plan;
    let needs_checkout = plan
        .steps
        .iter()
        .any(|s| matches!(s.kind, StepKind::Checkout { .. }));

    // The fetch runs on a blocking thread while the engine creates the container: the two
    // slowest parts of a job's start overlap.
    let fetch = if needs_checkout && prefetched.is_none() {
        spec.source.clone().map(|src| {
            let spec = Arc::clone(spec);
            let sink = Arc::clone(sink);
            tokio::task::spawn_blocking(move || fetch_source(&spec.access, &src, sink.as_ref()))
        })
    } else {
        None
    };

    let t = Instant::now();
    let image = executor.image_info(&plan.image).await?;
    tracing::debug!(ms = millis(t.elapsed()), "image inspected");
    let labels = vec![
        (LABEL_JOB.to_owned(), spec.id.clone()),
        (LABEL_AGENT.to_owned(), spec.agent_id.clone()),
    ];
    let container = executor
        .create(&ContainerSpec {
            image: plan.image.clone(),
            user: plan.user.clone(),
            env: plan
                .image_environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            labels,
            network: spec.network.clone(),
            main: vec!["/bin/sh".into(), "-c".into(), MAIN.into()],
        })
        .await?;
    *container_slot = Some(container.clone());
    tracing::debug!(ms = millis(t.elapsed()), "container created");
    let mut main = executor.start(&container).await?;
    let banner = main_line(&mut main.output, "bosun-ready").await?;
    tracing::debug!(ms = millis(t.elapsed()), "container started");
    sink.emit(&Event::Info {
        message: format!(
            "Container {} started from {}",
            short(&container),
            plan.image
        ),
    });
    let user = parse_banner(&banner)?;
    let workdir = expand_home(&plan.working_directory, &user.home);

    let checkout = match fetch {
        None => prefetched,
        Some(handle) => {
            let fetched = tokio::select! {
                r = handle => r.map_err(|e| SetupError::Prepare(format!("checkout task failed: {e}")))?,
                () = cancel.cancelled() => return Err(SetupError::Prepare("canceled during checkout".into())),
            };
            Some(fetched?)
        }
    };

    // Built-ins first, then the image's own ENV and `environment:` (so an image may override
    // a built-in), then executor/job. Step env and `--env` come last, per step.
    let mut env = builtin_env(spec, &user, &workdir, checkout.as_ref().map(|c| &c.outcome));
    merge_env(
        &mut env,
        image
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    merge_env(&mut env, plan.image_environment.clone());
    merge_env(&mut env, plan.environment.clone());

    install_files(executor.as_ref(), spec, &container, main, &user, &workdir).await?;
    tracing::debug!(ms = millis(t.elapsed()), "files installed");
    sink.emit(&Event::Info {
        message: format!(
            "Prepared {} for {} (working directory {workdir}{})",
            if spec.access.keys.is_empty() {
                "no SSH keys"
            } else {
                "~/.ssh"
            },
            user_display(plan.user.as_deref(), &user),
            match spec.access.keys.len() {
                0 => String::new(),
                n => format!(", {n} key{}", if n == 1 { "" } else { "s" }),
            }
        ),
    });

    let ctx = Ctx {
        container,
        user,
        workdir,
        base_env: env,
        checkout,
    };
    Ok(run_steps(executor, spec, sink, cancel, &ctx).await)
}

fn user_display(configured: Option<&str>, u: &ContainerUser) -> String {
    match configured {
        Some(name) => format!("user {name} ({}:{})", u.uid, u.gid),
        None => format!("uid {}:{}", u.uid, u.gid),
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Fetch `src` into a fresh temporary directory with the job's keys and host keys.
pub fn fetch_source(
    access: &Access,
    src: &Source,
    sink: &dyn EventSink,
) -> Result<Prefetched, SetupError> {
    let dir = tempfile::Builder::new()
        .prefix("bosun-checkout-")
        .tempdir()
        .map_err(|e| SetupError::Prepare(format!("cannot create a checkout directory: {e}")))?;
    let creds = Credentials {
        keys: access.keys.clone(),
        known_hosts: access.known_hosts.clone(),
        hosts: access.vcs_hosts.clone(),
    };
    let cspec = CheckoutSpec {
        url: src.url.clone(),
        reference: src.reference.clone(),
        dest: dir.path().join("repo"),
    };
    let mut progress = |line: &str| {
        sink.emit(&Event::Info {
            message: line.to_owned(),
        })
    };
    let outcome = checkout::checkout(&cspec, &creds, &mut progress)?;
    Ok(Prefetched {
        dir: Arc::new(dir),
        outcome,
    })
}

/// The job container's main process: it announces who it runs as (`$HOME`, uid, gid, bash
/// or not) in one line, then idles until the container is removed; steps arrive through
/// exec. A shell loop rather than `sleep infinity`, which busybox lacks; the engine's init
/// reaps what background steps leave behind.
const MAIN: &str = r#"printf 'bosun-ready %s %s %s %s\n' "$(id -u)" "$(id -g)" "$([ -x /bin/bash ] && echo bash || echo sh)" "${HOME:-/}"
if tar -x -f - -C / 2>&1; then echo bosun-installed; else echo bosun-install-failed; fi
exec </dev/null
while :; do sleep 3600; done"#;

/// How long the main process may take to announce itself or to take the files.
const MAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Read the main process's output up to the line starting with `marker`; what came before it
/// (e.g. tar's complaints) is returned as the error when the marker line never comes.
async fn main_line(
    output: &mut futures_util::stream::BoxStream<
        'static,
        Result<Output, crate::executor::ExecutorError>,
    >,
    marker: &str,
) -> Result<String, SetupError> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            if let Some(start) = find_line(&buf, marker) {
                let line = &buf[start..];
                if let Some(end) = line.iter().position(|b| *b == b'\n') {
                    return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
                }
            }
            match output.next().await {
                Some(Ok(Output::Stdout(b) | Output::Stderr(b))) => buf.extend_from_slice(&b),
                Some(Err(e)) => return Err(SetupError::Executor(e)),
                None => {
                    return Err(SetupError::Prepare(format!(
                        "the container's main process ended before it was ready: {}\n  help: the image needs /bin/sh and `id`, and `user:` must name a user the image knows",
                        String::from_utf8_lossy(&buf).trim()
                    )))
                }
            }
        }
    };
    tokio::time::timeout(MAIN_TIMEOUT, read)
        .await
        .map_err(|_| {
            SetupError::Prepare(format!(
                "the container's main process gave no `{marker}` within {}s: {}",
                MAIN_TIMEOUT.as_secs(),
                String::from_utf8_lossy(&buf).trim()
            ))
        })?
}

fn find_line(buf: &[u8], marker: &str) -> Option<usize> {
    let m = marker.as_bytes();
    (0..buf.len()).find(|&i| (i == 0 || buf[i - 1] == b'\n') && buf[i..].starts_with(m))
}

/// Parse the main process's `bosun-ready UID GID SHELL HOME` line.
fn parse_banner(line: &str) -> Result<ContainerUser, SetupError> {
    let bad = || {
        SetupError::Prepare(format!(
            "could not start a shell in the container: `{}`\n  help: the image needs /bin/sh and `id`, and `user:` must name a user the image knows",
            line.trim()
        ))
    };
    let rest = line
        .trim_end()
        .strip_prefix("bosun-ready ")
        .ok_or_else(bad)?;
    let mut parts = rest.splitn(4, ' ');
    let uid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let gid = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let has_bash = parts.next().ok_or_else(bad)? == "bash";
    let home = parts
        .next()
        .filter(|h| !h.is_empty())
        .unwrap_or("/")
        .to_owned();
    Ok(ContainerUser {
        home,
        uid,
        gid,
        has_bash,
    })
}

/// Run a short command and collect its stdout.
async fn capture<E: Executor>(
    executor: &E,
    container: &str,
    spec: ExecSpec,
) -> Result<(Option<i64>, Vec<u8>), SetupError> {
    let mut exec = executor.exec(container, spec).await?;
    let mut out = Vec::new();
    while let Some(item) = exec.output.next().await {
        match item? {
            Output::Stdout(b) => out.extend_from_slice(&b),
            Output::Stderr(b) => out.extend_from_slice(&b),
        }
    }
    Ok((wait_exit(executor, &exec.id).await?, out))
}

async fn wait_exit<E: Executor>(executor: &E, exec_id: &str) -> Result<Option<i64>, SetupError> {
    // The output stream ends when the process closes it, which can be a moment before the
    // engine records the exit; poll briefly.
    let mut pause = Duration::from_millis(2);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(code) = executor.exec_exit_code(exec_id).await? {
            return Ok(Some(code));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
    Ok(None)
}

pub fn expand_home(path: &str, home: &str) -> String {
    let home = home.trim_end_matches('/');
    if path == "~" {
        home.to_owned()
    } else if let Some(rest) = path.strip_prefix("~/") {
        format!("{home}/{rest}")
    } else {
        path.to_owned()
    }
}

fn builtin_env(
    spec: &JobSpec,
    user: &ContainerUser,
    workdir: &str,
    checkout: Option<&CheckoutOutcome>,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| env.push((k.to_owned(), v));
    set("CI", "true".into());
    set("CIRCLECI", "true".into());
    set("HOME", user.home.clone());
    set("CIRCLE_JOB", spec.plan.name.clone());
    set("CIRCLE_BUILD_NUM", spec.build_num.to_string());
    set("CIRCLE_NODE_INDEX", spec.node_index.to_string());
    set("CIRCLE_NODE_TOTAL", spec.node_total.max(1).to_string());
    set("CIRCLE_WORKING_DIRECTORY", workdir.to_owned());
    if let Some(pr) = &spec.pull_request {
        // CircleCI lists every pull request of the branch in CIRCLE_PULL_REQUESTS (comma-
        // separated) and picks one for CIRCLE_PULL_REQUEST; a job here builds exactly one.
        set("CIRCLE_PULL_REQUEST", pr.url.clone());
        set("CIRCLE_PULL_REQUESTS", pr.url.clone());
        // Only for a fork, as CircleCI does: scripts test it to skip what a fork's build must
        // not do (deploys, secrets).
        if pr.fork {
            set("CIRCLE_PR_NUMBER", pr.number.to_string());
        }
    }
    if let Some(src) = &spec.source {
        set("CIRCLE_REPOSITORY_URL", src.url.clone());
        if let Some((owner, repo)) = project_names(&src.url) {
            set("CIRCLE_PROJECT_USERNAME", owner);
            set("CIRCLE_PROJECT_REPONAME", repo);
        }
    }
    match checkout {
        Some(c) => {
            set("CIRCLE_SHA1", c.sha.clone());
            if let Some(b) = &c.branch {
                set("CIRCLE_BRANCH", b.clone());
            }
            if let Some(t) = &c.tag {
                set("CIRCLE_TAG", t.clone());
            }
        }
        None => {
            // No checkout step: still tell the job what was asked for.
            if let Some(r) = spec.source.as_ref().and_then(|s| s.reference.clone()) {
                if r.len() == 40 && r.chars().all(|c| c.is_ascii_hexdigit()) {
                    set("CIRCLE_SHA1", r);
                } else {
                    set("CIRCLE_BRANCH", r);
                }
            }
        }
    }
    env
}

/// `acme/widget` out of `git@host:acme/widget.git`, `ssh://git@host/acme/widget.git` or a path.
pub fn project_names(url: &str) -> Option<(String, String)> {
    let path = match ssh::parse_ssh_url(url) {
        Some(u) => u.path,
        None => url.to_owned(),
    };
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let mut parts = path.rsplit('/').filter(|p| !p.is_empty());
    let repo = parts.next()?.to_owned();
    let owner = parts.next().unwrap_or("").to_owned();
    Some((owner, repo))
}

/// One upload at job start: `~/.ssh` (keys, config, known_hosts), the scratch directory with
/// every step's script, and the working directory, all owned by the job's user. Key bytes go
/// from memory into the tar stream: never into a file on the agent's disk, an argument or an
/// environment variable.
async fn install_files<E: Executor>(
    executor: &E,
    spec: &JobSpec,
    container: &str,
    main: Attached,
    user: &ContainerUser,
    workdir: &str,
) -> Result<(), SetupError> {
    let mut tar = TarBuilder::new(user.uid, user.gid);
    let home = user.home.trim_end_matches('/');
    let ssh_dir = format!("{home}/.ssh");
    tar.dir(&ssh_dir, 0o700);
    let vcs_hosts = vcs_host_names(spec);
    let files = ssh::container_ssh_files(&spec.access.keys, &spec.access.known_hosts, &vcs_hosts);
    for (name, bytes, mode) in &files.files {
        tar.file(&format!("{ssh_dir}/{name}"), bytes, *mode);
    }
    let scratch = scratch_dir(&spec.id);
    tar.dir(&scratch, 0o700);
    for (i, step) in spec.plan.steps.iter().enumerate() {
        if let StepKind::Run(run) = &step.kind {
            tar.file(
                &format!("{scratch}/step-{i}.sh"),
                run.command.as_bytes(),
                0o600,
            );
        }
    }
    tar.dir(workdir, 0o755);
    // The archive holds private keys: wiped from memory when it goes.
    let bytes = zeroize::Zeroizing::new(
        tar.finish()
            .map_err(|e| SetupError::Prepare(format!("building the setup archive: {e}")))?,
    );
    // The main process is waiting with `tar -x` on its stdin: one write, no extra request.
    // Without a usable tar in the image (or for a directory the user may not create), the
    // engine's archive upload, as root, does it instead.
    let Attached {
        mut input,
        mut output,
    } = main;
    let sent = async {
        input.write_all(&bytes).await?;
        input.shutdown().await
    };
    let via_stdin = match tokio::join!(sent, main_line(&mut output, "bosun-install")) {
        (Ok(()), Ok(line)) => line == "bosun-installed",
        _ => false,
    };
    if !via_stdin {
        tracing::debug!("installing files through the engine's archive upload");
        let stream: TarStream =
            futures_util::stream::once(async move { Bytes::from(bytes.to_vec()) }).boxed();
        executor.upload_tar(container, "/", stream).await?;
    }
    Ok(())
}

/// The host names the container's ssh config covers: those of the job's repository, plus
/// both Bitbucket names (private dependencies usually live there).
fn vcs_host_names(spec: &JobSpec) -> Vec<String> {
    let mut hosts = vec!["bitbucket.org".to_owned(), "ssh.bitbucket.org".to_owned()];
    if let Some(u) = spec
        .source
        .as_ref()
        .and_then(|s| ssh::parse_ssh_url(&s.url))
    {
        if !hosts.contains(&u.host) {
            hosts.push(u.host);
        }
    }
    hosts
}

/// A small in-memory tar writer with fixed ownership (the container user's), absolute paths
/// made relative to `/`.
pub struct TarBuilder {
    inner: tar::Builder<Vec<u8>>,
    uid: u64,
    gid: u64,
}

impl TarBuilder {
    pub fn new(uid: u64, gid: u64) -> Self {
        Self {
            inner: tar::Builder::new(Vec::new()),
            uid,
            gid,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(self.uid);
        h.set_gid(self.gid);
        h.set_size(size);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        let h = self.header(tar::EntryType::Directory, mode, 0);
        let rel = path.trim_start_matches('/');
        let _ = self
            .inner
            .append_data(&mut h.clone(), rel, std::io::empty());
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        let h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        let rel = path.trim_start_matches('/');
        let _ = self.inner.append_data(&mut h.clone(), rel, data);
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.inner.into_inner()
    }
}

/// Stream a directory tree (a checkout, `.git` included) as a tar rooted at `dest` inside the
/// container, owned by the container user. Built on a blocking thread in 256 KiB pieces so a
/// large tree never sits in memory whole and works against a remote engine.
fn tar_tree_stream(
    src: PathBuf,
    dest: String,
    uid: u64,
    gid: u64,
) -> (TarStream, tokio::task::JoinHandle<std::io::Result<u64>>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let handle = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter::new(tx);
        let mut b = tar::Builder::new(writer);
        b.follow_symlinks(false);
        append_tree(&mut b, &src, &src, dest.trim_start_matches('/'), uid, gid)?;
        let mut w = b.into_inner()?;
        w.flush_chunk()?;
        Ok(w.total)
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed();
    (stream, handle)
}

const CHUNK: usize = 256 * 1024;

/// A `Write` (for blocking tar builders) that hands 256 KiB chunks to an async receiver.
pub(crate) struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    total: u64,
}

impl ChannelWriter {
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Bytes>) -> Self {
        Self {
            tx,
            buf: Vec::with_capacity(CHUNK),
            total: 0,
        }
    }

    pub(crate) fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.total += self.buf.len() as u64;
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload ended early"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn append_tree<W: std::io::Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    dir: &Path,
    dest: &str,
    uid: u64,
    gid: u64,
) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let name = if rel.as_os_str().is_empty() {
        PathBuf::from(dest)
    } else {
        Path::new(dest).join(rel)
    };
    let meta = std::fs::symlink_metadata(dir)?;
    let mut h = tar::Header::new_gnu();
    h.set_metadata(&meta);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mode(meta.mode() & 0o7777);
    b.append_data(&mut h, &name, std::io::empty())?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            append_tree(b, root, &path, dest, uid, gid)?;
            continue;
        }
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let name = Path::new(dest).join(rel);
        let mut h = tar::Header::new_gnu();
        h.set_metadata(&meta);
        h.set_uid(uid);
        h.set_gid(gid);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            h.set_size(0);
            b.append_link(&mut h, &name, &target)?;
        } else if meta.is_file() {
            let f = std::fs::File::open(&path)?;
            b.append_data(&mut h, &name, f)?;
        }
    }
    Ok(())
}

async fn run_steps<E: Executor>(
    executor: &Arc<E>,
    spec: &Arc<JobSpec>,
    sink: &Arc<dyn EventSink>,
    cancel: &CancellationToken,
    ctx: &Ctx,
) -> JobOutcome {
    let mut summaries: Vec<StepSummary> = Vec::new();
    let mut failed = false;
    let mut status = JobStatus::Success;
    let mut background: Vec<Background> = Vec::new();

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
        if cancel.is_cancelled() || !when.should_run(failed) {
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
                checkout_step(
                    executor.as_ref(),
                    spec,
                    sink,
                    ctx,
                    i,
                    &step.name,
                    path.as_deref(),
                    t0,
                )
                .await
            }
            StepKind::Run(run) => {
                let control = Arc::new(StepControl::default());
                let task = {
                    let executor = Arc::clone(executor);
                    let spec = Arc::clone(spec);
                    let sink = Arc::clone(sink);
                    let cancel = cancel.clone();
                    let run = run.clone();
                    let name = step.name.clone();
                    let container = ctx.container.clone();
                    let cmd = step_command(
                        &spec.id,
                        i,
                        &run,
                        ctx.user.has_bash,
                        spec.plan.shell.as_deref(),
                    );
                    let env = step_env(ctx, &run, &spec.env);
                    let workdir = step_workdir(ctx, &run);
                    let user = spec.plan.user.clone();
                    let control = Arc::clone(&control);
                    tokio::spawn(async move {
                        run_step(
                            executor.as_ref(),
                            &spec,
                            sink.as_ref(),
                            &cancel,
                            &container,
                            i,
                            &name,
                            &run,
                            cmd,
                            env,
                            workdir,
                            user,
                            &control,
                        )
                        .await
                    })
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
                let result = builtin_step(executor.as_ref(), spec, ctx, other, &say).await;
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
        sink.emit(&Event::StepFinished(summary.clone()));
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
                spec.kill_grace,
            )
            .await;
        }
        let summary =
            match tokio::time::timeout(spec.kill_grace + Duration::from_secs(5), task).await {
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

/// Caches, workspaces, artifacts, test results, extra keys: the steps the agent carries out
/// itself against the container and the local store.
async fn builtin_step<E: Executor>(
    executor: &E,
    spec: &JobSpec,
    ctx: &Ctx,
    kind: &StepKind,
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), String> {
    let mut env = ctx.base_env.clone();
    merge_env(&mut env, spec.env.clone());
    let outcome = ctx.checkout.as_ref().map(|c| &c.outcome);
    let b = builtin::Ctx {
        executor,
        container: &ctx.container,
        home: &ctx.user.home,
        workdir: &ctx.workdir,
        env: &env,
        branch: outcome.and_then(|o| o.branch.as_deref()).unwrap_or(""),
        revision: outcome.map(|o| o.sha.as_str()).unwrap_or(""),
        build_num: spec.build_num,
        store: &spec.store,
        workspace: &spec.workspace,
        job_id: &spec.id,
        job_name: &spec.plan.name,
        say,
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
            add_ssh_keys(executor, spec, ctx, fingerprints, say).await
        }
        StepKind::SetupRemoteDocker => Err(
            "setup_remote_docker is not supported by bosun yet: it needs a Docker engine per job, \
             which a later version brings. Run the Docker commands on a machine with Docker, or \
             drop the step to run the rest of the job"
                .to_owned(),
        ),
        StepKind::Checkout { .. } | StepKind::Run(_) => Ok(()),
    }
}

/// `add_ssh_keys`: install the chosen additional keys (all when no fingerprint is given) as
/// `~/.ssh/id_rsa_<fingerprint>`, offered for every host after the job's own keys.
async fn add_ssh_keys<E: Executor>(
    executor: &E,
    spec: &JobSpec,
    ctx: &Ctx,
    fingerprints: &[String],
    say: &(dyn Fn(String) + Send + Sync),
) -> Result<(), String> {
    let candidates: Vec<&SshKey> = spec
        .additional_keys
        .iter()
        .chain(spec.access.keys.iter())
        .collect();
    let normalize = |f: &str| {
        f.trim()
            .trim_start_matches("MD5:")
            .replace(':', "")
            .to_lowercase()
    };
    let mut chosen: Vec<&SshKey> = Vec::new();
    if fingerprints.is_empty() {
        chosen.extend(spec.additional_keys.iter());
    } else {
        for fp in fingerprints {
            let found = candidates.iter().find(|k| {
                k.public_fingerprint
                    .as_deref()
                    .is_some_and(|kf| kf == fp.trim() || normalize(kf) == normalize(fp))
            });
            match found {
                Some(k) => chosen.push(k),
                None => {
                    let known: Vec<String> = candidates.iter().map(|k| k.describe()).collect();
                    return Err(format!(
                        "no key with fingerprint {fp} was given to this job (keys: {}); add it with --ssh-key FILE",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                }
            }
        }
    }
    if chosen.is_empty() {
        say("No additional SSH keys to add".to_owned());
        return Ok(());
    }
    let home = ctx.user.home.trim_end_matches('/');
    let mut tar = TarBuilder::new(ctx.user.uid, ctx.user.gid);
    let mut config = String::from("\n# add_ssh_keys\nHost *\n");
    let mut names = Vec::new();
    for (n, key) in chosen.iter().enumerate() {
        let tag: String = key
            .public_fingerprint
            .as_deref()
            .unwrap_or("key")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(16)
            .collect();
        let name = format!("id_rsa_{tag}_{n}");
        let mut body = key.private.as_str().to_owned();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        tar.file(&format!("{home}/.ssh/{name}"), body.as_bytes(), 0o600);
        config.push_str(&format!("  IdentityFile ~/.ssh/{name}\n"));
        names.push(format!("{} as ~/.ssh/{name}", key.describe()));
    }
    // The job's own ssh config first (its Host blocks win), then the new keys for any host.
    let vcs_hosts = vcs_host_names(spec);
    let files = ssh::container_ssh_files(&spec.access.keys, &spec.access.known_hosts, &vcs_hosts);
    let base = files
        .files
        .iter()
        .find(|(n, _, _)| n == "config")
        .map(|(_, b, _)| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    tar.file(
        &format!("{home}/.ssh/config"),
        format!("{base}{config}").as_bytes(),
        0o644,
    );
    let bytes = zeroize::Zeroizing::new(tar.finish().map_err(|e| e.to_string())?);
    let stream: TarStream =
        futures_util::stream::once(async move { Bytes::from(bytes.to_vec()) }).boxed();
    executor
        .upload_tar(&ctx.container, "/", stream)
        .await
        .map_err(|e| e.to_string())?;
    for n in names {
        say(format!("Added {n}"));
    }
    Ok(())
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
struct StepControl {
    stopped_by_job: std::sync::atomic::AtomicBool,
}

#[allow(clippy::too_many_arguments)]
async fn checkout_step<E: Executor>(
    executor: &E,
    spec: &JobSpec,
    sink: &Arc<dyn EventSink>,
    ctx: &Ctx,
    i: usize,
    name: &str,
    path: Option<&str>,
    t0: Instant,
) -> StepSummary {
    let say = |msg: String| {
        sink.emit(&Event::Output {
            step: i,
            stream: Stream::Stdout,
            data: Bytes::from(msg + "\n"),
        })
    };
    let status = match &ctx.checkout {
        None => {
            say(match &spec.source {
                None => "No repository to check out: run bosun execute inside a git repository, or give --repo".to_owned(),
                Some(_) => "The checkout was not fetched".to_owned(),
            });
            StepStatus::Failed
        }
        Some(Prefetched { dir, outcome }) => {
            let dest = match path {
                None => ctx.workdir.clone(),
                Some(p) if p.starts_with('/') || p.starts_with('~') => {
                    expand_home(p, &ctx.user.home)
                }
                Some(p) => format!(
                    "{}/{}",
                    ctx.workdir.trim_end_matches('/'),
                    p.trim_start_matches("./")
                ),
            };
            let src = dir.path().join("repo");
            let (stream, producer) = tar_tree_stream(src, dest.clone(), ctx.user.uid, ctx.user.gid);
            let uploaded = executor.upload_tar(&ctx.container, "/", stream).await;
            let produced = producer.await;
            match (uploaded, produced) {
                (Ok(()), Ok(Ok(bytes))) => {
                    say(format!(
                        "Checked out {} {} into {dest}: {:.1} MB uploaded to the container in {}",
                        outcome.sha,
                        match (&outcome.branch, &outcome.tag) {
                            (_, Some(t)) => format!("(tag {t})"),
                            (Some(b), None) => format!("(branch {b})"),
                            (None, None) => "(detached)".to_owned(),
                        },
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

/// `/bin/sh -c 'echo $$ > pidfile; exec "$@"' SHELL… SCRIPT`: a `docker exec` process leads
/// its own process group, so the pid it records is the group to signal on timeout or cancel;
/// `exec` keeps that pid for the real shell.
fn step_command(
    job_id: &str,
    i: usize,
    run: &RunStep,
    has_bash: bool,
    job_shell: Option<&str>,
) -> Vec<String> {
    let scratch = scratch_dir(job_id);
    let shell = run
        .shell
        .as_deref()
        .or(job_shell)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            if has_bash {
                "/bin/bash -eo pipefail".to_owned()
            } else {
                "/bin/sh -eo pipefail".to_owned()
            }
        });
    let mut cmd = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        format!("echo $$ > {scratch}/step-{i}.pid; exec \"$@\""),
        "bosun-step".to_owned(),
    ];
    cmd.extend(shell.split_whitespace().map(str::to_owned));
    cmd.push(format!("{scratch}/step-{i}.sh"));
    cmd
}

fn step_env(ctx: &Ctx, run: &RunStep, overrides: &[(String, String)]) -> Vec<String> {
    let mut env = ctx.base_env.clone();
    merge_env(&mut env, run.environment.clone());
    merge_env(&mut env, overrides.to_vec());
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn step_workdir(ctx: &Ctx, run: &RunStep) -> String {
    match run.working_directory.as_deref() {
        None => ctx.workdir.clone(),
        Some(p) if p.starts_with('/') || p.starts_with('~') => expand_home(p, &ctx.user.home),
        Some(p) => format!("{}/{}", ctx.workdir.trim_end_matches('/'), p),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_step<E: Executor>(
    executor: &E,
    spec: &JobSpec,
    sink: &dyn EventSink,
    cancel: &CancellationToken,
    container: &str,
    i: usize,
    name: &str,
    run: &RunStep,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: String,
    user: Option<String>,
    control: &StepControl,
) -> StepSummary {
    let t0 = Instant::now();
    let summary = |status, exit_code| StepSummary {
        step: i,
        name: name.to_owned(),
        status,
        exit_code,
        duration_ms: millis(t0.elapsed()),
    };
    let mut exec = match executor
        .exec(
            container,
            ExecSpec {
                cmd,
                env,
                user,
                working_dir: Some(workdir),
            },
        )
        .await
    {
        Ok(e) => e,
        Err(e) => {
            sink.emit(&Event::Output {
                step: i,
                stream: Stream::Stderr,
                data: Bytes::from(format!("bosun: could not start the step: {e}\n")),
            });
            return summary(StepStatus::Failed, None);
        }
    };
    let mut interrupted: Option<StepStatus> = None;
    // An output item read ahead while coalescing (see below) and not yet handled.
    let mut peeked = None;
    loop {
        let next = tokio::select! {
            // `Some(None)`: the stream ended while coalescing.
            r = async { Ok(peeked.take().flatten()) }, if peeked.is_some() => r,
            r = tokio::time::timeout(run.no_output_timeout, exec.output.next()) => r,
            () = cancel.cancelled(), if interrupted.is_none() => {
                interrupted = Some(StepStatus::Canceled);
                stop_step(executor, container, &spec.id, i, spec.kill_grace).await;
                continue;
            }
        };
        match next {
            Ok(Some(Ok(out))) => {
                let (stream, data) = split_output(out);
                // Under a flood the engine hands over ~16 KiB frames; join those already
                // waiting (never waiting for more) so each sink sees one event per ~256 KiB
                // instead of per frame: masking, spooling and hashing pay per event.
                let mut joined: Option<Vec<u8>> = None;
                while joined.as_ref().map_or(data.len(), Vec::len) < COALESCE_BYTES {
                    match exec.output.next().now_or_never() {
                        None => break,
                        Some(Some(Ok(more))) if stream_of(&more) == stream => {
                            let (_, d2) = split_output(more);
                            joined
                                .get_or_insert_with(|| data.to_vec())
                                .extend_from_slice(&d2);
                        }
                        Some(item) => {
                            peeked = Some(item);
                            break;
                        }
                    }
                }
                sink.emit(&Event::Output {
                    step: i,
                    stream,
                    data: joined.map_or(data, Bytes::from),
                });
            }
            Ok(Some(Err(e))) => {
                sink.emit(&Event::Output {
                    step: i,
                    stream: Stream::Stderr,
                    data: Bytes::from(format!("bosun: lost the step's output: {e}\n")),
                });
                break;
            }
            Ok(None) => break,
            Err(_elapsed) => {
                if interrupted.is_some() {
                    // Already stopping and still silent after a whole timeout: give up on it.
                    break;
                }
                interrupted = Some(StepStatus::TimedOut);
                sink.emit(&Event::Output {
                    step: i,
                    stream: Stream::Stderr,
                    data: Bytes::from(format!(
                        "\nbosun: no output for {}; stopping the step (no_output_timeout)\n",
                        crate::stream::format_duration(millis(run.no_output_timeout))
                    )),
                });
                stop_step(executor, container, &spec.id, i, spec.kill_grace).await;
            }
        }
    }
    let code = wait_exit(executor, &exec.id).await.ok().flatten();
    if control
        .stopped_by_job
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        return summary(StepStatus::Stopped, code);
    }
    if let Some(status) = interrupted {
        return summary(status, code);
    }
    match code {
        Some(0) => summary(StepStatus::Success, code),
        _ => summary(StepStatus::Failed, code),
    }
}

/// TERM the step's process group, then KILL it after the grace period. Runs as root in the
/// container so it can reach whatever the step became (sudo, setuid).
async fn stop_step<E: Executor>(
    executor: &E,
    container: &str,
    job_id: &str,
    i: usize,
    grace: Duration,
) {
    let pidfile = format!("{}/step-{i}.pid", scratch_dir(job_id));
    // dash wants `kill -s SIG -- -PGID`, busybox rejects the `--`: try both spellings.
    let script = format!(
        "p=$(cat {pidfile} 2>/dev/null) || exit 0; \
         sig() {{ kill -s \"$1\" -- \"-$p\" 2>/dev/null || kill -s \"$1\" \"-$p\" 2>/dev/null; }}; \
         sig TERM || exit 0; i=0; \
         while [ $i -lt {ticks} ] && sig 0; do sleep 0.1; i=$((i+1)); done; \
         sig KILL; exit 0",
        ticks = (grace.as_millis() / 100).max(1)
    );
    let _ = capture(
        executor,
        container,
        ExecSpec {
            cmd: vec!["/bin/sh".into(), "-c".into(), script],
            user: Some("0".into()),
            ..Default::default()
        },
    )
    .await;
}

/// Largest output event made by joining frames that were already waiting.
const COALESCE_BYTES: usize = 256 * 1024;

fn split_output(out: Output) -> (Stream, Bytes) {
    match out {
        Output::Stdout(b) => (Stream::Stdout, b),
        Output::Stderr(b) => (Stream::Stderr, b),
    }
}

fn stream_of(out: &Output) -> Stream {
    match out {
        Output::Stdout(_) => Stream::Stdout,
        Output::Stderr(_) => Stream::Stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Step, When};
    use crate::executor::{Exec, ExecutorError, ImageInfo};
    use std::sync::Mutex;

    /// An executor that records what the job asked of it and panics on `exec` of a chosen
    /// command: proves the container is removed whatever happens inside a step's task.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
    }

    impl Recording {
        fn log(&self, s: String) {
            if let Ok(mut c) = self.calls.lock() {
                c.push(s);
            }
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }
    }

    impl Executor for Recording {
        async fn image_info(&self, image: &str) -> Result<ImageInfo, ExecutorError> {
            self.log(format!("image_info {image}"));
            Ok(ImageInfo::default())
        }
        async fn create(&self, _spec: &ContainerSpec) -> Result<String, ExecutorError> {
            self.log("create".into());
            Ok("c1".into())
        }
        async fn start(&self, container: &str) -> Result<Attached, ExecutorError> {
            self.log(format!("start {container}"));
            let lines = vec![
                Ok(Output::Stdout(Bytes::from_static(
                    b"bosun-ready 0 0 bash /root\n",
                ))),
                Ok(Output::Stdout(Bytes::from_static(b"bosun-installed\n"))),
            ];
            Ok(Attached {
                input: Box::pin(tokio::io::sink()),
                output: futures_util::stream::iter(lines).boxed(),
            })
        }
        async fn upload_tar(
            &self,
            c: &str,
            dest: &str,
            _tar: TarStream,
        ) -> Result<(), ExecutorError> {
            self.log(format!("upload {c} {dest}"));
            Ok(())
        }
        async fn download_tar(
            &self,
            _c: &str,
            _p: &str,
        ) -> Result<Option<crate::executor::ByteStream>, ExecutorError> {
            Ok(None)
        }
        async fn exec(&self, _c: &str, spec: ExecSpec) -> Result<Exec, ExecutorError> {
            if spec.cmd.last().is_some_and(|s| s.ends_with("step-0.sh")) {
                panic!("boom in a step");
            }
            self.log(format!("exec {}", spec.cmd.join(" ")));
            Ok(Exec {
                id: "e1".into(),
                output: futures_util::stream::empty().boxed(),
            })
        }
        async fn exec_exit_code(&self, _id: &str) -> Result<Option<i64>, ExecutorError> {
            Ok(Some(0))
        }
        async fn remove(&self, container: &str) -> Result<(), ExecutorError> {
            self.log(format!("remove {container}"));
            Ok(())
        }
        async fn list_by_label(&self, _l: &str, _v: &str) -> Result<Vec<String>, ExecutorError> {
            Ok(vec![])
        }
    }

    fn run_plan(steps: Vec<Step>) -> JobPlan {
        JobPlan {
            name: "build".into(),
            image: "img".into(),
            user: None,
            image_environment: vec![],
            environment: vec![],
            working_directory: "~/project".into(),
            shell: None,
            parallelism: 1,
            steps,
        }
    }

    fn run_step_named(name: &str, when: When) -> Step {
        Step {
            name: name.into(),
            kind: StepKind::Run(RunStep {
                command: "true".into(),
                shell: None,
                environment: vec![],
                working_directory: None,
                background: false,
                no_output_timeout: Duration::from_secs(5),
            }),
            when,
        }
    }

    fn bare_spec(store_dir: &Path, plan: JobPlan) -> JobSpec {
        JobSpec {
            id: "j".into(),
            agent_id: "a".into(),
            plan,
            source: None,
            access: Access {
                keys: vec![],
                known_hosts: KnownHosts::pinned(),
                vcs_hosts: VcsHosts::new(),
            },
            env: vec![],
            network: None,
            build_num: 1,
            kill_grace: Duration::from_millis(100),
            prefetched: None,
            store: crate::store::Store::open(store_dir, crate::store::ProjectScope::new("test"))
                .expect("store"),
            workspace: "j".into(),
            additional_keys: vec![],
            node_index: 0,
            node_total: 1,
            pull_request: None,
        }
    }

    #[test]
    fn a_pull_request_build_gets_circleci_pull_request_variables() {
        let store_dir = tempfile::tempdir().expect("tempdir");
        let user = ContainerUser {
            home: "/root".into(),
            uid: 0,
            gid: 0,
            has_bash: true,
        };
        const NAMES: [&str; 3] = [
            "CIRCLE_PULL_REQUEST",
            "CIRCLE_PULL_REQUESTS",
            "CIRCLE_PR_NUMBER",
        ];
        let mut spec = bare_spec(store_dir.path(), run_plan(vec![]));
        let env = builtin_env(&spec, &user, "/root/project", None);
        for name in NAMES {
            assert!(
                !env.iter().any(|(k, _)| k == name),
                "{name} set for a build that is no pull request: {env:?}"
            );
        }
        let url = "https://bitbucket.org/acme/widget/pull-requests/7";
        spec.pull_request = Some(PullRequest {
            number: 7,
            url: url.into(),
            fork: false,
        });
        let env = builtin_env(&spec, &user, "/root/project", None);
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("CIRCLE_PULL_REQUEST"), Some(url));
        assert_eq!(get("CIRCLE_PULL_REQUESTS"), Some(url));
        assert_eq!(get("CIRCLE_PR_NUMBER"), None, "not a fork");
        assert_eq!(get("CIRCLE_JOB"), Some("build"), "the others stay");
        if let Some(pr) = spec.pull_request.as_mut() {
            pr.fork = true;
        }
        let env = builtin_env(&spec, &user, "/root/project", None);
        let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(get("CIRCLE_PR_NUMBER"), Some("7"), "a fork");
    }

    #[tokio::test]
    async fn a_panicking_step_task_fails_the_job_and_the_container_is_still_removed() {
        let exec = Arc::new(Recording::default());
        let store_dir = tempfile::tempdir().expect("tempdir");
        let spec = bare_spec(
            store_dir.path(),
            run_plan(vec![
                run_step_named("explodes", When::OnSuccess),
                run_step_named("cleanup", When::Always),
            ]),
        );
        let sink = Arc::new(crate::stream::MemorySink::default());
        let outcome = run_job(Arc::clone(&exec), spec, sink, CancellationToken::new()).await;
        assert_eq!(outcome.status, JobStatus::Failed);
        assert_eq!(outcome.steps[0].status, StepStatus::Failed);
        assert_eq!(
            outcome.steps[1].status,
            StepStatus::Success,
            "when: always still runs"
        );
        let calls = exec.calls();
        assert_eq!(
            calls.last().map(String::as_str),
            Some("remove c1"),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.starts_with("upload")),
            "files went through stdin: {calls:?}"
        );
    }

    #[test]
    fn banner_parsing() {
        let u = parse_banner("bosun-ready 3434 3434 bash /home/circle ci\n").expect("parses");
        assert_eq!(
            (u.uid, u.gid, u.has_bash, u.home.as_str()),
            (3434, 3434, true, "/home/circle ci")
        );
        let u = parse_banner("bosun-ready 0 0 sh ").expect("empty home");
        assert_eq!(u.home, "/");
        assert!(parse_banner("unable to find user nobody").is_err());
    }

    #[test]
    fn home_expansion() {
        assert_eq!(
            expand_home("~/project", "/home/circleci"),
            "/home/circleci/project"
        );
        assert_eq!(expand_home("~", "/root/"), "/root");
        assert_eq!(expand_home("/abs", "/root"), "/abs");
    }

    #[test]
    fn project_names_from_urls() {
        assert_eq!(
            project_names("/srv/repos/acme/widget.git"),
            Some(("acme".into(), "widget".into()))
        );
    }

    #[test]
    fn step_command_records_its_group_and_falls_back_to_sh() {
        let run = RunStep {
            command: "make".into(),
            shell: None,
            environment: vec![],
            working_directory: None,
            background: false,
            no_output_timeout: Duration::from_secs(1),
        };
        let cmd = step_command("j1", 2, &run, false, None);
        assert_eq!(cmd[0], "/bin/sh");
        assert!(cmd[2].contains("/tmp/.bosun-j1/step-2.pid"));
        assert_eq!(
            &cmd[4..],
            ["/bin/sh", "-eo", "pipefail", "/tmp/.bosun-j1/step-2.sh"]
        );
        let cmd = step_command("j1", 2, &run, true, Some("/bin/zsh -e"));
        assert_eq!(&cmd[4..6], ["/bin/zsh", "-e"]);
    }
}
