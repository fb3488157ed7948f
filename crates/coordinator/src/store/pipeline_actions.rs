//! Pipelines as the CLI and the pages see them: finding one, approving,
//! canceling and rerunning (each ends with [`advance_in`] in the same transaction) and listing,
//! for both databases over [`super::db::Db`].

use super::db::{params, parse_col, Lock, OptionalExtension, SqlStore};
use super::pipelines::{
    advance_in, post_status, requires_from_json, resolve_project, JobKind, Live, PipelineRow,
    Statuses, WorkflowJobRow, WorkflowRow,
};
use super::*;
use crate::model::contexts::Principal;
use bosun_protocol::{PipelineState, WorkflowJobStatus};

/// Which pipeline: its id, or `project#number` / a slug and number.
pub fn parse_pipeline_ref(s: &str) -> Option<(Option<String>, i64)> {
    match s.rsplit_once('#') {
        Some((project, n)) => Some((Some(project.to_owned()), n.trim().parse().ok()?)),
        None => Some((None, s.trim().parse().ok().filter(|n| *n > 0)?)),
    }
}

/// Pipeline id of `project#number`, or `id` itself.
pub(super) fn pipeline_id(s: &impl SqlStore, reference: &str) -> Result<i64> {
    let bad = || CoordError::NotFound(format!("no pipeline {reference}"));
    let (project, n) = parse_pipeline_ref(reference).ok_or_else(bad)?;
    s.conn(|conn| match project {
        None => conn
            .query_row("SELECT id FROM pipelines WHERE id = ?1", [n], |r| r.get(0))
            .optional()?
            .ok_or_else(bad),
        Some(p) => {
            let pid = resolve_project(conn, &p)?;
            conn.query_row(
                "SELECT id FROM pipelines WHERE project_id = ?1 AND number = ?2",
                params![pid, n],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(bad)
        }
    })
}

/// Approve approval job `job` of pipeline `id` (in any of its workflows) as `by`.
/// Returns the workflow it was in.
pub(super) fn approve(
    s: &impl SqlStore,
    id: i64,
    job: &str,
    by: &Principal,
    statuses: &Statuses<'_>,
) -> Result<String> {
    s.transaction(Lock::Writer, |tx| {
        let rows: Vec<(i64, JobKind, WorkflowJobStatus, String)> = {
            let mut st = tx.prepare(
                "SELECT wj.id, wj.kind, wj.status, w.name FROM workflow_jobs wj \
                 JOIN workflows w ON w.id = wj.workflow_id WHERE w.pipeline_id = ?1 AND wj.name = ?2",
            )?;
            st
                .query_map(params![id, job], |r| {
                    Ok((
                        r.get(0)?,
                        parse_col(r.get(1)?)?,
                        parse_col(r.get(2)?)?,
                        r.get(3)?,
                    ))
                })?
                .collect::<super::db::Result<Vec<_>>>()?
        };
        let Some((wjid, kind, status, workflow)) = rows.into_iter().next() else {
            return Err(CoordError::NotFound(format!(
                "pipeline {id} has no job {job}"
            )));
        };
        if kind != JobKind::Approval {
            return Err(CoordError::Invalid(format!("{job} is not an approval job")));
        }
        if status != WorkflowJobStatus::OnHold {
            return Err(CoordError::Invalid(format!(
                "{job} is {status}, not on hold: only a job waiting for approval can be approved"
            )));
        }
        super::contexts::check_approver(tx, wjid, job, by)?;
        tx.execute(
            "UPDATE workflow_jobs SET status = 'success', approved_by = ?2, approved_by_person = ?3, \
             reason = ?4 WHERE id = ?1",
            params![wjid, by.name(), by.account(), format!("approved by {}", by.name())],
        )?;
        let pid: i64 = tx.query_row(
            "SELECT project_id FROM pipelines WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?;
        let live = Live {
            id: wjid,
            name: job.to_owned(),
            kind,
            status: WorkflowJobStatus::Success,
            job_id: None,
        };
        post_status(tx, pid, id, &workflow, &live, statuses)?;
        tx.execute(
            "UPDATE pipelines SET status = 'running' WHERE id = ?1 AND status = 'on_hold'",
            [id],
        )?;
        advance_in(tx, id, statuses)?;
        Ok(workflow)
        })
}

/// Cancel pipeline `id`: queued jobs end at once, running ones at their agent's next
/// heartbeat, jobs not started yet are canceled; the pipeline ends when its jobs have.
pub(super) fn cancel_pipeline(s: &impl SqlStore, id: i64, statuses: &Statuses<'_>) -> Result<()> {
    s.transaction(Lock::Writer, |tx| {
        let now = now_ms();
        tx.execute(
            "UPDATE jobs SET status = 'canceled', finished = ?2, cancel_requested = 1 \
             WHERE pipeline_id = ?1 AND status = 'queued'",
            params![id, now],
        )?;
        tx.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE pipeline_id = ?1 AND status = 'running'",
            [id],
        )?;
        tx.execute(
            "UPDATE workflow_jobs SET status = 'canceled', reason = 'the pipeline was canceled' \
             WHERE job_id IS NULL AND status IN ('waiting', 'on_hold', 'queued') \
             AND workflow_id IN (SELECT id FROM workflows WHERE pipeline_id = ?1)",
            [id],
        )?;
        let n = tx.execute(
            "UPDATE pipelines SET status = 'canceled', finished = ?2 WHERE id = ?1 AND status = 'created'",
            params![id, now],
        )?;
        if n > 0 {
            let pid: i64 = tx.query_row(
                "SELECT project_id FROM pipelines WHERE id = ?1",
                [id],
                |r| r.get(0),
            )?;
            super::notify::pipeline_ended(tx, pid, id, bosun_protocol::PipelineState::Canceled)?;
        }
        advance_in(tx, id, statuses)?;
        Ok(())
        })
}

/// Rerun the workflows of pipeline `id` from their failed jobs: jobs that did not
/// succeed (and those they blocked) wait again; successful ones stay. `by`: the Bitbucket
/// account of the person who reruns it, whom its jobs now run for (as CircleCI runs a rerun
/// for who asked); an operator's rerun leaves that as it was.
pub(super) fn rerun_failed(
    s: &impl SqlStore,
    id: i64,
    by: Option<&str>,
    statuses: &Statuses<'_>,
) -> Result<usize> {
    s.transaction(Lock::Writer, |tx| {
        let status: PipelineState =
            tx.query_row("SELECT status FROM pipelines WHERE id = ?1", [id], |r| {
                parse_col(r.get(0)?)
            })?;
        if !matches!(status, PipelineState::Failed | PipelineState::Canceled) {
            return Err(CoordError::Invalid(format!(
                "pipeline {id} is {status}: only a failed or canceled pipeline is rerun"
            )));
        }
        let n = tx.execute(
            "UPDATE workflow_jobs SET status = 'waiting', job_id = NULL, reason = NULL, approved_by = NULL, \
             approved_by_person = NULL WHERE status IN ('failed', 'canceled', 'timedout', 'infrastructure_fail', 'blocked', 'unauthorized') \
             AND workflow_id IN (SELECT id FROM workflows WHERE pipeline_id = ?1)",
            [id],
        )?;
        tx.execute(
            "UPDATE workflows SET status = 'running', finished = NULL WHERE pipeline_id = ?1",
            [id],
        )?;
        tx.execute(
            "UPDATE pipelines SET status = 'running', finished = NULL, \
             triggered_by = COALESCE(?2, triggered_by) WHERE id = ?1",
            params![id, by],
        )?;
        advance_in(tx, id, statuses)?;
        Ok(n)
        })
}

/// Pipelines newest first (of one project when given).
pub fn list_pipelines(
    s: &impl SqlStore,
    project: Option<&str>,
    limit: u32,
) -> Result<Vec<PipelineRow>> {
    let ids: Vec<i64> = s.read(|conn| {
        let pid = project.map(|p| resolve_project(conn, p)).transpose()?;
        Ok(conn.query_map(
            "SELECT id FROM pipelines WHERE (CAST(?1 AS BIGINT) IS NULL OR project_id = ?1) \
                 ORDER BY id DESC LIMIT ?2",
            params![pid, limit],
            |r| r.get(0),
        )?)
    })?;
    ids.into_iter()
        .filter_map(|id| pipeline(s, id).transpose())
        .collect()
}

/// A pipeline with its workflows and jobs.
pub fn pipeline(s: &impl SqlStore, id: i64) -> Result<Option<PipelineRow>> {
    s.read(|conn| {
        let row = conn
            .query_row(
                "SELECT p.id, p.number, p.uuid, pr.slug, p.git_ref, p.branch, p.tag, p.revision, \
                 p.trigger_source, p.event, p.status, p.error, p.pr_number, p.pr_fork, p.restricted, p.created, \
                 p.triggered_by FROM pipelines p JOIN projects pr ON pr.id = p.project_id WHERE p.id = ?1",
                [id],
                |r| {
                    Ok(PipelineRow {
                        id: r.get(0)?,
                        number: r.get(1)?,
                        uuid: r.get(2)?,
                        project: r.get(3)?,
                        git_ref: r.get(4)?,
                        branch: r.get(5)?,
                        tag: r.get(6)?,
                        revision: r.get(7)?,
                        trigger_source: r.get(8)?,
                        event: r.get(9)?,
                        status: parse_col(r.get(10)?)?,
                        error: r.get(11)?,
                        pr_number: r.get::<_, Option<i64>>(12)?.map(|n| n as u64),
                        pr_fork: r.get(13)?,
                        restricted: r.get(14)?,
                        created: r.get(15)?,
                        triggered_by: r.get(16)?,
                        workflows: Vec::new(),
                    })
                },
            )
            .optional()?;
        let Some(mut row) = row else { return Ok(None) };
        let mut st = conn.prepare(
            "SELECT id, uuid, name, status FROM workflows WHERE pipeline_id = ?1 ORDER BY id",
        )?;
        let wfs = st
            .query_map([id], |r| {
                Ok(WorkflowRow {
                    id: r.get(0)?,
                    uuid: r.get(1)?,
                    name: r.get(2)?,
                    status: parse_col(r.get(3)?)?,
                    jobs: Vec::new(),
                })
            })?
            .collect::<super::db::Result<Vec<_>>>()?;
        let mut jst = conn.prepare(
            "SELECT id, name, kind, requires, serial_group, status, reason, job_id, approved_by \
             FROM workflow_jobs WHERE workflow_id = ?1 ORDER BY position",
        )?;
        for mut w in wfs {
            w.jobs = jst
                .query_map([w.id], |r| {
                    Ok(WorkflowJobRow {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        kind: parse_col(r.get(2)?)?,
                        requires: requires_from_json(&r.get::<_, String>(3)?),
                        serial_group: r.get(4)?,
                        status: parse_col(r.get(5)?)?,
                        reason: r.get(6)?,
                        job_id: r.get(7)?,
                        approved_by: r.get(8)?,
                    })
                })?
                .collect::<super::db::Result<Vec<_>>>()?;
            row.workflows.push(w);
        }
        // A job queued on an agent's queue says why no agent has taken it yet (computed now:
        // it changes with the agents, not with the job).
        let queued: Vec<i64> = row
            .workflows
            .iter()
            .flat_map(|w| &w.jobs)
            .filter(|j| j.status == WorkflowJobStatus::Queued)
            .filter_map(|j| j.job_id)
            .collect();
        let mut reasons = super::waiting::wait_reasons_in(conn, &queued, now_ms())?;
        for j in row.workflows.iter_mut().flat_map(|w| w.jobs.iter_mut()) {
            if let Some(r) = j.job_id.and_then(|id| reasons.remove(&id)) {
                j.reason = Some(r);
            }
        }
        Ok(Some(row))
        })
}
