//! The PostgreSQL schema: versioned migrations, applied in order at open, each in its own
//! transaction with its version, under an advisory lock so that replicas starting together
//! migrate once. `bosun_schema.version` records how many ran. Append only: never edit a
//! migration that has shipped.
//!
//! The tables are SQLite's (`store/schema.rs`, as of its last migration) in PostgreSQL's
//! types: every integer `BIGINT` (flags included, so the same `= 1` tests read the same),
//! ids `BIGSERIAL`. Logs are not here: they stay files in the data directory (docs/scale.md).

use super::sql::{Connection, TransactionBehavior};
use crate::error::{CoordError, Result};

/// The migrations' advisory lock key ("bosunmig" would not fit; any constant does).
const MIGRATE_LOCK: i64 = 0x626f_7375_6e6d;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the schema as SQLite's stands after its migration 9.
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    resource_class TEXT NOT NULL,
    labels TEXT NOT NULL,
    version TEXT NOT NULL,
    created BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE projects (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    slug TEXT NOT NULL UNIQUE,
    clone_url TEXT NOT NULL,
    user_key TEXT,
    deploy_key TEXT,
    known_hosts TEXT NOT NULL DEFAULT '',
    webhook_secret TEXT,
    default_branch TEXT NOT NULL DEFAULT 'main',
    build_pull_requests_only BIGINT NOT NULL DEFAULT 0,
    build_fork_pull_requests BIGINT NOT NULL DEFAULT 0,
    fork_secrets BIGINT NOT NULL DEFAULT 0,
    status_api TEXT,
    status_credentials TEXT
);
CREATE TABLE project_env (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    secret BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);
CREATE TABLE project_slugs (
    slug TEXT PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id)
);
CREATE TABLE pipelines (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    number BIGINT NOT NULL,
    uuid TEXT NOT NULL UNIQUE,
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    commit_sha TEXT,
    revision TEXT,
    base_revision TEXT,
    trigger_source TEXT NOT NULL,
    event TEXT NOT NULL,
    event_action TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    pr_number BIGINT,
    pr_url TEXT,
    pr_fork BIGINT NOT NULL DEFAULT 0,
    restricted BIGINT NOT NULL DEFAULT 0,
    username TEXT,
    commit_subject TEXT,
    status TEXT NOT NULL,
    error TEXT,
    created BIGINT NOT NULL,
    finished BIGINT,
    UNIQUE (project_id, number)
);
CREATE INDEX pipelines_status ON pipelines(status, id);
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    commit_sha TEXT NOT NULL,
    git_ref TEXT NOT NULL,
    branch TEXT,
    tag TEXT,
    job_name TEXT NOT NULL,
    pipeline_number BIGINT NOT NULL,
    resource_class TEXT,
    labels TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    agent_id TEXT,
    lease_expires BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    log_bytes BIGINT NOT NULL DEFAULT 0,
    event_count BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    created BIGINT NOT NULL,
    started BIGINT,
    finished BIGINT,
    pr_number BIGINT,
    pr_url TEXT,
    pr_fork BIGINT NOT NULL DEFAULT 0,
    timeout_secs BIGINT,
    resolved_sha TEXT,
    ssh_keys TEXT,
    ssh_state TEXT,
    rerun_of BIGINT,
    workspace TEXT,
    pipeline_id BIGINT REFERENCES pipelines(id),
    restricted BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_status ON jobs(status, id);
CREATE INDEX jobs_project ON jobs(project_id, id);
CREATE INDEX jobs_ssh_state ON jobs(agent_id) WHERE ssh_state IS NOT NULL;
CREATE INDEX jobs_agent_running ON jobs(agent_id) WHERE status = 'running';
CREATE TABLE job_events (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    seq BIGINT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE registration_tokens (
    id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    expires BIGINT,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE project_agents (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    agent_id TEXT NOT NULL,
    PRIMARY KEY (project_id, agent_id)
);
CREATE TABLE blob_refs (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (project_id, sha256)
);
CREATE TABLE workspace_layers (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    workspace TEXT NOT NULL,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    job_name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL
);
CREATE INDEX workspace_layers_run ON workspace_layers(project_id, workspace, id);
CREATE TABLE caches (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    created BIGINT NOT NULL,
    job_id BIGINT,
    -- SQLite's rowid: the order of saving, for caches saved in the same millisecond.
    seq BIGSERIAL,
    PRIMARY KEY (project_id, key)
);
CREATE TABLE artifacts (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (job_id, path)
);
CREATE TABLE test_results (
    job_id BIGINT PRIMARY KEY REFERENCES jobs(id),
    tests BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    skipped BIGINT NOT NULL
);
CREATE TABLE failed_tests (
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    seq BIGINT NOT NULL,
    name TEXT NOT NULL,
    classname TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE workflows (
    id BIGSERIAL PRIMARY KEY,
    pipeline_id BIGINT NOT NULL REFERENCES pipelines(id),
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    created BIGINT NOT NULL,
    finished BIGINT
);
CREATE INDEX workflows_pipeline ON workflows(pipeline_id);
CREATE TABLE workflow_jobs (
    id BIGSERIAL PRIMARY KEY,
    workflow_id BIGINT NOT NULL REFERENCES workflows(id),
    position BIGINT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    requires TEXT NOT NULL,
    serial_group TEXT,
    resource_class TEXT,
    timeout_secs BIGINT,
    status TEXT NOT NULL,
    reason TEXT,
    job_id BIGINT REFERENCES jobs(id),
    approved_by TEXT,
    UNIQUE (workflow_id, name)
);
CREATE INDEX workflow_jobs_job ON workflow_jobs(job_id);
CREATE INDEX workflow_jobs_serial ON workflow_jobs(serial_group, status);
CREATE TABLE pull_requests (
    project_id BIGINT NOT NULL REFERENCES projects(id),
    number BIGINT NOT NULL,
    branch TEXT NOT NULL,
    state TEXT NOT NULL,
    fork BIGINT NOT NULL,
    url TEXT NOT NULL,
    PRIMARY KEY (project_id, number)
);
CREATE TABLE webhook_deliveries (
    request_uuid TEXT PRIMARY KEY,
    received BIGINT NOT NULL,
    outcome TEXT NOT NULL
);
CREATE TABLE commit_statuses (
    id BIGSERIAL PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    commit_sha TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    created BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_try BIGINT NOT NULL,
    sent BIGINT,
    error TEXT
);
CREATE INDEX commit_statuses_unsent ON commit_statuses(sent, id);
CREATE TABLE operator_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
"#,
    // 2: wake-ups across replicas. A change an agent or a follower waits for — a job queued,
    // claimed, finished, canceled or re-queued, an agent relabelled or revoked, a project's
    // agents or a pipeline changed — notifies channel `bosun_changes` with the job's id (or
    // nothing) as it commits; every coordinator LISTENs (`pg/watch.rs`). Log appends,
    // events and heartbeats change none of these columns, so they notify nobody.
    r#"
CREATE FUNCTION bosun_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bosun_changes', NEW.id::text);
    RETURN NULL;
END $$;
CREATE FUNCTION bosun_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bosun_changes', '');
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_queued AFTER INSERT ON jobs
    FOR EACH ROW EXECUTE FUNCTION bosun_notify_job();
CREATE TRIGGER jobs_changed AFTER UPDATE OF status, cancel_requested, agent_id, ssh_state ON jobs
    FOR EACH ROW EXECUTE FUNCTION bosun_notify_job();
CREATE TRIGGER agents_changed AFTER UPDATE OF resource_class, labels, revoked ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION bosun_notify();
CREATE TRIGGER project_agents_changed AFTER INSERT OR DELETE ON project_agents
    FOR EACH STATEMENT EXECUTE FUNCTION bosun_notify();
CREATE TRIGGER pipelines_changed AFTER INSERT OR UPDATE ON pipelines
    FOR EACH STATEMENT EXECUTE FUNCTION bosun_notify();
CREATE TRIGGER workflow_jobs_changed AFTER UPDATE ON workflow_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION bosun_notify();
"#,
    // 3: contexts (SQLite's migration 10): named sets of secret variables (values sealed,
    // place `c<uuid>/env/<name>`), their restrictions, the groups operators belong to; the
    // contexts a workflow job names (JSON array, the config's order) and the ids a queued job
    // was given.
    r#"
CREATE TABLE contexts (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL DEFAULT '',
    created BIGINT NOT NULL
);
CREATE TABLE context_env (
    context_id BIGINT NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (context_id, name)
);
CREATE TABLE context_restrictions (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    context_id BIGINT NOT NULL REFERENCES contexts(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created BIGINT NOT NULL,
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
    // 4: schedules (SQLite's migration 11). Scheduled pipelines, the scheduled workflows of
    // each project's default-branch config, and the ticks fired: a tick is claimed by
    // inserting (schedule, tick) in the transaction that creates its pipelines; the primary
    // key makes a second claim — another replica's at the same moment — insert nothing
    // (`ON CONFLICT DO NOTHING` waits for the first one's transaction and then skips).
    r#"
CREATE TABLE schedules (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    cron TEXT NOT NULL,
    branch TEXT NOT NULL,
    params TEXT NOT NULL DEFAULT '[]',
    actor TEXT,
    paused BIGINT NOT NULL DEFAULT 0,
    since BIGINT NOT NULL,
    created BIGINT NOT NULL,
    UNIQUE (project_id, name)
);
CREATE TABLE workflow_schedules (
    key TEXT PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    workflow TEXT NOT NULL,
    cron TEXT NOT NULL,
    branches TEXT,
    revision TEXT NOT NULL,
    since BIGINT NOT NULL
);
CREATE TABLE schedule_ticks (
    schedule TEXT NOT NULL,
    tick BIGINT NOT NULL,
    claimed BIGINT NOT NULL,
    pipelines BIGINT NOT NULL,
    PRIMARY KEY (schedule, tick)
);
ALTER TABLE pipelines ADD COLUMN schedule_name TEXT;
ALTER TABLE pipelines ADD COLUMN schedule_id TEXT;
ALTER TABLE pipelines ADD COLUMN scheduled_workflow TEXT;
"#,
    // 5: CircleCI's API v2 (SQLite's migration 12): read-only project tokens, each
    // pipeline's config as compiled, setup workflows' continuation keys (one use each) and
    // the workflows they added.
    r#"
CREATE TABLE project_tokens (
    id TEXT PRIMARY KEY,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE pipeline_configs (
    pipeline_id BIGINT PRIMARY KEY REFERENCES pipelines(id),
    source TEXT NOT NULL,
    compiled TEXT NOT NULL,
    setup_source TEXT,
    setup_compiled TEXT
);
CREATE TABLE continuations (
    pipeline_id BIGINT PRIMARY KEY REFERENCES pipelines(id),
    key_sha256 TEXT NOT NULL UNIQUE,
    key_sealed TEXT NOT NULL,
    created BIGINT NOT NULL,
    used BIGINT,
    params TEXT
);
ALTER TABLE workflows ADD COLUMN continued BIGINT NOT NULL DEFAULT 0;
"#,
    // 6: status badges (SQLite's migration 13): a project's badge token as a digest, whether
    // its badges are public; pipelines by branch, newest first, for the badge's lookup.
    r#"
CREATE TABLE project_badges (
    project_id BIGINT PRIMARY KEY REFERENCES projects(id),
    token_digest TEXT,
    public BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX pipelines_branch ON pipelines(project_id, branch, id);
"#,
    // 7: notifications (SQLite's migration 14): a project's mail addresses and outgoing
    // webhooks (the signing secret sealed), and the outbox, written in the transaction that
    // records the completion; a claim locks its rows (`FOR UPDATE SKIP LOCKED`), so replicas
    // share the outbox without handing a row out twice.
    r#"
CREATE TABLE notify_targets (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    project_id BIGINT NOT NULL REFERENCES projects(id),
    kind TEXT NOT NULL,
    address TEXT NOT NULL,
    events TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    secret TEXT,
    created BIGINT NOT NULL,
    last_error TEXT,
    last_error_at BIGINT,
    last_delivered_at BIGINT,
    UNIQUE (project_id, kind, address)
);
CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    uuid TEXT NOT NULL UNIQUE,
    target_id BIGINT NOT NULL REFERENCES notify_targets(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    status TEXT NOT NULL,
    pipeline_id BIGINT NOT NULL REFERENCES pipelines(id),
    workflow_id BIGINT,
    workflow_job_id BIGINT,
    happened_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_try BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications(next_try);
CREATE INDEX notifications_target ON notifications(target_id);
"#,
    // 8: people (SQLite's migration 15): who logged in with Bitbucket, their sessions (kept
    // as digests), their repository permissions as last read, and whether a project is
    // readable by anyone.
    r#"
CREATE TABLE people (
    id BIGSERIAL PRIMARY KEY,
    bitbucket_uuid TEXT NOT NULL UNIQUE,
    nickname TEXT NOT NULL,
    display_name TEXT NOT NULL DEFAULT '',
    admin BIGINT NOT NULL DEFAULT 0,
    created BIGINT NOT NULL,
    last_login BIGINT NOT NULL,
    permissions_fetched BIGINT,
    refresh_token TEXT
);
CREATE INDEX people_nickname ON people(nickname);
CREATE TABLE sessions (
    digest TEXT PRIMARY KEY,
    person_id BIGINT NOT NULL REFERENCES people(id),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX sessions_person ON sessions(person_id);
CREATE TABLE person_permissions (
    person_id BIGINT NOT NULL REFERENCES people(id),
    repository TEXT NOT NULL,
    permission TEXT NOT NULL,
    PRIMARY KEY (person_id, repository)
);
ALTER TABLE projects ADD COLUMN public BIGINT NOT NULL DEFAULT 0;
"#,
    // 9: personal API tokens, project tokens' scope and the audit log (SQLite's migration
    // 16).
    r#"
CREATE TABLE personal_tokens (
    id BIGSERIAL PRIMARY KEY,
    person_id BIGINT NOT NULL REFERENCES people(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created BIGINT NOT NULL,
    last_used BIGINT
);
CREATE INDEX personal_tokens_person ON personal_tokens(person_id);
ALTER TABLE project_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'read';
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    project TEXT,
    target TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
"#,
    // 10: SSH into a build that holds a user key (SQLite's migration 17).
    r#"
CREATE TABLE person_ssh_keys (
    id BIGSERIAL PRIMARY KEY,
    person_id BIGINT NOT NULL REFERENCES people(id),
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    from_bitbucket BIGINT NOT NULL DEFAULT 0,
    added BIGINT NOT NULL,
    UNIQUE (person_id, fingerprint)
);
ALTER TABLE projects ADD COLUMN user_key_owner TEXT;
ALTER TABLE projects ADD COLUMN ssh_policy TEXT NOT NULL DEFAULT 'without-user-key';
ALTER TABLE jobs ADD COLUMN ssh_by TEXT;
ALTER TABLE jobs ADD COLUMN ssh_user_key TEXT;
"#,
    // 11: running jobs'
    // logs in the database rather than files of one replica's data directory, so every
    // replica appends and reads them. A chunk per append, keyed by its first byte's offset
    // (the append's transaction writes it with the job's committed length); the arrival
    // times beside them; and how long the log has a live follower somewhere, so that an
    // append notifies the replicas only then (see `store/pg/logs.rs`). A finished job's
    // chunks become one object of the blob store and are deleted.
    r#"
CREATE TABLE log_chunks (
    job_id BIGINT NOT NULL,
    start BIGINT NOT NULL,
    bytes BYTEA NOT NULL,
    PRIMARY KEY (job_id, start)
);
CREATE TABLE log_times (
    job_id BIGINT NOT NULL,
    start BIGINT NOT NULL,
    ms BIGINT NOT NULL,
    PRIMARY KEY (job_id, start)
);
ALTER TABLE jobs ADD COLUMN log_followed_until BIGINT NOT NULL DEFAULT 0;
"#,
    // 12: a person's kept credential's kind and the audit log by age (SQLite's migration
    // 18).
    r#"
ALTER TABLE people ADD COLUMN credential_kind TEXT NOT NULL DEFAULT 'refresh-token';
CREATE INDEX audit_log_at ON audit_log(at);
"#,
    // 13: security groups of people (SQLite's migration 19).
    r#"
CREATE TABLE person_groups (
    person_id BIGINT NOT NULL REFERENCES people(id),
    grp TEXT NOT NULL,
    PRIMARY KEY (person_id, grp)
);
ALTER TABLE pipelines ADD COLUMN triggered_by TEXT;
ALTER TABLE workflow_jobs ADD COLUMN approved_by_person TEXT;
"#,
];

/// Apply the migrations this database has not had yet.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS bosun_schema (version BIGINT NOT NULL)")?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::RowLocks)?;
        tx.execute_batch(&format!("SELECT pg_advisory_xact_lock({MIGRATE_LOCK})"))?;
        let version: Option<i64> =
            tx.query_row("SELECT MAX(version) FROM bosun_schema", [], |r| r.get(0))?;
        let version = version.unwrap_or(0) as usize;
        if version > MIGRATIONS.len() {
            return Err(CoordError::Invalid(format!(
                "the database has schema version {version}, newer than this bosun knows ({}); \
                 upgrade bosun",
                MIGRATIONS.len()
            )));
        }
        let Some(sql) = MIGRATIONS.get(version) else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO bosun_schema(version) VALUES (?1)",
            [version as i64 + 1],
        )?;
        tx.commit()?;
        tracing::info!(version = version + 1, "PostgreSQL schema migrated");
    }
}
