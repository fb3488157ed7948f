//! SSH into jobs, the coordinator's part: jobs queued with public keys (`enqueue --ssh-key`),
//! reruns (`rerun JOB --ssh`, CircleCI's "Rerun job with SSH"), the keys travelling in the
//! claim, and the access each heartbeat reports (shown on the job page).
//!
//! Written once for SQLite and PostgreSQL ([`SqlStore`], [`Db`]): queueing a job is each
//! backend's own ([`EnqueueWith`]), and the JSON of a held job's state is spelled in each
//! database's dialect where it is read.

use super::db::{params, Db, OptionalExtension, SqlStore};
use super::*;

/// What a queued job may carry besides a [`NewJob`].
#[derive(Debug, Default)]
pub(super) struct Queued {
    /// `authorized_keys` lines let into the job; empty: no SSH.
    pub ssh_keys: Vec<String>,
    /// The job this one reruns.
    pub rerun_of: Option<i64>,
    /// Keep this pipeline number (a rerun belongs to its job's pipeline).
    pub pipeline_number: Option<i64>,
    /// Who asked for SSH (a person's nickname, an operator's name), for the page.
    pub ssh_by: Option<String>,
    /// What the job gets of its project's user key (`model::ssh_policy::UserKey`'s word);
    /// `without` keeps it out of the claim.
    pub ssh_user_key: Option<&'static str>,
    /// A forked pull request's build (no secret values, no user key): a rerun stays what
    /// its job was.
    pub restricted: bool,
}

/// Longest host name an agent may report (DNS allows 253).
const MAX_HOST: usize = 255;

/// Each backend's own queueing of a job (`Store::enqueue_with` in `jobs.rs`,
/// `PgStore::enqueue_with` in `pg/jobs.rs`, beside their claims' SQL): what SSH adds to a
/// queued job and a rerun is written once over it.
pub(in crate::store) trait EnqueueWith {
    fn enqueue_with(&self, j: &NewJob, extra: &Queued) -> Result<i64>;
}

impl EnqueueWith for Store {
    fn enqueue_with(&self, j: &NewJob, extra: &Queued) -> Result<i64> {
        Store::enqueue_with(self, j, extra)
    }
}

/// Queue `j`, letting `ssh_keys` (`authorized_keys` lines, checked by the caller) SSH into
/// it while it runs and while it is held after its last step.
pub(super) fn enqueue_ssh(s: &impl EnqueueWith, j: &NewJob, ssh_keys: &[String]) -> Result<i64> {
    s.enqueue_with(
        j,
        &Queued {
            ssh_keys: ssh_keys.to_vec(),
            ..Queued::default()
        },
    )
}

/// Queue job `id` again: the same project, commit (the one its agent checked out, when it
/// said), job, pipeline, pull request, placement and limits; with `ssh_keys` let in (none:
/// a plain rerun). Returns the new job's id.
pub(super) fn rerun(
    s: &(impl SqlStore + EnqueueWith),
    id: i64,
    ssh_keys: &[String],
) -> Result<i64> {
    rerun_queued(
        s,
        id,
        Queued {
            ssh_keys: ssh_keys.to_vec(),
            ..Queued::default()
        },
    )
}

/// Queue job `id` again as [`rerun`] does, with `extra`'s keys, asker and user key (its
/// rerun and pipeline number are the old job's).
pub(in crate::store) fn rerun_queued(
    s: &(impl SqlStore + EnqueueWith),
    id: i64,
    extra: Queued,
) -> Result<i64> {
    let old = s.read(|conn| {
        Ok(conn
            .query_row(
                "SELECT p.slug, j.git_ref, COALESCE(j.resolved_sha, j.commit_sha), j.job_name, \
                 j.resource_class, j.labels, j.max_attempts, j.pr_number, j.pr_url, j.pr_fork, \
                 j.timeout_secs, j.pipeline_number, j.workspace, j.restricted \
                 FROM jobs j JOIN projects p ON p.id = j.project_id WHERE j.id = ?1",
                [id],
                |r| {
                    Ok((
                        NewJob {
                            project_slug: r.get(0)?,
                            git_ref: r.get(1)?,
                            commit_sha: Some(r.get(2)?),
                            job_name: r.get(3)?,
                            resource_class: r.get(4)?,
                            labels: serde_json::from_str(&r.get::<_, String>(5)?)
                                .unwrap_or_default(),
                            max_attempts: r.get(6)?,
                            pr_number: r.get::<_, Option<i64>>(7)?.map(|n| n as u64),
                            pr_url: r.get(8)?,
                            pr_fork: r.get(9)?,
                            timeout_secs: r.get::<_, Option<i64>>(10)?.map(|s| s as u64),
                            // The rerun attaches what its job attached.
                            workspace: r.get(12)?,
                        },
                        r.get::<_, i64>(11)?,
                        r.get::<_, bool>(13)?,
                    ))
                },
            )
            .optional()?)
    })?;
    let Some((job, pipeline, restricted)) = old else {
        return Err(CoordError::NotFound(format!("no job {id}")));
    };
    s.enqueue_with(
        &job,
        &Queued {
            rerun_of: Some(id),
            pipeline_number: Some(pipeline),
            restricted,
            ..extra
        },
    )
}

/// The keys let into job `id`, for its claim.
pub(super) fn job_ssh_keys(conn: &dyn Db, id: i64) -> Result<Vec<String>> {
    let json: Option<String> =
        conn.query_row("SELECT ssh_keys FROM jobs WHERE id = ?1", [id], |r| {
            r.get(0)
        })?;
    Ok(json
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

/// Record what a heartbeat says of a job's SSH access (agent-written: shown on the page, so
/// anything odd is dropped rather than stored; and only for a job queued with SSH keys).
pub(super) fn record_state(conn: &dyn Db, id: i64, state: Option<&WireSshState>) -> Result<()> {
    let state = state.filter(|s| {
        let clean = |t: &str, max: usize| {
            !t.is_empty() && t.len() <= max && !t.chars().any(crate::text::is_unsafe_char)
        };
        clean(&s.host, MAX_HOST)
            && (s.fingerprint.is_empty() || clean(&s.fingerprint, 128))
            && s.port > 0
    });
    let json = state
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| CoordError::Invalid(e.to_string()))?;
    conn.execute(
        "UPDATE jobs SET ssh_state = ?2 WHERE id = ?1 AND ssh_keys IS NOT NULL AND ssh_state IS NOT ?2",
        params![id, json],
    )?;
    Ok(())
}

/// A finished job whose agent still holds it for SSH (the heartbeat says until when): record
/// what it says and answer `true`. `false` when the job is not this agent's, not finished,
/// was not queued with SSH keys, or is not held (the agent should let it go).
pub(super) fn record_hold(
    conn: &dyn Db,
    id: i64,
    agent_id: &str,
    state: Option<&WireSshState>,
) -> Result<bool> {
    let Some(state) = state.filter(|s| s.held_until_ms.is_some()) else {
        return Ok(false);
    };
    let ours: bool = conn
        .query_row(
            "SELECT agent_id = ?2 AND status NOT IN ('queued', 'running') AND ssh_keys IS NOT NULL \
             FROM jobs WHERE id = ?1",
            params![id, agent_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false);
    if ours {
        record_state(conn, id, Some(state))?;
    }
    Ok(ours)
}

/// Whether someone asked to end the hold of (cancel) job `id`.
pub(super) fn release_requested(conn: &dyn Db, id: i64) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT cancel_requested FROM jobs WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?)
}

/// Finished jobs of `agent_id` shown as held that its heartbeat no longer lists: their hold
/// is over, so the page stops saying "held until".
pub(super) fn end_holds_not_reported(
    conn: &dyn Db,
    agent_id: &str,
    reported: &[&str],
) -> Result<()> {
    // The JSON functions are each database's own: SQLite's `json_*` (and its index on
    // `ssh_state`), PostgreSQL's `jsonb` operators.
    let held: Vec<i64> = conn.query_map(
        conn.pick(
            "SELECT id FROM jobs INDEXED BY jobs_ssh_state WHERE agent_id = ?1 \
             AND ssh_state IS NOT NULL AND status NOT IN ('queued', 'running') \
             AND json_extract(ssh_state, '$.held_until_ms') IS NOT NULL",
            "SELECT id FROM jobs WHERE agent_id = ?1 \
             AND ssh_state IS NOT NULL AND status NOT IN ('queued', 'running') \
             AND (ssh_state::jsonb ->> 'held_until_ms') IS NOT NULL",
        ),
        [agent_id],
        |r| r.get(0),
    )?;
    for id in held {
        if !reported.contains(&id.to_string().as_str()) {
            conn.execute(
                conn.pick(
                    "UPDATE jobs SET ssh_state = \
                     json_remove(json_set(ssh_state, '$.sessions', 0), '$.held_until_ms') \
                     WHERE id = ?1",
                    "UPDATE jobs SET ssh_state = ((ssh_state::jsonb || '{\"sessions\":0}'::jsonb) \
                     - 'held_until_ms')::text WHERE id = ?1",
                ),
                [id],
            )?;
        }
    }
    Ok(())
}

/// Whether job `id` is finished but still held for SSH by its agent.
pub(super) fn is_held(conn: &dyn Db, id: i64) -> Result<bool> {
    Ok(conn
        .query_row(
            conn.pick(
                "SELECT status NOT IN ('queued', 'running') \
                 AND json_extract(ssh_state, '$.held_until_ms') IS NOT NULL FROM jobs WHERE id = ?1",
                "SELECT status NOT IN ('queued', 'running') \
                 AND (ssh_state::jsonb ->> 'held_until_ms') IS NOT NULL FROM jobs WHERE id = ?1",
            ),
            [id],
            |r| r.get::<_, Option<bool>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(false))
}
