//! What Bitbucket intake and output keep: a project's build rules, webhook secret and status
//! credentials (both sealed like keys), its old slugs, its open pull requests, the webhook
//! deliveries already seen, the commit statuses still to send, and operator tokens for the
//! web actions.
//!
//! Written once for SQLite and PostgreSQL ([`SqlStore`]).

use super::db::{params, Lock, OptionalExtension, Row, SqlStore};
use super::pipelines::resolve_project;
use super::*;
use crate::model::{StatusApi, DATA_CENTER_KEY_PREFIX};
use zeroize::Zeroizing;

/// Settings `project set` changes; `None` leaves one as it is.
#[derive(Debug, Default, Clone)]
pub struct ProjectSettings {
    pub webhook_secret: Option<String>,
    pub default_branch: Option<String>,
    pub build_pull_requests_only: Option<bool>,
    pub build_fork_pull_requests: Option<bool>,
    pub fork_secrets: Option<bool>,
    /// Bitbucket's REST API (checked by [`StatusApi::parse_setting`]); `Some(None)`:
    /// statuses off.
    pub status_api: Option<Option<StatusApi>>,
    /// `EMAIL:API-TOKEN` (HTTP Basic) or a bearer token (`bearer:TOKEN`).
    pub status_credentials: Option<String>,
}

/// A project as a webhook needs it.
pub struct WebhookProject {
    pub id: i64,
    /// Its repository's stable key: a Cloud repository's UUID, or a Data Center repository's
    /// `bitbucket-dc:SERVER/ID` (`bitbucket::data_center::key`).
    pub key: String,
    pub slug: String,
    pub secret: Option<Zeroizing<String>>,
    pub default_branch: String,
    pub build_pull_requests_only: bool,
    pub build_fork_pull_requests: bool,
    pub fork_secrets: bool,
}

pub(super) fn webhook_place(pid: i64) -> String {
    format!("p{pid}/webhook_secret")
}

pub(super) fn status_place(pid: i64) -> String {
    format!("p{pid}/status_credentials")
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

fn project_bits(r: &dyn Row) -> super::db::Result<ProjectBits> {
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

/// A commit status due to be sent.
pub use super::pipelines::OutgoingStatus;

/// Change what `s` sets of project `project`.
pub(super) fn set_project_settings(
    st: &impl SqlStore,
    project: &str,
    s: &ProjectSettings,
) -> Result<()> {
    st.transaction(Lock::Writer, |tx| {
        let pid = resolve_project(tx, project)?;
        if let Some(secret) = &s.webhook_secret {
            let sealed = if secret.is_empty() {
                None
            } else {
                Some(st.secrets().seal(&webhook_place(pid), secret)?)
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
            let sealed = st.secrets().seal(&status_place(pid), c)?;
            tx.execute(
                "UPDATE projects SET status_credentials = ?2 WHERE id = ?1",
                params![pid, sealed],
            )?;
        }
        Ok(())
    })
}

/// The project of Bitbucket Cloud repository `uuid`.
pub(super) fn project_for_webhook(
    st: &impl SqlStore,
    uuid: &str,
) -> Result<Option<WebhookProject>> {
    let row: Option<ProjectBits> = st.conn(|conn| {
        Ok(conn
            .query_row(
                &format!("SELECT {WEBHOOK_PROJECT_COLUMNS} FROM projects WHERE uuid = ?1"),
                [uuid],
                project_bits,
            )
            .optional()?)
    })?;
    row.map(|b| webhook_project(st, b)).transpose()
}

/// The projects of Bitbucket Data Center repository `id`, on whichever server: Data
/// Center's repository ids are unique per server only, so the delivery's signature (and
/// its links, when it has them) tells them apart.
pub(super) fn projects_for_data_center(st: &impl SqlStore, id: u64) -> Result<Vec<WebhookProject>> {
    let rows: Vec<ProjectBits> = st.conn(|conn| {
        // `%` matches the server; the id ends the key after a `/`. SQLite's `LIKE` ignores
        // ASCII case; PostgreSQL's `ILIKE` is that.
        let sql = format!(
            "SELECT {WEBHOOK_PROJECT_COLUMNS} FROM projects WHERE uuid {} ?1 ORDER BY id",
            conn.pick("LIKE", "ILIKE")
        );
        let pattern = format!("{DATA_CENTER_KEY_PREFIX}%/{id}");
        Ok(conn.query_map(&sql, [pattern], project_bits)?)
    })?;
    rows.into_iter().map(|b| webhook_project(st, b)).collect()
}

fn webhook_project(st: &impl SqlStore, bits: ProjectBits) -> Result<WebhookProject> {
    let (id, slug, sealed, default_branch, prs_only, forks, fork_secrets, key) = bits;
    let secret = sealed
        .map(|s| st.secrets().open(&webhook_place(id), &s))
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
    st: &impl SqlStore,
    pid: i64,
    slug: &str,
    default_branch: Option<&str>,
) -> Result<()> {
    st.transaction(Lock::Writer, |tx| {
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
                     ON CONFLICT (slug) DO UPDATE SET project_id = excluded.project_id",
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
        Ok(())
    })
}

/// Remember delivery `uuid`; `false` when it was seen already (a replay or a retry).
pub(super) fn first_delivery(st: &impl SqlStore, uuid: &str, outcome: &str) -> Result<bool> {
    st.conn(|conn| {
        let n = conn.execute(
            "INSERT OR IGNORE INTO webhook_deliveries(request_uuid, received, outcome) \
             VALUES (?1, ?2, ?3)",
            params![uuid, now_ms(), outcome],
        )?;
        // Deliveries older than a week cannot be retried by Bitbucket any more.
        conn.execute(
            "DELETE FROM webhook_deliveries WHERE received < ?1",
            [now_ms() - 7 * 24 * 3600 * 1000],
        )?;
        Ok(n == 1)
    })
}

pub(super) fn record_pull_request(
    st: &impl SqlStore,
    pid: i64,
    number: u64,
    branch: &str,
    state: &str,
    fork: bool,
    url: &str,
) -> Result<()> {
    st.conn(|conn| {
        conn.execute(
            "INSERT INTO pull_requests(project_id, number, branch, state, fork, url) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (project_id, number) DO UPDATE SET \
             branch = excluded.branch, state = excluded.state, fork = excluded.fork, \
             url = excluded.url",
            params![pid, number as i64, branch, state, fork, url],
        )?;
        Ok(())
    })
}

/// The open pull request from `branch` of the project's own repository, if any.
pub(super) fn open_pull_request(
    st: &impl SqlStore,
    pid: i64,
    branch: &str,
) -> Result<Option<(u64, String)>> {
    st.conn(|conn| {
        Ok(conn
            .query_row(
                "SELECT number, url FROM pull_requests WHERE project_id = ?1 AND branch = ?2 \
                 AND state = 'OPEN' AND fork = 0 ORDER BY number DESC LIMIT 1",
                params![pid, branch],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()?)
    })
}

/// Replace (`Some`) or remove (`None`) one of the project's private keys.
pub(super) fn set_project_key(
    st: &impl SqlStore,
    project: &str,
    column: KeyColumn,
    key: Option<&str>,
) -> Result<()> {
    st.transaction(Lock::Writer, |tx| {
        let pid = resolve_project(tx, project)?;
        let col = column.as_str();
        let sealed = key
            .map(|k| st.secrets().seal(&secrets::key_place(pid, col), k))
            .transpose()?;
        tx.execute(
            &format!("UPDATE projects SET {col} = ?2 WHERE id = ?1"),
            params![pid, sealed],
        )?;
        Ok(())
    })
}

/// A new operator token named `name` (printed once; kept as a digest).
pub(super) fn create_operator_token(st: &impl SqlStore, name: &str) -> Result<String> {
    let token = format!("bosun-op-{}", random_hex(24)?);
    let id = format!("op-{}", random_hex(6)?);
    st.conn(|conn| {
        conn.execute(
            "INSERT INTO operator_tokens(id, name, token_sha256, created) VALUES (?1, ?2, ?3, ?4)",
            params![id, name, sha256_hex(token.as_bytes()), now_ms()],
        )?;
        Ok(())
    })?;
    Ok(token)
}

/// The operator a token belongs to, unless unknown or revoked.
pub(super) fn operator(st: &impl SqlStore, token: &str) -> Result<Option<String>> {
    st.read(|conn| {
        Ok(conn
            .query_row(
                "SELECT name FROM operator_tokens WHERE token_sha256 = ?1 AND revoked = 0",
                [sha256_hex(token.as_bytes())],
                |r| r.get(0),
            )
            .optional()?)
    })
}

pub(super) fn revoke_operator_tokens(st: &impl SqlStore, name: &str) -> Result<usize> {
    st.conn(|conn| {
        Ok(conn.execute(
            "UPDATE operator_tokens SET revoked = 1 WHERE name = ?1 OR id = ?1",
            [name],
        )?)
    })
}

/// Statuses due now: for each (commit, key) only the oldest unsent one, so Bitbucket
/// gets a job's statuses in the order they happened even when one has to be retried.
pub(super) fn due_statuses(st: &impl SqlStore, limit: u32) -> Result<Vec<OutgoingStatus>> {
    // Read-only: off the writer's connection, so polling never waits on agents' writes.
    let rows = st.read(|conn| {
        Ok(conn.query_map(
            "SELECT c.id, p.id, p.status_api, p.status_credentials, p.slug, c.commit_sha, \
             c.body, c.attempts \
             FROM commit_statuses c JOIN projects p ON p.id = c.project_id \
             WHERE c.sent IS NULL AND c.next_try <= ?1 AND p.status_api IS NOT NULL \
             AND c.id = (SELECT MIN(c2.id) FROM commit_statuses c2 WHERE c2.sent IS NULL \
                         AND c2.project_id = c.project_id AND c2.commit_sha = c.commit_sha \
                         AND c2.key = c.key) \
             ORDER BY c.id LIMIT ?2",
            params![now_ms(), limit],
            |r| {
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
            },
        )?)
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (id, pid, api, creds, slug, commit, body, attempts) in rows {
        let credentials = match creds {
            Some(c) => st.secrets().open(&status_place(pid), &c)?,
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

pub(super) fn status_sent(st: &impl SqlStore, id: i64) -> Result<()> {
    st.conn(|conn| {
        conn.execute(
            "UPDATE commit_statuses SET sent = ?2, attempts = attempts + 1, error = NULL \
             WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    })
}

/// Sending failed: try again after `retry_in`; after `give_up` attempts the status is
/// dropped (marked sent with its error) so later ones of the job can go.
pub(super) fn status_failed(
    st: &impl SqlStore,
    id: i64,
    error: &str,
    retry_in: Duration,
    give_up: bool,
) -> Result<()> {
    st.conn(|conn| {
        conn.execute(
            "UPDATE commit_statuses SET attempts = attempts + 1, error = ?2, next_try = ?3, \
             sent = CASE WHEN ?4 THEN -1 ELSE NULL END WHERE id = ?1",
            params![id, error, now_ms() + retry_in.as_millis() as i64, give_up],
        )?;
        Ok(())
    })
}

/// `ProjectStore` and `AccessStore` are still implemented beside each store
/// (`project_store.rs`, `pg/mod.rs`), through each store's own methods: these, the same for
/// both, hand the calls to the functions above.
macro_rules! intake_methods {
    ($($store:ty),*) => {$(
        impl $store {
            pub(super) fn set_project_settings(
                &self,
                project: &str,
                s: &ProjectSettings,
            ) -> Result<()> {
                set_project_settings(self, project, s)
            }
            pub(super) fn project_for_webhook(&self, uuid: &str) -> Result<Option<WebhookProject>> {
                project_for_webhook(self, uuid)
            }
            pub(super) fn projects_for_data_center(&self, id: u64) -> Result<Vec<WebhookProject>> {
                projects_for_data_center(self, id)
            }
            pub(super) fn follow_repository(
                &self,
                pid: i64,
                slug: &str,
                default_branch: Option<&str>,
            ) -> Result<()> {
                follow_repository(self, pid, slug, default_branch)
            }
            pub(super) fn first_delivery(&self, uuid: &str, outcome: &str) -> Result<bool> {
                first_delivery(self, uuid, outcome)
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
                record_pull_request(self, pid, number, branch, state, fork, url)
            }
            pub(super) fn open_pull_request(
                &self,
                pid: i64,
                branch: &str,
            ) -> Result<Option<(u64, String)>> {
                open_pull_request(self, pid, branch)
            }
            pub(super) fn set_project_key(
                &self,
                project: &str,
                column: KeyColumn,
                key: Option<&str>,
            ) -> Result<()> {
                set_project_key(self, project, column, key)
            }
            pub(super) fn create_operator_token(&self, name: &str) -> Result<String> {
                create_operator_token(self, name)
            }
            pub(super) fn operator(&self, token: &str) -> Result<Option<String>> {
                operator(self, token)
            }
            pub(super) fn revoke_operator_tokens(&self, name: &str) -> Result<usize> {
                revoke_operator_tokens(self, name)
            }
        }
    )*};
}
intake_methods!(Store, super::pg::PgStore);

/// Which of a project's private keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyColumn {
    User,
    Deploy,
}

impl KeyColumn {
    fn as_str(self) -> &'static str {
        match self {
            KeyColumn::User => "user_key",
            KeyColumn::Deploy => "deploy_key",
        }
    }
}
