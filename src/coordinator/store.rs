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
//! storing it as SQLite blobs wrote every byte three times (WAL, checkpoint, overflow pages)
//! and cost the coordinator 1.7 CPU seconds per 200 MiB. `jobs.log_bytes` is the committed
//! length; bytes past it in the file are an append that never committed and are cut off by
//! the next one. A log file is written without fsync while the job runs and fsync'd before
//! the final status commits. That is enough because the agent keeps its spool until the
//! finish is acknowledged: after a crash of the coordinator's host a running job's file may be
//! shorter than `log_bytes`, the next append notices, lowers `log_bytes` to what survived and
//! answers 409 with it, and the agent resends the rest.

use super::secrets::{self, SecretsKey, SEALED_PREFIX};
use super::{random_hex, sha256_hex, CoordError, Result};
use crate::protocol::{
    FinishRequest, JobEvent, JobState, WireEnv, WireJob, WireKey, WireKeyRole, WireProject,
    WirePullRequest, WireTimeouts,
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

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    resource_class TEXT NOT NULL,
    labels TEXT NOT NULL,           -- JSON array
    version TEXT NOT NULL,
    created INTEGER NOT NULL,       -- ms since the epoch, like every time below
    last_seen INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE projects (
    id INTEGER PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    slug TEXT NOT NULL UNIQUE,
    clone_url TEXT NOT NULL,
    user_key TEXT,
    deploy_key TEXT,
    known_hosts TEXT NOT NULL DEFAULT ''
);
CREATE TABLE project_env (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    secret INTEGER NOT NULL,
    PRIMARY KEY (project_id, name)
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    commit_sha TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    job_name TEXT NOT NULL,
    pipeline_number INTEGER NOT NULL,
    resource_class TEXT,            -- NULL: any agent
    labels TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,           -- queued running success failed canceled timedout infrastructure_fail
    agent_id TEXT,
    lease_expires INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    log_bytes INTEGER NOT NULL DEFAULT 0,
    event_count INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created INTEGER NOT NULL,
    started INTEGER,
    finished INTEGER
);
CREATE INDEX jobs_status ON jobs(status, id);
-- The log as appended chunks: an append is one INSERT, the log is the chunks by offset.
CREATE TABLE job_logs (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    offset INTEGER NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (job_id, offset)
);
CREATE TABLE job_events (
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    seq INTEGER NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"#,
    // 2: logs move to files under `logs/` (copied out by `export_blob_logs` first).
    "DROP TABLE job_logs",
    // 3: the pull request a job builds, and its time limit (NULL: the protocol's default).
    "ALTER TABLE jobs ADD COLUMN pr_number INTEGER; \
     ALTER TABLE jobs ADD COLUMN pr_url TEXT; \
     ALTER TABLE jobs ADD COLUMN pr_fork INTEGER NOT NULL DEFAULT 0; \
     ALTER TABLE jobs ADD COLUMN timeout_secs INTEGER",
    // 4: registration tokens as digests with an expiry (the one plaintext token of earlier
    // versions moves in as a digest: see `migrate`), and which agents may run a project.
    "CREATE TABLE registration_tokens ( \
         id TEXT PRIMARY KEY, \
         token_sha256 TEXT NOT NULL UNIQUE, \
         created INTEGER NOT NULL, \
         expires INTEGER, \
         revoked INTEGER NOT NULL DEFAULT 0); \
     CREATE TABLE project_agents ( \
         project_id INTEGER NOT NULL REFERENCES projects(id), \
         agent_id TEXT NOT NULL, \
         PRIMARY KEY (project_id, agent_id))",
    // 5: the commit the agent checked out (`step_started.commit_sha`; `commit_sha` may be a
    // ref name), and an index for the job list's project filter.
    "ALTER TABLE jobs ADD COLUMN resolved_sha TEXT; \
     CREATE INDEX jobs_project ON jobs(project_id, id)",
];

/// A registration token as `token list` shows it (never the token itself).
#[derive(Debug, Clone)]
pub struct RegistrationTokenRow {
    pub id: String,
    pub created: i64,
    pub expires: Option<i64>,
    pub revoked: bool,
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

pub struct HeartbeatOutcome {
    pub cancel: Vec<String>,
    pub unknown: Vec<String>,
}

fn json_labels(labels: &[String]) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "[]".into())
}

// The status words in SQLite are the protocol's, converted here and nowhere else.
impl rusqlite::types::ToSql for JobState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for JobState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        v.as_str()?
            .parse()
            .map_err(|e: crate::protocol::UnknownStatus| {
                rusqlite::types::FromSqlError::Other(Box::new(e))
            })
    }
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
     (SELECT name FROM agents WHERE id = j.agent_id)";

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

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        project: r.get(1)?,
        commit_sha: r.get(2)?,
        git_ref: r.get(3)?,
        job_name: r.get(4)?,
        pipeline_number: r.get(5)?,
        status: r.get(6)?,
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
    })
}

/// A full Git commit id: 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn is_commit_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the job list shows: every field optional.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
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

    /// A second connection for the change watcher (see `data_version`).
    pub fn open_watch_connection(&self) -> Result<Connection> {
        let c = Connection::open(&self.path)?;
        c.busy_timeout(Duration::from_secs(10))?;
        Ok(c)
    }

    // ---- registration token and agents ----

    /// A new registration token, valid for `ttl` (for ever without one); only its digest is
    /// kept, so this is the one time it can be read. Returns (token id, token).
    pub fn create_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let created = Self::insert_registration_token(&tx, ttl)?;
        tx.commit()?;
        Ok(created)
    }

    /// Revoke every registration token and make a new one (agents registered already keep
    /// their own tokens). Returns (token id, token).
    pub fn rotate_registration_token(&self, ttl: Option<Duration>) -> Result<(String, String)> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE registration_tokens SET revoked = 1", [])?;
        let created = Self::insert_registration_token(&tx, ttl)?;
        tx.commit()?;
        Ok(created)
    }

    fn insert_registration_token(
        tx: &rusqlite::Transaction<'_>,
        ttl: Option<Duration>,
    ) -> Result<(String, String)> {
        let id = format!("reg-{}", random_hex(4)?);
        let token = format!("bosun-reg-{}", random_hex(24)?);
        let now = now_ms();
        let expires =
            ttl.map(|t| now.saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
        tx.execute(
            "INSERT INTO registration_tokens(id, token_sha256, created, expires) VALUES (?1, ?2, ?3, ?4)",
            params![id, sha256_hex(token.as_bytes()), now, expires],
        )?;
        Ok((id, token))
    }

    /// Is `token` a registration token that is neither revoked nor expired?
    pub fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS(SELECT 1 FROM registration_tokens WHERE token_sha256 = ?1 \
             AND revoked = 0 AND (expires IS NULL OR expires > ?2))",
            params![sha256_hex(token.as_bytes()), now_ms()],
            |r| r.get(0),
        )?)
    }

    pub fn list_registration_tokens(&self) -> Result<Vec<RegistrationTokenRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, created, expires, revoked FROM registration_tokens ORDER BY created",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok(RegistrationTokenRow {
                    id: r.get(0)?,
                    created: r.get(1)?,
                    expires: r.get(2)?,
                    revoked: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Register an agent; returns (agent id, agent token). Only the token's digest is kept.
    pub fn register_agent(
        &self,
        name: &str,
        resource_class: &str,
        labels: &[String],
        version: &str,
    ) -> Result<(String, String)> {
        let id = format!("agent-{}", random_hex(8)?);
        let token = format!("bosun-agent-{}", random_hex(32)?);
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO agents(id, name, token_sha256, resource_class, labels, version, created, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![id, name, sha256_hex(token.as_bytes()), resource_class, json_labels(labels), version, now],
        )?;
        Ok((id, token))
    }

    /// The agent a bearer token belongs to (revoked ones included, so callers can say so).
    pub fn agent_by_token(&self, token: &str) -> Result<Option<Agent>> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, revoked FROM agents WHERE token_sha256 = ?1",
                [sha256_hex(token.as_bytes())],
                |r| {
                    Ok(Agent {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        revoked: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Set an agent's resource class and labels (the operator's word; the agent's claims do
    /// not change them). Returns how many agents matched the id.
    pub fn relabel_agent(
        &self,
        id: &str,
        resource_class: &str,
        labels: &[String],
    ) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE agents SET resource_class = ?2, labels = ?3 WHERE id = ?1",
            params![id, resource_class, json_labels(labels)],
        )?)
    }

    /// Only these agents (ids) may run the project's jobs; an empty list lifts the
    /// restriction.
    pub fn restrict_project(&self, slug: &str, agents: &[String]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid: i64 = tx
            .query_row("SELECT id FROM projects WHERE slug = ?1", [slug], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| CoordError::NotFound(format!("no project {slug}")))?;
        for a in agents {
            let known: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM agents WHERE id = ?1)",
                [a],
                |r| r.get(0),
            )?;
            if !known {
                return Err(CoordError::NotFound(format!(
                    "no agent with id {a} (`bosun coordinator agents` lists them)"
                )));
            }
        }
        tx.execute("DELETE FROM project_agents WHERE project_id = ?1", [pid])?;
        for a in agents {
            tx.execute(
                "INSERT OR IGNORE INTO project_agents(project_id, agent_id) VALUES (?1, ?2)",
                params![pid, a],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Revoke by id or name; returns how many agents were revoked.
    pub fn revoke_agent(&self, who: &str) -> Result<usize> {
        Ok(self.conn().execute(
            "UPDATE agents SET revoked = 1 WHERE id = ?1 OR name = ?1",
            [who],
        )?)
    }

    /// Every agent, oldest first.
    pub fn list_agents(&self) -> Result<Vec<AgentRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(
            "SELECT id, name, resource_class, last_seen, revoked FROM agents ORDER BY created",
        )?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    // ---- projects and jobs (CLI side) ----

    pub fn add_project(&self, p: &NewProject) -> Result<String> {
        let uuid = match &p.uuid {
            Some(u) => u.clone(),
            None => {
                let h = random_hex(16)?;
                format!(
                    "{{{}-{}-{}-{}-{}}}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            }
        };
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM projects WHERE slug = ?1)",
            [&p.slug],
            |r| r.get(0),
        )?;
        if exists {
            return Err(CoordError::Invalid(format!(
                "project {} exists already",
                p.slug
            )));
        }
        tx.execute(
            "INSERT INTO projects(uuid, slug, clone_url, known_hosts) VALUES (?1, ?2, ?3, ?4)",
            params![uuid, p.slug, p.clone_url, p.known_hosts],
        )?;
        let pid = tx.last_insert_rowid();
        for (column, key) in [("user_key", &p.user_key), ("deploy_key", &p.deploy_key)] {
            if let Some(key) = key {
                let sealed = self.secrets.seal(&secrets::key_place(pid, column), key)?;
                tx.execute(
                    &format!("UPDATE projects SET {column} = ?2 WHERE id = ?1"),
                    params![pid, sealed],
                )?;
            }
        }
        for e in &p.env {
            let value = if e.secret {
                self.secrets
                    .seal(&secrets::env_place(pid, &e.name), &e.value)?
            } else {
                e.value.clone()
            };
            tx.execute(
                "INSERT OR REPLACE INTO project_env(project_id, name, value, secret) VALUES (?1, ?2, ?3, ?4)",
                params![pid, e.name, value, e.secret],
            )?;
        }
        tx.commit()?;
        Ok(uuid)
    }

    pub fn enqueue(&self, j: &NewJob) -> Result<i64> {
        if let Some(secs) = j.timeout_secs {
            check_timeout_secs(secs)?;
        }
        let pr_url = match (j.pr_number, &j.pr_url) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(CoordError::Invalid(
                    "a pull request URL needs the pull request's number".into(),
                ))
            }
            (Some(0), _) => {
                return Err(CoordError::Invalid(
                    "pull request numbers start at 1".into(),
                ))
            }
            (Some(n), None) => Some(bitbucket_pr_url(&j.project_slug, n)),
            (Some(_), Some(url)) => {
                // It becomes a link on the job page and a variable in the job: nothing but a
                // web address belongs there.
                if !(url.starts_with("https://") || url.starts_with("http://"))
                    || url.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(CoordError::Invalid(format!(
                        "pull request URL `{url}`: expected an http(s) address without spaces"
                    )));
                }
                Some(url.clone())
            }
        };
        // SQLite integers are signed: a number past i64 cannot be stored.
        let pr_number = j
            .pr_number
            .map(|n| {
                i64::try_from(n).map_err(|_| {
                    CoordError::Invalid(format!("pull request number {n} is too large"))
                })
            })
            .transpose()?;
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid: i64 = tx
            .query_row(
                "SELECT id FROM projects WHERE slug = ?1",
                [&j.project_slug],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                CoordError::NotFound(format!(
                    "no project {} (add it with `bosun coordinator project add`)",
                    j.project_slug
                ))
            })?;
        let pipeline: i64 = tx.query_row(
            "SELECT COALESCE(MAX(pipeline_number), 0) + 1 FROM jobs WHERE project_id = ?1",
            [pid],
            |r| r.get(0),
        )?;
        let (branch, tag) = split_ref(&j.git_ref);
        // Without --commit the agent gets the ref name to resolve (documented in protocol.md).
        let commit = j.commit_sha.clone().unwrap_or_else(|| j.git_ref.clone());
        tx.execute(
            "INSERT INTO jobs(project_id, commit_sha, git_ref, branch, tag, job_name, pipeline_number, \
             resource_class, labels, status, max_attempts, created, pr_number, pr_url, pr_fork, \
             timeout_secs) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?11, ?12, ?13, ?14, ?15)",
            params![pid, commit, j.git_ref, branch, tag, j.job_name, pipeline, j.resource_class,
                json_labels(&j.labels), j.max_attempts.max(1), now_ms(), pr_number, pr_url,
                j.pr_fork && pr_number.is_some(), j.timeout_secs.map(|s| s as i64)],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Queued jobs end as `canceled` at once; running ones get `cancel_requested`, which the
    /// next heartbeat of their agent returns. Returns the job's status afterwards.
    pub fn cancel(&self, id: i64) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status: String = tx
            .query_row("SELECT status FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or_else(|| CoordError::NotFound(format!("no job {id}")))?;
        let after = match status.as_str() {
            "queued" => {
                tx.execute(
                    "UPDATE jobs SET status = 'canceled', finished = ?2, cancel_requested = 1 WHERE id = ?1",
                    params![id, now_ms()],
                )?;
                "canceled".to_string()
            }
            "running" => {
                tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?;
                "running (cancel requested)".to_string()
            }
            other => other.to_string(),
        };
        tx.commit()?;
        Ok(after)
    }

    /// Jobs queued, jobs running, and agents not revoked seen at or after `online_since`
    /// (ms since the epoch), for the metrics.
    pub fn counts(&self, online_since: i64) -> Result<(i64, i64, i64)> {
        Ok(self.reader()?.query_row(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued'), \
                    (SELECT COUNT(*) FROM jobs WHERE status = 'running'), \
                    (SELECT COUNT(*) FROM agents WHERE revoked = 0 AND last_seen >= ?1)",
            [online_since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    pub fn list_jobs(&self, limit: u32) -> Result<Vec<JobRow>> {
        let conn = self.reader()?;
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN projects p ON p.id = j.project_id \
             ORDER BY j.id DESC LIMIT ?1"
        ))?;
        let rows = st
            .query_map([limit], job_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Jobs newest first that match `f`, at most `limit`, older than `f.before` (paging).
    pub fn list_jobs_filtered(&self, f: &JobFilter, limit: u32) -> Result<Vec<JobRow>> {
        let conn = self.conn();
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN projects p ON p.id = j.project_id \
             WHERE (?1 IS NULL OR p.slug = ?1) \
               AND (?2 IS NULL OR j.branch = ?2 OR j.tag = ?2 OR j.git_ref = ?2) \
               AND (?3 IS NULL OR j.status = ?3) \
               AND (?4 IS NULL OR j.id < ?4) \
             ORDER BY j.id DESC LIMIT ?5"
        ))?;
        let rows = st
            .query_map(
                params![
                    f.project,
                    f.branch,
                    f.status.map(|s| s.as_str()),
                    f.before,
                    limit
                ],
                job_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Project slugs, sorted (the job list's project filter).
    pub fn project_slugs(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT slug FROM projects ORDER BY slug")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// How many `\n` the job's log holds before each of `points` (ascending or not): one
    /// pass over the file up to the largest, in 1 MiB pieces (line numbers of a log's tail).
    pub fn newlines_before(&self, id: i64, points: &[u64]) -> Result<Vec<u64>> {
        use std::io::Read as _;
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| points[i]);
        let mut out = vec![0u64; points.len()];
        let Some(&last) = order.last() else {
            return Ok(out);
        };
        let upto = points[last];
        let path = log_path(&self.logs, id);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let (mut pos, mut count, mut next) = (0u64, 0u64, 0usize);
        while next < order.len() {
            while next < order.len() && points[order[next]] <= pos {
                out[order[next]] = count;
                next += 1;
            }
            if pos >= upto || next >= order.len() {
                break;
            }
            let want = ((upto - pos) as usize).min(buf.len());
            let n = f.read(&mut buf[..want]).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            let piece = &buf[..n];
            // Points inside this piece get the count up to them.
            while next < order.len() && points[order[next]] < pos + n as u64 {
                let k = (points[order[next]] - pos) as usize;
                out[order[next]] = count + memchr::memchr_iter(b'\n', &piece[..k]).count() as u64;
                next += 1;
            }
            count += memchr::memchr_iter(b'\n', piece).count() as u64;
            pos += n as u64;
        }
        for &i in &order[next..] {
            out[i] = count;
        }
        Ok(out)
    }

    pub fn job(&self, id: i64) -> Result<Option<JobRow>> {
        Ok(self
            .reader()?
            .query_row(
                &format!(
                    "SELECT {JOB_COLUMNS} FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.id = ?1"
                ),
                [id],
                job_row,
            )
            .optional()?)
    }

    /// Committed log bytes from `from` to the end.
    pub fn log_from(&self, id: i64, from: u64) -> Result<Vec<u8>> {
        let end: Option<i64> = self
            .reader()?
            .query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(end) = end else {
            return Ok(Vec::new());
        };
        self.read_log(id, from, end as u64)
    }

    /// At most `max` committed log bytes from `from`, and the committed length (`None`: no
    /// such job). Pages and live streams read big logs this way, piece by piece.
    pub fn log_piece(&self, id: i64, from: u64, max: u64) -> Result<Option<(Vec<u8>, u64)>> {
        let end: Option<i64> = self
            .reader()?
            .query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(end) = end else {
            return Ok(None);
        };
        let end = end as u64;
        let upto = end.min(from.saturating_add(max));
        Ok(Some((self.read_log(id, from, upto)?, end)))
    }

    /// Bytes `from..end` of a job's log file (fewer if the file is shorter), `end` being at
    /// most the committed length the caller read. No database access.
    pub fn read_log(&self, id: i64, from: u64, end: u64) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let path = log_path(&self.logs, id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let len = f.metadata().map_err(io_err(&path))?.len();
        let end = end.min(len);
        if from >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - from) as usize];
        f.read_exact_at(&mut buf, from).map_err(io_err(&path))?;
        Ok(buf)
    }

    /// SHA-256 of bytes `0..end` of a job's log file, and how many bytes it covered.
    fn log_digest(&self, id: i64, end: u64) -> Result<(String, u64)> {
        use sha2::{Digest, Sha256};
        use std::io::Read;
        let path = log_path(&self.logs, id);
        let mut sha = Sha256::new();
        let mut n = 0u64;
        match File::open(&path) {
            Ok(f) => {
                let mut r = f.take(end);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let k = r.read(&mut buf).map_err(io_err(&path))?;
                    if k == 0 {
                        break;
                    }
                    sha.update(&buf[..k]);
                    n += k as u64;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        Ok((super::hex(&sha.finalize()), n))
    }

    /// Make a job's log file durable (before its final status commits).
    fn sync_log(&self, id: i64) -> Result<()> {
        let path = log_path(&self.logs, id);
        match File::open(&path) {
            Ok(f) => f.sync_all().map_err(io_err(&path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        // The file's directory entry too: it was created without a sync.
        File::open(&self.logs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.logs))
    }

    /// Forget a job's log (a re-queued attempt starts over).
    fn drop_log(&self, id: i64) {
        let path = log_path(&self.logs, id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", path.display());
            }
        }
    }

    /// Events from sequence number `from`.
    pub fn events_from(&self, id: i64, from: u64) -> Result<Vec<(u64, JobEvent)>> {
        let conn = self.reader()?;
        let mut st = conn.prepare(
            "SELECT seq, json FROM job_events WHERE job_id = ?1 AND seq >= ?2 ORDER BY seq",
        )?;
        let rows = st
            .query_map(params![id, from as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (seq, json) in rows {
            // Events were validated on the way in; one that no longer parses (an older
            // schema) is skipped rather than breaking the page.
            if let Ok(ev) = serde_json::from_str(&json) {
                out.push((seq as u64, ev));
            }
        }
        Ok(out)
    }

    // ---- agent calls ----

    /// Lease the oldest queued job this agent can run, in one IMMEDIATE transaction so two
    /// claimers (threads or processes) never get the same job.
    ///
    /// The agent's resource class and labels are the ones stored for it (fixed at
    /// registration, changed by `relabel`), never what a claim says; a project restricted to
    /// some agents (`project restrict`) is offered to those only.
    pub fn claim(&self, agent_id: &str, lease: Duration) -> Result<Option<WireJob>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
            params![agent_id, now_ms()],
        )?;
        let (resource_class, labels): (String, Vec<String>) = tx
            .query_row(
                "SELECT resource_class, labels FROM agents WHERE id = ?1",
                [agent_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(rc, l)| (rc, serde_json::from_str(&l).unwrap_or_default()))
            .unwrap_or_default();
        let resource_class = resource_class.as_str();
        let labels = labels.as_slice();
        let candidates: Vec<(i64, Option<String>, String)> = {
            let mut st = tx.prepare(
                "SELECT j.id, j.resource_class, j.labels FROM jobs j WHERE j.status = 'queued' \
                 AND (NOT EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id) \
                      OR EXISTS (SELECT 1 FROM project_agents pa WHERE pa.project_id = j.project_id \
                                 AND pa.agent_id = ?1)) \
                 ORDER BY j.id LIMIT 200",
            )?;
            let rows = st
                .query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        // A job fits when its resource class is unset or equal, and the agent has every label.
        let fits = |rc: &Option<String>, jl: &str| {
            let class_ok = rc.as_deref().is_none_or(|c| c == resource_class);
            let wanted: Vec<String> = serde_json::from_str(jl).unwrap_or_default();
            class_ok && wanted.iter().all(|l| labels.contains(l))
        };
        let Some(id) = candidates
            .iter()
            .find(|(_, rc, jl)| fits(rc, jl))
            .map(|c| c.0)
        else {
            return Ok(None);
        };
        let now = now_ms();
        tx.execute(
            "UPDATE jobs SET status = 'running', agent_id = ?2, lease_expires = ?3, \
             attempts = attempts + 1, started = ?4 WHERE id = ?1 AND status = 'queued'",
            params![id, agent_id, now + lease.as_millis() as i64, now],
        )?;
        let job = wire_job(&tx, &self.secrets, id)?;
        tx.commit()?;
        Ok(Some(job))
    }

    /// May `agent_id`, writing for `attempt` (when it says), write to job `id`?
    fn lease_state(
        conn: &Connection,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
    ) -> Result<Lease> {
        let row: Option<(String, Option<String>, u32)> = conn
            .query_row(
                "SELECT status, agent_id, attempts FROM jobs WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None => Lease::NotFound,
            // A late write of a lapsed attempt, possibly from the same agent that claimed the
            // next one: it must not land in the new attempt's log.
            Some((_, _, current)) if attempt.is_some_and(|a| a != current) => {
                Lease::Superseded { current }
            }
            Some((s, Some(a), _)) if a == agent_id && s == "running" => Lease::Held,
            Some((s, Some(a), _)) if a == agent_id && s != "queued" => Lease::FinishedByYou(s),
            Some(_) => Lease::NotYours,
        })
    }

    pub fn heartbeat(
        &self,
        agent_id: &str,
        running: &[String],
        lease: Duration,
    ) -> Result<HeartbeatOutcome> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        tx.execute(
            "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
            params![agent_id, now],
        )?;
        let mut out = HeartbeatOutcome {
            cancel: vec![],
            unknown: vec![],
        };
        for job in running {
            let Some(id) = parse_job_id(job) else {
                out.unknown.push(job.clone());
                continue;
            };
            let n = tx.execute(
                "UPDATE jobs SET lease_expires = ?3 WHERE id = ?1 AND agent_id = ?2 AND status = 'running'",
                params![id, agent_id, now + lease.as_millis() as i64],
            )?;
            if n == 0 {
                out.unknown.push(job.clone());
                continue;
            }
            let cancel: bool = tx.query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            if cancel {
                out.cancel.push(job.clone());
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// Append log bytes sent for `offset`; see `docs/protocol.md` (idempotent by offset).
    pub fn append_log(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<AppendOutcome> {
        let mut conn = self.conn();
        // The bytes themselves are not fsync'd until the finish (see the module comment), so
        // fsyncing the WAL for their length would buy nothing: commit with NORMAL (durable
        // against a crash of the process; the finish's FULL commit syncs the WAL, and with it
        // every commit before it).
        conn.execute_batch("PRAGMA synchronous=NORMAL")?;
        let out = Self::append_log_tx(&self.logs, &mut conn, id, agent_id, attempt, offset, bytes);
        conn.execute_batch("PRAGMA synchronous=FULL")?;
        out.map(|(outcome, added)| {
            self.appended
                .fetch_add(added, std::sync::atomic::Ordering::Relaxed);
            outcome
        })
    }

    /// New log bytes appended through this store since it opened.
    pub fn appended_log_bytes(&self) -> u64 {
        self.appended.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn append_log_tx(
        logs: &Path,
        conn: &mut Connection,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(AppendOutcome, u64)> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok((AppendOutcome::Refused(other), 0)),
        }
        let stored: i64 = tx.query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        let mut stored = stored as u64;
        let path = log_path(logs, id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let on_disk = file.metadata().map_err(io_err(&path))?.len();
        if on_disk < stored {
            // The host crashed before the file reached the disk: what survived is the log.
            tracing::warn!(
                job = id,
                "log file {} has {on_disk} of {stored} committed bytes (host crash?); asking the agent to resend from {on_disk}",
                path.display()
            );
            tx.execute(
                "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
                params![id, on_disk as i64],
            )?;
            tx.commit()?;
            return Ok((AppendOutcome::Gap(on_disk), 0));
        }
        if offset > stored {
            return Ok((AppendOutcome::Gap(stored), 0));
        }
        // A resend overlapping what we have: keep only the part beyond our end.
        let skip = (stored - offset) as usize;
        if skip >= bytes.len() {
            return Ok((AppendOutcome::Ack(stored), 0));
        }
        let new = &bytes[skip..];
        {
            use std::os::unix::fs::FileExt;
            if on_disk > stored {
                // An append that wrote but never committed: not part of the log.
                file.set_len(stored).map_err(io_err(&path))?;
            }
            file.write_all_at(new, stored).map_err(io_err(&path))?;
        }
        stored += new.len() as u64;
        tx.execute(
            "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
            params![id, stored as i64],
        )?;
        tx.commit()?;
        Ok((AppendOutcome::Ack(stored), new.len() as u64))
    }

    pub fn append_events(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        first_seq: u64,
        events: &[JobEvent],
    ) -> Result<EventsOutcome> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            other => return Ok(EventsOutcome::Refused(other)),
        }
        let next: i64 = tx.query_row("SELECT event_count FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        let next = next as u64;
        if first_seq > next {
            return Ok(EventsOutcome::Gap(next));
        }
        let skip = (next - first_seq) as usize;
        let mut seq = next;
        for ev in events.iter().skip(skip) {
            if let JobEvent::StepStarted {
                commit_sha: Some(sha),
                ..
            } = ev
            {
                // Agent-written: kept only if it is a commit id (shown and linked as one).
                if is_commit_id(sha) {
                    tx.execute(
                        "UPDATE jobs SET resolved_sha = ?2 WHERE id = ?1",
                        params![id, sha.to_ascii_lowercase()],
                    )?;
                }
            }
            let json = serde_json::to_string(ev).map_err(|e| CoordError::Invalid(e.to_string()))?;
            tx.execute(
                "INSERT INTO job_events(job_id, seq, json) VALUES (?1, ?2, ?3)",
                params![id, seq as i64, json],
            )?;
            seq += 1;
        }
        tx.execute(
            "UPDATE jobs SET event_count = ?2 WHERE id = ?1",
            params![id, seq as i64],
        )?;
        tx.commit()?;
        Ok(EventsOutcome::Ack(seq))
    }

    pub fn finish(
        &self,
        id: i64,
        agent_id: &str,
        attempt: Option<u32>,
        req: &FinishRequest,
    ) -> Result<FinishOutcome> {
        let (status, log_bytes, log_sha256) = (req.status, req.log_bytes, req.log_sha256.as_str());
        let error = req.error.as_deref();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match Self::lease_state(&tx, id, agent_id, attempt)? {
            Lease::Held => {}
            // A resent finish (the answer to the first was lost) for the same status: done.
            Lease::FinishedByYou(s) if s == JobState::from(status).as_str() => {
                return Ok(FinishOutcome::Done)
            }
            other => return Ok(FinishOutcome::Refused(other)),
        }
        let stored: i64 = tx.query_row("SELECT log_bytes FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
        if log_bytes != stored as u64 {
            return Ok(FinishOutcome::Incomplete(stored as u64));
        }
        let (digest, on_disk) = self.log_digest(id, stored as u64)?;
        if on_disk < stored as u64 {
            // Lost in a host crash (see the module comment): have the agent resend it.
            tx.execute(
                "UPDATE jobs SET log_bytes = ?2 WHERE id = ?1",
                params![id, on_disk as i64],
            )?;
            tx.commit()?;
            return Ok(FinishOutcome::Incomplete(on_disk));
        }
        // The agent deletes its spool once this finish is acknowledged.
        self.sync_log(id)?;
        let now = now_ms();
        if !digest.eq_ignore_ascii_case(log_sha256.trim()) {
            let msg = format!(
                "log digest differs: the agent sent sha256 {log_sha256}, the coordinator stored {digest} ({stored} bytes)"
            );
            tx.execute(
                "UPDATE jobs SET status = 'infrastructure_fail', error = ?2, finished = ?3, lease_expires = NULL WHERE id = ?1",
                params![id, msg, now],
            )?;
            tx.commit()?;
            return Ok(FinishOutcome::DigestMismatch(msg));
        }
        tx.execute(
            "UPDATE jobs SET status = ?2, error = ?3, finished = ?4, lease_expires = NULL WHERE id = ?1",
            params![id, JobState::from(status), error, now],
        )?;
        tx.commit()?;
        Ok(FinishOutcome::Done)
    }

    /// Jobs whose lease lapsed (no heartbeat): back to the queue for another attempt, or
    /// `infrastructure_fail` once they used all attempts; canceled if a cancel was pending.
    /// Returns how many jobs were re-queued (the caller wakes claimers).
    pub fn expire_leases(&self) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let lapsed: Vec<(i64, u32, u32, bool)> = {
            let mut st = tx.prepare(
                "SELECT id, attempts, max_attempts, cancel_requested FROM jobs \
                 WHERE status = 'running' AND lease_expires < ?1",
            )?;
            let rows = st
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows
        };
        let mut requeued = 0;
        let mut requeued_ids = Vec::new();
        for (id, attempts, max, cancel) in lapsed {
            if cancel {
                tx.execute(
                    "UPDATE jobs SET status = 'canceled', finished = ?2, lease_expires = NULL, \
                     error = 'canceled; the agent stopped sending heartbeats' WHERE id = ?1",
                    params![id, now],
                )?;
            } else if attempts >= max {
                let msg = format!(
                    "the agent stopped sending heartbeats (lease lapsed) on attempt {attempts} of {max}"
                );
                tx.execute(
                    "UPDATE jobs SET status = 'infrastructure_fail', finished = ?2, lease_expires = NULL, error = ?3 WHERE id = ?1",
                    params![id, now, msg],
                )?;
            } else {
                // The next attempt's agent sends its log from offset 0 again, so the lost
                // attempt's log and events go; the error field says what happened.
                tx.execute("DELETE FROM job_events WHERE job_id = ?1", [id])?;
                requeued_ids.push(id);
                let msg = format!("attempt {attempts} lost its lease (no heartbeat); re-queued");
                tx.execute(
                    "UPDATE jobs SET status = 'queued', agent_id = NULL, lease_expires = NULL, \
                     started = NULL, log_bytes = 0, event_count = 0, error = ?2 WHERE id = ?1",
                    params![id, msg],
                )?;
                requeued += 1;
            }
        }
        tx.commit()?;
        // After the commit: a crash before this leaves a file longer than `log_bytes` (0),
        // which the next attempt's first append cuts back.
        for id in requeued_ids {
            self.drop_log(id);
        }
        Ok(requeued)
    }
}

fn wire_job(conn: &Connection, secrets: &SecretsKey, id: i64) -> Result<WireJob> {
    let (pid, uuid, slug, clone_url, user_key, deploy_key, known_hosts): (
        i64,
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        String,
    ) = conn.query_row(
        "SELECT p.id, p.uuid, p.slug, p.clone_url, p.user_key, p.deploy_key, p.known_hosts \
         FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.id = ?1",
        [id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    let (commit_sha, branch, tag, job_name, pipeline_number, attempts, pull_request, timeouts) =
        conn.query_row(
            "SELECT commit_sha, branch, tag, job_name, pipeline_number, attempts, pr_number, \
             pr_url, timeout_secs, pr_fork FROM jobs WHERE id = ?1",
            [id],
            |r| {
                let pull_request = match (r.get::<_, Option<i64>>(6)?, r.get(7)?) {
                    (Some(n), Some(url)) => Some(WirePullRequest {
                        number: n as u64,
                        url,
                        fork: r.get(9)?,
                    }),
                    _ => None,
                };
                let timeouts = match r.get::<_, Option<i64>>(8)? {
                    Some(s) if s > 0 => WireTimeouts { job_secs: s as u64 },
                    _ => WireTimeouts::default(),
                };
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, u32>(5)?,
                    pull_request,
                    timeouts,
                ))
            },
        )?;
    let mut keys = Vec::new();
    for (role, column, key) in [
        (WireKeyRole::User, "user_key", user_key),
        (WireKeyRole::Deploy, "deploy_key", deploy_key),
    ] {
        if let Some(sealed) = key {
            let private_key = secrets.open(&secrets::key_place(pid, column), &sealed)?;
            keys.push(WireKey {
                role,
                private_key: private_key.as_str().to_owned(),
                fingerprint: None,
            });
        }
    }
    let env = {
        let mut st = conn.prepare(
            "SELECT name, value, secret FROM project_env WHERE project_id = ?1 ORDER BY name",
        )?;
        let rows = st
            .query_map([pid], |r| {
                Ok(WireEnv {
                    name: r.get(0)?,
                    value: r.get(1)?,
                    secret: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut env = Vec::with_capacity(rows.len());
        for mut e in rows {
            if e.secret {
                e.value = secrets
                    .open(&secrets::env_place(pid, &e.name), &e.value)?
                    .as_str()
                    .to_owned();
            }
            env.push(e);
        }
        env
    };
    let previous_build_num: Option<i64> = conn.query_row(
        "SELECT MAX(pipeline_number) FROM jobs WHERE project_id = ?1 AND branch IS ?2 \
         AND pipeline_number < ?3",
        rusqlite::params![pid, branch, pipeline_number],
        |r| r.get(0),
    )?;
    Ok(WireJob {
        id: id.to_string(),
        project: WireProject {
            uuid,
            slug,
            clone_url,
        },
        commit_sha,
        branch,
        tag,
        pull_request,
        job_name,
        pipeline_number: pipeline_number as u64,
        keys,
        known_hosts: known_hosts
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        env,
        timeouts,
        attempt: attempts,
        previous_build_num: previous_build_num.map(|n| n as u64),
        username: None,
        // The coordinator does not take SSH requests yet (enqueue/rerun --ssh-key).
        ssh_keys: Vec::new(),
    })
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

/// Before migration 2: copy each job's log out of the `job_logs` blobs into its file.
/// Idempotent (a crash before the migration commits redoes it from the start).
fn export_blob_logs(conn: &Connection, logs: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut st =
        conn.prepare("SELECT job_id, offset, bytes FROM job_logs ORDER BY job_id, offset")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut open: Option<(i64, File)> = None;
    for row in rows {
        let (id, off, bytes) = row?;
        let path = log_path(logs, id);
        if open.as_ref().is_none_or(|(j, _)| *j != id) {
            if let Some((prev, f)) = open.take() {
                f.sync_all().map_err(io_err(&log_path(logs, prev)))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(&path))?;
            open = Some((id, f));
        }
        if let Some((_, f)) = &open {
            f.write_all_at(&bytes, off as u64).map_err(io_err(&path))?;
        }
    }
    if let Some((id, f)) = open {
        f.sync_all().map_err(io_err(&log_path(logs, id)))?;
    }
    File::open(logs)
        .and_then(|d| d.sync_all())
        .map_err(io_err(logs))
}

fn migrate(conn: &Connection, logs: &Path) -> Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(CoordError::Invalid(format!(
            "the store has schema version {version}, newer than this bosun knows ({}); upgrade bosun",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        if i == 1 {
            export_blob_logs(conn, logs)?;
        }
        let mut extra = String::new();
        if i == 3 {
            // The plaintext registration token of earlier versions stays valid, as a digest.
            let old: Option<String> = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'registration_token'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(old) = old {
                extra = format!(
                    "; INSERT INTO registration_tokens(id, token_sha256, created) \
                     VALUES ('reg-legacy', '{}', {}); \
                     DELETE FROM meta WHERE key = 'registration_token'",
                    sha256_hex(old.as_bytes()),
                    now_ms()
                );
            }
        }
        // Schema change and version bump commit together, so a crash never half-migrates.
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}{extra}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

/// Seal every plaintext private key and secret env value (a store written before secrets
/// were sealed), record the key's fingerprint, and checkpoint the WAL so no plaintext copy
/// stays in it (`secure_delete` zeroes the old values' space in the pages).
fn seal_plaintext_secrets(conn: &Connection, key: &SecretsKey) -> Result<()> {
    let like = format!("{SEALED_PREFIX}%");
    let mut keys = Vec::new();
    for column in ["user_key", "deploy_key"] {
        let mut st = conn.prepare(&format!(
            "SELECT id, {column} FROM projects WHERE {column} IS NOT NULL AND {column} NOT LIKE ?1"
        ))?;
        let rows = st
            .query_map([&like], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (pid, plain) in rows {
            let plain = zeroize::Zeroizing::new(plain);
            keys.push((
                column,
                pid,
                key.seal(&secrets::key_place(pid, column), &plain)?,
            ));
        }
    }
    let mut env = Vec::new();
    {
        let mut st = conn.prepare(
            "SELECT project_id, name, value FROM project_env WHERE secret != 0 AND value NOT LIKE ?1",
        )?;
        let rows = st
            .query_map([&like], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (pid, name, plain) in rows {
            let plain = zeroize::Zeroizing::new(plain);
            let sealed = key.seal(&secrets::env_place(pid, &name), &plain)?;
            env.push((pid, name, sealed));
        }
    }
    let recorded: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'secrets_key'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if keys.is_empty() && env.is_empty() && recorded.is_some() {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let body = (|| -> Result<()> {
        for (column, pid, sealed) in &keys {
            conn.execute(
                &format!("UPDATE projects SET {column} = ?2 WHERE id = ?1"),
                params![pid, sealed],
            )?;
        }
        for (pid, name, sealed) in &env {
            conn.execute(
                "UPDATE project_env SET value = ?3 WHERE project_id = ?1 AND name = ?2",
                params![pid, name, sealed],
            )?;
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('secrets_key', ?1)",
            [&key.fingerprint],
        )?;
        Ok(())
    })();
    match body {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    if !keys.is_empty() || !env.is_empty() {
        tracing::info!(
            keys = keys.len(),
            env = env.len(),
            "sealed plaintext secrets of an older store with {}",
            key.path.display()
        );
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    Ok(())
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
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::JobStatus;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&d.path().join("data")).expect("open");
        s.add_project(&NewProject {
            slug: "acme/widget".into(),
            uuid: None,
            clone_url: "git@bitbucket.org:acme/widget.git".into(),
            user_key: Some("KEY".into()),
            deploy_key: None,
            known_hosts: String::new(),
            env: vec![],
        })
        .expect("project");
        (d, s)
    }

    fn new_job() -> NewJob {
        NewJob {
            project_slug: "acme/widget".into(),
            git_ref: "main".into(),
            commit_sha: None,
            job_name: "build".into(),
            resource_class: None,
            labels: vec![],
            max_attempts: 3,
            pr_number: None,
            pr_url: None,
            pr_fork: false,
            timeout_secs: None,
        }
    }

    fn job(s: &Store) -> i64 {
        s.enqueue(&new_job()).expect("enqueue")
    }

    fn claim_next(s: &Store) -> WireJob {
        s.claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("a job")
    }

    #[test]
    fn a_jobs_pull_request_and_timeout_reach_the_agent_in_its_claim() {
        let (_d, s) = store();
        let plain = job(&s);
        let with_url = s
            .enqueue(&NewJob {
                pr_number: Some(7),
                pr_url: Some(
                    "https://bitbucket.example.com/projects/A/repos/w/pull-requests/7".into(),
                ),
                timeout_secs: Some(90),
                ..new_job()
            })
            .expect("enqueue");
        let derived = s
            .enqueue(&NewJob {
                pr_number: Some(12),
                pr_fork: true,
                ..new_job()
            })
            .expect("enqueue");

        let j = claim_next(&s);
        assert_eq!(j.id, plain.to_string());
        assert_eq!(j.pull_request, None);
        assert_eq!(j.timeouts, WireTimeouts::default());
        assert_eq!(j.timeouts.job_secs, 3 * 3600);

        let j = claim_next(&s);
        assert_eq!(j.id, with_url.to_string());
        assert_eq!(
            j.pull_request,
            Some(WirePullRequest {
                number: 7,
                url: "https://bitbucket.example.com/projects/A/repos/w/pull-requests/7".into(),
                fork: false,
            })
        );
        assert_eq!(j.timeouts.job_secs, 90);

        let j = claim_next(&s);
        assert_eq!(j.id, derived.to_string());
        assert_eq!(
            j.pull_request.map(|p| (p.number, p.url, p.fork)),
            Some((
                12,
                "https://bitbucket.org/acme/widget/pull-requests/12".into(),
                true
            ))
        );
        assert_eq!(j.timeouts, WireTimeouts::default());

        let row = s.job(with_url).expect("job").expect("row");
        assert_eq!((row.pr_number, row.timeout_secs), (Some(7), Some(90)));
        assert_eq!(s.job(plain).expect("job").expect("row").pr_number, None);
    }

    #[test]
    fn bad_pull_requests_and_timeouts_are_refused_at_enqueue() {
        let (_d, s) = store();
        let refused = |j: NewJob| match s.enqueue(&j) {
            Err(CoordError::Invalid(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(refused(NewJob {
            timeout_secs: Some(0),
            ..new_job()
        })
        .contains("between 1s and 24h"));
        assert!(refused(NewJob {
            timeout_secs: Some(MAX_JOB_TIMEOUT_SECS + 1),
            ..new_job()
        })
        .contains("between 1s and 24h"));
        assert!(refused(NewJob {
            pr_url: Some("https://bitbucket.org/acme/widget/pull-requests/3".into()),
            ..new_job()
        })
        .contains("needs the pull request's number"));
        assert!(refused(NewJob {
            pr_number: Some(3),
            pr_url: Some("javascript:alert(1)".into()),
            ..new_job()
        })
        .contains("http(s)"));
        assert!(refused(NewJob {
            pr_number: Some(0),
            ..new_job()
        })
        .contains("start at 1"));
        assert!(refused(NewJob {
            pr_number: Some(u64::MAX),
            ..new_job()
        })
        .contains("too large"));
        assert!(s.list_jobs(10).expect("list").is_empty());
        s.enqueue(&NewJob {
            timeout_secs: Some(MAX_JOB_TIMEOUT_SECS),
            ..new_job()
        })
        .expect("the maximum itself is allowed");
    }

    #[test]
    fn log_appends_are_idempotent_by_offset() {
        let (_d, s) = store();
        let id = job(&s);
        let j = s
            .claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("a job");
        assert_eq!(j.id, id.to_string());
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello ").expect("append"),
            AppendOutcome::Ack(6)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello ").expect("append"),
            AppendOutcome::Ack(6)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 3, b"lo world")
                .expect("append"),
            AppendOutcome::Ack(11)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 20, b"x").expect("append"),
            AppendOutcome::Gap(11)
        ));
        assert!(matches!(
            s.append_log(id, "a2", None, 11, b"x").expect("append"),
            AppendOutcome::Refused(Lease::NotYours)
        ));
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello world");
        assert_eq!(s.log_from(id, 8).expect("log"), b"rld");
    }

    fn fin(status: JobStatus, log_bytes: u64, digest: &str) -> FinishRequest {
        FinishRequest {
            status,
            log_bytes,
            log_sha256: digest.to_owned(),
            error: None,
        }
    }

    fn claimed(s: &Store) -> i64 {
        let id = job(s);
        s.claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("a job");
        id
    }

    #[test]
    fn the_checked_out_commit_is_recorded_and_lines_are_counted() {
        let (_d, s) = store();
        let id = claimed(&s);
        let sha = "ABCDEF0123456789abcdef0123456789abcdef01";
        let ev = |sha: &str| JobEvent::StepStarted {
            step: 1,
            name: "s".into(),
            log_offset: 0,
            commit_sha: Some(sha.into()),
        };
        // Not a commit id: ignored (agent-written text is shown and linked as a commit).
        s.append_events(id, "a1", None, 0, &[ev("main\"><x")])
            .expect("events");
        assert_eq!(s.job(id).expect("job").expect("row").resolved_sha, None);
        s.append_events(id, "a1", None, 1, &[ev(sha)])
            .expect("events");
        assert_eq!(
            s.job(id)
                .expect("job")
                .expect("row")
                .resolved_sha
                .as_deref(),
            Some(sha.to_ascii_lowercase().as_str())
        );
        s.append_log(id, "a1", None, 0, b"a\nbb\n\nccc\n")
            .expect("log");
        assert_eq!(
            s.newlines_before(id, &[11, 0, 2, 5, 99]).expect("count"),
            [4, 0, 1, 2, 4]
        );
    }

    fn log_file(d: &tempfile::TempDir, id: i64) -> PathBuf {
        d.path()
            .join("data")
            .join(LOGS_DIR)
            .join(format!("{id}.log"))
    }

    #[test]
    fn a_log_cut_short_by_a_host_crash_is_asked_for_again() {
        let (d, s) = store();
        let id = claimed(&s);
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello world")
                .expect("append"),
            AppendOutcome::Ack(11)
        ));
        // The host went down before the unsynced tail reached the disk.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(log_file(&d, id))
            .expect("open");
        f.set_len(5).expect("truncate");
        assert!(matches!(
            s.append_log(id, "a1", None, 11, b"!").expect("append"),
            AppendOutcome::Gap(5)
        ));
        assert_eq!(s.job(id).expect("job").expect("row").log_bytes, 5);
        assert!(matches!(
            s.append_log(id, "a1", None, 5, b" world!").expect("append"),
            AppendOutcome::Ack(12)
        ));
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello world!");
        // The same at the finish: a short file is not finished but asked for again.
        f.set_len(7).expect("truncate");
        let digest = sha256_hex(b"hello world!");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 12, &digest))
                .expect("finish"),
            FinishOutcome::Incomplete(7)
        ));
        assert!(matches!(
            s.append_log(id, "a1", None, 7, b"orld!").expect("append"),
            AppendOutcome::Ack(12)
        ));
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 12, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log_file(&d, id))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn writes_of_a_lapsed_attempt_never_reach_the_next_one() {
        let (_d, s) = store();
        let id = job(&s);
        let first = s
            .claim("a1", Duration::ZERO)
            .expect("claim")
            .expect("a job");
        assert_eq!(first.attempt, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.expire_leases().expect("expire"), 1);
        // The same agent claims the re-queued job while attempt 1's sender still has data.
        let second = s
            .claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("a job");
        assert_eq!(second.attempt, 2);
        assert!(matches!(
            s.append_log(id, "a1", Some(1), 0, b"late bytes of attempt 1")
                .expect("append"),
            AppendOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.append_events(id, "a1", Some(1), 0, &[]).expect("events"),
            EventsOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.append_log(id, "a1", Some(2), 0, b"attempt 2")
                .expect("append"),
            AppendOutcome::Ack(9)
        ));
        let digest = sha256_hex(b"attempt 2");
        assert!(matches!(
            s.finish(id, "a1", Some(1), &fin(JobStatus::Failed, 9, &digest))
                .expect("finish"),
            FinishOutcome::Refused(Lease::Superseded { current: 2 })
        ));
        assert!(matches!(
            s.finish(id, "a1", Some(2), &fin(JobStatus::Success, 9, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
        assert_eq!(s.log_from(id, 0).expect("log"), b"attempt 2");
    }

    #[test]
    fn bytes_of_an_append_that_never_committed_are_not_log() {
        let (d, s) = store();
        let id = claimed(&s);
        assert!(matches!(
            s.append_log(id, "a1", None, 0, b"hello").expect("append"),
            AppendOutcome::Ack(5)
        ));
        // A write that reached the file before the coordinator died, uncommitted.
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(log_file(&d, id))
            .expect("open")
            .write_all(b"GARBAGE")
            .expect("write");
        assert_eq!(s.log_from(id, 0).expect("log"), b"hello");
        assert!(matches!(
            s.append_log(id, "a1", None, 5, b" world").expect("append"),
            AppendOutcome::Ack(11)
        ));
        assert_eq!(
            std::fs::read(log_file(&d, id)).expect("file"),
            b"hello world"
        );
        let digest = sha256_hex(b"hello world");
        assert!(matches!(
            s.finish(id, "a1", None, &fin(JobStatus::Success, 11, &digest))
                .expect("finish"),
            FinishOutcome::Done
        ));
    }

    #[test]
    fn a_version_1_store_keeps_its_blob_logs_as_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("data");
        std::fs::create_dir_all(&dir).expect("mkdir");
        {
            let conn = Connection::open(dir.join(DB_FILE)).expect("open");
            conn.execute_batch(&format!(
                "BEGIN; {}; PRAGMA user_version = 1; COMMIT;",
                MIGRATIONS[0]
            ))
            .expect("v1 schema");
            conn.execute_batch(
                "INSERT INTO projects(id, uuid, slug, clone_url) VALUES (1, 'u', 'acme/w', 'git@x:a/w.git');
                 INSERT INTO jobs(id, project_id, commit_sha, git_ref, job_name, pipeline_number, status, max_attempts, log_bytes, created)
                   VALUES (7, 1, 'abc', 'main', 'build', 1, 'success', 3, 11, 0);
                 INSERT INTO job_logs(job_id, offset, bytes) VALUES (7, 0, CAST('hello ' AS BLOB));
                 INSERT INTO job_logs(job_id, offset, bytes) VALUES (7, 6, CAST('world' AS BLOB));",
            )
            .expect("v1 rows");
        }
        let s = Store::open(&dir).expect("migrate");
        assert_eq!(s.log_from(7, 0).expect("log"), b"hello world");
        assert_eq!(s.log_from(7, 6).expect("log"), b"world");
        let gone: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'job_logs'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(gone, 0);
    }

    #[test]
    fn a_version_2_store_gains_pull_requests_and_timeouts_and_keeps_its_jobs() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path().join("data");
        std::fs::create_dir_all(dir.join(LOGS_DIR)).expect("mkdir");
        {
            let conn = Connection::open(dir.join(DB_FILE)).expect("open");
            conn.execute_batch(&format!(
                "BEGIN; {}; {}; PRAGMA user_version = 2; COMMIT;",
                MIGRATIONS[0], MIGRATIONS[1]
            ))
            .expect("v2 schema");
            conn.execute_batch(
                "INSERT INTO projects(id, uuid, slug, clone_url) VALUES (1, 'u', 'acme/widget', 'git@x:acme/widget.git');
                 INSERT INTO jobs(id, project_id, commit_sha, git_ref, branch, job_name, pipeline_number, status, max_attempts, created)
                   VALUES (4, 1, 'main', 'main', 'main', 'build', 1, 'queued', 3, 0);
                 INSERT INTO meta(key, value) VALUES ('registration_token', 'bosun-reg-old');",
            )
            .expect("v2 rows");
        }
        let s = Store::open(&dir).expect("migrate");
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(v, MIGRATIONS.len() as i64);
        // The plaintext registration token of version 3 and before is now a digest.
        assert!(s.registration_token_valid("bosun-reg-old").expect("valid"));
        let plain: i64 = s
            .conn()
            .query_row(
                "SELECT count(*) FROM meta WHERE key = 'registration_token'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(plain, 0);
        // The job queued before the upgrade: no pull request, the default limit.
        let old = claim_next(&s);
        assert_eq!(old.id, "4");
        assert_eq!(old.pull_request, None);
        assert_eq!(old.timeouts, WireTimeouts::default());
        // A new one carries both.
        let id = s
            .enqueue(&NewJob {
                pr_number: Some(5),
                timeout_secs: Some(600),
                ..new_job()
            })
            .expect("enqueue");
        let new = claim_next(&s);
        assert_eq!(new.id, id.to_string());
        assert_eq!(new.pull_request.map(|p| p.number), Some(5));
        assert_eq!(new.timeouts.job_secs, 600);
    }

    #[test]
    fn schema_version_is_recorded_and_reopen_keeps_data() {
        let (d, s) = store();
        let id = job(&s);
        drop(s);
        let s = Store::open(&d.path().join("data")).expect("reopen");
        assert_eq!(
            s.job(id).expect("job").expect("exists").status,
            JobState::Queued
        );
        let v: i64 = s
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("pragma");
        assert_eq!(v as usize, MIGRATIONS.len());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.path())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_loose_data_directory_is_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let data = d.path().join("data");
        std::fs::create_dir_all(data.join(LOGS_DIR)).expect("mkdir");
        for p in [&data, &data.join(LOGS_DIR)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        drop(Store::open(&data).expect("open"));
        for p in [&data, &data.join(LOGS_DIR)] {
            let mode = std::fs::metadata(p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", p.display());
        }
    }

    /// Every byte of the database and its WAL, to look for plaintext in.
    fn db_bytes(d: &tempfile::TempDir) -> Vec<u8> {
        let mut all = Vec::new();
        for f in [DB_FILE, "coordinator.db-wal"] {
            all.extend(std::fs::read(d.path().join("data").join(f)).unwrap_or_default());
        }
        all
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn plaintext_secrets_of_an_older_store_are_sealed_when_it_opens() {
        let (d, s) = store();
        let id = job(&s);
        // As a store written before secrets were sealed holds them.
        s.conn()
            .execute_batch(
                "UPDATE projects SET user_key = 'PLAIN-PRIVATE-KEY'; \
                 INSERT INTO project_env(project_id, name, value, secret) \
                     SELECT id, 'TOKEN', 'hunter22-plain', 1 FROM projects; \
                 INSERT INTO project_env(project_id, name, value, secret) \
                     SELECT id, 'PUBLIC', 'visible-value', 0 FROM projects; \
                 DELETE FROM meta WHERE key = 'secrets_key'; \
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .expect("downgrade");
        drop(s);
        assert!(contains(&db_bytes(&d), "PLAIN-PRIVATE-KEY"));
        let s = Store::open(&d.path().join("data")).expect("reopen");
        let bytes = db_bytes(&d);
        assert!(!contains(&bytes, "PLAIN-PRIVATE-KEY"));
        assert!(!contains(&bytes, "hunter22-plain"));
        assert!(contains(&bytes, "visible-value"), "plain env stays plain");
        let w = claim_next(&s);
        assert_eq!(w.id, id.to_string());
        assert_eq!(w.keys[0].private_key, "PLAIN-PRIVATE-KEY");
        let env: Vec<(&str, &str)> = w
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            env,
            [("PUBLIC", "visible-value"), ("TOKEN", "hunter22-plain")]
        );
    }

    #[test]
    fn a_store_does_not_open_with_another_or_a_missing_key_file() {
        let (d, s) = store();
        drop(s);
        let key = secrets::default_key_path(&d.path().join("data"));
        assert!(key.exists() && !key.starts_with(d.path().join("data")));
        let other = d.path().join("other.key");
        SecretsKey::load_or_create(&other, true).expect("other key");
        let Err(e) = Store::open_with_key(&d.path().join("data"), Some(&other)) else {
            panic!("opened with another key");
        };
        assert!(e.to_string().contains("sealed with another key"), "{e}");
        std::fs::remove_file(&key).expect("rm");
        let Err(e) = Store::open(&d.path().join("data")) else {
            panic!("opened without its key file");
        };
        assert!(e.to_string().contains("is missing"), "{e}");
    }
}
