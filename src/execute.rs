//! `bosun execute`: one job, by hand, from a local repository or a remote one.
//!
//! A front door only: it gathers keys, host keys and the config, then hands the job to
//! [`job::run_job`] with a terminal or JSON sink — the same path the agent will use.

use crate::config::{self, JobPlan};
use crate::executor::DockerExecutor;
use crate::job::{self, Access, JobSpec, Prefetched, Source};
use crate::ssh::{KeyRole, KnownHosts, SshKey, VcsHosts};
use crate::store::Store;
use crate::stream::{Event, EventSink, JobStatus, JsonSink, TerminalSink};
use crate::workflow::{node_specs, run_nodes, run_workflow, WorkflowOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

pub const EXIT_SUCCESS: u8 = 0;
pub const EXIT_STEP_FAILED: u8 = 1;
pub const EXIT_SETUP: u8 = 2;
pub const EXIT_CANCELED: u8 = 130;

#[derive(clap::Args, Debug, Clone)]
pub struct ExecuteArgs {
    /// Job to run.
    #[arg(long, default_value = "build", conflicts_with = "workflow")]
    pub job: String,
    /// Run a whole workflow instead: its jobs in dependency order, independent ones at once.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Workflow jobs running at once.
    #[arg(long = "jobs", default_value_t = 2)]
    pub max_parallel: usize,
    /// Approve `type: approval` jobs (otherwise they, and what requires them, wait).
    #[arg(long)]
    pub approve: bool,
    /// Repository to check out (`git@bitbucket.org:acme/widget.git`); default: the git
    /// repository containing the current directory (its committed state).
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit SHA to check out (default: the repository's HEAD).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// Config file. Default: `.circleci/config.yml` in the current directory, or in the
    /// checked-out repository when `--repo` is given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub compile: CompileArgs,
    /// An additional SSH key (repeatable), installed only by `add_ssh_keys` steps.
    #[arg(long = "ssh-key")]
    pub ssh_keys: Vec<PathBuf>,
    /// Local store for caches, workspaces and artifacts (default: $BOSUN_STORE or
    /// ~/.cache/bosun).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Environment variable for every step, highest precedence: `--env NAME=value`.
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Docker network for the job container (e.g. where service or VCS containers live).
    #[arg(long)]
    pub network: Option<String>,
    /// CIRCLE_BUILD_NUM for the job (and pipeline.number).
    #[arg(long, default_value_t = 1)]
    pub build_num: u64,
    /// Seconds between TERM and KILL when a step is stopped (timeout, cancel).
    #[arg(long, default_value_t = 3)]
    pub kill_grace: u64,
    /// Job id (labels the container as bosun.job=ID; workflow jobs get ID-NAME); random by
    /// default.
    #[arg(long)]
    pub job_id: Option<String>,
    /// One JSON event per line on stdout instead of the human view.
    #[arg(long)]
    pub json: bool,
}

/// How a config is compiled: vendored orbs and pipeline parameters.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CompileArgs {
    /// Directory of vendored registry orbs: DIR/<namespace>/<name>@<version>.yml.
    #[arg(long, value_name = "DIR")]
    pub orb_dir: Option<PathBuf>,
    /// A pipeline parameter, KEY=VALUE (repeatable).
    #[arg(long = "pipeline-param", value_name = "KEY=VALUE")]
    pub pipeline_params: Vec<String>,
}

/// Reads vendored orbs from a directory (the compiler itself does no I/O).
pub struct OrbDir(pub PathBuf);

impl config::OrbLoader for OrbDir {
    fn load(&self, orb: &config::OrbRef) -> config::OrbSource {
        let path = self.0.join(orb.vendored_path());
        match std::fs::read_to_string(&path) {
            Ok(text) => config::OrbSource::Found {
                file: path.display().to_string(),
                text,
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => config::OrbSource::Missing,
            Err(e) => config::OrbSource::Failed(format!("{}: {e}", path.display())),
        }
    }
}

impl CompileArgs {
    pub fn pipeline(&self) -> Result<config::PipelineValues, PrepareError> {
        let mut pipeline = config::PipelineValues::default();
        for kv in &self.pipeline_params {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| PrepareError::BadParam(kv.clone()))?;
            pipeline.parameters.push((k.to_owned(), v.to_owned()));
        }
        Ok(pipeline)
    }

    pub fn loader(&self) -> Option<OrbDir> {
        self.orb_dir.clone().map(OrbDir)
    }

    pub fn options<'a>(
        &self,
        pipeline: config::PipelineValues,
        loader: Option<&'a OrbDir>,
    ) -> config::CompileOptions<'a> {
        config::CompileOptions {
            pipeline,
            orbs: loader.map(|l| l as &dyn config::OrbLoader),
            orb_dir: self.orb_dir.as_ref().map(|d| d.display().to_string()),
        }
    }
}

/// Keys, host keys and host mappings: what opens repositories. Shared by `execute` and
/// `checkout`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AccessArgs {
    /// Private key of a Bitbucket user (opens all the user's repositories). Offered first.
    #[arg(long)]
    pub user_key: Option<PathBuf>,
    /// Private deploy (access) key: opens one repository, read-only. Offered after the user key.
    #[arg(long)]
    pub deploy_key: Option<PathBuf>,
    /// Extra known_hosts file(s) trusted besides Bitbucket's pinned keys.
    #[arg(long = "known-hosts")]
    pub known_hosts: Vec<PathBuf>,
    /// Connect to a VCS host at another address, checking host keys under the real name:
    /// `ssh.bitbucket.org=127.0.0.1:2222`, `bitbucket.example.com=10.0.0.5:7999`.
    #[arg(long = "vcs-host", env = "BOSUN_VCS_HOSTS", value_delimiter = ',')]
    pub vcs_hosts: Vec<String>,
}

impl AccessArgs {
    pub fn load(&self) -> Result<Access, PrepareError> {
        let mut keys = Vec::new();
        if let Some(p) = &self.user_key {
            keys.push(SshKey::from_file(p, KeyRole::User)?);
        }
        if let Some(p) = &self.deploy_key {
            keys.push(SshKey::from_file(p, KeyRole::Deploy)?);
        }
        let mut known_hosts = KnownHosts::pinned();
        for p in &self.known_hosts {
            known_hosts.extend(KnownHosts::parse(&read(p)?, &p.display().to_string())?);
        }
        let mut vcs_hosts = VcsHosts::new();
        for m in self.vcs_hosts.iter().filter(|m| !m.trim().is_empty()) {
            vcs_hosts.add_mapping(m.trim())?;
        }
        Ok(Access {
            keys,
            known_hosts,
            vcs_hosts,
        })
    }
}

/// Problems before the job could run, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no config at {0}\n  help: run bosun execute in a project with .circleci/config.yml, or pass --config FILE")]
    NoConfig(String),
    #[error("not inside a git repository ({0})\n  help: run bosun execute in a git repository, or pass --repo URL")]
    NoRepo(String),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Ssh(#[from] crate::ssh::SshError),
    #[error("`--env {0}`: expected NAME=value with a valid variable name")]
    BadEnv(String),
    #[error("`--pipeline-param {0}`: expected KEY=VALUE")]
    BadParam(String),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Configs(Vec<config::ConfigError>),
    #[error("no workflow named `{name}`; the config has: {known}")]
    NoWorkflow { name: String, known: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Setup(#[from] job::SetupError),
    #[error(transparent)]
    Executor(#[from] crate::executor::ExecutorError),
}

/// Run `bosun execute`; returns the process exit code.
pub fn run(args: ExecuteArgs) -> u8 {
    let sink: Arc<dyn EventSink> = if args.json {
        Arc::new(JsonSink::new(std::io::stdout()))
    } else {
        Arc::new(TerminalSink::new(std::io::stdout()))
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_SETUP;
        }
    };
    runtime.block_on(run_async(args, sink))
}

async fn run_async(args: ExecuteArgs, sink: Arc<dyn EventSink>) -> u8 {
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone(), Arc::clone(&sink));
    let label = args.workflow.clone().unwrap_or_else(|| args.job.clone());
    let prepared = match prepare(&args, &sink).await {
        Ok(p) => p,
        Err(e) => {
            sink.emit(&Event::JobFinished {
                job: label,
                status: JobStatus::InfrastructureFail,
                duration_ms: 0,
                steps: Vec::new(),
                error: Some(e.to_string()),
            });
            return EXIT_SETUP;
        }
    };
    let status = match prepared.what {
        What::Job(plan) => {
            let base = &prepared.base;
            let parallelism = plan.parallelism;
            let nodes = node_specs(&|| base.spec(base.id.clone(), (*plan).clone()), parallelism);
            run_nodes(Arc::new(prepared.executor), nodes, sink, cancel).await
        }
        What::Workflow(wf) => {
            let base = &prepared.base;
            let make = |wj: &config::WorkflowJob, cj: &config::CompiledJob| {
                base.spec(format!("{}-{}", base.id, wj.name), cj.plan.clone())
            };
            let git = match (&base.git_tag, &base.git_branch) {
                (Some(t), _) => config::GitRef::Tag(t),
                (None, b) => config::GitRef::Branch(b),
            };
            let opts = WorkflowOptions {
                max_parallel: args.max_parallel,
                approve: args.approve,
            };
            run_workflow(
                Arc::new(prepared.executor),
                &wf,
                git,
                &opts,
                &make,
                sink,
                cancel,
            )
            .await
            .status
        }
    };
    match status {
        JobStatus::Success => EXIT_SUCCESS,
        JobStatus::Failed | JobStatus::TimedOut => EXIT_STEP_FAILED,
        JobStatus::Canceled => EXIT_CANCELED,
        JobStatus::InfrastructureFail => EXIT_SETUP,
    }
}

enum What {
    Job(Box<JobPlan>),
    Workflow(config::Workflow),
}

struct Prepared {
    base: Base,
    executor: DockerExecutor,
    what: What,
}

/// Everything the jobs of one run share; `spec` makes each job's spec from it.
struct Base {
    id: String,
    source: Source,
    access: Access,
    additional_keys: Vec<SshKey>,
    env: Vec<(String, String)>,
    network: Option<String>,
    build_num: u64,
    kill_grace: Duration,
    prefetched: Option<Prefetched>,
    store: Store,
    git_branch: String,
    git_tag: Option<String>,
}

impl Base {
    fn spec(&self, id: String, plan: JobPlan) -> JobSpec {
        JobSpec {
            id,
            agent_id: "execute".to_owned(),
            plan,
            source: Some(self.source.clone()),
            access: self.access.clone(),
            env: self.env.clone(),
            network: self.network.clone(),
            build_num: self.build_num,
            kill_grace: self.kill_grace,
            prefetched: self.prefetched.clone(),
            store: self.store.clone(),
            workspace: self.id.clone(),
            additional_keys: self.additional_keys.clone(),
            node_index: 0,
            node_total: 1,
            pull_request: None,
        }
    }
}

/// First SIGINT/SIGTERM cancels the job (steps get TERM, then KILL, then the container is
/// removed). Further signals are acknowledged but do not skip the cleanup.
fn spawn_signal_handler(cancel: CancellationToken, sink: Arc<dyn EventSink>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            let again = cancel.is_cancelled();
            cancel.cancel();
            sink.emit(&Event::Info {
                message: if again {
                    "still stopping: removing the container".to_owned()
                } else {
                    "canceling: stopping the running step and removing the container".to_owned()
                },
            });
        }
    });
}

async fn prepare(args: &ExecuteArgs, sink: &Arc<dyn EventSink>) -> Result<Prepared, PrepareError> {
    let access = args.access.load()?;
    let mut env = Vec::new();
    for kv in &args.env {
        match kv.split_once('=') {
            Some((k, v)) if config::valid_env_name(k) => env.push((k.to_owned(), v.to_owned())),
            _ => return Err(PrepareError::BadEnv(kv.clone())),
        }
    }
    let additional_keys = args
        .ssh_keys
        .iter()
        .map(|p| SshKey::from_file(p, KeyRole::Additional))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = std::env::current_dir().map_err(|source| PrepareError::Read {
        path: ".".into(),
        source,
    })?;
    let local_root = match &args.repo {
        Some(_) => None,
        None => Some(
            find_repo_root(&cwd).ok_or_else(|| PrepareError::NoRepo(cwd.display().to_string()))?,
        ),
    };
    let source = Source {
        url: match (&args.repo, &local_root) {
            (Some(url), _) => url.clone(),
            (None, Some(root)) => root.display().to_string(),
            (None, None) => String::new(),
        },
        reference: args.reference.clone(),
    };
    // Caches, workspaces and artifacts are this repository's own (issue 12).
    let store = Store::open(
        args.store.clone().unwrap_or_else(Store::default_root),
        crate::store::ProjectScope::new(&source.url),
    )?;
    let fetch =
        || tokio::task::block_in_place(|| job::fetch_source(&access, &source, sink.as_ref()));

    // With --repo and no --config, the config lives in the repository: fetch first. A
    // workflow needs the exact branch/tag (filters) before anything runs: fetch first too.
    let mut prefetched: Option<Prefetched> = None;
    let (config_text, config_name) = match (&args.config, &args.repo) {
        (Some(p), _) => (read(p)?, p.display().to_string()),
        (None, None) => {
            let p = cwd.join(".circleci/config.yml");
            if !p.exists() {
                return Err(PrepareError::NoConfig(p.display().to_string()));
            }
            (read(&p)?, ".circleci/config.yml".to_owned())
        }
        (None, Some(url)) => {
            let fetched = fetch()?;
            let p = fetched.dir.path().join("repo/.circleci/config.yml");
            if !p.exists() {
                return Err(PrepareError::NoConfig(format!(
                    "{url} (at {}): .circleci/config.yml",
                    fetched.outcome.sha
                )));
            }
            let text = read(&p)?;
            prefetched = Some(fetched);
            (text, format!("{url}:.circleci/config.yml"))
        }
    };
    if args.workflow.is_some() && prefetched.is_none() {
        prefetched = Some(fetch()?);
    }

    // pipeline.git.*: exact from a fetched checkout, else the best the ref says.
    let (git_branch, git_tag, revision) = match &prefetched {
        Some(p) => (
            p.outcome.branch.clone().unwrap_or_default(),
            p.outcome.tag.clone(),
            p.outcome.sha.clone(),
        ),
        None => {
            let head = local_root.as_deref().and_then(local_head_branch);
            (
                args.reference.clone().or(head).unwrap_or_default(),
                None,
                String::new(),
            )
        }
    };
    let mut pipeline = args.compile.pipeline()?;
    pipeline.number = i64::try_from(args.build_num).unwrap_or(i64::MAX);
    pipeline.project_git_url = source.url.clone();
    pipeline.project_type = "bitbucket".to_owned();
    pipeline.git_branch = git_branch.clone();
    pipeline.git_tag = git_tag.clone().unwrap_or_default();
    pipeline.git_revision = revision;
    pipeline.trigger_source = "bosun".to_owned();
    let loader = args.compile.loader();
    let opts = args.compile.options(pipeline, loader.as_ref());

    let what = match &args.workflow {
        None => What::Job(Box::new(config::compile_job_with(
            &config_text,
            &config_name,
            &args.job,
            &opts,
        )?)),
        Some(name) => {
            let compiled = config::compile(&config_text, &config_name, &opts)
                .map_err(PrepareError::Configs)?;
            let known = compiled
                .workflows
                .iter()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
                .join(", ");
            let wf = compiled
                .workflows
                .into_iter()
                .find(|w| &w.name == name)
                .ok_or_else(|| PrepareError::NoWorkflow {
                    name: name.clone(),
                    known,
                })?;
            What::Workflow(wf)
        }
    };
    let executor = DockerExecutor::connect().await?;
    Ok(Prepared {
        base: Base {
            id: args.job_id.clone().unwrap_or_else(new_job_id),
            source,
            access,
            additional_keys,
            env,
            network: args.network.clone(),
            build_num: args.build_num,
            kill_grace: Duration::from_secs(args.kill_grace),
            prefetched,
            store,
            git_branch,
            git_tag,
        },
        executor,
        what,
    })
}

/// The branch a local repository's HEAD is on (plain file read; `None` when detached).
fn local_head_branch(root: &Path) -> Option<String> {
    let head = std::fs::read_to_string(root.join(".git/HEAD")).ok()?;
    head.trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_owned)
}

fn read(p: &Path) -> Result<String, PrepareError> {
    std::fs::read_to_string(p).map_err(|source| PrepareError::Read {
        path: p.display().to_string(),
        source,
    })
}

/// The working tree root holding `.git`, walking up from `dir`.
fn find_repo_root(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|d| d.join(".git").exists())
        .map(Path::to_path_buf)
}

fn new_job_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", nanos & 0xffff_ffff_ffff, std::process::id())
}

#[derive(clap::Args, Debug, Clone)]
pub struct CheckoutArgs {
    /// Repository URL, e.g. git@bitbucket.org:acme/widget.git
    pub url: String,
    /// Directory to create.
    pub dest: PathBuf,
    /// Branch, tag or commit SHA (default: the remote's HEAD).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    #[command(flatten)]
    pub access: AccessArgs,
}

/// `bosun checkout`: fetch a repository exactly as a job's checkout would (same keys, host-key
/// checks, submodules), to check access or measure. Returns the exit code.
pub fn checkout(args: CheckoutArgs) -> u8 {
    let result = args.access.load().and_then(|access| {
        let creds = crate::checkout::Credentials {
            keys: access.keys,
            known_hosts: access.known_hosts,
            hosts: access.vcs_hosts,
        };
        let spec = crate::checkout::CheckoutSpec {
            url: args.url.clone(),
            reference: args.reference.clone(),
            dest: args.dest.clone(),
        };
        let mut progress = |line: &str| eprintln!("{line}");
        crate::checkout::checkout(&spec, &creds, &mut progress)
            .map_err(|e| PrepareError::Setup(job::SetupError::Checkout(e)))
    });
    match result {
        Ok(outcome) => {
            println!("{}", outcome.sha);
            EXIT_SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_SETUP
        }
    }
}
