//! `bosun coordinator migrate` (issue 31): a coordinator populated on SQLite through its
//! real paths — the CLI (a project with a key and variables, a context with a variable, a
//! schedule, an API token), the store (a pipeline as the runner records it) and an agent
//! speaking the protocol over HTTP (jobs with events, logs in pieces, an artifact's blob,
//! the pipeline's job) — is stopped and moved into a throwaway PostgreSQL
//! 15 and a real S3 server (s3s-fs). A coordinator started on the result with a data
//! directory of its own serves the same pages and logs, read from the database and the
//! bucket, a job that was running goes on, and the secrets still open.
//! The migration refuses a source a coordinator is running on, and a target that holds
//! anything unless told to replace it.

use crate::coordinator_rig::{self as rig, Agent};
use crate::harness::{self, postgres, S3Server, S3_SECRET};
use bosun::coordinator::store::pipelines::{NewPipeline, NewWorkflow, NewWorkflowJob};
use bosun::coordinator::store::{PipelineStore, Store};
use bosun::protocol::{
    EventBatch, FinalStatus, JobEvent, PipelineState, StepStatus, WorkflowJobStatus,
};
use std::process::{Command, Output, Stdio};

const BUCKET: &str = "bosun-migrate";

/// `bosun coordinator migrate ARGS`, its outcome.
fn migrate(args: &[&str]) -> Output {
    Command::new(harness::bosun_bin())
        .args(["coordinator", "migrate"])
        .args(args)
        .env_remove("BOSUN_DATABASE_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run migrate")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A job's log: lines, a line of bytes that are not UTF-8, and no final newline.
fn log_of(n: u8) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..400 {
        out.extend_from_slice(format!("job {n} line {i} <b>&amp;</b>\n").as_bytes());
    }
    out.extend_from_slice(&[
        0xff, 0xfe, b'\n', 0x1b, b'[', b'3', b'1', b'm', b'r', b'e', b'd',
    ]);
    out
}

/// Runs job `n` on `agent`: events, the log in two pieces, an artifact for job 1, the end.
async fn run_job(agent: &Agent, n: u8, status: FinalStatus) -> String {
    let job = agent.claim_job(5).await.job;
    let id = job.id.clone();
    let log = log_of(n);
    let events = EventBatch {
        first_seq: 0,
        events: vec![
            JobEvent::StepStarted {
                step: 1,
                name: format!("Build <{n}>"),
                log_offset: 0,
                commit_sha: None,
            },
            JobEvent::StepFinished {
                step: 1,
                name: format!("Build <{n}>"),
                status: if status == FinalStatus::Success {
                    StepStatus::Success
                } else {
                    StepStatus::Failed
                },
                exit_code: Some(if status == FinalStatus::Success { 0 } else { 1 }),
                duration_ms: 1500,
                log_offset: log.len() as u64,
            },
        ],
    };
    let r = agent
        .post(
            &format!("/jobs/{id}/events"),
            serde_json::to_value(events).expect("json"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let half = log.len() / 2;
    assert_eq!(agent.log(&id, 0, &log[..half]).await.0, 200);
    assert_eq!(agent.log(&id, half as u64, &log[half..]).await.0, 200);
    if n == 1 {
        let blob = b"an artifact, stored as a blob\n".repeat(100);
        let sha = harness::sha256(&blob);
        let r = agent
            .http
            .put(agent.url(&format!(
                "/jobs/{id}/blobs/{sha}?offset=0&size={}",
                blob.len()
            )))
            .bearer_auth(&agent.token)
            .header("content-length", blob.len())
            .body(blob.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let r = agent
            .post(
                &format!("/jobs/{id}/artifacts"),
                serde_json::json!({"path": "art/report.txt", "blob": sha, "size": blob.len()}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = agent.finish(&id, status, &log).await;
    assert_eq!(r.status(), 200);
    id
}

/// The pages and logs compared before and after, by path.
fn pages(jobs: &[String]) -> Vec<String> {
    let mut out = vec!["/".to_string(), "/pipelines".to_string()];
    for id in jobs {
        out.push(format!("/jobs/{id}"));
        out.push(format!("/jobs/{id}/log.txt"));
        out.push(format!("/jobs/{id}/log.html?start=2000&end=9000&line=1"));
        out.push(format!("/jobs/{id}/log?offset=1000"));
    }
    out.push(format!("/jobs/{}/artifacts/art/report.txt", jobs[0]));
    out
}

/// `<time …>3 min ago</time>`: the relative text is the wall clock's, not the data's (the
/// exact time stays, in the element's attributes); and so is a running job's time so far
/// in the job list: the two things normalised.
fn without_relative_times(page: &[u8]) -> Vec<u8> {
    // A raw log (not UTF-8) is compared byte for byte.
    if std::str::from_utf8(page).is_err() {
        return page.to_vec();
    }
    let page = without_time_texts(page);
    let running =
        regex::Regex::new(r#"(<tr data-status="running">.*?</time></td><td>)[0-9.]+[a-z]+(</td>)"#)
            .expect("regex");
    running
        .replace_all(&String::from_utf8_lossy(&page), "${1}…${2}")
        .into_owned()
        .into_bytes()
}

fn without_time_texts(page: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(page);
    let mut out = String::new();
    let mut rest = &s[..];
    while let Some(at) = rest.find("<time ") {
        let Some(close) = rest[at..].find('>') else {
            break;
        };
        let Some(end) = rest[at..].find("</time>") else {
            break;
        };
        out.push_str(&rest[..at + close + 1]);
        out.push('…');
        rest = &rest[at + end..];
    }
    out.push_str(rest);
    out.into_bytes()
}

fn fetch(base: &str, paths: &[String]) -> Vec<(String, u16, Vec<u8>)> {
    let addr = base.trim_start_matches("http://");
    paths
        .iter()
        .map(|p| {
            let (head, body) = harness::http_get(addr, p).head_and_body();
            let code = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (p.clone(), code, without_relative_times(&body))
        })
        .collect()
}

fn s3_args<'a>(server: &'a S3Server, creds: &'a str) -> Vec<&'a str> {
    vec![
        "--s3-endpoint",
        &server.endpoint,
        "--s3-region",
        "us-east-1",
        "--s3-credentials-file",
        creds,
    ]
}

/// The rows the migration printed for `table`: (SQLite, PostgreSQL).
fn printed_rows(out: &str, table: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no counts for {table} in:\n{out}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().expect("count"))
        .collect();
    (n[0], n[1])
}

#[test]
fn a_sqlite_coordinator_moves_to_postgres_and_s3_with_the_same_pages_and_open_secrets() {
    let Some(pg) = postgres::start() else { return };
    let s3 = S3Server::start(&[BUCKET]);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key_file = dir.path().join("data.key");
    let url = pg.new_database().expect("database");
    let creds = s3.credentials_file(dir.path(), S3_SECRET);
    let creds = creds.to_string_lossy().into_owned();

    // The SQLite coordinator, populated through the CLI and an agent.
    let ssh_key = dir.path().join("id_ed25519");
    std::fs::write(&ssh_key, "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY\n").expect("key");
    rig::cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--user-key",
            ssh_key.to_str().expect("utf8"),
            "--env",
            "A=1",
            "--secret-env",
            "TOKEN=hunter22",
        ],
    );
    rig::cli(&data, &["context", "create", "deploy"]);
    let value = dir.path().join("value");
    std::fs::write(&value, "ctx-secret-77").expect("value");
    rig::cli(
        &data,
        &[
            "context",
            "env",
            "set",
            "deploy",
            "API_KEY",
            "--value-file",
            value.to_str().expect("utf8"),
        ],
    );
    rig::cli(
        &data,
        &[
            "schedule",
            "add",
            "--project",
            "acme/widget",
            "--name",
            "nightly",
            "--cron",
            "0 3 * * *",
            "--branch",
            "main",
        ],
    );
    rig::cli(
        &data,
        &["api-token", "new", "--project", "acme/widget", "reader"],
    );
    let token = rig::cli(&data, &["token"]);
    // Leases outlast the stop, the migration and the start on PostgreSQL.
    let server = rig::start(&data, &["--lease-secs", "600"]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let agent = rt.block_on(rig::register_with(&server, "a1", &token));
    let mut jobs = Vec::new();
    for (n, status) in [
        (1, FinalStatus::Success),
        (2, FinalStatus::Failed),
        (3, FinalStatus::Success),
    ] {
        rig::enqueue(&data, &[]);
        jobs.push(rt.block_on(run_job(&agent, n, status)));
    }
    // A pipeline (as the runner records one whose config compiled) with one workflow job,
    // which the server queues and the agent runs.
    let pipeline = {
        let store = Store::open(&data).expect("store");
        let (id, _) = store
            .create_pipeline(&NewPipeline {
                project: "acme/widget".into(),
                git_ref: "main".into(),
                commit_sha: Some("a".repeat(40)),
                params: vec![],
                trigger_source: "api".into(),
                event: "api".into(),
                event_action: String::new(),
                pr_number: None,
                pr_url: None,
                pr_fork: false,
                restricted: false,
                username: Some("alice".into()),
                triggered_by: Some("{acct-alice}".into()),
                commit_subject: Some("Add the <widget>".into()),
                schedule_name: String::new(),
                schedule_id: String::new(),
                scheduled_workflow: None,
            })
            .expect("pipeline");
        store
            .pipeline_compiled(
                id,
                &"a".repeat(40),
                &[NewWorkflow {
                    name: "build-and-test".into(),
                    jobs: vec![NewWorkflowJob {
                        name: "build".into(),
                        kind: bosun::coordinator::store::pipelines::JobKind::Build,
                        requires: vec![],
                        serial_group: None,
                        resource_class: None,
                        status: WorkflowJobStatus::Waiting,
                        reason: None,
                        contexts: vec![],
                    }],
                }],
            )
            .expect("compiled");
        jobs.push(rt.block_on(run_job(&agent, 4, FinalStatus::Success)));
        let t0 = std::time::Instant::now();
        while store.pipeline(id).expect("read").expect("pipeline").status != PipelineState::Success
        {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "the pipeline did not end"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        id
    };
    // A job still running when the coordinator stops, half its log committed.
    rig::enqueue(&data, &[]);
    let running = rt.block_on(agent.claim_job(5)).job.id;
    let live_log = log_of(5);
    let half = live_log.len() / 2;
    assert_eq!(
        rt.block_on(agent.log(&running, 0, &live_log[..half])).0,
        200
    );
    let mut paths = pages(&jobs);
    paths.push(format!("/pipelines/{pipeline}"));
    let before = fetch(&server.base, &paths);
    for (p, code, body) in &before {
        assert_eq!(*code, 200, "{p}: {}", String::from_utf8_lossy(body));
    }

    // Refused while the coordinator runs; nothing reaches the target.
    let bucket = format!("s3://{BUCKET}/ci");
    let from = format!("sqlite:{}", data.display());
    let mut args = vec!["--from", from.as_str(), "--to", url.as_str()];
    args.extend(["--blobs-to", bucket.as_str()]);
    args.extend(s3_args(&s3, &creds));
    let live = migrate(&args);
    assert!(!live.status.success(), "{}", text(&live));
    assert!(
        text(&live).contains("a coordinator is running on"),
        "{}",
        text(&live)
    );
    drop(server);

    let out = migrate(&args);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    for (table, rows) in [
        ("projects", 1),
        ("project_env", 2),
        ("jobs", 5),
        ("job_events", 8),
        ("pipelines", 1),
        ("workflows", 1),
        ("workflow_jobs", 1),
        ("agents", 1),
        ("contexts", 1),
        ("context_env", 1),
        ("schedules", 1),
        ("project_tokens", 1),
        ("artifacts", 1),
        ("blob_refs", 1),
        ("registration_tokens", 1),
    ] {
        assert_eq!(printed_rows(&printed, table), (rows, rows), "{printed}");
    }
    assert!(
        printed.contains("logs: 4 finished logs")
            && printed.contains("blobs: 1 blobs")
            && printed.contains(&format!(
                "running logs: 1 logs, {half} bytes into log_chunks"
            )),
        "{printed}"
    );
    assert!(!printed.contains(S3_SECRET), "never the secret: {printed}");
    // The objects are in the bucket in the coordinator's layout; the source kept its files.
    for id in &jobs {
        let object = s3.root().join(BUCKET).join(format!("ci/logs/{id}.log"));
        let n: u8 = (jobs.iter().position(|j| j == id).expect("job") + 1) as u8;
        assert_eq!(std::fs::read(&object).expect("log object"), log_of(n));
        assert!(data.join("logs").join(format!("{id}.log")).is_file());
    }

    // A second run finds the target full; with --replace it runs again, the same.
    let again = migrate(&args);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("not empty") && text(&again).contains("--replace"),
        "{}",
        text(&again)
    );
    let mut replace = args.clone();
    replace.push("--replace");
    let redo = migrate(&replace);
    assert!(redo.status.success(), "{}", text(&redo));
    assert_eq!(printed_rows(&text(&redo), "jobs"), (5, 5));
    assert!(text(&redo).contains("(4 there already)"), "{}", text(&redo));

    // A coordinator on PostgreSQL and the bucket with a data directory of its own (nothing
    // of the old one: running logs and line times are rows now, finished logs and blobs
    // objects) and the same key file.
    let mut serve_args = vec![
        "--database",
        url.as_str(),
        "--secrets-key",
        key_file.to_str().expect("utf8"),
        "--blob-store",
        bucket.as_str(),
        "--lease-secs",
        "600",
    ];
    serve_args.extend(s3_args(&s3, &creds));
    let fresh = dir.path().join("replica");
    let moved = rig::start(&fresh, &serve_args);
    let after = fetch(&moved.base, &paths);
    for ((p, c1, b1), (_, c2, b2)) in before.iter().zip(&after) {
        assert_eq!(c1, c2, "{p}");
        if b1 != b2 {
            let (t1, t2) = (String::from_utf8_lossy(b1), String::from_utf8_lossy(b2));
            let first = t1
                .lines()
                .zip(t2.lines())
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("before: {a}\nafter:  {b}"))
                .unwrap_or_else(|| format!("lengths {} and {}", b1.len(), b2.len()));
            panic!("{p} differs after the migration:\n{first}");
        }
    }

    // The running job goes on through the new coordinator: the rest of its log appended
    // where the old one stopped, the whole log's digest at its end, byte for byte.
    let agent = Agent {
        base: moved.base.clone(),
        ..agent
    };
    assert_eq!(
        rt.block_on(agent.log(&running, half as u64, &live_log[half..])),
        (200, live_log.len() as u64)
    );
    let r = rt.block_on(agent.finish(&running, FinalStatus::Success, &live_log));
    assert_eq!(r.status(), 200);
    let whole = fetch(&moved.base, &[format!("/jobs/{running}/log.txt")]);
    assert_eq!(
        whole[0].2, live_log,
        "the running job's log after the migration"
    );

    // The secrets still open: a new job's claim (by the agent registered before, its token
    // moved too) carries the project's key and secret variable.
    let cli2 = |a: &[&str]| {
        let mut v = a.to_vec();
        v.extend([
            "--database",
            url.as_str(),
            "--secrets-key",
            key_file.to_str().expect("utf8"),
        ]);
        rig::cli(&fresh, &v)
    };
    let id = cli2(&[
        "enqueue",
        "--project",
        "acme/widget",
        "--ref",
        "main",
        "--job",
        "build",
    ]);
    let ids: Vec<i64> = jobs.iter().map(|j| j.parse().expect("id")).collect();
    assert!(
        id.parse::<i64>().expect("id") > *ids.iter().max().expect("max"),
        "the sequence moved past the copied ids: {id}"
    );
    let claim = rt.block_on(agent.claim_job(5));
    assert_eq!(claim.job.id, id);
    let env: Vec<(String, String)> = claim
        .job
        .env
        .iter()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect();
    assert!(
        env.contains(&("TOKEN".into(), "hunter22".into()))
            && env.contains(&("A".into(), "1".into())),
        "{env:?}"
    );
    assert!(
        claim
            .job
            .keys
            .iter()
            .any(|k| k.private_key.contains("TESTKEY")),
        "the user key opens"
    );
}
