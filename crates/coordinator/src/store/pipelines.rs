//! Pipelines as the store keeps them: a pipeline (what was triggered), its workflows, and
//! their jobs, each queued as a `jobs` row when its requirements are met. [`advance`] is the
//! one place statuses move forward: it reads the jobs' rows, lets the state machine
//! ([`crate::model::advance`], pure) decide, and applies its transitions (statuses, the jobs
//! agents claim, the commit statuses to send), all in one transaction. Written once for both
//! databases over [`super::db::Db`].

use super::db::{params, parse_col, Db, Lock, OptionalExtension, SqlStore};
use super::*;
use crate::model::advance;
pub use crate::model::JobKind;
use crate::model::{ApiSource, StatusApi};
use bosun_config::RequiredStatus;
use bosun_protocol::{PipelineState, WorkflowJobStatus, WorkflowState};

/// What a trigger or a webhook asks for.
#[derive(Debug, Clone, Default)]
pub struct NewPipeline {
    /// A slug (current or old) or the repository UUID.
    pub project: String,
    /// `refs/heads/x`, `refs/tags/x` or a bare branch name.
    pub git_ref: String,
    pub commit_sha: Option<String>,
    pub params: Vec<(String, String)>,
    /// `webhook` or `api`.
    pub trigger_source: String,
    /// `push`, `pull_request` or `api`; and `pipeline.event.action`.
    pub event: String,
    pub event_action: String,
    pub pr_number: Option<u64>,
    pub pr_url: Option<String>,
    pub pr_fork: bool,
    /// A forked pull request's build without the project's secrets (no secret env values,
    /// no user key).
    pub restricted: bool,
    pub username: Option<String>,
    /// The Bitbucket account of the person who triggered it (`people.bitbucket_uuid`: the
    /// actor of a push or pull request, the owner of a personal token), whether or not they
    /// ever logged in; `None` for the host's CLI, operator and project tokens, schedules.
    pub triggered_by: Option<String>,
    pub commit_subject: Option<String>,
    /// `pipeline.schedule.name` and `.id` of a scheduled pipeline (empty otherwise).
    pub schedule_name: String,
    pub schedule_id: String,
    /// The one workflow a scheduled workflow's pipeline runs (`None`: every workflow
    /// without `triggers`).
    pub scheduled_workflow: Option<String>,
}

/// A pipeline whose config is to be fetched: what the fetch needs.
pub struct PipelineToFetch {
    pub id: i64,
    pub uuid: String,
    pub number: i64,
    pub project_slug: String,
    /// The project's repository UUID (stable across renames).
    pub project_uuid: String,
    pub clone_url: String,
    /// (user key, deploy key), opened.
    pub keys: Vec<(bosun_protocol::WireKeyRole, zeroize::Zeroizing<String>)>,
    pub known_hosts: String,
    pub reference: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub params: Vec<(String, String)>,
    pub trigger_source: String,
    pub event: String,
    pub event_action: String,
    pub base_revision: Option<String>,
    pub default_branch: String,
    /// Bitbucket's REST API with the project's credentials, when it has both: the config is
    /// read there first (`coordinator::pipelines::api`).
    pub api: Option<ApiSource>,
    /// As [`NewPipeline`]'s.
    pub schedule_name: String,
    pub schedule_id: String,
    pub scheduled_workflow: Option<String>,
}

/// A compiled workflow job, as the store keeps it.
#[derive(Debug, Clone)]
pub struct NewWorkflowJob {
    pub name: String,
    pub kind: JobKind,
    pub requires: Vec<(String, Vec<RequiredStatus>)>,
    pub serial_group: Option<String>,
    /// A self-hosted runner class (`namespace/name`) from the job's `resource_class:`: only
    /// agents registered with that class claim it, as CircleCI routes a job to its runners.
    /// `None`: any agent (a sized class such as `medium` limits the container, not the agent).
    pub resource_class: Option<String>,
    /// `waiting`, or `not_run` / `not_runnable` decided at compile time.
    pub status: WorkflowJobStatus,
    pub reason: Option<String>,
    /// The contexts its `context:` names, in the config's order (a later one wins).
    pub contexts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub name: String,
    pub jobs: Vec<NewWorkflowJob>,
}

/// A pipeline as the CLI and pages show it.
#[derive(Debug, Clone)]
pub struct PipelineRow {
    pub id: i64,
    pub number: i64,
    pub uuid: String,
    pub project: String,
    pub git_ref: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub revision: Option<String>,
    pub trigger_source: String,
    pub event: String,
    pub status: PipelineState,
    pub error: Option<String>,
    pub pr_number: Option<u64>,
    pub pr_fork: bool,
    pub restricted: bool,
    /// The Bitbucket account of the person its jobs run for when no approval is upstream:
    /// who triggered it, or who last reran it ([`NewPipeline::triggered_by`]).
    pub triggered_by: Option<String>,
    pub created: i64,
    pub workflows: Vec<WorkflowRow>,
}

#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: i64,
    pub uuid: String,
    pub name: String,
    pub status: WorkflowState,
    pub jobs: Vec<WorkflowJobRow>,
}

#[derive(Debug, Clone)]
pub struct WorkflowJobRow {
    pub id: i64,
    pub name: String,
    pub kind: JobKind,
    pub requires: Vec<(String, Vec<RequiredStatus>)>,
    pub serial_group: Option<String>,
    pub status: WorkflowJobStatus,
    pub reason: Option<String>,
    pub job_id: Option<i64>,
    pub approved_by: Option<String>,
}

/// Add workflow `w` (running) and its jobs to pipeline `pipeline`; `continued`: a
/// continuation added it (its jobs get the continued config).
pub(super) fn insert_workflow(
    tx: &dyn Db,
    pipeline: i64,
    w: &NewWorkflow,
    now: i64,
    continued: bool,
) -> Result<()> {
    let wid: i64 = tx.query_row(
        "INSERT INTO workflows(pipeline_id, uuid, name, status, created, continued) \
         VALUES (?1, ?2, ?3, 'running', ?4, ?5) RETURNING id",
        params![pipeline, uuid_v4()?, w.name, now, continued],
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
    Ok(())
}

pub(super) fn requires_json(r: &[(String, Vec<RequiredStatus>)]) -> String {
    let v: Vec<(String, Vec<&str>)> = r
        .iter()
        .map(|(n, s)| (n.clone(), s.iter().map(|s| s.as_str()).collect()))
        .collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

pub(super) fn requires_from_json(s: &str) -> Vec<(String, Vec<RequiredStatus>)> {
    let v: Vec<(String, Vec<String>)> = serde_json::from_str(s).unwrap_or_default();
    v.into_iter()
        .map(|(n, words)| {
            let st = words
                .iter()
                .filter_map(|w| RequiredStatus::parse(w))
                .flat_map(|s| s.iter().copied())
                .collect();
            (n, st)
        })
        .collect()
}

/// A project id from a slug (current or old) or a repository UUID.
pub(super) fn resolve_project(conn: &dyn super::db::Db, project: &str) -> Result<i64> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM projects WHERE slug = ?1 OR uuid = ?1 \
             UNION ALL SELECT project_id FROM project_slugs WHERE slug = ?1 LIMIT 1",
            [project],
            |r| r.get(0),
        )
        .optional()?;
    id.ok_or_else(|| {
        CoordError::NotFound(format!(
            "no project {project} (add it with `bosun coordinator project add`)"
        ))
    })
}

/// A commit status to send to Bitbucket (see `coordinator::bitbucket::status`).
#[derive(Debug, Clone)]
pub struct OutgoingStatus {
    pub id: i64,
    pub api: StatusApi,
    pub credentials: zeroize::Zeroizing<String>,
    pub workspace_repo: String,
    pub commit_sha: String,
    pub body: String,
    pub attempts: u32,
}

/// A workflow job's new status, as the store knows it: what a commit status is made of
/// (`bitbucket::status::commit_status` writes Bitbucket's).
#[derive(Debug, Clone, Copy)]
pub struct StatusChange<'a> {
    pub workflow: &'a str,
    pub job: &'a str,
    pub kind: JobKind,
    pub status: WorkflowJobStatus,
    /// The page that shows it: the job's once it has one, else the pipeline's.
    pub url: &'a str,
    /// The pipeline's branch, when it has one.
    pub branch: Option<&'a str>,
}

/// A commit status as the outbox keeps it: its key (one per workflow job: a later status
/// with the same key replaces the earlier one at the forge) and the body that is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusBody {
    pub key: String,
    pub body: String,
}

/// How status changes reach the outbox: where the server's pages are reached (statuses link
/// them; empty: the address the server recorded at its start, as the CLI does not know it),
/// and how a change is written for the forge (`None`: the forge is not told of it).
#[derive(Clone, Copy)]
pub struct Statuses<'a> {
    pub public_url: &'a str,
    pub write: fn(&StatusChange<'_>) -> Option<StatusBody>,
}

/// A project's next pipeline number: one sequence per project, shared with jobs queued on
/// their own (SQLite's two-argument `MAX` is PostgreSQL's `GREATEST`).
const NEXT_NUMBER: &str = "SELECT MAX(\
     COALESCE((SELECT MAX(number) FROM pipelines WHERE project_id = ?1), 0), \
     COALESCE((SELECT MAX(pipeline_number) FROM jobs WHERE project_id = ?1), 0)) + 1";
const NEXT_NUMBER_PG: &str = "SELECT GREATEST(\
     COALESCE((SELECT MAX(number) FROM pipelines WHERE project_id = ?1), 0), \
     COALESCE((SELECT MAX(pipeline_number) FROM jobs WHERE project_id = ?1), 0)) + 1";

/// Record a pipeline (status `created`); the runner fetches and compiles its config.
/// Returns (id, number).
pub(super) fn create_pipeline(s: &impl SqlStore, p: &NewPipeline) -> Result<(i64, i64)> {
    s.transaction(Lock::Writer, |tx| insert_pipeline(tx, p))
}

/// [`create_pipeline`] inside the caller's transaction (a schedule's tick claims
/// itself in the same one).
pub(super) fn insert_pipeline(tx: &dyn Db, p: &NewPipeline) -> Result<(i64, i64)> {
    let pid = resolve_project(tx, &p.project)?;
    let number: i64 = tx.query_row(tx.pick(NEXT_NUMBER, NEXT_NUMBER_PG), [pid], |r| r.get(0))?;
    let (branch, tag) = split_ref(&p.git_ref);
    let slug: String = tx.query_row("SELECT slug FROM projects WHERE id = ?1", [pid], |r| {
        r.get(0)
    })?;
    let pr_url = match (p.pr_number, &p.pr_url) {
        (Some(n), None) => Some(bitbucket_pr_url(&slug, n)),
        (_, u) => u.clone(),
    };
    let base: Option<String> = tx
        .query_row(
            "SELECT revision FROM pipelines WHERE project_id = ?1 AND branch IS ?2 \
                 AND revision IS NOT NULL ORDER BY id DESC LIMIT 1",
            params![pid, branch],
            |r| r.get(0),
        )
        .optional()?;
    let uuid = uuid_v4()?;
    let id: i64 = tx.query_row(
        "INSERT INTO pipelines(project_id, number, uuid, git_ref, branch, tag, commit_sha, \
             base_revision, trigger_source, event, event_action, params, pr_number, pr_url, \
             pr_fork, restricted, username, commit_subject, status, created, schedule_name, \
             schedule_id, scheduled_workflow, triggered_by) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
             ?18, 'created', ?19, ?20, ?21, ?22, ?23) RETURNING id",
        params![
            pid,
            number,
            uuid,
            p.git_ref,
            branch,
            tag,
            p.commit_sha,
            base,
            p.trigger_source,
            p.event,
            p.event_action,
            serde_json::to_string(&p.params).unwrap_or_else(|_| "[]".into()),
            p.pr_number.map(|n| n as i64),
            pr_url,
            p.pr_fork,
            p.restricted,
            p.username,
            p.commit_subject,
            now_ms(),
            (!p.schedule_name.is_empty()).then_some(&p.schedule_name),
            (!p.schedule_id.is_empty()).then_some(&p.schedule_id),
            p.scheduled_workflow,
            p.triggered_by,
        ],
        |r| r.get(0),
    )?;
    Ok((id, number))
}

/// Pipelines waiting for their config, oldest first.
pub(super) fn pipelines_to_fetch(s: &impl SqlStore) -> Result<Vec<PipelineToFetch>> {
    // Read-only: off the writer's connection, so polling never waits on agents' writes.
    s.read(|conn| {
        let mut st = conn.prepare(
            "SELECT p.id, p.uuid, p.number, pr.slug, pr.clone_url, pr.user_key, pr.deploy_key, \
             pr.known_hosts, COALESCE(p.commit_sha, p.git_ref), p.branch, p.tag, p.params, \
             p.trigger_source, p.event, p.event_action, p.base_revision, pr.default_branch, pr.id, pr.uuid, \
             pr.status_api, pr.status_credentials, COALESCE(p.schedule_name, ''), \
             COALESCE(p.schedule_id, ''), p.scheduled_workflow \
             FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
             WHERE p.status = 'created' ORDER BY p.id LIMIT 16",
        )?;
        /// (pipeline, project id, user key, deploy key, API, API credentials), sealed.
        type Raw = (
            PipelineToFetch,
            i64,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Raw> = st
            .query_map([], |r| {
                Ok((
                    PipelineToFetch {
                        id: r.get(0)?,
                        uuid: r.get(1)?,
                        number: r.get(2)?,
                        project_slug: r.get(3)?,
                        project_uuid: r.get(18)?,
                        clone_url: r.get(4)?,
                        keys: Vec::new(),
                        known_hosts: r.get(7)?,
                        reference: r.get(8)?,
                        branch: r.get(9)?,
                        tag: r.get(10)?,
                        params: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
                        trigger_source: r.get(12)?,
                        event: r.get(13)?,
                        event_action: r.get(14)?,
                        base_revision: r.get(15)?,
                        default_branch: r.get(16)?,
                        api: None,
                        schedule_name: r.get(21)?,
                        schedule_id: r.get(22)?,
                        scheduled_workflow: r.get(23)?,
                    },
                    r.get(17)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(19)?,
                    r.get(20)?,
                ))
            })?
            .collect::<super::db::Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (mut p, pid, user, deploy, api, credentials) in rows {
            if let (Some(api), Some(sealed)) = (api, credentials) {
                p.api = Some(ApiSource {
                    api: StatusApi::from_stored(&api),
                    credentials: s
                        .secrets()
                        .open(&super::intake::status_place(pid), &sealed)?,
                    repo: p.project_slug.clone(),
                });
            }
            for (role, column, sealed) in [
                (bosun_protocol::WireKeyRole::User, "user_key", user),
                (bosun_protocol::WireKeyRole::Deploy, "deploy_key", deploy),
            ] {
                if let Some(sealed) = sealed {
                    let k = s
                        .secrets()
                        .open(&secrets::key_place(pid, column), &sealed)?;
                    p.keys.push((role, k));
                }
            }
            out.push(p);
        }
        Ok(out)
        })
}

/// The config could not be fetched or compiled: the pipeline ends `errored` with `error`.
pub(super) fn pipeline_errored(
    s: &impl SqlStore,
    id: i64,
    revision: Option<&str>,
    error: &str,
) -> Result<()> {
    s.transaction(Lock::Writer, |tx| {
        let n = tx.execute(
            "UPDATE pipelines SET status = 'errored', error = ?2, revision = COALESCE(?3, revision), \
             finished = ?4 WHERE id = ?1 AND status = 'created'",
            params![id, error, revision, now_ms()],
        )?;
        if n > 0 {
            let pid: i64 = tx.query_row(
                "SELECT project_id FROM pipelines WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            super::notify::pipeline_ended(tx, pid, id, PipelineState::Errored)?;
        }
        Ok(())
        })
}

/// The config compiled: record its workflows and jobs; the pipeline runs.
pub(super) fn pipeline_compiled(
    s: &impl SqlStore,
    id: i64,
    revision: &str,
    workflows: &[NewWorkflow],
) -> Result<()> {
    s.transaction(Lock::Writer, |tx| {
        let now = now_ms();
        let n = tx.execute(
            "UPDATE pipelines SET status = 'running', revision = ?2 WHERE id = ?1 AND status = 'created'",
            params![id, revision],
        )?;
        if n == 0 {
            // Canceled while its config was fetched.
            return Ok(());
        }
        for w in workflows {
            insert_workflow(tx, id, w, now, false)?;
        }
        Ok(())
        })
}

/// Ids of pipelines whose jobs may still move.
pub(super) fn active_pipelines(s: &impl SqlStore) -> Result<Vec<i64>> {
    // Read-only: off the writer's connection, so polling never waits on agents' writes.
    s.read(|conn| {
        let mut st = conn.prepare(
            "SELECT id FROM pipelines WHERE status IN ('running', 'on_hold') ORDER BY id",
        )?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<super::db::Result<Vec<_>>>()?;
        Ok(rows)
    })
}

/// Where the server's pages are reached (commit statuses link them; the CLI reads it).
pub(super) fn record_public_url(s: &impl SqlStore, url: &str) -> Result<()> {
    s.conn(|conn| {
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('public_url', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [url],
        )?;
        Ok(())
    })
}

/// Move pipeline `id` forward: jobs' rows → workflow job statuses, then every job whose
/// requirements are met starts (queued, held for approval, or waiting its serial group's
/// turn), blocked ones are marked, workflow and pipeline statuses follow, and each job
/// status change the forge shows is put in the commit status outbox. Returns whether
/// anything changed (new jobs queued: claims should look again).
pub(super) fn advance(s: &impl SqlStore, id: i64, statuses: &Statuses<'_>) -> Result<bool> {
    s.transaction(Lock::Writer, |tx| {
        let changed = advance_in(tx, id, statuses)?;
        Ok(changed)
    })
}

/// A random UUID (version 4), as CircleCI's pipeline and workflow ids are.
pub(crate) fn uuid_v4() -> Result<String> {
    let h = random_hex(16)?;
    let variant = ["8", "9", "a", "b"][usize::from_str_radix(&h[16..17], 16).unwrap_or(0) % 4];
    Ok(format!(
        "{}-{}-4{}-{}{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        variant,
        &h[17..20],
        &h[20..32]
    ))
}

/// A workflow job's contexts and who approved it (the name shown, and the person's account
/// when a person did), beside its row.
type JobExtra = (Vec<String>, Option<String>, Option<String>);

/// A workflow job as the store applies transitions to it (and posts its statuses).
pub(super) struct Live {
    pub(super) id: i64,
    pub(super) name: String,
    pub(super) kind: JobKind,
    pub(super) status: WorkflowJobStatus,
    pub(super) job_id: Option<i64>,
}

/// Pipeline `id`'s workflows moved forward by [`advance::advance`], in transaction `tx`: the
/// rows loaded, the transitions applied in their order, then the serial groups' turns and the
/// workflow and pipeline states. Returns whether anything changed.
pub(super) fn advance_in(tx: &dyn Db, id: i64, statuses: &Statuses<'_>) -> Result<bool> {
    let (pid, pstatus, number, restricted): (i64, PipelineState, i64, bool) = tx.query_row(
        "SELECT project_id, status, number, restricted FROM pipelines WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, parse_col(r.get(1)?)?, r.get(2)?, r.get(3)?)),
    )?;
    if !matches!(pstatus, PipelineState::Running | PipelineState::OnHold) {
        return Ok(false);
    }
    let workflows: Vec<(i64, String)> = {
        let mut st =
            tx.prepare("SELECT id, name FROM workflows WHERE pipeline_id = ?1 ORDER BY id")?;
        st.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<super::db::Result<Vec<_>>>()?
    };
    let mut changed = false;
    let mut wf_states = Vec::new();
    for (wid, wname) in &workflows {
        type Row = ((Live, advance::WorkflowJob), JobExtra);
        let rows: Vec<Row> = {
            let mut st = tx.prepare(
                "SELECT wj.id, wj.name, wj.kind, wj.requires, wj.serial_group, wj.status, wj.job_id, j.status, \
                 wj.contexts, wj.approved_by, wj.approved_by_person \
                 FROM workflow_jobs wj LEFT JOIN jobs j ON j.id = wj.job_id \
                 WHERE wj.workflow_id = ?1 ORDER BY wj.position",
            )?;
            st.query_map([wid], |r| {
                let job = advance::WorkflowJob {
                    name: r.get(1)?,
                    kind: parse_col(r.get(2)?)?,
                    requires: requires_from_json(&r.get::<_, String>(3)?),
                    serial_group: r.get(4)?,
                    status: parse_col(r.get(5)?)?,
                    job_state: r.get::<_, Option<String>>(7)?.map(parse_col).transpose()?,
                    denied: None,
                };
                let live = Live {
                    id: r.get(0)?,
                    name: job.name.clone(),
                    kind: job.kind,
                    status: job.status,
                    job_id: r.get(6)?,
                };
                let contexts: Vec<String> =
                    serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default();
                let approved_by: Option<String> = r.get(9)?;
                let approved_by_person: Option<String> = r.get(10)?;
                Ok(((live, job), (contexts, approved_by, approved_by_person)))
            })?
            .collect::<super::db::Result<Vec<_>>>()?
        };
        let (rows, extra): (Vec<_>, Vec<JobExtra>) = rows.into_iter().unzip();
        let (mut jobs, mut facts): (Vec<Live>, Vec<advance::WorkflowJob>) =
            rows.into_iter().unzip();
        // A job that names contexts is authorized before it can start, for whoever it runs
        // for; their groups are read now, so a change of membership counts for every job
        // authorized after it.
        let contexts: Vec<Vec<String>> = extra.iter().map(|(c, _, _)| c.clone()).collect();
        if !advance::naming_contexts(&facts, &contexts, restricted).is_empty() {
            let approvers = extra
                .iter()
                .map(|(_, name, person)| {
                    name.as_deref()
                        .map(|n| super::contexts::approver_member(tx, n, person.as_deref()))
                        .transpose()
                })
                .collect::<Result<Vec<_>>>()?;
            let trigger = super::contexts::trigger_member(tx, id)?;
            for (i, runs_for) in
                advance::to_authorize(&facts, &contexts, &approvers, trigger.as_ref(), restricted)
            {
                let verdict = super::contexts::authorize_job(tx, id, &contexts[i], &runs_for)?;
                facts[i].denied = verdict.err();
            }
        }
        let transitions = advance::advance(&facts);
        changed |= !transitions.is_empty();
        for t in transitions {
            let job = &mut jobs[t.job];
            set_status(tx, job, t.to, t.reason.as_deref())?;
            if t.queue {
                queue_job(tx, pid, id, number, restricted, job)?;
            }
            post_status(tx, pid, id, wname, job, statuses)?;
            if job.kind == JobKind::Build {
                super::notify::job_ended(tx, pid, id, *wid, job.id, job.status)?;
            }
        }
        let statuses: Vec<WorkflowJobStatus> = jobs.iter().map(|j| j.status).collect();
        wf_states.push((*wid, advance::workflow_state(&statuses)));
    }
    // Serial groups: the oldest waiting job of a group starts when none of the group runs.
    changed |= start_serial_turns(tx, pid, id, number, restricted)?;
    // Workflow and pipeline statuses.
    let now = now_ms();
    for (wid, st) in &wf_states {
        let n = tx.execute(
            "UPDATE workflows SET status = ?2, finished = CASE WHEN ?3 THEN COALESCE(finished, ?4) END \
             WHERE id = ?1 AND status != ?2",
            params![wid, st.as_str(), advance::workflow_final(*st), now],
        )?;
        if n > 0 && advance::workflow_final(*st) {
            super::notify::workflow_ended(tx, pid, id, *wid, *st)?;
        }
    }
    let states: Vec<WorkflowState> = wf_states.iter().map(|(_, s)| *s).collect();
    let (p, err) = match advance::pipeline_state(&states) {
        None => (
            PipelineState::Errored,
            Some("All Workflows have been filtered from this Pipeline. No Jobs have been run."),
        ),
        Some(p) => (p, None),
    };
    let n = tx.execute(
        "UPDATE pipelines SET status = ?2, error = COALESCE(?3, error), \
         finished = CASE WHEN ?4 THEN COALESCE(finished, ?5) END WHERE id = ?1 AND status != ?2",
        params![id, p.as_str(), err, advance::pipeline_final(p), now],
    )?;
    if n > 0 && advance::pipeline_final(p) {
        super::notify::pipeline_ended(tx, pid, id, p)?;
    }
    Ok(changed || n > 0)
}

fn set_status(
    tx: &dyn Db,
    job: &mut Live,
    s: WorkflowJobStatus,
    reason: Option<&str>,
) -> Result<()> {
    tx.execute(
        "UPDATE workflow_jobs SET status = ?2, reason = ?3 WHERE id = ?1",
        params![job.id, s.as_str(), reason],
    )?;
    job.status = s;
    Ok(())
}

/// (ref, branch, tag, commit, PR number, PR URL, fork).
type PipelineRef = (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<String>,
    bool,
);

/// Insert the `jobs` row an agent claims for workflow job `job`.
fn queue_job(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    number: i64,
    restricted: bool,
    job: &mut Live,
) -> Result<()> {
    let (git_ref, branch, tag, commit, pr_number, pr_url, pr_fork): PipelineRef = tx.query_row(
        "SELECT git_ref, branch, tag, COALESCE(revision, commit_sha, git_ref), pr_number, pr_url, pr_fork \
         FROM pipelines WHERE id = ?1",
        [pipeline],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
    )?;
    // The workflow's jobs share one workspace (what one persists, a later one attaches, on
    // whichever agent), named by the workflow's UUID so no other run's layers mix in; a rerun
    // keeps the workflow row and so the layers its successful jobs left.
    let (resource_class, workflow_uuid): (Option<String>, String) = tx.query_row(
        "SELECT wj.resource_class, w.uuid FROM workflow_jobs wj \
         JOIN workflows w ON w.id = wj.workflow_id WHERE wj.id = ?1",
        [job.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let workspace = format!("workflow-{workflow_uuid}");
    let jid: i64 = tx.query_row(
        "INSERT INTO jobs(project_id, commit_sha, git_ref, branch, tag, job_name, pipeline_number, \
         resource_class, labels, status, max_attempts, created, pr_number, pr_url, pr_fork, \
         pipeline_id, restricted, workspace) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '[]', 'queued', ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
         RETURNING id",
        params![
            pid,
            commit,
            git_ref,
            branch,
            tag,
            job.name,
            number,
            resource_class,
            DEFAULT_MAX_ATTEMPTS,
            now_ms(),
            pr_number,
            pr_url,
            pr_fork,
            pipeline,
            restricted,
            workspace
        ],
        |r| r.get(0),
    )?;
    // The contexts it was authorized for, by id (a forked pull request's restricted build
    // gets none): what the claim gives it.
    if !restricted {
        let names: String = tx.query_row(
            "SELECT contexts FROM workflow_jobs WHERE id = ?1",
            [job.id],
            |r| r.get(0),
        )?;
        let names: Vec<String> = serde_json::from_str(&names).unwrap_or_default();
        if !names.is_empty() {
            let ids = super::contexts::ids_by_name(tx, &names)?;
            tx.execute(
                "UPDATE jobs SET contexts = ?2 WHERE id = ?1",
                params![
                    jid,
                    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
                ],
            )?;
        }
    }
    tx.execute(
        "UPDATE workflow_jobs SET job_id = ?2, reason = NULL WHERE id = ?1",
        params![job.id, jid],
    )?;
    job.job_id = Some(jid);
    Ok(())
}

fn start_serial_turns(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    number: i64,
    restricted: bool,
) -> Result<bool> {
    // Jobs of this pipeline waiting their turn.
    let waiting: Vec<(i64, String, String)> = {
        let mut st = tx.prepare(
            "SELECT wj.id, wj.name, wj.serial_group FROM workflow_jobs wj \
             JOIN workflows w ON w.id = wj.workflow_id \
             WHERE w.pipeline_id = ?1 AND wj.status = 'queued' AND wj.job_id IS NULL \
             AND wj.serial_group IS NOT NULL ORDER BY wj.id",
        )?;
        st.query_map([pipeline], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<super::db::Result<Vec<_>>>()?
    };
    let mut changed = false;
    for (wjid, name, group) in waiting {
        // Busy: a job of the group (any pipeline of the project) is queued or running on an
        // agent; or an older one waits its turn (first come, first served).
        let busy: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM workflow_jobs wj JOIN workflows w ON w.id = wj.workflow_id \
             JOIN pipelines p ON p.id = w.pipeline_id \
             WHERE p.project_id = ?1 AND wj.serial_group = ?2 AND wj.status IN ('queued', 'running') \
             AND (wj.job_id IS NOT NULL OR wj.id < ?3))",
            params![pid, group, wjid],
            |r| r.get(0),
        )?;
        if busy {
            continue;
        }
        let mut live = Live {
            id: wjid,
            name,
            kind: JobKind::Build,
            status: WorkflowJobStatus::Queued,
            job_id: None,
        };
        queue_job(tx, pid, pipeline, number, restricted, &mut live)?;
        changed = true;
    }
    Ok(changed)
}

/// Serial-group jobs of other pipelines of the project may start when a group frees up.
pub(super) fn pipelines_waiting_in_serial_groups(s: &impl SqlStore) -> Result<Vec<i64>> {
    // Read-only: off the writer's connection, so polling never waits on agents' writes.
    s.read(|conn| {
        let mut st = conn.prepare(
            "SELECT DISTINCT w.pipeline_id FROM workflow_jobs wj JOIN workflows w ON w.id = wj.workflow_id \
             WHERE wj.status = 'queued' AND wj.job_id IS NULL",
        )?;
        let rows = st
            .query_map([], |r| r.get(0))?
            .collect::<super::db::Result<Vec<_>>>()?;
        Ok(rows)
        })
}

/// Put a commit status for `job`'s new status in the outbox, when the project sends them.
pub(super) fn post_status(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    workflow: &str,
    job: &Live,
    statuses: &Statuses<'_>,
) -> Result<()> {
    let api: Option<String> = tx.query_row(
        "SELECT status_api FROM projects WHERE id = ?1",
        [pid],
        |r| r.get(0),
    )?;
    if api.is_none() {
        return Ok(());
    }
    let (commit, branch): (Option<String>, Option<String>) = tx.query_row(
        "SELECT revision, branch FROM pipelines WHERE id = ?1",
        [pipeline],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some(commit) = commit else { return Ok(()) };
    // The CLI does not know where the server is reached: the server records it at start.
    let public_url = statuses.public_url;
    let recorded: Option<String> = if public_url.is_empty() {
        tx.query_row("SELECT value FROM meta WHERE key = 'public_url'", [], |r| {
            r.get(0)
        })
        .optional()?
    } else {
        None
    };
    let base = recorded
        .as_deref()
        .unwrap_or(public_url)
        .trim_end_matches('/');
    let url = match job.job_id {
        Some(j) => format!("{base}/jobs/{j}"),
        None => format!("{base}/pipelines/{pipeline}"),
    };
    let change = StatusChange {
        workflow,
        job: &job.name,
        kind: job.kind,
        status: job.status,
        url: &url,
        branch: branch.as_deref(),
    };
    let Some(StatusBody { key, body: text }) = (statuses.write)(&change) else {
        return Ok(());
    };
    // The outbox holds one row per transition: a job queued and started in one pass
    // posts INPROGRESS once.
    let last: Option<String> = tx
        .query_row(
            "SELECT body FROM commit_statuses WHERE project_id = ?1 AND commit_sha = ?2 AND key = ?3 \
             ORDER BY id DESC LIMIT 1",
            params![pid, commit, key],
            |r| r.get(0),
        )
        .optional()?;
    if last.as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    tx.execute(
        "INSERT INTO commit_statuses(project_id, commit_sha, key, body, created, next_try) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![pid, commit, key, text, now_ms()],
    )?;
    Ok(())
}
