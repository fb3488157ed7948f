//! Status badges behind one trait ([`BadgeStore`]), in types that say nothing of the
//! database: a project's badge token (kept as a digest: only the digest crosses the trait)
//! and whether its badges are public, and the newest pipeline of a branch in given states.
//! Which states count and what they mean are `model::badge`'s rules.

use super::db::{params, parse_col, OptionalExtension, SqlStore};
use super::pipelines::resolve_project;
use super::Result;
use bosun_protocol::PipelineState;

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

/// The state of a branch's newest pipeline among some states, given as their words
/// joined by commas (none has one): the index on (project, branch, id) finds it at once.
const NEWEST_IN_STATES: &str = "SELECT status FROM pipelines WHERE project_id = ?1 \
     AND branch = ?2 AND instr(',' || ?3 || ',', ',' || status || ',') > 0 \
     ORDER BY id DESC LIMIT 1";
const NEWEST_IN_STATES_PG: &str = "SELECT status FROM pipelines WHERE project_id = ?1 \
     AND branch = ?2 AND status = ANY(string_to_array(?3, ',')) ORDER BY id DESC LIMIT 1";

impl<S: SqlStore> BadgeStore for S {
    fn set_badge_token_digest(&self, project: &str, digest: &str) -> Result<()> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            conn.execute(
                "INSERT INTO project_badges(project_id, token_digest) VALUES (?1, ?2) \
                 ON CONFLICT(project_id) DO UPDATE SET token_digest = excluded.token_digest",
                params![pid, digest],
            )?;
            Ok(())
        })
    }

    fn set_public_badges(&self, project: &str, public: bool) -> Result<()> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            conn.execute(
                "INSERT INTO project_badges(project_id, public) VALUES (?1, ?2) \
                 ON CONFLICT(project_id) DO UPDATE SET public = excluded.public",
                params![pid, public],
            )?;
            Ok(())
        })
    }

    fn badge_project(&self, project: &str) -> Result<Option<BadgeProject>> {
        self.read(|conn| {
            let pid = match resolve_project(conn, project) {
                Ok(pid) => pid,
                Err(crate::error::CoordError::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(conn
                .query_row(
                    "SELECT p.id, p.slug, p.default_branch, COALESCE(b.public, 0), \
                     b.token_digest \
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
        })
    }

    fn newest_pipeline_state(
        &self,
        pid: i64,
        branch: &str,
        states: &[PipelineState],
    ) -> Result<Option<PipelineState>> {
        let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let status: Option<String> = self.read(|conn| {
            Ok(conn
                .query_row(
                    conn.pick(NEWEST_IN_STATES, NEWEST_IN_STATES_PG),
                    params![pid, branch, words.join(",")],
                    |r| r.get(0),
                )
                .optional()?)
        })?;
        Ok(status.map(parse_col).transpose()?)
    }

    fn recorded_public_url(&self) -> Result<Option<String>> {
        self.read(|conn| {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = 'public_url'", [], |r| {
                    r.get(0)
                })
                .optional()?)
        })
    }
}
