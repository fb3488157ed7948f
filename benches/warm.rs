//! `cargo bench --bench warm`: the warm path of issue 17, `bosun agent` + `bosun coordinator`
//! on the warm `bosun/base` image, in one run.
//!
//! (b) enqueue → the coordinator holds the first byte of the first step's output, with an
//!     idle agent and a ready container (target ≤ 300 ms), and cold (`ready_containers = 0`),
//!     against `bosun execute --json` of the same job → its first `output` event.
//! (d) the idle agent's RSS with a ready container waiting (target ≤ 10 MB), VmRSS and its
//!     anonymous part (RssAnon: the heap; the rest is the binary's pages).
//! (e) cancel latency: `bosun coordinator cancel` → TERM reached the step (its trap prints
//!     the time; target ≤ 200 ms), and → the job `canceled` with its container gone (target
//!     ≤ 1 s; the step exits on TERM), with the default heartbeat (5 s); median of 5.
//!
//! Environment: BOSUN_BENCH_RUNS (default 5).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{median, ms, proc_status_kib};
use harness::KillOnDrop;

use bosun::coordinator::store::{parse_job_id, Store};
use bosun::protocol::JobEvent;
use harness::{ensure_images, image, Project, Rig};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn range(v: &[Duration]) -> String {
    let lo = v.iter().min().copied().unwrap_or_default();
    let hi = v.iter().max().copied().unwrap_or_default();
    format!("{:.0}–{:.0} ms", ms(lo), ms(hi))
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// Poll until job `id` holds output of its first step; the time from `t`.
fn wait_first_output(store: &Store, id: i64, t: Instant) -> Duration {
    loop {
        let start = store
            .events_from(id, 0)
            .expect("events")
            .into_iter()
            .find_map(|(_, ev)| match ev {
                JobEvent::StepStarted { log_offset, .. } => Some(log_offset),
                _ => None,
            });
        if let Some(off) = start {
            let row = store.job(id).expect("job").expect("row");
            if row.log_bytes > off {
                return t.elapsed();
            }
        }
        let row = store.job(id).expect("job").expect("row");
        assert!(
            !row.is_final(),
            "job {id} ended `{}` before output",
            row.status
        );
        assert!(t.elapsed() < Duration::from_secs(120), "no output");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_final(store: &Store, id: i64) -> String {
    let t = Instant::now();
    loop {
        let row = store.job(id).expect("job").expect("row");
        if row.is_final() {
            return row.status.to_string();
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "job {id} never ended"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `bosun execute --json` → its first `output` event.
fn execute_first_output(project: &Project) -> Duration {
    let t0 = Instant::now();
    let mut child = project
        .command(&["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bosun execute");
    let mut first = None;
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let Ok(line) = line else { break };
        if first.is_none() && line.contains("\"output\"") {
            first = Some(t0.elapsed());
        }
    }
    assert!(child.wait().expect("wait").success());
    first.expect("an output event")
}

fn start_agent(root: &Path, coordinator: &str, rig: &Rig, env: &[(&str, &str)]) -> KillOnDrop {
    let vcs: Vec<String> = rig
        .vcs_host_mapping()
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let config = root.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "coordinator_url = \"http://{coordinator}\"\nregistration_token_file = {tf:?}\nname = \"bench\"\nstate_dir = {sd:?}\nspool_dir = {sp:?}\nstore_dir = {st:?}\nwork_dir = {wd:?}\nnetwork = {net:?}\nvcs_hosts = [{vcs}]\nconcurrency = 1\nkill_grace_secs = 1\n",
            tf = root.join("registration-token"),
            sd = root.join("state"),
            sp = root.join("spool"),
            st = root.join("store"),
            wd = root.join("work"),
            net = rig.network,
            vcs = vcs.join(", "),
        ),
    )
    .expect("agent config");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("agent.log"))
        .expect("agent log");
    KillOnDrop(
        Command::new(harness::bosun_bin())
            .args(["agent", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent"),
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("BOSUN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    ensure_images();
    let img = image("base");
    let build = format!(
        "  build:\n    docker: [{{image: {img}}}]\n    steps: [{{run: 'echo first-output'}}]\n"
    );
    let sleeper = format!(
        "  sleeper:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: |\n          trap 'echo \"term-at $(date +%s%N)\"; exit 3' TERM\n          echo sleeper-is-up\n          sleep 600 & wait $!\n"
    );
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &format!("version: 2.1\njobs:\n{build}{sleeper}"),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let (coordinator, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &[]);
    let _coordinator = KillOnDrop(coordinator);
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);
    std::fs::write(dir.path().join("registration-token"), format!("{token}\n")).expect("token");
    let store = Store::open(&data).expect("store");
    let enqueue = |job: &str| parse_job_id(&harness::enqueue_job(&data, job, &[])).expect("job id");

    // (b) warm: the default pool keeps a container ready after each job.
    let agent = start_agent(dir.path(), &addr, &rig, &[]);
    let warm_up = enqueue("build");
    assert_eq!(wait_final(&store, warm_up), "success");
    let mut warm = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_secs(2)); // idle: the pool refills
        let t = Instant::now();
        let id = enqueue("build");
        warm.push(wait_first_output(&store, id, t));
        assert_eq!(wait_final(&store, id), "success");
    }
    // (d) idle, a ready container waiting.
    std::thread::sleep(Duration::from_secs(10));
    let pid = agent.0.id();
    let (rss, anon) = (
        proc_status_kib(pid, "VmRSS"),
        proc_status_kib(pid, "RssAnon"),
    );
    // (e) cancel latency.
    let (mut signalled, mut canceled) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let id = enqueue("sleeper");
        let t = Instant::now();
        loop {
            let log = String::from_utf8_lossy(&store.log_from(id, 0).expect("log")).into_owned();
            // Its own line (the log's "container … started from" line comes before the
            // trap is set).
            if log.contains("sleeper-is-up") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "sleeper never started"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let asked = now_ns();
        let t = Instant::now();
        harness::coordinator_cli(&data, &["cancel", &id.to_string()]);
        assert_eq!(wait_final(&store, id), "canceled");
        while !harness::containers_labelled("bosun.job", &id.to_string()).is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
        canceled.push(t.elapsed());
        let log = String::from_utf8_lossy(&store.log_from(id, 0).expect("log")).into_owned();
        let at: u128 = log
            .lines()
            .find_map(|l| l.strip_prefix("term-at "))
            .and_then(|v| v.trim().parse().ok())
            .expect("term-at line");
        signalled.push(Duration::from_nanos(at.saturating_sub(asked) as u64));
    }
    drop(agent);

    // (b) cold: no ready containers.
    let agent = start_agent(dir.path(), &addr, &rig, &[("BOSUN_READY_CONTAINERS", "0")]);
    let mut cold = Vec::new();
    for _ in 0..runs {
        std::thread::sleep(Duration::from_secs(2));
        let t = Instant::now();
        let id = enqueue("build");
        cold.push(wait_first_output(&store, id, t));
        assert_eq!(wait_final(&store, id), "success");
    }
    drop(agent);
    let local = Project::new(&format!("version: 2.1\njobs:\n{build}"));
    let _ = execute_first_output(&local);
    let exec: Vec<Duration> = (0..runs).map(|_| execute_first_output(&local)).collect();

    println!("(b) enqueue → first step output at the coordinator, {runs} runs:");
    println!(
        "    ready container  median {:>6.0} ms  ({})   (target <= 300 ms)",
        ms(median(warm.clone())),
        range(&warm)
    );
    println!(
        "    cold             median {:>6.0} ms  ({})",
        ms(median(cold.clone())),
        range(&cold)
    );
    println!(
        "    bosun execute → first output event  median {:>6.0} ms  ({})",
        ms(median(exec.clone())),
        range(&exec)
    );
    println!(
        "(d) idle agent with a ready container: VmRSS {:.1} MiB, RssAnon {:.1} MiB   (target <= 10 MB)",
        rss as f64 / 1024.0,
        anon as f64 / 1024.0
    );
    println!("(e) cancel, {runs} runs (heartbeat 5 s):");
    println!(
        "    cancel → TERM at the step          median {:>6.0} ms  ({})   (target <= 200 ms)",
        ms(median(signalled.clone())),
        range(&signalled)
    );
    println!(
        "    cancel → canceled, container gone  median {:>6.0} ms  ({})   (target <= 1 s)",
        ms(median(canceled.clone())),
        range(&canceled)
    );
}
