//! Projects and jobs as the CLI and the pages see them: add, enqueue, cancel, list.

use super::*;
use crate::store::ssh::Queued;

impl PgStore {
    pub(super) fn add_project(&self, p: &NewProject) -> Result<String> {
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
        let mut conn = self.conn()?;
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
                "INSERT INTO project_env(project_id, name, value, secret) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (project_id, name) DO UPDATE SET value = EXCLUDED.value, secret = EXCLUDED.secret",
                params![pid, e.name, value, e.secret],
            )?;
        }
        tx.commit()?;
        Ok(uuid)
    }

    pub(super) fn enqueue(&self, j: &NewJob) -> Result<i64> {
        self.enqueue_with(j, &Queued::default())
    }

    /// Queue `j` with what only some jobs carry (see [`Queued`]).
    pub(super) fn enqueue_with(&self, j: &NewJob, extra: &Queued) -> Result<i64> {
        let ssh_keys = if extra.ssh_keys.is_empty() {
            None
        } else {
            Some(
                serde_json::to_string(&extra.ssh_keys)
                    .map_err(|e| CoordError::Invalid(e.to_string()))?,
            )
        };
        if let Some(secs) = j.timeout_secs {
            check_timeout_secs(secs)?;
        }
        if let Some(w) = &j.workspace {
            check_workspace(w)?;
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
        let mut conn = self.conn()?;
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
        // One number sequence per project, shared with pipelines (a rerun keeps its job's).
        let pipeline: i64 = match extra.pipeline_number {
            Some(n) => n,
            None => tx.query_row(
                "SELECT GREATEST(COALESCE((SELECT MAX(number) FROM pipelines WHERE project_id = ?1), 0), \
                            COALESCE((SELECT MAX(pipeline_number) FROM jobs WHERE project_id = ?1), 0)) + 1",
                [pid],
                |r| r.get(0),
            )?,
        };
        let (branch, tag) = split_ref(&j.git_ref);
        // Without --commit the agent gets the ref name to resolve (documented in protocol.md).
        let commit = j.commit_sha.clone().unwrap_or_else(|| j.git_ref.clone());
        tx.execute(
            "INSERT INTO jobs(project_id, commit_sha, git_ref, branch, tag, job_name, pipeline_number, \
             resource_class, labels, status, max_attempts, created, pr_number, pr_url, pr_fork, \
             timeout_secs, ssh_keys, rerun_of, workspace, ssh_by, ssh_user_key, restricted) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?11, ?12, ?13, ?14, ?15, \
             ?16, ?17, ?18, ?19, ?20, ?21)",
            params![pid, commit, j.git_ref, branch, tag, j.job_name, pipeline, j.resource_class,
                json_labels(&j.labels), j.max_attempts.max(1), now_ms(), pr_number, pr_url,
                j.pr_fork && pr_number.is_some(), j.timeout_secs.map(|s| s as i64), ssh_keys,
                extra.rerun_of, j.workspace, extra.ssh_by, extra.ssh_user_key,
                extra.restricted],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(id)
    }

    /// Queued jobs end as `canceled` at once; running ones get `cancel_requested`, which the
    /// next heartbeat of their agent returns. Returns the job's status afterwards.
    pub(super) fn cancel(&self, id: i64) -> Result<String> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let status: String = tx
            .query_row(
                "SELECT status FROM jobs WHERE id = ?1 FOR UPDATE",
                [id],
                |r| r.get(0),
            )
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
            // Finished, but its agent holds its containers for an SSH session: the cancel
            // ends the hold (and the sessions); the status stays what the job earned.
            other if ssh::is_held(&tx, id)? => {
                tx.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", [id])?;
                format!("{other} (its SSH hold ends)")
            }
            other => other.to_string(),
        };
        tx.commit()?;
        Ok(after)
    }

    /// Jobs queued, jobs running, and agents not revoked seen at or after `online_since`
    /// (ms since the epoch), for the metrics.
    pub(super) fn counts(&self, online_since: i64) -> Result<(i64, i64, i64)> {
        Ok(self.reader()?.query_row(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE status = 'queued'), \
                    (SELECT COUNT(*) FROM jobs WHERE status = 'running'), \
                    (SELECT COUNT(*) FROM agents WHERE revoked = 0 AND last_seen >= ?1)",
            [online_since],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    pub(super) fn list_jobs(&self, limit: u32) -> Result<Vec<JobRow>> {
        let conn = self.reader()?;
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN projects p ON p.id = j.project_id \
             ORDER BY j.id DESC LIMIT ?1"
        ))?;
        let rows = st
            .query_map([limit], job_row)?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Jobs newest first that match `f`, at most `limit`, older than `f.before` (paging).
    pub(super) fn list_jobs_filtered(&self, f: &JobFilter, limit: u32) -> Result<Vec<JobRow>> {
        let conn = self.conn()?;
        let mut st = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN projects p ON p.id = j.project_id \
             WHERE (?1::text IS NULL OR p.slug = ?1) \
               AND (?2::text IS NULL OR j.branch = ?2 OR j.tag = ?2 OR j.git_ref = ?2) \
               AND (?3::text IS NULL OR j.status = ?3) \
               AND (?4::bigint IS NULL OR j.id < ?4) \
               AND (?6::text IS NULL OR p.slug IN \
                    (SELECT jsonb_array_elements_text(?6::text::jsonb))) \
             ORDER BY j.id DESC LIMIT ?5"
        ))?;
        // The projects the asker may read, as a JSON array (one parameter, as SQLite's).
        let projects = f
            .projects
            .as_ref()
            .map(|p| serde_json::Value::from(p.clone()).to_string());
        let rows = st
            .query_map(
                params![
                    f.project,
                    f.branch,
                    f.status.map(|s| s.as_str()),
                    f.before,
                    limit,
                    projects
                ],
                job_row,
            )?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Project slugs, sorted (the job list's project filter).
    pub(super) fn project_slugs(&self) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut st = conn.prepare("SELECT slug FROM projects ORDER BY slug")?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
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
}
