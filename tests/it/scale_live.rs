//! Several coordinators that share nothing but a PostgreSQL database and an S3 bucket
//! (issue 31): real `bosun coordinator serve` processes, each with a data directory of its
//! own, `--database postgres://…` on a real PostgreSQL 15 and `--blob-store s3://…` on a real
//! s3s-fs server, agents speaking the protocol over HTTP spread over them.
//!
//! - many jobs through three replicas, one SIGKILLed in the middle: its agents move to
//!   another replica and resend from what they last had acknowledged; no job is handed out
//!   twice, every one ends, every log is byte-exact — read back through a replica, and as
//!   one object each in the bucket, none left in the database or on a replica's disk;
//! - a page on replica B follows, live, a log its agent appends through replica A, about as
//!   fast as a page on A; a resend through B overlapping what A committed is taken once, a
//!   gap is refused.

use crate::coordinator_rig::{self as rig, Server};
use crate::harness::postgres::{self, PgServer};
use crate::harness::{S3Server, S3_SECRET};
use crate::scale_pg::{log_of, runtime};
use bosun::coordinator::store::{LogStore, PgStore, QueueStore};
use bosun::protocol::{ClaimResponse, FinalStatus, FinishRequest, JobState};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const BUCKET: &str = "bosun-live";

/// One database with project acme/widget and a registration token, one bucket, and a
/// directory for the replicas' own data directories.
struct Cluster {
    s3: S3Server,
    dir: tempfile::TempDir,
    url: String,
    /// The CLI's data directory; its key file seals the secrets every replica opens.
    cli_data: PathBuf,
    creds: String,
    token: String,
}

fn cluster(pg: &PgServer) -> Cluster {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = S3Server::start(&[BUCKET]);
    let creds = s3
        .credentials_file(dir.path(), S3_SECRET)
        .to_string_lossy()
        .into_owned();
    let url = pg.new_database().expect("database");
    let cli_data = dir.path().join("cli");
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY\n").expect("key");
    rig::cli(
        &cli_data,
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
            "--database",
            &url,
        ],
    );
    let token = rig::cli(&cli_data, &["token", "--database", &url]);
    Cluster {
        s3,
        dir,
        url,
        cli_data,
        creds,
        token,
    }
}

/// The data directory of replica `name` (its own: nothing in it is shared).
fn data_of(c: &Cluster, name: &str) -> PathBuf {
    c.dir.path().join(name)
}

fn replica(c: &Cluster, name: &str) -> Server {
    let key = secrets_key(&c.cli_data);
    rig::start(
        &data_of(c, name),
        &[
            "--database",
            &c.url,
            "--secrets-key",
            key.to_str().expect("utf8"),
            "--blob-store",
            &format!("s3://{BUCKET}/ci"),
            "--s3-endpoint",
            &c.s3.endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-credentials-file",
            &c.creds,
            "--lease-secs",
            "10",
        ],
    )
}

/// Where the CLI's first command made the secrets key: beside its data directory.
fn secrets_key(data: &Path) -> PathBuf {
    let mut k = data.as_os_str().to_owned();
    k.push(".key");
    PathBuf::from(k)
}

fn store(c: &Cluster) -> PgStore {
    PgStore::open(&c.url, &c.cli_data, None).expect("open the database")
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

/// An agent that knows every replica's address and talks to one at a time: when a request
/// does not get through (its replica died), it moves to the next — as an agent behind a
/// load balancer lands on another replica — and carries on from what it last had
/// acknowledged.
struct Agent {
    bases: Vec<String>,
    at: AtomicUsize,
    id: String,
    token: String,
    http: reqwest::Client,
}

impl Agent {
    fn url(&self, p: &str) -> String {
        let i = self.at.load(Ordering::SeqCst) % self.bases.len();
        format!("{}/api/v1{p}", self.bases[i])
    }

    /// The request did not get through: the next replica.
    fn move_on(&self) {
        self.at.fetch_add(1, Ordering::SeqCst);
    }
}

/// Register on `bases[0]`, knowing the others.
async fn register(bases: Vec<String>, name: &str, token: &str) -> Agent {
    let http = rig::client();
    let r = http
        .post(format!("{}/api/v1/agents/register", bases[0]))
        .json(&json!({"registration_token": token, "name": name,
            "resource_class": "docker", "labels": [], "version": "test"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let reg: bosun::protocol::RegisterResponse = r.json().await.expect("json");
    Agent {
        bases,
        at: AtomicUsize::new(0),
        id: reg.agent_id,
        token: reg.agent_token.into_inner(),
        http,
    }
}

const LOG_LEN: usize = 12_000;
const PIECE: usize = 1_500;

/// What the agents of a run saw: every claim (job, agent), every job given up after a
/// refusal (job, agent, answer), and how many requests failed to get through.
#[derive(Default)]
struct Seen {
    claims: Vec<(String, String)>,
    refused: Vec<(String, String, String)>,
    moved: usize,
}

/// An answer that no resend changes.
fn refusal(code: u16) -> bool {
    matches!(code, 403 | 404 | 422)
}

/// Claim, send the log in pieces (resending from what the coordinator says it has), finish;
/// a request that does not get through moves the agent to the next replica. Stops once
/// `done` reaches `total`, or at `deadline`.
async fn work(
    agent: Agent,
    total: usize,
    done: Arc<AtomicUsize>,
    seen: Arc<Mutex<Seen>>,
    deadline: Instant,
) {
    let over = || done.load(Ordering::SeqCst) >= total || Instant::now() >= deadline;
    let failed = || {
        agent.move_on();
        seen.lock().expect("seen").moved += 1;
        tokio::time::sleep(Duration::from_millis(50))
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
            Ok(_) => continue,
            Err(_) => {
                failed().await;
                continue;
            }
        };
        let Ok(c) = r.json::<ClaimResponse>().await else {
            failed().await;
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
                let end = (off + PIECE).min(log.len());
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
                            None => failed().await,
                        }
                    }
                    Ok(r) if refusal(r.status().as_u16()) => {
                        let what =
                            format!("log: {} {}", r.status(), r.text().await.unwrap_or_default());
                        seen.lock().expect("seen").refused.push((
                            id.clone(),
                            agent.id.clone(),
                            what,
                        ));
                        continue 'jobs;
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_) => failed().await,
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
            let r = agent
                .http
                .post(agent.url(&format!("/jobs/{id}/finish")))
                .bearer_auth(&agent.token)
                .json(&req)
                .send()
                .await;
            match r.map(|r| r.status().as_u16()) {
                Ok(200) => break,
                Ok(409) => off = 0,
                Ok(code) if refusal(code) => {
                    seen.lock().expect("seen").refused.push((
                        id.clone(),
                        agent.id.clone(),
                        format!("finish: {code}"),
                    ));
                    continue 'jobs;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => failed().await,
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
}

async fn get_bytes(url: String) -> (u16, Vec<u8>) {
    let r = rig::client().get(url).send().await.expect("get");
    let status = r.status().as_u16();
    (status, r.bytes().await.expect("body").to_vec())
}

/// Three replicas, agents spread over them, one replica SIGKILLed once a third of the jobs
/// are done. Every job ends `success` with its log byte-exact — through a live replica's
/// page and as one object in the bucket — none handed out twice (again only after the
/// agent that had it was refused), and nothing of a log stays in the database or on a
/// replica's disk.
#[test]
fn three_replicas_sharing_nothing_but_the_database_and_a_bucket_survive_a_sigkill() {
    let Some(pg) = postgres::start() else { return };
    let c = cluster(&pg);
    let mut replicas: Vec<Server> = ["a", "b", "c"].iter().map(|n| replica(&c, n)).collect();
    let bases: Vec<String> = replicas.iter().map(|s| s.base.clone()).collect();
    const JOBS: usize = 1500;
    const AGENTS: usize = 30;
    let ids = enqueue_many(&c, JOBS);
    let rt = runtime();
    let done = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let within = Duration::from_secs(240);
    let t0 = Instant::now();
    let deadline = t0 + within + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..AGENTS {
        // Agent i starts on replica i % 3 and knows the others in turn.
        let mine: Vec<String> = (0..bases.len())
            .map(|k| bases[(i + k) % bases.len()].clone())
            .collect();
        let a = rt.block_on(register(mine, &format!("agent-{i}"), &c.token));
        tasks.push(rt.spawn(work(a, JOBS, done.clone(), seen.clone(), deadline)));
    }
    let report = |seen: &Mutex<Seen>| {
        let s = seen.lock().unwrap_or_else(|p| p.into_inner());
        format!(
            "{} claims, {} moves, refused: {:?}",
            s.claims.len(),
            s.moved,
            s.refused
        )
    };
    while done.load(Ordering::SeqCst) < JOBS / 3 {
        assert!(t0.elapsed() < within, "too slow ({})", report(&seen));
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL: no goodbye, requests in flight cut, finished logs perhaps not moved yet.
    let victim = &mut replicas[2];
    victim.child.kill().expect("SIGKILL replica c");
    victim.child.wait().expect("reap replica c");
    let killed_at = done.load(Ordering::SeqCst);
    eprintln!(
        "replica c killed after {:?} with {killed_at} of {JOBS} jobs done",
        t0.elapsed()
    );
    assert!(killed_at < JOBS, "the kill must come mid-run");
    while done.load(Ordering::SeqCst) < JOBS {
        assert!(
            t0.elapsed() < within,
            "only {} of {JOBS} jobs done after {within:?} ({})",
            done.load(Ordering::SeqCst),
            report(&seen)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed();
    for (i, t) in tasks.into_iter().enumerate() {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .unwrap_or_else(|_| panic!("agent-{i} still busy after every job was done"))
                .expect("agent task")
        });
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen"));
    eprintln!(
        "{JOBS} jobs of {LOG_LEN} bytes through 3 replicas (one killed) in {took:?}; {} \
         requests moved to another replica; refused: {:?}",
        seen.moved, seen.refused
    );
    assert!(seen.moved > 0, "no agent had to move: the kill missed");

    // Handed out once, or again only after the agent that had it was refused.
    let mut held: HashMap<&str, &str> = HashMap::new();
    for (job, agent) in &seen.claims {
        if let Some(first) = held.insert(job, agent) {
            assert!(
                seen.refused.iter().any(|(j, a, _)| j == job && a == first),
                "job {job} handed out twice (again to {agent}) while {first} still had it"
            );
        }
    }
    let want: HashSet<String> = ids.iter().map(i64::to_string).collect();
    let got: HashSet<String> = held.keys().map(|j| j.to_string()).collect();
    assert_eq!(got, want, "every job claimed");

    let s = store(&c);
    for id in &ids {
        let row = s.job(*id).expect("job").expect("row");
        assert_eq!(row.status, JobState::Success, "job {id}: {:?}", row.error);
    }
    // Every log through a live replica's page, byte-exact (chunks or object, whichever).
    let live = [&bases[0], &bases[1]];
    for (k, id) in ids.iter().enumerate() {
        let (st, body) = rt.block_on(get_bytes(format!("{}/jobs/{id}/log.txt", live[k % 2])));
        assert_eq!(st, 200, "job {id}'s log.txt");
        assert!(
            body == log_of(&id.to_string(), LOG_LEN),
            "job {id}'s log differs ({} bytes)",
            body.len()
        );
    }
    // Every log becomes one object in the bucket (the dead replica's unmoved ones by the
    // survivors' sweep), and none stays in the database.
    let t1 = Instant::now();
    loop {
        let left = s.finished_live_logs().expect("finished live logs");
        if left.is_empty() {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(90),
            "{} finished logs still in the database: {left:?}",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "every log an object {:?} after the logs were read back",
        t1.elapsed()
    );
    for id in &ids {
        let object = c.s3.root().join(BUCKET).join(format!("ci/logs/{id}.log"));
        let bytes = std::fs::read(&object)
            .unwrap_or_else(|e| panic!("job {id}'s log object {}: {e}", object.display()));
        assert!(
            bytes == log_of(&id.to_string(), LOG_LEN),
            "job {id}'s log object differs"
        );
    }
    // No log is kept on a replica's disk: the survivors hold nothing, the killed one at
    // most the copies it was making when it died (its sweep clears them once stale).
    for name in ["a", "b", "c"] {
        let logs = data_of(&c, name).join("logs");
        let files: Vec<String> = std::fs::read_dir(&logs)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if name == "c" {
            assert!(
                files
                    .iter()
                    .all(|f| f.ends_with(".copy") || f.ends_with(".lines.tmp")),
                "replica c keeps {files:?}"
            );
        } else {
            assert!(files.is_empty(), "replica {name} keeps {files:?}");
        }
    }
}

/// What a page was sent, piece by piece: (when, the text).
type Shown = Arc<Mutex<Vec<(Instant, String)>>>;

/// The stream of a page following job `id` through `base`, as it arrives.
fn follow(rt: &tokio::runtime::Runtime, base: &str, id: &str) -> (JoinHandle<()>, Shown) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let url = format!("{base}/jobs/{id}/stream?offset=0&seq=0");
    let sink = got.clone();
    let task = rt.spawn(async move {
        let mut r = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .expect("stream");
        assert_eq!(r.status(), 200);
        while let Ok(Some(piece)) = r.chunk().await {
            let at = Instant::now();
            sink.lock()
                .expect("events")
                .push((at, String::from_utf8_lossy(&piece).into_owned()));
        }
    });
    (task, got)
}

/// When `mark` first showed on the page, if it did.
fn shown_at(events: &Mutex<Vec<(Instant, String)>>, mark: &str) -> Option<Instant> {
    events
        .lock()
        .expect("events")
        .iter()
        .find(|(_, t)| t.contains(mark))
        .map(|(at, _)| *at)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A page on replica B follows a log that its agent sends through replica A: each line shows
/// on B about as soon as on a page on A (appends notify the replicas while a page follows
/// the log, through `LISTEN/NOTIFY`; the 1 s re-read alone would take ~500 ms on average).
/// A resend through B overlapping what A committed adds only the new part, a gap is
/// refused, and the finish through B closes the log A received.
#[test]
fn a_page_on_one_replica_follows_a_log_appended_through_another() {
    let Some(pg) = postgres::start() else { return };
    let c = cluster(&pg);
    let a = replica(&c, "a");
    let b = replica(&c, "b");
    let rt = runtime();
    let agent = rt.block_on(register(
        vec![a.base.clone(), b.base.clone()],
        "appender",
        &c.token,
    ));
    let id = rig::enqueue(&c.cli_data, &["--database", &c.url]);
    let claim = rt.block_on(async {
        let r = agent
            .http
            .post(agent.url("/jobs/claim?wait=10"))
            .bearer_auth(&agent.token)
            .json(&json!({"resource_class": "docker", "labels": [], "capacity": 1}))
            .send()
            .await
            .expect("claim");
        assert_eq!(r.status(), 200);
        r.json::<ClaimResponse>().await.expect("claim json")
    });
    assert_eq!(claim.job.id, id);
    let append = |offset: usize, bytes: &[u8]| -> (u16, u64) {
        let url = agent.url(&format!("/jobs/{id}/log?offset={offset}"));
        rt.block_on(async {
            let r = agent
                .http
                .post(url)
                .bearer_auth(&agent.token)
                .body(bytes.to_vec())
                .send()
                .await
                .expect("append");
            let st = r.status().as_u16();
            let v: serde_json::Value = r.json().await.expect("json");
            (st, v["offset"].as_u64().unwrap_or(0))
        })
    };
    let mut log = b"started\n".to_vec();
    assert_eq!(append(0, &log), (200, log.len() as u64));
    let (on_a, seen_a) = follow(&rt, &a.base, &id);
    let (on_b, seen_b) = follow(&rt, &b.base, &id);
    let t0 = Instant::now();
    while shown_at(&seen_a, "started").is_none() || shown_at(&seen_b, "started").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "pages never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Lines a quarter second apart, through A.
    let (mut lat_a, mut lat_b) = (Vec::new(), Vec::new());
    let heartbeat = || {
        let url = agent.url("/agents/heartbeat");
        let r = rt.block_on(async {
            agent
                .http
                .post(url)
                .bearer_auth(&agent.token)
                .json(&json!({"running": [{"job_id": id, "state": "running"}]}))
                .send()
                .await
                .expect("heartbeat")
        });
        assert_eq!(r.status(), 200);
    };
    for k in 0..20 {
        std::thread::sleep(Duration::from_millis(250));
        heartbeat();
        let line = format!("line-{k:03}-end\n");
        let (st, end) = append(log.len(), line.as_bytes());
        let acked = Instant::now();
        assert_eq!(st, 200);
        log.extend_from_slice(line.as_bytes());
        assert_eq!(end, log.len() as u64);
        let mark = format!("line-{k:03}-end");
        let t = Instant::now();
        let (sa, sb) = loop {
            if let (Some(x), Some(y)) = (shown_at(&seen_a, &mark), shown_at(&seen_b, &mark)) {
                break (x, y);
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{mark} not shown on both pages (A {:?}, B {:?})",
                shown_at(&seen_a, &mark),
                shown_at(&seen_b, &mark)
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        lat_a.push(sa.saturating_duration_since(acked));
        lat_b.push(sb.saturating_duration_since(acked));
    }
    let (ma, mb) = (median(lat_a.clone()), median(lat_b.clone()));
    let (xa, xb) = (
        lat_a.iter().max().copied().unwrap_or_default(),
        lat_b.iter().max().copied().unwrap_or_default(),
    );
    eprintln!(
        "append through A → shown: page on A median {ma:?} max {xa:?}; page on B median \
         {mb:?} max {xb:?}"
    );
    assert!(
        mb < Duration::from_millis(400),
        "a page on B shows A's appends after {mb:?} (median)"
    );
    assert!(xb < Duration::from_secs(2), "worst {xb:?} on B");

    // A resend through B from an older offset (A's answer lost): only the new part counts.
    agent.move_on();
    let tail = b"resent-tail\n";
    let from = log.len() - 5;
    let mut resend = log[from..].to_vec();
    resend.extend_from_slice(tail);
    let (st, end) = append(from, &resend);
    log.extend_from_slice(tail);
    assert_eq!((st, end), (200, log.len() as u64), "the overlap taken once");
    // A gap is refused with what is committed.
    let (st, end) = append(log.len() + 10, b"after a gap\n");
    assert_eq!((st, end), (409, log.len() as u64));
    // The finish through B: the digest covers the bytes A and B received.
    let r = rt.block_on(async {
        agent
            .http
            .post(agent.url(&format!("/jobs/{id}/finish")))
            .bearer_auth(&agent.token)
            .json(&FinishRequest {
                status: FinalStatus::Success,
                log_bytes: log.len() as u64,
                log_sha256: rig::sha256(&log),
                error: None,
            })
            .send()
            .await
            .expect("finish")
    });
    assert_eq!(r.status(), 200);
    for base in [&a.base, &b.base] {
        let (st, body) = rt.block_on(get_bytes(format!("{base}/jobs/{id}/log.txt")));
        assert_eq!(st, 200);
        assert_eq!(body, log, "the log through {base}");
    }
    // Both pages end (the stream closes once the job is final and all was sent).
    for t in [on_a, on_b] {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), t).await })
            .expect("the page's stream ends")
            .expect("stream task");
    }
    let object = c.s3.root().join(BUCKET).join(format!("ci/logs/{id}.log"));
    let t1 = Instant::now();
    while !object.is_file() {
        assert!(t1.elapsed() < Duration::from_secs(60), "no log object");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read(&object).expect("object"), log);
    drop((a, b));
}
