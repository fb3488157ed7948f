//! `cargo bench --bench schedules`: issue 28's figure, in one run, real parts (coordinator,
//! the Bitbucket stand-in for git).
//!
//! Schedule tick → first job claimed, with an idle agent (this bench, long-polling a claim)
//! waiting: a scheduled pipeline (`schedule add --cron "* * * * *"`) of a one-job config;
//! the coordinator's scheduler reads its clock from a file (`serve --schedule-clock-file`),
//! which the bench moves to the next minute half a second before a whole second of the
//! system clock: the scheduler's pass at that whole second is the tick's moment, as it is
//! for a real minute's tick, and the time is taken from it. The baseline in the same run:
//! `bosun coordinator trigger` of the same branch → first job claimed (the CLI process, its
//! store write, the server noticing it). Both read the config through the config mirror (SSH
//! to the stand-in), so the ratio shows what the scheduler adds.
//!
//! Environment: BOSUN_BENCH_ROUNDS (default 10).

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;
use harness::KillOnDrop;

use harness::{image, Rig};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const UUID: &str = "{7a1d2c3b-0e9f-4a8b-9c7d-6e5f4a3b2c1d}";

fn stats(v: &mut [f64]) -> (f64, String) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    (
        med,
        format!(
            "median {med:.1} ms, range {:.1}–{:.1} ms (n={})",
            v[0],
            v[v.len() - 1],
            v.len()
        ),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

async fn tick_to_claim(rounds: usize) {
    let rig = Rig::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{run: 'true'}}]\nworkflows:\n  w:\n    jobs: [build]\n",
        image("base")
    );
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(".circleci/config.yml", &config);
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let data = dir.path().join("coordinator");
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &["--uuid", UUID]);
    let clock = dir.path().join("clock");
    let set_clock = |ms: i64| {
        let tmp = clock.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string()).expect("clock");
        std::fs::rename(&tmp, &clock).expect("clock");
    };
    // The bench's clock starts at the next whole minute, so the schedule (made now) has its
    // ticks ahead; each round moves it a minute on.
    let mut minute = (now_ms() / 60_000 + 1) * 60_000;
    set_clock(minute - 30_000);
    let mut extra = vec![
        "--lease-secs".to_owned(),
        "600".to_owned(),
        "--schedule-clock-file".to_owned(),
        clock.to_str().expect("utf8").to_owned(),
    ];
    for m in rig.vcs_host_mapping() {
        extra.push("--vcs-host".to_owned());
        extra.push(m);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &extra);
    let _c = KillOnDrop(child);
    let base = format!("http://{addr}");
    harness::coordinator_cli(
        &data,
        &[
            "schedule",
            "add",
            "--project",
            "acme/widget",
            "--name",
            "bench",
            "--cron",
            "* * * * *",
            "--branch",
            "main",
        ],
    );
    let http = reqwest::Client::new();
    let reg: serde_json::Value = http
        .post(format!("{base}/api/v1/agents/register"))
        .json(&serde_json::json!({"registration_token": token, "name": "bench", "resource_class": "docker", "version": "bench"}))
        .send().await.expect("register").json().await.expect("json");
    let agent = reg["agent_token"].as_str().expect("token").to_owned();
    let claim = || {
        let (http, base, agent) = (http.clone(), base.clone(), agent.clone());
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/api/v1/jobs/claim?wait=30"))
                .bearer_auth(agent)
                .json(&serde_json::json!({"resource_class": "docker", "capacity": 1}))
                .send()
                .await
                .expect("claim");
            let at = Instant::now();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (at, status, body)
        })
    };
    // A warm-up of each, so the config mirror exists for both.
    let (mut tick, mut trigger) = (Vec::new(), Vec::new());
    for n in 0..=rounds {
        // The tick: the clock file moves to the next minute half a second before a whole
        // second of the system clock; the scheduler's pass at that second fires it.
        let waiting = claim();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let ms = now_ms().rem_euclid(1000);
        if ms > 500 {
            tokio::time::sleep(Duration::from_millis((1500 - ms) as u64)).await;
        } else {
            tokio::time::sleep(Duration::from_millis((500 - ms) as u64)).await;
        }
        minute += 60_000;
        set_clock(minute + 100);
        let boundary_in = 1000 - now_ms().rem_euclid(1000);
        let t0 = Instant::now() + Duration::from_millis(boundary_in as u64);
        let (at, status, body) = waiting.await.expect("claim task");
        assert_eq!(status, 200, "{body}");
        if n > 0 {
            tick.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
        }

        // The baseline: `bosun coordinator trigger`.
        let waiting = claim();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t0 = Instant::now();
        harness::coordinator_cli(
            &data,
            &["trigger", "--project", "acme/widget", "--ref", "main"],
        );
        let (at, status, body) = waiting.await.expect("claim task");
        assert_eq!(status, 200, "{body}");
        if n > 0 {
            trigger.push(at.duration_since(t0).as_secs_f64() * 1000.0);
        }
    }
    let (t, tick_s) = stats(&mut tick);
    let (b, trigger_s) = stats(&mut trigger);
    println!("schedule tick → first job claimed: {tick_s}");
    println!("baseline `coordinator trigger` → first job claimed: {trigger_s}");
    println!("ratio (medians) tick / trigger: {:.2}", t / b);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    rt.block_on(tick_to_claim(rounds.max(1)));
}
