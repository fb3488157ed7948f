//! `bosun execute`: one job, by hand, from a local repository or a remote one.
//!
//! A front door only: it gathers keys, host keys and the config into a `JobRequest`, then
//! hands it to [`bosun_core::run::run`] with a terminal or JSON sink — the path the agent
//! takes too.

use bosun_core::config;
use bosun_core::executor::DockerExecutor;
use bosun_core::job::{self, Access, ConfigSource, EnvEntry, JobRequest, Source, Target};
use bosun_core::ssh::{KeyRole, KnownHosts, SshKey, VcsHosts};
use bosun_core::store::LocalStore;
use bosun_core::stream::{Event, EventSink, JobStatus, JsonSink, TerminalSink};
use std::collections::BTreeMap;
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
    pub cache: CacheArgs,
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
    /// A secret variable (repeatable): like `--env`, and its value is masked (`********`)
    /// wherever the job's output goes.
    #[arg(long = "secret-env", value_name = "NAME=value")]
    pub secret_env: Vec<String>,
    /// A context for local runs (repeatable): a dotenv file of its variables (secret, masked
    /// in the output). A workflow job gets the contexts its `context:` names; one naming a
    /// context not given runs without it, with a warning; a job run alone gets every
    /// context given, in order.
    #[arg(long = "context", value_name = "NAME=FILE")]
    pub contexts: Vec<String>,
    /// The job's time limit (`90s`, `10m`, `1h`): past it the job is stopped and ends
    /// `timedout` (exit code 1).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Map a `machine:` image name to a local image (repeatable): `ubuntu-2204:current=bosun/machine`.
    /// `machine: true` and unmapped `default` use bosun/machine.
    #[arg(long = "machine-image", value_name = "NAME=IMAGE")]
    pub machine_images: Vec<String>,
    /// Docker network for the job container (e.g. where service or VCS containers live).
    #[arg(long)]
    pub network: Option<String>,
    /// What a docker job's `resource_class` does: `apply` CircleCI's CPUs and memory for the
    /// class as limits on each container, `scale:FACTOR` them (e.g. scale:0.5), or `off`.
    #[arg(long, value_name = "apply|off|scale:FACTOR", default_value = "apply")]
    pub resource_class_limits: job::LimitPolicy,
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
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// `--ssh`: SSH into the job's container while it runs, and after its last step.
#[derive(clap::Args, Debug, Clone)]
pub struct SshArgs {
    /// Run an SSH gateway for the job: its output prints `ssh -p PORT JOB@HOST` and the host
    /// key; the container is kept after the last step until the last session ends (or the
    /// wait for a first session passes, or Ctrl-C).
    #[arg(long)]
    pub ssh: bool,
    /// A public key (or authorized_keys file) allowed to log in (repeatable; default: every
    /// ~/.ssh/*.pub).
    #[arg(long = "ssh-authorized-key", value_name = "FILE", requires = "ssh")]
    pub ssh_authorized_keys: Vec<PathBuf>,
    /// Where the gateway listens.
    #[arg(long, default_value = "127.0.0.1:0", requires = "ssh")]
    pub ssh_listen: std::net::SocketAddr,
    /// The gateway's host key (made on first use, mode 0600; default:
    /// ~/.local/state/bosun/ssh_host_ed25519_key).
    #[arg(long, value_name = "FILE", requires = "ssh")]
    pub ssh_host_key: Option<PathBuf>,
    /// How long the container waits after the last step for a first session.
    #[arg(long, value_parser = parse_duration, default_value = "10m", requires = "ssh")]
    pub ssh_wait: Duration,
    /// How long the container stays after the last session ends.
    #[arg(long, value_parser = parse_duration, default_value = "5s", requires = "ssh")]
    pub ssh_grace: Duration,
    /// How long a connection to the gateway may take to log in before it is closed.
    #[arg(long, value_parser = parse_duration, default_value = "30s", requires = "ssh")]
    pub ssh_login_grace: Duration,
}

impl SshArgs {
    /// The public keys allowed in: `authorized_keys` lines.
    fn authorized_keys(&self) -> Result<Vec<String>, RequestError> {
        let files = if self.ssh_authorized_keys.is_empty() {
            let dir = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".ssh");
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                        .collect()
                })
                .unwrap_or_default();
            found.sort();
            found
        } else {
            self.ssh_authorized_keys.clone()
        };
        let mut keys = Vec::new();
        for f in &files {
            keys.extend(
                read(f)?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        if keys.is_empty() {
            return Err(RequestError::NoSshKeys);
        }
        Ok(keys)
    }

    fn gateway(&self) -> bosun_core::gateway::GatewayConfig {
        let host_key = self.ssh_host_key.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".local/state/bosun/ssh_host_ed25519_key")
        });
        let mut c = bosun_core::gateway::GatewayConfig::new(self.ssh_listen, host_key);
        c.wait = self.ssh_wait;
        c.grace = self.ssh_grace;
        c.login_grace = self.ssh_login_grace;
        c
    }
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

impl CompileArgs {
    pub fn pipeline(&self) -> Result<config::PipelineValues, RequestError> {
        let mut pipeline = config::PipelineValues::default();
        for kv in &self.pipeline_params {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| RequestError::BadParam(kv.clone()))?;
            pipeline.parameters.push((k.to_owned(), v.to_owned()));
        }
        Ok(pipeline)
    }

    pub fn loader(&self) -> Option<config::OrbDir> {
        self.orb_dir.clone().map(config::OrbDir)
    }

    pub fn options<'a>(
        &self,
        pipeline: config::PipelineValues,
        loader: Option<&'a config::OrbDir>,
    ) -> config::CompileOptions<'a> {
        config::CompileOptions {
            pipeline,
            orbs: loader.map(|l| l as &dyn config::OrbLoader),
            orb_dir: self.orb_dir.as_ref().map(|d| d.display().to_string()),
        }
    }
}

/// Where the mirror cache is and how big it may grow. Shared by `execute`, `checkout` and
/// `cache`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CacheArgs {
    /// The cache directory; repository mirrors are kept in its `mirrors/`
    /// (default: $XDG_CACHE_HOME/bosun, ~/.cache/bosun).
    #[arg(long = "cache-dir", env = "BOSUN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Size budget of the mirrors in MiB; the least recently used go first beyond it.
    #[arg(long = "cache-budget-mb", env = "BOSUN_CACHE_BUDGET_MB")]
    pub cache_budget_mb: Option<u64>,
    /// Fetch straight from the remote, without the mirror cache.
    #[arg(long = "no-mirror")]
    pub no_mirror: bool,
}

impl CacheArgs {
    /// The mirrors, or `None` when turned off or no cache directory can be found.
    pub fn mirrors(&self) -> Option<bosun_core::mirror::Mirrors> {
        if self.no_mirror {
            return None;
        }
        let dir = self
            .cache_dir
            .clone()
            .or_else(bosun_core::mirror::Mirrors::default_cache_dir)?;
        let budget = self
            .cache_budget_mb
            .map(|mb| mb.saturating_mul(1 << 20))
            .unwrap_or(bosun_core::mirror::DEFAULT_BUDGET_BYTES);
        Some(bosun_core::mirror::Mirrors::new(&dir, budget))
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
    pub fn load(&self) -> Result<Access, RequestError> {
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
            mirrors: None,
        })
    }
}

/// Problems before the job could run, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not inside a git repository ({0})\n  help: run bosun execute in a git repository, or pass --repo URL")]
    NoRepo(String),
    #[error("--ssh: no public key to let in\n  help: pass --ssh-authorized-key FILE, or make one with ssh-keygen (~/.ssh/*.pub)")]
    NoSshKeys,
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Ssh(#[from] bosun_core::ssh::SshError),
    #[error("`--env {0}`: expected NAME=value with a valid variable name")]
    BadEnv(String),
    #[error("`--context {0}`: expected NAME=FILE")]
    BadContext(String),
    #[error("--context: {0}")]
    Dotenv(#[from] crate::dotenv::DotenvError),
    #[error("`--pipeline-param {0}`: expected KEY=VALUE")]
    BadParam(String),
    #[error("`--machine-image {0}`: expected NAME=IMAGE")]
    BadMachineImage(String),
    #[error(transparent)]
    Store(#[from] bosun_core::store::StoreError),
    #[error(transparent)]
    Setup(#[from] job::SetupError),
    #[error(transparent)]
    Executor(#[from] bosun_core::executor::ExecutorError),
}

/// Run `bosun execute`; returns the process exit code.
pub fn run(args: ExecuteArgs) -> u8 {
    let sink: Arc<dyn EventSink> = if args.json {
        Arc::new(JsonSink::new(std::io::stdout()))
    } else {
        let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
        Arc::new(TerminalSink::new(std::io::stdout()).live(live))
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
    // The engine's version is asked while the request is read (keys, settings): the two
    // overlap instead of adding up.
    let connecting = tokio::spawn(DockerExecutor::connect());
    let ready = match request(&args) {
        Ok(req) => match connecting.await {
            Ok(connected) => connected.map(|e| (req, e)).map_err(RequestError::from),
            Err(e) => Err(RequestError::from(
                bosun_core::executor::ExecutorError::Connect {
                    host: std::env::var("DOCKER_HOST").ok(),
                    source: Box::new(e),
                },
            )),
        },
        Err(e) => {
            connecting.abort();
            Err(e)
        }
    };
    let (req, executor) = match ready {
        Ok(r) => {
            oidc_notice(&r.0, sink.as_ref());
            r
        }
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
    let executor: Arc<dyn bosun_core::executor::Executor> = Arc::new(executor);
    {
        // What a killed run left: job directories whose containers are gone.
        let executor = Arc::clone(&executor);
        tokio::spawn(async move {
            let n = bosun_core::job::work_tree::sweep_stale(
                executor.as_ref(),
                "execute",
                Duration::from_secs(600),
            )
            .await;
            if n > 0 {
                tracing::info!("removed {n} job working directories an earlier run left");
            }
        });
    }
    // Kept until the job has ended: the gateway stops with it.
    let _gateway = if args.ssh.ssh {
        let started = match args.ssh.authorized_keys() {
            Ok(keys) => {
                req.registry.grant_ssh_every_job(keys);
                bosun_core::gateway::Gateway::start(
                    args.ssh.gateway(),
                    req.registry.clone(),
                    Arc::clone(&executor),
                )
                .await
                .map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(g) => Some(g),
            Err(error) => {
                sink.emit(&Event::JobFinished {
                    job: label,
                    status: JobStatus::InfrastructureFail,
                    duration_ms: 0,
                    steps: Vec::new(),
                    error: Some(error),
                });
                return EXIT_SETUP;
            }
        }
    } else {
        None
    };
    let outcome = bosun_core::run::run(executor, req, sink, cancel, &|_| {}).await;
    match outcome.status {
        JobStatus::Success => EXIT_SUCCESS,
        JobStatus::Failed | JobStatus::TimedOut => EXIT_STEP_FAILED,
        JobStatus::Canceled => EXIT_CANCELED,
        JobStatus::InfrastructureFail => EXIT_SETUP,
    }
}

/// First SIGINT/SIGTERM cancels the job (steps get TERM, then KILL, then the containers are
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
                    "still stopping: removing the containers".to_owned()
                } else {
                    "canceling: stopping the running step and removing the containers".to_owned()
                },
            });
        }
    });
}

/// The command line as a [`JobRequest`]: nothing is fetched or compiled here.
/// `bosun execute` is no OIDC issuer: say so when the config names the tokens and the user
/// gave none (`--secret-env CIRCLE_OIDC_TOKEN=…` stands in for one).
fn oidc_notice(req: &JobRequest, sink: &dyn EventSink) {
    const TOKEN: &str = "CIRCLE_OIDC_TOKEN";
    let ConfigSource::File { path, .. } = &req.config else {
        return;
    };
    let given = req.env.iter().any(|e| e.name.starts_with(TOKEN));
    let named = std::fs::read_to_string(path).is_ok_and(|t| t.contains(TOKEN));
    if named && !given {
        sink.emit(&Event::Info {
            message: format!(
                "note: the config uses ${TOKEN}; bosun execute has no OIDC issuer, so \
                 {TOKEN} and {TOKEN}_V2 are unset (a coordinator with --oidc-issuer gives \
                 them; --secret-env {TOKEN}=… passes one of your own)"
            ),
        });
    }
}

fn request(args: &ExecuteArgs) -> Result<JobRequest, RequestError> {
    let access = &args.access;
    let mut keys = Vec::new();
    if let Some(p) = &access.user_key {
        keys.push(SshKey::from_file(p, KeyRole::User)?);
    }
    if let Some(p) = &access.deploy_key {
        keys.push(SshKey::from_file(p, KeyRole::Deploy)?);
    }
    let known_hosts = access
        .known_hosts
        .iter()
        .map(|p| Ok((read(p)?, p.display().to_string())))
        .collect::<Result<Vec<_>, RequestError>>()?;
    let mut env = Vec::new();
    for (kv, secret) in args
        .env
        .iter()
        .map(|kv| (kv, false))
        .chain(args.secret_env.iter().map(|kv| (kv, true)))
    {
        match kv.split_once('=') {
            Some((k, v)) if config::valid_env_name(k) => env.push(EnvEntry {
                name: k.to_owned(),
                value: v.to_owned(),
                secret,
            }),
            _ => return Err(RequestError::BadEnv(kv.clone())),
        }
    }
    let mut contexts: Vec<(String, Vec<EnvEntry>)> = Vec::new();
    for kv in &args.contexts {
        let (name, file) = match kv.split_once('=') {
            Some((n, f)) if !n.trim().is_empty() && !f.is_empty() => (n.trim(), Path::new(f)),
            _ => return Err(RequestError::BadContext(kv.clone())),
        };
        let vars = crate::dotenv::parse(&file.display().to_string(), &read(file)?)?;
        let env = vars
            .into_iter()
            .map(|(name, value)| EnvEntry {
                name,
                value,
                secret: true,
            })
            .collect();
        contexts.retain(|(n, _)| n != name);
        contexts.push((name.to_owned(), env));
    }
    let mut machine_images = BTreeMap::new();
    for kv in &args.machine_images {
        match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                machine_images.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => return Err(RequestError::BadMachineImage(kv.clone())),
        }
    }
    let additional_keys = args
        .ssh_keys
        .iter()
        .map(|p| SshKey::from_file(p, KeyRole::Additional))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = std::env::current_dir().map_err(|source| RequestError::Read {
        path: ".".into(),
        source,
    })?;
    let local_root = match &args.repo {
        Some(_) => None,
        None => Some(
            find_repo_root(&cwd).ok_or_else(|| RequestError::NoRepo(cwd.display().to_string()))?,
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
    // Caches, workspaces and artifacts are this repository's own.
    let store = LocalStore::open(
        args.store.clone().unwrap_or_else(LocalStore::default_root),
        bosun_core::store::ProjectScope::new(&source.url),
    )?;
    let config = match (&args.config, &args.repo) {
        (Some(p), _) => ConfigSource::File {
            path: p.clone(),
            name: p.display().to_string(),
        },
        (None, None) => ConfigSource::File {
            path: cwd.join(".circleci/config.yml"),
            name: ".circleci/config.yml".to_owned(),
        },
        (None, Some(_)) => ConfigSource::Repository,
    };
    let target = match &args.workflow {
        None => Target::Job(args.job.clone()),
        Some(name) => Target::Workflow {
            name: name.clone(),
            max_parallel: args.max_parallel,
            approve: args.approve,
        },
    };
    let pipeline_params = args.compile.pipeline()?.parameters;
    Ok(JobRequest {
        id: args.job_id.clone().unwrap_or_else(new_job_id),
        agent_id: "execute".to_owned(),
        source,
        local_branch: local_root.as_deref().and_then(local_head_branch),
        config,
        target,
        keys,
        additional_keys,
        known_hosts,
        vcs_hosts: access.vcs_hosts.clone(),
        mirrors: args.cache.mirrors(),
        env,
        project_env: Vec::new(),
        contexts,
        pipeline_params,
        trigger_source: String::new(),
        base_revision: String::new(),
        schedule: Default::default(),
        pipeline_number: args.build_num,
        branch: None,
        tag: None,
        pull_request: None,
        time_limit: args.timeout,
        network: args.network.clone(),
        kill_grace: Duration::from_secs(args.kill_grace),
        store,
        orb_dir: args.compile.orb_dir.clone(),
        machine_images,
        limits: args.resource_class_limits,
        registry: job::Registry::new(),
        // The engine DOCKER_HOST names, sockets in a private directory under TMPDIR.
        engine: bosun_core::engine_proxy::EngineSettings::from_env(
            bosun_core::engine_proxy::EngineSettings::default_socket_root(),
        )
        .ok()
        .map(std::sync::Arc::new),
        // No page, no earlier builds to know of; the user is the one running bosun.
        identity: job::JobIdentity {
            username: nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name),
            ..Default::default()
        },
        // One job per process: nothing to keep ready for a next one.
        ready: None,
    })
}

/// The branch a local repository's HEAD is on (plain file read; `None` when detached).
fn local_head_branch(root: &Path) -> Option<String> {
    let head = std::fs::read_to_string(root.join(".git/HEAD")).ok()?;
    head.trim()
        .strip_prefix("ref: refs/heads/")
        .map(str::to_owned)
}

fn read(p: &Path) -> Result<String, RequestError> {
    std::fs::read_to_string(p).map_err(|source| RequestError::Read {
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
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `bosun checkout`: fetch a repository exactly as a job's checkout would (same keys, host-key
/// checks, submodules), to check access or measure. Returns the exit code.
pub fn checkout(args: CheckoutArgs) -> u8 {
    let result = args.access.load().and_then(|access| {
        let creds = bosun_core::checkout::Credentials {
            keys: access.keys,
            known_hosts: access.known_hosts,
            hosts: access.vcs_hosts,
        };
        let spec = bosun_core::checkout::CheckoutSpec {
            url: args.url.clone(),
            reference: args.reference.clone(),
            dest: args.dest.clone(),
            mirrors: args.cache.mirrors(),
        };
        let mut progress = |line: &str| eprintln!("{line}");
        bosun_core::checkout::checkout(&spec, &creds, &mut progress)
            .map_err(|e| RequestError::Setup(job::SetupError::Checkout(e)))
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

/// `--timeout`: CircleCI's duration syntax (`90s`, `10m`, `1.5h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    config::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}`: expected a duration such as 90s, 10m or 1h"))
}
