//! Bitbucket around a real coordinator, for the pipeline tests: project acme/widget set up
//! for webhooks and commit statuses ([`setup`]), signed deliveries ([`deliver`]) in Cloud's
//! payload shapes, and [`Recorder`], an HTTP server standing in for Bitbucket's REST API that
//! records what it receives (Bitbucket's API cannot exist here).

use super::{Agent, Coordinator, Rig, WorkRepo};
use bosun::coordinator::bitbucket::signature::sign;
/// The pipelines' store calls (`pipeline`, `list_pipelines`) for the files that glob this one.
pub use bosun::coordinator::store::PipelineStore as _;
use bosun::coordinator::store::Store;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const UUID: &str = "{5c1c7b2e-4a8f-4f7e-9b1d-2d6c0d9e7a11}";
pub const SECRET: &str = "webhook-secret-7f3a";

/// Bitbucket's REST API as far as statuses go: records each POST (path, authorization, body);
/// reads (a pipeline's config) are answered 404, so configs come from the mirror.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<(String, String, serde_json::Value)>>>);

impl Recorder {
    pub fn start() -> (Recorder, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rec = Recorder::default();
        let r = rec.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                let mut len = 0usize;
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if lower.starts_with("authorization:") {
                        auth = line["authorization:".len()..].trim().to_owned();
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
                if !first.starts_with("POST ") {
                    // A read of a file (the coordinator asks the API for a pipeline's config
                    // when it has credentials): this stand-in has none, and falls back.
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    continue;
                }
                let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                r.0.lock().expect("lock").push((path, auth, json));
                let _ = conn.write_all(
                    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                );
            }
        });
        (rec, format!("http://{addr}"))
    }

    pub fn all(&self) -> Vec<(String, String, serde_json::Value)> {
        self.0.lock().expect("lock").clone()
    }
}

/// Fields drop in order: the agents, then the coordinator, then the stand-in and its network.
pub struct Setup {
    pub repo: WorkRepo,
    pub data: PathBuf,
    pub addr: String,
    pub agents: Vec<Agent>,
    pub c: Coordinator,
    pub statuses: Recorder,
    pub rig: Rig,
}

/// Project acme/widget (UUID, deploy key, a secret env value, webhook secret, statuses to
/// the recorder), a coordinator, and `agents` agents (each labelled with its name).
pub fn setup(config: &str, agents: &[&str], settings: &[&str]) -> Setup {
    setup_with(config, settings, |c, rig| {
        agents
            .iter()
            .map(|n| c.agent(rig, n).labels(&[n]).start())
            .collect()
    })
}

/// [`setup`] with the agents `start` starts.
pub fn setup_with(
    config: &str,
    settings: &[&str],
    start: impl FnOnce(&Coordinator, &Rig) -> Vec<Agent>,
) -> Setup {
    setup_keyed(config, &["--uuid", UUID], settings, start)
}

/// [`setup_with`] with the project keyed by `key` (`project add` arguments: `--uuid U`, or
/// `--data-center URL --repository-id ID`).
pub fn setup_keyed(
    config: &str,
    key: &[&str],
    settings: &[&str],
    start: impl FnOnce(&Coordinator, &Rig) -> Vec<Agent>,
) -> Setup {
    setup_serving(config, key, &[], settings, start)
}

/// [`setup_keyed`] with more `serve` arguments (`serve_args`).
pub fn setup_serving(
    config: &str,
    key: &[&str],
    serve_args: &[&str],
    settings: &[&str],
    start: impl FnOnce(&Coordinator, &Rig) -> Vec<Agent>,
) -> Setup {
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(".circleci/config.yml", config);
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let c = Coordinator::builder()
        .vcs_hosts(&rig)
        .args(serve_args)
        .start();
    super::add_stand_in_project(
        &c.data,
        &rig,
        "acme/widget",
        &[key, &["--secret-env", "DEPLOY_TOKEN=s3cr3t-value-42"]].concat(),
    );
    let (statuses, api) = Recorder::start();
    let secret_file = c.dir().join("webhook-secret");
    std::fs::write(&secret_file, SECRET).expect("secret");
    let creds = c.dir().join("status-creds");
    std::fs::write(&creds, "bosun-bot:app-password-9").expect("creds");
    let mut args = vec![
        "project",
        "set",
        "--slug",
        "acme/widget",
        "--webhook-secret-file",
        secret_file.to_str().expect("utf8"),
        "--status-api",
        &api,
        "--status-credentials-file",
        creds.to_str().expect("utf8"),
    ];
    args.extend_from_slice(settings);
    c.cli(&args);
    let agents = start(&c, &rig);
    Setup {
        repo,
        data: c.data.clone(),
        addr: c.addr.clone(),
        agents,
        c,
        statuses,
        rig,
    }
}

pub fn push_payload(full_name: &str, kind: &str, name: &str, hash: &str, message: &str) -> String {
    serde_json::json!({
        "actor": {"display_name": "Ada", "nickname": "ada"},
        "repository": {"type": "repository", "uuid": UUID, "full_name": full_name,
                       "name": full_name.split('/').nth(1), "mainbranch": {"name": "main"},
                       "links": {"html": {"href": format!("https://bitbucket.org/{full_name}")}}},
        "push": {"changes": [{
            "new": {"type": kind, "name": name,
                    "target": {"type": "commit", "hash": hash, "message": message,
                               "date": "2026-12-01T10:00:00+00:00", "parents": []}},
            "old": null, "created": true, "closed": false, "forced": false,
            "truncated": false, "commits": []
        }]}
    })
    .to_string()
}

pub fn pr_payload(id: u64, source_repo: &str, branch: &str, hash: &str) -> String {
    let repo = |full: &str, uuid: &str| serde_json::json!({"full_name": full, "uuid": uuid, "type": "repository"});
    serde_json::json!({
        "actor": {"display_name": "Eve", "nickname": "eve"},
        "repository": repo("acme/widget", UUID),
        "pullrequest": {
            "id": id, "title": "a contribution", "state": "OPEN", "draft": false,
            "source": {"branch": {"name": branch}, "commit": {"hash": &hash[..12]},
                       "repository": repo(source_repo, "{0f0f0f0f-0000-4000-8000-000000000001}")},
            "destination": {"branch": {"name": "main"}, "commit": {"hash": "000000000000"},
                            "repository": repo("acme/widget", UUID)},
            "links": {"html": {"href": format!("https://bitbucket.org/acme/widget/pull-requests/{id}")}}
        }
    })
    .to_string()
}

pub async fn deliver(
    addr: &str,
    event: &str,
    delivery: &str,
    body: &str,
    secret: &str,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/webhooks/bitbucket"))
        .header("X-Event-Key", event)
        .header("X-Request-UUID", delivery)
        .header("X-Hook-UUID", "{hook}")
        .header("X-Hub-Signature", sign(secret.as_bytes(), body.as_bytes()))
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("deliver");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

pub fn store(data: &Path) -> Store {
    Store::open(data).expect("store")
}

/// Wait until pipeline `id` is in one of `want`; returns it.
pub fn wait_pipeline(
    data: &Path,
    id: i64,
    want: &[&str],
    timeout: Duration,
) -> bosun::coordinator::store::pipelines::PipelineRow {
    let t0 = Instant::now();
    loop {
        let p = store(data).pipeline(id).expect("read").expect("pipeline");
        if want.contains(&p.status.as_str()) {
            return p;
        }
        assert!(
            t0.elapsed() < timeout,
            "pipeline {id} still {} after {timeout:?}: {p:#?}",
            p.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn job_status(p: &bosun::coordinator::store::pipelines::PipelineRow, name: &str) -> String {
    p.workflows
        .iter()
        .flat_map(|w| &w.jobs)
        .find(|j| j.name == name)
        .map(|j| j.status.as_str().to_owned())
        // Not compiled yet (or no such job): an assertion on it fails with this word.
        .unwrap_or_else(|| "<absent>".to_owned())
}

pub fn job_id(p: &bosun::coordinator::store::pipelines::PipelineRow, name: &str) -> i64 {
    p.workflows
        .iter()
        .flat_map(|w| &w.jobs)
        .find(|j| j.name == name)
        .and_then(|j| j.job_id)
        .unwrap_or_else(|| panic!("job {name} was not queued: {p:#?}"))
}

/// How the stand-in answers the config request.
#[derive(Clone)]
pub enum Answer {
    /// 200 with this body, as Cloud's `src` serves a file.
    File(String),
    /// This status, no config.
    Status(u16),
    /// 200 with more than the config limit, without a length (read to the end of the
    /// connection): the reader must stop at the limit, not hold it all.
    Endless,
}

/// (connection number, method, path and query, Authorization).
pub type Seen = (usize, String, String, String);

/// Bitbucket's REST API for config reads: answers `GET`s as [`Answer`] says, takes commit
/// statuses (`POST`), records every request, keeps connections alive as Bitbucket does.
#[derive(Clone)]
pub struct ApiStandIn {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub answer: Arc<Mutex<Answer>>,
}

impl ApiStandIn {
    /// Listens on loopback; keeps connections alive as Bitbucket does (HTTP/1.1).
    pub fn start() -> (ApiStandIn, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let api = ApiStandIn {
            seen: Arc::default(),
            answer: Arc::new(Mutex::new(Answer::Status(404))),
        };
        let a = api.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { continue };
                let a = a.clone();
                std::thread::spawn(move || a.serve(n, conn));
            }
        });
        (api, format!("http://{addr}"))
    }

    fn serve(&self, n: usize, mut conn: std::net::TcpStream) {
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        loop {
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) == 0 {
                return;
            }
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("authorization:") {
                    auth = line["authorization:".len()..].trim().to_owned();
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            let mut parts = first.split_whitespace();
            let method = parts.next().unwrap_or("").to_owned();
            let path = parts.next().unwrap_or("").to_owned();
            self.seen
                .lock()
                .expect("lock")
                .push((n, method.clone(), path, auth));
            if method != "GET" {
                // A commit status: taken.
                let _ = conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
                continue;
            }
            let answer = self.answer.lock().expect("lock").clone();
            match answer {
                Answer::File(text) => {
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                            text.len()
                        )
                        .as_bytes(),
                    );
                }
                Answer::Status(code) => {
                    let _ = conn.write_all(
                        format!("HTTP/1.1 {code} Nope\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
                    );
                }
                Answer::Endless => {
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
                    );
                    let line = [b'#'; 64 * 1024];
                    // 5 MiB, past the 4 MiB limit; the reader hangs up before the end.
                    for _ in 0..80 {
                        if conn.write_all(&line).is_err() {
                            break;
                        }
                    }
                    return;
                }
            }
        }
    }

    pub fn config_gets(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.1 == "GET")
            .cloned()
            .collect()
    }
}
