//! What a front door asks for, and the one path from that to a running job: keys and host
//! keys parsed, the source fetched when the config lives in it, the config compiled, one
//! [`JobContext`] for its jobs to share and one [`JobSpec`] per container made. `bosun execute` and `bosun agent` only build a
//! [`JobRequest`] and choose a sink; [`run`] does the rest for both.

use super::{Access, JobContext, Prefetched, PullRequest, Registry, Secrets, SetupError, Source};
use crate::checkout::{self, CheckoutSpec, Credentials};
use crate::config::{self, JobPlan, OrbDir};
use crate::ssh::{KnownHosts, SshKey, VcsHosts};
use crate::store::LocalStore;
use crate::stream::{Event, EventSink};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One variable for every step, highest precedence.
#[derive(Clone)]
pub struct EnvEntry {
    pub name: String,
    pub value: String,
    /// Masked wherever the job's output goes.
    pub secret: bool,
}

impl std::fmt::Debug for EnvEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvEntry")
            .field("name", &self.name)
            .field("value", &if self.secret { "<secret>" } else { &self.value })
            .finish()
    }
}

/// Where the config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// A file on this machine (`--config`, or the working tree's `.circleci/config.yml`);
    /// `name` is how errors call it.
    File { path: PathBuf, name: String },
    /// `.circleci/config.yml` of the checked-out commit (fetched first).
    Repository,
    /// A config handed over whole: a pipeline's continued config (dynamic config), which no
    /// commit holds. `name` is how errors call it.
    Text { text: String, name: String },
}

/// What to run of the config.
#[derive(Debug, Clone)]
pub enum Target {
    /// One job, on all its `parallelism` nodes.
    Job(String),
    /// One node of a job: the coordinator hands out each node as its own job. With
    /// `workflow`, the job is looked up in that workflow (a pipeline's job), else in the
    /// first workflow that has it.
    Node {
        job: String,
        index: u32,
        total: u32,
        workflow: Option<String>,
    },
    /// A whole workflow (`bosun execute --workflow`).
    Workflow {
        name: String,
        max_parallel: usize,
        approve: bool,
    },
}

/// A job as a front door asks for it.
pub struct JobRequest {
    /// Unique per run; labels the containers (workflow jobs get `ID-NAME`).
    pub id: String,
    pub agent_id: String,
    pub source: Source,
    /// The branch a local repository's HEAD is on, when the source is not fetched first.
    pub local_branch: Option<String>,
    pub config: ConfigSource,
    pub target: Target,
    /// User key first, then deploy key.
    pub keys: Vec<SshKey>,
    /// Keys only `add_ssh_keys` installs.
    pub additional_keys: Vec<SshKey>,
    /// Extra trusted host-key lines beside Bitbucket's pinned ones: (text, where it came from).
    pub known_hosts: Vec<(String, String)>,
    /// `HOST=ADDR:PORT` mappings for VCS hosts.
    pub vcs_hosts: Vec<String>,
    /// The mirror cache checkouts fetch through (`None`: none).
    pub mirrors: Option<crate::mirror::Mirrors>,
    /// Highest-precedence variables (`--env`, `--secret-env`): over everything the config
    /// sets, per step.
    pub env: Vec<EnvEntry>,
    /// The project's variables and its contexts' (a coordinator's, or `--context`): the
    /// lowest layer, under the built-in variables and the config's `environment:`
    /// (CircleCI's order).
    pub project_env: Vec<EnvEntry>,
    /// Contexts given by name (`bosun execute --context NAME=FILE`): a workflow job gets
    /// those its `context:` names, over `project_env`; a job run alone gets them all, in the
    /// order given. Their values are secret.
    pub contexts: Vec<(String, Vec<EnvEntry>)>,
    /// Pipeline parameters (`--pipeline-param`), number, and what the coordinator knows of
    /// the ref (its branch or tag, which a fetched commit alone may not tell).
    pub pipeline_params: Vec<(String, String)>,
    /// `pipeline.trigger_source` and `pipeline.git.base_revision` when a coordinator's
    /// pipeline gave them (empty: the defaults).
    pub trigger_source: String,
    pub base_revision: String,
    /// `pipeline.schedule.name` and `.id` when a scheduled pipeline gave them (else empty).
    pub schedule: (String, String),
    pub pipeline_number: u64,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub pull_request: Option<PullRequest>,
    /// The job's time limit, preparation included.
    pub time_limit: Option<Duration>,
    pub network: Option<String>,
    pub kill_grace: Duration,
    pub store: LocalStore,
    pub orb_dir: Option<PathBuf>,
    pub machine_images: BTreeMap<String, String>,
    pub registry: Registry,
    /// How jobs' Docker engines are served; `None`: not offered.
    pub engine: Option<Arc<crate::engine_proxy::EngineSettings>>,
    /// What the front door knows of the job's ids, user and page (`CIRCLE_*`).
    pub identity: super::JobIdentity,
    /// What the runner does with a docker job's `resource_class`.
    pub limits: super::LimitPolicy,
    /// Ready-made primary containers (the agent's pool); `None`: every job creates its own.
    pub ready: Option<Arc<dyn super::ready::ReadySource>>,
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
    #[error("no config at {0}\n  help: run bosun in a project with .circleci/config.yml, or pass --config FILE")]
    NoConfig(String),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Configs(Vec<config::ConfigError>),
    #[error("{0}")]
    Ssh(#[from] crate::ssh::SshError),
    #[error("no workflow named `{name}`; the config has: {known}")]
    NoWorkflow { name: String, known: String },
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("the job's time limit ({}) ran out while it was being prepared", crate::stream::format_duration(super::millis(*.0)))]
    TimedOut(Duration),
    #[error("canceled while the job was being prepared")]
    Canceled,
    #[error("compiling the config took longer than {}s; it was stopped\n  help: a config whose commands call each other many times over expands to millions of steps: simplify it", .0.as_secs())]
    CompileTooSlow(Duration),
}

/// A request made ready to run.
pub struct Prepared {
    pub(crate) context: JobContext,
    /// `pipeline.git.branch` / `.tag`: what a workflow's filters are evaluated for.
    pub(crate) git_branch: String,
    pub(crate) git_tag: Option<String>,
    pub(crate) what: What,
}

pub(crate) enum What {
    Job {
        plan: Box<JobPlan>,
        node: Option<(u32, u32)>,
    },
    Workflow {
        workflow: config::Workflow,
        max_parallel: usize,
        approve: bool,
    },
}

impl Prepared {
    /// How many steps the (single) job has; 0 for a workflow.
    pub fn step_count(&self) -> usize {
        match &self.what {
            What::Job { plan, .. } => plan.steps.len(),
            What::Workflow { .. } => 0,
        }
    }
}

/// Keys, host keys, the checkout when the config (or a workflow's filters) need it, and the
/// compiled config.
pub async fn prepare(req: JobRequest, sink: Arc<dyn EventSink>) -> Result<Prepared, PrepareError> {
    let secrets = Secrets::of(
        req.env
            .iter()
            .chain(&req.project_env)
            .chain(req.contexts.iter().flat_map(|(_, e)| e)),
        &req.keys,
        &req.additional_keys,
    );
    prepare_with(req, secrets, sink).await
}

/// [`prepare`], with the request's secrets already gathered.
pub(crate) async fn prepare_with(
    req: JobRequest,
    secrets: Secrets,
    sink: Arc<dyn EventSink>,
) -> Result<Prepared, PrepareError> {
    let mut known_hosts = KnownHosts::pinned();
    for (text, origin) in &req.known_hosts {
        known_hosts.extend(KnownHosts::parse(text, origin)?);
    }
    let mut vcs_hosts = VcsHosts::new();
    for m in req.vcs_hosts.iter().filter(|m| !m.trim().is_empty()) {
        vcs_hosts.add_mapping(m.trim())?;
    }
    let access = Access {
        keys: req.keys,
        known_hosts,
        vcs_hosts,
        mirrors: req.mirrors,
    };
    let source = req.source;
    let fetch = || {
        let (access, source, sink) = (access.clone(), source.clone(), Arc::clone(&sink));
        async move {
            tokio::task::spawn_blocking(move || fetch_source(&access, &source, sink.as_ref()))
                .await
                .map_err(|e| SetupError::Prepare(format!("the checkout task failed: {e}")))?
        }
    };

    // With the config in the repository, fetch first. A workflow needs the exact branch/tag
    // (filters) before anything runs: fetch first too.
    let mut prefetched: Option<Prefetched> = None;
    let (config_text, config_name) = match &req.config {
        ConfigSource::File { path, name } => {
            if !path.exists() {
                return Err(PrepareError::NoConfig(path.display().to_string()));
            }
            (read(path)?, name.clone())
        }
        ConfigSource::Text { text, name } => (text.clone(), name.clone()),
        ConfigSource::Repository => {
            let fetched = fetch().await?;
            let p = fetched.dir.path().join("repo/.circleci/config.yml");
            if !p.exists() {
                return Err(PrepareError::NoConfig(format!(
                    "{} (at {}): .circleci/config.yml",
                    source.url, fetched.outcome.sha
                )));
            }
            let text = read(&p)?;
            prefetched = Some(fetched);
            (text, ".circleci/config.yml".to_owned())
        }
    };
    if matches!(req.target, Target::Workflow { .. }) && prefetched.is_none() {
        prefetched = Some(fetch().await?);
    }

    // pipeline.git.*: what the coordinator said, else exact from a fetched checkout, else
    // the best the ref says.
    let (git_branch, git_tag, revision) = match &prefetched {
        Some(p) => (
            req.branch
                .clone()
                .or(p.outcome.branch.clone())
                .unwrap_or_default(),
            req.tag.clone().or(p.outcome.tag.clone()),
            p.outcome.sha.clone(),
        ),
        None => (
            req.branch
                .clone()
                .or(source.reference.clone())
                .or(req.local_branch.clone())
                .unwrap_or_default(),
            req.tag.clone(),
            String::new(),
        ),
    };
    let pipeline = config::PipelineValues {
        parameters: req.pipeline_params.clone(),
        number: i64::try_from(req.pipeline_number).unwrap_or(i64::MAX),
        project_git_url: source.url.clone(),
        project_type: "bitbucket".to_owned(),
        git_branch: git_branch.clone(),
        git_tag: git_tag.clone().unwrap_or_default(),
        git_revision: revision,
        git_base_revision: req.base_revision.clone(),
        trigger_source: if req.trigger_source.is_empty() {
            "bosun".to_owned()
        } else {
            req.trigger_source.clone()
        },
        schedule_name: req.schedule.0.clone(),
        schedule_id: req.schedule.1.clone(),
        id: req
            .identity
            .pipeline_id
            .clone()
            .unwrap_or_else(|| config::PipelineValues::default().id),
        ..config::PipelineValues::default()
    };
    // The config is the repository's, so anyone with push access wrote it: compile it off
    // the runtime's threads, within a time limit (the compiler's own budgets bound its size).
    let (target, orb_dir) = (req.target.clone(), req.orb_dir.clone());
    let compiling = tokio::task::spawn_blocking(move || {
        compile_target(&config_text, &config_name, &target, pipeline, orb_dir)
    });
    let what = match tokio::time::timeout(COMPILE_LIMIT, compiling).await {
        Ok(Ok(what)) => what?,
        Ok(Err(e)) => {
            return Err(PrepareError::Setup(SetupError::Prepare(format!(
                "the config compiler failed: {e}"
            ))))
        }
        Err(_) => return Err(PrepareError::CompileTooSlow(COMPILE_LIMIT)),
    };
    // Ids nobody gave: derived from what they name, so they stay put across runs.
    let mut identity = req.identity;
    let ids = super::identity::uuid_from;
    identity
        .project_id
        .get_or_insert_with(|| super::identity::project_id(&source.url));
    identity
        .organization_id
        .get_or_insert_with(|| super::identity::organization_id(&source.url));
    identity
        .pipeline_id
        .get_or_insert_with(|| ids(&format!("pipeline/{}", req.id)));
    identity
        .workflow_id
        .get_or_insert_with(|| ids(&format!("workflow/{}", req.id)));
    Ok(Prepared {
        context: JobContext {
            workspace: req.id,
            agent_id: req.agent_id,
            source: Some(source),
            access,
            additional_keys: req.additional_keys,
            env: req
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            project_env: req
                .project_env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            contexts: req
                .contexts
                .iter()
                .map(|(name, env)| {
                    let vars = env
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone()))
                        .collect();
                    (name.clone(), vars)
                })
                .collect(),
            secrets,
            time_limit: req.time_limit,
            network: req.network,
            build_num: req.pipeline_number,
            kill_grace: req.kill_grace,
            prefetched,
            store: req.store,
            pull_request: req.pull_request,
            git_ref: (req.branch.clone(), req.tag.clone()),
            machine_images: req.machine_images,
            registry: req.registry,
            engine: req.engine,
            identity,
            limits: req.limits,
            ready: req.ready,
        },
        git_branch,
        git_tag,
        what,
    })
}

/// How long compiling a job's config may take.
const COMPILE_LIMIT: Duration = Duration::from_secs(30);

/// Compile what `target` names.
fn compile_target(
    config_text: &str,
    config_name: &str,
    target: &Target,
    pipeline: config::PipelineValues,
    orb_dir: Option<PathBuf>,
) -> Result<What, PrepareError> {
    let loader = orb_dir.clone().map(OrbDir);
    let opts = config::CompileOptions {
        pipeline,
        orbs: loader.as_ref().map(|l| l as &dyn config::OrbLoader),
        orb_dir: orb_dir.as_ref().map(|d| d.display().to_string()),
    };
    Ok(match target {
        Target::Node {
            job,
            index,
            total,
            workflow: Some(workflow),
        } => What::Job {
            plan: Box::new(config::compile_workflow_job(
                config_text,
                config_name,
                workflow,
                job,
                &opts,
            )?),
            node: Some((*index, *total)),
        },
        Target::Job(job) | Target::Node { job, .. } => What::Job {
            plan: Box::new(config::compile_job_with(
                config_text,
                config_name,
                job,
                &opts,
            )?),
            node: match target {
                Target::Node { index, total, .. } => Some((*index, *total)),
                _ => None,
            },
        },
        Target::Workflow {
            name,
            max_parallel,
            approve,
        } => {
            let compiled =
                config::compile(config_text, config_name, &opts).map_err(PrepareError::Configs)?;
            let known = compiled
                .workflows
                .iter()
                .map(|w| w.name.clone())
                .collect::<Vec<_>>()
                .join(", ");
            let workflow = compiled
                .workflows
                .into_iter()
                .find(|w| &w.name == name)
                .ok_or_else(|| PrepareError::NoWorkflow {
                    name: name.clone(),
                    known,
                })?;
            What::Workflow {
                workflow,
                max_parallel: *max_parallel,
                approve: *approve,
            }
        }
    })
}

fn read(p: &std::path::Path) -> Result<String, PrepareError> {
    std::fs::read_to_string(p).map_err(|source| PrepareError::Read {
        path: p.display().to_string(),
        source,
    })
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
        mirrors: access.mirrors.clone(),
    };
    let mut progress = |line: &str| {
        sink.emit(&Event::Info {
            message: line.to_owned(),
        })
    };
    let outcome = checkout::checkout(&cspec, &creds, &mut progress)?;
    sink.emit(&Event::CheckedOut {
        sha: outcome.sha.clone(),
    });
    Ok(Prefetched {
        dir: Arc::new(dir),
        outcome,
    })
}
