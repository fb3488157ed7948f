//! Several coordinators on one PostgreSQL database (issue 31): real `bosun coordinator serve`
//! processes started with `--database postgres://…` on one data directory (`--shared-data`:
//! finished logs and blobs are files there; running logs are in the database), a real
//! PostgreSQL 15 server the test starts, agents speaking the protocol over
//! HTTP (`coordinator_rig`), spread over the replicas.
//!
//! - many jobs through two replicas: no job is handed out twice, every one ends, every log
//!   byte-exact;
//! - an enqueue wakes an agent long-polling another replica at once, and a cancel reaches an
//!   agent through the replica it is connected to, both through `LISTEN/NOTIFY`;
//! - the database restarted under load: `/readyz` says so meanwhile, nothing is lost.

use crate::coordinator_rig::{self as rig, Agent, Server};
use crate::harness::postgres::{self, PgServer};
use bosun::coordinator::store::{parse_job_id, PgStore, QueueStore};
use bosun::protocol::{ClaimResponse, FinalStatus, FinishRequest, JobState};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A database with project acme/widget, its data directory, and its registration token.
struct Cluster {
    _pg_dir: tempfile::TempDir,
    url: String,
    data: PathBuf,
    token: String,
}

fn cli(c: &Cluster, args: &[&str]) -> String {
    let mut a: Vec<&str> = args.to_vec();
    a.extend_from_slice(&["--database", &c.url]);
    rig::cli(&c.data, &a)
}

fn cluster(pg: &PgServer) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let url = pg.new_database().expect("database");
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY\n").expect("key");
    let mut c = Cluster {
        _pg_dir: dir,
        url,
        data,
        token: String::new(),
    };
    cli(
        &c,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--user-key",
            key.to_str().expect("utf8"),
            "--secret-env",
            "TOKEN=hunter22",
        ],
    );
    c.token = cli(&c, &["token"]);
    c
}

fn replica(c: &Cluster, extra: &[&str]) -> Server {
    // These replicas share one data directory (blobs and finished logs there).
    let mut args = vec!["--database", c.url.as_str(), "--shared-data"];
    args.extend_from_slice(extra);
    rig::start(&c.data, &args)
}

/// The store the replicas share, opened by the test (off any async worker: its client
/// blocks).
fn store(c: &Cluster) -> PgStore {
    PgStore::open(&c.url, &c.data, None).expect("open the database")
}

/// Job `id`'s log: its id, then bytes of every value (not UTF-8), so a lost, doubled or
/// reordered piece shows in the digest.
pub(crate) fn log_of(id: &str, len: usize) -> Vec<u8> {
    let seed: u64 = id.parse().unwrap_or(1);
    let mut out = format!("job {id}\n").into_bytes();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out
}

const LOG_LEN: usize = 3000;

/// What the agents of a run saw: every claim (job, agent), and every job an agent gave up
/// because the coordinator refused its writes (job, agent, answer) — a lease that lapsed
/// while the agent could not reach the database, the job handed to another agent since.
#[derive(Default)]
struct Seen {
    claims: Vec<(String, String)>,
    refused: Vec<(String, String, String)>,
}

/// An agent's loop: claim, send the log in pieces (resending from what the coordinator
/// says it has), finish; a failure to get through (a replica without its database) is
/// retried. A refusal (403, 404, 422: the lease lapsed, the job is another agent's now)
/// ends the job for this agent, as it does for the real agent, and is recorded; retrying
/// it would never end. Stops once `done` reaches `total`, or at `deadline` wherever it is.
async fn work(
    agent: Agent,
    total: usize,
    done: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    deadline: Instant,
) {
    let pause = || tokio::time::sleep(Duration::from_millis(100));
    let over = || done.load(Ordering::SeqCst) >= total || Instant::now() >= deadline;
    let refused = |id: &str, what: String| {
        seen.lock()
            .expect("seen")
            .refused
            .push((id.to_owned(), agent.id.clone(), what));
    };
    'jobs: while !over() {
        let r = agent
            .http
            .post(agent.url("/jobs/claim?wait=1"))
            .bearer_auth(&agent.token)
            .json(&json!({"resource_class": "docker", "labels": [], "capacity": 1}))
            .send()
            .await;
        let r = match r {
            Ok(r) if r.status() == 200 => r,
            _ => {
                pause().await;
                continue;
            }
        };
        let Ok(c) = r.json::<ClaimResponse>().await else {
            pause().await;
            continue;
        };
        let id = c.job.id.clone();
        seen.lock()
            .expect("seen")
            .claims
            .push((id.clone(), agent.id.clone()));
        let log = log_of(&id, LOG_LEN);
        let mut off = 0usize;
        loop {
            while off < log.len() {
                if over() {
                    return;
                }
                let end = (off + 1000).min(log.len());
                let r = agent
                    .http
                    .post(agent.url(&format!("/jobs/{id}/log?offset={off}")))
                    .bearer_auth(&agent.token)
                    .body(log[off..end].to_vec())
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 || r.status() == 409 => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        match v["offset"].as_u64() {
                            Some(o) => off = o as usize,
                            None => pause().await,
                        }
                    }
                    Ok(r) if refusal(r.status().as_u16()) => {
                        let what =
                            format!("log: {} {}", r.status(), r.text().await.unwrap_or_default());
                        refused(&id, what);
                        continue 'jobs;
                    }
                    _ => pause().await,
                }
            }
            if over() {
                return;
            }
            let req = FinishRequest {
                status: FinalStatus::Success,
                log_bytes: log.len() as u64,
                log_sha256: rig::sha256(&log),
                error: None,
            };
            match post_status(&agent, &format!("/jobs/{id}/finish"), &req).await {
                // A finish resent because the answer to the first was lost is answered 200.
                Some(200) => break,
                // The coordinator lacks bytes (it lost an append): resend, finish again.
                Some(409) => off = 0,
                Some(code) if refusal(code) => {
                    refused(&id, format!("finish: {code}"));
                    continue 'jobs;
                }
                _ => pause().await,
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
}

/// An answer that no resend changes.
fn refusal(code: u16) -> bool {
    matches!(code, 403 | 404 | 422)
}

/// POST `body` as JSON: the status, or `None` when the request did not get through.
async fn post_status(agent: &Agent, p: &str, body: &FinishRequest) -> Option<u16> {
    agent
        .http
        .post(agent.url(p))
        .bearer_auth(&agent.token)
        .json(body)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Every job ended `success` with exactly the bytes its agent sent, and was handed out once
/// — or again only after the coordinator refused the agent that had it (its lease lapsed).
fn check_all(c: &Cluster, via: &Server, ids: &[i64], seen: &Seen) {
    let mut held: HashMap<&str, &str> = HashMap::new();
    for (job, agent) in &seen.claims {
        if let Some(first) = held.insert(job, agent) {
            assert!(
                seen.refused.iter().any(|(j, a, _)| j == job && a == first),
                "job {job} handed out twice (again to {agent}) while {first} still had it; \
                 refused: {:?}",
                seen.refused
            );
        }
    }
    let want: HashSet<String> = ids.iter().map(i64::to_string).collect();
    let got: HashSet<String> = held.keys().map(|j| j.to_string()).collect();
    assert_eq!(got, want, "every job claimed");
    if !seen.refused.is_empty() {
        eprintln!(
            "jobs given up after a refusal (handed out again): {:?}",
            seen.refused
        );
    }
    let s = store(c);
    let rt = runtime();
    for id in ids {
        let row = s.job(*id).expect("job").expect("row");
        assert_eq!(row.status, JobState::Success, "job {id}: {:?}", row.error);
        // Through a replica's page: the chunks in the database, or the finished log's file
        // once it moved there.
        let url = format!("{}/jobs/{id}/log.txt", via.base);
        let body = rt.block_on(async {
            let r = rig::client().get(url).send().await.expect("log.txt");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body").to_vec()
        });
        assert_eq!(body, log_of(&id.to_string(), LOG_LEN), "job {id}'s log");
    }
}

fn enqueue_many(c: &Cluster, n: usize) -> Vec<i64> {
    let s = store(c);
    (0..n)
        .map(|_| {
            QueueStore::enqueue(
                &s,
                &bosun::coordinator::store::NewJob {
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
                },
            )
            .expect("enqueue")
        })
        .collect()
}

/// Agents registered half on each replica, working until `total` jobs are done. Every wait
/// is bounded: the run fails with what it saw after `within`, never hangs.
fn run_agents(
    rt: &tokio::runtime::Runtime,
    c: &Cluster,
    replicas: &[&Server],
    agents: usize,
    total: usize,
    during: impl FnOnce(&Arc<AtomicUsize>),
    within: Duration,
) -> Seen {
    let done = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let t0 = Instant::now();
    // The agents stop by themselves a little after the test gives up on them.
    let deadline = t0 + within + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..agents {
        let s = replicas[i % replicas.len()];
        let a = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                rig::register_with(s, &format!("agent-{i}"), &c.token),
            )
            .await
            .unwrap_or_else(|_| panic!("agent-{i} not registered within 60 s"))
        });
        tasks.push(rt.spawn(work(a, total, done.clone(), seen.clone(), deadline)));
    }
    during(&done);
    let report = |seen: &Mutex<Seen>| {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        format!("{} claims, refused: {:?}", s.claims.len(), s.refused)
    };
    while done.load(Ordering::SeqCst) < total {
        assert!(
            t0.elapsed() < within,
            "only {} of {total} jobs done after {within:?} ({})",
            done.load(Ordering::SeqCst),
            report(&seen)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "agent-{i} still busy 30 s after every job was done ({})",
                        report(&seen)
                    )
                })
                .expect("agent task")
        });
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    seen
}

#[test]
fn two_replicas_hand_out_every_job_once_with_byte_exact_logs() {
    let Some(pg) = postgres::start() else { return };
    let c = cluster(&pg);
    let a = replica(&c, &[]);
    let b = replica(&c, &[]);
    const JOBS: usize = 240;
    let ids = enqueue_many(&c, JOBS);
    let rt = runtime();
    let seen = run_agents(
        &rt,
        &c,
        &[&a, &b],
        12,
        JOBS,
        |_| {},
        Duration::from_secs(180),
    );
    check_all(&c, &a, &ids, &seen);
    // Nothing refused with the database up all along.
    assert!(seen.refused.is_empty(), "{:?}", seen.refused);
    // Both replicas handed out jobs.
    let by_agent: HashMap<&str, usize> =
        seen.claims.iter().fold(HashMap::new(), |mut m, (_, a)| {
            *m.entry(a.as_str()).or_default() += 1;
            m
        });
    assert!(by_agent.len() >= 2, "{by_agent:?}");
}

/// An agent long-polls replica B; the job is queued by another process (the operator's CLI
/// on the same database): B hears it through `LISTEN/NOTIFY` and hands it out at once, not
/// at the end of the poll. Then the agent's control poll on B is answered with a cancel
/// made elsewhere.
#[test]
fn an_enqueue_and_a_cancel_elsewhere_reach_an_agent_on_another_replica_at_once() {
    let Some(pg) = postgres::start() else { return };
    let c = cluster(&pg);
    let _a = replica(&c, &[]);
    let b = replica(&c, &[]);
    let rt = runtime();
    let agent = rt.block_on(rig::register_with(&b, "waiting", &c.token));
    let agent = Arc::new(agent);
    // The poll is open before the job exists.
    let poll = {
        let agent = agent.clone();
        rt.spawn(async move {
            let r = agent.claim(20).await;
            (
                r.status().as_u16(),
                Instant::now(),
                r.json::<ClaimResponse>().await.ok(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let queued_at = Instant::now();
    let id = rig::enqueue(&c.data, &["--database", &c.url]);
    let (status, answered, claim) = rt.block_on(poll).expect("poll");
    assert_eq!(status, 200);
    let claim = claim.expect("a claim");
    assert_eq!(claim.job.id, id);
    let woke = answered.duration_since(queued_at);
    eprintln!("enqueue elsewhere → claim on replica B: {woke:?}");
    assert!(
        woke < Duration::from_secs(3),
        "took {woke:?} (the poll waits 20 s)"
    );

    // The control channel's long poll on B, then a cancel by another process.
    let control = {
        let agent = agent.clone();
        rt.spawn(async move {
            let r = agent
                .post("/agents/control?wait=20", json!({"cancels_seen": []}))
                .await;
            let at = Instant::now();
            let v: serde_json::Value = r.json().await.expect("json");
            (v, at)
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    cli(&c, &["cancel", &id]);
    let cli_done = Instant::now();
    let (v, at) = rt.block_on(control).expect("control");
    assert_eq!(v["cancel"], json!([id]), "{v}");
    let latency = at.saturating_duration_since(cli_done);
    eprintln!(
        "cancel elsewhere → control answer on replica B: {latency:?} after the CLI returned \
         ({:?} after it started)",
        at.duration_since(t0)
    );
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    let s = store(&c);
    let row = s
        .job(parse_job_id(&id).expect("id"))
        .expect("job")
        .expect("row");
    assert!(row.cancel_requested);
}

/// The database goes away under two replicas and their agents, then comes back: `/readyz`
/// answers 503 meanwhile and 200 after, the agents' retries go through, and every job ends
/// with its whole log. These agents send no heartbeats: a job held across an outage longer
/// than the 10 s lease lapses, its agent's next write is refused and it gives the job up
/// (as the real agent does), and another agent runs it — once looping on that refusal hung
/// this test with every job already `success`.
#[test]
fn a_database_restart_is_ridden_out_and_readyz_says_so() {
    let Some(pg) = postgres::start() else { return };
    let c = cluster(&pg);
    let a = replica(&c, &["--lease-secs", "10"]);
    let b = replica(&c, &["--lease-secs", "10"]);
    const JOBS: usize = 120;
    let ids = enqueue_many(&c, JOBS);
    let rt = runtime();
    let readyz = |s: &Server| -> u16 {
        let url = format!("{}/readyz", s.base);
        rt.block_on(async move {
            rig::client()
                .get(url)
                .timeout(Duration::from_secs(15))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    assert_eq!(readyz(&a), 200);
    let seen = run_agents(
        &rt,
        &c,
        &[&a, &b],
        6,
        JOBS,
        |done| {
            // Some work first, then the restart in the middle.
            let t0 = Instant::now();
            while done.load(Ordering::SeqCst) < JOBS / 4 && t0.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(20));
            }
            pg.stop().expect("stop PostgreSQL");
            let before = done.load(Ordering::SeqCst);
            assert!(before < JOBS, "the restart must come mid-run");
            assert_eq!(readyz(&a), 503, "replica A ready without its database");
            assert_eq!(readyz(&b), 503, "replica B ready without its database");
            std::thread::sleep(Duration::from_secs(2));
            pg.start_again().expect("start PostgreSQL");
            let t0 = Instant::now();
            while readyz(&a) != 200 || readyz(&b) != 200 {
                assert!(t0.elapsed() < Duration::from_secs(30), "not ready again");
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!(
                "database back: ready again in {:?}; {before} of {JOBS} jobs were done before",
                t0.elapsed()
            );
        },
        Duration::from_secs(240),
    );
    check_all(&c, &a, &ids, &seen);
}
