//! SSH into jobs, the coordinator's part: jobs queued with public keys (`enqueue --ssh-key`),
//! reruns (`rerun JOB --ssh`, CircleCI's "Rerun job with SSH"), the keys travelling in the
//! claim, and the access each heartbeat reports (shown on the job page).

use super::*;

use crate::store::ssh::Queued;

/// Longest host name an agent may report (DNS allows 253).
const MAX_HOST: usize = 255;

impl PgStore {
    /// Queue `j`, letting `ssh_keys` (`authorized_keys` lines, checked by the caller) SSH into
    /// it while it runs and while it is held after its last step.
    pub(super) fn enqueue_ssh(&self, j: &NewJob, ssh_keys: &[String]) -> Result<i64> {
        self.enqueue_with(
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
    pub(super) fn rerun(&self, id: i64, ssh_keys: &[String]) -> Result<i64> {
        self.rerun_queued(
            id,
            Queued {
                ssh_keys: ssh_keys.to_vec(),
                ..Queued::default()
            },
        )
    }

    /// Queue job `id` again as [`Self::rerun`] does, with `extra`'s keys, asker and user key
    /// (its rerun and pipeline number are the old job's).
    pub(in crate::store) fn rerun_queued(&self, id: i64, extra: Queued) -> Result<i64> {
        let old = self
            .reader()?
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
            .optional()?;
        let Some((job, pipeline, restricted)) = old else {
            return Err(CoordError::NotFound(format!("no job {id}")));
        };
        self.enqueue_with(
            &job,
            &Queued {
                rerun_of: Some(id),
                pipeline_number: Some(pipeline),
                restricted,
                ..extra
            },
        )
    }
}

/// Record what a heartbeat says of a job's SSH access (agent-written: shown on the page, so
/// anything odd is dropped rather than stored; and only for a job queued with SSH keys).
pub(super) fn record_state(conn: &Connection, id: i64, state: Option<&WireSshState>) -> Result<()> {
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
    conn: &Connection,
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
pub(super) fn release_requested(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT cancel_requested FROM jobs WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?)
}

/// Finished jobs of `agent_id` shown as held that its heartbeat no longer lists: their hold
/// is over, so the page stops saying "held until".
pub(super) fn end_holds_not_reported(
    conn: &Connection,
    agent_id: &str,
    reported: &[&str],
) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM jobs WHERE agent_id = ?1 \
         AND ssh_state IS NOT NULL AND status NOT IN ('queued', 'running') \
         AND (ssh_state::jsonb ->> 'held_until_ms') IS NOT NULL",
    )?;
    let held = stmt
        .query_map([agent_id], |r| r.get::<_, i64>(0))?
        .collect::<std::result::Result<Vec<_>, _>>()?;
    for id in held {
        if !reported.contains(&id.to_string().as_str()) {
            conn.execute(
                "UPDATE jobs SET ssh_state = ((ssh_state::jsonb || '{\"sessions\":0}'::jsonb) - 'held_until_ms')::text \
                 WHERE id = ?1",
                [id],
            )?;
        }
    }
    Ok(())
}

/// Whether job `id` is finished but still held for SSH by its agent.
pub(super) fn is_held(conn: &Connection, id: i64) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT status NOT IN ('queued', 'running') \
             AND (ssh_state::jsonb ->> 'held_until_ms') IS NOT NULL FROM jobs WHERE id = ?1",
            [id],
            |r| r.get::<_, Option<bool>>(0),
        )
        .optional()?
        .flatten()
        .unwrap_or(false))
}
