//! What CircleCI's API v2 reads beside the pipeline rows, on PostgreSQL (the SQLite store's
//! `api_v2.rs`, in this dialect): project tokens, lookups by the UUIDs the API hands out,
//! pages of pipelines, the fields of a pipeline the other rows leave out, each pipeline's
//! config as compiled, and setup workflows' continuation keys.

use super::pipelines::{requires_json, resolve_project, uuid_v4, PipelineToFetch};
use super::*;
use crate::store::api_store::ApiStore;
use crate::store::api_v2::{
    continuation_place, token_of, ApiProject, Continuation, ContinuationTarget, ContinueRefusal,
    PipelineConfig, PipelineDetails, ProjectToken, NEW_PROJECT_TOKEN, PROJECT_TOKEN,
};

/// A continuation's config replaces the pipeline's, which is kept as its setup config.
const UPSERT_CONFIG: &str = "INSERT INTO pipeline_configs(pipeline_id, source, compiled) \
     VALUES (?1, ?2, ?3) ON CONFLICT(pipeline_id) DO UPDATE SET \
     setup_source = pipeline_configs.source, setup_compiled = pipeline_configs.compiled, \
     source = excluded.source, compiled = excluded.compiled";

impl ApiStore for PgStore {
    fn create_project_token(
        &self,
        project: &str,
        name: &str,
        scope: crate::model::tokens::ProjectScope,
    ) -> Result<String> {
        let token = format!("bosun-prj-{}", random_hex(24)?);
        let id = format!("prj-{}", random_hex(6)?);
        let conn = self.conn()?;
        let pid = resolve_project(&conn, project)?;
        conn.execute(
            NEW_PROJECT_TOKEN,
            params![
                id,
                pid,
                name,
                sha256_hex(token.as_bytes()),
                now_ms(),
                scope.as_str()
            ],
        )?;
        Ok(token)
    }

    fn project_token(&self, token: &str) -> Result<Option<ProjectToken>> {
        Ok(self
            .reader()?
            .query_row(PROJECT_TOKEN, [sha256_hex(token.as_bytes())], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .optional()?
            .and_then(|(slug, name, scope)| token_of(slug, name, &scope)))
    }

    fn revoke_project_tokens(&self, name: &str) -> Result<usize> {
        Ok(self.conn()?.execute(
            "UPDATE project_tokens SET revoked = 1 WHERE name = ?1 OR id = ?1",
            [name],
        )?)
    }

    fn api_project(&self, project: &str) -> Result<Option<ApiProject>> {
        let conn = self.reader()?;
        let pid = match resolve_project(&conn, project) {
            Ok(pid) => pid,
            Err(CoordError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(conn.query_row(
            "SELECT slug, default_branch, clone_url FROM projects WHERE id = ?1",
            [pid],
            |r| {
                Ok(ApiProject {
                    slug: r.get(0)?,
                    default_branch: r.get(1)?,
                    clone_url: r.get(2)?,
                })
            },
        )?))
    }

    fn pipeline_by_uuid(&self, uuid: &str) -> Result<Option<i64>> {
        Ok(self
            .reader()?
            .query_row("SELECT id FROM pipelines WHERE uuid = ?1", [uuid], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn workflow_pipeline(&self, uuid: &str) -> Result<Option<i64>> {
        Ok(self
            .reader()?
            .query_row(
                "SELECT pipeline_id FROM workflows WHERE uuid = ?1",
                [uuid],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn pipeline_page(
        &self,
        project: &str,
        branch: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<i64>> {
        let conn = self.reader()?;
        let pid = resolve_project(&conn, project)?;
        let mut st = conn.prepare(
            "SELECT id FROM pipelines WHERE project_id = ?1 AND (?2::TEXT IS NULL OR branch = ?2) \
             AND (?3::BIGINT IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
        )?;
        let rows = st
            .query_map(params![pid, branch, before, limit as i64], |r| r.get(0))?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn pipeline_details(&self, id: i64) -> Result<Option<PipelineDetails>> {
        let conn = self.reader()?;
        let row = conn
            .query_row(
                "SELECT p.params, p.username, p.commit_subject, pr.clone_url, p.finished \
                 FROM pipelines p JOIN projects pr ON pr.id = p.project_id WHERE p.id = ?1",
                [id],
                |r| {
                    Ok(PipelineDetails {
                        params: serde_json::from_str(&r.get::<_, String>(0)?).unwrap_or_default(),
                        username: r.get(1)?,
                        commit_subject: r.get(2)?,
                        clone_url: r.get(3)?,
                        finished: r.get(4)?,
                        workflow_times: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut row) = row else { return Ok(None) };
        let mut st = conn.prepare(
            "SELECT id, created, finished FROM workflows WHERE pipeline_id = ?1 ORDER BY id",
        )?;
        row.workflow_times = st
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(Some(row))
    }

    fn record_pipeline_config(&self, id: i64, source: &str, compiled: &str) -> Result<()> {
        self.conn()?
            .execute(UPSERT_CONFIG, params![id, source, compiled])?;
        Ok(())
    }

    fn pipeline_config(&self, id: i64) -> Result<Option<PipelineConfig>> {
        Ok(self
            .reader()?
            .query_row(
                "SELECT source, compiled, setup_source, setup_compiled FROM pipeline_configs \
                 WHERE pipeline_id = ?1",
                [id],
                |r| {
                    Ok(PipelineConfig {
                        source: r.get(0)?,
                        compiled: r.get(1)?,
                        setup_source: r.get(2)?,
                        setup_compiled: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn job_pipeline(&self, job: i64) -> Result<Option<i64>> {
        Ok(self
            .reader()?
            .query_row("SELECT pipeline_id FROM jobs WHERE id = ?1", [job], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()?
            .flatten())
    }

    fn create_continuation(&self, pipeline: i64) -> Result<()> {
        let key = zeroize::Zeroizing::new(random_hex(32)?);
        let sealed = self.secrets.seal(&continuation_place(pipeline), &key)?;
        self.conn()?.execute(
            "INSERT OR IGNORE INTO continuations(pipeline_id, key_sha256, key_sealed, created) \
             VALUES (?1, ?2, ?3, ?4)",
            params![pipeline, sha256_hex(key.as_bytes()), sealed, now_ms()],
        )?;
        Ok(())
    }

    fn continuation(
        &self,
        key: &str,
    ) -> Result<std::result::Result<ContinuationTarget, ContinueRefusal>> {
        let conn = self.reader()?;
        let row = conn
            .query_row(
                "SELECT c.used, p.status, p.id, p.uuid, p.number, pr.slug, pr.uuid, pr.clone_url, \
                 COALESCE(p.revision, p.commit_sha, p.git_ref), p.branch, p.tag, p.trigger_source, \
                 p.event, p.event_action, p.base_revision, pr.default_branch, \
                 COALESCE(p.schedule_name, ''), COALESCE(p.schedule_id, ''), p.scheduled_workflow \
                 FROM continuations c JOIN pipelines p ON p.id = c.pipeline_id \
                 JOIN projects pr ON pr.id = p.project_id WHERE c.key_sha256 = ?1",
                [sha256_hex(key.as_bytes())],
                |r| {
                    let revision: String = r.get(8)?;
                    Ok((
                        r.get::<_, Option<i64>>(0)?,
                        r.get::<_, String>(1)?,
                        ContinuationTarget {
                            pipeline: PipelineToFetch {
                                id: r.get(2)?,
                                uuid: r.get(3)?,
                                number: r.get(4)?,
                                project_slug: r.get(5)?,
                                project_uuid: r.get(6)?,
                                clone_url: r.get(7)?,
                                keys: Vec::new(),
                                known_hosts: String::new(),
                                reference: revision.clone(),
                                branch: r.get(9)?,
                                tag: r.get(10)?,
                                params: Vec::new(),
                                trigger_source: r.get(11)?,
                                event: r.get(12)?,
                                event_action: r.get(13)?,
                                base_revision: r.get(14)?,
                                default_branch: r.get(15)?,
                                api: None,
                                // A continued pipeline keeps its values, a schedule's too.
                                schedule_name: r.get(16)?,
                                schedule_id: r.get(17)?,
                                scheduled_workflow: r.get(18)?,
                            },
                            revision,
                        },
                    ))
                },
            )
            .optional()?;
        Ok(match row {
            None => Err(ContinueRefusal::UnknownKey),
            Some((Some(_), _, _)) => Err(ContinueRefusal::AlreadyContinued),
            Some((None, status, _)) if !matches!(status.as_str(), "running" | "on_hold") => {
                Err(ContinueRefusal::NotRunning)
            }
            Some((None, _, t)) => Ok(t),
        })
    }

    fn continue_pipeline(
        &self,
        key: &str,
        c: &Continuation<'_>,
    ) -> Result<std::result::Result<i64, ContinueRefusal>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row: Option<(i64, Option<i64>, String)> = tx
            .query_row(
                "SELECT c.pipeline_id, c.used, p.status FROM continuations c \
                 JOIN pipelines p ON p.id = c.pipeline_id WHERE c.key_sha256 = ?1",
                [sha256_hex(key.as_bytes())],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let id = match row {
            None => return Ok(Err(ContinueRefusal::UnknownKey)),
            Some((_, Some(_), _)) => return Ok(Err(ContinueRefusal::AlreadyContinued)),
            Some((_, None, s)) if !matches!(s.as_str(), "running" | "on_hold") => {
                return Ok(Err(ContinueRefusal::NotRunning))
            }
            Some((id, None, _)) => id,
        };
        let now = now_ms();
        tx.execute(
            "UPDATE continuations SET used = ?2, params = ?3 WHERE pipeline_id = ?1",
            params![
                id,
                now,
                serde_json::to_string(c.params).unwrap_or_else(|_| "[]".into())
            ],
        )?;
        tx.execute(UPSERT_CONFIG, params![id, c.source, c.compiled])?;
        for w in c.workflows {
            let wid: i64 = tx.query_row(
                "INSERT INTO workflows(pipeline_id, uuid, name, status, created, continued) \
                 VALUES (?1, ?2, ?3, 'running', ?4, 1) RETURNING id",
                params![id, uuid_v4()?, w.name, now],
                |r| r.get(0),
            )?;
            for (i, j) in w.jobs.iter().enumerate() {
                tx.execute(
                    "INSERT INTO workflow_jobs(workflow_id, position, name, kind, requires, \
                     serial_group, resource_class, status, reason, contexts) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        wid,
                        i as i64,
                        j.name,
                        j.kind.as_str(),
                        requires_json(&j.requires),
                        j.serial_group,
                        j.resource_class,
                        j.status.as_str(),
                        j.reason,
                        // A continued job's contexts are authorized as any job's.
                        serde_json::to_string(&j.contexts).unwrap_or_else(|_| "[]".into())
                    ],
                )?;
            }
        }
        // Back to running: the new workflows' jobs start on the next advance.
        tx.execute(
            "UPDATE pipelines SET status = 'running', finished = NULL WHERE id = ?1",
            [id],
        )?;
        tx.commit()?;
        Ok(Ok(id))
    }
}
