//! Where a job's commands run. The trait is the whole surface `job` needs (create, start,
//! upload, exec with streamed output and its exit status, an interactive exec with stdin and a
//! terminal, wait, remove, networks, list by label), object-safe so the job core holds an
//! `Arc<dyn Executor>` and a Kubernetes executor can sit beside the Docker one without `job`
//! changing. The contract, and how it maps onto a pod, is written down in `docs/executors.md`.

pub mod docker;
pub mod double;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

pub use docker::DockerExecutor;

/// Label every container and network carries: the job's id. Used to find leftovers.
pub const LABEL_JOB: &str = "bosun.job";
/// Label every container and network carries: the agent (or `bosun execute` run) that made it.
pub const LABEL_AGENT: &str = "bosun.agent";
/// Label naming what a container is to its job: `primary`, `service` (see [`ResourceKind`]).
pub const LABEL_KIND: &str = "bosun.kind";

/// Where a mounted working directory's objects shared with the mirror live, below it on the
/// host and in the container alike: mounted read-only over themselves
/// ([`ContainerSpec::work_tree`]; what goes there: `job::work_tree`).
pub const SHARED_OBJECTS: &str = ".git/bosun-shared-objects";

/// Where the shared objects of a mounted working directory at `tree` (a host path) are on
/// the host: beside it (`<tree>.objects`), never inside it. The engine resolves a mount's
/// host path again whenever it sets the container's mounts up (at its start, and for every
/// archive request), so a host path running through the job's own directory would follow
/// whatever link the job planted there (`.git` → anywhere on the host): the engine would
/// make directories there, or mount another job's objects into this job's view.
pub fn shared_objects_source(tree: &str) -> String {
    format!("{}.objects", tree.trim_end_matches('/'))
}

/// An engine error's cause, kept as a chain but without naming the engine client's types.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot reach the Docker engine{}: {source}\n  help: is dockerd running, and may this user use its socket? Point DOCKER_HOST at it (unix:///var/run/docker.sock or tcp://HOST:2375)", .host.as_deref().map(|h| format!(" at {h}")).unwrap_or_default())]
    Connect {
        host: Option<String>,
        #[source]
        source: Cause,
    },
    #[error("image `{image}` is not in the engine and could not be pulled: {reason}\n  help: build or load it first (docker build / docker load), or check the name")]
    ImageMissing { image: String, reason: String },
    /// A pull with the image's `auth:` credentials failed (refused, most often).
    #[error("image `{image}`: the registry {registry} refused the pull with the credentials of `{username}` (the image's `auth:`): {reason}\n  help: check `auth: {{username, password}}` and the secret variables it names")]
    PullRefused {
        image: String,
        registry: String,
        username: String,
        reason: String,
    },
    #[error("{target}: {what} failed: {source}")]
    Engine {
        /// The container, exec, image or network the request was about.
        target: String,
        what: &'static str,
        #[source]
        source: Cause,
    },
    /// The engine answered in a way the executor does not understand.
    #[error("{target}: {what}: {detail}")]
    Protocol {
        target: String,
        what: &'static str,
        detail: String,
    },
}

/// `auth: {username, password}` of a private registry's image (values already interpolated).
/// The password never appears in `Debug`, logs, errors or a command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: crate::private::Secret<String>,
}

/// The registry an image reference names (`docker.io` when its first component is not a host).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// An engine id as people read it: a full 64-hex-digit container, exec or image id is cut to
/// its first 12 digits, as the `docker` command shows it (and accepts it back); a name, or
/// anything else, is left whole.
pub fn short_id(id: &str) -> &str {
    match id.get(..12) {
        Some(head) if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) => head,
        _ => id,
    }
}

/// What the engine says of one layer of an image it is pulling: its `status` words
/// (`Pulling fs layer`, `Downloading`, `Extracting`, `Pull complete`, `Already exists`…) and,
/// while bytes move, how many of how many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProgress {
    /// The layer's short id (12 hex digits), as `docker pull` shows it.
    pub layer: String,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

/// Where [`Executor::image_info`] reports a pull's progress (called from the pulling task;
/// keep it cheap).
pub type PullProgress<'a> = &'a (dyn Fn(LayerProgress) + Send + Sync);

/// What the agent learns about an image before it starts a container from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    pub user: Option<String>,
    pub env: Vec<String>,
    /// The engine's id of the image (`sha256:…`): it names the image's content, so what is
    /// read from one image id holds for every container of it.
    pub id: Option<String>,
}

/// Which network a container joins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// The engine's default bridge.
    #[default]
    Default,
    /// A named network (e.g. where the VCS host lives).
    Named(String),
    /// Another container's network namespace: its `localhost` is this one's (service
    /// containers join the primary's, as the pod of a Kubernetes executor would).
    ContainerOf(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
    /// `None` keeps the image's `USER`.
    pub user: Option<String>,
    /// `K=V` pairs set on the container itself.
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub network: NetworkMode,
    /// Replaces the image's ENTRYPOINT (`None` keeps it).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's CMD (`None` keeps it).
    pub cmd: Option<Vec<String>>,
    /// Keep the main process's stdin open until the attached client closes it (the primary
    /// takes its files that way).
    pub stdin: bool,
    /// Run the engine's tiny init as PID 1 (reaps what background steps leave). Off when the
    /// main process is an init itself (systemd in a `machine` job).
    pub init: bool,
    /// `NAME:ADDRESS` lines added to the container's `/etc/hosts` (service names).
    pub extra_hosts: Vec<String>,
    /// Paths mounted as fresh tmpfs (`/run` for systemd).
    pub tmpfs: Vec<String>,
    /// Host paths mounted read-only at the same place (`/sys/fs/cgroup` for systemd).
    pub read_only_binds: Vec<String>,
    /// Signal the engine sends on stop (systemd wants SIGRTMIN+3).
    pub stop_signal: Option<String>,
    /// Host directories mounted read-write: `(host path, container path)`. Only the job's
    /// engine socket directory (see `engine_proxy`); never the job's files.
    pub binds: Vec<(String, String)>,
    /// The job's working directory prepared on the host (a local engine only; see
    /// `job::work_tree`): `(host directory, container directory)`, mounted read-write, and
    /// its shared objects ([`shared_objects_source`] on the host) read-only at
    /// [`SHARED_OBJECTS`] below the container directory.
    pub work_tree: Option<(String, String)>,
    /// The in-job executable on the host (a local engine), mounted read-only at
    /// `bosun_circleci::main_process::MOUNTED_PATH`: the container's main process from its start.
    pub runtime: Option<String>,
    /// CPU and memory caps (a docker job's `resource_class`); `None`: unlimited.
    pub limits: Option<Limits>,
    /// Keep the main process's output out of the engine's log driver. The primary's carries
    /// every step's output through the step runner: it belongs in the job's log (masked) and
    /// in no file on the host (`/var/lib/docker/containers/*/…-json.log`).
    pub unlogged: bool,
}

/// A container's CPU and memory caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Billionths of a CPU (Docker's `NanoCpus`). An engine with fewer CPUs caps it at what
    /// it has (asking for more is an error there, and would limit nothing).
    pub nano_cpus: i64,
    /// Bytes of memory, swap included (no swap beyond it).
    pub memory_bytes: i64,
}

/// A running container's main process: its stdin and its output.
pub struct Attached {
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub output: OutputStream,
}

#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub cmd: Vec<String>,
    /// `K=V` pairs; never key material (that travels as files, through `upload_tar`).
    pub env: Vec<String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

pub type OutputStream = BoxStream<'static, Result<Output, ExecutorError>>;

/// A started command: its output, then its exit status once the output has ended.
pub struct Exec {
    pub output: OutputStream,
    /// Resolves to the exit code once the process has ended (`None` if the engine never
    /// reported one, e.g. the container went away). Await it after `output` ends.
    pub exit: BoxFuture<'static, Result<Option<i64>, ExecutorError>>,
}

/// A pseudo-terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtySize {
    pub cols: u16,
    pub rows: u16,
}

/// Resizes an interactive command's terminal (a no-op without one).
pub type Resizer =
    std::sync::Arc<dyn Fn(TtySize) -> BoxFuture<'static, Result<(), ExecutorError>> + Send + Sync>;

/// A command someone drives (an SSH session): its stdin, its output (one stream when it has
/// a terminal), a way to resize its terminal, and its exit status once the output has ended.
pub struct Interactive {
    /// The command's stdin; shutting it down is end of input.
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub output: OutputStream,
    pub resize: Resizer,
    /// As [`Exec::exit`].
    pub exit: BoxFuture<'static, Result<Option<i64>, ExecutorError>>,
}

pub type TarStream = BoxStream<'static, Bytes>;
pub type ByteStream = BoxStream<'static, Result<Bytes, ExecutorError>>;

/// What a labelled resource is, for the start-up sweep and for removal order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Container,
    Network,
    /// Made only through a job's engine (`engine_proxy`).
    Volume,
    /// Built only through a job's engine (`engine_proxy`).
    Image,
}

#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Ensure the image is present (pulling it if the engine can, with `auth` for a private
    /// registry, each layer's progress told to `progress`) and read its config.
    async fn image_info(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: PullProgress<'_>,
    ) -> Result<ImageInfo, ExecutorError>;
    /// Create (not start) a container.
    async fn create(&self, spec: &ContainerSpec) -> Result<String, ExecutorError>;
    /// Whether a directory on this process's host can be mounted into a container (the
    /// engine runs on this host: `ContainerSpec::work_tree` may be used). False for a remote
    /// engine, whose files arrive through [`Executor::upload_tar`]. No default: a wrapper
    /// that forgot to pass it on would silently give its jobs the tar stream.
    fn shares_host_paths(&self) -> bool;
    /// Start it, attached to its main process's stdin and output (attached before the start,
    /// so no output is missed). The primary's main process tells the job what it is (user,
    /// home…) and takes files, without the cost of extra processes.
    async fn start(&self, container: &str) -> Result<Attached, ExecutorError>;
    /// Wait for the container's main process to end; its exit code.
    async fn wait(&self, container: &str) -> Result<i64, ExecutorError>;
    /// Extract a tar stream at `dest` (an existing directory) in the container. Works against a
    /// remote engine: nothing assumes the agent shares the engine's filesystem.
    async fn upload_tar(
        &self,
        container: &str,
        dest: &str,
        tar: TarStream,
    ) -> Result<(), ExecutorError>;
    /// A tar of `path` (file or directory; entries named from its base name), `None` if it
    /// does not exist. Streamed: a large directory never sits in memory.
    async fn download_tar(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<ByteStream>, ExecutorError>;
    /// Run a command; its output streams, and its exit status comes with it.
    async fn exec(&self, container: &str, spec: ExecSpec) -> Result<Exec, ExecutorError>;
    /// Run a command with its stdin attached and, with `tty`, a pseudo-terminal of that size
    /// (output then comes as one stream, with the terminal's line endings). For a person
    /// driving the job's container (the SSH gateway); steps use [`Executor::exec`].
    async fn exec_interactive(
        &self,
        container: &str,
        spec: ExecSpec,
        tty: Option<TtySize>,
    ) -> Result<Interactive, ExecutorError>;
    /// Remove a container (stopping it first); one already gone is not an error.
    async fn remove(&self, container: &str) -> Result<(), ExecutorError>;
    /// Freeze every process in the container (the engine's `pause`) until
    /// [`Executor::unpause`]: nothing in it runs meanwhile, an `exec` started in it included.
    async fn pause(&self, container: &str) -> Result<(), ExecutorError>;
    /// Let a paused container's processes run again.
    async fn unpause(&self, container: &str) -> Result<(), ExecutorError>;
    /// Create a network carrying `labels`; its id.
    async fn create_network(
        &self,
        name: &str,
        labels: &[(String, String)],
    ) -> Result<String, ExecutorError>;
    /// Remove a network; one already gone is not an error.
    async fn remove_network(&self, network: &str) -> Result<(), ExecutorError>;
    /// Remove a volume; one already gone is not an error.
    async fn remove_volume(&self, volume: &str) -> Result<(), ExecutorError>;
    /// Remove an image and its tags; one already gone is not an error.
    async fn remove_image(&self, image: &str) -> Result<(), ExecutorError>;
    /// Containers (running or not), networks, volumes or images carrying `label=value`.
    async fn list_by_label(
        &self,
        kind: ResourceKind,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, ExecutorError>;
}

#[cfg(test)]
mod short_id_tests {
    use super::short_id;

    #[test]
    fn a_full_engine_id_is_cut_to_twelve_digits_and_a_name_is_not() {
        let full = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(short_id(full), "0123456789ab");
        assert_eq!(short_id("bosun-job-42-primary"), "bosun-job-42-primary");
        // Sixty-four characters but not an id: a name is never cut.
        let name = "x".repeat(64);
        assert_eq!(short_id(&name), name);
        assert_eq!(short_id(""), "");
    }
}
