//! Notifications behind one trait ([`NotifyOutbox`]), in types that say nothing of the
//! database: a project's mail addresses and outgoing webhooks (targets), and the outbox the
//! sender (`crate::notify`) delivers from. The rows are written by [`pipeline_ended`],
//! [`workflow_ended`] and [`job_ended`], called inside the transaction that records the end
//! (`advance_in`, an errored or canceled pipeline), so a completion and its notifications
//! commit together. Which mail an address gets is `model::notify::mail`'s rule.
//!
//! A delivery is claimed by moving its `next_try` past a lease: a claim never hands the same
//! row out twice while it is being delivered, and a coordinator that stopped mid-delivery
//! tries it again after the lease. A delivered or given-up row is deleted; its target keeps
//! the last error (with its time) and the last delivery's time for the project's page.

use super::db::{params, parse_col, Db, Lock, OptionalExtension, SqlStore};
use super::pipelines::{resolve_project, uuid_v4};
use super::{now_ms, Result};
use crate::error::CoordError;
use crate::model::notify::{self as rules, Events, On, TargetKind};
use bosun_protocol::{PipelineState, WorkflowJobStatus, WorkflowState};
use std::time::Duration;
use zeroize::Zeroizing;

/// A target to add.
pub struct NewTarget<'a> {
    /// A slug (current or old) or the repository UUID.
    pub project: &'a str,
    pub kind: TargetKind,
    /// The e-mail address or the webhook's URL (checked by the caller).
    pub address: &'a str,
    /// `On` or `Events` as words.
    pub events: &'a str,
    pub name: &'a str,
    /// A webhook's signing secret (sealed here).
    pub secret: Option<&'a str>,
}

/// A target as `ls` and the project's page show it (no secret).
#[derive(Debug, Clone)]
pub struct TargetRow {
    pub id: i64,
    pub uuid: String,
    pub kind: TargetKind,
    pub address: String,
    pub events: String,
    pub name: String,
    pub created: i64,
    pub last_error: Option<String>,
    pub last_error_at: Option<i64>,
    pub last_delivered_at: Option<i64>,
    /// Notifications in its outbox not yet delivered.
    pub pending: u32,
}

/// A notification claimed for delivery, with what its message is made of that the
/// pipeline's own row does not say.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: i64,
    /// The event's id.
    pub uuid: String,
    /// `failed`, `fixed`, `finished`, `workflow-completed` or `job-completed`.
    pub event: String,
    /// The pipeline's, workflow's or job's end, as words.
    pub status: String,
    pub happened_at: i64,
    /// Failures before this attempt.
    pub attempts: u32,
    pub target_uuid: String,
    pub kind: TargetKind,
    pub address: String,
    pub name: String,
    /// A webhook's signing secret, opened.
    pub secret: Option<Zeroizing<String>>,
    pub pipeline_id: i64,
    pub project_slug: String,
    pub project_uuid: String,
    pub clone_url: String,
    pub commit_subject: Option<String>,
    pub username: Option<String>,
    /// A workflow's or job's event: the workflow.
    pub workflow: Option<DueWorkflow>,
    /// A job's event: the job.
    pub job: Option<DueJob>,
}

/// The workflow of a workflow's or job's event.
#[derive(Debug, Clone)]
pub struct DueWorkflow {
    pub uuid: String,
    pub name: String,
    pub created: i64,
    pub finished: Option<i64>,
}

/// The job of a job's event.
#[derive(Debug, Clone)]
pub struct DueJob {
    /// Its name in the workflow.
    pub name: String,
    /// Its `jobs` row (what agents ran).
    pub job_id: Option<i64>,
    pub started: Option<i64>,
    pub finished: Option<i64>,
}

pub trait NotifyOutbox: Send + Sync {
    /// Add a target to a project; an existing one (same kind and address) is refused.
    fn add_notify_target(&self, t: &NewTarget<'_>) -> Result<TargetRow>;
    /// The project's targets, oldest first, with their pending counts.
    fn notify_targets(&self, project: &str) -> Result<Vec<TargetRow>>;
    /// Remove the project's target of `kind` whose address or UUID is `which` (and its
    /// undelivered notifications); whether there was one.
    fn remove_notify_target(&self, project: &str, kind: TargetKind, which: &str) -> Result<bool>;
    /// Claim up to `limit` notifications due now, oldest first: none is handed out again
    /// before `lease` has passed (unless reported delivered or failed first).
    fn claim_notifications(&self, limit: u32, lease: Duration) -> Result<Vec<Due>>;
    /// Delivered: the row goes, the target notes when.
    fn notification_delivered(&self, id: i64) -> Result<()>;
    /// Failed: tried again after `retry_in`, or (`give_up`) dropped; the target keeps the
    /// error either way.
    fn notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_in: Duration,
        give_up: bool,
    ) -> Result<()>;
}

fn secret_place(pid: i64, uuid: &str) -> String {
    format!("p{pid}/webhook/{uuid}")
}

const TARGET_COLUMNS: &str = "t.id, t.uuid, t.kind, t.address, t.events, t.name, t.created, \
     t.last_error, t.last_error_at, t.last_delivered_at, \
     (SELECT COUNT(*) FROM notifications n WHERE n.target_id = t.id)";

fn target_row(r: &dyn super::db::Row) -> super::db::Result<TargetRow> {
    Ok(TargetRow {
        id: r.get(0)?,
        uuid: r.get(1)?,
        kind: parse_col(r.get(2)?)?,
        address: r.get(3)?,
        events: r.get(4)?,
        name: r.get(5)?,
        created: r.get(6)?,
        last_error: r.get(7)?,
        last_error_at: r.get(8)?,
        last_delivered_at: r.get(9)?,
        pending: r.get(10)?,
    })
}

/// The due notifications a claim takes (PostgreSQL's claim locks them too).
macro_rules! claim_due {
    () => {
        "SELECT n.id, n.uuid, n.event, n.status, n.happened_at, n.attempts, t.uuid, \
                 t.kind, t.address, t.name, n.pipeline_id, pr.slug, pr.uuid, pr.clone_url, \
                 p.commit_subject, p.username, w.uuid, w.name, w.created, w.finished, \
                 wj.name, wj.job_id, j.started, j.finished, pr.id, t.secret \
                 FROM notifications n JOIN notify_targets t ON t.id = n.target_id \
                 JOIN pipelines p ON p.id = n.pipeline_id JOIN projects pr ON pr.id = p.project_id \
                 LEFT JOIN workflows w ON w.id = n.workflow_id \
                 LEFT JOIN workflow_jobs wj ON wj.id = n.workflow_job_id \
                 LEFT JOIN jobs j ON j.id = wj.job_id \
                 WHERE n.next_try <= ?1 ORDER BY n.next_try, n.id LIMIT ?2"
    };
}

impl<S: SqlStore> NotifyOutbox for S {
    fn add_notify_target(&self, t: &NewTarget<'_>) -> Result<TargetRow> {
        self.conn(|conn| {
            let pid = resolve_project(conn, t.project)?;
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM notify_targets WHERE project_id = ?1 AND kind = ?2 \
             AND address = ?3)",
                params![pid, t.kind.as_str(), t.address],
                |r| r.get(0),
            )?;
            if exists {
                return Err(CoordError::Invalid(format!(
                    "{} already has the {} target {}; remove it first to change it",
                    t.project,
                    t.kind.as_str(),
                    crate::text::printable(t.address)
                )));
            }
            let uuid = uuid_v4()?;
            let sealed = t
                .secret
                .map(|s| self.secrets().seal(&secret_place(pid, &uuid), s))
                .transpose()?;
            let id: i64 = conn.query_row(
            "INSERT INTO notify_targets(uuid, project_id, kind, address, events, name, secret, \
             created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            params![
                uuid,
                pid,
                t.kind.as_str(),
                t.address,
                t.events,
                t.name,
                sealed,
                now_ms()
            ],
            |r| r.get(0),
        )?;
            Ok(conn.query_row(
                &format!("SELECT {TARGET_COLUMNS} FROM notify_targets t WHERE t.id = ?1"),
                [id],
                target_row,
            )?)
        })
    }

    fn notify_targets(&self, project: &str) -> Result<Vec<TargetRow>> {
        self.read(|conn| {
            let pid = resolve_project(conn, project)?;
            Ok(conn.query_map(
                &format!(
                    "SELECT {TARGET_COLUMNS} FROM notify_targets t WHERE t.project_id = ?1 \
                     ORDER BY t.id"
                ),
                [pid],
                target_row,
            )?)
        })
    }

    fn remove_notify_target(&self, project: &str, kind: TargetKind, which: &str) -> Result<bool> {
        self.conn(|conn| {
            let pid = resolve_project(conn, project)?;
            // The outbox's rows go with it (ON DELETE CASCADE; SQLite's needs foreign_keys, on).
            let n = conn.execute(
                "DELETE FROM notify_targets WHERE project_id = ?1 AND kind = ?2 \
             AND (address = ?3 OR uuid = ?3)",
                params![pid, kind.as_str(), which],
            )?;
            Ok(n > 0)
        })
    }

    fn claim_notifications(&self, limit: u32, lease: Duration) -> Result<Vec<Due>> {
        self.transaction(Lock::Rows, |tx| {
            let now = now_ms();
            type Raw = (Due, i64, Option<String>);
            let rows: Vec<Raw> = {
                let mut st = tx.prepare(tx.pick(
                    claim_due!(),
                    // Two coordinators never hand out the same row.
                    concat!(claim_due!(), " FOR UPDATE OF n SKIP LOCKED"),
                ))?;

                st.query_map(params![now, limit], |r| {
                    let workflow = match r.get::<_, Option<String>>(16)? {
                        Some(uuid) => Some(DueWorkflow {
                            uuid,
                            name: r.get(17)?,
                            created: r.get(18)?,
                            finished: r.get(19)?,
                        }),
                        None => None,
                    };
                    let job = match r.get::<_, Option<String>>(20)? {
                        Some(name) => Some(DueJob {
                            name,
                            job_id: r.get(21)?,
                            started: r.get(22)?,
                            finished: r.get(23)?,
                        }),
                        None => None,
                    };
                    Ok((
                        Due {
                            id: r.get(0)?,
                            uuid: r.get(1)?,
                            event: r.get(2)?,
                            status: r.get(3)?,
                            happened_at: r.get(4)?,
                            attempts: r.get(5)?,
                            target_uuid: r.get(6)?,
                            kind: parse_col(r.get(7)?)?,
                            address: r.get(8)?,
                            name: r.get(9)?,
                            secret: None,
                            pipeline_id: r.get(10)?,
                            project_slug: r.get(11)?,
                            project_uuid: r.get(12)?,
                            clone_url: r.get(13)?,
                            commit_subject: r.get(14)?,
                            username: r.get(15)?,
                            workflow,
                            job,
                        },
                        r.get(24)?,
                        r.get(25)?,
                    ))
                })?
                .collect::<super::db::Result<Vec<_>>>()?
            };
            let until = now + lease.as_millis() as i64;
            let mut out = Vec::with_capacity(rows.len());
            for (mut d, pid, sealed) in rows {
                tx.execute(
                    "UPDATE notifications SET next_try = ?2 WHERE id = ?1",
                    params![d.id, until],
                )?;
                if let Some(sealed) = sealed {
                    d.secret = Some(
                        self.secrets()
                            .open(&secret_place(pid, &d.target_uuid), &sealed)?,
                    );
                }
                out.push(d);
            }
            Ok(out)
        })
    }

    fn notification_delivered(&self, id: i64) -> Result<()> {
        self.transaction(Lock::Rows, |tx| {
            tx.execute(
                "UPDATE notify_targets SET last_delivered_at = ?2 \
             WHERE id = (SELECT target_id FROM notifications WHERE id = ?1)",
                params![id, now_ms()],
            )?;
            tx.execute("DELETE FROM notifications WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    fn notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_in: Duration,
        give_up: bool,
    ) -> Result<()> {
        self.transaction(Lock::Rows, |tx| {
            let now = now_ms();
            let attempts: Option<u32> = tx
                .query_row(
                    "SELECT attempts FROM notifications WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(attempts) = attempts else {
                return Ok(());
            };
            let error = if give_up {
                format!("given up after {} attempts: {error}", attempts + 1)
            } else {
                error.to_owned()
            };
            tx.execute(
                "UPDATE notify_targets SET last_error = ?2, last_error_at = ?3 \
             WHERE id = (SELECT target_id FROM notifications WHERE id = ?1)",
                params![id, error, now],
            )?;
            if give_up {
                tx.execute("DELETE FROM notifications WHERE id = ?1", [id])?;
            } else {
                tx.execute(
                    "UPDATE notifications SET attempts = attempts + 1, next_try = ?2 WHERE id = ?1",
                    params![id, now + retry_in.as_millis() as i64],
                )?;
            }
            Ok(())
        })
    }
}

/// One outbox row for `target`, due now.
#[allow(clippy::too_many_arguments)]
fn insert(
    tx: &dyn Db,
    target: i64,
    event: &str,
    status: &str,
    pipeline: i64,
    workflow: Option<i64>,
    workflow_job: Option<i64>,
    now: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO notifications(uuid, target_id, event, status, pipeline_id, workflow_id, \
         workflow_job_id, happened_at, next_try) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        params![
            uuid_v4()?,
            target,
            event,
            status,
            pipeline,
            workflow,
            workflow_job,
            now
        ],
    )?;
    Ok(())
}

/// The project's targets of `kind`: (id, events as words).
fn targets(tx: &dyn Db, pid: i64, kind: TargetKind) -> Result<Vec<(i64, String)>> {
    let mut st =
        tx.prepare("SELECT id, events FROM notify_targets WHERE project_id = ?1 AND kind = ?2")?;
    let rows = st
        .query_map(params![pid, kind.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<super::db::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Pipeline `pipeline` of project `pid` ended in `state` (in the caller's transaction): each
/// address gets the mail `model::notify::mail` decides, from the branch's previous ended
/// pipeline and whether this is the default branch.
pub(super) fn pipeline_ended(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    state: PipelineState,
) -> Result<()> {
    let addresses = targets(tx, pid, TargetKind::Email)?;
    if addresses.is_empty() {
        return Ok(());
    }
    let (branch, default_branch): (Option<String>, String) = tx.query_row(
        "SELECT p.branch, pr.default_branch FROM pipelines p JOIN projects pr ON pr.id = p.project_id \
         WHERE p.id = ?1",
        [pipeline],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let previous: Option<PipelineState> = tx
        .query_row(
            "SELECT status FROM pipelines WHERE project_id = ?1 AND branch IS ?2 AND id < ?3 \
             AND status NOT IN ('created', 'running', 'on_hold') ORDER BY id DESC LIMIT 1",
            params![pid, branch, pipeline],
            |r| parse_col(r.get(0)?),
        )
        .optional()?;
    let on_default = branch.as_deref() == Some(default_branch.as_str());
    let now = now_ms();
    for (target, words) in addresses {
        // A stored word this side does not know (a newer coordinator's) asks for nothing.
        let on = On::parse(&words).unwrap_or_default();
        if let Some(m) = rules::mail(on, state, previous, on_default) {
            insert(
                tx,
                target,
                m.as_str(),
                state.as_str(),
                pipeline,
                None,
                None,
                now,
            )?;
        }
    }
    Ok(())
}

/// Workflow `workflow` of pipeline `pipeline` ended in `state`: a `workflow-completed` for
/// each webhook that asked for it.
pub(super) fn workflow_ended(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    workflow: i64,
    state: WorkflowState,
) -> Result<()> {
    let Some(word) = rules::workflow_completed(state) else {
        return Ok(());
    };
    let now = now_ms();
    for (target, words) in targets(tx, pid, TargetKind::Webhook)? {
        if Events::parse(&words).is_ok_and(|e| e.workflow_completed) {
            insert(
                tx,
                target,
                rules::WORKFLOW_COMPLETED,
                word,
                pipeline,
                Some(workflow),
                None,
                now,
            )?;
        }
    }
    Ok(())
}

/// Workflow job `workflow_job` ended in `status`: a `job-completed` for each webhook that
/// asked for it.
pub(super) fn job_ended(
    tx: &dyn Db,
    pid: i64,
    pipeline: i64,
    workflow: i64,
    workflow_job: i64,
    status: WorkflowJobStatus,
) -> Result<()> {
    let Some(word) = rules::job_completed(status) else {
        return Ok(());
    };
    let now = now_ms();
    for (target, words) in targets(tx, pid, TargetKind::Webhook)? {
        if Events::parse(&words).is_ok_and(|e| e.job_completed) {
            insert(
                tx,
                target,
                rules::JOB_COMPLETED,
                word,
                pipeline,
                Some(workflow),
                Some(workflow_job),
                now,
            )?;
        }
    }
    Ok(())
}
