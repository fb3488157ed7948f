//! What Bitbucket intake and output keep: a project's build rules, webhook secret and status
//! credentials (both sealed like keys), its old slugs, its open pull requests, the webhook
//! deliveries already seen, the commit statuses still to send, and operator tokens for the
//! web actions.

use super::pipelines::resolve_project;
use super::*;
use crate::model::{StatusApi, DATA_CENTER_KEY_PREFIX};
pub(super) use crate::store::intake::status_place;
use zeroize::Zeroizing;

pub(super) fn webhook_place(pid: i64) -> String {
    format!("p{pid}/webhook_secret")
}

/// (id, slug, sealed secret, default branch, PRs only, forks, fork secrets, key).
type ProjectBits = (
    i64,
    String,
    Option<String>,
    String,
    bool,
    bool,
    bool,
    String,
);

const WEBHOOK_PROJECT_COLUMNS: &str = "id, slug, webhook_secret, default_branch, \
     build_pull_requests_only, build_fork_pull_requests, fork_secrets, uuid";

fn project_bits(r: &Row) -> sql::Result<ProjectBits> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

use super::pipelines::OutgoingStatus;

impl PgStore {
    pub(super) fn set_project_settings(&self, project: &str, s: &ProjectSettings) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid = resolve_project(&tx, project)?;
        if let Some(secret) = &s.webhook_secret {
            let sealed = if secret.is_empty() {
                None
            } else {
                Some(self.secrets.seal(&webhook_place(pid), secret)?)
            };
            tx.execute(
                "UPDATE projects SET webhook_secret = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        if let Some(b) = &s.default_branch {
            tx.execute(
                "UPDATE projects SET default_branch = ?2 WHERE id = ?1",
                params![pid, b],
            )?;
        }
        for (column, v) in [
            ("build_pull_requests_only", s.build_pull_requests_only),
            ("build_fork_pull_requests", s.build_fork_pull_requests),
            ("fork_secrets", s.fork_secrets),
        ] {
            if let Some(v) = v {
                tx.execute(
                    &format!("UPDATE projects SET {column} = ?2 WHERE id = ?1"),
                    params![pid, v],
                )?;
            }
        }
        if let Some(api) = &s.status_api {
            tx.execute(
                "UPDATE projects SET status_api = ?2 WHERE id = ?1",
                params![pid, api.as_ref().map(StatusApi::to_string)],
            )?;
        }
        if let Some(c) = &s.status_credentials {
            let sealed = self.secrets.seal(&status_place(pid), c)?;
            tx.execute(
                "UPDATE projects SET status_credentials = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The project of Bitbucket Cloud repository `uuid`.
    pub(super) fn project_for_webhook(&self, uuid: &str) -> Result<Option<WebhookProject>> {
        let row: Option<ProjectBits> = self
            .conn()?
            .query_row(
                &format!("SELECT {WEBHOOK_PROJECT_COLUMNS} FROM projects WHERE uuid = ?1"),
                [uuid],
                project_bits,
            )
            .optional()?;
        row.map(|b| self.webhook_project(b)).transpose()
    }

    /// The projects of Bitbucket Data Center repository `id`, on whichever server: Data
    /// Center's repository ids are unique per server only, so the delivery's signature (and
    /// its links, when it has them) tells them apart.
    pub(super) fn projects_for_data_center(&self, id: u64) -> Result<Vec<WebhookProject>> {
        let rows: Vec<ProjectBits> = {
            let conn = self.conn()?;
            let mut st = conn.prepare(&format!(
                "SELECT {WEBHOOK_PROJECT_COLUMNS} FROM projects WHERE uuid ILIKE ?1 ORDER BY id"
            ))?;
            // `%` matches the server; the id ends the key after a `/`.
            let pattern = format!("{DATA_CENTER_KEY_PREFIX}%/{id}");
            st.query_map([pattern], project_bits)?
                .collect::<sql::Result<Vec<_>>>()?
        };
        rows.into_iter().map(|b| self.webhook_project(b)).collect()
    }

    fn webhook_project(&self, bits: ProjectBits) -> Result<WebhookProject> {
        let (id, slug, sealed, default_branch, prs_only, forks, fork_secrets, key) = bits;
        let secret = sealed
            .map(|s| self.secrets.open(&webhook_place(id), &s))
            .transpose()?;
        Ok(WebhookProject {
            id,
            key,
            slug,
            secret,
            default_branch,
            build_pull_requests_only: prs_only,
            build_fork_pull_requests: forks,
            fork_secrets,
        })
    }

    /// The repository was renamed (or moved workspace): the project follows, and its old
    /// slug keeps resolving. Also records the default branch when the payload says it.
    pub(super) fn follow_repository(
        &self,
        pid: i64,
        slug: &str,
        default_branch: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let old: String = tx.query_row("SELECT slug FROM projects WHERE id = ?1", [pid], |r| {
            r.get(0)
        })?;
        if old != slug && !slug.is_empty() {
            // A slug another project holds stays with it (the other repository was renamed
            // away and its new name has not arrived yet): only unused slugs are taken.
            let taken: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM projects WHERE slug = ?1 AND id != ?2)",
                params![slug, pid],
                |r| r.get(0),
            )?;
            if !taken {
                tx.execute(
                    "INSERT INTO project_slugs(slug, project_id) VALUES (?1, ?2) \
                     ON CONFLICT (slug) DO UPDATE SET project_id = EXCLUDED.project_id",
                    params![old, pid],
                )?;
                tx.execute("DELETE FROM project_slugs WHERE slug = ?1", [slug])?;
                tx.execute(
                    "UPDATE projects SET slug = ?2 WHERE id = ?1",
                    params![pid, slug],
                )?;
                tracing::info!(from = %old, to = %slug, "project renamed by its repository");
            }
        }
        if let Some(b) = default_branch.filter(|b| !b.is_empty()) {
            tx.execute(
                "UPDATE projects SET default_branch = ?2 WHERE id = ?1",
                params![pid, b],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Remember delivery `uuid`; `false` when it was seen already (a replay or a retry).
    pub(super) fn first_delivery(&self, uuid: &str, outcome: &str) -> Result<bool> {
        let conn = self.conn()?;
        let n = conn.execute(
            "INSERT OR IGNORE INTO webhook_deliveries(request_uuid, received, outcome) VALUES (?1, ?2, ?3)",
            params![uuid, now_ms(), outcome],
        )?;
        // Deliveries older than a week cannot be retried by Bitbucket any more.
        conn.execute(
            "DELETE FROM webhook_deliveries WHERE received < ?1",
            [now_ms() - 7 * 24 * 3600 * 1000],
        )?;
        Ok(n == 1)
    }

    pub(super) fn record_pull_request(
        &self,
        pid: i64,
        number: u64,
        branch: &str,
        state: &str,
        fork: bool,
        url: &str,
    ) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO pull_requests(project_id, number, branch, state, fork, url) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (project_id, number) DO UPDATE SET \
             branch = EXCLUDED.branch, state = EXCLUDED.state, fork = EXCLUDED.fork, url = EXCLUDED.url",
            params![pid, number as i64, branch, state, fork, url],
        )?;
        Ok(())
    }

    /// The open pull request from `branch` of the project's own repository, if any.
    pub(super) fn open_pull_request(
        &self,
        pid: i64,
        branch: &str,
    ) -> Result<Option<(u64, String)>> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT number, url FROM pull_requests WHERE project_id = ?1 AND branch = ?2 \
                 AND state = 'OPEN' AND fork = 0 ORDER BY number DESC LIMIT 1",
                params![pid, branch],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
    }

    /// Replace (`Some`) or remove (`None`) one of the project's private keys.
    pub(super) fn set_project_key(
        &self,
        project: &str,
        column: KeyColumn,
        key: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid = resolve_project(&tx, project)?;
        let col = key_column(column);
        let sealed = key
            .map(|k| self.secrets.seal(&secrets::key_place(pid, col), k))
            .transpose()?;
        tx.execute(
            &format!("UPDATE projects SET {col} = ?2 WHERE id = ?1"),
            params![pid, sealed],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// A new operator token named `name` (printed once; kept as a digest).
    pub(super) fn create_operator_token(&self, name: &str) -> Result<String> {
        let token = format!("bosun-op-{}", random_hex(24)?);
        let id = format!("op-{}", random_hex(6)?);
        self.conn()?.execute(
            "INSERT INTO operator_tokens(id, name, token_sha256, created) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, sha256_hex(token.as_bytes()), now_ms()],
        )?;
        Ok(token)
    }

    /// The operator a token belongs to, unless unknown or revoked.
    pub(super) fn operator(&self, token: &str) -> Result<Option<String>> {
        Ok(self
            .reader()?
            .query_row(
                "SELECT name FROM operator_tokens WHERE token_sha256 = ?1 AND revoked = 0",
                [sha256_hex(token.as_bytes())],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(super) fn revoke_operator_tokens(&self, name: &str) -> Result<usize> {
        Ok(self.conn()?.execute(
            "UPDATE operator_tokens SET revoked = 1 WHERE name = ?1 OR id = ?1",
            [name],
        )?)
    }

    /// Statuses due now: for each (commit, key) only the oldest unsent one, so Bitbucket
    /// gets a job's statuses in the order they happened even when one has to be retried.
    pub(super) fn due_statuses(&self, limit: u32) -> Result<Vec<OutgoingStatus>> {
        // Read-only: off the writer's connection, so polling never waits on agents' writes.
        let conn = self.reader()?;
        let mut st = conn.prepare(
            "SELECT c.id, p.id, p.status_api, p.status_credentials, p.slug, c.commit_sha, c.body, c.attempts \
             FROM commit_statuses c JOIN projects p ON p.id = c.project_id \
             WHERE c.sent IS NULL AND c.next_try <= ?1 AND p.status_api IS NOT NULL \
             AND c.id = (SELECT MIN(c2.id) FROM commit_statuses c2 WHERE c2.sent IS NULL \
                         AND c2.project_id = c.project_id AND c2.commit_sha = c.commit_sha AND c2.key = c.key) \
             ORDER BY c.id LIMIT ?2",
        )?;
        let rows = st
            .query_map(params![now_ms(), limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, u32>(7)?,
                ))
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, pid, api, creds, slug, commit, body, attempts) in rows {
            let credentials = match creds {
                Some(c) => self.secrets.open(&status_place(pid), &c)?,
                None => Zeroizing::new(String::new()),
            };
            out.push(OutgoingStatus {
                id,
                api: StatusApi::from_stored(&api),
                credentials,
                workspace_repo: slug,
                commit_sha: commit,
                body,
                attempts,
            });
        }
        Ok(out)
    }

    pub(super) fn status_sent(&self, id: i64) -> Result<()> {
        self.conn()?.execute(
            "UPDATE commit_statuses SET sent = ?2, attempts = attempts + 1, error = NULL WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Sending failed: try again after `retry_in`; after `give_up` attempts the status is
    /// dropped (marked sent with its error) so later ones of the job can go.
    pub(super) fn status_failed(
        &self,
        id: i64,
        error: &str,
        retry_in: Duration,
        give_up: bool,
    ) -> Result<()> {
        self.conn()?.execute(
            "UPDATE commit_statuses SET attempts = attempts + 1, error = ?2, next_try = ?3, \
             sent = CASE WHEN ?4 THEN -1 ELSE NULL END WHERE id = ?1",
            params![id, error, now_ms() + retry_in.as_millis() as i64, give_up],
        )?;
        Ok(())
    }
}

/// The column of one of a project's private keys.
fn key_column(c: KeyColumn) -> &'static str {
    match c {
        KeyColumn::User => "user_key",
        KeyColumn::Deploy => "deploy_key",
    }
}
