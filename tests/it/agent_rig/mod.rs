//! What the agent's integration tests share (`tests/it/agent.rs`, `tests/it/agent_ops.rs`): a fake
//! coordinator written here (std TcpListener, HTTP/1.1, one request per connection) that
//! speaks protocol v1 from `bosun-protocol` and records what it is sent, and a `bosun agent`
//! process pointed at it.

use crate::harness::Project;
use bosun::protocol::*;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "agent-token-for-tests";

#[derive(Default)]
pub struct St {
    pub agent_id: String,
    pub queue: Vec<WireJob>,
    pub logs: HashMap<String, Vec<u8>>,
    pub events: HashMap<String, Vec<JobEvent>>,
    pub finish: HashMap<String, (FinishRequest, Instant)>,
    pub cancel: HashSet<String>,
    pub cancel_sent: HashMap<String, Instant>,
    pub heartbeats: Vec<Heartbeat>,
    pub claims: usize,
    pub last_claim: Option<ClaimRequest>,
    pub registrations: usize,
    /// Every call with the agent token answers 401.
    pub revoked: bool,
}

pub struct Fake {
    pub port: u16,
    pub st: Arc<Mutex<St>>,
    pub down: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
}

impl Fake {
    pub fn start(agent_id: &str) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let st = Arc::new(Mutex::new(St {
            agent_id: agent_id.to_owned(),
            ..St::default()
        }));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, d, x) = (Arc::clone(&st), Arc::clone(&down), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            while !x.load(Ordering::SeqCst) {
                if d.load(Ordering::SeqCst) {
                    // Down: no listener at all, connections are refused.
                    listener = None;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let l = match &listener {
                    Some(l) => l,
                    None => match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).expect("nonblocking");
                            listener.insert(l)
                        }
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                l.set_nonblocking(true).expect("nonblocking");
                match l.accept() {
                    Ok((conn, _)) => {
                        let s = Arc::clone(&s);
                        std::thread::spawn(move || {
                            let _ = handle(conn, &s);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Fake {
            port,
            st,
            down,
            stop,
        }
    }

    pub fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().expect("state")
    }

    /// The fake with `p`'s job queued (no environment), and the agent id it expects.
    pub fn with_job(p: &Project) -> (Fake, String) {
        let agent_id = format!("agent-{}", p.job_id);
        let fake = Fake::start(&agent_id);
        fake.st().queue.push(wire_job(p, Vec::new()));
        (fake, agent_id)
    }

    /// Waits until job `id`'s log holds `text`.
    pub fn wait_for_output(&self, id: &str, text: &str, secs: u64) {
        self.wait_for(&format!("{text:?} in the log"), secs, |s| {
            s.logs
                .get(id)
                .filter(|l| String::from_utf8_lossy(l).contains(text))
                .map(|_| ())
        });
    }

    /// Waits for job `id`'s finish: what the agent sent, and when it arrived.
    pub fn wait_for_finish(&self, id: &str, secs: u64) -> (FinishRequest, Instant) {
        self.wait_for("the finish", secs, |s| s.finish.get(id).cloned())
    }

    pub fn wait_for<T>(&self, what: &str, secs: u64, f: impl Fn(&St) -> Option<T>) -> T {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(&self.st()) {
                return v;
            }
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn respond(conn: &mut TcpStream, code: u16, body: &[u8]) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Conflict",
    };
    write!(
        conn,
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}

pub fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

pub fn handle(mut conn: TcpStream, st: &Mutex<St>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let mut len = 0usize;
    let mut auth = String::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap_or(0),
                "authorization" => auth = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    assert_eq!(method, "POST", "{target}");
    let path = target.strip_prefix(API_PREFIX).unwrap_or(&target);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    if path == "/agents/register" {
        let req: RegisterRequest = serde_json::from_slice(&body).expect("register body");
        assert_eq!(req.registration_token.expose(), "reg-token");
        let mut s = st.lock().expect("st");
        s.registrations += 1;
        let resp = RegisterResponse {
            agent_id: s.agent_id.clone(),
            agent_token: TOKEN.to_owned().into(),
            protocol_version: PROTOCOL_VERSION,
        };
        drop(s);
        return respond(&mut conn, 201, &json(&resp));
    }
    if auth != format!("Bearer {TOKEN}") || st.lock().expect("st").revoked {
        return respond(&mut conn, 401, br#"{"error":"unknown token"}"#);
    }
    if path == "/jobs/claim" {
        let req: ClaimRequest = serde_json::from_slice(&body).expect("claim body");
        let job = {
            let mut s = st.lock().expect("st");
            s.claims += 1;
            s.last_claim = Some(req);
            if s.queue.is_empty() {
                None
            } else {
                Some(s.queue.remove(0))
            }
        };
        return match job {
            Some(job) => respond(
                &mut conn,
                200,
                &json(&ClaimResponse {
                    job,
                    lease_secs: 30,
                }),
            ),
            None => {
                std::thread::sleep(Duration::from_millis(300));
                respond(&mut conn, 204, b"")
            }
        };
    }
    if path == "/agents/heartbeat" {
        let hb: Heartbeat = serde_json::from_slice(&body).expect("heartbeat body");
        let mut s = st.lock().expect("st");
        let cancel: Vec<String> = hb
            .running
            .iter()
            .map(|r| r.job_id.clone())
            .filter(|id| s.cancel.contains(id))
            .collect();
        for id in &cancel {
            s.cancel_sent.entry(id.clone()).or_insert_with(Instant::now);
        }
        s.heartbeats.push(hb);
        drop(s);
        return respond(
            &mut conn,
            200,
            &json(&HeartbeatResponse {
                cancel,
                unknown: Vec::new(),
                lease_secs: 30,
            }),
        );
    }
    let rest = path.strip_prefix("/jobs/").unwrap_or("");
    let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = st.lock().expect("st");
    match what {
        "log" => {
            let offset: u64 = query
                .strip_prefix("offset=")
                .and_then(|o| o.parse().ok())
                .expect("offset");
            let log = s.logs.entry(id.to_owned()).or_default();
            if offset != log.len() as u64 {
                let ack = LogAck {
                    offset: log.len() as u64,
                };
                drop(s);
                return respond(&mut conn, 409, &json(&ack));
            }
            assert!(body.len() <= MAX_LOG_CHUNK);
            log.extend_from_slice(&body);
            let ack = LogAck {
                offset: log.len() as u64,
            };
            drop(s);
            respond(&mut conn, 200, &json(&ack))
        }
        "events" => {
            let batch: EventBatch = serde_json::from_slice(&body).expect("events body");
            let evs = s.events.entry(id.to_owned()).or_default();
            if batch.first_seq != evs.len() as u64 {
                let ack = EventAck {
                    next_seq: evs.len() as u64,
                };
                drop(s);
                return respond(&mut conn, 409, &json(&ack));
            }
            evs.extend(batch.events);
            let ack = EventAck {
                next_seq: evs.len() as u64,
            };
            drop(s);
            respond(&mut conn, 200, &json(&ack))
        }
        "finish" => {
            let fin: FinishRequest = serde_json::from_slice(&body).expect("finish body");
            let have = s.logs.get(id).map_or(0, |l| l.len() as u64);
            if fin.log_bytes != have {
                drop(s);
                return respond(&mut conn, 409, &json(&LogAck { offset: have }));
            }
            s.finish.insert(id.to_owned(), (fin, Instant::now()));
            drop(s);
            respond(&mut conn, 200, b"{}")
        }
        _ => {
            drop(s);
            respond(&mut conn, 404, br#"{"error":"no such endpoint"}"#)
        }
    }
}

pub struct AgentProc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub agent_id: String,
}

impl AgentProc {
    /// SIGKILL the agent (a crash) and start a new one on the same directories.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), "agent2.log", &[]);
    }

    pub fn spawn(d: &std::path::Path, log: &str, env: &[(&str, &str)]) -> Child {
        let log = d.join(log);
        std::fs::File::create(&log).expect("log");
        let mut env = env.to_vec();
        env.push(("BOSUN_LOG", "info,bosun=debug"));
        crate::harness::spawn_agent(&d.join("agent.toml"), &log, &env)
    }

    pub fn start(fake: &Fake, agent_id: &str) -> AgentProc {
        Self::start_env(fake, agent_id, &[])
    }

    pub fn start_env(fake: &Fake, agent_id: &str, env: &[(&str, &str)]) -> AgentProc {
        let dir = tempfile::Builder::new()
            .prefix("bosun-agent-test-")
            .tempdir()
            .expect("tmp");
        let d = dir.path();
        std::fs::write(d.join("reg"), "reg-token\n").expect("reg");
        let cfg = format!(
            r#"coordinator_url = "http://127.0.0.1:{port}"
registration_token_file = "{d}/reg"
state_dir = "{d}/state"
spool_dir = "{d}/spool"
store_dir = "{d}/store"
work_dir = "{d}/work"
concurrency = 1
heartbeat_secs = 1
claim_wait_secs = 1
kill_grace_secs = 1
"#,
            port = fake.port,
            d = d.display()
        );
        std::fs::write(d.join("agent.toml"), cfg).expect("cfg");
        let child = Self::spawn(d, "agent.log", env);
        AgentProc {
            child,
            dir,
            agent_id: agent_id.to_owned(),
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        for f in ["agent.log", "agent2.log"] {
            text.push_str(&std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default());
        }
        text
    }

    pub fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < until,
                "the agent did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `sig` to the agent process.
    pub fn signal(&self, sig: i32) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::harness::cleanup_killed_agent(&self.agent_id);
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

/// A project whose one job, `build`, runs `command` as its one step (named `name`) on the
/// base image.
pub fn one_step(name: &str, command: &str) -> Project {
    crate::harness::ensure_images();
    Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: {name}
          command: {command}
"#,
        img = crate::harness::image("base")
    ))
}

pub fn head(p: &Project) -> String {
    crate::harness::run(crate::harness::git_in(p.path()).args(["rev-parse", "HEAD"]))
        .trim()
        .to_owned()
}

pub fn wire_job(p: &Project, env: Vec<WireEnv>) -> WireJob {
    WireJob {
        id: p.job_id.clone(),
        project: WireProject {
            uuid: "{00000000-0000-0000-0000-000000000001}".into(),
            slug: "acme/widget".into(),
            clone_url: p.path().display().to_string(),
        },
        commit_sha: head(p),
        branch: Some("main".into()),
        tag: None,
        pull_request: None,
        job_name: "build".into(),
        pipeline_number: 7,
        keys: Vec::new(),
        known_hosts: Vec::new(),
        env,
        timeouts: WireTimeouts::default(),
        attempt: 1,
        previous_build_num: None,
        username: None,
        ssh_keys: Vec::new(),
        // A v1 coordinator: the agent keeps its store locally.
        store: None,
        pipeline: None,
        context_ids: Vec::new(),
    }
}

pub const SECRET: &str = "s3cr3t-value-42";
