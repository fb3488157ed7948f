//! Where a job's commands run. The trait is the whole surface `job` needs (create, upload,
//! exec with streamed output, signal, remove, list by label) so that a Kubernetes executor can
//! sit beside the Docker one without `job` changing.

pub mod docker;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::future::Future;

pub use docker::DockerExecutor;

/// Label every container carries: the job's id. Used to find leftovers.
pub const LABEL_JOB: &str = "bosun.job";
/// Label every container carries: the agent (or `bosun execute` run) that created it.
pub const LABEL_AGENT: &str = "bosun.agent";

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot reach the Docker engine{}: {source}\n  help: is dockerd running, and may this user use its socket? Point DOCKER_HOST at it (unix:///var/run/docker.sock or tcp://HOST:2375)", .host.as_deref().map(|h| format!(" at {h}")).unwrap_or_default())]
    Connect {
        host: Option<String>,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("image `{image}` is not in the engine and could not be pulled: {reason}\n  help: build or load it first (docker build / docker load), or check the name")]
    ImageMissing { image: String, reason: String },
    #[error("container {container}: {what} failed: {source}")]
    Engine {
        container: String,
        what: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// What the agent learns about an image before it starts a container from it.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub user: Option<String>,
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub image: String,
    /// `None` keeps the image's `USER`.
    pub user: Option<String>,
    /// `K=V` pairs set on the container itself.
    pub env: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// A Docker network to join (e.g. where the VCS host or service containers live).
    pub network: Option<String>,
    /// The main process (replaces the image's entrypoint and command); it must stay alive
    /// until the container is removed. Its stdin is open until the attached client closes it.
    pub main: Vec<String>,
}

/// The main process's stdio, from [`Executor::start`].
pub struct Attached {
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub output: BoxStream<'static, Result<Output, ExecutorError>>,
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

pub struct Exec {
    pub id: String,
    pub output: BoxStream<'static, Result<Output, ExecutorError>>,
}

pub type TarStream = BoxStream<'static, Bytes>;
pub type ByteStream = BoxStream<'static, Result<Bytes, ExecutorError>>;

pub trait Executor: Send + Sync + 'static {
    /// Ensure the image is present (pulling it if the engine can) and read its config.
    fn image_info(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<ImageInfo, ExecutorError>> + Send;
    /// Create (not start) a container running `spec.main`.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<String, ExecutorError>> + Send;
    /// Start it, attached to its main process's stdin and output: the main process tells the
    /// job what it is (user, home…) and can take files, without the cost of extra processes.
    fn start(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<Attached, ExecutorError>> + Send;
    /// Extract a tar stream at `dest` (an existing directory) in the container. Works against a
    /// remote engine: nothing assumes the agent shares the engine's filesystem.
    fn upload_tar(
        &self,
        container: &str,
        dest: &str,
        tar: TarStream,
    ) -> impl Future<Output = Result<(), ExecutorError>> + Send;
    /// A tar of `path` (file or directory; entries named from its base name), `None` if it
    /// does not exist. Streamed: a large directory never sits in memory.
    fn download_tar(
        &self,
        container: &str,
        path: &str,
    ) -> impl Future<Output = Result<Option<ByteStream>, ExecutorError>> + Send;
    fn exec(
        &self,
        container: &str,
        spec: ExecSpec,
    ) -> impl Future<Output = Result<Exec, ExecutorError>> + Send;
    /// Exit code of a finished exec (`None` while it runs).
    fn exec_exit_code(
        &self,
        exec_id: &str,
    ) -> impl Future<Output = Result<Option<i64>, ExecutorError>> + Send;
    fn remove(&self, container: &str) -> impl Future<Output = Result<(), ExecutorError>> + Send;
    /// Containers (running or not) carrying `label=value`.
    fn list_by_label(
        &self,
        label: &str,
        value: &str,
    ) -> impl Future<Output = Result<Vec<String>, ExecutorError>> + Send;
}
