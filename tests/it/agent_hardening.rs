//! The agent's side of issue 12's hardening, as a real process: over HTTPS (item 11) the
//! coordinator serves TLS itself with `--tls-cert/--tls-key`, an agent trusting its CA through
//! `ca_file` registers, one that does not trust it never does, and plain `http://` to another
//! host is refused before anything is sent; its directories are private (item 14).

use crate::harness::{coordinator_cli, spawn_agent, spawn_coordinator, KillOnDrop, TestCa};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// `bosun agent` with `coordinator_url = URL` and the extra config lines `extra`, its log in
/// `dir/agent.log`.
fn agent(dir: &Path, url: &str, token: &str, extra: &str) -> Child {
    agent_env(dir, url, token, extra, &[])
}

/// [`agent`] with environment overrides (`BOSUN_<KEY>`).
fn agent_env(dir: &Path, url: &str, token: &str, extra: &str, env: &[(&str, &Path)]) -> Child {
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
    let log = dir.join("agent.log");
    std::fs::File::create(&log).expect("log");
    let mut vars = vec![("BOSUN_LOG", "info")];
    vars.extend(
        env.iter()
            .map(|(k, v)| (*k, v.to_str().expect("utf-8 path"))),
    );
    spawn_agent(&dir.join("agent.toml"), &log, &vars)
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
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
    let _coordinator = KillOnDrop(child);
    let port = addr.rsplit(':').next().expect("port");
    let url = format!("https://localhost:{port}");

    // Without the CA: the handshake fails, the agent keeps retrying and never registers.
    let untrusting_dir = dir.path().join("untrusting");
    let _untrusting = KillOnDrop(agent(&untrusting_dir, &url, &token, ""));
    let trusting_dir = dir.path().join("trusting");
    let ca_line = format!("ca_file = {:?}", ca.ca_cert);
    let _trusting = KillOnDrop(agent(&trusting_dir, &url, &token, &ca_line));

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

#[test]
fn the_agents_directories_are_made_private_and_loose_ones_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    // Left loose by an earlier install or by hand.
    for d in ["spool", "store"] {
        std::fs::create_dir_all(a.join(d)).expect("mkdir");
        std::fs::set_permissions(a.join(d), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // Nothing listens on port 9: the agent makes its directories, then retries registering.
    let _agent = KillOnDrop(agent(&a, "http://127.0.0.1:9", "t", ""));
    let t0 = Instant::now();
    while !log(&a).contains("register:") {
        assert!(t0.elapsed() < Duration::from_secs(20), "{}", log(&a));
        std::thread::sleep(Duration::from_millis(100));
    }
    for d in ["state", "spool", "store", "work"] {
        let mode = std::fs::metadata(a.join(d))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d}: {:o}", mode & 0o777);
    }
}

#[test]
fn a_shared_sticky_directory_is_refused_not_closed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let mut child = agent_env(
        &a,
        "http://127.0.0.1:9",
        "t",
        "",
        &[("BOSUN_WORK_DIR", &shared)],
    );
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(78), "{}", log(&a));
    let mode = std::fs::metadata(&shared)
        .expect("dir")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o7777,
        0o1777,
        "the shared directory was left as it was"
    );
}
