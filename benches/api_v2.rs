//! `cargo bench --bench api_v2`: a pipeline triggered through CircleCI's API v2
//! (`POST /api/v2/project/bb/acme/widget/pipeline`, as `pycircleci` sends it) → its first job
//! claimed, against the same pipeline triggered with `bosun coordinator trigger` (the CLI: a
//! process that writes the store, which the server notices), alternating, in the same run.
//! Real parts: the coordinator, the Bitbucket stand-in over OpenSSH (each pipeline's config
//! is fetched into the config mirror), and an idle claimer long-polling (this bench, speaking
//! the agent protocol, so the job's run time is not in the figure).
//!
//! Environment: BOSUN_BENCH_ROUNDS (default 10: that many of each, alternating).

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;
use harness::{image, KillOnDrop, Rig};
use std::time::{Duration, Instant};

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

async fn run(rounds: usize) {
    let rig = Rig::start();
    let dir = tempfile::tempdir().expect("tempdir");
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(
        ".circleci/config.yml",
        &format!(
            "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{run: 'true'}}]\nworkflows:\n  w:\n    jobs: [build]\n",
            image("base")
        ),
    );
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let data = dir.path().join("coordinator");
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);
    let op = harness::coordinator_cli(&data, &["operator", "new", "bench"])
        .trim()
        .to_owned();
    let mut extra = vec!["--lease-secs".to_owned(), "3600".to_owned()];
    for m in rig.vcs_host_mapping() {
        extra.push("--vcs-host".to_owned());
        extra.push(m);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &extra);
    let _c = KillOnDrop(child);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let reg: serde_json::Value = http
        .post(format!("{base}/api/v1/agents/register"))
        .json(
            &serde_json::json!({"registration_token": token, "name": "bench",
                                  "resource_class": "docker", "version": "bench"}),
        )
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("json");
    let agent = reg["agent_token"].as_str().expect("token").to_owned();

    let mut api = Vec::new();
    let mut cli = Vec::new();
    // One warm-up of each (the config mirror's first fetch clones).
    for n in 0..2 * (rounds + 1) {
        let claim = {
            let (http, base, agent) = (http.clone(), base.clone(), agent.clone());
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/api/v1/jobs/claim?wait=30"))
                    .bearer_auth(agent)
                    .json(&serde_json::json!({"resource_class": "docker", "capacity": 1}))
                    .send()
                    .await
                    .expect("claim");
                (Instant::now(), r.status().as_u16())
            })
        };
        // The claim is waiting before the trigger starts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let through_api = n % 2 == 0;
        let t0 = Instant::now();
        if through_api {
            let r = http
                .post(format!("{base}/api/v2/project/bb/acme/widget/pipeline"))
                .header("Circle-Token", &op)
                .json(&serde_json::json!({"branch": "main"}))
                .send()
                .await
                .expect("trigger");
            assert_eq!(r.status().as_u16(), 201);
        } else {
            let data = data.clone();
            tokio::task::spawn_blocking(move || {
                harness::coordinator_cli(
                    &data,
                    &["trigger", "--project", "acme/widget", "--ref", "main"],
                )
            })
            .await
            .expect("cli");
        }
        let (at, status) = claim.await.expect("claim task");
        assert_eq!(status, 200, "round {n}: no job claimed");
        let took = at.duration_since(t0).as_secs_f64() * 1000.0;
        if n >= 2 {
            if through_api { &mut api } else { &mut cli }.push(took);
        }
    }
    let (am, alo, ahi) = stats(&mut api);
    let (cm, clo, chi) = stats(&mut cli);
    println!(
        "API v2 trigger → first job claimed: median {am:.1} ms, range {alo:.1}–{ahi:.1} ms (n={})",
        api.len()
    );
    println!(
        "`bosun coordinator trigger` → first job claimed: median {cm:.1} ms, range {clo:.1}–{chi:.1} ms (n={})",
        cli.len()
    );
    println!(
        "ratio API / CLI: {:.2} (medians), {:.2}–{:.2} (min/min, max/max)",
        am / cm,
        alo / clo,
        ahi / chi
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds: usize = std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(rounds.max(1)));
}
