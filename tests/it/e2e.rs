//! End to end, real processes only: `bosun coordinator` (SQLite, HTTP) + `bosun agent` +
//! the Docker engine + the Bitbucket stand-in. A job enqueued through the CLI is checked out
//! over SSH with the project's deploy key, runs, and its log and status reach the coordinator
//! and its page — also across a coordinator crash, an agent crash, a cancel and a job time
//! limit; a job queued for a pull request sees CircleCI's pull request variables.

use crate::harness;

use crate::harness::{http_get, image, Coordinator, Rig};
use bosun::coordinator::store::Store;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    config: PathBuf,
}

impl Agent {
    fn start(config: &Path) -> Agent {
        // The agent's own log, kept beside its config for failure reports.
        let child = harness::spawn_agent(config, &config.with_extension("log"), &[]);
        Agent {
            child,
            config: config.to_path_buf(),
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // What it left (its ready containers): by the id it registered with, kept in
        // `state/agent.json` beside its config.
        let state = self.config.with_file_name("state").join("agent.json");
        let id = std::fs::read_to_string(state)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["agent_id"].as_str().map(str::to_owned));
        if let Some(id) = id {
            harness::cleanup_killed_agent(&id);
        }
    }
}

/// A coordinator with project acme/widget (deploy key, the stand-in's host keys, a secret),
/// and an agent configured to reach the stand-in.
struct Setup {
    rig: Rig,
    dir: tempfile::TempDir,
    coordinator: Coordinator,
    agent_config: PathBuf,
}

fn setup(config: &str) -> Setup {
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(".circleci/config.yml", config);
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let dir = tempfile::tempdir().expect("tempdir");
    let coordinator = Coordinator::start();
    let token = harness::add_stand_in_project(
        &coordinator.data,
        &rig,
        "acme/widget",
        &["--secret-env", "DEPLOY_TOKEN=s3cr3t-value-42"],
    );
    let token_file = dir.path().join("registration-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let agent_config = dir.path().join("agent.toml");
    let mut toml = harness::agent_toml(&coordinator.url(), &token_file, "e2e", dir.path(), &rig);
    toml.push_str("heartbeat_secs = 1\n");
    std::fs::write(&agent_config, toml).expect("agent config");
    Setup {
        rig,
        dir,
        coordinator,
        agent_config,
    }
}

fn job_config(command: &str) -> String {
    format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - checkout\n      - run:\n          name: work\n          command: {command}\n",
        img = image("base")
    )
}

#[test]
fn an_enqueued_job_runs_and_its_masked_log_and_status_reach_the_coordinator_and_page() {
    let s = setup(&job_config(
        "'echo \"hello from e2e with $DEPLOY_TOKEN\" && git remote get-url origin && echo \"pr=$CIRCLE_PR_NUMBER at $CIRCLE_PULL_REQUEST\"'",
    ));
    let _agent = Agent::start(&s.agent_config);
    let job = harness::enqueue_job(
        &s.coordinator.data,
        "build",
        &[
            "--pull-request",
            "7",
            "--pull-request-fork",
            "--timeout",
            "10m",
        ],
    );
    harness::wait_job_status(
        &s.coordinator.data,
        &job,
        &["success", "fail", "canceled"],
        Duration::from_secs(120),
    );
    assert_eq!(harness::job_status(&s.coordinator.data, &job), "success");
    let log =
        String::from_utf8_lossy(&harness::job_log_bytes(&s.coordinator.data, &job)).into_owned();
    assert!(log.contains("hello from e2e with ********"), "{log}");
    assert!(
        !log.contains("s3cr3t-value-42"),
        "the secret leaked:\n{log}"
    );
    assert!(log.contains("git@bitbucket.org:acme/widget.git"), "{log}");
    assert!(
        log.contains("pr=7 at https://bitbucket.org/acme/widget/pull-requests/7"),
        "{log}"
    );
    let page = http_get(&s.coordinator.addr, &format!("/jobs/{job}")).text();
    assert!(page.contains("hello from e2e with ********"), "{page}");
    assert!(page.contains(">#7</a>"), "{page}");
    assert!(s.coordinator.cli(&["jobs"]).contains("#7"));
    let index = http_get(&s.coordinator.addr, "/").text();
    assert!(index.contains("success"), "{index}");
    let _ = &s.rig;
    let _ = &s.dir;
}

#[test]
fn a_coordinator_killed_mid_job_loses_none_of_a_50_mb_log() {
    // 50 MiB of known lines, then a marker. (`yes` dies of SIGPIPE when head is done, which
    // pipefail would count as a failure.)
    const LINE: &str = "bosun-e2e-line-0123456789abcdefghijklmnopqrstuvwxyz\n";
    const BYTES: usize = 50 * 1024 * 1024;
    let s = setup(&job_config(&format!(
        "'(yes {} | head -c {BYTES}) || true; echo; echo all-done'",
        LINE.trim_end()
    )));
    let mut coordinator = s.coordinator;
    let _agent = Agent::start(&s.agent_config);
    let job = harness::enqueue_job(&coordinator.data, "build", &[]);
    // Kill the coordinator once part of the log has arrived.
    let t0 = Instant::now();
    while harness::job_log_bytes(&coordinator.data, &job).len() < 2 * 1024 * 1024 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no log arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    coordinator.kill();
    std::thread::sleep(Duration::from_secs(3));
    coordinator.restart();
    harness::wait_job_status(
        &coordinator.data,
        &job,
        &["success", "fail", "canceled"],
        Duration::from_secs(180),
    );
    let row = Store::open(&coordinator.data).ok().and_then(|st| {
        st.job(bosun::coordinator::store::parse_job_id(&job)?)
            .ok()
            .flatten()
    });
    assert_eq!(
        harness::job_status(&coordinator.data, &job),
        "success",
        "the finish's digest check passed: {:?}\nagent log:\n{}",
        row.map(|r| r.error),
        std::fs::read_to_string(s.agent_config.with_extension("log")).unwrap_or_default()
    );
    let log = harness::job_log_bytes(&coordinator.data, &job);
    let start = log
        .windows(LINE.len())
        .position(|w| w == LINE.as_bytes())
        .expect("the step's output is in the log");
    let expected: Vec<u8> = LINE
        .as_bytes()
        .iter()
        .copied()
        .cycle()
        .take(BYTES)
        .collect();
    let got = &log[start..start + BYTES.min(log.len() - start)];
    assert_eq!(got.len(), BYTES, "the whole output arrived");
    assert_eq!(
        Sha256::digest(got),
        Sha256::digest(&expected),
        "byte-for-byte what the step printed"
    );
    assert!(String::from_utf8_lossy(&log[start + BYTES..]).contains("all-done"));
    let _ = &s.rig;
    let _ = &s.dir;
}

#[test]
fn a_killed_agent_leaves_no_container_and_a_cancel_stops_a_sleeping_step() {
    let s = setup(&job_config("'echo started; sleep 600'"));
    let mut agent = Agent::start(&s.agent_config);
    let job = harness::enqueue_job(&s.coordinator.data, "build", &[]);
    let t0 = Instant::now();
    while !String::from_utf8_lossy(&harness::job_log_bytes(&s.coordinator.data, &job))
        .contains("started")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "the job never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!harness::containers_labelled("bosun.job", &job).is_empty());
    agent.kill9();
    let _agent = Agent::start(&agent.config);
    let t1 = Instant::now();
    while !harness::containers_labelled("bosun.job", &job).is_empty() {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "orphan container still there after 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Reported (or re-queued and run again); either way not left "running" for ever.
    let status = harness::wait_job_status(
        &s.coordinator.data,
        &job,
        &["infrastructure", "queued", "running"],
        Duration::from_secs(30),
    );
    assert!(!status.is_empty());

    // A second job: cancel it while its step sleeps.
    let job2 = harness::enqueue_job(&s.coordinator.data, "build", &[]);
    let t2 = Instant::now();
    while !String::from_utf8_lossy(&harness::job_log_bytes(&s.coordinator.data, &job2))
        .contains("started")
    {
        assert!(
            t2.elapsed() < Duration::from_secs(120),
            "job 2 never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t3 = Instant::now();
    s.coordinator.cli(&["cancel", &job2]);
    harness::wait_job_status(
        &s.coordinator.data,
        &job2,
        &["canceled"],
        Duration::from_secs(10),
    );
    assert!(
        t3.elapsed() < Duration::from_secs(6),
        "cancel took {:?}",
        t3.elapsed()
    );
    let t4 = Instant::now();
    while !harness::containers_labelled("bosun.job", &job2).is_empty() {
        assert!(
            t4.elapsed() < Duration::from_secs(10),
            "container of the canceled job left; agent log:\n{}",
            std::fs::read_to_string(s.agent_config.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A third job with a 5 s limit: its sleeping step is stopped and it ends `timedout`.
    let t5 = Instant::now();
    let job3 = harness::enqueue_job(&s.coordinator.data, "build", &["--timeout", "5s"]);
    harness::wait_job_status(
        &s.coordinator.data,
        &job3,
        &["success", "fail", "canceled", "timedout"],
        Duration::from_secs(60),
    );
    assert_eq!(harness::job_status(&s.coordinator.data, &job3), "timedout");
    assert!(
        t5.elapsed() < Duration::from_secs(15),
        "a 5 s limit ended the job after {:?}",
        t5.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&harness::job_log_bytes(&s.coordinator.data, &job3))
            .contains("started")
    );
    assert!(harness::containers_labelled("bosun.job", &job3).is_empty());
    let _ = &s.rig;
    let _ = &s.dir;
}
