//! The agent and the coordinator over HTTPS (issue 12 item 11): the coordinator serves TLS
//! itself with `--tls-cert/--tls-key`, an agent trusting its CA through `ca_file` registers,
//! one that does not trust it never does, and plain `http://` to another host is refused
//! before anything is sent.

mod harness;

use harness::{bosun_bin, coordinator_cli, spawn_coordinator, TestCa};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `bosun agent` with `coordinator_url = URL` and the extra config lines `extra`, its log in
/// `dir/agent.log`.
fn agent(dir: &Path, url: &str, token: &str, extra: &str) -> Child {
    std::fs::create_dir_all(dir).expect("agent dir");
    std::fs::write(dir.join("reg"), token).expect("reg");
    let d = dir.display();
    std::fs::write(
        dir.join("agent.toml"),
        format!(
            "coordinator_url = \"{url}\"\nregistration_token_file = \"{d}/reg\"\nname = \"tls-agent\"\n\
             state_dir = \"{d}/state\"\nspool_dir = \"{d}/spool\"\nstore_dir = \"{d}/store\"\n\
             work_dir = \"{d}/work\"\nclaim_wait_secs = 1\n{extra}\n"
        ),
    )
    .expect("agent.toml");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    Command::new(bosun_bin())
        .args(["agent", "--config"])
        .arg(dir.join("agent.toml"))
        .env("BOSUN_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent")
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_agent_trusting_the_coordinators_ca_registers_over_https_and_one_that_does_not_never_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(&dir.path().join("tls"), &["localhost", "127.0.0.1"]);
    let data = dir.path().join("coordinator");
    let token = coordinator_cli(&data, &["token"]);
    let (child, addr) = spawn_coordinator(
        &data,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            ca.cert.to_str().expect("utf8"),
            "--tls-key",
            ca.key.to_str().expect("utf8"),
        ],
    );
    let _coordinator = Killed(child);
    let port = addr.rsplit(':').next().expect("port");
    let url = format!("https://localhost:{port}");

    // Without the CA: the handshake fails, the agent keeps retrying and never registers.
    let untrusting_dir = dir.path().join("untrusting");
    let _untrusting = Killed(agent(&untrusting_dir, &url, &token, ""));
    let trusting_dir = dir.path().join("trusting");
    let ca_line = format!("ca_file = {:?}", ca.ca_cert);
    let _trusting = Killed(agent(&trusting_dir, &url, &token, &ca_line));

    let t0 = Instant::now();
    while !coordinator_cli(&data, &["agents"]).contains("tls-agent") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the agent with ca_file did not register over HTTPS:\n{}",
            log(&trusting_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(trusting_dir.join("state/agent.json").exists());
    let t0 = Instant::now();
    while !log(&untrusting_dir).contains("register:") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{}",
            log(&untrusting_dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let agents = coordinator_cli(&data, &["agents"]);
    assert_eq!(agents.lines().count(), 1, "{agents}");
    assert!(
        !untrusting_dir.join("state/agent.json").exists(),
        "{}",
        log(&untrusting_dir)
    );
    assert!(
        log(&untrusting_dir).to_lowercase().contains("certificate"),
        "{}",
        log(&untrusting_dir)
    );
}

#[test]
fn plain_http_to_another_host_is_refused_at_start_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let mut child = agent(&a, "http://coordinator.example.com:8080", "t", "");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(100));
    };
    // 78: EX_CONFIG, which the unit does not restart.
    assert_eq!(status.code(), Some(78), "{}", log(&a));
    assert!(log(&a).contains("allow_insecure_http"), "{}", log(&a));
}
