//! The coordinator's store on PostgreSQL (`--database postgres://…`): the same area traits
//! as the SQLite [`Store`](super::Store), for several coordinators on one database
//! (docs/scale.md).
//!
//! Most areas are not here: their code is written once for both databases over
//! [`super::db::Db`], which [`sql::Connection`] implements over the `postgres` client
//! (pipelines, contexts, schedules, notifications, badges, follow, wait reasons, API v2,
//! the Bitbucket intake, the blobs index, SSH into jobs; see
//! [`super::db::SqlStore`]). The areas still here (`jobs.rs`, `lease.rs`, … beside their
//! SQLite namesakes) are in PostgreSQL's dialect through [`sql`], which gives the client
//! rusqlite's shape. The rules are not here: `model/` and the pure parts of the SQLite
//! store's files (sealing places, the row types) are used as they are.
//!
//! What differs from SQLite, and why:
//! - Writers: SQLite has one writer at a time. Here the rare writes (projects, pipelines,
//!   tokens, cancels, lease expiry) keep that rule across every coordinator with a
//!   transaction-scoped advisory lock ([`sql::TransactionBehavior::Immediate`]), so their
//!   read-then-write code stays correct as written; the hot paths — claims (`FOR UPDATE
//!   SKIP LOCKED`), heartbeats, log and event appends, finishes — lock only the rows they
//!   touch and run side by side (`lease.rs`).
//! - A running job's log is in the database (`log_chunks`, written in the transaction that
//!   moves `jobs.log_bytes`; `logs.rs`), not a file: every replica appends and reads it, and
//!   no replica's disk holds a byte another needs. A finished log becomes one object of the
//!   blob store (`objects::logs`).
//! - Other processes' changes arrive by `LISTEN/NOTIFY` (`watch.rs`), not by polling.
//! - Secrets are sealed with the same key file and places ([`crate::secrets`]).

use super::*;

mod access;
mod jobs;
mod lease;
mod logs;
use super::blobs;
use super::contexts;
use super::pipelines;
mod people;
mod schema;
pub(crate) mod sql;
use super::ssh;
mod times;
mod watch;

#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;

pub use watch::PgChangeFeed;

use sql::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::log_store::LogStore;
use super::project_store::{AccessStore, ProjectStore};
use super::queue_store::QueueStore;
use std::collections::HashMap;

/// Connections a coordinator keeps to the database at most (its blocking threads wait for
/// one beyond that).
const POOL_SIZE: u32 = 32;
/// How long a call waits for a connection (a database that is down fails calls after this,
/// and `/readyz` says so).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: sql::Pool,
    config: postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// New log bytes appended through this store since it opened (resends not counted).
    appended: std::sync::atomic::AtomicU64,
    secrets: SecretsKey,
}

/// The URL as logs may show it: no password.
pub fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_string(),
        },
        None => "(not a URL)".into(),
    }
}

/// Is `s` a PostgreSQL URL (what `--database` takes)?
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// rustls with the system's roots, and the certificates of `PGSSLROOTCERT` (libpq's
/// variable) when it names a file: what `sslmode=require` verifies the server against
/// (`prefer`, the default, uses TLS when the server offers it; `disable` never).
pub(crate) fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs {
        let _ = roots.add(c);
    }
    if let Some(file) = std::env::var_os("PGSSLROOTCERT") {
        let path = PathBuf::from(file);
        let pem = std::fs::read(&path).map_err(io_err(&path))?;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        for c in tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| CoordError::Tls(format!("{}: {e}", path.display())))?;
            roots
                .add(c)
                .map_err(|e| CoordError::Tls(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CoordError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The pool's failures to connect, logged at most every ten seconds: a database that is
/// down fails every call anyway (and `/readyz` says so), one line says why.
#[derive(Debug, Default)]
struct QuietErrors {
    last: std::sync::Mutex<Option<std::time::Instant>>,
}

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, e: postgres::Error) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!("cannot connect to the database: {}", sql::SqlError::from(e));
        }
    }
}

impl PgStore {
    /// Connect to the database at `url` (migrating it), with data directory `dir` (uploads
    /// in progress; running logs are in the database) and secrets sealed with the key file
    /// `key` (default: beside `dir`, as SQLite's).
    pub fn open(url: &str, dir: &Path, key: Option<&Path>) -> Result<PgStore> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e| CoordError::Invalid(format!("--database {}: {e}", redacted(url))))?;
        let mut config = config;
        if config.get_application_name().is_none() {
            config.application_name("bosun-coordinator");
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        let tls = tls()?;
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .error_handler(Box::new(QuietErrors::default()))
            .build(sql::Manager {
                config: config.clone(),
                tls: tls.clone(),
            })
            .map_err(|e| {
                CoordError::Invalid(format!(
                    "cannot connect to the database {}: {e}",
                    redacted(url)
                ))
            })?;
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            set_mode(dir, 0o700)?;
        }
        private_dir(dir)?;
        let mut conn = Connection::new(pool.get().map_err(sql::SqlError::from)?);
        schema::migrate(&mut conn)?;
        let key_path = key
            .map(Path::to_path_buf)
            .unwrap_or_else(|| secrets::default_key_path(dir));
        let known: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'secrets_key'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        // A database that already has sealed secrets never gets a new key silently.
        if let (Some(fp), false) = (&known, key_path.exists()) {
            return Err(CoordError::Invalid(format!(
                "the secrets key file {} is missing: the secrets in the database were sealed \
                 with it (fingerprint {fp}); restore it or give its place with --secrets-key",
                key_path.display(),
            )));
        }
        let secrets = SecretsKey::load_or_create(&key_path, known.is_none())?;
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('secrets_key', ?1) ON CONFLICT (key) DO NOTHING",
            [&secrets.fingerprint],
        )?;
        let recorded: String = conn.query_row(
            "SELECT value FROM meta WHERE key = 'secrets_key'",
            [],
            |r| r.get(0),
        )?;
        if recorded != secrets.fingerprint {
            return Err(CoordError::Invalid(format!(
                "{}: the secrets in the database were sealed with another key (fingerprint \
                 {recorded}, this file's is {})",
                key_path.display(),
                secrets.fingerprint
            )));
        }
        drop(conn);
        Ok(PgStore {
            pool,
            config,
            tls,
            appended: std::sync::atomic::AtomicU64::new(0),
            secrets,
        })
    }

    fn conn(&self) -> Result<Connection> {
        Ok(Connection::new(
            self.pool.get().map_err(sql::SqlError::from)?,
        ))
    }

    /// Reads take any pooled connection (PostgreSQL's readers never wait on writers).
    fn reader(&self) -> Result<Connection> {
        self.conn()
    }

    /// Does the database answer? (`/readyz`.)
    pub fn ping(&self) -> Result<()> {
        self.conn()?.execute_batch("SELECT 1")?;
        Ok(())
    }

    /// A connection of its own that `LISTEN`s for other coordinators' changes.
    pub fn change_feed(&self) -> Result<PgChangeFeed> {
        Ok(PgChangeFeed::new(self.config.clone(), self.tls.clone()))
    }
}

impl super::db::SqlStore for PgStore {
    fn read<T>(&self, f: impl FnOnce(&dyn super::db::Db) -> Result<T>) -> Result<T> {
        f(&self.reader()?)
    }

    fn conn<T>(&self, f: impl FnOnce(&dyn super::db::Db) -> Result<T>) -> Result<T> {
        f(&self.conn()?)
    }

    fn transaction<T>(
        &self,
        lock: super::db::Lock,
        f: impl FnOnce(&dyn super::db::Db) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(match lock {
            super::db::Lock::Writer => TransactionBehavior::Immediate,
            super::db::Lock::Rows => TransactionBehavior::RowLocks,
        })?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn secrets(&self) -> &SecretsKey {
        &self.secrets
    }
}

fn job_row(r: &Row) -> sql::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        project: r.get(1)?,
        commit_sha: r.get(2)?,
        git_ref: r.get(3)?,
        job_name: r.get(4)?,
        pipeline_number: r.get(5)?,
        status: sql::parse_col(r.get(6)?)?,
        agent_id: r.get(7)?,
        attempts: r.get(8)?,
        max_attempts: r.get(9)?,
        cancel_requested: r.get(10)?,
        log_bytes: r.get::<_, i64>(11)? as u64,
        event_count: r.get::<_, i64>(12)? as u64,
        error: r.get(13)?,
        created: r.get(14)?,
        started: r.get(15)?,
        finished: r.get(16)?,
        pr_number: r.get::<_, Option<i64>>(17)?.map(|n| n as u64),
        pr_url: r.get(18)?,
        timeout_secs: r.get::<_, Option<i64>>(19)?.map(|n| n as u64),
        resolved_sha: r.get(20)?,
        clone_url: r.get(21)?,
        agent_name: r.get(22)?,
        ssh: r.get(23)?,
        ssh_state: r
            .get::<_, Option<String>>(24)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        rerun_of: r.get(25)?,
    })
}

impl QueueStore for PgStore {
    fn enqueue(&self, j: &NewJob) -> Result<i64> {
        PgStore::enqueue(self, j)
    }
    fn enqueue_ssh(&self, j: &NewJob, ssh_keys: &[String]) -> Result<i64> {
        super::ssh::enqueue_ssh(self, j, ssh_keys)
    }
    fn rerun(&self, id: i64, ssh_keys: &[String]) -> Result<i64> {
        super::ssh::rerun(self, id, ssh_keys)
    }
    fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>> {
        PgStore::claim(self, agent_id, lease)
    }
    fn heartbeat(
        &self,
        agent_id: &str,
        running: &[RunningJob],
        lease: Duration,
    ) -> Result<HeartbeatOutcome> {
        PgStore::heartbeat(self, agent_id, running, lease)
    }
    fn pending_cancels(&self, agent_id: &str) -> Result<Vec<String>> {
        PgStore::pending_cancels(self, agent_id)
    }
    fn finish(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        req: &FinishRequest,
    ) -> Result<FinishOutcome> {
        PgStore::finish(self, id, agent_id, attempt, req)
    }
    fn expire_leases(&self) -> Result<usize> {
        PgStore::expire_leases(self)
    }
    fn cancel(&self, id: i64) -> Result<String> {
        PgStore::cancel(self, id)
    }
    fn record_online_window(&self, window: Duration) -> Result<()> {
        crate::store::waiting::record_online_window(self, window)
    }
    fn job(&self, id: i64) -> Result<Option<JobRow>> {
        PgStore::job(self, id)
    }
    fn list_jobs(&self, limit: u32) -> Result<Vec<JobRow>> {
        PgStore::list_jobs(self, limit)
    }
    fn list_jobs_filtered(&self, f: &JobFilter, limit: u32) -> Result<Vec<JobRow>> {
        PgStore::list_jobs_filtered(self, f, limit)
    }
    fn counts(&self, online_since: i64) -> Result<(i64, i64, i64)> {
        PgStore::counts(self, online_since)
    }
    fn wait_reason(&self, id: i64) -> Result<Option<String>> {
        Ok(crate::store::waiting::wait_reasons(self, &[id])?.remove(&id))
    }
    fn wait_reasons(&self, ids: &[i64]) -> Result<HashMap<i64, String>> {
        crate::store::waiting::wait_reasons(self, ids)
    }
}

impl LogStore for PgStore {
    fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        PgStore::append_log(self, id, agent_id, attempt, offset, bytes)
    }
    fn appended_log_bytes(&self) -> u64 {
        PgStore::appended_log_bytes(self)
    }
    fn append_events(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        first_seq: u64,
        events: &[JobEvent],
    ) -> Result<EventsOutcome> {
        PgStore::append_events(self, id, agent_id, attempt, first_seq, events)
    }
    fn log_from(&self, id: i64, from: u64) -> Result<Vec<u8>> {
        super::logs::log_from(self, id, from)
    }
    fn log_piece(&self, id: i64, from: u64, max: u64) -> Result<Option<(Vec<u8>, u64)>> {
        super::logs::log_piece(self, id, from, max)
    }
    fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        PgStore::read_log(self, id, from, end)
    }
    fn newlines_before(&self, id: i64, points: &[u64]) -> Result<Vec<u64>> {
        PgStore::newlines_before(self, id, points)
    }
    fn events_from(&self, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>> {
        super::logs::events_from(self, id, from)
    }
    fn log_times(&self, id: i64) -> Result<LogTimes> {
        PgStore::log_times(self, id)
    }
    fn log_times_from(&self, id: i64, skip: usize) -> Result<(Vec<(u64, i64)>, usize)> {
        PgStore::log_times_from(self, id, skip)
    }
    /// Chunks in the database: every replica reads them.
    fn live_logs_shared(&self) -> bool {
        true
    }
    fn finished_live_logs(&self) -> Result<Vec<i64>> {
        PgStore::finished_live_logs(self)
    }
    fn drop_finished_log(&self, id: i64) -> Result<()> {
        PgStore::drop_finished_log(self, id)
    }
    fn follow_log(&self, id: i64, secs: u64) -> Result<()> {
        PgStore::follow_log(self, id, secs)
    }
}

impl ProjectStore for PgStore {
    fn add_project(&self, p: &NewProject) -> Result<String> {
        PgStore::add_project(self, p)
    }
    fn set_project_settings(&self, project: &str, s: &ProjectSettings) -> Result<()> {
        PgStore::set_project_settings(self, project, s)
    }
    fn set_project_key(&self, project: &str, column: KeyColumn, key: Option<&str>) -> Result<()> {
        PgStore::set_project_key(self, project, column, key)
    }
    fn restrict_project(&self, slug: &str, agents: &[String]) -> Result<()> {
        PgStore::restrict_project(self, slug, agents)
    }
    fn project_slugs(&self) -> Result<Vec<String>> {
        PgStore::project_slugs(self)
    }
    fn project_for_webhook(&self, uuid: &str) -> Result<Option<WebhookProject>> {
        PgStore::project_for_webhook(self, uuid)
    }
    fn projects_for_data_center(&self, id: u64) -> Result<Vec<WebhookProject>> {
        PgStore::projects_for_data_center(self, id)
    }
    fn follow_repository(&self, pid: i64, slug: &str, default_branch: Option<&str>) -> Result<()> {
        PgStore::follow_repository(self, pid, slug, default_branch)
    }
    fn first_delivery(&self, uuid: &str, outcome: &str) -> Result<bool> {
        PgStore::first_delivery(self, uuid, outcome)
    }
    fn record_pull_request(
        &self,
        pid: i64,
        number: u64,
        branch: &str,
        state: &str,
        fork: bool,
        url: &str,
    ) -> Result<()> {
        PgStore::record_pull_request(self, pid, number, branch, state, fork, url)
    }
    fn open_pull_request(&self, pid: i64, branch: &str) -> Result<Option<(u64, String)>> {
        PgStore::open_pull_request(self, pid, branch)
    }
}

impl AccessStore for PgStore {
    fn create_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        PgStore::create_registration_token(self, ttl)
    }
    fn rotate_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        PgStore::rotate_registration_token(self, ttl)
    }
    fn registration_token_valid(&self, token: &str) -> Result<bool> {
        PgStore::registration_token_valid(self, token)
    }
    fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        PgStore::list_registration_tokens(self)
    }
    fn register_agent(
        &self,
        name: &str,
        resource_class: &str,
        labels: &[String],
        version: &str,
    ) -> Result<(String, String)> {
        PgStore::register_agent(self, name, resource_class, labels, version)
    }
    fn agent_by_token(&self, token: &str) -> Result<Option<Agent>> {
        PgStore::agent_by_token(self, token)
    }
    fn relabel_agent(&self, id: &str, resource_class: &str, labels: &[String]) -> Result<usize> {
        PgStore::relabel_agent(self, id, resource_class, labels)
    }
    fn revoke_agent(&self, who: &str) -> Result<usize> {
        PgStore::revoke_agent(self, who)
    }
    fn list_agents(&self) -> Result<Vec<AgentRow>> {
        PgStore::list_agents(self)
    }
    fn create_operator_token(&self, name: &str) -> Result<String> {
        PgStore::create_operator_token(self, name)
    }
    fn operator(&self, token: &str) -> Result<Option<String>> {
        PgStore::operator(self, token)
    }
    fn revoke_operator_tokens(&self, name: &str) -> Result<usize> {
        PgStore::revoke_operator_tokens(self, name)
    }
}

impl super::ssh::EnqueueWith for PgStore {
    fn enqueue_with(&self, j: &NewJob, extra: &super::ssh::Queued) -> Result<i64> {
        PgStore::enqueue_with(self, j, extra)
    }
}

impl super::blobs::LeaseCheck for PgStore {
    fn lease_now(&self, id: i64, agent_id: &str, attempt: Option<u32>) -> Result<Lease> {
        PgStore::lease_state(&self.conn()?, id, agent_id, attempt)
    }
}

/// The store suite's PostgreSQL: one server per test process, a database per test.
#[cfg(test)]
pub(crate) mod testing {
    use super::test_server::{pg_bin, PgServer};
    use super::PgStore;
    use std::sync::OnceLock;

    pub const SKIPPED: &str = "the PostgreSQL half is skipped: no PostgreSQL server binaries \
         (/usr/lib/postgresql/N/bin; `scripts/test.sh --setup` installs them)";

    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();

    extern "C" fn stop_server() {
        if let Some(Some(s)) = SERVER.get() {
            s.shut_down();
        }
    }

    pub fn server() -> Option<&'static PgServer> {
        SERVER
            .get_or_init(|| {
                pg_bin()?;
                let s = PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}"));
                // Statics are not dropped: stop the server when the test process exits.
                // SAFETY: registers a plain function.
                unsafe { libc::atexit(stop_server) };
                Some(s)
            })
            .as_ref()
    }

    /// A PostgreSQL store on a new database, its data directory in a temporary one.
    pub fn store() -> Option<(tempfile::TempDir, PgStore)> {
        let url = server()?.new_database().unwrap_or_else(|e| panic!("{e}"));
        let d = tempfile::tempdir().expect("tempdir");
        let s = PgStore::open(&url, &d.path().join("data"), None).expect("open PostgreSQL store");
        Some((d, s))
    }
}
