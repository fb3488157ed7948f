//! The coordinator's durable state: one SQLite file (`coordinator.db`) in the data directory,
//! and one append-only file per job log (`logs/<job id>.log`).
//!
//! The server and the CLI (`bosun coordinator enqueue`, `cancel`, …) open the same file; WAL
//! mode lets the CLI write while the server reads, and `synchronous=FULL` makes every commit
//! durable before we answer the agent. Private keys and secret env values are stored in this
//! file sealed with a key kept outside the data directory (see [`super::secrets`]); the file
//! is created mode 0600 inside a 0700 directory (SQLite gives its -wal/-shm files the
//! database file's mode).
//!
//! Logs live beside the database, not in it: a log is written once and read in order, and
//! storing it as SQLite blobs wrote every byte three times (WAL, checkpoint, overflow pages),
//! several times the CPU of a file append (docs/benchmarks.md, Agent). `jobs.log_bytes` is the
//! committed length; bytes past it in the file are an append that never committed and are cut
//! off by the next one. A log file is written without fsync while the job runs and fsync'd
//! before the final status commits. That is enough because the agent keeps its spool until the
//! finish is acknowledged: after a crash of the coordinator's host a running job's file may be
//! shorter than `log_bytes`, the next append notices, lowers `log_bytes` to what survived and
//! answers 409 with it, and the agent resends the rest.

pub use crate::error::StoreError;
use crate::error::{CoordError, Result};
use crate::secrets::{self, SecretsKey, SEALED_PREFIX};
use crate::text::{random_hex, sha256_hex};
use bosun_protocol::{
    FinishRequest, JobEvent, JobState, RunningJob, WireEnv, WireJob, WireKey, WireKeyRole,
    WireProject, WirePullRequest, WireSshState, WireTimeouts,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DB_FILE: &str = "coordinator.db";
/// Job logs, one file per job, beside the database.
pub const LOGS_DIR: &str = "logs";
/// Attempts a job gets before a lapsed lease marks it `infrastructure_fail`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Longest job time limit an operator may set. A typo (`30h` for `30m`) would otherwise hold
/// an agent's slot for days; 24 h is well past any real build.
pub const MAX_JOB_TIMEOUT_SECS: u64 = 24 * 3600;

mod access;
mod api_store;
pub mod api_v2;
mod audit_store;
mod badges;
mod blob_index;
pub mod blobs;
mod change_feed;
mod context_store;
pub mod contexts;
pub mod db;
mod follow_store;
mod intake;
mod jobs;
mod lease;
mod log_store;
mod logs;
mod notify;
mod people_store;
pub mod pg;
mod pipeline_actions;
mod pipeline_store;
pub mod pipelines;
mod project_settings;
mod project_store;
mod queue_store;
mod schedule_store;
pub mod schedules;
mod token_store;
pub use api_store::ApiStore;
pub use audit_store::AuditStore;
pub use badges::{BadgeProject, BadgeStore};
pub use blob_index::BlobIndex;
pub use change_feed::{Change, ChangeFeed, ServedStore};
pub use context_store::ContextStore;
pub use follow_store::{FollowRecord, FollowStore, Followed};
pub use log_store::LogStore;
pub use notify::{Due, DueJob, DueWorkflow, NewTarget, NotifyOutbox, TargetRow};
pub use people_store::{PeopleStore, Person, ProjectAccess, Resource};
pub use pg::PgStore;
pub use pipeline_actions::parse_pipeline_ref;
pub use pipeline_store::{PipelineStore, StatusOutbox};
pub use project_settings::{ProjectSettingsStore, ProjectVar};
pub use project_store::{AccessStore, ProjectStore};
pub use queue_store::QueueStore;
pub use schedule_store::ScheduleStore;
pub use ssh_access::{PersonKey, SshAccessStore, SshGrant, MAX_PERSON_KEYS};
pub use token_store::{PersonalToken, TokenStore};
mod schema;
mod ssh;
mod ssh_access;
#[cfg(test)]
mod tests;
mod times;
mod waiting;

pub use access::RegistrationTokenRow;
pub use intake::{KeyColumn, ProjectSettings, WebhookProject};
use schema::{migrate, seal_plaintext_secrets};
pub use times::{read_times, LogTimes};

/// Every area of the store together: what the server's handlers are handed (a request runs
/// its store calls on a blocking thread, through `&dyn Backend`). A second database
/// implements the area traits and gets this one for free.
pub trait Backend:
    QueueStore
    + LogStore
    + PipelineStore
    + StatusOutbox
    + ProjectStore
    + ProjectSettingsStore
    + AccessStore
    + BlobIndex
    + ContextStore
    + FollowStore
    + ScheduleStore
    + ApiStore
    + BadgeStore
    + NotifyOutbox
    + PeopleStore
    + SshAccessStore
    + TokenStore
    + AuditStore
{
}

impl<T> Backend for T where
    T: QueueStore
        + LogStore
        + PipelineStore
        + StatusOutbox
        + ProjectStore
        + ProjectSettingsStore
        + AccessStore
        + BlobIndex
        + ContextStore
        + FollowStore
        + ScheduleStore
        + ApiStore
        + BadgeStore
        + NotifyOutbox
        + PeopleStore
        + SshAccessStore
        + TokenStore
        + AuditStore
        + ?Sized
{
}

/// A connection of its own that tells when another one committed (the CLI's changes reach a
/// running server so).
pub struct ChangeWatch(Connection);

impl ChangeWatch {
    /// SQLite's `PRAGMA data_version`: it changes when another connection commits.
    pub fn data_version(&self) -> std::result::Result<i64, StoreError> {
        Ok(self
            .0
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))?)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct Store {
    /// The one writer connection (and the reads of the write paths).
    conn: Mutex<Connection>,
    /// Idle read-only connections for pages and live streams: WAL lets them read the last
    /// commit while the writer appends, so followers never wait on (or hold up) the writer.
    readers: Mutex<Vec<Connection>>,
    /// New log bytes appended through this store since it opened (resends not counted).
    appended: std::sync::atomic::AtomicU64,
    secrets: SecretsKey,
    path: PathBuf,
    logs: PathBuf,
}

/// A job as the CLI and the web pages show it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub project: String,
    pub commit_sha: String,
    pub git_ref: String,
    pub job_name: String,
    pub pipeline_number: i64,
    pub status: JobState,
    pub agent_id: Option<String>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub cancel_requested: bool,
    pub log_bytes: u64,
    pub event_count: u64,
    pub error: Option<String>,
    pub created: i64,
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    /// `None`: the protocol's default limit.
    pub timeout_secs: Option<u64>,
    /// The commit the agent checked out (full hex), once it said.
    pub resolved_sha: Option<String>,
    /// The project's clone URL (the pages link Bitbucket commits from it).
    pub clone_url: String,
    /// The name of the agent that holds or held the job.
    pub agent_name: Option<String>,
    /// Queued with SSH keys (`enqueue --ssh-key`, `rerun --ssh`).
    pub ssh: bool,
    /// How to reach it over SSH, as its agent last reported (running jobs).
    pub ssh_state: Option<WireSshState>,
    /// The job this one reruns.
    pub rerun_of: Option<i64>,
}

impl JobRow {
    pub fn is_final(&self) -> bool {
        !matches!(self.status, JobState::Queued | JobState::Running)
    }
    /// Run time so far (running) or in total (finished).
    pub fn duration(&self) -> Option<Duration> {
        let start = self.started?;
        let end = self.finished.unwrap_or_else(now_ms);
        Some(Duration::from_millis((end - start).max(0) as u64))
    }
}

pub struct NewProject {
    pub slug: String,
    pub uuid: Option<String>,
    pub clone_url: String,
    pub user_key: Option<String>,
    pub deploy_key: Option<String>,
    pub known_hosts: String,
    pub env: Vec<WireEnv>,
}

pub struct NewJob {
    pub project_slug: String,
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub job_name: String,
    pub resource_class: Option<String>,
    pub labels: Vec<String>,
    pub max_attempts: u32,
    /// The pull request the job builds. Without a URL, the Bitbucket one is derived from the
    /// project slug (`https://bitbucket.org/<slug>/pull-requests/<n>`).
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    /// The pull request comes from a fork of the project's repository.
    pub pr_fork: bool,
    /// Whole-job time limit in seconds, 1..=[`MAX_JOB_TIMEOUT_SECS`]; `None`: the
    /// protocol's default ([`WireTimeouts::default`]).
    pub timeout_secs: Option<u64>,
    /// The workspace the job attaches and persists to (a workflow run's, shared by its jobs;
    /// see [`check_workspace`]); `None`: the job's own (`job-<id>`).
    pub workspace: Option<String>,
}

/// Longest workspace name.
pub const MAX_WORKSPACE_CHARS: usize = 128;

/// A workspace name: 1 to [`MAX_WORKSPACE_CHARS`] of `A-Z a-z 0-9 . _ -` (it travels to
/// agents and names rows; nothing else belongs in it).
pub fn check_workspace(w: &str) -> Result<()> {
    if w.is_empty()
        || w.len() > MAX_WORKSPACE_CHARS
        || !w
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(CoordError::Invalid(format!(
            "workspace `{}`: expected 1 to {MAX_WORKSPACE_CHARS} characters of A-Z a-z 0-9 . _ -",
            crate::text::printable(w)
        )));
    }
    Ok(())
}

/// The pull request URL of a Bitbucket Cloud repository `slug` (`workspace/repo`).
pub fn bitbucket_pr_url(slug: &str, number: u64) -> String {
    format!("https://bitbucket.org/{slug}/pull-requests/{number}")
}

/// Refuse a job time limit of zero or over [`MAX_JOB_TIMEOUT_SECS`].
pub fn check_timeout_secs(secs: u64) -> Result<()> {
    if secs == 0 || secs > MAX_JOB_TIMEOUT_SECS {
        return Err(CoordError::Invalid(format!(
            "a job timeout must be between 1s and {}h, not {secs}s",
            MAX_JOB_TIMEOUT_SECS / 3600
        )));
    }
    Ok(())
}

/// (id, name, resource class, last seen, revoked).
pub type AgentRow = (String, String, String, i64, bool);

pub struct Agent {
    pub id: String,
    pub name: String,
    pub revoked: bool,
}

/// Outcome of checking that the calling agent may write to a job.
pub enum Lease {
    Held,
    /// Finished by this agent already (a resent finish is answered idempotently).
    FinishedByYou(String),
    NotYours,
    /// The write is for an earlier attempt than the job's current one.
    Superseded {
        current: u32,
    },
    NotFound,
}

pub enum AppendOutcome {
    Ack(u64),
    /// The agent skipped bytes: resend from the stored length.
    Gap(u64),
    Refused(Lease),
}

pub enum EventsOutcome {
    Ack(u64),
    Gap(u64),
    Refused(Lease),
}

pub enum FinishOutcome {
    Done,
    /// The coordinator lacks bytes: the agent resends from this offset, then finishes again.
    Incomplete(u64),
    DigestMismatch(String),
    Refused(Lease),
}

#[derive(Debug)]
pub struct HeartbeatOutcome {
    pub cancel: Vec<String>,
    pub unknown: Vec<String>,
}

fn json_labels(labels: &[String]) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "[]".into())
}

/// `refs/heads/x` or a bare name → branch; `refs/tags/x` → tag.
fn split_ref(r: &str) -> (Option<String>, Option<String>) {
    if let Some(t) = r.strip_prefix("refs/tags/") {
        (None, Some(t.to_string()))
    } else {
        (
            Some(r.strip_prefix("refs/heads/").unwrap_or(r).to_string()),
            None,
        )
    }
}

const JOB_COLUMNS: &str = "j.id, p.slug, j.commit_sha, j.git_ref, j.job_name, j.pipeline_number, \
     j.status, j.agent_id, j.attempts, j.max_attempts, j.cancel_requested, j.log_bytes, \
     j.event_count, j.error, j.created, j.started, j.finished, j.pr_number, j.pr_url, \
     j.timeout_secs, j.resolved_sha, p.clone_url, \
     (SELECT name FROM agents WHERE id = j.agent_id), j.ssh_keys IS NOT NULL, j.ssh_state, \
     j.rerun_of";

/// A pooled read-only connection (see [`Store::reader`]).
struct Reader<'a> {
    store: &'a Store,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until drop")
    }
}

db::db_by_deref!(Reader<'_>);

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            let mut idle = self.store.readers.lock().unwrap_or_else(|p| p.into_inner());
            // Keep a few; more were only needed for a burst.
            if idle.len() < 8 {
                idle.push(c);
            }
        }
    }
}

/// A column's word as its type (a status, a kind): the SQL boundary's one parse.
fn parse_col<T>(v: String) -> rusqlite::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    v.parse().map_err(|e: T::Err| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        project: r.get(1)?,
        commit_sha: r.get(2)?,
        git_ref: r.get(3)?,
        job_name: r.get(4)?,
        pipeline_number: r.get(5)?,
        status: parse_col(r.get(6)?)?,
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
        // Agent-written; a row it cannot read shows no SSH line rather than failing the page.
        ssh_state: r
            .get::<_, Option<String>>(24)?
            .and_then(|s| serde_json::from_str(&s).ok()),
        rerun_of: r.get(25)?,
    })
}

/// A full Git commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the job list shows: every field optional.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only these projects (slugs); `None`: every project.
    pub projects: Option<Vec<String>>,
    pub project: Option<String>,
    /// A branch or tag name (or the ref as queued).
    pub branch: Option<String>,
    pub status: Option<JobState>,
    /// Only jobs with a smaller id (the next page).
    pub before: Option<i64>,
}

/// Parse a job id as agents and the CLI give it (decimal).
pub fn parse_job_id(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|n| *n > 0)
}

impl Store {
    /// Open (creating if needed) the store in `dir`, its secrets sealed with the key file
    /// beside it ([`secrets::default_key_path`]).
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_with_key(dir, None)
    }

    /// Open (creating if needed) the store in `dir`, its secrets sealed with the key file
    /// `key` (default: beside `dir`), created when the store holds no sealed secret yet.
    /// Plaintext secrets of an older store are sealed here.
    pub fn open_with_key(dir: &Path, key: Option<&Path>) -> Result<Store> {
        let io = |source| CoordError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            set_mode(dir, 0o700)?;
        }
        private_dir(dir)?;
        let path = dir.join(DB_FILE);
        // Create the file ourselves first so it is 0600 from its first byte: it holds keys.
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|source| CoordError::Io {
                    path: path.clone(),
                    source,
                })?;
        }
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; \
             PRAGMA secure_delete=ON;",
        )?;
        let logs = dir.join(LOGS_DIR);
        if !logs.exists() {
            std::fs::create_dir_all(&logs).map_err(io_err(&logs))?;
            set_mode(&logs, 0o700)?;
        }
        private_dir(&logs)?;
        migrate(&conn, &logs)?;
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
        // A store that already has sealed secrets never gets a new key silently.
        if let (Some(fp), false) = (&known, key_path.exists()) {
            return Err(CoordError::Invalid(format!(
                "the secrets key file {} is missing: the secrets in {} were sealed with it \
                 (fingerprint {fp}); restore it or give its place with --secrets-key",
                key_path.display(),
                path.display()
            )));
        }
        let secrets = SecretsKey::load_or_create(&key_path, known.is_none())?;
        if let Some(fp) = &known {
            if *fp != secrets.fingerprint {
                return Err(CoordError::Invalid(format!(
                    "{}: the secrets in {} were sealed with another key (fingerprint {fp}, \
                     this file's is {})",
                    key_path.display(),
                    path.display(),
                    secrets.fingerprint
                )));
            }
        }
        seal_plaintext_secrets(&conn, &secrets)?;
        Ok(Store {
            conn: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            appended: std::sync::atomic::AtomicU64::new(0),
            secrets,
            path,
            logs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (SQLite rolls back an
        // open transaction when the Transaction guard drops), so poisoning is ignored.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only connection from the pool (opened when none is idle); back to the pool
    /// when the guard drops.
    fn reader(&self) -> Result<Reader<'_>> {
        let idle = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(10))?;
                c
            }
        };
        Ok(Reader {
            store: self,
            conn: Some(conn),
        })
    }

    /// A second connection for the change watcher (see [`ChangeWatch::data_version`]).
    pub fn open_watch_connection(&self) -> Result<ChangeWatch> {
        let c = Connection::open(&self.path)?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(ChangeWatch(c))
    }
}

impl db::SqlStore for Store {
    fn read<T>(&self, f: impl FnOnce(&dyn db::Db) -> Result<T>) -> Result<T> {
        f(&*self.reader()?)
    }

    fn conn<T>(&self, f: impl FnOnce(&dyn db::Db) -> Result<T>) -> Result<T> {
        f(&*self.conn())
    }

    /// SQLite has one writer: every transaction that writes is `BEGIN IMMEDIATE`, whichever
    /// the lock.
    fn transaction<T>(&self, _: db::Lock, f: impl FnOnce(&dyn db::Db) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    fn secrets(&self) -> &SecretsKey {
        &self.secrets
    }
}

fn log_path(logs: &Path, id: i64) -> PathBuf {
    logs.join(format!("{id}.log"))
}

/// An I/O error about `path`, for `map_err`.
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CoordError + '_ {
    move |source| CoordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An existing directory others can enter or read is tightened to 0700 when it is ours, and
/// refused when it is not (we could not keep it private).
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(CoordError::Invalid(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if bosun_protocol::private::loose_mode(&meta).is_none() {
        return Ok(());
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(CoordError::Invalid(format!(
            "{} has mode {mode:o} and belongs to uid {}, not to us: it holds keys and logs; \
             make it ours and 0700",
            dir.display(),
            meta.uid()
        )));
    }
    tracing::warn!(
        "{} had mode {mode:o}; tightened to 700 (it holds keys and logs)",
        dir.display()
    );
    set_mode(dir, 0o700)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        CoordError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}
