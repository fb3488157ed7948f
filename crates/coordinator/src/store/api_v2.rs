//! What CircleCI's API v2 (`crate::api_v2`) reads beside the pipeline rows: project tokens,
//! lookups by the UUIDs the API hands out, pages of pipelines, the fields of a pipeline the
//! other rows leave out, each pipeline's config as it was compiled, and setup workflows'
//! continuation keys. One implementation of [`ApiStore`] for SQLite and PostgreSQL
//! ([`SqlStore`]).

use super::db::{params, Db, Lock, OptionalExtension, SqlStore};
use super::pipelines::resolve_project;
use super::*;

/// What a pipeline's API shape needs beyond [`super::pipelines::PipelineRow`].
#[derive(Debug, Clone, Default)]
pub struct PipelineDetails {
    /// The trigger's parameters, as text.
    pub params: Vec<(String, String)>,
    /// Who triggered it (the webhook's actor, the operator, `$USER` of the CLI).
    pub username: Option<String>,
    pub commit_subject: Option<String>,
    pub clone_url: String,
    pub finished: Option<i64>,
    /// Each workflow's (id, created, finished).
    pub workflow_times: Vec<(i64, i64, Option<i64>)>,
}

/// A project as the API names it.
#[derive(Debug, Clone)]
pub struct ApiProject {
    /// The current slug, `workspace/repo`.
    pub slug: String,
    pub default_branch: String,
    pub clone_url: String,
}

/// A project token as a request's check needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectToken {
    /// Its project's current slug.
    pub slug: String,
    pub name: String,
    pub scope: crate::model::tokens::ProjectScope,
}

/// A stored scope word this side does not know gives nothing: read as `None`.
pub(crate) fn token_of(slug: String, name: String, scope: &str) -> Option<ProjectToken> {
    Some(ProjectToken {
        slug,
        name,
        scope: scope.parse().ok()?,
    })
}

pub(crate) const PROJECT_TOKEN: &str =
    "SELECT p.slug, t.name, t.scope FROM project_tokens t JOIN projects p ON p.id = t.project_id \
     WHERE t.token_sha256 = ?1 AND t.revoked = 0";
pub(crate) const NEW_PROJECT_TOKEN: &str =
    "INSERT INTO project_tokens(id, project_id, name, token_sha256, created, scope) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// A pipeline's config as it was compiled: the source text and the processed one.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: String,
    pub compiled: String,
    /// The setup config, when the pipeline was continued from one (`setup: true`).
    pub setup_source: Option<String>,
    pub setup_compiled: Option<String>,
}

/// Why a continuation is refused (the API answers each with CircleCI's error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContinueRefusal {
    /// No pipeline has this key.
    UnknownKey,
    /// The key continued its pipeline already (one use).
    AlreadyContinued,
    /// The pipeline is no longer running (finished, canceled).
    NotRunning,
}

/// A pipeline a continuation key names: what compiling its next config needs.
pub struct ContinuationTarget {
    pub pipeline: super::pipelines::PipelineToFetch,
    /// The commit the setup config was read at.
    pub revision: String,
}

/// A continued config and its parameters.
pub(super) type ContinuedConfig = (String, Vec<(String, String)>);

/// What a continuation adds to its pipeline.
pub struct Continuation<'a> {
    /// The config as sent, and as processed.
    pub source: &'a str,
    pub compiled: &'a str,
    /// The parameters sent with it (the continued config's pipeline parameters).
    pub params: &'a [(String, String)],
    pub workflows: &'a [super::pipelines::NewWorkflow],
}

/// Where a pipeline's continuation key is sealed.
pub(super) fn continuation_place(pipeline: i64) -> String {
    format!("continuation:{pipeline}")
}

/// `CIRCLE_CONTINUATION_KEY` for job `job`, when it is a job of a setup workflow whose
/// pipeline has not been continued yet (a secret value: masked in the log). Read by the
/// claim, inside its transaction.
pub(super) fn continuation_env(
    conn: &dyn Db,
    secrets: &SecretsKey,
    job: i64,
) -> Result<Option<WireEnv>> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT c.pipeline_id, c.key_sealed FROM jobs j \
             JOIN workflow_jobs wj ON wj.job_id = j.id \
             JOIN workflows w ON w.id = wj.workflow_id \
             JOIN continuations c ON c.pipeline_id = w.pipeline_id \
             WHERE j.id = ?1 AND w.continued = 0 AND c.used IS NULL",
            [job],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((pipeline, sealed)) = row else {
        return Ok(None);
    };
    let key = secrets.open(&continuation_place(pipeline), &sealed)?;
    Ok(Some(WireEnv {
        name: "CIRCLE_CONTINUATION_KEY".into(),
        value: key.as_str().to_owned(),
        secret: true,
    }))
}

impl Store {
    /// What the agent needs of a pipeline job (see [`bosun_protocol::WirePipeline`]), and
    /// whether the job runs without the project's secrets.
    pub(super) fn wire_pipeline(
        conn: &dyn Db,
        job: i64,
    ) -> Result<Option<(bosun_protocol::WirePipeline, bool)>> {
        conn
            .query_row(
                "SELECT p.uuid, w.name, w.uuid, p.params, p.trigger_source, COALESCE(p.base_revision, ''), j.restricted, \
                 COALESCE(p.schedule_name, ''), COALESCE(p.schedule_id, '') \
                 FROM jobs j JOIN workflow_jobs wj ON wj.job_id = j.id \
                 JOIN workflows w ON w.id = wj.workflow_id JOIN pipelines p ON p.id = w.pipeline_id \
                 WHERE j.id = ?1",
                [job],
                |r| {
                    Ok((
                        bosun_protocol::WirePipeline {
                            id: r.get(0)?,
                            workflow: r.get(1)?,
                            workflow_id: r.get(2)?,
                            parameters: serde_json::from_str(&r.get::<_, String>(3)?)
                                .unwrap_or_default(),
                            trigger_source: r.get(4)?,
                            base_revision: r.get(5)?,
                            schedule_name: r.get(7)?,
                            schedule_id: r.get(8)?,
                            config: None,
                        },
                        r.get(6)?,
                    ))
                },
            )
            .optional()?
            .map(|(mut p, restricted)| {
                if let Some((config, params)) = Store::continued_config(conn, job)? {
                    p.config = Some(config);
                    p.parameters = params;
                }
                Ok((p, restricted))
            })
            .transpose()
    }

    /// The continued config and its parameters, for a job of a workflow a continuation
    /// added (the agent cannot read that config from the repository).
    pub(super) fn continued_config(conn: &dyn Db, job: i64) -> Result<Option<ContinuedConfig>> {
        Ok(conn
            .query_row(
                "SELECT pc.source, c.params FROM jobs j JOIN workflow_jobs wj ON wj.job_id = j.id \
                 JOIN workflows w ON w.id = wj.workflow_id \
                 JOIN pipeline_configs pc ON pc.pipeline_id = w.pipeline_id \
                 JOIN continuations c ON c.pipeline_id = w.pipeline_id \
                 WHERE j.id = ?1 AND w.continued = 1",
                [job],
                |r| {
                    let params: Option<String> = r.get(1)?;
                    Ok((
                        r.get(0)?,
                        params
                            .and_then(|p| serde_json::from_str(&p).ok())
                            .unwrap_or_default(),
                    ))
                },
            )
            .optional()?)
    }
}

/// A continuation's config replaces the pipeline's, which is kept as its setup config.
/// (`pipeline_configs.source` names the row as it was: PostgreSQL wants the table's name
/// there, SQLite takes it too.)
const UPSERT_CONFIG: &str = "INSERT INTO pipeline_configs(pipeline_id, source, compiled) \
     VALUES (?1, ?2, ?3) ON CONFLICT(pipeline_id) DO UPDATE SET \
     setup_source = pipeline_configs.source, setup_compiled = pipeline_configs.compiled, \
     source = excluded.source, compiled = excluded.compiled";

/// One implementation for SQLite and PostgreSQL ([`SqlStore`]).
impl<S: SqlStore> ApiStore for S {
    fn create_project_token(
        &self,
        project: &str,
        name: &str,
        scope: crate::model::tokens::ProjectScope,
    ) -> Result<String> {
        let token = format!("bosun-prj-{}", random_hex(24)?);
        let id = format!("prj-{}", random_hex(6)?);
        self.transaction(Lock::Writer, |tx| {
            let pid = resolve_project(tx, project)?;
            tx.execute(
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
            Ok(())
        })?;
        Ok(token)
    }

    fn project_token(&self, token: &str) -> Result<Option<ProjectToken>> {
        self.read(|conn| {
            Ok(conn
                .query_row(PROJECT_TOKEN, [sha256_hex(token.as_bytes())], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })
                .optional()?
                .and_then(|(slug, name, scope)| token_of(slug, name, &scope)))
        })
    }

    fn revoke_project_tokens(&self, name: &str) -> Result<usize> {
        self.conn(|conn| {
            Ok(conn.execute(
                "UPDATE project_tokens SET revoked = 1 WHERE name = ?1 OR id = ?1",
                [name],
            )?)
        })
    }

    fn api_project(&self, project: &str) -> Result<Option<ApiProject>> {
        self.read(|conn| {
            let pid = match resolve_project(conn, project) {
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
        })
    }

    fn pipeline_by_uuid(&self, uuid: &str) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .query_row("SELECT id FROM pipelines WHERE uuid = ?1", [uuid], |r| {
                    r.get(0)
                })
                .optional()?)
        })
    }

    fn workflow_pipeline(&self, uuid: &str) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT pipeline_id FROM workflows WHERE uuid = ?1",
                    [uuid],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }

    fn pipeline_page(
        &self,
        project: &str,
        branch: Option<&str>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<i64>> {
        self.read(|conn| {
            let pid = resolve_project(conn, project)?;
            // The casts give PostgreSQL the type of a parameter that may be NULL.
            Ok(conn.query_map(
                "SELECT id FROM pipelines WHERE project_id = ?1 \
                 AND (CAST(?2 AS TEXT) IS NULL OR branch = ?2) \
                 AND (CAST(?3 AS BIGINT) IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4",
                params![pid, branch, before, limit],
                |r| r.get(0),
            )?)
        })
    }

    fn pipeline_details(&self, id: i64) -> Result<Option<PipelineDetails>> {
        self.read(|conn| {
            let row = conn
                .query_row(
                    "SELECT p.params, p.username, p.commit_subject, pr.clone_url, p.finished \
                     FROM pipelines p JOIN projects pr ON pr.id = p.project_id WHERE p.id = ?1",
                    [id],
                    |r| {
                        Ok(PipelineDetails {
                            params: serde_json::from_str(&r.get::<_, String>(0)?)
                                .unwrap_or_default(),
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
            row.workflow_times = conn.query_map(
                "SELECT id, created, finished FROM workflows WHERE pipeline_id = ?1 ORDER BY id",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            Ok(Some(row))
        })
    }

    fn record_pipeline_config(&self, id: i64, source: &str, compiled: &str) -> Result<()> {
        self.conn(|conn| {
            conn.execute(UPSERT_CONFIG, params![id, source, compiled])?;
            Ok(())
        })
    }

    fn pipeline_config(&self, id: i64) -> Result<Option<PipelineConfig>> {
        self.read(|conn| {
            Ok(conn
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
        })
    }

    fn job_pipeline(&self, job: i64) -> Result<Option<i64>> {
        self.read(|conn| {
            Ok(conn
                .query_row("SELECT pipeline_id FROM jobs WHERE id = ?1", [job], |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .optional()?
                .flatten())
        })
    }

    fn create_continuation(&self, pipeline: i64) -> Result<()> {
        let key = zeroize::Zeroizing::new(random_hex(32)?);
        let sealed = self.secrets().seal(&continuation_place(pipeline), &key)?;
        self.conn(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO continuations(pipeline_id, key_sha256, key_sealed, created) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![pipeline, sha256_hex(key.as_bytes()), sealed, now_ms()],
            )?;
            Ok(())
        })
    }

    fn continuation(
        &self,
        key: &str,
    ) -> Result<std::result::Result<ContinuationTarget, ContinueRefusal>> {
        let row = self.read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT c.used, p.status, p.id, p.uuid, p.number, pr.slug, pr.uuid, \
                     pr.clone_url, COALESCE(p.revision, p.commit_sha, p.git_ref), p.branch, \
                     p.tag, p.trigger_source, p.event, p.event_action, p.base_revision, \
                     pr.default_branch, COALESCE(p.schedule_name, ''), \
                     COALESCE(p.schedule_id, ''), p.scheduled_workflow \
                     FROM continuations c JOIN pipelines p ON p.id = c.pipeline_id \
                     JOIN projects pr ON pr.id = p.project_id WHERE c.key_sha256 = ?1",
                    [sha256_hex(key.as_bytes())],
                    |r| {
                        let revision: String = r.get(8)?;
                        Ok((
                            r.get::<_, Option<i64>>(0)?,
                            r.get::<_, String>(1)?,
                            ContinuationTarget {
                                pipeline: super::pipelines::PipelineToFetch {
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
                .optional()?)
        })?;
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
        self.transaction(Lock::Writer, |tx| {
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
                super::pipelines::insert_workflow(tx, id, w, now, true)?;
            }
            // Back to running: the new workflows' jobs start on the next advance.
            tx.execute(
                "UPDATE pipelines SET status = 'running', finished = NULL WHERE id = ?1",
                [id],
            )?;
            Ok(Ok(id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::JobKind;
    use crate::store::pipelines::{
        NewPipeline, NewWorkflow, NewWorkflowJob, StatusBody, StatusChange, Statuses,
    };
    use bosun_protocol::WorkflowJobStatus;

    fn no_status(_: &StatusChange<'_>) -> Option<StatusBody> {
        None
    }
    const STATUSES: Statuses<'static> = Statuses {
        public_url: "",
        write: no_status,
    };

    fn workflow(name: &str, job: &str) -> NewWorkflow {
        NewWorkflow {
            name: name.into(),
            jobs: vec![NewWorkflowJob {
                name: job.into(),
                kind: JobKind::Build,
                requires: vec![],
                serial_group: None,
                resource_class: None,
                status: WorkflowJobStatus::Waiting,
                reason: None,
                contexts: vec![],
            }],
        }
    }

    #[test]
    fn a_continuation_key_reaches_setup_jobs_only_and_continues_its_pipeline_once() {
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
        let (id, _) = s
            .create_pipeline(&NewPipeline {
                project: "acme/widget".into(),
                git_ref: "refs/heads/main".into(),
                trigger_source: "api".into(),
                ..Default::default()
            })
            .expect("pipeline");
        let sha = "a".repeat(40);
        s.record_pipeline_config(id, "setup: true", "setup processed")
            .expect("config");
        s.pipeline_compiled(id, &sha, &[workflow("setup", "generate")])
            .expect("compiled");
        s.create_continuation(id).expect("continuation");
        s.advance(id, &STATUSES).expect("advance");

        let setup = s
            .claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("the setup job");
        assert_eq!(setup.job_name, "generate");
        let key = setup
            .env
            .iter()
            .find(|e| e.name == "CIRCLE_CONTINUATION_KEY")
            .expect("the key")
            .clone();
        assert!(key.secret, "the key is a secret value");
        assert_eq!(key.value.len(), 64);
        assert_eq!(setup.pipeline.as_ref().and_then(|p| p.config.clone()), None);
        // The store keeps it sealed: neither the key nor its digest's preimage in the clear.
        let raw: String = s
            .conn()
            .query_row("SELECT key_sealed FROM continuations", [], |r| r.get(0))
            .expect("row");
        assert!(!raw.contains(&key.value));

        let unknown = "0".repeat(64);
        assert!(matches!(
            s.continuation(&unknown).expect("lookup"),
            Err(ContinueRefusal::UnknownKey)
        ));
        let target = s
            .continuation(&key.value)
            .expect("lookup")
            .expect("a target");
        assert_eq!(target.revision, sha);
        assert_eq!(target.pipeline.branch.as_deref(), Some("main"));

        let params = vec![("target".to_owned(), "x".to_owned())];
        let mut after = [workflow("after", "deploy")];
        after[0].jobs[0].contexts = vec!["deploy-creds".into()];
        let notify = workflow("after", "notify").jobs.remove(0);
        after[0].jobs.push(notify);
        let c = Continuation {
            source: "continued",
            compiled: "continued processed",
            params: &params,
            workflows: &after,
        };
        assert_eq!(
            s.continue_pipeline(&key.value, &c).expect("continue"),
            Ok(id)
        );
        assert_eq!(
            s.continue_pipeline(&key.value, &c).expect("again"),
            Err(ContinueRefusal::AlreadyContinued)
        );
        assert_eq!(
            s.continue_pipeline(&unknown, &c).expect("unknown"),
            Err(ContinueRefusal::UnknownKey)
        );
        assert!(matches!(
            s.continuation(&key.value).expect("lookup"),
            Err(ContinueRefusal::AlreadyContinued)
        ));

        // The continued jobs keep the contexts their config names, authorized as any job's:
        // `deploy` names one that does not exist and ends unauthorized; `notify` runs.
        let kept: String = s
            .conn()
            .query_row(
                "SELECT contexts FROM workflow_jobs WHERE name = 'deploy'",
                [],
                |r| r.get(0),
            )
            .expect("row");
        assert_eq!(kept, r#"["deploy-creds"]"#);
        s.advance(id, &STATUSES).expect("advance");
        let row = s.pipeline(id).expect("pipeline").expect("row");
        let statuses: Vec<_> = row.workflows[1].jobs.iter().map(|j| j.status).collect();
        assert_eq!(
            statuses,
            [WorkflowJobStatus::Unauthorized, WorkflowJobStatus::Queued],
            "{row:#?}"
        );
        let notify = s
            .claim("a1", Duration::from_secs(30))
            .expect("claim")
            .expect("the continued job");
        assert_eq!(notify.job_name, "notify");
        let p = notify.pipeline.expect("pipeline");
        assert_eq!(p.config.as_deref(), Some("continued"));
        assert_eq!(p.parameters, params);
        assert_eq!(p.workflow, "after");
        assert!(notify
            .env
            .iter()
            .all(|e| e.name != "CIRCLE_CONTINUATION_KEY"));

        let cfg = s.pipeline_config(id).expect("config").expect("kept");
        assert_eq!(
            (cfg.source.as_str(), cfg.setup_source.as_deref()),
            ("continued", Some("setup: true"))
        );
        let row = s.pipeline(id).expect("pipeline").expect("row");
        let names: Vec<&str> = row.workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["setup", "after"]);
    }
}
