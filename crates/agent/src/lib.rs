//! The two front doors onto the job core. Both hand a `JobRequest` to the one job path,
//! [`bosun_core::run::run`]; [`execute`] is `bosun execute` (one job or workflow by hand, to
//! the terminal or as JSON lines), and the crate itself is `bosun agent`, described below.
//!
//! `bosun agent`: the long-running agent. It registers with a coordinator, claims jobs
//! (long poll), runs up to `concurrency` of them at once, and streams each job's masked log,
//! step events and final status back through an on-disk spool
//! ([`bosun_core::stream::spool`]) so that nothing is lost when either side restarts.
//!
//! Signals: the first SIGTERM/SIGINT drains (nothing new is claimed, running jobs finish,
//! spools are flushed, exit 0); the second cancels the running jobs (reported `canceled`);
//! SIGHUP re-reads the config file (`concurrency`, `labels`). Under systemd
//! (`NOTIFY_SOCKET`) it reports READY/STATUS/STOPPING and pings the watchdog.

pub mod blobs;
pub mod client;
pub mod config;
mod control;
mod dotenv;
pub mod execute;
pub mod metrics;
pub mod pool;
#[cfg(test)]
mod pool_tests;
mod run;
mod sink;

use bosun_core::executor::{DockerExecutor, Executor};
use bosun_core::protocol::{
    self, ClaimRequest, FinalStatus, Heartbeat, RegisterRequest, RunningJob,
};
use bosun_core::stream::spool::{self, SpoolJob};
use client::{ApiErr, Backoff, Client};
use config::AgentConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit code for configuration problems and a revoked token: systemd should not restart
/// (the unit sets `RestartPreventExitStatus=78`).
pub const EXIT_CONFIG: u8 = 78;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Config file (TOML); every key can be overridden by BOSUN_<KEY>.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format on stderr (under systemd, with JOURNAL_STREAM set, logs go to the journal).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// The agent's identity, kept in `state_dir/agent.json` (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    agent_id: String,
    agent_token: bosun_core::private::Secret<String>,
    coordinator_url: String,
}

pub(crate) struct JobEntry {
    cancel: CancellationToken,
    /// Told "unknown" by the coordinator: stop without reporting.
    quiet: Arc<AtomicBool>,
    state: Arc<Mutex<String>>,
}

pub(crate) struct Agent {
    cfg: RwLock<AgentConfig>,
    config_path: PathBuf,
    config_required: bool,
    client: Client,
    agent_id: String,
    executor: Arc<dyn Executor>,
    /// Running jobs, for parts that attach to them.
    registry: bosun_core::job::Registry,
    jobs: Mutex<HashMap<String, JobEntry>>,
    changed: tokio::sync::Notify,
    draining: CancellationToken,
    fatal: CancellationToken,
    fatal_msg: Mutex<Option<String>>,
    senders: AtomicUsize,
    /// Jobs whose spool is still being delivered after they stopped running: heartbeats keep
    /// their leases alive, or a long upload (or a coordinator outage) would let them lapse.
    delivering: Mutex<std::collections::HashSet<String>>,
    /// A job or a log delivery ended since the heap was last given back (see [`trim_heap`]).
    heap_grew: AtomicBool,
    metrics: Arc<metrics::AgentMetrics>,
    /// Ready containers for the next jobs (none kept with `ready_containers = 0`).
    pool: Arc<pool::Pool>,
}

impl metrics::Health for Agent {
    fn running(&self) -> usize {
        self.jobs().len()
    }
    fn spool_dir(&self) -> PathBuf {
        self.cfg().spool_dir
    }
    fn ready(&self) -> Result<(), String> {
        if self.fatal.is_cancelled() {
            Err("stopping: the coordinator refused this agent".into())
        } else if self.draining.is_cancelled() {
            Err("draining: no new jobs".into())
        } else {
            Ok(())
        }
    }
    fn metrics(&self) -> &metrics::AgentMetrics {
        &self.metrics
    }
}

impl Agent {
    pub(crate) fn cfg(&self) -> AgentConfig {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, JobEntry>> {
        match self.jobs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// STATUS= for systemd: how many jobs run, and whether the agent drains.
    fn report_status(&self) {
        let n = self.jobs().len();
        let status = if self.draining.is_cancelled() {
            format!("draining: {n} job(s) running")
        } else {
            format!("{n} job(s) running")
        };
        notify(&[sd_notify::NotifyState::Status(&status)]);
    }

    fn set_fatal(&self, msg: String) {
        if let Ok(mut m) = self.fatal_msg.lock() {
            m.get_or_insert(msg);
        }
        self.fatal.cancel();
        self.changed.notify_waiters();
    }

    fn unauthorized(&self, detail: &str) {
        let cfg = self.cfg();
        self.set_fatal(format!(
            "agent token revoked (the coordinator answered 401: {detail}): re-register with a new registration token: put it in {}, delete {}, and restart the agent",
            cfg.registration_token_file.display(),
            cfg.state_dir.join("agent.json").display()
        ));
    }
}

pub fn main(args: AgentArgs) -> u8 {
    init_tracing(args.log_format);
    let (path, required) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    let cfg = match AgentConfig::load(&path, required) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    for d in [
        &cfg.state_dir,
        &cfg.spool_dir,
        &cfg.store_dir,
        &cfg.work_dir,
    ] {
        if let Err(e) = private_dir(d) {
            tracing::error!("{}: {e}", d.display());
            return EXIT_CONFIG;
        }
    }
    // Before any thread exists: checkouts go to the work dir, the engine is the configured one.
    std::env::set_var("TMPDIR", &cfg.work_dir);
    if let Some(h) = &cfg.docker_host {
        std::env::set_var("DOCKER_HOST", h);
    }
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Checkouts and compiles run on blocking threads; an idle agent lets them go soon
        // (each kept its stack and a malloc arena's worth of retained pages).
        .thread_keep_alive(Duration::from_secs(2))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(run_agent(cfg, path, required))
}

/// glibc gives every thread that allocates an arena of its own (up to 8 per core), and each
/// keeps the pages it once used: most of an idle agent's heap was such retained arena memory.
/// Two arenas are plenty for an agent whose threads mostly wait on sockets. Called before any
/// thread exists.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Give the heap's free pages back to the kernel, once nothing runs or delivers (checked at
/// each heartbeat, after a job or a delivery ended). glibc returns only the top of the main
/// heap by itself: after a job with a big log, an idle agent kept megabytes of freed buffers
/// in its arenas (docs/benchmarks.md, Agent).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let before = rss_anon_kib();
        // SAFETY: malloc_trim only walks the allocator's own free lists, under its locks.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(
            "gave the idle heap back: RssAnon {} kB -> {} kB",
            before.unwrap_or(0),
            rss_anon_kib().unwrap_or(0)
        );
    }
}

/// This process's anonymous resident memory (`RssAnon` of /proc/self/status), in kB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_anon_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOSUN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if format == LogFormat::Human && std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(j) = tracing_journald::layer() {
            let _ = registry
                .with(j.with_syslog_identifier("bosun-agent".into()))
                .try_init();
            return;
        }
    }
    match format {
        LogFormat::Json => {
            let _ = registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_writer(std::io::stderr),
                )
                .try_init();
        }
        LogFormat::Human => {
            let _ = registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init();
        }
    }
}

fn notify(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(false, state);
    }
}

async fn run_agent(cfg: AgentConfig, config_path: PathBuf, required: bool) -> u8 {
    let base = match cfg
        .ca_certificates()
        .and_then(|cas| Client::new(&cfg.coordinator_url, cas, ""))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    let early_stop = CancellationToken::new();
    {
        let early = early_stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            early.cancel();
        });
    }
    let ident = tokio::select! {
        r = identity(&cfg, &base) => match r {
            Ok(i) => i,
            Err(e) => {
                tracing::error!("{e}");
                return EXIT_CONFIG;
            }
        },
        _ = early_stop.cancelled() => return 0,
    };
    tracing::info!(agent_id = %ident.agent_id, coordinator = %cfg.coordinator_url, "registered as {} with {}", ident.agent_id, cfg.coordinator_url);
    let executor = match DockerExecutor::connect().await {
        Ok(e) => Arc::new(e) as Arc<dyn Executor>,
        Err(e) => {
            tracing::error!("docker: {e}");
            return 1;
        }
    };
    let agent_metrics = Arc::new(metrics::AgentMetrics::new());
    let executor: Arc<dyn Executor> =
        Arc::new(metrics::Metered::new(executor, Arc::clone(&agent_metrics)));
    let agent = Arc::new(Agent {
        client: base.with_token(ident.agent_token.expose()),
        agent_id: ident.agent_id.clone(),
        cfg: RwLock::new(cfg.clone()),
        config_path,
        config_required: required,
        pool: Arc::new(pool::Pool::new(
            Arc::clone(&executor),
            &ident.agent_id,
            cfg.ready_containers,
            Duration::from_secs(cfg.ready_idle_secs),
        )),
        executor,
        registry: bosun_core::job::Registry::new(),
        jobs: Mutex::new(HashMap::new()),
        changed: tokio::sync::Notify::new(),
        draining: CancellationToken::new(),
        fatal: CancellationToken::new(),
        fatal_msg: Mutex::new(None),
        senders: AtomicUsize::new(0),
        delivering: Mutex::new(std::collections::HashSet::new()),
        heap_grew: AtomicBool::new(false),
        metrics: agent_metrics,
    });
    let health_stop = CancellationToken::new();
    let _stop_health = health_stop.clone().drop_guard();
    if let Some(addr) = &cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!("metrics and health on http://{addr}");
                let health: Arc<dyn metrics::Health> = agent.clone();
                tokio::spawn(metrics::serve(l, health, health_stop.clone()));
            }
            Err(e) => tracing::error!("metrics_listen {addr}: {e}; serving no metrics"),
        }
    }
    // Kept for the agent's life: dropping it stops the gateway. A bad setting stops the
    // agent; a port in use does not.
    let _gateway = match cfg.gateway() {
        Ok(None) => None,
        Ok(Some(g)) => match bosun_core::gateway::Gateway::start(
            g,
            agent.registry.clone(),
            Arc::clone(&agent.executor),
        )
        .await
        {
            Ok(g) => Some(g),
            // Builds run without it: only SSH requests go unanswered.
            Err(e) => {
                tracing::error!("{e}; jobs run without SSH");
                None
            }
        },
        Err(e) => {
            tracing::error!("{e}");
            return EXIT_CONFIG;
        }
    };
    remove_orphans(&agent).await;
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("idle"),
    ]);
    spawn_signals(Arc::clone(&agent));
    tokio::spawn(heartbeat_loop(Arc::clone(&agent)));
    tokio::spawn(control::control_loop(Arc::clone(&agent)));
    tokio::spawn(pool_loop(Arc::clone(&agent)));
    spawn_watchdog();
    claim_loop(&agent).await;
    // No job will take them now.
    agent.pool.clear().await;

    // Drain: running jobs finish (or were canceled), then the spools are flushed.
    loop {
        let running = agent.jobs().len();
        if running == 0 {
            break;
        }
        notify(&[sd_notify::NotifyState::Status(&format!(
            "draining: {running} job(s) running"
        ))]);
        tokio::select! {
            _ = agent.changed.notified() => {},
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
    }
    let flush = Duration::from_secs(agent.cfg().drain_flush_secs);
    let until = tokio::time::Instant::now() + flush;
    while agent.senders.load(Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < until
        && !agent.fatal.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = agent.senders.load(Ordering::SeqCst);
    if left > 0 {
        tracing::warn!("{left} job(s) still spooled; they are sent after the next start");
    }
    if let Some(msg) = agent.fatal_msg.lock().ok().and_then(|m| m.clone()) {
        tracing::error!("{msg}");
        eprintln!("error: {msg}");
        return EXIT_CONFIG;
    }
    tracing::info!("stopped");
    0
}

/// The stored identity, or a new one from registering.
async fn identity(cfg: &AgentConfig, base: &Client) -> Result<Identity, String> {
    let path = cfg.state_dir.join("agent.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id: Identity =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if id.coordinator_url != cfg.coordinator_url {
                tracing::warn!(
                    "{} was issued by {}, not {}; using it anyway (delete it to register again)",
                    path.display(),
                    id.coordinator_url,
                    cfg.coordinator_url
                );
            }
            return Ok(id);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let reg = std::fs::read_to_string(&cfg.registration_token_file).map_err(|e| {
        format!(
            "no agent token yet and cannot read the registration token {}: {e}",
            cfg.registration_token_file.display()
        )
    })?;
    let req = RegisterRequest {
        registration_token: reg.trim().to_owned().into(),
        name: cfg.agent_name(),
        resource_class: cfg.resource_class.clone(),
        labels: cfg.labels.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut backoff = Backoff::default();
    let resp = loop {
        match base.register(&req).await {
            Ok(r) => break r,
            Err(ApiErr::Unauthorized(m)) => {
                return Err(format!(
                    "the coordinator rejected the registration token in {}: {m}",
                    cfg.registration_token_file.display()
                ))
            }
            Err(ApiErr::Transient(m)) => {
                let d = backoff.next_delay();
                tracing::warn!("register: {m}; retrying in {:.1}s", d.as_secs_f64());
                tokio::time::sleep(d).await;
            }
            Err(e) => return Err(format!("register: {e}")),
        }
    };
    if resp.protocol_version != protocol::PROTOCOL_VERSION {
        tracing::warn!(
            "the coordinator speaks protocol v{}, this agent v{}",
            resp.protocol_version,
            protocol::PROTOCOL_VERSION
        );
    }
    let id = Identity {
        agent_id: resp.agent_id,
        agent_token: resp.agent_token,
        coordinator_url: cfg.coordinator_url.clone(),
    };
    write_private(
        &path,
        &serde_json::to_vec_pretty(&id).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(id)
}

/// Create `dir` (and its parents) 0700, or tighten an existing one others could enter: the
/// identity, spooled logs, checkouts and other projects' caches live in these.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(mode) = bosun_core::private::private_dir(dir)? {
        tracing::warn!("{} had mode {mode:o}; tightened to 700", dir.display());
    }
    Ok(())
}

/// Write a file only its owner can read (created 0600, then renamed into place).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Containers a crash left behind, and spooled jobs that never finished.
async fn remove_orphans(agent: &Arc<Agent>) {
    let keep_images = agent.cfg().engine_keep_images;
    if let Some(dir) = agent.cfg().engine_settings().ok().map(|s| s.socket_root) {
        let n = bosun_core::engine_proxy::sweep_dirs(&dir);
        if n > 0 {
            tracing::warn!("removed {n} job engine socket directories left by an earlier run");
        }
    }
    let n = bosun_core::job::work_tree::sweep(&agent.agent_id);
    if n > 0 {
        tracing::warn!("removed {n} job working directories left by an earlier run");
    }
    match bosun_core::job::sweep(agent.executor.as_ref(), &agent.agent_id, keep_images).await {
        Ok(removed) => {
            for (kind, id) in removed {
                tracing::warn!(%id, "removed a {kind:?} left by an earlier run");
            }
        }
        Err(e) => tracing::error!("cannot remove what an earlier run left: {e}"),
    }
    let jobs = match spool::scan(&agent.cfg().spool_dir) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!("cannot read the spool: {e}");
            return;
        }
    };
    for job in jobs {
        let job = Arc::new(job);
        if job.finished().is_none() {
            let msg = "the agent stopped while this job ran (crash or restart); its container was removed";
            tracing::warn!(job = %job.job_id(), "{msg}");
            let _ = job.append_log(format!("\n[bosun agent] error: {msg}\n").as_bytes());
            if let Err(e) = job.finish(FinalStatus::InfrastructureFail, Some(msg.to_owned())) {
                tracing::error!(job = %job.job_id(), "spool: {e}");
            }
        } else {
            tracing::info!(job = %job.job_id(), "resuming delivery of a spooled job");
        }
        spawn_sender(Arc::clone(agent), job);
    }
}

/// The store scope of a claimed job: its repository (by UUID, which the coordinator keeps
/// unique), and for a pull request from a fork that pull request's own caches.
pub(crate) fn store_scope(job: &bosun_core::protocol::WireJob) -> bosun_core::store::ProjectScope {
    let identity = if job.project.uuid.trim().is_empty() {
        format!("clone-url:{}", job.project.clone_url)
    } else {
        format!("bitbucket-uuid:{}", job.project.uuid)
    };
    let scope = bosun_core::store::ProjectScope::new(&identity);
    match &job.pull_request {
        Some(pr) if pr.fork => scope.fork_pull_request(pr.number),
        _ => scope,
    }
}

pub(crate) fn spawn_sender(agent: Arc<Agent>, job: Arc<SpoolJob>) -> tokio::task::JoinHandle<()> {
    agent.senders.fetch_add(1, Ordering::SeqCst);
    let id = job.job_id();
    if let Ok(mut d) = agent.delivering.lock() {
        d.insert(id.clone());
    }
    tokio::spawn(async move {
        run::send_spool(&agent, &job).await;
        if let Ok(mut d) = agent.delivering.lock() {
            d.remove(&id);
        }
        agent.heap_grew.store(true, Ordering::SeqCst);
        agent.senders.fetch_sub(1, Ordering::SeqCst);
    })
}

fn spawn_signals(agent: Arc<Agent>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        let mut count = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
                _ = hup.recv() => {
                    reload(&agent);
                    continue;
                }
            }
            count += 1;
            match count {
                1 => {
                    tracing::info!(
                        "draining: no new jobs; running jobs finish (signal again to cancel them)"
                    );
                    notify(&[sd_notify::NotifyState::Stopping]);
                    agent.draining.cancel();
                    agent.changed.notify_waiters();
                }
                2 => {
                    tracing::warn!("canceling the running jobs (signal again to exit at once)");
                    for e in agent.jobs().values() {
                        e.cancel.cancel();
                    }
                }
                _ => {
                    tracing::error!(
                        "exiting at once; spooled results are sent after the next start"
                    );
                    std::process::exit(1);
                }
            }
        }
    });
}

fn reload(agent: &Agent) {
    match AgentConfig::load(&agent.config_path, agent.config_required) {
        Ok(new) => {
            if let Ok(mut c) = agent.cfg.write() {
                tracing::info!(
                    concurrency = new.concurrency,
                    labels = ?new.labels,
                    "config reloaded (concurrency, labels, kill grace and timings apply now)"
                );
                c.concurrency = new.concurrency;
                c.labels = new.labels;
                c.kill_grace_secs = new.kill_grace_secs;
                c.heartbeat_secs = new.heartbeat_secs;
                c.claim_wait_secs = new.claim_wait_secs;
                c.ready_containers = new.ready_containers;
                c.ready_idle_secs = new.ready_idle_secs;
                agent.pool.configure(
                    new.ready_containers,
                    Duration::from_secs(new.ready_idle_secs),
                );
            }
            agent.changed.notify_waiters();
        }
        Err(e) => tracing::error!("reload failed, keeping the old config: {e}"),
    }
}

/// WATCHDOG=1 every half of `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set, is this process:
/// systemd sets both; `sd_notify::watchdog_enabled` insists on the PID).
fn spawn_watchdog() {
    let usec = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    if usec == 0 || !for_us {
        return;
    }
    let every = Duration::from_micros(usec / 2);
    tokio::spawn(async move {
        loop {
            notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    });
}

async fn heartbeat_loop(agent: Arc<Agent>) {
    loop {
        let mut running: Vec<RunningJob> = agent
            .jobs()
            .iter()
            .map(|(id, e)| RunningJob {
                job_id: id.clone(),
                state: e.state.lock().map(|s| s.clone()).unwrap_or_default(),
                ssh: bosun_core::gateway::job_state(&agent.registry, id),
            })
            .collect();
        let delivering: Vec<String> = agent
            .delivering
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for id in delivering {
            if !running.iter().any(|r| r.job_id == id) {
                running.push(RunningJob {
                    job_id: id,
                    state: "delivering its log".to_owned(),
                    ssh: None,
                });
            }
        }
        if running.is_empty() && agent.heap_grew.swap(false, Ordering::SeqCst) {
            tokio::task::spawn_blocking(trim_heap);
        }
        let hb = Heartbeat {
            running,
            draining: agent.draining.is_cancelled(),
        };
        match agent.client.heartbeat(&hb).await {
            Ok(r) => {
                let jobs = agent.jobs();
                for id in &r.cancel {
                    if let Some(e) = jobs.get(id) {
                        tracing::info!(job = %id, "canceled by the coordinator");
                        e.cancel.cancel();
                    }
                }
                for id in &r.unknown {
                    if let Some(e) = jobs.get(id) {
                        tracing::warn!(job = %id, "the coordinator no longer leases this job to us: stopping it");
                        e.quiet.store(true, Ordering::SeqCst);
                        e.cancel.cancel();
                    }
                }
            }
            Err(ApiErr::Unauthorized(m)) => {
                agent.unauthorized(&m);
                for e in agent.jobs().values() {
                    e.cancel.cancel();
                }
                return;
            }
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
        agent.report_status();
        let every = Duration::from_secs(agent.cfg().heartbeat_secs.max(1));
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = agent.fatal.cancelled() => return,
        }
    }
}

/// Keep the pool of ready containers tended while the agent is idle: after each job (the
/// agent wakes on `changed` when one ends), and when a ready container's idle time runs out.
async fn pool_loop(agent: Arc<Agent>) {
    loop {
        // Registered before the checks, so a change in between wakes us.
        let changed = agent.changed.notified();
        let made = agent.pool.made.notified();
        if agent.draining.is_cancelled() || agent.fatal.is_cancelled() {
            agent.pool.clear().await;
            return;
        }
        if agent.jobs().is_empty() {
            agent.pool.tend().await;
        }
        let until = agent
            .pool
            .next_expiry()
            .map(|t| t + Duration::from_millis(10))
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = changed => {},
            _ = made => {},
            _ = tokio::time::sleep_until(until.into()) => {},
            _ = agent.draining.cancelled() => {},
            _ = agent.fatal.cancelled() => {},
        }
    }
}

async fn claim_loop(agent: &Arc<Agent>) {
    let mut backoff = Backoff::default();
    loop {
        if agent.draining.is_cancelled() || agent.fatal.is_cancelled() {
            return;
        }
        let cfg = agent.cfg();
        let running = agent.jobs().len() as u32;
        if running >= cfg.concurrency {
            tokio::select! {
                _ = agent.changed.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(1)) => {},
                _ = agent.draining.cancelled() => {},
                _ = agent.fatal.cancelled() => {},
            }
            continue;
        }
        let req = ClaimRequest {
            resource_class: cfg.resource_class.clone(),
            labels: cfg.labels.clone(),
            capacity: cfg.concurrency - running,
        };
        let wait = Duration::from_secs(cfg.claim_wait_secs);
        // A claim in flight when draining starts is abandoned: if the coordinator handed out
        // a job meanwhile, its lease lapses and the job is queued again.
        let asked = std::time::Instant::now();
        let result = tokio::select! {
            r = agent.client.claim(&req, wait) => r,
            _ = agent.draining.cancelled() => return,
            _ = agent.fatal.cancelled() => return,
        };
        match result {
            Ok(Some(c)) => {
                backoff.reset();
                agent.metrics.claimed(asked.elapsed());
                start_job(agent, c.job);
            }
            Ok(None) => backoff.reset(),
            Err(ApiErr::Unauthorized(m)) => {
                agent.unauthorized(&m);
                return;
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!("claim: {e}; retrying in {:.1}s", d.as_secs_f64());
                tokio::select! {
                    _ = tokio::time::sleep(d) => {},
                    _ = agent.draining.cancelled() => return,
                }
            }
        }
    }
}

fn start_job(agent: &Arc<Agent>, job: protocol::WireJob) {
    let entry = JobEntry {
        cancel: CancellationToken::new(),
        quiet: Arc::new(AtomicBool::new(false)),
        state: Arc::new(Mutex::new("starting".to_owned())),
    };
    let (cancel, quiet, state) = (
        entry.cancel.clone(),
        Arc::clone(&entry.quiet),
        Arc::clone(&entry.state),
    );
    let id = job.id.clone();
    tracing::info!(job = %id, name = %job.job_name, attempt = job.attempt, "claimed job {id} ({}, attempt {})", job.job_name, job.attempt);
    agent.jobs().insert(id.clone(), entry);
    agent.report_status();
    // The control channel opens while jobs run.
    agent.changed.notify_waiters();
    let agent = Arc::clone(agent);
    tokio::spawn(async move {
        run::run_wire_job(&agent, job, cancel, quiet, state).await;
        agent.jobs().remove(&id);
        agent.heap_grew.store(true, Ordering::SeqCst);
        agent.report_status();
        agent.changed.notify_waiters();
    });
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// Issue 12 item 16: tokens never show in `Debug` output (logs, panics).
    #[test]
    fn register_and_identity_types_hide_their_tokens_in_debug() {
        let req = RegisterRequest {
            registration_token: String::from("bosun-reg-SECRET1").into(),
            name: "a".into(),
            resource_class: "docker".into(),
            labels: vec![],
            version: "0".into(),
        };
        let resp = protocol::RegisterResponse {
            agent_id: "agent-1".into(),
            agent_token: String::from("bosun-agent-SECRET2").into(),
            protocol_version: 2,
        };
        let id = Identity {
            agent_id: "agent-1".into(),
            agent_token: String::from("bosun-agent-SECRET3").into(),
            coordinator_url: "https://c".into(),
        };
        let shown = format!("{req:?} {resp:?} {id:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("agent-1"), "{shown}");
    }
}
