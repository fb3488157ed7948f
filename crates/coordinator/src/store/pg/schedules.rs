//! Schedules as the PostgreSQL store keeps them (the SQLite store's `schedules.rs`, in this
//! dialect): scheduled pipelines, the scheduled workflows of each project's default-branch
//! config, and the ticks fired. Which tick is due is decided above the store
//! (`crate::model::schedule`); [`PgStore::fire_tick`] claims a tick and creates its pipelines
//! in one transaction, so it fires once however many coordinators share the database.

use super::pipelines::{resolve_project, uuid_v4, NewPipeline};
use super::*;
use crate::store::schedules::{
    NewSchedule, RepoAccess, ScheduleRow, WorkflowScheduleRow, WorkflowTrigger,
};

#[derive(serde::Serialize, serde::Deserialize)]
struct BranchFilter {
    only: Option<Vec<String>>,
    #[serde(default)]
    ignore: Vec<String>,
}

impl PgStore {
    pub(super) fn add_schedule(&self, s: &NewSchedule) -> Result<ScheduleRow> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid = resolve_project(&tx, &s.project)?;
        let taken: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schedules WHERE project_id = ?1 AND name = ?2)",
            params![pid, s.name],
            |r| r.get(0),
        )?;
        if taken {
            return Err(CoordError::Invalid(format!(
                "project {} already has a schedule named {:?} (remove it first with `schedule rm`)",
                s.project, s.name
            )));
        }
        let now = now_ms();
        tx.execute(
            "INSERT INTO schedules(uuid, project_id, name, cron, branch, params, actor, since, created) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                uuid_v4()?,
                pid,
                s.name,
                s.cron,
                s.branch,
                serde_json::to_string(&s.params).unwrap_or_else(|_| "[]".into()),
                s.actor,
                now
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        drop(conn);
        self.list_schedules_where("s.id = ?1", id)?
            .pop()
            .ok_or_else(|| CoordError::NotFound("the schedule just added".into()))
    }

    pub(super) fn list_schedules(&self, project: Option<&str>) -> Result<Vec<ScheduleRow>> {
        match project {
            Some(p) => {
                let pid = resolve_project(&self.reader()?, p)?;
                self.list_schedules_where("s.project_id = ?1", pid)
            }
            None => self.list_schedules_where("?1 = 0", 0),
        }
    }

    fn list_schedules_where(&self, cond: &str, arg: i64) -> Result<Vec<ScheduleRow>> {
        let conn = self.reader()?;
        let mut st = conn.prepare(&format!(
            "SELECT s.uuid, p.slug, s.name, s.cron, s.branch, s.params, s.actor, s.paused, s.since, \
             (SELECT MAX(tick) FROM schedule_ticks t WHERE t.schedule = s.uuid) \
             FROM schedules s JOIN projects p ON p.id = s.project_id WHERE {cond} \
             ORDER BY p.slug, s.name"
        ))?;
        let rows = st
            .query_map([arg], |r| {
                Ok(ScheduleRow {
                    uuid: r.get(0)?,
                    project: r.get(1)?,
                    name: r.get(2)?,
                    cron: r.get(3)?,
                    branch: r.get(4)?,
                    params: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                    actor: r.get(6)?,
                    paused: r.get(7)?,
                    since: r.get(8)?,
                    last_tick: r.get(9)?,
                })
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn schedule_id(conn: &Connection, project: &str, name: &str) -> Result<i64> {
        let pid = resolve_project(conn, project)?;
        conn.query_row(
            "SELECT id FROM schedules WHERE project_id = ?1 AND name = ?2",
            params![pid, name],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| {
            CoordError::NotFound(format!(
                "project {project} has no schedule named {name:?} (see `schedule ls`)"
            ))
        })
    }

    pub(super) fn remove_schedule(&self, project: &str, name: &str) -> Result<()> {
        let conn = self.conn()?;
        let id = Self::schedule_id(&conn, project, name)?;
        conn.execute("DELETE FROM schedules WHERE id = ?1", [id])?;
        Ok(())
    }

    pub(super) fn pause_schedule(&self, project: &str, name: &str, paused: bool) -> Result<()> {
        let conn = self.conn()?;
        let id = Self::schedule_id(&conn, project, name)?;
        // Resuming moves `since` to now: the ticks that passed while paused do not fire.
        conn.execute(
            "UPDATE schedules SET paused = ?2, \
             since = CASE WHEN ?2::BIGINT = 0 AND paused != 0 THEN ?3 ELSE since END WHERE id = ?1",
            params![id, paused, now_ms()],
        )?;
        Ok(())
    }

    pub(super) fn set_workflow_schedules(
        &self,
        project: &str,
        revision: &str,
        triggers: &[WorkflowTrigger],
    ) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pid = resolve_project(&tx, project)?;
        let now = now_ms();
        let mut keys = Vec::new();
        let mut changed = false;
        for t in triggers {
            let key = crate::model::schedule::workflow_schedule_key(pid, &t.workflow, &t.cron);
            if keys.contains(&key) {
                continue;
            }
            let branches = serde_json::to_string(&BranchFilter {
                only: t.only.clone(),
                ignore: t.ignore.clone(),
            })
            .unwrap_or_default();
            // An unchanged trigger keeps its `since`, so a tick is never skipped or repeated
            // by reading the config again (an update its WHERE skips counts no row).
            changed |= tx.execute(
                "INSERT INTO workflow_schedules(key, project_id, workflow, cron, branches, revision, since) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT(key) DO UPDATE SET branches = excluded.branches, revision = excluded.revision \
                 WHERE workflow_schedules.branches IS DISTINCT FROM excluded.branches",
                params![key, pid, t.workflow, t.cron, branches, revision, now],
            )? > 0;
            keys.push(key);
        }
        let stale: Vec<String> = {
            let mut st = tx.prepare("SELECT key FROM workflow_schedules WHERE project_id = ?1")?;
            let all = st
                .query_map([pid], |r| r.get::<_, String>(0))?
                .collect::<sql::Result<Vec<_>>>()?;
            all.into_iter().filter(|k| !keys.contains(k)).collect()
        };
        for k in &stale {
            tx.execute("DELETE FROM workflow_schedules WHERE key = ?1", [k])?;
            changed = true;
        }
        tx.execute(
            "UPDATE workflow_schedules SET revision = ?2 WHERE project_id = ?1",
            params![pid, revision],
        )?;
        tx.commit()?;
        Ok(changed)
    }

    pub(super) fn workflow_schedules(&self) -> Result<Vec<WorkflowScheduleRow>> {
        let conn = self.reader()?;
        let mut st = conn.prepare(
            "SELECT w.key, w.project_id, p.slug, w.workflow, w.cron, w.branches, w.revision, w.since, \
             (SELECT MAX(tick) FROM schedule_ticks t WHERE t.schedule = w.key) \
             FROM workflow_schedules w JOIN projects p ON p.id = w.project_id ORDER BY w.key",
        )?;
        let rows = st
            .query_map([], |r| {
                let f: Option<BranchFilter> = r
                    .get::<_, Option<String>>(5)?
                    .and_then(|s| serde_json::from_str(&s).ok());
                let (only, ignore) = f.map(|f| (f.only, f.ignore)).unwrap_or_default();
                Ok(WorkflowScheduleRow {
                    key: r.get(0)?,
                    project_id: r.get(1)?,
                    project: r.get(2)?,
                    trigger: WorkflowTrigger {
                        workflow: r.get(3)?,
                        cron: r.get(4)?,
                        only,
                        ignore,
                    },
                    revision: r.get(6)?,
                    since: r.get(7)?,
                    last_tick: r.get(8)?,
                })
            })?
            .collect::<sql::Result<Vec<_>>>()?;
        Ok(rows)
    }

    pub(super) fn repo_access(&self, project_id: i64) -> Result<RepoAccess> {
        let conn = self.reader()?;
        type Raw = (
            String,
            String,
            Option<String>,
            Option<String>,
            String,
            String,
        );
        let (uuid, url, user, deploy, known_hosts, default_branch): Raw = conn
            .query_row(
                "SELECT uuid, clone_url, user_key, deploy_key, known_hosts, default_branch \
                 FROM projects WHERE id = ?1",
                [project_id],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| CoordError::NotFound(format!("no project {project_id}")))?;
        let mut keys = Vec::new();
        for (role, column, sealed) in [
            (WireKeyRole::User, "user_key", user),
            (WireKeyRole::Deploy, "deploy_key", deploy),
        ] {
            if let Some(sealed) = sealed {
                let k = self
                    .secrets
                    .open(&secrets::key_place(project_id, column), &sealed)?;
                keys.push((role, k));
            }
        }
        Ok(RepoAccess {
            project_uuid: uuid,
            clone_url: url,
            keys,
            known_hosts,
            default_branch,
        })
    }

    /// Claim tick `tick` of `schedule` and create `pipelines` in the same transaction: their
    /// ids, or `None` when the tick was claimed already or the schedule is gone or paused.
    /// The claim is the row (schedule, tick). Its primary key is what keeps replicas apart:
    /// a second `INSERT … ON CONFLICT DO NOTHING` of the pair waits for the first one's
    /// transaction, and inserts nothing once it commits (or takes the tick if it rolled
    /// back). The writers' advisory lock orders them too (pipeline numbers need it), but the
    /// tick's uniqueness does not rest on it.
    pub(super) fn fire_tick(
        &self,
        schedule: &str,
        tick: i64,
        pipelines: &[NewPipeline],
    ) -> Result<Option<Vec<i64>>> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let live: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM schedules WHERE uuid = ?1 AND paused = 0) \
             OR EXISTS(SELECT 1 FROM workflow_schedules WHERE key = ?1)",
            [schedule],
            |r| r.get(0),
        )?;
        if !live {
            return Ok(None);
        }
        let claimed = tx.execute(
            "INSERT INTO schedule_ticks(schedule, tick, claimed, pipelines) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(schedule, tick) DO NOTHING",
            params![schedule, tick, now_ms(), pipelines.len() as i64],
        )?;
        if claimed == 0 {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(pipelines.len());
        for p in pipelines {
            ids.push(crate::store::pipelines::insert_pipeline(&tx, p)?.0);
        }
        tx.commit()?;
        Ok(Some(ids))
    }
}
