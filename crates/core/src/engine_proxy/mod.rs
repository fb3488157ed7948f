//! A Docker engine per job, scoped by an agent-side proxy of the Engine API.
//!
//! Docker-in-Docker needs `--privileged` (refused on the machines this runs on), and the
//! host's socket would give every build root on the host and sight of every other job. So
//! each job that asks for an engine (`setup_remote_docker`, or any `machine` job) gets its
//! own unix socket, served by the agent, in a directory mounted into its primary container.
//! The proxy forwards to the host engine only what that job may do ([`filter`]): everything
//! it creates is labelled `bosun.job=<id>`; lists, events and prunes see only those objects;
//! other objects answer 404; host access (privileged, capabilities, devices, host
//! namespaces, host paths, the engine's socket, networks not the job's, log drivers and
//! registries that would have the engine connect to the host) answers 403 naming the field;
//! anything not on the allow-list is refused with its method and path. What is forwarded is
//! what was checked: bodies are decoded into a typed model and re-encoded, queries re-encoded
//! from the parameters the endpoint takes, headers limited to the ones the engine reads
//! ([`filter::model`]). Tar streams and hijacked connections (attach, exec) pass through
//! without buffering ([`server`]).
//!
//! The job's [`crate::job::Resources`] stops the proxy and removes everything labelled with
//! the job when it ends; the agent's start-up sweep removes what a killed agent left.

pub mod build_context;
pub mod filter;
pub mod server;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;

pub use filter::{Limits, Scope};
pub use server::JobEngine;

use std::path::{Path, PathBuf};

/// Where a job container finds its engine's socket directory (mounted read-write).
pub const CONTAINER_DIR: &str = "/bosun-engine";
/// The socket's name inside that directory.
pub const SOCKET_NAME: &str = "docker.sock";

/// `DOCKER_HOST` as a job sees it.
pub fn docker_host() -> String {
    format!("unix://{CONTAINER_DIR}/{SOCKET_NAME}")
}

/// The host engine the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    Unix(PathBuf),
    /// `host:port`, plain HTTP (a TLS engine is not supported upstream).
    Tcp(String),
}

impl Upstream {
    /// From a `DOCKER_HOST` value (`unix:///path`, `tcp://host:port`), the default socket when
    /// unset.
    pub fn from_docker_host(value: Option<&str>) -> Result<Self, ProxyError> {
        match value.filter(|v| !v.is_empty()) {
            None => Ok(Upstream::Unix(PathBuf::from("/var/run/docker.sock"))),
            Some(v) => {
                if let Some(p) = v.strip_prefix("unix://") {
                    Ok(Upstream::Unix(PathBuf::from(p)))
                } else if let Some(a) = v
                    .strip_prefix("tcp://")
                    .or_else(|| v.strip_prefix("http://"))
                {
                    Ok(Upstream::Tcp(a.trim_end_matches('/').to_owned()))
                } else {
                    Err(ProxyError::Upstream(format!(
                        "DOCKER_HOST={v}: the job engine proxy forwards to unix:// or tcp:// engines only"
                    )))
                }
            }
        }
    }
}

/// The agent's settings for job engines.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub upstream: Upstream,
    /// Where per-job socket directories are made. Must be a path the engine sees too (the
    /// agent and the engine share a filesystem): the directory is bind-mounted into the job.
    pub socket_root: PathBuf,
    pub limits: Limits,
    /// Keep the images built by jobs that ask for `docker_layer_caching` (for layer reuse by
    /// later jobs) instead of removing them.
    pub keep_images: bool,
}

impl EngineSettings {
    /// The engine `DOCKER_HOST` names, sockets under `socket_root`, no limits.
    pub fn from_env(socket_root: PathBuf) -> Result<Self, ProxyError> {
        Ok(Self {
            upstream: Upstream::from_docker_host(std::env::var("DOCKER_HOST").ok().as_deref())?,
            socket_root,
            limits: Limits::default(),
            keep_images: false,
        })
    }

    /// The default socket root for a process that has no state directory: a directory in
    /// the temporary directory, private to this user.
    pub fn default_socket_root() -> PathBuf {
        std::env::temp_dir().join(format!("bosun-engine-{}", nix::unistd::getuid()))
    }

    /// The per-job directory for `job_id`.
    pub fn job_dir(&self, job_id: &str) -> PathBuf {
        self.socket_root.join(sanitize(job_id))
    }
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the job's engine socket directory {path}: {source}\n  help: the agent needs a writable engine socket directory the Docker engine can also see (engine_socket_dir in agent.toml)")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the host engine: {0}")]
    Upstream(String),
    #[error("{0}")]
    Setting(String),
}

/// Remove per-job socket directories left under `root` (a killed agent's): the agent's
/// start-up sweep. Returns how many were removed.
pub fn sweep_dirs(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| std::fs::remove_dir_all(e.path()).is_ok())
        .count()
}
