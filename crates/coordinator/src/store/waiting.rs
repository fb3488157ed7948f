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

use super::db::{Db, OptionalExtension, SqlStore};
use super::*;
use std::collections::HashMap;

/// Whether an agent of `agent_class` with `agent_labels` may claim a job asking for
/// `job_class` (any class when `None`) and `job_labels`. The claim uses it too: one rule.
pub(super) fn fits(
    job_class: Option<&str>,
    job_labels: &[String],
    agent_class: &str,
    agent_labels: &[String],
) -> bool {
    job_class.is_none_or(|c| c == agent_class)
        && job_labels.iter().all(|l| agent_labels.contains(l))
}

/// How recently an agent must have called to count as online, when the server has not
/// recorded its own lease: two default leases, as the `agents_online` metric counts them.
pub(super) const DEFAULT_ONLINE_WINDOW_MS: i64 =
    2 * bosun_protocol::DEFAULT_LEASE_SECS as i64 * 1000;

/// An agent that could claim the job.
pub(super) struct Candidate {
    pub(super) last_seen: i64,
    pub(super) running: i64,
}

/// The agents a queued job waits for, in words: `agent of runner class acme/gpu with label
/// gpu`.
pub(super) fn who(class: Option<&str>, labels: &[String], restricted: bool) -> String {
    let mut s = match class {
        // `namespace/name` is a self-hosted runner class (docs/pipelines-and-bitbucket.md);
        // anything else an operator's `enqueue --resource-class`.
        Some(c) if c.contains('/') => format!("agent of runner class {c}"),
        Some(c) => format!("agent of resource class {c}"),
        None => "agent".to_owned(),
    };
    if !labels.is_empty() {
        let plural = if labels.len() > 1 { "s" } else { "" };
        s.push_str(&format!(" with label{plural} {}", labels.join(", ")));
    }
    if restricted {
        s.push_str(" allowed to run the project");
    }
    s
}

/// Record how recently an agent must have called to count as online (the server's two
/// leases); the CLI, another process, reads it from here.
pub(super) fn record_online_window(s: &impl SqlStore, window: Duration) -> Result<()> {
    s.conn(|conn| {
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('online_window_ms', ?1) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [window.as_millis().to_string()],
        )?;
        Ok(())
    })
}

/// Why each of `ids` that is queued waits (the others are left out).
pub(super) fn wait_reasons(s: &impl SqlStore, ids: &[i64]) -> Result<HashMap<i64, String>> {
    s.read(|conn| wait_reasons_in(conn, ids, now_ms()))
}

pub(super) fn wait_reasons_in(
    conn: &dyn Db,
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
        .collect::<super::db::Result<Vec<_>>>()?
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
            .collect::<super::db::Result<Vec<_>>>()?;
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

pub(super) fn reason(who: &str, eligible: &[&Candidate], now: i64, window: i64) -> String {
    if eligible.is_empty() {
        return format!("waiting: no {who} has registered");
    }
    let online: Vec<&&Candidate> = eligible
        .iter()
        .filter(|c| c.last_seen >= now - window)
        .collect();
    let offline = eligible.len() - online.len();
    if online.is_empty() {
        let last = eligible.iter().map(|c| c.last_seen).max().unwrap_or(0);
        let ago = crate::text::fmt_duration(Duration::from_millis((now - last).max(0) as u64));
        return format!(
            "waiting: every {who} is offline ({} registered, the last seen {ago} ago)",
            eligible.len()
        );
    }
    let busy = online.iter().filter(|c| c.running > 0).count();
    let offline = if offline > 0 {
        format!(", {offline} offline")
    } else {
        String::new()
    };
    if busy == online.len() {
        format!("waiting for a free {who} ({busy} busy{offline})")
    } else {
        // An idle agent claims within its next poll; this shows only for that moment.
        format!(
            "waiting for an {who} to claim it ({} idle, {busy} busy{offline})",
            online.len() - busy
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&d.path().join("data")).expect("open");
        s.add_project(&NewProject {
            slug: "acme/widget".into(),
            uuid: None,
            clone_url: "git@bitbucket.org:acme/widget.git".into(),
            user_key: None,
            deploy_key: None,
            known_hosts: String::new(),
            env: vec![],
        })
        .expect("project");
        (d, s)
    }

    fn queue(s: &Store, class: Option<&str>, labels: &[&str]) -> i64 {
        s.enqueue(&NewJob {
            project_slug: "acme/widget".into(),
            git_ref: "main".into(),
            commit_sha: None,
            job_name: "build".into(),
            resource_class: class.map(str::to_owned),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            max_attempts: 3,
            pr_number: None,
            pr_url: None,
            pr_fork: false,
            timeout_secs: None,
            workspace: None,
        })
        .expect("enqueue")
    }

    /// Registers agent `name`; returns its id.
    fn agent(s: &Store, name: &str, class: &str, labels: &[&str]) -> String {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        s.register_agent(name, class, &labels, "test")
            .expect("register")
            .0
    }

    fn seen(s: &Store, id: &str, at: i64) {
        s.conn()
            .execute(
                "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
                params![id, at],
            )
            .expect("seen");
    }

    #[test]
    fn a_queued_job_says_which_agents_it_waits_for_and_why_none_took_it() {
        let (_d, s) = store();
        let gpu = queue(&s, Some("acme/gpu"), &[]);
        assert_eq!(
            s.wait_reason(gpu).expect("reason").as_deref(),
            Some("waiting: no agent of runner class acme/gpu has registered")
        );
        // An agent of another class changes nothing.
        agent(&s, "d1", "docker", &[]);
        assert_eq!(
            s.wait_reason(gpu).expect("reason").as_deref(),
            Some("waiting: no agent of runner class acme/gpu has registered")
        );
        // Two agents of the class, both running a job of their own.
        let g1 = agent(&s, "g1", "acme/gpu", &[]);
        let g2 = agent(&s, "g2", "acme/gpu", &[]);
        let first = s.claim(&g1, Duration::from_secs(30)).expect("claim");
        assert_eq!(first.map(|j| j.id), Some(gpu.to_string()));
        let other = queue(&s, Some("acme/gpu"), &[]);
        assert!(s
            .claim(&g2, Duration::from_secs(30))
            .expect("claim")
            .is_some());
        let waiting = queue(&s, Some("acme/gpu"), &[]);
        assert_eq!(
            s.wait_reason(waiting).expect("reason").as_deref(),
            Some("waiting for a free agent of runner class acme/gpu (2 busy)")
        );
        // Claimed jobs wait for nothing.
        assert_eq!(s.wait_reason(gpu).expect("reason"), None);
        assert_eq!(s.wait_reason(other).expect("reason"), None);
        // One of them goes quiet.
        let now = now_ms();
        seen(&s, &g2, now - 10 * 60 * 1000);
        assert_eq!(
            s.wait_reason(waiting).expect("reason").as_deref(),
            Some("waiting for a free agent of runner class acme/gpu (1 busy, 1 offline)")
        );
        seen(&s, &g1, now - 3 * 60 * 1000);
        assert_eq!(
            s.wait_reason(waiting).expect("reason").as_deref(),
            Some(
                "waiting: every agent of runner class acme/gpu is offline \
                 (2 registered, the last seen 3m00s ago)"
            )
        );
        // The server's own window counts: a long one takes both back.
        s.record_online_window(Duration::from_secs(3600))
            .expect("window");
        assert_eq!(
            s.wait_reason(waiting).expect("reason").as_deref(),
            Some("waiting for a free agent of runner class acme/gpu (2 busy)")
        );
        // A revoked agent is no agent.
        s.revoke_agent(&g1).expect("revoke");
        s.revoke_agent(&g2).expect("revoke");
        assert_eq!(
            s.wait_reason(waiting).expect("reason").as_deref(),
            Some("waiting: no agent of runner class acme/gpu has registered")
        );
    }

    #[test]
    fn labels_and_a_restricted_project_narrow_the_agents_counted() {
        let (_d, s) = store();
        agent(&s, "a1", "docker", &["arm"]);
        let j = queue(&s, None, &["x86", "big"]);
        assert_eq!(
            s.wait_reason(j).expect("reason").as_deref(),
            Some("waiting: no agent with labels x86, big has registered")
        );
        let k = queue(&s, None, &["arm"]);
        // a1 is online and idle: it is about to claim it.
        assert_eq!(
            s.wait_reason(k).expect("reason").as_deref(),
            Some("waiting for an agent with label arm to claim it (1 idle, 0 busy)")
        );
        let a2 = agent(&s, "a2", "docker", &["arm"]);
        s.restrict_project("acme/widget", std::slice::from_ref(&a2))
            .expect("restrict");
        s.revoke_agent(&a2).expect("revoke");
        assert_eq!(
            s.wait_reason(k).expect("reason").as_deref(),
            Some("waiting: no agent with label arm allowed to run the project has registered")
        );
    }
}
