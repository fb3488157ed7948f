//! The schema's migrations, and the one-time upgrades of older stores (blob logs to files,
//! plaintext secrets sealed).

use super::*;

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
/// Append only: never edit a migration that has shipped.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 6: SSH into a job: the public keys let in (JSON array of `authorized_keys` lines; NULL:
    // no SSH), the access its agent last reported (JSON `WireSshState`), and the job a rerun
    // repeats.
    "ALTER TABLE jobs ADD COLUMN ssh_keys TEXT; \
     ALTER TABLE jobs ADD COLUMN ssh_state TEXT; \
     ALTER TABLE jobs ADD COLUMN rerun_of INTEGER",
    // 7: the store over the protocol. Blobs live in files under `blobs/` beside the database;
    // `blob_refs` says which project holds which blob (a project reads only its own, and its
    // quota counts them), the rest names them: workspace layers by workflow run, caches by
    // key, a job's artifacts and test results.
    "ALTER TABLE jobs ADD COLUMN workspace TEXT; \
     CREATE TABLE blob_refs ( \
         project_id INTEGER NOT NULL REFERENCES projects(id), \
         sha256 TEXT NOT NULL, \
         size INTEGER NOT NULL, \
         created INTEGER NOT NULL, \
         PRIMARY KEY (project_id, sha256)); \
     CREATE TABLE workspace_layers ( \
         id INTEGER PRIMARY KEY AUTOINCREMENT, \
         project_id INTEGER NOT NULL REFERENCES projects(id), \
         workspace TEXT NOT NULL, \
         job_id INTEGER NOT NULL REFERENCES jobs(id), \
         job_name TEXT NOT NULL, \
         sha256 TEXT NOT NULL, \
         size INTEGER NOT NULL); \
     CREATE INDEX workspace_layers_run ON workspace_layers(project_id, workspace, id); \
     CREATE TABLE caches ( \
         project_id INTEGER NOT NULL REFERENCES projects(id), \
         key TEXT NOT NULL, \
         sha256 TEXT NOT NULL, \
         size INTEGER NOT NULL, \
         created INTEGER NOT NULL, \
         job_id INTEGER, \
         PRIMARY KEY (project_id, key)); \
     CREATE TABLE artifacts ( \
         job_id INTEGER NOT NULL REFERENCES jobs(id), \
         path TEXT NOT NULL, \
         sha256 TEXT NOT NULL, \
         size INTEGER NOT NULL, \
         PRIMARY KEY (job_id, path)); \
     CREATE TABLE test_results ( \
         job_id INTEGER PRIMARY KEY REFERENCES jobs(id), \
         tests INTEGER NOT NULL, \
         failures INTEGER NOT NULL, \
         errors INTEGER NOT NULL, \
         skipped INTEGER NOT NULL); \
     CREATE TABLE failed_tests ( \
         job_id INTEGER NOT NULL REFERENCES jobs(id), \
         seq INTEGER NOT NULL, \
         name TEXT NOT NULL, \
         classname TEXT NOT NULL, \
         message TEXT NOT NULL, \
         PRIMARY KEY (job_id, seq))",
    // 8: pipelines (issue 16): a trigger or webhook makes a pipeline; its config's workflows
    // and their jobs are kept here and queued as `jobs` rows when their requirements are met.
    // Projects gain the Bitbucket settings (webhook secret sealed, build rules, status
    // credentials sealed), their old slugs, open pull requests, webhook deliveries seen,
    // commit statuses to send, and operator tokens for the web actions.
    r#"
ALTER TABLE projects ADD COLUMN webhook_secret TEXT;
ALTER TABLE projects ADD COLUMN default_branch TEXT NOT NULL DEFAULT 'main';
ALTER TABLE projects ADD COLUMN build_pull_requests_only INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN build_fork_pull_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN fork_secrets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN status_api TEXT;
ALTER TABLE projects ADD COLUMN status_credentials TEXT;
CREATE TABLE project_slugs (
    slug TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id)
);
CREATE TABLE pipelines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    commit_sha TEXT,                -- as asked; NULL: the ref's head when fetched
    revision TEXT,                  -- the commit the config was read from
    base_revision TEXT,
    trigger_source TEXT NOT NULL,   -- webhook | api
    event TEXT NOT NULL,            -- push | pull_request | api
    event_action TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    pr_number INTEGER,
    pr_url TEXT,
    pr_fork INTEGER NOT NULL DEFAULT 0,
    restricted INTEGER NOT NULL DEFAULT 0,   -- fork build: no secret env, no user key
    username TEXT,
    commit_subject TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created INTEGER NOT NULL,
    finished INTEGER,
    UNIQUE (project_id, number)
);
CREATE INDEX pipelines_status ON pipelines(status, id);
CREATE TABLE workflows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id INTEGER NOT NULL REFERENCES pipelines(id),
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created INTEGER NOT NULL,
    finished INTEGER
);
CREATE INDEX workflows_pipeline ON workflows(pipeline_id);
CREATE TABLE workflow_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id INTEGER NOT NULL REFERENCES workflows(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,             -- build | approval | not_runnable
    requires TEXT NOT NULL,         -- JSON [[name, [statuses]]]
    serial_group TEXT,
    resource_class TEXT,
    timeout_secs INTEGER,
    status TEXT NOT NULL,
    reason TEXT,
    job_id INTEGER REFERENCES jobs(id),
    approved_by TEXT,
    UNIQUE (workflow_id, name)
);
CREATE INDEX workflow_jobs_job ON workflow_jobs(job_id);
CREATE INDEX workflow_jobs_serial ON workflow_jobs(serial_group, status);
ALTER TABLE jobs ADD COLUMN pipeline_id INTEGER REFERENCES pipelines(id);
ALTER TABLE jobs ADD COLUMN restricted INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pull_requests (
    project_id INTEGER NOT NULL REFERENCES projects(id),
    number INTEGER NOT NULL,
    branch TEXT NOT NULL,
    state TEXT NOT NULL,            -- OPEN | MERGED | DECLINED | SUPERSEDED
    fork INTEGER NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (project_id, number)
);
CREATE TABLE webhook_deliveries (
    request_uuid TEXT PRIMARY KEY,
    received INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE commit_statuses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    commit_sha TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,             -- the JSON posted
    created INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL,
    sent INTEGER,
    error TEXT
);
CREATE INDEX commit_statuses_unsent ON commit_statuses(sent, id);
CREATE TABLE operator_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
"#,
    // 9: jobs whose agent reported SSH access, by agent: each heartbeat and control poll
    // looks for the agent's held finished jobs, which no other index narrows down.
    "CREATE INDEX jobs_ssh_state ON jobs(agent_id) WHERE ssh_state IS NOT NULL",
    // 10: contexts (issue 28): named sets of secret variables (values sealed, place
    // `c<uuid>/env/<name>`), their restrictions, the groups operators belong to; the contexts a
    // workflow job names (JSON array, the config's order) and the ids a queued job was given.
    r#"
CREATE TABLE contexts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL DEFAULT '',
    created INTEGER NOT NULL
);
CREATE TABLE context_env (
    context_id INTEGER NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (context_id, name)
);
CREATE TABLE context_restrictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    context_id INTEGER NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,             -- project | group | expression
    value TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (context_id, kind, value)
);
CREATE TABLE operator_groups (
    operator TEXT NOT NULL,
    grp TEXT NOT NULL,
    PRIMARY KEY (operator, grp)
);
ALTER TABLE workflow_jobs ADD COLUMN contexts TEXT NOT NULL DEFAULT '[]';
ALTER TABLE jobs ADD COLUMN contexts TEXT NOT NULL DEFAULT '[]';
"#,
    // 11: schedules (issue 28). Scheduled pipelines (`schedule add`), the scheduled workflows
    // of each project's default-branch config (replaced when it is read again), and the
    // ticks fired: a tick is claimed by inserting (schedule, tick) in the transaction that
    // creates its pipelines, so it fires once whatever crashes or runs beside it. Pipelines
    // remember the schedule that made them.
    r#"
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    branch TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    actor TEXT,
    paused INTEGER NOT NULL DEFAULT 0,
    since INTEGER NOT NULL,         -- ticks before it do not fire (made, resumed)
    created INTEGER NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE workflow_schedules (
    key TEXT PRIMARY KEY,           -- model::schedule::workflow_schedule_key
    project_id INTEGER NOT NULL REFERENCES projects(id),
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    branches TEXT,                  -- JSON {"only": [..], "ignore": [..]}; NULL: every branch
    revision TEXT NOT NULL,         -- the default branch's commit it was read at
    since INTEGER NOT NULL
);
CREATE TABLE schedule_ticks (
    schedule TEXT NOT NULL,         -- a schedule's uuid or a workflow schedule's key
    tick INTEGER NOT NULL,
    claimed INTEGER NOT NULL,
    pipelines INTEGER NOT NULL,
    PRIMARY KEY (schedule, tick)
);
ALTER TABLE pipelines ADD COLUMN schedule_name TEXT;
ALTER TABLE pipelines ADD COLUMN schedule_id TEXT;
ALTER TABLE pipelines ADD COLUMN scheduled_workflow TEXT;
"#,
    // 12: CircleCI's API v2: read-only project tokens, each pipeline's config as compiled, and
    // setup workflows' continuation keys (one use each) and the workflows they added.
    r#"
CREATE TABLE project_tokens (
    id TEXT PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE pipeline_configs (
    pipeline_id INTEGER PRIMARY KEY REFERENCES pipelines(id),
    source TEXT NOT NULL,
    compiled TEXT NOT NULL,
    setup_source TEXT,
    setup_compiled TEXT
);
CREATE TABLE continuations (
    pipeline_id INTEGER PRIMARY KEY REFERENCES pipelines(id),
    key_sha256 TEXT NOT NULL UNIQUE,
    key_sealed TEXT NOT NULL,       -- handed to the setup workflow's jobs
    created INTEGER NOT NULL,
    used INTEGER,                   -- when it continued the pipeline (one use)
    params TEXT                     -- the continuation's parameters, JSON [[name, value]]
);
ALTER TABLE workflows ADD COLUMN continued INTEGER NOT NULL DEFAULT 0;
"#,
    // 13: status badges (issue 29): a project's badge token as a digest, and whether its badges
    // are public; pipelines by branch, newest first, for the badge's lookup.
    r#"
CREATE TABLE project_badges (
    project_id INTEGER PRIMARY KEY REFERENCES projects(id),
    token_digest TEXT,
    public INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pipelines_branch ON pipelines(project_id, branch, id);
"#,
    // 14: notifications (issue 29): a project's mail addresses and outgoing webhooks (the
    // signing secret sealed, place `p<project>/webhook/<uuid>`), each with its last delivery
    // error; and the outbox, one row per notification to deliver, written in the transaction
    // that records the completion and deleted once delivered or given up.
    r#"
CREATE TABLE notify_targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,
    project_id INTEGER NOT NULL REFERENCES projects(id),
    kind TEXT NOT NULL,             -- email | webhook
    address TEXT NOT NULL,          -- the e-mail address or the URL
    events TEXT NOT NULL,           -- model::notify::On or Events, as words
    name TEXT NOT NULL DEFAULT '',
    secret TEXT,                    -- a webhook's signing secret, sealed
    created INTEGER NOT NULL,
    last_error TEXT,
    last_error_at INTEGER,
    last_delivered_at INTEGER,
    UNIQUE (project_id, kind, address)
);
CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid TEXT NOT NULL UNIQUE,      -- the event's id (a webhook's `id`: receivers deduplicate)
    target_id INTEGER NOT NULL REFERENCES notify_targets(id) ON DELETE CASCADE,
    event TEXT NOT NULL,            -- failed | fixed | finished | workflow-completed | job-completed
    status TEXT NOT NULL,           -- the pipeline's, workflow's or job's end, as words
    pipeline_id INTEGER NOT NULL REFERENCES pipelines(id),
    workflow_id INTEGER,
    workflow_job_id INTEGER,
    happened_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL
);
CREATE INDEX notifications_due ON notifications(next_try);
CREATE INDEX notifications_target ON notifications(target_id);
"#,
    // 15: people (issue 30): who logged in with Bitbucket, their sessions (kept as digests),
    // the repository permissions Bitbucket gave them when last asked, and whether a project
    // is readable by anyone.
    r#"
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    bitbucket_uuid TEXT NOT NULL UNIQUE,
    nickname TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    admin INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL,
    last_login INTEGER NOT NULL,
    permissions_fetched INTEGER,
    refresh_token TEXT              -- sealed: Bitbucket's OAuth refresh token
);
CREATE INDEX people_nickname ON people(nickname);
CREATE TABLE sessions (
    digest TEXT PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id),
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX sessions_person ON sessions(person_id);
CREATE TABLE person_permissions (
    person_id INTEGER NOT NULL REFERENCES people(id),
    repository TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (person_id, repository)
);
ALTER TABLE projects ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
"#,
    // 16: personal API tokens (kept as digests), what a project token is for (read or
    // trigger), and the audit log of who did what.
    r#"
CREATE TABLE personal_tokens (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created INTEGER NOT NULL,
    last_used INTEGER
);
CREATE INDEX personal_tokens_person ON personal_tokens(person_id);
ALTER TABLE project_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'read';
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,            -- kind:name (model::audit::Actor)
    action TEXT NOT NULL,
    project TEXT,
    target TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
"#,
    // 17: SSH into a build that holds a user key (issue 30): each person's SSH public keys,
    // whose a project's user key is and what its project does when someone else reruns
    // with SSH, and on a rerun with SSH who asked and whether it holds the user key.
    r#"
CREATE TABLE person_ssh_keys (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id),
    key TEXT NOT NULL,              -- `type base64 comment`, as parsed (no options)
    fingerprint TEXT NOT NULL,      -- SHA256:…
    from_bitbucket INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL,
    UNIQUE (person_id, fingerprint)
);
ALTER TABLE projects ADD COLUMN user_key_owner TEXT;
ALTER TABLE projects ADD COLUMN ssh_policy TEXT NOT NULL DEFAULT 'without-user-key';
ALTER TABLE jobs ADD COLUMN ssh_by TEXT;
ALTER TABLE jobs ADD COLUMN ssh_user_key TEXT;   -- with | without | none (model::ssh_policy)
"#,
    // 18: what kind of credential a person's kept one is (an OAuth refresh token, or a
    // Data Center HTTP access token pasted at login), and the audit log found by age, which
    // its pruning deletes by.
    r#"
ALTER TABLE people ADD COLUMN credential_kind TEXT NOT NULL DEFAULT 'refresh-token';
CREATE INDEX audit_log_at ON audit_log(at);
"#,
    // 19: security groups of people (issue 30): the groups each person is in (as operators'
    // are in `operator_groups`), who triggered a pipeline (a person's Bitbucket account, as
    // `people.bitbucket_uuid` holds it: a push, a pull request or a trigger of theirs; the
    // last rerun by a person), and which person approved an approval job (an operator's
    // approval leaves it NULL), so that a job's group-restricted contexts follow them.
    r#"
CREATE TABLE person_groups (
    person_id INTEGER NOT NULL REFERENCES people(id),
    grp TEXT NOT NULL,
    PRIMARY KEY (person_id, grp)
);
ALTER TABLE pipelines ADD COLUMN triggered_by TEXT;
ALTER TABLE workflow_jobs ADD COLUMN approved_by_person TEXT;
"#,
];

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

pub(super) fn migrate(conn: &Connection, logs: &Path) -> Result<()> {
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
pub(super) fn seal_plaintext_secrets(conn: &Connection, key: &SecretsKey) -> Result<()> {
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
