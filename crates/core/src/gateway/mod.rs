//! The SSH gateway: developers SSH into a running job. One port for the whole agent (no port
//! and no sshd per job); the user name selects the job (`ssh -p PORT JOB@HOST`); only public
//! keys, and only the keys of whoever asked for SSH on that job. A session lands in the job's
//! primary container through the executor's interactive exec — as the step user, in the
//! working directory, with the job's environment — and holds the job's resources while it
//! lasts (see [`crate::job::Registry`]).
//!
//! One door: [`Gateway::start`]. Inside: [`host_key`] (the gateway's persistent ed25519 key),
//! `server` (authentication, rate limits, session limits) and `bridge` (an SSH channel ↔ an
//! exec: `pty-req`, `window-change`, `shell`, `exec`, `subsystem sftp`, `direct-tcpip` to the
//! job's own `localhost`, `exit-status`).
//!
//! Before login, a connection is held to limits like OpenSSH's `LoginGraceTime`,
//! `PerSourceMaxStartups` and `MaxStartups` (`admission`), so that connections which never
//! log in cannot keep everyone else out: it must log in within
//! [`GatewayConfig::login_grace`] (default 30 s) or be closed; one address (an IPv6 /64) may
//! have 10 such connections at once; past 20 in all, new ones are dropped at random, 30% at
//! first rising linearly to all at 100. Logged-in sessions leave those counts (they have the
//! per-job session limit and [`GatewayConfig::idle_timeout`] instead); 256 connections in all,
//! logged in or not. A refused connection is sent one line saying why, then closed.

mod admission;
mod bridge;
pub mod host_key;
pub use bosun_git::keys;
mod server;

use crate::executor::Executor;
use crate::job::registry::SshSettings;
use crate::job::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The default port, CircleCI's for runners.
pub const DEFAULT_PORT: u16 = 54782;

/// How the gateway listens and what it allows.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// The host users are told to connect to (`None`: the listen address's IP, or this
    /// machine's host name when it listens on every address).
    pub address: Option<String>,
    /// The host key file (made on first start, mode 0600).
    pub host_key: PathBuf,
    /// After the last step, a job waits this long for a first session.
    pub wait: Duration,
    /// A session keeps its job at most this long.
    pub max: Duration,
    /// A job is held this much longer after its last session ends.
    pub grace: Duration,
    /// Connections open at once per job.
    pub sessions_per_job: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that has not logged in this long after it was accepted is closed.
    pub login_grace: Duration,
}

impl GatewayConfig {
    pub fn new(listen: SocketAddr, host_key: PathBuf) -> Self {
        Self {
            listen,
            address: None,
            host_key,
            wait: Duration::from_secs(600),
            max: Duration::from_secs(7200),
            grace: Duration::from_secs(30),
            sessions_per_job: 8,
            idle_timeout: Duration::from_secs(3600),
            // Long enough for a passphrase prompt or a security key's touch; short enough
            // that connections which never log in give their places back soon. (OpenSSH's
            // `LoginGraceTime` is 120 s, with no per-address cap by default.)
            login_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the SSH gateway's host key {path}: cannot {what} it: {source}")]
    HostKey {
        path: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the SSH gateway's host key {path} is readable by others (mode {mode:o})\n  help: chmod 600 {path}")]
    HostKeyMode { path: String, mode: u32 },
    #[error("the SSH gateway's host key {path} is not an OpenSSH private key: {reason}")]
    HostKeyParse { path: String, reason: String },
    #[error("the SSH gateway cannot listen on {addr}: {source}\n  help: set ssh_gateway_listen to a free address (or `off`)")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running gateway. Dropping it stops accepting connections.
pub struct Gateway {
    local_addr: SocketAddr,
    fingerprint: String,
    stop: CancellationToken,
}

impl Gateway {
    /// Listen, and tell `registry` (so each job with SSH keys prints how to reach it).
    pub async fn start(
        config: GatewayConfig,
        registry: Registry,
        executor: Arc<dyn Executor>,
    ) -> Result<Gateway, GatewayError> {
        let key = host_key::load_or_create(&config.host_key)?;
        let fingerprint = host_key::fingerprint(&key);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Listen {
                addr: config.listen,
                source,
            })?;
        registry.set_ssh(SshSettings {
            host: advertised_host(config.address.as_deref(), local_addr),
            port: local_addr.port(),
            fingerprint: fingerprint.clone(),
            wait: config.wait,
            max: config.max,
            grace: config.grace,
        });
        let stop = CancellationToken::new();
        tokio::spawn(server::serve(
            listener,
            key,
            config,
            registry,
            executor,
            stop.clone(),
        ));
        tracing::info!(%local_addr, %fingerprint, "SSH gateway listening");
        Ok(Gateway {
            local_addr,
            fingerprint,
            stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The host key's `SHA256:…` fingerprint.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `host` as users should type it: the configured address (its port, if any, wins), else the
/// listen IP, else this machine's name.
fn advertised_host(address: Option<&str>, local: SocketAddr) -> String {
    if let Some(a) = address.map(str::trim).filter(|a| !a.is_empty()) {
        return a.to_owned();
    }
    if !local.ip().is_unspecified() {
        return local.ip().to_string();
    }
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A job's SSH access as heartbeats report it: where to connect, sessions open, and until
/// when the job is held; `None` when the job may not be reached by SSH.
pub fn job_state(registry: &Registry, job_id: &str) -> Option<crate::protocol::WireSshState> {
    let (settings, _) = registry.ssh_for(job_id)?;
    let (host, port) = settings.reach();
    let job = registry.get(job_id);
    let held_until_ms = job.as_ref().and_then(|j| j.held_until()).map(|until| {
        let left = until.saturating_duration_since(std::time::Instant::now());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from((now + left).as_millis()).unwrap_or(i64::MAX)
    });
    Some(crate::protocol::WireSshState {
        host,
        port,
        fingerprint: settings.fingerprint.clone(),
        sessions: job
            .as_ref()
            .map_or(0, |j| u32::try_from(j.sessions()).unwrap_or(u32::MAX)),
        held_until_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_command_uses_the_advertised_host_and_its_port() {
        let mut s = SshSettings {
            host: "ci.example.com".into(),
            port: 54782,
            fingerprint: "SHA256:abc".into(),
            wait: Duration::from_secs(600),
            max: Duration::from_secs(7200),
            grace: Duration::from_secs(30),
        };
        assert_eq!(
            s.announce("j1", 1)[0],
            "SSH: ssh -p 54782 j1@ci.example.com"
        );
        s.host = "proxy.example.com:2222".into();
        assert_eq!(
            s.announce("j1", 1)[0],
            "SSH: ssh -p 2222 j1@proxy.example.com"
        );
        assert!(s.announce("j1", 2)[1].contains("SHA256:abc"));
    }
}
