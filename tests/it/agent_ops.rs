//! `bosun agent` as an operator drives it, against the fake coordinator of
//! `tests/it/agent_rig/`: a second SIGTERM cancels and sd_notify tells systemd, SIGHUP reloads
//! concurrency and labels, metrics and health on the agent's local address, the heap given
//! back once idle.

use crate::harness;

use crate::agent_rig::*;

use crate::harness::{ensure_images, free_port, http_get, image, Project};
use bosun::protocol::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[test]
fn second_sigterm_cancels_and_sd_notify_tells_systemd() {
    let p = one_step("long", "echo running; sleep 300");
    let (fake, agent_id) = Fake::with_job(&p);
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
    fake.wait_for_output(&id, "running", 120);
    agent.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "drain waits"
    );
    agent.signal(libc::SIGTERM);
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
    agent.signal(libc::SIGHUP);
    fake.wait_for("a claim with the new config", 30, |s| {
        s.last_claim
            .as_ref()
            .filter(|c| c.capacity == 3 && c.labels == vec!["big".to_owned()])
            .map(|_| ())
    });
    assert!(agent.log().contains("config reloaded"), "{}", agent.log());
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
    let listen = format!("127.0.0.1:{}", free_port());
    let _agent = AgentProc::start_env(&fake, &agent_id, &[("BOSUN_METRICS_LISTEN", &listen)]);
    for job in [&ok, &missing] {
        fake.wait_for_finish(&job.id, 120);
    }
    assert_eq!(http_get(&listen, "/healthz").status(), 200);
    assert_eq!(http_get(&listen, "/readyz").status(), 200);
    let (code, m) = http_get(&listen, "/metrics").status_and_body();
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

/// Operators: an agent gone idle after a job gives the heap its log buffers used back to the
/// kernel (glibc keeps freed arena pages otherwise), once after the job, and not again at
/// every heartbeat of an idle agent.
#[test]
fn an_agent_gone_idle_after_a_job_gives_its_freed_heap_back() {
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - run: head -c 20000000 /dev/zero | tr '\\\\0' x\n",
        img = image("base")
    ));
    let agent_id = format!("agent-{}", p.job_id);
    let fake = Fake::start(&agent_id);
    let job = wire_job(&p, Vec::new());
    fake.st().queue.push(job.clone());
    let agent = AgentProc::start(&fake, &agent_id);
    const TRIMMED: &str = "gave the idle heap back";
    let (finish, _) = fake.wait_for_finish(&job.id, 120);
    assert_eq!(finish.status, FinalStatus::Success, "{}", agent.log());
    // Heartbeats come every second (agent_rig): the trim follows the first idle one.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !agent.log().contains(TRIMMED) {
        assert!(
            std::time::Instant::now() < deadline,
            "no trim after the job:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = agent.log();
    let (before, after) = log
        .lines()
        .find_map(|l| {
            let rest = l.split_once(TRIMMED)?.1;
            let (b, a) = rest.split_once(" kB -> ")?;
            let b = b.rsplit(' ').next()?.parse::<u64>().ok()?;
            let a = a.split(' ').next()?.parse::<u64>().ok()?;
            Some((b, a))
        })
        .unwrap_or_else(|| panic!("no figures in the trim line:\n{log}"));
    assert!(
        after <= before,
        "RssAnon grew when trimmed: {before} -> {after} kB"
    );
    // Idle heartbeats (one a second) do not trim again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.log().matches(TRIMMED).count(), 1, "{}", agent.log());
}
