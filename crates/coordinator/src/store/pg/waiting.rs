//! Why a queued job waits. A job queued for a runner class no agent has (or whose agents are
//! all busy or offline) otherwise sits `queued` with nothing said; the reason is computed here,
//! at read time, from the agents the coordinator knows (their class, labels, last call and
//! running jobs), because it changes with the agents and not with the job: an agent that
//! registers, goes quiet or finishes changes it without any write to the job. The pages and
//! the CLI show the text as it is.
//!
//! The agents counted are the ones that may claim the job, by the same rule as a claim
//! ([`fits`]): not revoked, of the job's resource class when it names one, with every label it
//! asks for, and among the agents its project is restricted to, if it is.

use super::*;
use std::collections::HashMap;

use crate::store::waiting::{fits, reason, who, Candidate, DEFAULT_ONLINE_WINDOW_MS};

impl PgStore {
    /// Record how recently an agent must have called to count as online (the server's two
    /// leases); the CLI, another process, reads it from here.
    pub(super) fn record_online_window(&self, window: Duration) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO meta(key, value) VALUES ('online_window_ms', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            [window.as_millis().to_string()],
        )?;
        Ok(())
    }

    /// Why job `id` waits, when it is queued; `None` otherwise.
    pub(super) fn wait_reason(&self, id: i64) -> Result<Option<String>> {
        Ok(self.wait_reasons(&[id])?.remove(&id))
    }

    /// Why each of `ids` that is queued waits (the others are left out).
    pub(super) fn wait_reasons(&self, ids: &[i64]) -> Result<HashMap<i64, String>> {
        let conn = self.reader()?;
        wait_reasons_in(&conn, ids, now_ms())
    }
}

pub(super) fn wait_reasons_in(
    conn: &Connection,
    ids: &[i64],
    now: i64,
) -> Result<HashMap<i64, String>> {
    let mut out = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    // The queued ones first: a page of a running or finished job reads nothing more.
    let mut job_st = conn.prepare(
        "SELECT resource_class, labels, project_id FROM jobs WHERE id = ?1 AND status = 'queued'",
    )?;
    let mut queued = Vec::new();
    for &id in ids {
        if let Some(row) = job_st
            .query_row([id], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?
        {
            queued.push((id, row));
        }
    }
    if queued.is_empty() {
        return Ok(out);
    }
    let window: i64 = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'online_window_ms'",
            [],
            |r| r.get::<_, String>(0),
        )
        .optional()?
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ONLINE_WINDOW_MS);
    // Every agent not revoked, with its running jobs, read once for all the jobs asked about.
    type AgentRow = (String, String, String, i64, i64);
    let agents: Vec<AgentRow> = {
        let mut st = conn.prepare(
            "SELECT a.id, a.resource_class, a.labels, a.last_seen, \
             (SELECT COUNT(*) FROM jobs r WHERE r.status = 'running' AND r.agent_id = a.id) \
             FROM agents a WHERE a.revoked = 0",
        )?;
        st.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<sql::Result<Vec<_>>>()?
    };
    let agents: Vec<(String, String, Vec<String>, Candidate)> = agents
        .into_iter()
        .map(|(id, class, labels, last_seen, running)| {
            let labels = serde_json::from_str(&labels).unwrap_or_default();
            (id, class, labels, Candidate { last_seen, running })
        })
        .collect();
    let mut allowed_st =
        conn.prepare("SELECT agent_id FROM project_agents WHERE project_id = ?1")?;
    for (id, (class, labels, pid)) in queued {
        let labels: Vec<String> = serde_json::from_str(&labels).unwrap_or_default();
        let allowed: Vec<String> = allowed_st
            .query_map([pid], |r| r.get(0))?
            .collect::<sql::Result<Vec<_>>>()?;
        let restricted = !allowed.is_empty();
        let eligible: Vec<&Candidate> = agents
            .iter()
            .filter(|(aid, ac, al, _)| {
                fits(class.as_deref(), &labels, ac, al) && (!restricted || allowed.contains(aid))
            })
            .map(|(.., c)| c)
            .collect();
        let who = who(class.as_deref(), &labels, restricted);
        out.insert(id, reason(&who, &eligible, now, window));
    }
    Ok(out)
}
