//! Status badges on PostgreSQL (the SQLite store's `badges.rs`, in this dialect): a
//! project's badge token as a digest, whether its badges are public, and the newest pipeline
//! of a branch in given states. Which states count is `model::badge`'s rule.

use super::pipelines::{parse_col, resolve_project};
use super::*;
use crate::store::badges::{BadgeProject, BadgeStore};
use bosun_protocol::PipelineState;

impl BadgeStore for PgStore {
    fn set_badge_token_digest(&self, project: &str, digest: &str) -> Result<()> {
        let conn = self.conn()?;
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            "INSERT INTO project_badges(project_id, token_digest) VALUES (?1, ?2) \
             ON CONFLICT(project_id) DO UPDATE SET token_digest = excluded.token_digest",
            params![pid, digest],
        )?;
        Ok(())
    }

    fn set_public_badges(&self, project: &str, public: bool) -> Result<()> {
        let conn = self.conn()?;
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            "INSERT INTO project_badges(project_id, public) VALUES (?1, ?2) \
             ON CONFLICT(project_id) DO UPDATE SET public = excluded.public",
            params![pid, public],
        )?;
        Ok(())
    }

    fn badge_project(&self, project: &str) -> Result<Option<BadgeProject>> {
        let conn = self.reader()?;
        let pid = match resolve_project(&conn, project) {
            Ok(pid) => pid,
            Err(CoordError::NotFound(_)) => return Ok(None),
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
        // The states go as one parameter (their words, comma-separated: none has a comma),
        // so the index on (project, branch, id) finds the newest at once; the client reads
        // whole results, unlike SQLite's stepping through rows.
        let words: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let status: Option<String> = self
            .reader()?
            .query_row(
                "SELECT status FROM pipelines WHERE project_id = ?1 AND branch = ?2 \
                 AND status = ANY(string_to_array(?3, ',')) ORDER BY id DESC LIMIT 1",
                params![pid, branch, words.join(",")],
                |r| r.get(0),
            )
            .optional()?;
        Ok(status.map(parse_col).transpose()?)
    }

    fn recorded_public_url(&self) -> Result<Option<String>> {
        Ok(self
            .reader()?
            .query_row("SELECT value FROM meta WHERE key = 'public_url'", [], |r| {
                r.get(0)
            })
            .optional()?)
    }
}
