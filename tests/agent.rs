//! `bosun agent` against a fake coordinator written here (std TcpListener, HTTP/1.1, one
//! request per connection) that speaks protocol v1 from `src/protocol.rs`: the log arrives
//! byte for byte and masked, step events carry offsets, the final status arrives — also
//! across a coordinator outage; a cancel in a heartbeat ends the job; SIGTERM drains.

mod harness;

use bosun::protocol::*;
use harness::{ensure_images, image, Project};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "agent-token-for-tests";

#[derive(Default)]
struct St {
    agent_id: String,
    queue: Vec<WireJob>,
    logs: HashMap<String, Vec<u8>>,
    events: HashMap<String, Vec<JobEvent>>,
    finish: HashMap<String, (FinishRequest, Instant)>,
    cancel: HashSet<String>,
    cancel_sent: HashMap<String, Instant>,
    heartbeats: Vec<Heartbeat>,
    claims: usize,
    last_claim: Option<ClaimRequest>,
    registrations: usize,
    /// Every call with the agent token answers 401.
    revoked: bool,
}

struct Fake {
    port: u16,
    st: Arc<Mutex<St>>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Fake {
    fn start(agent_id: &str) -> Fake {
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

    fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().expect("state")
    }

    fn wait_for<T>(&self, what: &str, secs: u64, f: impl Fn(&St) -> Option<T>) -> T {
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

fn respond(conn: &mut TcpStream, code: u16, body: &[u8]) -> std::io::Result<()> {
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

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn handle(mut conn: TcpStream, st: &Mutex<St>) -> std::io::Result<()> {
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
        assert_eq!(req.registration_token, "reg-token");
        let mut s = st.lock().expect("st");
        s.registrations += 1;
        let resp = RegisterResponse {
            agent_id: s.agent_id.clone(),
            agent_token: TOKEN.to_owned(),
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

struct AgentProc {
    child: Child,
    dir: tempfile::TempDir,
    agent_id: String,
}

impl AgentProc {
    /// SIGKILL the agent (a crash) and start a new one on the same directories.
    fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), "agent2.log", &[]);
    }

    fn spawn(d: &std::path::Path, log: &str, env: &[(&str, &str)]) -> Child {
        let log = std::fs::File::create(d.join(log)).expect("log");
        let mut c = Command::new(harness::bosun_bin());
        c.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM");
        c.envs(env.iter().copied())
            .args(["agent", "--config"])
            .arg(d.join("agent.toml"))
            .env("BOSUN_LOG", "info,bosun=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent")
    }

    fn start(fake: &Fake, agent_id: &str) -> AgentProc {
        Self::start_env(fake, agent_id, &[])
    }

    fn start_env(fake: &Fake, agent_id: &str, env: &[(&str, &str)]) -> AgentProc {
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

    fn log(&self) -> String {
        let mut text = String::new();
        for f in ["agent.log", "agent2.log"] {
            text.push_str(&std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default());
        }
        text
    }

    fn wait_exit(&mut self, secs: u64) -> std::process::ExitStatus {
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

    fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        harness::cleanup_label("bosun.agent", &self.agent_id);
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
    }
}

fn head(p: &Project) -> String {
    harness::run(harness::git_in(p.path()).args(["rev-parse", "HEAD"]))
        .trim()
        .to_owned()
}

fn wire_job(p: &Project, env: Vec<WireEnv>) -> WireJob {
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
    }
}

const SECRET: &str = "s3cr3t-value-42";

#[test]
fn log_events_and_status_arrive_masked_and_complete_across_a_coordinator_outage() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: secret
          command: |
            echo "token=$API_TOKEN greeting=$GREETING"
            printf 's3cr3t-'; sleep 0.3; printf 'value-42 split\n'
      - run:
          name: long output
          command: for i in $(seq 1 40); do echo "line $i of the long step xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"; sleep 0.2; done
      - run: echo done-marker
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(
        &p,
        vec![
            WireEnv {
                name: "API_TOKEN".into(),
                value: SECRET.into(),
                secret: true,
            },
            WireEnv {
                name: "GREETING".into(),
                value: "hello".into(),
                secret: false,
            },
        ],
    ));
    let agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();

    // Take the coordinator down while the long step runs.
    fake.wait_for("the long step's output", 120, |s| {
        s.logs
            .get(&id)
            .filter(|l| String::from_utf8_lossy(l).contains("line 3 of"))
            .map(|_| ())
    });
    fake.down.store(true, Ordering::SeqCst);
    let went_down = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let before_up = fake.st().logs.get(&id).map_or(0, Vec::len);
    fake.down.store(false, Ordering::SeqCst);

    let fin = fake.wait_for("the finish", 120, |s| {
        s.finish.get(&id).map(|f| f.0.clone())
    });
    let s = fake.st();
    let log = s.logs.get(&id).cloned().unwrap_or_default();
    let text = String::from_utf8_lossy(&log).into_owned();
    assert!(went_down.elapsed() > Duration::from_secs(4));
    assert!(log.len() > before_up, "the log grew after the outage");
    assert_eq!(fin.status, FinalStatus::Success, "{text}");
    assert_eq!(fin.log_bytes, log.len() as u64);
    assert_eq!(fin.log_sha256, digest(&log), "byte for byte");
    assert!(text.contains("token=******** greeting=hello"), "{text}");
    assert!(text.contains("******** split"), "{text}");
    assert!(
        !text.contains("s3cr3t") && !text.contains("value-42"),
        "{text}"
    );
    let mut last = 0;
    for i in 1..=40 {
        let at = text
            .find(&format!("line {i} of the long step"))
            .unwrap_or_else(|| panic!("line {i} missing:\n{text}"));
        assert!(at > last, "line {i} out of order");
        last = at;
    }
    assert!(text.contains("done-marker"));

    let events = s.events.get(&id).cloned().unwrap_or_default();
    let starts: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepStarted {
                step, log_offset, ..
            } => Some((*step, *log_offset)),
            _ => None,
        })
        .collect();
    let ends: Vec<(u32, bosun::protocol::StepStatus, u64)> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepFinished {
                step,
                status,
                log_offset,
                ..
            } => Some((*step, *status, *log_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.len(), 3, "{events:?}");
    assert_eq!(ends.len(), 3, "{events:?}");
    // The commit the agent checked out rides on the first step start, once.
    let shas: Vec<Option<String>> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::StepStarted { commit_sha, .. } => Some(commit_sha.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(shas, [Some(head(&p)), None, None], "{events:?}");
    for (i, ((step, start), (estep, status, end))) in starts.iter().zip(&ends).enumerate() {
        assert_eq!((*step as usize, *estep as usize), (i, i));
        assert_eq!(*status, bosun::protocol::StepStatus::Success);
        let at = usize::try_from(*start).expect("offset");
        assert!(
            log[at..].starts_with(format!("\n==> Step {}", i + 1).as_bytes()),
            "step {i} offset {at}: {:?}",
            String::from_utf8_lossy(&log[at..(at + 40).min(log.len())])
        );
        assert!(end > start);
    }
    let secret_end = usize::try_from(ends[0].2).expect("offset");
    assert!(String::from_utf8_lossy(&log[..secret_end]).contains("******** split"));
    assert!(s
        .heartbeats
        .iter()
        .any(|h| h.running.iter().any(|r| r.job_id == id)));
    assert_eq!(s.registrations, 1);
    drop(s);
    // The spool is gone once the coordinator acknowledged the finish.
    let until = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(agent.spool()).map_or(0, |d| d.count()) > 0 {
        assert!(Instant::now() < until, "spool not cleaned");
        std::thread::sleep(Duration::from_millis(100));
    }
    let alog = agent.log();
    assert!(alog.contains("registered"), "{alog}");
    // The outage was seen (connection refused) and ridden out with retries.
    assert!(alog.contains("retrying in"), "{alog}");
    p.assert_no_container_left();
}

#[test]
fn a_cancel_in_a_heartbeat_ends_the_job_canceled_within_5s() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: wait forever
          command: echo sleeping; sleep 300
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let _agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for("the step to run", 120, |s| {
        s.heartbeats
            .iter()
            .any(|h| {
                h.running
                    .iter()
                    .any(|r| r.job_id == id && r.state.starts_with("step 1/1"))
            })
            .then_some(())
    });
    fake.st().cancel.insert(id.clone());
    let (fin, at) = fake.wait_for("the finish", 60, |s| s.finish.get(&id).cloned());
    let sent = fake
        .st()
        .cancel_sent
        .get(&id)
        .copied()
        .expect("cancel sent");
    assert_eq!(fin.status, FinalStatus::Canceled);
    let took = at.duration_since(sent);
    eprintln!("cancel → finish: {took:?}");
    assert!(took <= Duration::from_secs(5), "took {took:?}");
    p.assert_no_container_left();
}

#[test]
fn sigterm_drains_the_running_job_then_exits_0() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: slow
          command: echo started; sleep 4; echo drained-ok
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for("the step to start", 120, |s| {
        s.logs
            .get(&id)
            .filter(|l| String::from_utf8_lossy(l).contains("started"))
            .map(|_| ())
    });
    let pid = i32::try_from(agent.child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let claims_at_term = fake.st().claims;
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "the agent exited before its job finished"
    );
    let status = agent.wait_exit(60);
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let s = fake.st();
    let (fin, _) = s
        .finish
        .get(&id)
        .cloned()
        .expect("finish delivered before exit");
    assert_eq!(fin.status, FinalStatus::Success);
    let text = String::from_utf8_lossy(&s.logs[&id]).into_owned();
    assert!(text.contains("drained-ok"), "{text}");
    assert!(s.claims <= claims_at_term + 1, "claimed after SIGTERM");
    assert!(
        s.heartbeats.iter().any(|h| h.draining),
        "a heartbeat said draining"
    );
    drop(s);
    assert_eq!(std::fs::read_dir(agent.spool()).map_or(0, |d| d.count()), 0);
    p.assert_no_container_left();
}

fn digest(log: &[u8]) -> String {
    Sha256::digest(log)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn after_a_crash_the_restarted_agent_removes_the_orphan_and_reports_the_job() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: long
          command: echo before-crash; sleep 300
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    fake.wait_for("the step's output", 120, |s| {
        s.logs
            .get(&id)
            .filter(|l| String::from_utf8_lossy(l).contains("before-crash"))
            .map(|_| ())
    });
    agent.crash_and_restart();
    assert_eq!(p.containers().len(), 1, "the crash left the container");
    let (fin, _) = fake.wait_for("the finish", 60, |s| s.finish.get(&id).cloned());
    let s = fake.st();
    let log = s.logs[&id].clone();
    let text = String::from_utf8_lossy(&log).into_owned();
    assert_eq!(fin.status, FinalStatus::InfrastructureFail, "{text}");
    assert!(text.contains("before-crash"), "{text}");
    assert!(
        text.contains("the agent stopped while this job ran"),
        "{text}"
    );
    assert_eq!(fin.log_sha256, digest(&log));
    assert_eq!(s.registrations, 1, "the stored agent token was reused");
    drop(s);
    p.assert_no_container_left();
    let mode = std::fs::metadata(agent.dir.path().join("state/agent.json"))
        .expect("agent.json")
        .permissions();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.mode() & 0o777, 0o600);
}

/// A job's engine objects (a running container, a volume, a network, a built image) made
/// through its `setup_remote_docker` engine: an agent SIGKILLed while the job runs leaves them,
/// and the restarted agent's sweep removes every one.
#[test]
fn after_a_crash_the_restarted_agent_removes_the_jobs_engine_objects() {
    ensure_images();
    let base = image("base");
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
        user: circleci
    steps:
      - setup_remote_docker
      - run:
          name: make things, then wait
          command: |
            docker volume create vol1 && docker network create net1
            printf 'FROM {base}\nRUN true\n' | docker build -q -t made-by-job -
            docker run -d -v vol1:/v --network net1 made-by-job sleep 300
            echo engine-objects-made
            sleep 300
"#,
        img = image("docker")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let mut agent = AgentProc::start(&fake, &agent_id);
    let id = p.job_id.clone();
    let made = fake.wait_for("the objects made, or the job's end", 180, |s| {
        let log = String::from_utf8_lossy(s.logs.get(&id)?).into_owned();
        (log.contains("engine-objects-made") || s.finish.contains_key(&id))
            .then(|| (log.contains("engine-objects-made"), log))
    });
    assert!(
        made.0,
        "the job ended before making its objects:\n{}",
        made.1
    );
    let labelled = || {
        let f = format!("label=bosun.job={id}");
        let mut all = Vec::new();
        for args in [
            ["ps", "-aq"],
            ["volume", "ls"],
            ["network", "ls"],
            ["images", "-aq"],
        ] {
            let mut a: Vec<&str> = args.to_vec();
            if args[0] == "volume" || args[0] == "network" {
                a.push("-q");
            }
            a.extend(["--filter", &f]);
            all.extend(
                harness::docker(&a)
                    .split_whitespace()
                    .map(|s| format!("{} {s}", args[0])),
            );
        }
        all
    };
    let before = labelled();
    for kind in ["ps", "volume", "network", "images"] {
        assert!(
            before.iter().any(|o| o.starts_with(kind)),
            "the job made a {kind} object through its engine: {before:?}"
        );
    }
    agent.crash_and_restart();
    let (fin, _) = fake.wait_for("the finish", 60, |s| s.finish.get(&id).cloned());
    assert_eq!(fin.status, FinalStatus::InfrastructureFail);
    // The sweep runs at start-up, before the restarted agent reports the lost job.
    assert!(
        labelled().is_empty(),
        "left after the sweep: {:?}",
        labelled()
    );
    p.assert_no_container_left();
}

#[test]
fn bad_config_and_unreachable_repository_finish_as_infrastructure_fail() {
    let p = Project::new(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: nope\n    steps: [checkout]\n",
    );
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let mut no_job = wire_job(&p, Vec::new());
    no_job.id = format!("{}-nojob", p.job_id);
    no_job.job_name = "deploy".into();
    let mut no_repo = wire_job(&p, Vec::new());
    no_repo.id = format!("{}-norepo", p.job_id);
    no_repo.project.clone_url = "/nonexistent/bosun/repo".into();
    fake.st().queue.extend([no_job.clone(), no_repo.clone()]);
    let _agent = AgentProc::start(&fake, &agent_id);
    for (job, words) in [(&no_job, "deploy"), (&no_repo, "/nonexistent/bosun/repo")] {
        let (fin, _) = fake.wait_for("the finish", 60, |s| s.finish.get(&job.id).cloned());
        let text = String::from_utf8_lossy(&fake.st().logs[&job.id]).into_owned();
        assert_eq!(fin.status, FinalStatus::InfrastructureFail, "{text}");
        let err = fin.error.clone().unwrap_or_default();
        assert!(err.contains(words), "{err}");
        assert!(text.contains(words), "{text}");
    }
}

#[test]
fn a_revoked_token_stops_the_agent_with_a_clear_message() {
    let agent_id = format!("agent-{}", harness::new_run_id());
    let fake = Fake::start(&agent_id);
    let mut agent = AgentProc::start(&fake, &agent_id);
    fake.wait_for("a claim", 30, |s| (s.claims > 0).then_some(()));
    fake.st().revoked = true;
    let status = agent.wait_exit(30);
    assert_eq!(status.code(), Some(78));
    assert!(
        agent.log().contains("agent token revoked"),
        "{}",
        agent.log()
    );
}

fn signal(agent: &AgentProc, sig: i32) {
    let pid = i32::try_from(agent.child.id()).expect("pid");
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn second_sigterm_cancels_and_sd_notify_tells_systemd() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  build:
    docker:
      - image: {img}
    steps:
      - run:
          name: long
          command: echo running; sleep 300
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    fake.st().queue.push(wire_job(&p, Vec::new()));
    let sock_dir = tempfile::tempdir().expect("tmp");
    let sock_path = sock_dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let messages = Arc::new(Mutex::new(Vec::<String>::new()));
    let (m, stop) = (Arc::clone(&messages), Arc::new(AtomicBool::new(false)));
    let stop2 = Arc::clone(&stop);
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop2.load(Ordering::SeqCst) {
            if let Ok(n) = sock.recv(&mut buf) {
                m.lock()
                    .expect("m")
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    });
    let sock_str = sock_path.display().to_string();
    let mut agent = AgentProc::start_env(
        &fake,
        &agent_id,
        &[("NOTIFY_SOCKET", &sock_str), ("WATCHDOG_USEC", "1000000")],
    );
    let id = p.job_id.clone();
    fake.wait_for("the step's output", 120, |s| {
        s.logs
            .get(&id)
            .filter(|l| String::from_utf8_lossy(l).contains("running"))
            .map(|_| ())
    });
    signal(&agent, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "drain waits"
    );
    signal(&agent, libc::SIGTERM);
    let status = agent.wait_exit(30);
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    let (fin, _) = fake
        .st()
        .finish
        .get(&id)
        .cloned()
        .expect("finish delivered");
    assert_eq!(fin.status, FinalStatus::Canceled);
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("reader");
    let msgs = messages.lock().expect("m").clone();
    let pos = |want: &str| {
        msgs.iter()
            .position(|m| m.lines().any(|l| l.starts_with(want)))
    };
    let ready = pos("READY=1").unwrap_or_else(|| panic!("{msgs:?}"));
    let stopping = pos("STOPPING=1").unwrap_or_else(|| panic!("{msgs:?}"));
    assert!(ready < stopping, "{msgs:?}");
    assert!(pos("WATCHDOG=1").is_some(), "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.contains("STATUS=1 job(s) running")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("STATUS=draining")),
        "{msgs:?}"
    );
    p.assert_no_container_left();
}

#[test]
fn sighup_reloads_concurrency_and_labels() {
    let agent_id = format!("agent-{}", harness::new_run_id());
    let fake = Fake::start(&agent_id);
    let agent = AgentProc::start(&fake, &agent_id);
    fake.wait_for("a claim", 30, |s| s.last_claim.clone());
    let first = fake.st().last_claim.clone().expect("claim");
    assert_eq!((first.capacity, first.labels.len()), (1, 0));
    let cfg_path = agent.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&cfg_path).expect("cfg");
    let text = text.replace("concurrency = 1", "concurrency = 3\nlabels = [\"big\"]");
    std::fs::write(&cfg_path, text).expect("cfg");
    signal(&agent, libc::SIGHUP);
    fake.wait_for("a claim with the new config", 30, |s| {
        s.last_claim
            .as_ref()
            .filter(|c| c.capacity == 3 && c.labels == vec!["big".to_owned()])
            .map(|_| ())
    });
    assert!(agent.log().contains("config reloaded"), "{}", agent.log());
}

/// Issue 12 item 2: caches are the project's own (by repository UUID), and a build of a
/// pull request from a fork reads the project's caches but never writes them.
#[test]
fn caches_are_per_project_and_a_forked_pull_request_never_writes_the_projects_caches() {
    ensure_images();
    let p = Project::new(&format!(
        r#"version: 2.1
jobs:
  save:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - run: mkdir -p ~/deps && echo "$WHO" > ~/deps/who
      - save_cache: {{key: deps-v1, paths: [~/deps]}}
  check:
    docker: [{{image: {img}, user: circleci}}]
    steps:
      - restore_cache: {{keys: [deps-v1]}}
      - run: echo "who=$(cat ~/deps/who 2>/dev/null || echo none)"
"#,
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let job = |n: u32, name: &str, uuid: &str, fork_pr: Option<u64>, who: &str| {
        let mut j = wire_job(
            &p,
            vec![WireEnv {
                name: "WHO".into(),
                value: who.into(),
                secret: false,
            }],
        );
        j.id = format!("{}-{n}", p.job_id);
        j.job_name = name.into();
        j.project.uuid = uuid.into();
        j.pull_request = fork_pr.map(|number| WirePullRequest {
            number,
            url: format!("https://bitbucket.org/acme/widget/pull-requests/{number}"),
            fork: true,
        });
        j
    };
    let widget = "{00000000-0000-0000-0000-00000000000a}";
    let other = "{00000000-0000-0000-0000-00000000000b}";
    let jobs = [
        job(1, "save", widget, Some(5), "fork"),
        job(2, "check", widget, None, ""),
        job(3, "save", widget, None, "base"),
        job(4, "check", widget, Some(5), ""),
        job(5, "check", other, None, ""),
    ];
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    fake.st().queue.extend(jobs);
    let _agent = AgentProc::start(&fake, &agent_id);
    let logs: Vec<String> = ids
        .iter()
        .map(|id| {
            fake.wait_for(id, 120, |s| {
                s.finish
                    .get(id)
                    .map(|_| String::from_utf8_lossy(&s.logs[id]).into_owned())
            })
        })
        .collect();
    // The fork's save did not reach the project's caches…
    assert!(logs[1].contains("who=none"), "{}", logs[1]);
    // …the fork reads the project's cache (the newest match)…
    assert!(logs[3].contains("who=base"), "{}", logs[3]);
    // …and another project sees neither.
    assert!(logs[4].contains("who=none"), "{}", logs[4]);
}

/// A plain HTTP GET on loopback: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, body.to_owned())
}

/// Operators: the agent's `/metrics`, `/healthz` and `/readyz` on `metrics_listen` — jobs by
/// final status, step durations, claim latency, engine errors, running jobs and spool bytes.
#[test]
fn the_agent_serves_metrics_and_health_on_its_local_address() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: echo one\n      - run: echo two\n  missing:\n    docker: [{{image: bosun-test/no-such-image:none}}]\n    steps:\n      - run: echo never\n",
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let ok = wire_job(&p, Vec::new());
    let mut missing = wire_job(&p, Vec::new());
    missing.id = format!("{}-missing", p.job_id);
    missing.job_name = "missing".into();
    fake.st().queue.extend([ok.clone(), missing.clone()]);
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let _agent = AgentProc::start_env(&fake, &agent_id, &[("BOSUN_METRICS_LISTEN", &listen)]);
    for job in [&ok, &missing] {
        fake.wait_for("the finish", 120, |s| s.finish.get(&job.id).cloned());
    }
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert_eq!(http_get(port, "/readyz").0, 200);
    let (code, m) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    assert_eq!(
        value("bosun_agent_jobs_finished_total{status=\"success\"}"),
        1.0
    );
    assert_eq!(
        value("bosun_agent_jobs_finished_total{status=\"infrastructure_fail\"}"),
        1.0
    );
    assert!(value("bosun_agent_engine_errors_total{kind=\"image_missing\"}") >= 1.0);
    assert!(value("bosun_agent_step_duration_seconds_count") >= 2.0);
    assert_eq!(value("bosun_agent_claim_latency_seconds_count"), 2.0);
    assert_eq!(value("bosun_agent_jobs_running"), 0.0);
    assert!(value("bosun_agent_spool_bytes_pending") >= 0.0);
}
