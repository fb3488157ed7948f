//! Schedules end to end, real parts only: `bosun coordinator serve` (its scheduler, SQLite),
//! a `bosun agent`, the Docker engine and the Bitbucket stand-in. Scheduled pipelines are
//! made with the CLI; scheduled workflows come from `triggers:` in the default branch's
//! config. The scheduler's clock is a file the test writes (`serve --schedule-clock-file`),
//! so ticks come when the test says, except in the test that waits for a real minute.

use crate::harness;
use crate::harness::bitbucket::*;
use crate::harness::{image, Coordinator};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MIN: i64 = 60_000;

fn config() -> String {
    let img = image("base");
    format!(
        r#"version: 2.1
parameters:
  who: {{type: string, default: nobody}}
jobs:
  build:
    docker: [{{image: {img}}}]
    steps:
      - run: echo "build by << pipeline.trigger_source >> schedule=<< pipeline.schedule.name >>/<< pipeline.schedule.id >> on << pipeline.git.branch >> for << pipeline.parameters.who >>"
  nightly-job:
    docker: [{{image: {img}}}]
    steps:
      - run: echo "nightly on << pipeline.git.branch >> by << pipeline.trigger_source >>"
workflows:
  on-push:
    jobs: [build]
  nightly:
    triggers:
      - schedule:
          cron: "* * * * *"
          filters:
            branches:
              only: [main, /release\/.*/, gone]
    jobs: [nightly-job]
"#
    )
}

/// The triggers of `config`'s `nightly` workflow.
const TRIGGERS: &str = "    triggers:\n      - schedule:\n          cron: \"* * * * *\"\n          filters:\n            branches:\n              only: [main, /release\\/.*/, gone]\n";

/// [`config`] without the triggers: every workflow runs for every pipeline.
fn plain_config() -> String {
    let c = config();
    assert!(c.contains(TRIGGERS));
    c.replace(TRIGGERS, "")
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// The scheduler's clock, a file the test writes.
struct TestClock(PathBuf);

impl TestClock {
    fn new(dir: &Path) -> TestClock {
        let c = TestClock(dir.join("schedule-clock"));
        c.set(real_now());
        c
    }
    fn set(&self, ms: i64) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string()).expect("clock");
        std::fs::rename(&tmp, &self.0).expect("clock");
    }
    fn arg(&self) -> &str {
        self.0.to_str().expect("utf8")
    }
}

/// The first whole minute after now (real time): the test's clock starts its ticks there, so
/// every schedule made now (its ticks count from its creation) has them ahead.
fn next_minute() -> i64 {
    (real_now() / MIN + 1) * MIN
}

/// A pipeline a schedule made, as the database has it.
#[derive(Debug)]
struct Scheduled {
    id: i64,
    trigger_source: String,
    schedule_id: Option<String>,
    workflow: Option<String>,
    branch: String,
}

/// Pipelines made by a schedule, oldest first.
fn scheduled(data: &Path) -> Vec<Scheduled> {
    let db = rusqlite::Connection::open(data.join("coordinator.db")).expect("db");
    let mut st = db
        .prepare(
            "SELECT id, trigger_source, schedule_id, scheduled_workflow, COALESCE(branch, '') \
             FROM pipelines WHERE trigger_source IN ('scheduled_pipeline', 'schedule') ORDER BY id",
        )
        .expect("prepare");
    let rows = st
        .query_map([], |r| {
            Ok(Scheduled {
                id: r.get(0)?,
                trigger_source: r.get(1)?,
                schedule_id: r.get(2)?,
                workflow: r.get(3)?,
                branch: r.get(4)?,
            })
        })
        .expect("query")
        .collect::<rusqlite::Result<Vec<_>>>()
        .expect("rows");
    rows
}

/// Wait until `n` scheduled pipelines exist; panics past `within` or when more appear.
fn wait_scheduled(data: &Path, n: usize, within: Duration) -> Vec<i64> {
    let t0 = Instant::now();
    loop {
        let all = scheduled(data);
        assert!(all.len() <= n, "more than {n} scheduled pipelines: {all:?}");
        if all.len() == n {
            return all.iter().map(|p| p.id).collect();
        }
        assert!(
            t0.elapsed() < within,
            "{} scheduled pipelines after {within:?}, want {n}: {all:?}",
            all.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `bosun coordinator ARGS… --data DATA`: (success, stdout + stderr).
fn cli_outcome(data: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(harness::bosun_bin())
        .arg("coordinator")
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run bosun");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn job_log(data: &Path, job: i64) -> String {
    String::from_utf8_lossy(&store(data).log_from(job, 0).expect("log")).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_pipelines_from_the_cli_fire_once_per_tick_with_their_name_id_and_parameters() {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = TestClock::new(dir.path());
    let s = setup_serving(
        &plain_config(),
        &["--uuid", UUID],
        &["--schedule-clock-file", clock.arg()],
        &[],
        |c, rig| vec![c.agent(rig, "one").start()],
    );
    let m0 = next_minute();

    // Bad input is refused with the reason, and nothing is added.
    for (args, want) in [
        (vec!["--cron", "0 0 * * * *"], "6 fields"),
        (vec!["--cron", "61 * * * *"], "--cron"),
        (vec!["--cron", "@daily"], "nicknames"),
        (vec!["--cron", "* * * * *", "--param", "novalue"], "K=V"),
    ] {
        let mut a = vec![
            "schedule",
            "add",
            "--project",
            "acme/widget",
            "--name",
            "bad",
            "--branch",
            "main",
        ];
        a.extend(args);
        let (ok, out) = cli_outcome(&s.data, &a);
        assert!(!ok && out.contains(want), "{a:?}: {out}");
    }
    let (ok, out) = cli_outcome(
        &s.data,
        &[
            "schedule",
            "add",
            "--project",
            "acme/nope",
            "--name",
            "x",
            "--cron",
            "* * * * *",
            "--branch",
            "main",
        ],
    );
    assert!(!ok && out.contains("no project acme/nope"), "{out}");

    let out = s.c.cli(&[
        "schedule",
        "add",
        "--project",
        "acme/widget",
        "--name",
        "every-minute",
        "--cron",
        "* * * * *",
        "--branch",
        "main",
        "--param",
        "who=ada",
        "--actor",
        "ada",
    ]);
    assert!(out.starts_with("schedule every-minute ("), "{out}");
    let (ok, out) = cli_outcome(
        &s.data,
        &[
            "schedule",
            "add",
            "--project",
            "acme/widget",
            "--name",
            "every-minute",
            "--cron",
            "* * * * *",
            "--branch",
            "main",
        ],
    );
    assert!(!ok && out.contains("already has a schedule"), "{out}");
    let ls = s.c.cli(&["schedule", "ls"]);
    assert!(
        ls.contains("acme/widget  every-minute  \"* * * * *\"  main  next ")
            && ls.contains("never fired")
            && ls.contains("actor ada")
            && ls.contains("who=ada"),
        "{ls}"
    );
    let id = ls
        .split_whitespace()
        .find(|w| w.len() == 36 && w.matches('-').count() == 4)
        .expect("the schedule's id")
        .to_owned();

    // Nothing before its first tick.
    clock.set(m0 - 1_000);
    std::thread::sleep(Duration::from_secs(2));
    assert!(scheduled(&s.data).is_empty());

    // The tick at m0: one pipeline, which runs with the schedule's values.
    clock.set(m0 + 1_000);
    let first = wait_scheduled(&s.data, 1, Duration::from_secs(20))[0];
    let rows = scheduled(&s.data);
    assert_eq!(
        rows[0].schedule_id.as_deref(),
        Some(id.as_str()),
        "{rows:?}"
    );
    assert_eq!(rows[0].workflow, None, "{rows:?}");
    let p = wait_pipeline(
        &s.data,
        first,
        &["success", "failed", "errored"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    assert_eq!(p.trigger_source, "scheduled_pipeline");
    let wfs: Vec<&str> = p.workflows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(wfs, ["on-push", "nightly"], "{p:#?}");
    let log = job_log(&s.data, job_id(&p, "build"));
    assert!(
        log.contains(&format!(
            "build by scheduled_pipeline schedule=every-minute/{id} on main for ada"
        )),
        "{log}"
    );

    // Later in the same minute: nothing more.
    clock.set(m0 + 40_000);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&s.data).len(), 1);

    // Each minute once; minutes the clock skipped are not made up, only the latest fires.
    clock.set(m0 + MIN + 500);
    wait_scheduled(&s.data, 2, Duration::from_secs(20));
    clock.set(m0 + 4 * MIN + 500);
    wait_scheduled(&s.data, 3, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&s.data).len(), 3);
    let ls = s.c.cli(&["schedule", "ls", "--project", "acme/widget"]);
    let last = bosun::config::cron::format_utc(m0 + 4 * MIN);
    assert!(ls.contains(&format!("last {last}")), "{ls}");

    // Paused: no tick fires; removed: none either.
    assert!(s
        .c
        .cli(&[
            "schedule",
            "pause",
            "--project",
            "acme/widget",
            "--name",
            "every-minute"
        ])
        .contains("paused"));
    assert!(s.c.cli(&["schedule", "ls"]).contains("paused"));
    clock.set(m0 + 5 * MIN + 500);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&s.data).len(), 3);
    s.c.cli(&[
        "schedule",
        "rm",
        "--project",
        "acme/widget",
        "--name",
        "every-minute",
    ]);
    clock.set(m0 + 6 * MIN + 500);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&s.data).len(), 3);
    assert_eq!(s.c.cli(&["schedule", "ls"]), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_triggers_workflow_runs_on_its_schedule_on_each_existing_branch_and_not_on_push() {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = TestClock::new(dir.path());
    let s = setup_serving(
        &config(),
        &["--uuid", UUID],
        &["--schedule-clock-file", clock.arg()],
        &[],
        |c, rig| vec![c.agent(rig, "one").start()],
    );
    // Branches besides main: one the filters allow, one they do not (`gone` is allowed but
    // does not exist).
    s.repo.push("HEAD:refs/heads/release/1.0");
    s.repo.push("HEAD:refs/heads/feature");

    // A push to the default branch runs the workflow without triggers only, and reads
    // which workflows are scheduled.
    let sha = s.repo.head();
    let body = push_payload("acme/widget", "branch", "main", &sha, "config");
    let (code, answer) = deliver(&s.addr, "repo:push", "{s-1}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let pushed = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p = wait_pipeline(
        &s.data,
        pushed,
        &["success", "failed", "errored"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    let wfs: Vec<&str> = p.workflows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        wfs,
        ["on-push"],
        "the scheduled workflow ran on a push: {p:#?}"
    );
    assert!(scheduled(&s.data).is_empty());

    // Its tick: one pipeline per existing branch the filters allow, each running the
    // scheduled workflow alone.
    let m0 = next_minute();
    clock.set(m0 + 1_000);
    let ids = wait_scheduled(&s.data, 2, Duration::from_secs(30));
    let rows = scheduled(&s.data);
    let branches: Vec<&str> = rows.iter().map(|r| r.branch.as_str()).collect();
    assert_eq!(branches, ["main", "release/1.0"], "{rows:?}");
    assert!(
        rows.iter().all(|r| r.trigger_source == "schedule"
            && r.workflow.as_deref() == Some("nightly")
            && r.schedule_id.is_none()),
        "{rows:?}"
    );
    for id in ids {
        let p = wait_pipeline(
            &s.data,
            id,
            &["success", "failed", "errored"],
            Duration::from_secs(120),
        );
        assert_eq!(p.status.as_str(), "success", "{p:#?}");
        assert_eq!(p.trigger_source, "schedule");
        let wfs: Vec<&str> = p.workflows.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(wfs, ["nightly"], "{p:#?}");
        let log = job_log(&s.data, job_id(&p, "nightly-job"));
        let branch = p.branch.clone().expect("branch");
        assert!(
            log.contains(&format!("nightly on {branch} by schedule")),
            "{log}"
        );
    }
    let ls = s.c.cli(&["schedule", "ls", "--project", "acme/widget"]);
    let tick = bosun::config::cron::format_utc(m0);
    assert!(
        ls.contains("acme/widget  workflow nightly  \"* * * * *\"  branches only [main, /release\\/.*/, gone] ignore []")
            && ls.contains(&format!("last {tick}")),
        "{ls}"
    );
    // Not again in the same minute.
    clock.set(m0 + 30_000);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(scheduled(&s.data).len(), 2);

    // The default branch's config drops the trigger: read again at the next push, it no
    // longer fires.
    s.repo.write(".circleci/config.yml", &plain_config());
    let sha = s.repo.commit("no schedule");
    s.repo.push("HEAD:refs/heads/main");
    let body = push_payload("acme/widget", "branch", "main", &sha, "no schedule");
    let (code, answer) = deliver(&s.addr, "repo:push", "{s-2}", &body, SECRET).await;
    assert_eq!(code, 202, "{answer}");
    let pushed = answer["pipelines"][0]["id"].as_i64().expect("pipeline id");
    let p = wait_pipeline(
        &s.data,
        pushed,
        &["success", "failed", "errored"],
        Duration::from_secs(120),
    );
    let wfs: Vec<&str> = p.workflows.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        wfs,
        ["on-push", "nightly"],
        "without triggers it runs on push: {p:#?}"
    );
    clock.set(m0 + MIN + 1_000);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(scheduled(&s.data).len(), 2);
}

#[test]
fn a_restart_in_the_middle_of_a_tick_fires_each_schedule_once_and_missed_ticks_fire_once_at_start_up(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let clock = TestClock::new(dir.path());
    let mut c = Coordinator::builder()
        .args(&["--schedule-clock-file", clock.arg()])
        .start();
    // A project whose repository cannot be read: its pipelines error at once, so the test
    // measures the scheduler alone.
    c.cli(&[
        "project",
        "add",
        "--slug",
        "acme/fast",
        "--clone-url",
        "/nonexistent/fast.git",
    ]);
    const N: usize = 60;
    for i in 0..N {
        c.cli(&[
            "schedule",
            "add",
            "--project",
            "acme/fast",
            "--name",
            &format!("s{i}"),
            "--cron",
            "* * * * *",
            "--branch",
            "main",
        ]);
    }
    let db_file = c.data.join("coordinator.db");
    let db = || rusqlite::Connection::open(&db_file).expect("db");
    let fired = |tick: i64| -> usize {
        db().query_row(
            "SELECT COUNT(*) FROM schedule_ticks WHERE tick = ?1",
            [tick],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as usize
    };
    let m0 = next_minute();
    let mut mid = Vec::new();
    for k in 0..3 {
        let tick = m0 + k * MIN;
        clock.set(tick + 500);
        // Kill the coordinator as soon as the tick has begun to fire.
        let t0 = Instant::now();
        while fired(tick) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tick {k} never fired"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        c.kill();
        let at_kill = fired(tick);
        mid.push(at_kill);
        c.restart();
        // After the restart every schedule has fired this tick, once.
        let t0 = Instant::now();
        while fired(tick) < N {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "tick {k}: {} of {N}",
                fired(tick)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(2));
        let per_schedule: Vec<(String, i64)> = {
            let conn = db();
            let mut st = conn
                .prepare(
                    "SELECT p.schedule_id, COUNT(*) FROM pipelines p \
                     WHERE p.schedule_id IS NOT NULL GROUP BY p.schedule_id",
                )
                .expect("prepare");
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<rusqlite::Result<Vec<_>>>()
                .expect("rows");
            rows
        };
        assert_eq!(per_schedule.len(), N);
        assert!(
            per_schedule.iter().all(|(_, n)| *n == k + 1),
            "tick {k}: a schedule fired more or less than once a tick: {per_schedule:?}"
        );
        assert_eq!(fired(tick), N);
    }
    // At least one kill landed while the tick was half fired.
    assert!(
        mid.iter().any(|&n| n > 0 && n < N),
        "every kill came after the whole tick: {mid:?}"
    );

    // Down over three ticks: at start-up the latest one fires once, the two before it never.
    c.kill();
    let back = m0 + 5 * MIN;
    clock.set(back + 500);
    c.restart();
    let t0 = Instant::now();
    while fired(back) < N {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} of {N}",
            fired(back)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        (fired(m0 + 3 * MIN), fired(m0 + 4 * MIN), fired(back)),
        (0, 0, N)
    );
    let total: i64 = db()
        .query_row(
            "SELECT COUNT(*) FROM pipelines WHERE schedule_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(total, 4 * N as i64);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_every_minute_schedule_fires_at_the_real_minute_boundary() {
    let s = setup(&plain_config(), &["one"], &[]);
    s.c.cli(&[
        "schedule",
        "add",
        "--project",
        "acme/widget",
        "--name",
        "real",
        "--cron",
        "* * * * *",
        "--branch",
        "main",
    ]);
    let id = wait_scheduled(&s.data, 1, Duration::from_secs(75))[0];
    let fired_at = real_now();
    let p = wait_pipeline(
        &s.data,
        id,
        &["success", "failed", "errored"],
        Duration::from_secs(120),
    );
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    // Made within a few seconds after the minute began (the scheduler looks every second).
    let into_minute = p.created % MIN;
    assert!(
        into_minute < 5_000,
        "fired {into_minute} ms into the minute"
    );
    assert!(fired_at - p.created < 5_000);
    let log = job_log(&s.data, job_id(&p, "build"));
    assert!(
        log.contains("build by scheduled_pipeline schedule=real/"),
        "{log}"
    );
    // Once for that minute.
    if real_now() - p.created < 50_000 {
        assert_eq!(scheduled(&s.data).len(), 1);
    }
}
