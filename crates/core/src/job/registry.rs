//! The seam to attach to a running job. While a job runs, the registry (keyed by job id) gives
//! its primary container and who the steps run as (user, uid/gid, home, working directory,
//! environment), and lets a holder — a developer's SSH session, a scoped engine — keep the
//! job's resources alive after its last step: a [`Hold`] with a deadline. The job's resources
//! are released when the last hold is dropped or its deadline passes, or the job is canceled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Running jobs by id. Cheap to clone: clones share the table.
#[derive(Clone, Default)]
pub struct Registry {
    jobs: Arc<Mutex<HashMap<String, Arc<Attachment>>>>,
    ssh: Arc<Mutex<SshTable>>,
}

/// Where developers SSH into this registry's jobs and how long a job waits for them; set by
/// the front door that runs the gateway (`bosun agent`, `bosun execute --ssh`).
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Host and port shown in the job's `ssh -p PORT JOB@HOST` line.
    pub host: String,
    pub port: u16,
    /// The gateway's host key fingerprint (`SHA256:…`), shown beside the line.
    pub fingerprint: String,
    /// After the last step, held this long if nobody is connected.
    pub wait: Duration,
    /// A session holds the job at most this long.
    pub max: Duration,
    /// After a session ends, held this much longer (a reconnect).
    pub grace: Duration,
}

impl SshSettings {
    /// The host and port users connect to: an advertised `HOST:PORT` (a proxy in front of the
    /// agent) names its own port.
    pub fn reach(&self) -> (String, u16) {
        match self.host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => match p.parse::<u16>() {
                Ok(p) => (h.to_owned(), p),
                Err(_) => (self.host.clone(), self.port),
            },
            _ => (self.host.clone(), self.port),
        }
    }

    /// The lines a job with SSH prints at its start: the command and the host key to check.
    pub fn announce(&self, job_id: &str, keys: usize) -> Vec<String> {
        let (host, port) = self.reach();
        vec![
            format!("SSH: ssh -p {port} {job_id}@{host}"),
            format!(
                "SSH: host key {} (ED25519); {keys} key{} may log in; after the last step the job waits {} for a first session",
                self.fingerprint,
                if keys == 1 { "" } else { "s" },
                crate::stream::format_duration(u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX)),
            ),
        ]
    }
}

#[derive(Default)]
struct SshTable {
    settings: Option<Arc<SshSettings>>,
    /// Job id → the public keys (`authorized_keys` lines) of whoever asked for SSH.
    grants: HashMap<String, Arc<Vec<String>>>,
    /// Keys for every job of this registry (`bosun execute --ssh`: the caller's own jobs).
    every_job: Option<Arc<Vec<String>>>,
}

/// What a part attaching to a running job needs to land where the steps run.
pub struct Attachment {
    pub job_id: String,
    /// The primary container's id.
    pub container: String,
    /// The user steps run as (`None`: the image's).
    pub user: Option<String>,
    pub uid: u64,
    pub gid: u64,
    pub home: String,
    pub workdir: String,
    /// The environment a step sees (built-ins, image, executor and job; secrets included, so
    /// only hand it to the job's own users).
    pub env: Vec<(String, String)>,
    /// Set when the job's last step has ended.
    pub steps_done: CancellationToken,
    /// Set when the job has left the registry (its resources are being released): whoever is
    /// attached lets go.
    pub released: CancellationToken,
    /// Public keys (`authorized_keys` lines) allowed to SSH into this job; empty: none.
    pub ssh_keys: Arc<Vec<String>>,
    sessions: AtomicUsize,
    /// The hold that waits for a first session after the last step (dropped when one starts).
    waiting: Mutex<Option<Hold>>,
    holds: Mutex<HashMap<u64, Instant>>,
    next_hold: Mutex<u64>,
    changed: Notify,
}

/// The environment holds the job's secrets: only its names are shown.
impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("job_id", &self.job_id)
            .field("container", &self.container)
            .field("user", &self.user)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("home", &self.home)
            .field("workdir", &self.workdir)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .field("ssh_keys", &self.ssh_keys.len())
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, job_id: &str) -> Option<Arc<Attachment>> {
        self.jobs.lock().ok()?.get(job_id).cloned()
    }

    /// Ids of the jobs running now.
    pub fn running(&self) -> Vec<String> {
        self.jobs
            .lock()
            .map(|j| j.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Run a gateway for this registry's jobs: their output shows how to reach it.
    pub fn set_ssh(&self, settings: SshSettings) {
        if let Ok(mut t) = self.ssh.lock() {
            t.settings = Some(Arc::new(settings));
        }
    }

    /// Let `keys` SSH into job `job_id` once it runs (until [`Registry::revoke_ssh`]).
    pub fn grant_ssh(&self, job_id: &str, keys: Vec<String>) {
        if let Ok(mut t) = self.ssh.lock() {
            t.grants.insert(job_id.to_owned(), Arc::new(keys));
        }
    }

    /// Let `keys` SSH into every job of this registry.
    pub fn grant_ssh_every_job(&self, keys: Vec<String>) {
        if let Ok(mut t) = self.ssh.lock() {
            t.every_job = Some(Arc::new(keys));
        }
    }

    pub fn revoke_ssh(&self, job_id: &str) {
        if let Ok(mut t) = self.ssh.lock() {
            t.grants.remove(job_id);
        }
    }

    /// The gateway's settings and the job's keys, when the job may be reached by SSH.
    pub fn ssh_for(&self, job_id: &str) -> Option<(Arc<SshSettings>, Arc<Vec<String>>)> {
        let t = self.ssh.lock().ok()?;
        let settings = t.settings.clone()?;
        let keys = t.grants.get(job_id).or(t.every_job.as_ref())?.clone();
        (!keys.is_empty()).then_some((settings, keys))
    }

    /// Register a job that has started; unregistered when the returned guard drops.
    pub(super) fn register(&self, attachment: Attachment) -> Registered {
        let attachment = Arc::new(attachment);
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.insert(attachment.job_id.clone(), Arc::clone(&attachment));
        }
        Registered {
            registry: self.clone(),
            attachment,
        }
    }
}

/// A job's place in the registry; leaves it on drop.
pub(super) struct Registered {
    registry: Registry,
    pub(super) attachment: Arc<Attachment>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.registry.jobs.lock() {
            jobs.remove(&self.attachment.job_id);
        }
        self.attachment.released.cancel();
        // The waiting hold points back at the attachment: let it go with the job.
        let waiting = self
            .attachment
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.take());
        drop(waiting);
    }
}

impl Attachment {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        job_id: &str,
        container: &str,
        user: Option<String>,
        uid: u64,
        gid: u64,
        home: &str,
        workdir: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        Self {
            job_id: job_id.to_owned(),
            container: container.to_owned(),
            user,
            uid,
            gid,
            home: home.to_owned(),
            workdir: workdir.to_owned(),
            env,
            steps_done: CancellationToken::new(),
            released: CancellationToken::new(),
            ssh_keys: Arc::new(Vec::new()),
            sessions: AtomicUsize::new(0),
            waiting: Mutex::new(None),
            holds: Mutex::new(HashMap::new()),
            next_hold: Mutex::new(0),
            changed: Notify::new(),
        }
    }

    /// The in-job `circleci` executable in the primary container (the setup archive puts it
    /// in every job's, whatever the image: static, it needs no shell and no libc).
    pub fn in_job_command(&self) -> String {
        format!("{}/circleci", super::bootstrap::bin_dir(&self.job_id))
    }

    /// Allow these public keys (`authorized_keys` lines) to SSH into the job.
    pub(super) fn with_ssh_keys(mut self, keys: Arc<Vec<String>>) -> Self {
        self.ssh_keys = keys;
        self
    }

    /// After the last step: wait for a first session until `deadline`, unless one is open.
    pub(super) fn wait_for_sessions(self: &Arc<Self>, deadline: Instant) {
        if self.sessions() > 0 {
            return;
        }
        let hold = self.hold(deadline);
        let old = self.waiting.lock().ok().and_then(|mut w| w.replace(hold));
        drop(old);
    }

    /// A session has started: it holds the job itself from now on, so the hold waiting for a
    /// first session ends.
    pub fn session_started(&self) {
        self.sessions.fetch_add(1, Ordering::SeqCst);
        let waiting = self.waiting.lock().ok().and_then(|mut w| w.take());
        drop(waiting);
    }

    pub fn session_ended(&self) {
        let _ = self
            .sessions
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::SeqCst)
    }

    /// Keep the job's resources until the returned hold drops or `deadline` passes.
    pub fn hold(self: &Arc<Self>, deadline: Instant) -> Hold {
        let id = {
            let mut n = self.next_hold.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        if let Ok(mut h) = self.holds.lock() {
            h.insert(id, deadline);
        }
        self.changed.notify_waiters();
        Hold {
            attachment: Arc::clone(self),
            id,
        }
    }

    /// The latest deadline of the holds still in place, if any.
    pub fn held_until(&self) -> Option<Instant> {
        let now = Instant::now();
        self.holds
            .lock()
            .ok()?
            .values()
            .copied()
            .filter(|d| *d > now)
            .max()
    }

    /// Wait until no hold is in place (dropped or expired), or `cancel`.
    pub(super) async fn holds_released(&self, cancel: &CancellationToken) {
        loop {
            let notified = self.changed.notified();
            let Some(until) = self.held_until() else {
                return;
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(until.into()) => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

/// Keeps a job's resources alive (see [`Attachment::hold`]); released on drop.
pub struct Hold {
    attachment: Arc<Attachment>,
    id: u64,
}

impl std::fmt::Debug for Hold {
    // Not the attachment: its environment holds the job's secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hold")
            .field("job", &self.attachment.job_id)
            .field("id", &self.id)
            .finish()
    }
}

impl Hold {
    /// Move the deadline (a session that is still active asks for more time).
    pub fn extend(&self, deadline: Instant) {
        if let Ok(mut h) = self.attachment.holds.lock() {
            h.insert(self.id, deadline);
        }
        self.attachment.changed.notify_waiters();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut h) = self.attachment.holds.lock() {
            h.remove(&self.id);
        }
        self.attachment.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn attachment() -> Attachment {
        Attachment::new("j1", "c1", None, 0, 0, "/root", "/root/project", vec![])
    }

    #[tokio::test]
    async fn a_hold_keeps_the_job_until_it_drops_and_the_registry_forgets_the_job() {
        let registry = Registry::new();
        let reg = registry.register(attachment());
        let a = registry.get("j1").expect("registered");
        assert_eq!(a.container, "c1");
        let hold = a.hold(Instant::now() + Duration::from_secs(60));
        let cancel = CancellationToken::new();
        let waiting = {
            let a = Arc::clone(&a);
            let cancel = cancel.clone();
            tokio::spawn(async move { a.holds_released(&cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "released while held");
        drop(hold);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("released once the hold dropped")
            .expect("task");
        drop(reg);
        assert!(registry.get("j1").is_none());
    }

    #[test]
    fn debug_shows_variable_names_not_values() {
        let mut a = attachment();
        a.env = vec![("TOKEN".into(), "hunter22-secret".into())];
        let text = format!("{a:?}");
        assert!(text.contains("TOKEN"), "{text}");
        assert!(!text.contains("hunter22"), "{text}");
    }

    #[tokio::test]
    async fn an_expired_hold_releases_by_itself() {
        let a = Arc::new(attachment());
        let _hold = a.hold(Instant::now() + Duration::from_millis(100));
        let t = Instant::now();
        a.holds_released(&CancellationToken::new()).await;
        assert!(t.elapsed() >= Duration::from_millis(90));
        assert!(a.held_until().is_none());
    }
}
