//! `cargo bench --bench agent`: `bosun agent` + `bosun coordinator` against the baselines
//! of issue 4, in one run, on the warm `bosun/base` image.
//!
//! 1. pickup latency: `coordinator enqueue` → the coordinator holds the job's first
//!    `StepStarted` (median of 5), against `bosun execute --json` of the same job in a local
//!    repository → its first `step_started` line (and, for reference, its whole wall time).
//! 2. log throughput: a step printing 200 MiB, from the coordinator holding its
//!    `StepStarted` to the coordinator holding all its bytes, against
//!    `docker exec C sh -c '<same command>' > /dev/null`; target ratio ≥ 0.7. And the agent's
//!    peak RSS (VmHWM) at that point; target ≤ 50 MB.
//! 3. idle agent: VmRSS after 10 s idle (target ≤ 15 MB) and its anonymous part (RssAnon),
//!    fresh and after the jobs above, and requests per minute to the
//!    coordinator over 20 s (counted by a TCP proxy between agent and coordinator),
//!    against what the default heartbeat_secs / claim_wait_secs imply.
//!
//! The agent runs with its default `heartbeat_secs` (5) and `claim_wait_secs` (30).
//! Environment: BOSUN_BENCH_PICKUP_RUNS (default 5), BOSUN_BENCH_LOG_MB (200).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, median, ms, proc_status_kib};
use harness::KillOnDrop;

use bosun::coordinator::store::{parse_job_id, Store};
use bosun::protocol::JobEvent;
use harness::{ensure_images, image, Project, Rig};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(10);

/// User + system CPU seconds a process has used so far (`/proc/PID/stat`, clock ticks).
fn cpu_secs(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

fn start_coordinator(data: &Path) -> (KillOnDrop, String) {
    let (child, addr) = harness::spawn_coordinator(data, "127.0.0.1:0", &[]);
    (KillOnDrop(child), addr)
}

/// A TCP proxy in front of the coordinator: counts connections and HTTP/1.1 requests
/// (request lines in the client → server stream).
struct Proxy {
    addr: String,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
}

fn start_proxy(upstream: &str) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy bind");
    let addr = listener.local_addr().expect("proxy addr").to_string();
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let (conns, reqs, upstream) = (
        Arc::clone(&connections),
        Arc::clone(&requests),
        upstream.to_owned(),
    );
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            conns.fetch_add(1, Ordering::Relaxed);
            let (c2, s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let reqs = Arc::clone(&reqs);
            std::thread::spawn(move || pump(client, server, Some(reqs)));
            std::thread::spawn(move || pump(s2, c2, None));
        }
    });
    Proxy {
        addr,
        connections,
        requests,
    }
}

/// Copy `from` → `to`; if `count` is given, count request lines (`… HTTP/1.1\r\n`).
fn pump(mut from: TcpStream, mut to: TcpStream, count: Option<Arc<AtomicU64>>) {
    const PAT: &[u8] = b" HTTP/1.1\r\n";
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(c) = &count {
            carry.extend_from_slice(&buf[..n]);
            let hits = carry.windows(PAT.len()).filter(|w| *w == PAT).count();
            c.fetch_add(hits as u64, Ordering::Relaxed);
            // Keep fewer bytes than the pattern: a match spanning two reads is counted once.
            let keep = carry.len().min(PAT.len() - 1);
            carry.drain(..carry.len() - keep);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn enqueue(data: &Path, job: &str) -> i64 {
    let id = harness::enqueue_job(data, job, &[]);
    parse_job_id(&id).unwrap_or_else(|| panic!("job id from enqueue: {id}"))
}

/// Poll until the coordinator holds a `StepStarted` for `step` (any step if None); returns
/// its log offset.
fn wait_step_started(store: &Store, id: i64, step: Option<u32>, timeout: Duration) -> u64 {
    let t0 = Instant::now();
    loop {
        let found = store
            .events_from(id, 0)
            .expect("events")
            .into_iter()
            .find_map(|(_, ev)| match ev {
                JobEvent::StepStarted {
                    step: s,
                    log_offset,
                    ..
                } if step.is_none_or(|want| want == s) => Some(log_offset),
                _ => None,
            });
        if let Some(off) = found {
            return off;
        }
        let row = store.job(id).expect("job").expect("row");
        assert!(
            !row.is_final(),
            "job {id} ended `{}` ({:?}) before step {step:?} started",
            row.status,
            row.error
        );
        assert!(t0.elapsed() < timeout, "job {id}: no step started");
        std::thread::sleep(POLL);
    }
}

fn wait_final(store: &Store, id: i64, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let row = store.job(id).expect("job").expect("row");
        if row.is_final() {
            return row.status.to_string();
        }
        assert!(t0.elapsed() < timeout, "job {id} still {}", row.status);
        std::thread::sleep(POLL);
    }
}

/// `bosun execute --json`: time to the first `step_started` line, and the whole wall time.
fn execute_timed(project: &Project) -> (Duration, Duration) {
    let t0 = Instant::now();
    let mut child = project
        .command(&["--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bosun execute");
    let mut first = None;
    for line in BufReader::new(child.stdout.take().expect("stdout")).lines() {
        let Ok(line) = line else { break };
        if first.is_none() && line.contains("\"step_started\"") {
            first = Some(t0.elapsed());
        }
    }
    let st = child.wait().expect("wait");
    let wall = t0.elapsed();
    assert!(st.success(), "bosun execute failed: {st}");
    (first.expect("a step_started event"), wall)
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) skips the run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_num("BOSUN_BENCH_PICKUP_RUNS", 5).max(1);
    let log_mib = env_num("BOSUN_BENCH_LOG_MB", 200);
    let log_bytes = (log_mib as u64) << 20;
    ensure_images();
    let img = image("base");
    let print_cmd = format!("head -c {log_bytes} /dev/zero | tr '\\0' x");
    let build_job = format!(
        "  build:\n    docker: [{{image: {img}}}]\n    steps: [checkout, {{run: 'true'}}]\n"
    );
    let config = format!(
        "version: 2.1\njobs:\n{build_job}  big:\n    docker: [{{image: {img}}}]\n    steps:\n      - checkout\n      - run:\n          name: print\n          command: ({print_cmd}) || true\n"
    );

    // Coordinator, project, and an agent (default heartbeat/claim wait) behind the proxy.
    let rig = Rig::start();
    rig.create_repo("acme/widget");
    let repo = rig.work_repo("acme/widget");
    repo.write(".circleci/config.yml", &config);
    repo.commit("config");
    repo.push("HEAD:refs/heads/main");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let (coordinator, addr) = start_coordinator(&data);
    let token = harness::add_stand_in_project(&data, &rig, "acme/widget", &[]);
    let token_file = dir.path().join("registration-token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let proxy = start_proxy(&addr);
    let vcs: Vec<String> = rig
        .vcs_host_mapping()
        .iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let root = dir.path().to_owned();
    // The idle and pickup figures go through the counting proxy; the throughput run talks to
    // the coordinator directly (the proxy would copy every byte once more).
    let start_agent = |coordinator: &str, log: &str| {
        let agent_config: PathBuf = root.join("agent.toml");
        std::fs::write(
            &agent_config,
            format!(
                "coordinator_url = \"http://{coordinator}\"\nregistration_token_file = {tf:?}\nname = \"bench\"\nstate_dir = {sd:?}\nspool_dir = {sp:?}\nstore_dir = {st:?}\nwork_dir = {wd:?}\nnetwork = {net:?}\nvcs_hosts = [{vcs}]\nconcurrency = 1\nkill_grace_secs = 1\n",
                tf = token_file,
                sd = root.join("state"),
                sp = root.join("spool"),
                st = root.join("store"),
                wd = root.join("work"),
                net = rig.network,
                vcs = vcs.join(", "),
            ),
        )
        .expect("agent config");
        let agent_log = std::fs::File::create(root.join(log)).expect("agent log");
        KillOnDrop(
            Command::new(harness::bosun_bin())
                .args(["agent", "--config"])
                .arg(&agent_config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(agent_log)
                .spawn()
                .expect("agent"),
        )
    };
    let agent = start_agent(&proxy.addr, "agent.log");
    let agent_pid = agent.0.id();
    let store = Store::open(&data).expect("store");
    let t0 = Instant::now();
    while store.list_agents().expect("agents").is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "agent never registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 3. Idle: RSS after 10 s, then requests over 20 s.
    std::thread::sleep(Duration::from_secs(10));
    let (idle_rss, idle_anon) = (
        proc_status_kib(agent_pid, "VmRSS"),
        proc_status_kib(agent_pid, "RssAnon"),
    );
    let (c0, r0) = (
        proxy.connections.load(Ordering::Relaxed),
        proxy.requests.load(Ordering::Relaxed),
    );
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let (c1, r1) = (
        proxy.connections.load(Ordering::Relaxed),
        proxy.requests.load(Ordering::Relaxed),
    );
    let per_min = 60.0 / window.as_secs_f64();
    let req_min = (r1 - r0) as f64 * per_min;
    let conn_min = (c1 - c0) as f64 * per_min;
    let heartbeat_secs = 5.0;
    let claim_wait_secs = bosun::protocol::DEFAULT_CLAIM_WAIT_SECS as f64;
    let expected_min = 60.0 / heartbeat_secs + 60.0 / claim_wait_secs;

    // 1. Pickup latency, coordinator + agent against `bosun execute`.
    let local = Project::new(&format!("version: 2.1\njobs:\n{build_job}"));
    let _ = execute_timed(&local); // warm
    let (mut pickup, mut exec_first, mut exec_wall) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let id = enqueue(&data, "build");
        wait_step_started(&store, id, None, Duration::from_secs(120));
        pickup.push(t.elapsed());
        let status = wait_final(&store, id, Duration::from_secs(120));
        assert_eq!(status, "success", "build job {id}");
        let (first, wall) = execute_timed(&local);
        exec_first.push(first);
        exec_wall.push(wall);
    }
    let (p, ef, ew) = (median(pickup), median(exec_first), median(exec_wall));

    // 2. Log throughput, with an agent straight to the coordinator.
    drop(agent);
    let agent = start_agent(&addr, "agent-direct.log");
    let agent_pid = agent.0.id();
    let coordinator_pid = coordinator.0.id();
    let id = enqueue(&data, "build");
    assert_eq!(wait_final(&store, id, Duration::from_secs(120)), "success");
    // Three runs, median (a few seconds each; the machine is shared with the engine).
    let throughput_runs = 3;
    let mut runs_out = Vec::new();
    for _ in 0..throughput_runs {
        let cpu0 = (cpu_secs(agent_pid), cpu_secs(coordinator_pid));
        let id = enqueue(&data, "big");
        let offset = wait_step_started(&store, id, Some(1), Duration::from_secs(120));
        let t = Instant::now();
        loop {
            let row = store.job(id).expect("job").expect("row");
            if row.log_bytes >= offset + log_bytes {
                break;
            }
            assert!(
                !row.is_final(),
                "big job {id} ended `{}` ({:?}) with {} log bytes",
                row.status,
                row.error,
                row.log_bytes
            );
            assert!(t.elapsed() < Duration::from_secs(600), "log never arrived");
            std::thread::sleep(POLL);
        }
        let agent_secs = t.elapsed().as_secs_f64();
        let status = wait_final(&store, id, Duration::from_secs(120));
        assert_eq!(status, "success", "big job {id}");
        let to_final = t.elapsed();
        let cpu = (
            cpu_secs(agent_pid) - cpu0.0,
            cpu_secs(coordinator_pid) - cpu0.1,
        );
        // The step's own duration, as the agent measured it: how much the agent slowed the
        // build itself down (back-pressure), apart from how long delivery took.
        let step_ms = store
            .events_from(id, 0)
            .expect("events")
            .into_iter()
            .find_map(|(_, ev)| match ev {
                JobEvent::StepFinished {
                    step: 1,
                    duration_ms,
                    ..
                } => Some(duration_ms),
                _ => None,
            })
            .expect("the print step's StepFinished");
        runs_out.push((agent_secs, to_final, cpu, step_ms));
    }
    runs_out.sort_by(|a, b| a.0.total_cmp(&b.0));
    let all_secs: Vec<String> = runs_out.iter().map(|r| format!("{:.2}", r.0)).collect();
    let (agent_secs, to_final, cpu, step_ms) = runs_out[runs_out.len() / 2];
    let peak_rss = proc_status_kib(agent_pid, "VmHWM");
    std::thread::sleep(Duration::from_secs(10));
    let (idle_rss_after, idle_anon_after) = (
        proc_status_kib(agent_pid, "VmRSS"),
        proc_status_kib(agent_pid, "RssAnon"),
    );
    drop(agent);

    let c = harness::docker(&[
        "run",
        "-d",
        "--label",
        &format!("bosun.test={}", rig.run_id),
        &img,
        "sleep",
        "600",
    ]);
    let docker_exec = || {
        let t = Instant::now();
        let st = Command::new("docker")
            .args(["exec", &c, "sh", "-c", &print_cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("docker exec");
        assert!(st.success(), "docker exec: {st}");
        t.elapsed()
    };
    let _ = docker_exec(); // warm
    let docker_secs = median((0..3).map(|_| docker_exec()).collect()).as_secs_f64();
    harness::docker(&["rm", "-f", &c]);

    let mib = log_mib as f64;
    println!("1. pickup latency, median of {runs}:");
    println!(
        "    bosun execute → first step_started      {:>8.0} ms   (whole run {:.0} ms)",
        ms(ef),
        ms(ew)
    );
    println!(
        "    enqueue → coordinator has StepStarted   {:>8.0} ms",
        ms(p)
    );
    println!(
        "    ratio agent/execute (to step start)     {:>8.2}   (against whole run: {:.2})",
        p.as_secs_f64() / ef.as_secs_f64(),
        p.as_secs_f64() / ew.as_secs_f64()
    );
    println!("2. log throughput, {log_mib} MiB from one step:");
    println!(
        "    docker exec C sh -c '…' > /dev/null     {:>8.1} MiB/s  ({:.2} s, median of 3)",
        mib / docker_secs,
        docker_secs
    );
    println!(
        "    step start → coordinator has all bytes  {:>8.1} MiB/s  ({:.2} s; {:.2} s to success; median of [{}] s)",
        mib / agent_secs,
        agent_secs,
        to_final.as_secs_f64(),
        all_secs.join(", ")
    );
    println!(
        "    the step itself under the agent         {:>8.1} MiB/s  ({:.2} s, its StepFinished)",
        mib / (step_ms as f64 / 1e3),
        step_ms as f64 / 1e3
    );
    println!(
        "    ratio agent/docker exec                 {:>8.2}   (target >= 0.7)",
        docker_secs / agent_secs
    );
    println!(
        "    CPU seconds, agent / coordinator         {:>8.2} / {:.2}",
        cpu.0, cpu.1
    );
    println!(
        "    agent peak RSS (VmHWM)                  {:>8.1} MiB   (target <= 50 MB)",
        peak_rss as f64 / 1024.0
    );
    println!("3. idle agent (heartbeat_secs 5, claim_wait_secs {claim_wait_secs}):");
    println!(
        "    VmRSS after 10 s idle                   {:>8.1} MiB   (target <= 15 MB; after the jobs + 10 s idle: {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        idle_rss_after as f64 / 1024.0
    );
    println!(
        "    of which RssAnon (heap, stacks)         {:>8.1} MiB   (after the jobs: {:.1} MiB; the rest is the binary's and libraries' pages)",
        idle_anon as f64 / 1024.0,
        idle_anon_after as f64 / 1024.0
    );
    println!(
        "    requests/min from the config            {:>8.1}",
        expected_min
    );
    println!(
        "    requests/min measured (proxy, 20 s)     {:>8.1}   ({} requests, {:.1} new connections/min)",
        req_min,
        r1 - r0,
        conn_min
    );
    println!(
        "    ratio measured/config                   {:>8.2}",
        req_min / expected_min
    );
}
