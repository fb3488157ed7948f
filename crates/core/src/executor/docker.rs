//! The Docker implementation of [`Executor`], over the Engine API (bollard).

use super::{
    Attached, ByteStream, ContainerSpec, Exec, ExecSpec, Executor, ExecutorError, ImageInfo,
    Interactive, LayerProgress, NetworkMode, Output, OutputStream, ResourceKind, TarStream,
    TtySize,
};
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, ContainerArchiveInfoOptionsBuilder, CreateImageOptionsBuilder,
    DownloadFromContainerOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    ListNetworksOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, RemoveVolumeOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use std::collections::HashMap;

#[derive(Clone)]
pub struct DockerExecutor {
    docker: Docker,
    /// The engine's CPU count, asked once (the cap of a CPU limit).
    cpus: tokio::sync::OnceCell<i64>,
    /// The engine sees this process's files at the same paths, so it can mount them
    /// ([`engine_shares_paths`]).
    local: bool,
}

/// The engine's socket on this host, when `DOCKER_HOST` (unset: the default socket) names
/// one. A `tcp://`, `ssh://` or `http(s)://` engine may be anywhere: its containers cannot
/// see our files.
fn local_socket(host: Option<&str>) -> Option<std::path::PathBuf> {
    match host.map(str::trim) {
        None | Some("") => Some("/var/run/docker.sock".into()),
        Some(h) if h.starts_with("unix://") => Some(h.trim_start_matches("unix://").into()),
        Some(h) if h.starts_with('/') => Some(h.into()),
        Some(_) => None,
    }
}

/// Whether the engine behind the unix socket `socket` sees this process's files where this
/// process sees them. A socket on this host does not say so: an agent in a container with the
/// host's socket mounted talks to an engine whose paths are the host's, and a directory it
/// asked to mount would be an empty one the engine made (the job's checkout lost, its main
/// process not found). So the engine's process must be in this process's PID namespace
/// (its peer credentials name a PID here; one outside it reads as 0), and, where this process
/// may look through that process's root (`/proc/PID/root`: root may), the temporary
/// directory, where job directories are made, must be the same directory there.
fn engine_shares_paths(socket: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let pid =
        match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(cred) if cred.pid() > 0 => cred.pid(),
            _ => return false,
        };
    let here = std::env::temp_dir();
    let there = std::path::Path::new(&format!("/proc/{pid}/root"))
        .join(here.strip_prefix("/").unwrap_or(&here));
    match (std::fs::metadata(&here), std::fs::metadata(&there)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        // Not ours to look through (a non-root agent): the shared PID namespace is the
        // evidence there is.
        (Ok(_), Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => true,
        _ => false,
    }
}

impl DockerExecutor {
    /// Connect through `DOCKER_HOST` (unix socket by default, `tcp://` works too) and settle on
    /// an API version both sides speak: the engine here offers 1.41 while bollard starts at a
    /// newer one, and we use nothing newer than 1.41.
    pub async fn connect() -> Result<Self, ExecutorError> {
        let host = std::env::var("DOCKER_HOST").ok();
        let local = local_socket(host.as_deref()).is_some_and(|s| engine_shares_paths(&s));
        if !local {
            tracing::debug!(
                "the engine does not see this host's paths: files go in as tar streams"
            );
        }
        let docker = Docker::connect_with_defaults().map_err(|e| ExecutorError::Connect {
            host: host.clone(),
            source: Box::new(e),
        })?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| ExecutorError::Connect {
                host,
                source: Box::new(e),
            })?;
        Ok(Self {
            docker,
            cpus: tokio::sync::OnceCell::new(),
            local,
        })
    }

    /// `limits` within what the engine has: Docker refuses a `NanoCpus` above its CPU count.
    async fn engine_limits(&self, limits: super::Limits) -> Result<super::Limits, ExecutorError> {
        let cpus = *self
            .cpus
            .get_or_try_init(|| async {
                self.docker
                    .info()
                    .await
                    .map(|i| i.ncpu.unwrap_or(0))
                    .map_err(Self::engine("the engine", "info"))
            })
            .await?;
        Ok(super::Limits {
            nano_cpus: if cpus > 0 {
                limits.nano_cpus.min(cpus.saturating_mul(1_000_000_000))
            } else {
                limits.nano_cpus
            },
            ..limits
        })
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn engine(
        target: &str,
        what: &'static str,
    ) -> impl FnOnce(bollard::errors::Error) -> ExecutorError {
        let target = target.to_owned();
        move |source| engine_error(target, what, source)
    }
}

fn engine_error(
    target: String,
    what: &'static str,
    source: bollard::errors::Error,
) -> ExecutorError {
    ExecutorError::Engine {
        target: super::short_id(&target).to_owned(),
        what,
        source: Box::new(source),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A pull's progress line as a layer's progress; `None` for the lines about the whole image
/// (`Pulling from …`, `Digest: …`, `Status: …`), whose id is a tag or absent.
fn layer_progress(info: bollard::models::CreateImageInfo) -> Option<LayerProgress> {
    let layer = info.id?;
    if layer.len() != 12 || !layer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let detail = info.progress_detail.unwrap_or_default();
    let bytes = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|&n| n > 0);
    Some(LayerProgress {
        layer,
        status: info.status.unwrap_or_default(),
        current: bytes(detail.current),
        total: bytes(detail.total),
    })
}

/// Engine log frames → our output items.
fn log_output(
    stream: impl futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send + 'static,
    container: String,
) -> OutputStream {
    stream
        .filter_map(move |item| {
            let container = container.clone();
            async move {
                match item {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        Some(Ok(Output::Stdout(message)))
                    }
                    Ok(LogOutput::StdErr { message }) => Some(Ok(Output::Stderr(message))),
                    Ok(LogOutput::StdIn { .. }) => None,
                    Err(source) => Some(Err(engine_error(container, "output", source))),
                }
            }
        })
        .boxed()
}

#[async_trait::async_trait]
impl Executor for DockerExecutor {
    fn shares_host_paths(&self) -> bool {
        self.local
    }

    async fn image_info(
        &self,
        image: &str,
        auth: Option<&super::RegistryAuth>,
        progress: super::PullProgress<'_>,
    ) -> Result<ImageInfo, ExecutorError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => {
                let opts = CreateImageOptionsBuilder::default()
                    .from_image(image)
                    .build();
                let mut pull =
                    self.docker
                        .create_image(Some(opts), None, auth.map(|a| credentials(image, a)));
                let mut failed = None;
                while let Some(item) = pull.next().await {
                    match item {
                        Ok(info) => {
                            if let Some(p) = layer_progress(info) {
                                progress(p);
                            }
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(match auth {
                        Some(a) => ExecutorError::PullRefused {
                            image: image.to_owned(),
                            registry: super::registry_of(image).to_owned(),
                            username: a.username.clone(),
                            reason: e.to_string(),
                        },
                        None => ExecutorError::ImageMissing {
                            image: image.to_owned(),
                            reason: e.to_string(),
                        },
                    });
                }
                self.docker
                    .inspect_image(image)
                    .await
                    .map_err(|e| ExecutorError::ImageMissing {
                        image: image.to_owned(),
                        reason: e.to_string(),
                    })?
            }
            Err(e) => return Err(Self::engine(image, "inspect image")(e)),
        };
        let config = inspect.config.unwrap_or_default();
        Ok(ImageInfo {
            user: config.user.filter(|u| !u.is_empty()),
            env: config.env.unwrap_or_default(),
            id: inspect.id.filter(|i| !i.is_empty()),
        })
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, ExecutorError> {
        let labels: HashMap<String, String> = spec.labels.iter().cloned().collect();
        let network_mode = match &spec.network {
            NetworkMode::Default => None,
            NetworkMode::Named(n) => Some(n.clone()),
            NetworkMode::ContainerOf(c) => Some(format!("container:{c}")),
        };
        let tmpfs: HashMap<String, String> = spec
            .tmpfs
            .iter()
            .map(|p| (p.clone(), String::new()))
            .collect();
        let binds: Vec<String> = spec
            .read_only_binds
            .iter()
            .map(|p| format!("{p}:{p}:ro"))
            .chain(spec.binds.iter().map(|(h, c)| format!("{h}:{c}:rw")))
            .chain(
                spec.runtime
                    .iter()
                    .map(|h| format!("{h}:{}:ro", crate::runtime::cmd::main_process::MOUNTED_PATH)),
            )
            .chain(spec.work_tree.iter().flat_map(|(h, c)| {
                let shared = super::SHARED_OBJECTS;
                let (h, c) = (h.trim_end_matches('/'), c.trim_end_matches('/'));
                // The engine mounts in order of depth: the tree, then its shared objects
                // read-only inside it, from beside it on the host.
                [
                    format!("{h}:{c}:rw"),
                    format!("{}:{c}/{shared}:ro", super::shared_objects_source(h)),
                ]
            }))
            .collect();
        let limits = match spec.limits {
            Some(l) => Some(self.engine_limits(l).await?),
            None => None,
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            user: spec.user.clone(),
            env: Some(spec.env.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            // With `stdin`, it stays open for the attached client until it closes it.
            open_stdin: Some(spec.stdin),
            stdin_once: Some(spec.stdin),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            labels: Some(labels),
            stop_signal: spec.stop_signal.clone(),
            host_config: Some(HostConfig {
                init: Some(spec.init),
                network_mode,
                extra_hosts: (!spec.extra_hosts.is_empty()).then(|| spec.extra_hosts.clone()),
                tmpfs: (!tmpfs.is_empty()).then_some(tmpfs),
                binds: (!binds.is_empty()).then_some(binds),
                nano_cpus: limits.map(|l| l.nano_cpus),
                memory: limits.map(|l| l.memory_bytes),
                memory_swap: limits.map(|l| l.memory_bytes),
                log_config: spec.unlogged.then(|| HostConfigLogConfig {
                    typ: Some("none".to_owned()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None, body)
            .await
            .map_err(Self::engine(&spec.image, "create"))?;
        Ok(created.id)
    }

    async fn start(&self, container: &str) -> Result<Attached, ExecutorError> {
        // Attach before starting, or the first output could pass before anyone listens.
        let opts = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .build();
        let attached = self
            .docker
            .attach_container(container, Some(opts))
            .await
            .map_err(Self::engine(container, "attach"))?;
        self.docker
            .start_container(container, None)
            .await
            .map_err(Self::engine(container, "start"))?;
        Ok(Attached {
            input: attached.input,
            output: log_output(attached.output, container.to_owned()),
        })
    }

    async fn wait(&self, container: &str) -> Result<i64, ExecutorError> {
        // The engine answers a non-zero exit as an error carrying the code.
        match self.docker.wait_container(container, None).next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(Self::engine(container, "wait")(e)),
            None => Err(ExecutorError::Protocol {
                target: super::short_id(container).to_owned(),
                what: "wait",
                detail: "the engine closed the wait without a status".to_owned(),
            }),
        }
    }

    async fn upload_tar(
        &self,
        container: &str,
        dest: &str,
        tar: TarStream,
    ) -> Result<(), ExecutorError> {
        let opts = UploadToContainerOptionsBuilder::default()
            .path(dest)
            .build();
        self.docker
            .upload_to_container(container, Some(opts), bollard::body_stream(tar))
            .await
            .map_err(Self::engine(container, "upload"))
    }

    async fn download_tar(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<ByteStream>, ExecutorError> {
        // A stat first: the archive stream only reports a missing path once it is read.
        let info = ContainerArchiveInfoOptionsBuilder::default()
            .path(path)
            .build();
        match self
            .docker
            .get_container_archive_info(container, Some(info))
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(Self::engine(container, "stat")(e)),
        }
        let opts = DownloadFromContainerOptionsBuilder::default()
            .path(path)
            .build();
        let cid = container.to_owned();
        let stream = self
            .docker
            .download_from_container(container, Some(opts))
            .map_err(move |source| engine_error(cid.clone(), "download", source))
            .boxed();
        Ok(Some(stream))
    }

    async fn exec(&self, container: &str, spec: ExecSpec) -> Result<Exec, ExecutorError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(spec.cmd),
                    env: Some(spec.env),
                    user: spec.user,
                    working_dir: spec.working_dir,
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(false),
                    // No TTY: output reaches the log byte for byte (a TTY turns \n into \r\n)
                    // and stdout/stderr stay apart.
                    tty: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(Self::engine(container, "exec create"))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(Self::engine(container, "exec start"))?;
        let StartExecResults::Attached { output, .. } = started else {
            return Err(ExecutorError::Protocol {
                target: super::short_id(container).to_owned(),
                what: "exec start",
                detail: "the engine started the exec detached".to_owned(),
            });
        };
        let output = log_output(output, container.to_owned());
        let docker = self.docker.clone();
        let exec_id = created.id;
        let exit = async move { exit_code(&docker, &exec_id).await }.boxed();
        Ok(Exec { output, exit })
    }

    async fn exec_interactive(
        &self,
        container: &str,
        spec: ExecSpec,
        tty: Option<TtySize>,
    ) -> Result<Interactive, ExecutorError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(spec.cmd),
                    env: Some(spec.env),
                    user: spec.user,
                    working_dir: spec.working_dir,
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    attach_stdin: Some(true),
                    tty: Some(tty.is_some()),
                    ..Default::default()
                },
            )
            .await
            .map_err(Self::engine(container, "exec create"))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: tty.is_some(),
                    // Terminal output goes out as it comes, whatever its line length.
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(Self::engine(container, "exec start"))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(ExecutorError::Protocol {
                target: super::short_id(container).to_owned(),
                what: "exec start",
                detail: "the engine started the exec detached".to_owned(),
            });
        };
        let exec_id = created.id;
        let resize: super::Resizer = {
            let docker = self.docker.clone();
            let exec_id = exec_id.clone();
            let has_tty = tty.is_some();
            std::sync::Arc::new(move |size: TtySize| {
                let (docker, exec_id) = (docker.clone(), exec_id.clone());
                async move {
                    if !has_tty {
                        return Ok(());
                    }
                    docker
                        .resize_exec(
                            &exec_id,
                            ResizeExecOptions {
                                height: size.rows,
                                width: size.cols,
                            },
                        )
                        .await
                        .map_err(|e| engine_error(exec_id.clone(), "exec resize", e))
                }
                .boxed()
            })
        };
        if let Some(size) = tty {
            // The engine starts a terminal at its own default size.
            resize(size).await?;
        }
        let docker = self.docker.clone();
        let output = log_output(output, container.to_owned());
        let exit = async move { exit_code(&docker, &exec_id).await }.boxed();
        Ok(Interactive {
            input,
            output,
            resize,
            exit,
        })
    }

    async fn remove(&self, container: &str) -> Result<(), ExecutorError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(container, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Self::engine(container, "remove")(e)),
        }
    }

    async fn pause(&self, container: &str) -> Result<(), ExecutorError> {
        self.docker
            .pause_container(container)
            .await
            .map_err(Self::engine(container, "pause"))
    }

    async fn unpause(&self, container: &str) -> Result<(), ExecutorError> {
        self.docker
            .unpause_container(container)
            .await
            .map_err(Self::engine(container, "unpause"))
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &[(String, String)],
    ) -> Result<String, ExecutorError> {
        let created = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.to_owned(),
                labels: Some(labels.iter().cloned().collect()),
                ..Default::default()
            })
            .await
            .map_err(Self::engine(name, "create network"))?;
        Ok(created.id)
    }

    async fn remove_network(&self, network: &str) -> Result<(), ExecutorError> {
        match self.docker.remove_network(network).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Self::engine(network, "remove network")(e)),
        }
    }

    async fn remove_volume(&self, volume: &str) -> Result<(), ExecutorError> {
        let opts = RemoveVolumeOptionsBuilder::default().force(true).build();
        match self.docker.remove_volume(volume, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Self::engine(volume, "remove volume")(e)),
        }
    }

    async fn remove_image(&self, image: &str) -> Result<(), ExecutorError> {
        let opts = RemoveImageOptionsBuilder::default().force(true).build();
        match self.docker.remove_image(image, Some(opts), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(Self::engine(image, "remove image")(e)),
        }
    }

    async fn list_by_label(
        &self,
        kind: ResourceKind,
        label: &str,
        value: &str,
    ) -> Result<Vec<String>, ExecutorError> {
        let mut filters = HashMap::new();
        filters.insert("label".to_owned(), vec![format!("{label}={value}")]);
        match kind {
            ResourceKind::Container => {
                let opts = ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build();
                let list = self
                    .docker
                    .list_containers(Some(opts))
                    .await
                    .map_err(Self::engine(label, "list containers"))?;
                Ok(list.into_iter().filter_map(|c| c.id).collect())
            }
            ResourceKind::Network => {
                let opts = ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build();
                let list = self
                    .docker
                    .list_networks(Some(opts))
                    .await
                    .map_err(Self::engine(label, "list networks"))?;
                Ok(list.into_iter().filter_map(|n| n.id).collect())
            }
            ResourceKind::Volume => {
                let opts = ListVolumesOptionsBuilder::default()
                    .filters(&filters)
                    .build();
                let list = self
                    .docker
                    .list_volumes(Some(opts))
                    .await
                    .map_err(Self::engine(label, "list volumes"))?;
                Ok(list
                    .volumes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| v.name)
                    .collect())
            }
            ResourceKind::Image => {
                let opts = ListImagesOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build();
                let list = self
                    .docker
                    .list_images(Some(opts))
                    .await
                    .map_err(Self::engine(label, "list images"))?;
                // Newest first: a build's labelled intermediate images are parents of its
                // result, and a parent cannot go before its children.
                let mut list = list;
                list.sort_by_key(|i| std::cmp::Reverse(i.created));
                Ok(list.into_iter().map(|i| i.id).collect())
            }
        }
    }
}

/// An exec's exit code. The output stream ends when the process closes it, which can be a
/// moment before the engine records the exit: poll briefly.
async fn exit_code(docker: &Docker, exec_id: &str) -> Result<Option<i64>, ExecutorError> {
    let mut pause = std::time::Duration::from_millis(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        let inspect = docker
            .inspect_exec(exec_id)
            .await
            .map_err(|e| engine_error(exec_id.to_owned(), "exec inspect", e))?;
        if !inspect.running.unwrap_or(false) {
            if let Some(code) = inspect.exit_code {
                return Ok(Some(code));
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(100));
    }
    Ok(None)
}

/// The engine's credentials for pulling `image` (sent in the X-Registry-Auth header, never on
/// a command line).
fn credentials(image: &str, auth: &super::RegistryAuth) -> bollard::auth::DockerCredentials {
    bollard::auth::DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.expose().clone()),
        serveraddress: Some(super::registry_of(image).to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;

    #[test]
    fn credentials_name_the_images_registry() {
        let a = crate::executor::RegistryAuth {
            username: "u".into(),
            password: String::from("p4ss-w0rd-secret").into(),
        };
        let c = credentials("registry.example:5000/team/app:1", &a);
        assert_eq!(c.serveraddress.as_deref(), Some("registry.example:5000"));
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p4ss-w0rd-secret"))
        );
        assert_eq!(
            credentials("cimg/base:2024.01", &a)
                .serveraddress
                .as_deref(),
            Some("docker.io")
        );
        assert!(!format!("{a:?}").contains("p4ss"));
    }
}
