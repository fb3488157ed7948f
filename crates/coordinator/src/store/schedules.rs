//! Schedules as the store keeps them: scheduled pipelines (`schedule add`), the scheduled
//! workflows of each project's default-branch config, and the ticks fired. Which tick is due
//! and what it fires is decided above the store (`crate::model::schedule`); the store only
//! claims a tick and creates its pipelines, together, in one transaction
//! ([`Store::fire_tick`]).

use super::db::{params, Db, Lock, OptionalExtension, SqlStore};
use super::pipelines::{resolve_project, uuid_v4, NewPipeline};
use super::*;

/// A scheduled pipeline to add.
#[derive(Debug, Clone, Default)]
pub struct NewSchedule {
    /// A slug (current or old) or the repository UUID.
    pub project: String,
    pub name: String,
    /// Five cron fields, checked by the caller (`bosun_config::cron::Cron::parse`).
    pub cron: String,
    pub branch: String,
    pub params: Vec<(String, String)>,
    pub actor: Option<String>,
}

/// A scheduled pipeline as kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    pub uuid: String,
    pub project: String,
    pub name: String,
    pub cron: String,
    pub branch: String,
    pub params: Vec<(String, String)>,
    pub actor: Option<String>,
    pub paused: bool,
    /// Ticks before it do not fire (made or resumed then), ms since the epoch.
    pub since: i64,
    /// The last tick fired, ms since the epoch.
    pub last_tick: Option<i64>,
}

/// A workflow's `triggers: - schedule:` as read from the default branch's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowTrigger {
    pub workflow: String,
    pub cron: String,
    /// `filters.branches` as written (`main`, `/release\/.*/`); `None`: every branch.
    pub only: Option<Vec<String>>,
    pub ignore: Vec<String>,
}

/// A scheduled workflow as kept, with what its tick needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowScheduleRow {
    pub key: String,
    pub project_id: i64,
    pub project: String,
    pub trigger: WorkflowTrigger,
    pub revision: String,
    pub since: i64,
    pub last_tick: Option<i64>,
}

/// What listing a project's branches needs: its repository and keys (opened).
pub struct RepoAccess {
    pub project_uuid: String,
    pub clone_url: String,
    pub keys: Vec<(WireKeyRole, zeroize::Zeroizing<String>)>,
    pub known_hosts: String,
    pub default_branch: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct BranchFilter {
    only: Option<Vec<String>>,
    #[serde(default)]
    ignore: Vec<String>,
}

/// The schedules where `cond` holds of `?1` = `arg`, by project and name.
fn list_schedules_where(s: &impl SqlStore, cond: &str, arg: i64) -> Result<Vec<ScheduleRow>> {
    s.read(|conn| {
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
            .collect::<super::db::Result<Vec<_>>>()?;
        Ok(rows)
        })
}

fn schedule_id(conn: &dyn Db, project: &str, name: &str) -> Result<i64> {
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

impl<S: SqlStore> ScheduleStore for S {
    fn add_schedule(&self, s: &NewSchedule) -> Result<ScheduleRow> {
        let id: i64 = self.transaction(Lock::Writer, |tx| {
        let pid = resolve_project(tx, &s.project)?;
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
        Ok(tx.query_row(
            "INSERT INTO schedules(uuid, project_id, name, cron, branch, params, actor, since, created) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) RETURNING id",
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
            |r| r.get(0),
        )?)
        })?;
        list_schedules_where(self, "s.id = ?1", id)?
            .pop()
            .ok_or_else(|| CoordError::NotFound("the schedule just added".into()))
    }

    fn list_schedules(&self, project: Option<&str>) -> Result<Vec<ScheduleRow>> {
        match project {
            Some(p) => {
                let pid = self.read(|conn| resolve_project(conn, p))?;
                list_schedules_where(self, "s.project_id = ?1", pid)
            }
            None => list_schedules_where(self, "?1 = 0", 0),
        }
    }

    fn remove_schedule(&self, project: &str, name: &str) -> Result<()> {
        self.conn(|conn| {
            let id = schedule_id(conn, project, name)?;
            conn.execute("DELETE FROM schedules WHERE id = ?1", [id])?;
            Ok(())
        })
    }

    fn pause_schedule(&self, project: &str, name: &str, paused: bool) -> Result<()> {
        self.conn(|conn| {
        let id = schedule_id(conn, project, name)?;
        // Resuming moves `since` to now: the ticks that passed while paused do not fire.
        conn.execute(
            "UPDATE schedules SET paused = ?2, \
             since = CASE WHEN CAST(?2 AS BIGINT) = 0 AND paused != 0 THEN ?3 ELSE since END WHERE id = ?1",
            params![id, paused, now_ms()],
        )?;
        Ok(())
        })
    }

    fn set_workflow_schedules(
        &self,
        project: &str,
        revision: &str,
        triggers: &[WorkflowTrigger],
    ) -> Result<bool> {
        self.transaction(Lock::Writer, |tx| {
        let pid = resolve_project(tx, project)?;
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
            // by reading the config again.
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
                .collect::<super::db::Result<Vec<_>>>()?;
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
        Ok(changed)
        })
    }

    fn workflow_schedules(&self) -> Result<Vec<WorkflowScheduleRow>> {
        self.read(|conn| {
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
            .collect::<super::db::Result<Vec<_>>>()?;
        Ok(rows)
        })
    }

    fn repo_access(&self, project_id: i64) -> Result<RepoAccess> {
        self.read(|conn| {
            let (uuid, url, user, deploy, known_hosts, default_branch): (
                String,
                String,
                Option<String>,
                Option<String>,
                String,
                String,
            ) = conn
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
                        .secrets()
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
        })
    }

    /// Claim tick `tick` of `schedule` (a schedule's uuid or a workflow schedule's key) and
    /// create `pipelines` in the same transaction: their ids, or `None` when the tick was
    /// claimed already (by an earlier run of this coordinator, or another beside it) or the
    /// schedule is gone or paused meanwhile. The claim is the row (schedule, tick): its
    /// primary key refuses a second one, so a crash before the commit leaves neither the
    /// claim nor a pipeline, and one after it both.
    fn fire_tick(
        &self,
        schedule: &str,
        tick: i64,
        pipelines: &[NewPipeline],
    ) -> Result<Option<Vec<i64>>> {
        self.transaction(Lock::Writer, |tx| {
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
            ids.push(crate::store::pipelines::insert_pipeline(tx, p)?.0);
        }
        Ok(Some(ids))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        let s = Store::open(&dir.join("data")).expect("open");
        if s.list_projects_slugs().is_empty() {
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
        }
        s
    }

    impl Store {
        fn list_projects_slugs(&self) -> Vec<String> {
            let conn = self.reader().expect("reader");
            let mut st = conn.prepare("SELECT slug FROM projects").expect("prepare");
            let rows = st
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<rusqlite::Result<Vec<String>>>()
                .expect("rows");
            rows
        }

        fn pipelines_of(&self, schedule_id: &str) -> Vec<(String, String, Option<String>)> {
            let conn = self.reader().expect("reader");
            let mut st = conn
                .prepare(
                    "SELECT trigger_source, git_ref, schedule_name FROM pipelines \
                     WHERE schedule_id IS ?1 ORDER BY id",
                )
                .expect("prepare");
            let rows = st
                .query_map([schedule_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("query")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("rows");
            rows
        }
    }

    fn nightly() -> NewSchedule {
        NewSchedule {
            project: "acme/widget".into(),
            name: "nightly".into(),
            cron: "0 4 * * *".into(),
            branch: "main".into(),
            params: vec![("deploy".into(), "true".into())],
            actor: None,
        }
    }

    fn pipeline(s: &ScheduleRow) -> NewPipeline {
        NewPipeline {
            project: s.project.clone(),
            git_ref: format!("refs/heads/{}", s.branch),
            trigger_source: "scheduled_pipeline".into(),
            event: "schedule".into(),
            event_action: "schedule".into(),
            schedule_name: s.name.clone(),
            schedule_id: s.uuid.clone(),
            ..Default::default()
        }
    }

    #[test]
    fn a_tick_is_claimed_once_with_its_pipeline_and_not_while_paused_or_removed() {
        let d = tempfile::tempdir().expect("tmp");
        let s = store(d.path());
        let row = s.add_schedule(&nightly()).expect("add");
        assert_eq!((row.paused, row.last_tick), (false, None));
        let dup = s.add_schedule(&nightly()).expect_err("a second `nightly`");
        assert!(dup.to_string().contains("already has a schedule"), "{dup}");
        let tick = 1_796_616_000_000;
        let first = s
            .fire_tick(&row.uuid, tick, &[pipeline(&row)])
            .expect("fire");
        assert_eq!(first.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            s.fire_tick(&row.uuid, tick, &[pipeline(&row)])
                .expect("again"),
            None
        );
        assert_eq!(
            s.pipelines_of(&row.uuid),
            [(
                "scheduled_pipeline".to_owned(),
                "refs/heads/main".to_owned(),
                Some("nightly".to_owned())
            )]
        );
        let listed = s.list_schedules(Some("acme/widget")).expect("ls");
        assert_eq!(listed[0].last_tick, Some(tick));
        assert_eq!(listed[0].params, [("deploy".to_owned(), "true".to_owned())]);
        // Paused: the next tick is not taken; resumed: `since` moves on, and it fires.
        s.pause_schedule("acme/widget", "nightly", true)
            .expect("pause");
        let next = tick + 86_400_000;
        assert_eq!(
            s.fire_tick(&row.uuid, next, &[pipeline(&row)])
                .expect("paused"),
            None
        );
        s.pause_schedule("acme/widget", "nightly", false)
            .expect("resume");
        let resumed = &s.list_schedules(None).expect("ls")[0];
        assert!(resumed.since > row.since || resumed.since >= now_ms() - 5_000);
        assert!(s
            .fire_tick(&row.uuid, next, &[pipeline(&row)])
            .expect("fire")
            .is_some());
        s.remove_schedule("acme/widget", "nightly").expect("rm");
        assert_eq!(
            s.fire_tick(&row.uuid, next + 86_400_000, &[pipeline(&row)])
                .expect("removed"),
            None
        );
        let e = s
            .remove_schedule("acme/widget", "nightly")
            .expect_err("gone");
        assert!(e.to_string().contains("no schedule named"), "{e}");
        assert_eq!(s.pipelines_of(&row.uuid).len(), 2);
    }

    #[test]
    fn two_stores_on_one_database_claim_a_tick_once_between_them() {
        let d = tempfile::tempdir().expect("tmp");
        let row = store(d.path()).add_schedule(&nightly()).expect("add");
        let tick = 1_796_616_000_000;
        // Two coordinators (here two stores with their own connections) race for 20 ticks.
        let won: Vec<usize> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (dir, row) = (d.path(), row.clone());
                    scope.spawn(move || {
                        let s = store(dir);
                        (0..20)
                            .filter(|i| {
                                s.fire_tick(&row.uuid, tick + i * 60_000, &[pipeline(&row)])
                                    .expect("fire")
                                    .is_some()
                            })
                            .count()
                    })
                })
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .collect()
        });
        assert_eq!(won.iter().sum::<usize>(), 20, "{won:?}");
        assert_eq!(store(d.path()).pipelines_of(&row.uuid).len(), 20);
    }

    #[test]
    fn a_config_read_again_keeps_unchanged_triggers_and_drops_removed_ones() {
        let d = tempfile::tempdir().expect("tmp");
        let s = store(d.path());
        let t = |w: &str, cron: &str| WorkflowTrigger {
            workflow: w.into(),
            cron: cron.into(),
            only: Some(vec!["main".into(), "/release\\/.*/".into()]),
            ignore: Vec::new(),
        };
        assert!(s
            .set_workflow_schedules(
                "acme/widget",
                "c1",
                &[t("nightly", "0 4 * * *"), t("hourly", "0 * * * *")]
            )
            .expect("set"));
        let before = s.workflow_schedules().expect("read");
        assert_eq!(before.len(), 2);
        assert_eq!(before[0].trigger, t("hourly", "0 * * * *"));
        std::thread::sleep(Duration::from_millis(5));
        // Read again: the same triggers change nothing (and keep their `since`); the
        // hourly one goes when the config drops it; a new cron is a new schedule.
        assert!(!s
            .set_workflow_schedules(
                "acme/widget",
                "c2",
                &[t("nightly", "0 4 * * *"), t("hourly", "0 * * * *")]
            )
            .expect("set"));
        assert_eq!(
            s.workflow_schedules()
                .expect("read")
                .iter()
                .map(|w| w.since)
                .collect::<Vec<_>>(),
            before.iter().map(|w| w.since).collect::<Vec<_>>()
        );
        assert!(s
            .set_workflow_schedules("acme/widget", "c3", &[t("nightly", "0 5 * * *")])
            .expect("set"));
        let after = s.workflow_schedules().expect("read");
        assert_eq!(after.len(), 1);
        assert_eq!(
            (after[0].trigger.cron.as_str(), after[0].revision.as_str()),
            ("0 5 * * *", "c3")
        );
        let r = s.repo_access(after[0].project_id).expect("access");
        assert_eq!(
            (r.clone_url.as_str(), r.default_branch.as_str()),
            ("git@bitbucket.org:acme/widget.git", "main")
        );
    }
}
