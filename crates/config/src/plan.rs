//! The compiled job plan: what the executor runs. Nothing here refers back to YAML.

use std::time::Duration;

/// Default for `run.no_output_timeout`, as CircleCI documents it.
pub const DEFAULT_NO_OUTPUT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub name: String,
    /// The primary container: the first `docker:` image; steps run in it.
    pub image: String,
    /// `user:` of the primary image; `None` keeps the image's own `USER`.
    pub user: Option<String>,
    /// `auth: {username, password}` of the primary image (not interpolated yet).
    pub image_auth: Option<(String, String)>,
    /// `environment:` of the primary image (applies to the whole container).
    pub image_environment: Vec<(String, String)>,
    /// Executor and job `environment:`, merged (job wins).
    pub environment: Vec<(String, String)>,
    /// As written (`~/project` by default); `~` is expanded against the container's `$HOME`.
    pub working_directory: String,
    /// Job-level `shell:`; `None` means bash if the image has it, else sh.
    pub shell: Option<String>,
    pub parallelism: u32,
    pub steps: Vec<Step>,
    /// `docker:` images after the first: service containers beside the primary.
    pub services: Vec<DockerImage>,
    /// What the steps run in; for `Machine`, `image` is the `machine:` image name
    /// (`default` for `machine: true`), mapped to a local image by the agent.
    pub executor: ExecutorKind,
    /// A docker job's sized `resource_class:` (none for no class, a runner class or a machine
    /// job): the agent turns it into container limits.
    pub resource_class: Option<super::resource_class::ResourceClass>,
    /// Why this agent cannot run the job although its config is valid (an image's
    /// `aws_auth:`): the error with its place in the config, reported when the job runs.
    pub unsupported: Option<String>,
}

/// The kind of executor a job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutorKind {
    /// A `docker:` primary container (and services).
    #[default]
    Docker,
    /// A `machine:` job: a whole system (systemd, sudo) instead of a container image's shell.
    Machine,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Display name: `name:` or, as CircleCI does, the command itself.
    pub name: String,
    pub kind: StepKind,
    pub when: When,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `checkout`, with `path:` relative to the working directory (or absolute, or `~/...`).
    Checkout {
        path: Option<String>,
    },
    Run(RunStep),
    // Data-only steps: compiled and carried in the plan; the runner executes them later.
    SaveCache {
        key: String,
        paths: Vec<String>,
        name: Option<String>,
        when: When,
    },
    /// `key` first, then `keys`, in order: the first hit wins.
    RestoreCache {
        keys: Vec<String>,
    },
    PersistToWorkspace {
        root: String,
        paths: Vec<String>,
    },
    AttachWorkspace {
        at: String,
    },
    StoreArtifacts {
        path: String,
        destination: Option<String>,
    },
    StoreTestResults {
        path: String,
    },
    /// Empty means every key the project has.
    AddSshKeys {
        fingerprints: Vec<String>,
    },
    /// `version` is shown, not honoured: jobs get the agent's engine. With
    /// `docker_layer_caching`, the images the job builds stay on the engine when the agent
    /// keeps images (`engine_keep_images`); otherwise they are removed with the job.
    SetupRemoteDocker {
        docker_layer_caching: bool,
        version: Option<String>,
    },
}

impl StepKind {
    /// The config's name for this step type (`save_cache`), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            StepKind::Checkout { .. } => "checkout",
            StepKind::Run(_) => "run",
            StepKind::SaveCache { .. } => "save_cache",
            StepKind::RestoreCache { .. } => "restore_cache",
            StepKind::PersistToWorkspace { .. } => "persist_to_workspace",
            StepKind::AttachWorkspace { .. } => "attach_workspace",
            StepKind::StoreArtifacts { .. } => "store_artifacts",
            StepKind::StoreTestResults { .. } => "store_test_results",
            StepKind::AddSshKeys { .. } => "add_ssh_keys",
            StepKind::SetupRemoteDocker { .. } => "setup_remote_docker",
        }
    }
}

/// One `docker:` image of a job. The first is the primary container; the rest are services.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DockerImage {
    pub image: String,
    /// Hostname of a service container (`localhost` when unset).
    pub name: Option<String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    pub user: Option<String>,
    pub environment: Vec<(String, String)>,
    /// `auth: {username, password}` for a private registry.
    pub auth: Option<(String, String)>,
    /// `aws_auth:` / `gcp_auth:` (cloud registry credentials), which this agent cannot use:
    /// the whole error (file:line:col, key, image), reported when the job is run rather than
    /// compiled, since the config itself is valid.
    pub unsupported_auth: Option<String>,
}

/// A compiled build job: the plan the executor runs plus the executor facts it does not use yet.
/// (Kept beside [`JobPlan`] rather than in it so that `JobPlan` literals elsewhere still build.)
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledJob {
    pub plan: JobPlan,
    /// Every image, primary first (the plan's `image`/`user`/`image_environment` repeat it).
    pub docker: Vec<DockerImage>,
    pub resource_class: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunStep {
    pub command: String,
    pub shell: Option<String>,
    pub environment: Vec<(String, String)>,
    /// Relative to the job's working directory unless absolute.
    pub working_directory: Option<String>,
    pub background: bool,
    pub no_output_timeout: Duration,
}

/// `when:` of a step: whether it runs given how the job has gone so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    #[default]
    OnSuccess,
    OnFail,
    Always,
}

impl When {
    pub fn should_run(self, job_failed: bool) -> bool {
        match self {
            When::OnSuccess => !job_failed,
            When::OnFail => job_failed,
            When::Always => true,
        }
    }
}
