//! Status badges behind one trait ([`BadgeStore`]), in types that say nothing of the
//! database: a project's badge token (kept as a digest: only the digest crosses the trait)
//! and whether its badges are public, and the newest pipeline of a branch in given states.
//! Which states count and what they mean are `model::badge`'s rules.

use super::pipelines::{parse_col, resolve_project};
use super::{Result, Store};
use bosun_protocol::PipelineState;
use rusqlite::{params, OptionalExtension};

/// A project as a badge request needs it.
#[derive(Debug, Clone)]
pub struct BadgeProject {
    pub id: i64,
    pub slug: String,
    pub default_branch: String,
    pub public: bool,
    /// SHA-256 (hex) of the badge token; `None` until `project badge-token` made one.
    pub token_digest: Option<String>,
}

pub trait BadgeStore: Send + Sync {
    /// Replace the project's badge token by one with digest `digest`.
    fn set_badge_token_digest(&self, project: &str, digest: &str) -> Result<()>;
    /// Make the project's badges public (no token needed) or private again.
    fn set_public_badges(&self, project: &str, public: bool) -> Result<()>;
    /// The project named `project` (slug, old slug or UUID), if any.
    fn badge_project(&self, project: &str) -> Result<Option<BadgeProject>>;
    /// The state of the project's newest pipeline on `branch` among those in `states`.
    fn newest_pipeline_state(
        &self,
        pid: i64,
        branch: &str,
        states: &[PipelineState],
    ) -> Result<Option<PipelineState>>;
    /// The public URL the server last started with, if it ever did.
    fn recorded_public_url(&self) -> Result<Option<String>>;
}

impl BadgeStore for Store {
    fn set_badge_token_digest(&self, project: &str, digest: &str) -> Result<()> {
        let conn = self.conn();
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            "INSERT INTO project_badges(project_id, token_digest) VALUES (?1, ?2) \
             ON CONFLICT(project_id) DO UPDATE SET token_digest = excluded.token_digest",
            params![pid, digest],
        )?;
        Ok(())
    }

    fn set_public_badges(&self, project: &str, public: bool) -> Result<()> {
        let conn = self.conn();
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            "INSERT INTO project_badges(project_id, public) VALUES (?1, ?2) \
             ON CONFLICT(project_id) DO UPDATE SET public = excluded.public",
            params![pid, public],
        )?;
        Ok(())
    }

    fn badge_project(&self, project: &str) -> Result<Option<BadgeProject>> {
        let conn = self.conn();
        let pid = match resolve_project(&conn, project) {
            Ok(pid) => pid,
            Err(crate::error::CoordError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(conn
            .query_row(
                "SELECT p.id, p.slug, p.default_branch, COALESCE(b.public, 0), b.token_digest \
                 FROM projects p LEFT JOIN project_badges b ON b.project_id = p.id \
                 WHERE p.id = ?1",
                [pid],
                |r| {
                    Ok(BadgeProject {
                        id: r.get(0)?,
                        slug: r.get(1)?,
                        default_branch: r.get(2)?,
                        public: r.get(3)?,
                        token_digest: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    fn newest_pipeline_state(
        &self,
        pid: i64,
        branch: &str,
        states: &[PipelineState],
    ) -> Result<Option<PipelineState>> {
        let conn = self.conn();
        let mut st = conn.prepare_cached(
            "SELECT status FROM pipelines WHERE project_id = ?1 AND branch = ?2 \
             ORDER BY id DESC",
        )?;
        let mut rows = st.query(params![pid, branch])?;
        // Newest first; the running ones at the head are few (a branch runs a handful at
        // once), so filtering here keeps the state list out of the SQL.
        while let Some(r) = rows.next()? {
            let s: PipelineState = parse_col(r.get(0)?)?;
            if states.contains(&s) {
                return Ok(Some(s));
            }
        }
        Ok(None)
    }

    fn recorded_public_url(&self) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = 'public_url'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }
}
