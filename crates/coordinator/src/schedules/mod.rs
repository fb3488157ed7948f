//! The scheduler inside `serve`: every second it reads the schedules (scheduled pipelines
//! and the default branches' scheduled workflows), asks `model::schedule` which tick is due
//! now, and hands the tick's pipelines to the store, which claims the tick and creates them
//! in one transaction ([`ScheduleStore::fire_tick`]): a tick fires once, also when the
//! coordinator restarts in the middle of it, and a tick missed while it was down fires once
//! at start-up (only the latest: none is backfilled). The pipeline runner then runs them as
//! any other.
//!
//! A scheduled workflow fires on every branch its filters allow that exists: the project's
//! branches are listed from its config mirror (fetched with its keys, as for a config).
//!
//! One door: [`spawn`].
//!
//! [`ScheduleStore::fire_tick`]: crate::store::ScheduleStore::fire_tick

use super::AppState;
use crate::model::schedule::{self, Clock, Firing, SystemClock};
use crate::pipelines::config;
use crate::store::pipelines::NewPipeline;
use bosun_config::cron::{format_utc, Cron};
use bosun_config::{Filter, Pattern};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the scheduler looks, at most (passes fall just after each whole second).
const PASS_EVERY: Duration = Duration::from_secs(1);
/// How long listing a project's branches may take.
const LIST_LIMIT: Duration = Duration::from_secs(60);
/// After a failed branch listing, the scheduled workflow is tried again after this.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the scheduler needs beside the store.
pub struct SchedulerSettings {
    clock: Arc<dyn Clock>,
    vcs_hosts: Vec<String>,
    data_dir: PathBuf,
    mirror_budget: u64,
}

impl SchedulerSettings {
    /// The system clock, or (tests) the time written in `clock_file`.
    pub fn new(
        clock_file: Option<PathBuf>,
        vcs_hosts: Vec<String>,
        data_dir: PathBuf,
        mirror_budget: u64,
    ) -> SchedulerSettings {
        let clock: Arc<dyn Clock> = match clock_file {
            Some(path) => Arc::new(FileClock(path)),
            None => Arc::new(SystemClock),
        };
        SchedulerSettings {
            clock,
            vcs_hosts,
            data_dir,
            mirror_budget,
        }
    }
}

/// A clock read from a file holding milliseconds since the epoch (`serve
/// --schedule-clock-file`, for tests).
struct FileClock(PathBuf);

impl Clock for FileClock {
    fn now_ms(&self) -> Option<i64> {
        std::fs::read_to_string(&self.0).ok()?.trim().parse().ok()
    }
}

/// Start the scheduler.
pub fn spawn(state: Arc<AppState>, settings: SchedulerSettings) {
    tokio::spawn(async move {
        let mut failed: HashMap<String, (i64, Instant)> = HashMap::new();
        loop {
            if let Err(e) = pass(&state, &settings, &mut failed).await {
                tracing::warn!("schedules: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(until_next_second()) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    });
}

/// Until just after the system clock's next whole second: cron ticks fall on whole minutes,
/// so a pass then fires a tick within milliseconds of its time, not up to a second late.
fn until_next_second() -> Duration {
    let ms = SystemClock.now_ms().unwrap_or(0).rem_euclid(1000);
    Duration::from_millis((1000 - ms + 2) as u64).min(PASS_EVERY + Duration::from_millis(2))
}

/// The store's pipeline for one firing of `project`'s schedule.
fn new_pipeline(project: &str, f: Firing) -> NewPipeline {
    NewPipeline {
        project: project.to_owned(),
        git_ref: format!("refs/heads/{}", f.branch),
        params: f.params,
        trigger_source: f.trigger_source.to_owned(),
        event: schedule::SCHEDULE_EVENT.to_owned(),
        event_action: schedule::SCHEDULE_EVENT.to_owned(),
        username: Some(f.actor),
        schedule_name: f.schedule_name,
        schedule_id: f.schedule_id,
        scheduled_workflow: f.workflow,
        ..Default::default()
    }
}

/// `filters.branches` as kept (the patterns as written) → the compiler's filter.
fn filter(only: &Option<Vec<String>>, ignore: &[String]) -> Result<Option<Filter>, String> {
    let parse = |v: &[String]| -> Result<Vec<Pattern>, String> {
        v.iter()
            .map(|p| Pattern::parse(p).map_err(|e| format!("branch filter {p}: {e}")))
            .collect()
    };
    if only.is_none() && ignore.is_empty() {
        return Ok(None);
    }
    Ok(Some(Filter {
        only: parse(only.as_deref().unwrap_or(&[]))?,
        ignore: parse(ignore)?,
    }))
}

async fn pass(
    state: &Arc<AppState>,
    settings: &SchedulerSettings,
    failed: &mut HashMap<String, (i64, Instant)>,
) -> crate::Result<()> {
    let Some(now) = settings.clock.now_ms() else {
        tracing::warn!("schedules: the clock cannot be read");
        return Ok(());
    };
    let (pipelines, workflows) = state
        .db(|s| Ok((s.list_schedules(None)?, s.workflow_schedules()?)))
        .await?;
    let mut fired = 0usize;
    for s in pipelines.into_iter().filter(|s| !s.paused) {
        let Ok(cron) = Cron::parse(&s.cron) else {
            continue; // checked when added; a damaged row fires nothing
        };
        let Some(tick) = schedule::due_tick(&cron, s.since, s.last_tick, now) else {
            continue;
        };
        let f = schedule::scheduled_pipeline(
            &s.name,
            &s.uuid,
            &s.branch,
            &s.params,
            s.actor.as_deref(),
        );
        let batch = vec![new_pipeline(&s.project, f)];
        let key = s.uuid.clone();
        if let Some(ids) = state.db(move |db| db.fire_tick(&key, tick, &batch)).await? {
            tracing::info!(
                schedule = s.name,
                project = s.project,
                tick = format_utc(tick),
                pipelines = ?ids,
                "scheduled pipeline fired"
            );
            fired += ids.len();
        }
    }
    for w in workflows {
        let Ok(cron) = Cron::parse(&w.trigger.cron) else {
            continue;
        };
        let Some(tick) = schedule::due_tick(&cron, w.since, w.last_tick, now) else {
            continue;
        };
        if failed
            .get(&w.key)
            .is_some_and(|(t, at)| *t == tick && at.elapsed() < RETRY_AFTER)
        {
            continue;
        }
        let f = match filter(&w.trigger.only, &w.trigger.ignore) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(workflow = w.trigger.workflow, project = w.project, "{e}");
                failed.insert(w.key.clone(), (tick, Instant::now()));
                continue;
            }
        };
        let pid = w.project_id;
        let access = state.db(move |s| s.repo_access(pid)).await?;
        let (hosts, mirrors) = (
            settings.vcs_hosts.clone(),
            config::mirrors(&settings.data_dir, settings.mirror_budget),
        );
        let listing =
            tokio::task::spawn_blocking(move || config::branches(&access, &hosts, &mirrors));
        let branches = match tokio::time::timeout(LIST_LIMIT, listing).await {
            Ok(Ok(Ok(b))) => b,
            outcome => {
                let why = match outcome {
                    Ok(Ok(Err(e))) => e.to_string(),
                    Ok(Err(e)) => format!("the listing task failed: {e}"),
                    _ => format!("took longer than {}s", LIST_LIMIT.as_secs()),
                };
                tracing::warn!(
                    workflow = w.trigger.workflow,
                    project = w.project,
                    tick = format_utc(tick),
                    "scheduled workflow: cannot list the branches ({why}); trying again in {}s",
                    RETRY_AFTER.as_secs()
                );
                failed.insert(w.key.clone(), (tick, Instant::now()));
                continue;
            }
        };
        failed.remove(&w.key);
        let (firings, left_out) =
            schedule::scheduled_workflow(&w.trigger.workflow, f.as_ref(), &branches);
        if left_out > 0 {
            tracing::warn!(
                workflow = w.trigger.workflow,
                project = w.project,
                "scheduled workflow: {left_out} more branches match its filters than the {} a tick starts; narrow `filters.branches`",
                schedule::MAX_BRANCHES_PER_TICK
            );
        }
        let batch: Vec<NewPipeline> = firings
            .into_iter()
            .map(|f| new_pipeline(&w.project, f))
            .collect();
        let key = w.key.clone();
        if let Some(ids) = state.db(move |db| db.fire_tick(&key, tick, &batch)).await? {
            tracing::info!(
                workflow = w.trigger.workflow,
                project = w.project,
                tick = format_utc(tick),
                pipelines = ?ids,
                "scheduled workflow fired"
            );
            fired += ids.len();
        }
    }
    if fired > 0 {
        state.pipelines_wake.notify_one();
        state.bump();
    }
    Ok(())
}
