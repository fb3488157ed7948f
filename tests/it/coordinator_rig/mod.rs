//! What the coordinator's integration tests share (`tests/it/coordinator.rs`,
//! `tests/it/coordinator_pages.rs`): a coordinator process on loopback, an agent speaking the
//! protocol over HTTP, and the operator's CLI.

use bosun::protocol::{ClaimResponse, FinalStatus, FinishRequest, RegisterResponse};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_bosun");

pub struct Server {
    pub child: Child,
    /// The server's stderr lines, when started with `watch_log`.
    pub log: Option<std::sync::mpsc::Receiver<String>>,
    pub base: String,
    pub data: PathBuf,
    pub _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(data: &Path, extra: &[&str]) -> Server {
    start_with(data, extra, false)
}

pub fn start_with(data: &Path, extra: &[&str], watch_log: bool) -> Server {
    start_limited(data, extra, watch_log, None)
}

/// With `nofile`: the server runs under that RLIMIT_NOFILE (as a busy host or a systemd
/// unit's LimitNOFILE would set it).
pub fn start_limited(data: &Path, extra: &[&str], watch_log: bool, nofile: Option<u64>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["coordinator", "serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .stdout(Stdio::piped());
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: n as libc::rlim_t,
                    rlim_max: n as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    if watch_log {
        cmd.env("BOSUN_LOG", "bosun=info").stderr(Stdio::piped());
    } else {
        cmd.stderr(Stdio::inherit());
    }
    let mut child = cmd.spawn().expect("start coordinator");
    let log = child.stderr.take().map(|err| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("coordinator: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read address");
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server {
        child,
        log,
        base,
        data: data.to_path_buf(),
        _dir: None,
    }
}

/// A fresh data dir with project acme/widget, and a server on it.
pub fn fresh(extra: &[&str]) -> Server {
    fresh_with(extra, false)
}

pub fn fresh_with(extra: &[&str], watch_log: bool) -> Server {
    fresh_limited(extra, watch_log, None)
}

pub fn fresh_limited(extra: &[&str], watch_log: bool, nofile: Option<u64>) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let key = dir.path().join("id_ed25519");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nTESTKEY\n").expect("key");
    cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--user-key",
            key.to_str().expect("utf8"),
            "--env",
            "A=1",
            "--secret-env",
            "TOKEN=hunter22",
        ],
    );
    let mut s = start_limited(&data, extra, watch_log, nofile);
    s._dir = Some(dir);
    s
}

pub use crate::harness::{coordinator_cli as cli, sha256};

/// `bosun coordinator enqueue` of acme/widget's `build` job on `main`, with `extra` flags.
pub fn enqueue(data: &Path, extra: &[&str]) -> String {
    crate::harness::enqueue_job(data, "build", extra)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

pub struct Agent {
    pub base: String,
    pub id: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Agent {
    pub fn url(&self, p: &str) -> String {
        format!("{}/api/v1{p}", self.base)
    }
    pub async fn post(&self, p: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(p))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request")
    }
    pub async fn claim(&self, wait: u64) -> reqwest::Response {
        self.post(
            &format!("/jobs/claim?wait={wait}"),
            json!({"resource_class": "docker", "labels": [], "capacity": 1}),
        )
        .await
    }
    pub async fn claim_job(&self, wait: u64) -> ClaimResponse {
        let r = self.claim(wait).await;
        assert_eq!(r.status(), 200);
        r.json().await.expect("claim json")
    }
    pub async fn log(&self, id: &str, offset: u64, bytes: &[u8]) -> (u16, u64) {
        let r = self
            .http
            .post(self.url(&format!("/jobs/{id}/log?offset={offset}")))
            .bearer_auth(&self.token)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("log");
        let status = r.status().as_u16();
        // 200/409 carry a LogAck; errors (403, 404) an ApiError, reported as offset 0.
        let v: serde_json::Value = r.json().await.expect("json");
        (status, v["offset"].as_u64().unwrap_or(0))
    }
    pub async fn heartbeat(&self, jobs: &[&str]) -> reqwest::Response {
        let running: Vec<_> = jobs
            .iter()
            .map(|j| json!({"job_id": j, "state": "running"}))
            .collect();
        self.post("/agents/heartbeat", json!({ "running": running }))
            .await
    }
    pub async fn finish(&self, id: &str, status: FinalStatus, log: &[u8]) -> reqwest::Response {
        let req = FinishRequest {
            status,
            log_bytes: log.len() as u64,
            log_sha256: sha256(log),
            error: None,
        };
        self.post(
            &format!("/jobs/{id}/finish"),
            serde_json::to_value(req).expect("json"),
        )
        .await
    }
}

pub async fn register(s: &Server, name: &str) -> Agent {
    let token = cli(&s.data, &["token"]);
    register_with(s, name, &token).await
}

pub async fn try_register(s: &Server, name: &str, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/agents/register", s.base))
        .json(&json!({"registration_token": token, "name": name,
            "resource_class": "docker", "labels": [], "version": "test"}))
        .send()
        .await
        .expect("register")
}

pub async fn register_with(s: &Server, name: &str, token: &str) -> Agent {
    let r = try_register(s, name, token).await;
    assert_eq!(r.status(), 201);
    let reg: RegisterResponse = r.json().await.expect("json");
    assert_eq!(reg.protocol_version, bosun::protocol::PROTOCOL_VERSION);
    Agent {
        base: s.base.clone(),
        id: reg.agent_id,
        token: reg.agent_token.into_inner(),
        http: client(),
    }
}

pub async fn get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text")
}
