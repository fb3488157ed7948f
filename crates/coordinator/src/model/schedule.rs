//! Schedules, pure: which tick of a schedule is due now, on which branches a scheduled
//! workflow runs, and what a tick fires. The scheduler (`crate::schedules`) reads the
//! schedules, asks these functions, and hands what they return to the store, which claims the
//! tick and creates its pipelines in one transaction. Time comes in as a number (milliseconds
//! since the epoch, UTC) from a [`Clock`], so every rule here is tested without waiting.

use bosun_config::cron::Cron;
use bosun_config::Filter;

/// `pipeline.trigger_source` of a scheduled pipeline (CircleCI's word).
pub const SCHEDULED_PIPELINE: &str = "scheduled_pipeline";
/// `pipeline.trigger_source` of a scheduled workflow's pipeline. CircleCI's documents list
/// `scheduled_pipeline` for scheduled pipelines and `schedule` as the trigger type and event
/// of scheduled runs; they name no `trigger_source` for the older scheduled workflows, so we
/// chose `schedule` (docs/schedules.md).
pub const SCHEDULED_WORKFLOW: &str = "schedule";
/// `pipeline.event.name` (and `.action`) of both.
pub const SCHEDULE_EVENT: &str = "schedule";
/// The actor of a scheduled pipeline made without `--actor` (CircleCI's "Scheduling System").
pub const SYSTEM_ACTOR: &str = "system";

/// Where the scheduler takes "now" from: the system clock when serving, a clock the test
/// sets otherwise.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch (UTC); `None` when the clock cannot be read.
    fn now_ms(&self) -> Option<i64>;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Option<i64> {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        i64::try_from(d.as_millis()).ok()
    }
}

/// The tick of `cron` due at `now`, if any: the latest time the expression names at or before
/// `now`, when it is at or after `since` (the schedule's creation, its last resumption, or
/// the config read that made it) and later than the last tick fired (`last`). Earlier ticks
/// missed while the coordinator was down are not backfilled: only the latest one fires, once
/// (at start-up, when it was missed).
pub fn due_tick(cron: &Cron, since: i64, last: Option<i64>, now: i64) -> Option<i64> {
    let tick = cron.latest_at_or_before(now)?;
    (tick >= since && last.is_none_or(|l| tick > l)).then_some(tick)
}

/// The branches a scheduled workflow runs on at a tick: those of `existing` that its
/// `filters.branches` allows (every one without a filter; `only` first, then `ignore`, as
/// for jobs), each once, sorted.
pub fn branches_to_fire(filter: Option<&Filter>, existing: &[String]) -> Vec<String> {
    let mut out: Vec<String> = existing
        .iter()
        .filter(|b| filter.is_none_or(|f| f.allows(b)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What one pipeline of a tick is made of (the scheduler turns it into the store's
/// `NewPipeline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub branch: String,
    pub trigger_source: &'static str,
    pub params: Vec<(String, String)>,
    pub actor: String,
    /// `pipeline.schedule.name` and `.id` (a scheduled pipeline's; empty for a scheduled
    /// workflow, as CircleCI leaves them).
    pub schedule_name: String,
    pub schedule_id: String,
    /// The one workflow a scheduled workflow's pipeline runs; `None`: every workflow
    /// without `triggers`, as for a trigger.
    pub workflow: Option<String>,
}

/// A scheduled pipeline's tick: one pipeline on its branch, with its parameters and actor.
pub fn scheduled_pipeline(
    name: &str,
    id: &str,
    branch: &str,
    params: &[(String, String)],
    actor: Option<&str>,
) -> Firing {
    Firing {
        branch: branch.to_owned(),
        trigger_source: SCHEDULED_PIPELINE,
        params: params.to_vec(),
        actor: actor
            .filter(|a| !a.trim().is_empty())
            .unwrap_or(SYSTEM_ACTOR)
            .to_owned(),
        schedule_name: name.to_owned(),
        schedule_id: id.to_owned(),
        workflow: None,
    }
}

/// The most pipelines one tick of a scheduled workflow makes (our choice, the sources name
/// none): a trigger without a branch filter on a repository of thousands of branches would
/// otherwise start thousands of pipelines every time it fires.
pub const MAX_BRANCHES_PER_TICK: usize = 50;

/// A scheduled workflow's tick: one pipeline per branch that exists and its filters allow,
/// each running that workflow only (the first [`MAX_BRANCHES_PER_TICK`] branches by name),
/// and how many branches were left out.
pub fn scheduled_workflow(
    workflow: &str,
    filter: Option<&Filter>,
    existing: &[String],
) -> (Vec<Firing>, usize) {
    let mut branches = branches_to_fire(filter, existing);
    let left_out = branches.len().saturating_sub(MAX_BRANCHES_PER_TICK);
    branches.truncate(MAX_BRANCHES_PER_TICK);
    let firings = branches
        .into_iter()
        .map(|branch| Firing {
            branch,
            trigger_source: SCHEDULED_WORKFLOW,
            params: Vec::new(),
            actor: SYSTEM_ACTOR.to_owned(),
            schedule_name: String::new(),
            schedule_id: String::new(),
            workflow: Some(workflow.to_owned()),
        })
        .collect();
    (firings, left_out)
}

/// Which of a config's workflows a pipeline runs: for a scheduled workflow's pipeline only
/// that workflow (`scheduled`); for any other pipeline every workflow without `triggers`
/// (CircleCI's rule: a workflow with triggers runs on its schedule only).
pub fn runs_workflow(scheduled: Option<&str>, name: &str, has_triggers: bool) -> bool {
    match scheduled {
        Some(w) => w == name,
        None => !has_triggers,
    }
}

/// The key a scheduled workflow's ticks are claimed under: one per project, workflow and
/// cron expression, so an unchanged trigger keeps its key when the config is read again.
pub fn workflow_schedule_key(project_id: i64, workflow: &str, cron: &str) -> String {
    format!("workflow:{project_id}:{workflow}:{cron}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bosun_config::Pattern;

    /// 2026-12-07T15:04:30Z.
    const T: i64 = 1_796_655_870_000;
    const MIN: i64 = 60_000;

    fn cron(s: &str) -> Cron {
        Cron::parse(s).expect("cron")
    }

    /// A clock a test sets.
    struct At(std::sync::atomic::AtomicI64);
    impl Clock for At {
        fn now_ms(&self) -> Option<i64> {
            Some(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
    }

    #[test]
    fn every_minute_fires_each_tick_once_from_its_creation_on() {
        let c = cron("* * * * *");
        let tick = T - 30_000; // 15:04:00
        let clock = At(T.into());
        let mut last = None;
        let mut fired = Vec::new();
        // Made at 15:04:30: the 15:04 tick is before it, so nothing yet.
        let since = T;
        for step in 0..(5 * 60) {
            clock
                .0
                .store(T + step * 1_000, std::sync::atomic::Ordering::SeqCst);
            let now = clock.now_ms().expect("now");
            if let Some(t) = due_tick(&c, since, last, now) {
                fired.push(t);
                last = Some(t);
            }
        }
        // 15:05 … 15:09, once each, in order.
        assert_eq!(
            fired,
            (1..=5).map(|i| tick + i * MIN).collect::<Vec<_>>(),
            "one fire per minute"
        );
    }

    #[test]
    fn a_tick_on_the_creation_time_fires_and_missed_ticks_are_not_backfilled() {
        let c = cron("* * * * *");
        let tick = T - 30_000;
        assert_eq!(due_tick(&c, tick, None, tick), Some(tick));
        // Down from 15:05 to 15:42: one run at start-up, for the last tick only.
        let last = Some(tick);
        let back = tick + 38 * MIN + 5_000;
        assert_eq!(due_tick(&c, tick, last, back), Some(tick + 38 * MIN));
        // Claimed (the store says so): not again within that minute.
        assert_eq!(
            due_tick(&c, tick, Some(tick + 38 * MIN), back + 50_000),
            None
        );
        // A daily schedule whose only tick today came before it was made: nothing.
        let nightly = cron("0 4 * * *");
        assert_eq!(due_tick(&nightly, T, None, T + 10 * MIN), None);
        // Paused over a tick and resumed after it (since = the resumption): nothing.
        assert_eq!(due_tick(&c, back + 1, Some(tick), back + 2_000), None);
    }

    #[test]
    fn a_scheduled_workflow_fires_on_each_existing_branch_its_filters_allow() {
        let existing: Vec<String> = ["main", "release/1.0", "release-x", "feature", "main"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let f = Filter {
            only: vec![
                Pattern::parse("main").expect("p"),
                Pattern::parse("/release\\/.*/").expect("p"),
                Pattern::parse("develop").expect("p"),
            ],
            ignore: Vec::new(),
        };
        let (fired, left_out) = scheduled_workflow("nightly", Some(&f), &existing);
        assert_eq!(left_out, 0);
        let branches: Vec<&str> = fired.iter().map(|f| f.branch.as_str()).collect();
        // `develop` does not exist; `release-x` does not match; `main` once.
        assert_eq!(branches, ["main", "release/1.0"]);
        assert!(fired
            .iter()
            .all(|f| f.workflow.as_deref() == Some("nightly")
                && f.trigger_source == SCHEDULED_WORKFLOW
                && f.schedule_name.is_empty()));
        let ignore = Filter {
            only: Vec::new(),
            ignore: vec![Pattern::parse("/release.*/").expect("p")],
        };
        assert_eq!(
            branches_to_fire(Some(&ignore), &existing),
            ["feature", "main"]
        );
        assert_eq!(branches_to_fire(None, &existing).len(), 4);
        assert!(scheduled_workflow("nightly", Some(&f), &[]).0.is_empty());
        // Without a filter on a repository of many branches: a bounded number per tick.
        let many: Vec<String> = (0..120).map(|i| format!("b{i:03}")).collect();
        let (fired, left_out) = scheduled_workflow("nightly", None, &many);
        assert_eq!(
            (fired.len(), left_out),
            (MAX_BRANCHES_PER_TICK, 120 - MAX_BRANCHES_PER_TICK)
        );
        assert_eq!(fired[0].branch, "b000");
    }

    #[test]
    fn a_scheduled_pipeline_carries_its_name_id_parameters_and_actor() {
        let params = vec![("deploy".to_owned(), "true".to_owned())];
        let f = scheduled_pipeline("nightly", "u-1", "main", &params, None);
        assert_eq!(f.trigger_source, "scheduled_pipeline");
        assert_eq!(
            (
                f.schedule_name.as_str(),
                f.schedule_id.as_str(),
                f.branch.as_str()
            ),
            ("nightly", "u-1", "main")
        );
        assert_eq!(
            (f.params, f.actor.as_str(), f.workflow),
            (params, "system", None)
        );
        assert_eq!(
            scheduled_pipeline("n", "i", "b", &[], Some("ada")).actor,
            "ada"
        );
    }

    #[test]
    fn workflows_with_triggers_run_on_their_schedule_only() {
        assert!(runs_workflow(None, "build", false));
        assert!(!runs_workflow(None, "nightly", true));
        assert!(runs_workflow(Some("nightly"), "nightly", true));
        assert!(!runs_workflow(Some("nightly"), "build", false));
        assert_ne!(
            workflow_schedule_key(1, "nightly", "0 4 * * *"),
            workflow_schedule_key(2, "nightly", "0 4 * * *")
        );
    }
}
