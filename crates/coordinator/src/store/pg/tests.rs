//! What only the PostgreSQL store has: claimers on several coordinators at once, and the
//! change feed. (The whole store suite runs against it too: `store/tests.rs`.)

use super::testing;
use super::*;
use crate::store::change_feed::{Change, ChangeFeed};
use crate::store::pipelines::NewPipeline;
use std::collections::HashSet;

fn job(slug: &str, name: &str) -> NewJob {
    NewJob {
        project_slug: slug.into(),
        git_ref: "main".into(),
        commit_sha: None,
        job_name: name.into(),
        resource_class: None,
        labels: vec![],
        max_attempts: 3,
        pr_number: None,
        pr_url: None,
        pr_fork: false,
        timeout_secs: None,
        workspace: None,
    }
}

fn project(s: &PgStore, slug: &str) {
    s.add_project(&NewProject {
        slug: slug.into(),
        uuid: None,
        clone_url: format!("git@bitbucket.org:{slug}.git"),
        user_key: Some("KEY".into()),
        deploy_key: None,
        known_hosts: String::new(),
        env: vec![],
    })
    .expect("project");
}

/// Two coordinators on one database (two stores, two pools), eight claimers each: every job
/// is handed out exactly once, and none is left queued.
#[test]
fn claimers_on_two_coordinators_never_get_the_same_job() {
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let d = tempfile::tempdir().expect("tempdir");
    let data = d.path().join("data");
    let a = std::sync::Arc::new(PgStore::open(&url, &data, None).expect("open a"));
    let b = std::sync::Arc::new(PgStore::open(&url, &data, None).expect("open b"));
    project(&a, "acme/widget");
    const JOBS: usize = 300;
    let mut queued = HashSet::new();
    for _ in 0..JOBS {
        queued.insert(a.enqueue(&job("acme/widget", "build")).expect("enqueue"));
    }
    let mut threads = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        threads.push(std::thread::spawn(move || {
            let agent = format!("agent-{i}");
            let mut got = Vec::new();
            while let Some(j) = s.claim(&agent, Duration::from_secs(60)).expect("claim") {
                got.push(parse_job_id(&j.id).expect("id"));
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for t in threads {
        claimed.extend(t.join().expect("claimer"));
    }
    let unique: HashSet<i64> = claimed.iter().copied().collect();
    assert_eq!(claimed.len(), unique.len(), "a job was handed out twice");
    assert_eq!(unique, queued, "every job handed out once");
    let (queued_now, running, _) = a.counts(0).expect("counts");
    assert_eq!((queued_now, running), (0, JOBS as i64));
}

/// A claim takes the oldest job it may run, as SQLite's does, on whichever coordinator.
#[test]
fn claims_go_oldest_first_across_projects() {
    let Some((_d, s)) = testing::store() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    project(&s, "acme/one");
    project(&s, "acme/two");
    let first = s.enqueue(&job("acme/two", "x")).expect("enqueue");
    let second = s.enqueue(&job("acme/one", "y")).expect("enqueue");
    let c = |agent: &str| {
        s.claim(agent, Duration::from_secs(60))
            .expect("claim")
            .expect("job")
            .id
    };
    assert_eq!(c("a"), first.to_string());
    assert_eq!(c("b"), second.to_string());
    assert!(s
        .claim("c", Duration::from_secs(60))
        .expect("claim")
        .is_none());
}

/// Another coordinator's enqueue and cancel reach this one's feed as they commit, with
/// the job's id; appends and heartbeats do not wake it — appends do once a page here
/// follows the log.
#[test]
fn the_change_feed_hears_another_coordinators_enqueue_and_cancel() {
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let d = tempfile::tempdir().expect("tempdir");
    let data = d.path().join("data");
    let here = PgStore::open(&url, &data, None).expect("open");
    let other = PgStore::open(&url, &data, None).expect("open");
    project(&other, "acme/widget");
    let mut feed = here.change_feed().expect("feed");
    // The first wait connects and answers "look again".
    assert_eq!(
        feed.wait(Duration::from_secs(5)).expect("wait"),
        [Change::Some]
    );
    assert!(feed
        .wait(Duration::from_millis(200))
        .expect("wait")
        .is_empty());
    let id = other
        .enqueue(&job("acme/widget", "build"))
        .expect("enqueue");
    let t0 = std::time::Instant::now();
    let seen = feed.wait(Duration::from_secs(5)).expect("wait");
    assert_eq!(seen, [Change::Job(id)]);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    other
        .claim("a1", Duration::from_secs(60))
        .expect("claim")
        .expect("job");
    assert_eq!(
        feed.wait(Duration::from_secs(5)).expect("wait"),
        [Change::Job(id)]
    );
    assert!(matches!(
        other
            .append_log(id, "a1", None, 0, b"hello")
            .expect("append"),
        AppendOutcome::Ack(5)
    ));
    other
        .heartbeat("a1", &[], Duration::from_secs(60))
        .expect("heartbeat");
    assert!(
        feed.wait(Duration::from_millis(300))
            .expect("wait")
            .is_empty(),
        "appends and heartbeats notify nobody"
    );
    // Until a page follows the log on some coordinator: then the other's appends notify.
    here.follow_log(id, 30).expect("follow");
    assert!(feed
        .wait(Duration::from_millis(200))
        .expect("wait")
        .is_empty());
    let t0 = std::time::Instant::now();
    assert!(matches!(
        other
            .append_log(id, "a1", None, 5, b" world")
            .expect("append"),
        AppendOutcome::Ack(11)
    ));
    assert_eq!(
        feed.wait(Duration::from_secs(5)).expect("wait"),
        [Change::Job(id)]
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(here.log_from(id, 0).expect("log"), b"hello world");
    other.cancel(id).expect("cancel");
    assert_eq!(
        feed.wait(Duration::from_secs(5)).expect("wait"),
        [Change::Job(id)]
    );
    assert_eq!(
        here.pending_cancels("a1").expect("pending"),
        [id.to_string()]
    );
}

/// The database restarts under a running store: calls fail meanwhile, and work again
/// after without reopening (the pool drops the broken connections; the feed reconnects
/// and says "look again").
#[test]
fn a_restarted_database_is_used_again_without_reopening() {
    if test_server::pg_bin().is_none() {
        eprintln!("{}", testing::SKIPPED);
        return;
    }
    // A server of its own: the other tests keep theirs.
    let own = test_server::PgServer::start().expect("server");
    let url = own.new_database().expect("database");
    let d = tempfile::tempdir().expect("tempdir");
    let s = PgStore::open(&url, &d.path().join("data"), None).expect("open");
    project(&s, "acme/widget");
    let id = s.enqueue(&job("acme/widget", "build")).expect("enqueue");
    let mut feed = s.change_feed().expect("feed");
    assert_eq!(
        feed.wait(Duration::from_secs(5)).expect("wait"),
        [Change::Some]
    );
    own.stop().expect("stop");
    assert!(s.counts(0).is_err(), "no database, no answer");
    assert!(feed.wait(Duration::from_millis(500)).is_err());
    own.start_again().expect("start");
    let mut ok = false;
    for _ in 0..50 {
        if s.counts(0).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the store answers again");
    assert_eq!(
        s.job(id).expect("job").expect("row").status,
        JobState::Queued
    );
    let mut heard = Vec::new();
    for _ in 0..20 {
        heard = feed.wait(Duration::from_millis(500)).unwrap_or_default();
        if !heard.is_empty() {
            break;
        }
    }
    assert_eq!(
        heard,
        [Change::Some],
        "the feed reconnects and says look again"
    );
}

/// Two coordinators on one database race for the same ticks of one schedule, each tick
/// started together: every tick fires exactly once between them, with its one pipeline.
#[test]
fn two_coordinators_fire_each_tick_of_a_schedule_once() {
    use crate::store::schedules::NewSchedule;
    let Some(server) = testing::server() else {
        eprintln!("{}", testing::SKIPPED);
        return;
    };
    let url = server.new_database().expect("database");
    let d = tempfile::tempdir().expect("tempdir");
    let data = d.path().join("data");
    let a = std::sync::Arc::new(PgStore::open(&url, &data, None).expect("open a"));
    let b = std::sync::Arc::new(PgStore::open(&url, &data, None).expect("open b"));
    project(&a, "acme/widget");
    let row = a
        .add_schedule(&NewSchedule {
            project: "acme/widget".into(),
            name: "nightly".into(),
            cron: "0 4 * * *".into(),
            branch: "main".into(),
            params: vec![],
            actor: None,
        })
        .expect("schedule");
    let pipeline = NewPipeline {
        project: "acme/widget".into(),
        git_ref: "refs/heads/main".into(),
        trigger_source: "scheduled_pipeline".into(),
        schedule_name: row.name.clone(),
        schedule_id: row.uuid.clone(),
        ..Default::default()
    };
    const TICKS: i64 = 20;
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    let racers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .map(|s| {
            let (start, uuid, p) = (start.clone(), row.uuid.clone(), pipeline.clone());
            std::thread::spawn(move || {
                (0..TICKS)
                    .filter(|i| {
                        start.wait();
                        s.fire_tick(
                            &uuid,
                            1_796_616_000_000 + i * 60_000,
                            std::slice::from_ref(&p),
                        )
                        .expect("fire")
                        .is_some()
                    })
                    .count()
            })
        })
        .collect();
    let won: Vec<usize> = racers
        .into_iter()
        .map(|r| r.join().expect("racer"))
        .collect();
    assert_eq!(won.iter().sum::<usize>(), TICKS as usize, "{won:?}");
    let pipelines = b.list_pipelines(Some("acme/widget"), 100).expect("list");
    assert_eq!(pipelines.len(), TICKS as usize);
    let listed = b.list_schedules(None).expect("ls");
    assert_eq!(
        listed[0].last_tick,
        Some(1_796_616_000_000 + (TICKS - 1) * 60_000)
    );
}
