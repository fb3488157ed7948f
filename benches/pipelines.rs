//! `cargo bench --bench pipelines`: issue 16's figures, in one run, real parts (coordinator,
//! the Bitbucket stand-in for git, Docker and two real agents for the fan-out).
//!
//! 1. Webhook received → first job claimed, with an idle agent (this bench, long-polling a
//!    claim) waiting: signed `repo:push` deliveries of a one-job config in a repository of
//!    BOSUN_BENCH_REPO_FILES files (default 2,000), a new commit pushed before each, `ROUNDS`
//!    times; the
//!    baseline in the same run is a delivery that builds nothing (`[skip ci]`: the webhook's
//!    own cost, signature and store included), and the floor under the config fetch: `git
//!    ls-remote` over OpenSSH to the same server (one SSH login and ref advertisement, what
//!    the coordinator's fetch into its config mirror costs when nothing is new). Then the
//!    same with the config read through Bitbucket's REST API (the project given API
//!    credentials): a stand-in on loopback serves the file (`harness::bitbucket::ApiStandIn`),
//!    so the figure leaves out the network to Bitbucket, which the SSH path pays too (the
//!    stand-in for git is on this machine as well).
//! 2. A 20-job fan-out/fan-in (`start` → 18 × `mid-N` → `end`, each `sleep 2`) on two real
//!    agents, against its critical path: for each level, ceil(jobs / 2) × the level's mean job
//!    run time (as the agents timed them), summed. Ratio = pipeline wall time / that.
//! 3. The coordinator's RSS with 1,000 queued jobs: a pipeline of 1,000 independent jobs and
//!    no agent; VmRSS and VmHWM once all are queued.
//!
//! Environment: BOSUN_BENCH_ROUNDS (default 10).

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;
use harness::KillOnDrop;

use bosun::coordinator::bitbucket::signature::sign;
use bosun::coordinator::store::PipelineStore as _;
use bosun::coordinator::store::Store;
use harness::{image, Rig};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UUID: &str = "{6d2e9c1a-0b7f-4c3e-8a5d-1e2f3a4b5c6d}";
const SECRET: &str = "bench-secret";

fn proc_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn push(sha: &str, message: &str) -> String {
    serde_json::json!({
        "actor": {"display_name": "Bench"},
        "repository": {"uuid": UUID, "full_name": "acme/widget", "mainbranch": {"name": "main"}},
        "push": {"changes": [{"new": {"type": "branch", "name": "main",
                  "target": {"hash": sha, "message": message}}}]}
    })
    .to_string()
}

async fn deliver(http: &reqwest::Client, base: &str, n: usize, body: &str) -> serde_json::Value {
    let r = http
        .post(format!("{base}/webhooks/bitbucket"))
        .header("X-Event-Key", "repo:push")
        .header("X-Request-UUID", format!("{{bench-{n}}}"))
        .header("X-Hub-Signature", sign(SECRET.as_bytes(), body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .expect("deliver");
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.expect("json")
}

/// A coordinator on `config` (pushed to the stand-in's acme/widget main), with webhook
/// secret; returns (coordinator, base URL, data dir, registration token, head sha).
fn coordinator(
    rig: &Rig,
    dir: &Path,
    config: &str,
) -> (KillOnDrop, String, PathBuf, String, String) {
    let (c, base, data, token, sha, _) = coordinator_with(rig, dir, config, 0);
    (c, base, data, token, sha)
}

/// [`coordinator`] with `files` more files (~2 KiB of text each, in directories of 100) in
/// the commit, and the work repository to push more commits from.
fn coordinator_with(
    rig: &Rig,
    dir: &Path,
    config: &str,
    files: usize,
) -> (
    KillOnDrop,
    String,
    PathBuf,
    String,
    String,
    harness::WorkRepo,
) {
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(".circleci/config.yml", config);
    for i in 0..files {
        let line = format!("line of file {i} of the bench repository, to be checked out\n");
        repo.write(
            &format!("src/d{}/f{i}.txt", i / 100),
            &line.repeat(2048 / line.len()),
        );
    }
    let sha = repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let data = dir.join("coordinator");
    let token = harness::add_stand_in_project(&data, rig, "acme/widget", &["--uuid", UUID]);
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).expect("secret");
    harness::coordinator_cli(
        &data,
        &[
            "project",
            "set",
            "--slug",
            "acme/widget",
            "--webhook-secret-file",
            secret.to_str().expect("utf8"),
        ],
    );
    let mut extra = Vec::new();
    for m in rig.vcs_host_mapping() {
        extra.push("--vcs-host".to_owned());
        extra.push(m);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &extra);
    (
        KillOnDrop(child),
        format!("http://{addr}"),
        data,
        token,
        sha,
        repo,
    )
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    format!(
        "median {med:.1} ms, range {:.1}–{:.1} ms (n={})",
        v[0],
        v[v.len() - 1],
        v.len()
    )
}

async fn first_claim(rounds: usize) {
    let rig = Rig::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {}}}]\n    steps: [{{run: 'true'}}]\nworkflows:\n  w:\n    jobs: [build]\n",
        image("base")
    );
    // A repository of realistic size, and a new commit for each delivery (as real pushes
    // are): what the config read costs beyond the SSH round trip shows.
    let files: usize = std::env::var("BOSUN_BENCH_REPO_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let (_c, base, data, token, _, repo) = coordinator_with(&rig, dir.path(), &config, files);
    let http = reqwest::Client::new();
    let reg: serde_json::Value = http
        .post(format!("{base}/api/v1/agents/register"))
        .json(&serde_json::json!({"registration_token": token, "name": "bench", "resource_class": "docker", "version": "bench"}))
        .send().await.expect("register").json().await.expect("json");
    let agent = reg["agent_token"].as_str().expect("token").to_owned();
    let mut hook = Vec::new();
    let mut hook_api = Vec::new();
    let mut base_line = Vec::new();
    let (api, api_url) = harness::bitbucket::ApiStandIn::start();
    *api.answer.lock().expect("lock") = harness::bitbucket::Answer::File(config.clone());
    for n in 0..2 * rounds {
        if n == rounds {
            // The second half: the project has API credentials, the config comes from the API.
            let creds = dir.path().join("api-credentials");
            std::fs::write(&creds, "bench:app-password").expect("credentials");
            harness::coordinator_cli(
                &data,
                &[
                    "project",
                    "set",
                    "--slug",
                    "acme/widget",
                    "--status-api",
                    &api_url,
                    "--status-credentials-file",
                    creds.to_str().expect("utf8"),
                ],
            );
        }
        // The idle agent waits first.
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
        repo.write("round", &format!("{n}\n"));
        let sha = repo.commit(&format!("round {n}"));
        repo.push("HEAD:refs/heads/main");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        deliver(&http, &base, 2 * n, &push(&sha, "bench")).await;
        let (at, status) = claim.await.expect("claim task");
        assert_eq!(status, 200);
        let took = at.duration_since(t0).as_secs_f64() * 1000.0;
        if n < rounds {
            hook.push(took);
        } else {
            hook_api.push(took);
        }
        let t1 = Instant::now();
        deliver(&http, &base, 2 * n + 1, &push(&sha, "bench [skip ci]")).await;
        base_line.push(t1.elapsed().as_secs_f64() * 1000.0);
    }
    // The floor under the config fetch: one SSH login and ref advertisement to the same
    // server with OpenSSH (`git ls-remote`, a deploy key of the repository).
    let key = rig.deploy_key("acme/widget");
    let url = rig.ssh_url("acme/widget");
    let mut ls_remote = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        harness::run(rig.git(Some(&key)).args(["ls-remote", &url]));
        ls_remote.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "webhook → first job claimed ({files} files, a new commit each time): {}",
        stats(&mut hook)
    );
    let gets = api.config_gets().len();
    assert_eq!(gets, rounds, "every API round read the config there");
    println!(
        "webhook → first job claimed, the config through the API (a stand-in on loopback, one kept-alive connection): {}",
        stats(&mut hook_api)
    );
    println!(
        "baseline (a delivery that builds nothing): {}",
        stats(&mut base_line)
    );
    println!(
        "git ls-remote over OpenSSH to the same stand-in: {}",
        stats(&mut ls_remote)
    );
}

fn agent(dir: &Path, name: &str, base: &str, token: &str, rig: &Rig) -> KillOnDrop {
    let root = dir.join(name);
    std::fs::create_dir_all(&root).expect("dir");
    let tf = root.join("token");
    std::fs::write(&tf, token).expect("token");
    let vcs: Vec<String> = rig
        .vcs_host_mapping()
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let cfg = root.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "coordinator_url = \"{base}\"\nregistration_token_file = {tf:?}\nname = \"{name}\"\nstate_dir = {:?}\nspool_dir = {:?}\nstore_dir = {:?}\nwork_dir = {:?}\nnetwork = {:?}\nvcs_hosts = [{}]\nconcurrency = 1\nheartbeat_secs = 1\nclaim_wait_secs = 5\n",
            root.join("state"), root.join("spool"), root.join("store"), root.join("work"), rig.network, vcs.join(", ")
        ),
    )
    .expect("config");
    KillOnDrop(
        Command::new(harness::bosun_bin())
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    )
}

async fn fan_out() {
    let rig = Rig::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image("base");
    let mut config = format!(
        "version: 2.1\njobs:\n  j:\n    docker: [{{image: {img}}}]\n    parameters: {{n: {{type: string}}}}\n    steps: [{{run: sleep 2}}]\nworkflows:\n  w:\n    jobs:\n      - j: {{name: start, n: s}}\n"
    );
    for i in 0..18 {
        config.push_str(&format!(
            "      - j: {{name: mid-{i}, n: m{i}, requires: [start]}}\n"
        ));
    }
    let mids: Vec<String> = (0..18).map(|i| format!("mid-{i}")).collect();
    config.push_str(&format!(
        "      - j: {{name: end, n: e, requires: [{}]}}\n",
        mids.join(", ")
    ));
    let (_c, base, data, token, sha) = coordinator(&rig, dir.path(), &config);
    let _a = agent(dir.path(), "agent-a", &base, &token, &rig);
    let _b = agent(dir.path(), "agent-b", &base, &token, &rig);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let answer = deliver(&http, &base, 1, &push(&sha, "fan")).await;
    let id = answer["pipelines"][0]["id"].as_i64().expect("id");
    let p = loop {
        let p = Store::open(&data)
            .expect("store")
            .pipeline(id)
            .expect("read")
            .expect("p");
        if !matches!(p.status.as_str(), "created" | "running") {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(600), "{p:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(p.status.as_str(), "success", "{p:#?}");
    let store = Store::open(&data).expect("store");
    let dur = |name: &str| -> f64 {
        let j = p.workflows[0]
            .jobs
            .iter()
            .find(|j| j.name == name)
            .expect("job");
        let row = store
            .job(j.job_id.expect("queued"))
            .expect("row")
            .expect("row");
        row.duration().map(|d| d.as_secs_f64()).unwrap_or(0.0)
    };
    let mid_mean = mids.iter().map(|m| dur(m)).sum::<f64>() / 18.0;
    let critical = dur("start") + 9.0 * mid_mean + dur("end");
    println!(
        "20-job fan-out/fan-in on 2 agents: wall {wall:.1} s, critical path {critical:.1} s \
         (start {:.1} + 9 × mean mid {mid_mean:.1} + end {:.1}), ratio {:.2}",
        dur("start"),
        dur("end"),
        wall / critical
    );
}

async fn queued_rss() {
    let rig = Rig::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = format!(
        "version: 2.1\njobs:\n  j:\n    docker: [{{image: {}}}]\n    parameters: {{n: {{type: integer}}}}\n    steps: [{{run: 'true'}}]\nworkflows:\n  w:\n    jobs:\n      - j:\n          matrix: {{parameters: {{n: [",
        image("base")
    );
    config.push_str(
        &(0..1000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    config.push_str("]}}\n");
    let (c, base, data, _token, sha) = coordinator(&rig, dir.path(), &config);
    let pid = c.0.id();
    let before = proc_kib(pid, "VmRSS");
    let http = reqwest::Client::new();
    let answer = deliver(&http, &base, 1, &push(&sha, "many")).await;
    let id = answer["pipelines"][0]["id"].as_i64().expect("id");
    let t0 = Instant::now();
    loop {
        let p = Store::open(&data)
            .expect("store")
            .pipeline(id)
            .expect("read")
            .expect("p");
        let queued = p
            .workflows
            .iter()
            .flat_map(|w| &w.jobs)
            .filter(|j| j.job_id.is_some())
            .count();
        if queued == 1000 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{queued} queued; {}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "1,000 queued jobs: coordinator RSS {} KiB (peak {} KiB; {} KiB before the pipeline); \
         queued {:.1} s after the delivery",
        proc_kib(pid, "VmRSS"),
        proc_kib(pid, "VmHWM"),
        before,
        took.as_secs_f64()
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
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    rt.block_on(first_claim(rounds.max(1)));
    rt.block_on(fan_out());
    rt.block_on(queued_rss());
}
