//! `cargo bench --bench scale`: the coordinator on PostgreSQL against SQLite (issue 31), in
//! one run, same agents and jobs:
//!
//! 1. claim throughput and claim latency (p50, p99): `BOSUN_BENCH_JOBS` (default 600) jobs
//!    queued, `BOSUN_BENCH_AGENTS` (16) agents speaking the protocol over HTTP claim and
//!    finish them (an empty log) as fast as they are answered — one coordinator on SQLite,
//!    then one, two and three on PostgreSQL (the agents spread over the replicas, one data
//!    directory);
//! 2. enqueue → first claim: one agent long-polls an idle coordinator, a job is queued by
//!    another process's store (the CLI's path), and the time until the agent has it is
//!    taken `BOSUN_BENCH_SAMPLES` (30) times: SQLite's server notices through
//!    `PRAGMA data_version` (polled every 50 ms), PostgreSQL's through `LISTEN/NOTIFY`;
//! 3. each coordinator's resident memory with 1,000 jobs queued (`BOSUN_BENCH_QUEUED`): one
//!    on SQLite, then one, two and three on PostgreSQL, each with an agent long-polling it
//!    and its job list page read once, VmRSS taken after that;
//! 4. log append throughput: every agent sends a job's log in 4 KiB appends — SQLite's
//!    file per log against PostgreSQL's chunk rows, one and two coordinators.
//!
//! PostgreSQL is Debian's (initdb + pg_ctl in a temporary directory, on loopback) with its
//! default durability (fsync on, as SQLite's `synchronous=FULL`); `BOSUN_BENCH_PG_SETTINGS`
//! (`name=value,…`) changes its settings.

mod common;

#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use bosun::coordinator::store::{NewJob, PgStore, QueueStore, Store};
use harness::postgres::PgServer;
use harness::KillOnDrop;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bosun");

fn cli(data: &Path, db: Option<&str>, args: &[&str]) -> String {
    let mut c = Command::new(BIN);
    c.arg("coordinator").args(args).arg("--data").arg(data);
    if let Some(url) = db {
        c.args(["--database", url]);
    }
    let out = c.output().expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn serve(data: &Path, db: Option<&str>) -> (KillOnDrop, String) {
    let mut c = Command::new(BIN);
    c.args(["coordinator", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(url) = db {
        // The replicas of a run share one data directory.
        c.args(["--database", url, "--shared-data"]);
    }
    let mut child = c.spawn().expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_owned();
    (KillOnDrop(child), base)
}

fn new_job() -> NewJob {
    NewJob {
        project_slug: "acme/widget".into(),
        git_ref: "main".into(),
        commit_sha: None,
        job_name: "build".into(),
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

struct Setup {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    db: Option<String>,
    token: String,
}

fn setup(pg: Option<&PgServer>) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let db = pg.map(|p| p.new_database().expect("database"));
    let key = dir.path().join("key");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nX\n").expect("key");
    cli(
        &data,
        db.as_deref(),
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--user-key",
            key.to_str().expect("utf8"),
        ],
    );
    let token = cli(&data, db.as_deref(), &["token"]);
    Setup {
        _dir: dir,
        data,
        db,
        token,
    }
}

/// The store as another process would open it (the CLI's), to queue jobs.
fn store(s: &Setup) -> Box<dyn QueueStore> {
    match &s.db {
        Some(url) => Box::new(PgStore::open(url, &s.data, None).expect("open")),
        None => Box::new(Store::open(&s.data).expect("open")),
    }
}

struct Agent {
    http: reqwest::Client,
    base: String,
    token: String,
}

async fn register(base: &str, token: &str, name: &str) -> Agent {
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/api/v1/agents/register"))
        .json(&json!({"registration_token": token, "name": name,
            "resource_class": "docker", "labels": [], "version": "bench"}))
        .send()
        .await
        .expect("register");
    let v: serde_json::Value = r.json().await.expect("json");
    Agent {
        http,
        base: base.to_owned(),
        token: v["agent_token"].as_str().expect("token").to_owned(),
    }
}

impl Agent {
    /// One claim: the job's id, or `None` after `wait` seconds without one.
    async fn claim(&self, wait: u64) -> Option<String> {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs/claim?wait={wait}", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"resource_class": "docker", "labels": [], "capacity": 1}))
            .send()
            .await
            .expect("claim");
        if r.status() == 204 {
            return None;
        }
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        Some(v["job"]["id"].as_str().expect("id").to_owned())
    }

    async fn finish(&self, id: &str) {
        let r = self
            .http
            .post(format!("{}/api/v1/jobs/{id}/finish", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"status": "success", "log_bytes": 0,
                "log_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}))
            .send()
            .await
            .expect("finish");
        assert_eq!(r.status(), 200, "finish {id}");
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    common::ms(v[i])
}

/// Claim throughput (jobs/s) and claim p50/p99 (ms) with `replicas` coordinators.
fn claims(rt: &tokio::runtime::Runtime, pg: Option<&PgServer>, replicas: usize) -> (f64, f64, f64) {
    let jobs = common::env_num("BOSUN_BENCH_JOBS", 600);
    let agents = common::env_num("BOSUN_BENCH_AGENTS", 16);
    let s = setup(pg);
    {
        let q = store(&s);
        for _ in 0..jobs {
            q.enqueue(&new_job()).expect("enqueue");
        }
    }
    let servers: Vec<(KillOnDrop, String)> = (0..replicas)
        .map(|_| serve(&s.data, s.db.as_deref()))
        .collect();
    let done = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let agents: Vec<Agent> = (0..agents)
        .map(|i| {
            rt.block_on(register(
                &servers[i % replicas].1,
                &s.token,
                &format!("a{i}"),
            ))
        })
        .collect();
    let t0 = Instant::now();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|a| {
            let (done, lat) = (done.clone(), lat.clone());
            rt.spawn(async move {
                while done.load(Ordering::SeqCst) < jobs {
                    let c0 = Instant::now();
                    let Some(id) = a.claim(1).await else { continue };
                    lat.lock().expect("lat").push(c0.elapsed());
                    a.finish(&id).await;
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        rt.block_on(t).expect("agent");
    }
    let wall = t0.elapsed();
    let mut lat = lat.lock().expect("lat").clone();
    assert_eq!(lat.len(), jobs, "every job claimed once");
    (
        jobs as f64 / wall.as_secs_f64(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
    )
}

/// Log append throughput (MiB/s, appends/s) with `replicas` coordinators: every agent
/// claims a job, sends its log in `BOSUN_BENCH_PIECES` (64) appends of 4 KiB and finishes
/// it with the log's digest — on SQLite a file written and its length committed, on
/// PostgreSQL a chunk row and the length in one transaction (and the finished log copied
/// into a file of the data directory's object store).
fn appends(rt: &tokio::runtime::Runtime, pg: Option<&PgServer>, replicas: usize) -> (f64, f64) {
    let agents = common::env_num("BOSUN_BENCH_AGENTS", 16);
    let pieces = common::env_num("BOSUN_BENCH_PIECES", 64);
    let s = setup(pg);
    {
        let q = store(&s);
        for _ in 0..agents {
            q.enqueue(&new_job()).expect("enqueue");
        }
    }
    let servers: Vec<(KillOnDrop, String)> = (0..replicas)
        .map(|_| serve(&s.data, s.db.as_deref()))
        .collect();
    let agents: Vec<Agent> = (0..agents)
        .map(|i| {
            rt.block_on(register(
                &servers[i % replicas].1,
                &s.token,
                &format!("a{i}"),
            ))
        })
        .collect();
    let piece: Vec<u8> = b"0123456789abcdef log line of a build, more or less\n"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let n = agents.len();
    let t0 = Instant::now();
    let tasks: Vec<_> = agents
        .into_iter()
        .map(|a| {
            let piece = piece.clone();
            rt.spawn(async move {
                let id = loop {
                    if let Some(id) = a.claim(1).await {
                        break id;
                    }
                };
                let mut sha = <sha2::Sha256 as sha2::Digest>::new();
                for k in 0..pieces {
                    let r = a
                        .http
                        .post(format!(
                            "{}/api/v1/jobs/{id}/log?offset={}",
                            a.base,
                            k * piece.len()
                        ))
                        .bearer_auth(&a.token)
                        .body(piece.clone())
                        .send()
                        .await
                        .expect("append");
                    assert_eq!(r.status(), 200);
                    sha2::Digest::update(&mut sha, &piece);
                }
                let digest: String = sha2::Digest::finalize(sha)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let r = a
                    .http
                    .post(format!("{}/api/v1/jobs/{id}/finish", a.base))
                    .bearer_auth(&a.token)
                    .json(
                        &json!({"status": "success", "log_bytes": pieces * piece.len(),
                        "log_sha256": digest}),
                    )
                    .send()
                    .await
                    .expect("finish");
                assert_eq!(r.status(), 200, "finish {id}");
            })
        })
        .collect();
    for t in tasks {
        rt.block_on(t).expect("agent");
    }
    let wall = t0.elapsed().as_secs_f64();
    let appended = (n * pieces) as f64;
    (
        appended * piece.len() as f64 / wall / (1 << 20) as f64,
        appended / wall,
    )
}

/// Each replica's VmRSS (MiB) with `BOSUN_BENCH_QUEUED` (1,000) jobs queued, an agent
/// long-polling each and each one's job list read.
fn rss_queued(rt: &tokio::runtime::Runtime, pg: Option<&PgServer>, replicas: usize) -> Vec<f64> {
    let queued = common::env_num("BOSUN_BENCH_QUEUED", 1000);
    let s = setup(pg);
    {
        let q = store(&s);
        for _ in 0..queued {
            let mut j = new_job();
            // No agent has this class: the jobs stay queued.
            j.resource_class = Some("none-such".into());
            q.enqueue(&j).expect("enqueue");
        }
    }
    let servers: Vec<(KillOnDrop, String)> = (0..replicas)
        .map(|_| serve(&s.data, s.db.as_deref()))
        .collect();
    let polls: Vec<_> = servers
        .iter()
        .enumerate()
        .map(|(i, (_, base))| {
            let a = rt.block_on(register(base, &s.token, &format!("idle{i}")));
            rt.spawn(async move { a.claim(10).await })
        })
        .collect();
    for (_, base) in &servers {
        let page = rt.block_on(async {
            reqwest::Client::new()
                .get(format!("{base}/"))
                .send()
                .await
                .expect("page")
                .text()
                .await
                .expect("text")
        });
        assert!(page.contains("queued"), "the job list shows the queue");
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss = servers
        .iter()
        .map(|(c, _)| common::proc_status_kib(c.0.id(), "VmRSS") as f64 / 1024.0)
        .collect();
    for p in polls {
        p.abort();
    }
    rss
}

/// Median and p90 (ms) from a job queued by another process to an idle agent's claim.
fn pickup(rt: &tokio::runtime::Runtime, pg: Option<&PgServer>) -> (f64, f64) {
    let samples = common::env_num("BOSUN_BENCH_SAMPLES", 30);
    let s = setup(pg);
    let (_server, base) = serve(&s.data, s.db.as_deref());
    let q = store(&s);
    let agent = Arc::new(rt.block_on(register(&base, &s.token, "idle")));
    let mut took = Vec::new();
    for _ in 0..samples {
        let a = agent.clone();
        let poll = rt.spawn(async move {
            let id = a.claim(20).await.expect("a job");
            (Instant::now(), id)
        });
        // Let the poll settle into its wait.
        std::thread::sleep(Duration::from_millis(150));
        let t0 = Instant::now();
        q.enqueue(&new_job()).expect("enqueue");
        let (at, id) = rt.block_on(poll).expect("poll");
        took.push(at.duration_since(t0));
        rt.block_on(agent.finish(&id));
    }
    (pct(&mut took, 0.5), pct(&mut took, 0.9))
}

fn main() {
    let Some(pg_bin) = harness::postgres::pg_bin() else {
        eprintln!("scale: no PostgreSQL server binaries; nothing to compare");
        return;
    };
    eprintln!("scale: PostgreSQL from {}", pg_bin.display());
    // BOSUN_BENCH_PG_SETTINGS: `name=value,…` for the server (e.g. `fsync=off`, to see what
    // the disk costs).
    let settings = std::env::var("BOSUN_BENCH_PG_SETTINGS").unwrap_or_default();
    let settings: Vec<&str> = settings.split(',').filter(|s| !s.is_empty()).collect();
    let pg = PgServer::start_with(&settings).expect("PostgreSQL");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sq, sq50, sq99) = claims(&rt, None, 1);
    println!(
        "claims, SQLite, 1 coordinator:      {sq:7.0} jobs/s  p50 {sq50:6.2} ms  p99 {sq99:6.2} ms"
    );
    let (p1, p150, p199) = claims(&rt, Some(&pg), 1);
    println!(
        "claims, PostgreSQL, 1 coordinator:  {p1:7.0} jobs/s  p50 {p150:6.2} ms  p99 {p199:6.2} ms  ({:.2}× SQLite's throughput)",
        p1 / sq
    );
    let (p2, p250, p299) = claims(&rt, Some(&pg), 2);
    println!(
        "claims, PostgreSQL, 2 coordinators: {p2:7.0} jobs/s  p50 {p250:6.2} ms  p99 {p299:6.2} ms  ({:.2}× SQLite's throughput)",
        p2 / sq
    );
    let (p3, p350, p399) = claims(&rt, Some(&pg), 3);
    println!(
        "claims, PostgreSQL, 3 coordinators: {p3:7.0} jobs/s  p50 {p350:6.2} ms  p99 {p399:6.2} ms  ({:.2}× SQLite's throughput)",
        p3 / sq
    );
    let (sm, sa) = appends(&rt, None, 1);
    println!("log appends, SQLite (files), 1 coordinator:      {sm:6.1} MiB/s  {sa:6.0} appends/s");
    let (pm, pa) = appends(&rt, Some(&pg), 1);
    println!(
        "log appends, PostgreSQL (chunks), 1 coordinator:  {pm:6.1} MiB/s  {pa:6.0} appends/s  ({:.2}× SQLite's)",
        pm / sm
    );
    let (qm, qa) = appends(&rt, Some(&pg), 2);
    println!(
        "log appends, PostgreSQL (chunks), 2 coordinators: {qm:6.1} MiB/s  {qa:6.0} appends/s  ({:.2}× SQLite's)",
        qm / sm
    );
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let rs = rss_queued(&rt, None, 1);
    println!(
        "RSS with 1,000 queued, SQLite, 1 coordinator:      {} MiB",
        fmt(&rs)
    );
    for n in 1..=3 {
        let rp = rss_queued(&rt, Some(&pg), n);
        let mean = rp.iter().sum::<f64>() / rp.len() as f64;
        println!(
            "RSS with 1,000 queued, PostgreSQL, {n} coordinator(s): {} MiB  (mean {:.2}× SQLite's)",
            fmt(&rp),
            mean / rs[0]
        );
    }
    let (s50, s90) = pickup(&rt, None);
    println!("enqueue → claim, SQLite:     median {s50:6.1} ms  p90 {s90:6.1} ms");
    let (g50, g90) = pickup(&rt, Some(&pg));
    println!(
        "enqueue → claim, PostgreSQL: median {g50:6.1} ms  p90 {g90:6.1} ms  ({:.2}× SQLite's median; target ≤ 1.2×)",
        g50 / s50
    );
}
