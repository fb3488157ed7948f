//! Connections: admission before login (see [`super::admission`]), the login grace time,
//! authentication (the user name is a job id; the key must be one of that job's), per-address
//! rate limits on failures, per-job session limits, and the channels a session may open. Every
//! login refusal looks the same and takes the same time (russh's `auth_rejection_time`).

use super::admission::{Admission, Decision, LIMITS};
use super::bridge;
use super::GatewayConfig;
use crate::executor::Executor;
use crate::job::{Attachment, Hold, Registry};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// AES-GCM only. The client's order decides among what both sides offer, and OpenSSH lists
/// chacha20-poly1305 first: offered, it is what every session gets — and russh's chacha20
/// runs in software, far slower than ring's AES-GCM on the CPU's AES instructions (measured in
/// docs/benchmarks.md, "SSH gateway"). Both are AEAD ciphers OpenSSH has offered since 6.2
/// (2013); nothing weaker is offered instead.
const CIPHERS: &[russh::cipher::Name] = &[russh::cipher::AES_128_GCM, russh::cipher::AES_256_GCM];

/// Failed logins an address may make per window before every attempt from it is refused.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

struct Shared {
    registry: Registry,
    executor: Arc<dyn Executor>,
    config: GatewayConfig,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    admission: Mutex<Admission>,
}

impl Shared {
    fn admission(&self) -> MutexGuard<'_, Admission> {
        // The counts stay right across a panic elsewhere: every change is one short step.
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn blocked(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let Ok(f) = self.failures.lock() else {
            return true;
        };
        f.get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    fn failed(&self, ip: Option<IpAddr>) {
        let Some(ip) = ip else { return };
        if let Ok(mut f) = self.failures.lock() {
            if f.len() > 10_000 {
                f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            }
            let e = f.entry(ip).or_insert((0, Instant::now()));
            if e.1.elapsed() >= FAILURE_WINDOW {
                *e = (0, Instant::now());
            }
            e.0 += 1;
        }
    }
}

pub(super) async fn serve(
    listener: tokio::net::TcpListener,
    key: PrivateKey,
    config: GatewayConfig,
    registry: Registry,
    executor: Arc<dyn Executor>,
    stop: CancellationToken,
) {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let russh_config = Arc::new(russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-bosun_gateway".into()),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH asks with "none" first to learn the methods: no need to make it wait.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![key],
        max_auth_attempts: 6,
        inactivity_timeout: Some(config.idle_timeout),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..russh::Preferred::DEFAULT
        },
        ..Default::default()
    });
    let shared = Arc::new(Shared {
        registry,
        executor,
        config,
        failures: Mutex::new(HashMap::new()),
        admission: Mutex::new(Admission::new(LIMITS)),
    });
    let rng = ring::rand::SystemRandom::new();
    loop {
        let (socket, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("SSH gateway: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let decision = shared.admission().admit(peer.ip(), uniform(&rng));
        if let Decision::Refuse(why) = decision {
            // Debug only: a flood must not flood the log as well.
            tracing::debug!(%peer, "SSH gateway: connection refused: {why}");
            // Best effort and never waiting: the socket's buffer is empty, the line short.
            let _ = socket.try_write(why.line().as_bytes());
            drop(socket);
            continue;
        }
        let authenticated = Arc::new(AtomicBool::new(false));
        // The slot first, so that the connection's place is given back whatever happens next.
        let slot = Slot {
            shared: Arc::clone(&shared),
            ip: peer.ip(),
            authenticated: Arc::clone(&authenticated),
        };
        // A second descriptor of the socket to shut it down from here when the login grace
        // time passes: russh owns the stream and keeps the session running on a task of its
        // own, and a message through its handle is not read while a client stalls a key
        // exchange.
        let closer = match socket.as_fd().try_clone_to_owned() {
            Ok(fd) => std::net::TcpStream::from(fd),
            Err(e) => {
                tracing::warn!(%peer, "SSH gateway: connection refused: cannot duplicate its socket: {e}");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let handler = Connection {
            shared: Arc::clone(&shared),
            peer,
            slot,
            session: None,
            started: HashMap::new(),
        };
        let config = Arc::clone(&russh_config);
        let stop = stop.clone();
        let login_grace = shared.config.login_grace;
        tokio::spawn(async move {
            let connection = async move {
                russh::server::run_stream(config, socket, handler)
                    .await?
                    .await
            };
            tokio::pin!(connection);
            let grace = tokio::time::sleep(login_grace);
            tokio::pin!(grace);
            let mut closer = Some(closer);
            loop {
                tokio::select! {
                    r = &mut connection => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "SSH gateway: connection ended: {e}");
                        }
                        break;
                    }
                    () = stop.cancelled() => break,
                    () = &mut grace, if closer.is_some() => {
                        // Dropped either way: a session keeps no second descriptor.
                        if let Some(c) = closer.take() {
                            if !authenticated.load(Ordering::SeqCst) {
                                tracing::debug!(%peer, "SSH gateway: not logged in within {login_grace:?}: closing");
                                // russh then reads the end of the stream, and the session
                                // ends and gives its slot back.
                                let _ = c.shutdown(std::net::Shutdown::Both);
                            }
                        }
                    }
                }
            }
        });
    }
}

/// A number uniform in [0, 1) for the early drop; 0 (the strictest draw) if the system's
/// generator fails.
fn uniform(rng: &ring::rand::SystemRandom) -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if rng.fill(&mut b).is_err() {
        return 0.0;
    }
    // The top 53 bits: every value a multiple of 2^-53, as many as an f64 holds exactly.
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A connection's place in the admission counts: a startup until it logs in, a session after;
/// given back when the connection's handler goes (its session ended, or its handshake failed).
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// Also read by the connection's task, for the login grace time.
    authenticated: Arc<AtomicBool>,
}

impl Slot {
    fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::SeqCst) {
            self.shared.admission().authenticated(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let authenticated = self.authenticated.load(Ordering::SeqCst);
        self.shared.admission().closed(self.ip, authenticated);
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error(transparent)]
    Ssh(#[from] russh::Error),
}

/// One client connection.
struct Connection {
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Slot,
    /// Set once a key of the job was accepted.
    session: Option<SessionHold>,
    /// Channels on which a program was started (one per channel).
    started: HashMap<ChannelId, ()>,
}

/// A logged-in connection's place in its job: counted as a session and holding the job (at
/// most `max`); when it ends, the job stays `grace` longer.
struct SessionHold {
    job: Arc<Attachment>,
    hold: Option<Hold>,
    grace: Duration,
}

impl Drop for SessionHold {
    fn drop(&mut self) {
        self.job.session_ended();
        if let Some(hold) = self.hold.take() {
            hold.extend(Instant::now() + self.grace);
            let grace = self.grace;
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        tokio::time::sleep(grace).await;
                        drop(hold);
                    });
                }
                Err(_) => drop(hold),
            }
        }
        tracing::info!(job = %self.job.job_id, sessions = self.job.sessions(), "SSH session ended");
    }
}

/// Whether `key` is among `allowed` (`authorized_keys` lines, options before the key type
/// allowed). Every line is looked at, whatever matched first.
fn key_allowed(allowed: &[String], key: &PublicKey) -> bool {
    let mut found = false;
    for line in allowed {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(p) = super::keys::parse_line(line) {
            found |= p.key_data() == key.key_data();
        }
    }
    found
}

impl russh::server::Handler for Connection {
    type Error = ConnError;

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, ConnError> {
        let ip = Some(self.peer.ip());
        let shared = &self.shared;
        let job = shared
            .registry
            .get(user)
            .filter(|j| !j.released.is_cancelled());
        // Looked at whatever the outcome so that a refusal takes the same work either way.
        let allowed = job
            .as_ref()
            .map(|j| key_allowed(&j.ssh_keys, key))
            .unwrap_or_else(|| key_allowed(&[], key));
        let blocked = shared.blocked(ip);
        let job = match job {
            Some(j) if allowed && !blocked => j,
            _ => {
                shared.failed(ip);
                tracing::info!(peer = %self.peer, "SSH gateway: login refused");
                return Ok(Auth::reject());
            }
        };
        if job.sessions() >= shared.config.sessions_per_job {
            tracing::info!(job = %job.job_id, peer = %self.peer, "SSH gateway: session limit reached");
            return Ok(Auth::reject());
        }
        // The session's hold first: the job must never be without one in between.
        let hold = job.hold(Instant::now() + shared.config.max);
        job.session_started();
        tracing::info!(job = %job.job_id, peer = %self.peer, sessions = job.sessions(), "SSH session started");
        self.session = Some(SessionHold {
            job,
            hold: Some(hold),
            grace: shared.config.grace,
        });
        self.slot.authenticated();
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        let Some(s) = &self.session else {
            return Ok(()); // dropping the reply refuses the channel
        };
        reply.accept().await;
        tokio::spawn(bridge::session_channel(
            channel,
            Arc::clone(&s.job),
            Arc::clone(&self.shared.executor),
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), ConnError> {
        let Some(s) = &self.session else {
            return Ok(());
        };
        // Only the job's own network namespace: its localhost.
        let local = matches!(host_to_connect, "localhost" | "127.0.0.1" | "::1");
        let Ok(port) = u16::try_from(port_to_connect) else {
            return Ok(());
        };
        if !local || port == 0 {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        reply.accept().await;
        tokio::spawn(bridge::forward_channel(
            channel,
            Arc::clone(&s.job),
            Arc::clone(&self.shared.executor),
            port,
        ));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), ConnError> {
        // The bridge reads the request from the channel itself.
        if self.started.contains_key(&channel) {
            session.channel_failure(channel)?;
        } else {
            session.channel_success(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        self.start(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), ConnError> {
        self.start(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        if name == "sftp" {
            self.start(channel, session)
        } else {
            session.channel_failure(channel)?;
            Ok(())
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        // The session gets the job's environment, not the client's.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), ConnError> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        _port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, ConnError> {
        Ok(false)
    }
}

impl Connection {
    fn start(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), ConnError> {
        if self.session.is_none() || self.started.insert(channel, ()).is_some() {
            session.channel_failure(channel)?;
        } else {
            session.channel_success(channel)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBCnKQfAzuVF6iHrcQjDuDR8KDeNCpCxjF4+Hc1JFOQe a@x";
    const B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGlPfS2B6mjDpbWC8M7y8WXG7l2cZ2rWQxL8gPYxcGCN b@x";

    #[test]
    fn only_listed_keys_are_allowed_options_and_comments_aside() {
        let a = PublicKey::from_openssh(A).expect("a");
        let b = PublicKey::from_openssh(B).expect("b");
        let allowed = vec![
            "# a comment".to_owned(),
            format!("no-pty,from=\"10.0.0.1\" {A}"),
        ];
        assert!(key_allowed(&allowed, &a));
        assert!(!key_allowed(&allowed, &b));
        assert!(!key_allowed(&[], &a));
        assert!(!key_allowed(&["garbage".to_owned()], &a));
    }
}
