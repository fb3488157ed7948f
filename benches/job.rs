//! `cargo bench --bench job`: issue 32, whole jobs (`bosun execute`: checkout + one step)
//! against what a person would run by hand, in one run, over the Bitbucket stand-in.
//!
//! (a) one-step `true` job (no checkout) against `docker run --rm IMAGE true`, alternating;
//!     target ≤ 1.1.
//! (b) cold job (empty mirror cache): checkout + `true` as the image's `circleci` user,
//!     against `git clone` + `docker run --rm` of the same step with the clone mounted at its
//!     working directory; target ≤ 1.0. Its peak RSS (the whole `bosun execute` process,
//!     the checkout on its blocking thread included).
//! (c) warm job (the cache kept, 5 new commits pushed before each run) against the cold job
//!     (target ≤ 0.35) and against `git fetch` in a kept clone + the same `docker run`.
//! (d) the agent's own peak RSS (VmHWM) during a cold job: a `bosun coordinator` and a fresh
//!     `bosun agent` each run (empty cache directory, no ready container), the same job
//!     committed as the repository's `.circleci/config.yml` and enqueued, so the agent
//!     fetches the repository cold to read the config and checks it out; its idle VmRSS
//!     before the job too. (Part d adds one commit, the config, to `main`.)
//! (e) (with d; not in the default parts) does the ready-container pool pay for a job with a
//!     checkout? The same job, warm cache, enqueue → final, three ways: an agent on the local
//!     engine with `ready_containers = 1` (a ready container taken, its own directory mounted),
//!     the same with `ready_containers = 0` (the container made fresh, the checkout mounted),
//!     and one reaching the same engine through a TCP front (a "remote" engine: a ready
//!     container taken, the checkout uploaded as a tar stream); on this repository and on a
//!     one-file one. Blocks of the three ways alternate.
//!
//! The repository: `BOSUN_BENCH_REPO`, a git directory with history (e.g. a bare clone of
//! tokio-rs/tokio; its branch `main` is made from its `HEAD` if missing), else one made by
//! benches/gen-repo.sh with BOSUN_BENCH_FILES (1000) files and BOSUN_BENCH_COMMITS (3000)
//! commits. BOSUN_BENCH_RUNS (default 5; (a) runs twice as many pairs). BOSUN_BENCH_PARTS
//! (default `abcd`): which of the four to run (without (b) the warm job's ratio to the cold
//! one is not shown); with BOSUN_BENCH_STDERR and `BOSUN_LOG=bosun_core=debug,bosun_git=debug`
//! the jobs' timestamped traces go to that file, each run after a `== part run` line.
//! BOSUN_BENCH_BASELINE_BIN: another build of `bosun` whose warm job alternates with this
//! one's in (c), each after 5 new commits of its own (this / baseline in the same run).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, line, measure, ms, proc_status_kib, stats};

use harness::{ensure_images, image, Project, Rig};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A `== part run time` line (seconds since the epoch) in BOSUN_BENCH_STDERR's file, so each
/// job's trace can be found and timed from its process's start.
fn mark(part: &str, run: usize) {
    if let Some(f) = std::env::var_os("BOSUN_BENCH_STDERR") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let _ = writeln!(f, "== {part} {run} {:.6}", now.as_secs_f64());
        }
    }
}

struct Bench<'a> {
    rig: &'a Rig,
    key: harness::Key,
    img: String,
    config: PathBuf,
}

impl Bench<'_> {
    /// `bosun execute` of the job `build` (checkout + `true`) from the stand-in.
    fn job(&self, cache: &Path, store: &Path) -> Command {
        let mut c = Command::new(harness::bosun_bin());
        c.args([
            "execute",
            "--repo",
            "git@bitbucket.org:acme/bench.git",
            "--ref",
            "main",
            "--job",
            "build",
        ])
        .arg("--config")
        .arg(&self.config)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--store")
        .arg(store)
        .arg("--network")
        .arg(&self.rig.network)
        .arg("--user-key")
        .arg(&self.key.private_path)
        .arg("--known-hosts")
        .arg(self.rig.known_hosts_file());
        for m in self.rig.vcs_host_mapping() {
            c.args(["--vcs-host", &m]);
        }
        c
    }

    fn git_clone(&self, dest: &Path) -> Command {
        let mut c = self.rig.git(Some(&self.key));
        c.args([
            "clone",
            "-q",
            "--branch",
            "main",
            &self.rig.ssh_url("acme/bench"),
        ])
        .arg(dest);
        c
    }

    fn git_fetch(&self, clone: &Path) -> Command {
        let mut c = self.rig.git(Some(&self.key));
        c.arg("-C")
            .arg(clone)
            .args(["pull", "-q", "--ff-only", "origin", "main"]);
        c
    }

    /// The job's step by hand: the clone mounted where the job's checkout would be.
    fn docker_run(&self, clone: &Path) -> Command {
        let mut c = Command::new("docker");
        c.args([
            "run",
            "--rm",
            "-u",
            "circleci",
            "-w",
            "/home/circleci/project",
        ])
        .arg("-v")
        .arg(format!("{}:/home/circleci/project", clone.display()))
        .args([&self.img, "true"]);
        c
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_num("BOSUN_BENCH_RUNS", 5).max(1);
    let parts = std::env::var("BOSUN_BENCH_PARTS").unwrap_or_else(|_| "abcd".to_owned());
    ensure_images();
    let img = image("base");
    let scratch = tempfile::tempdir().expect("tempdir");
    let s = scratch.path();

    // (a) one-step job against docker run --rm, alternating who goes first.
    let project = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps: [{{run: 'true'}}]\n"
    ));
    let one_step = || project.command(&[]);
    let docker_true = || {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", &img, "true"]);
        c
    };
    let (mut ratios, mut d_ms, mut b_ms) = (Vec::new(), Vec::new(), Vec::new());
    if parts.contains('a') {
        measure(&mut docker_true());
        measure(&mut one_step());
    }
    for i in 0..if parts.contains('a') { runs * 2 } else { 0 } {
        mark("a", i);
        let (d, b) = if i % 2 == 0 {
            let d = measure(&mut docker_true());
            (d, measure(&mut one_step()))
        } else {
            let b = measure(&mut one_step());
            (measure(&mut docker_true()), b)
        };
        ratios.push(b.wall.as_secs_f64() / d.wall.as_secs_f64());
        d_ms.push(ms(d.wall));
        b_ms.push(ms(b.wall));
    }
    if parts.contains('a') {
        println!(
            "(a) one-step `true` job, {} alternating pairs (median, min–max):",
            runs * 2
        );
        line("docker run --rm", d_ms, "ms");
        line("bosun execute", b_ms, "ms");
        line("ratio bosun/docker (target <= 1.1)", ratios, "");
    }

    // The repository on the stand-in.
    let rig = Rig::start();
    let ws = rig.srv_dir().join("repos/acme");
    std::fs::create_dir_all(&ws).expect("mkdir");
    let data = tempfile::tempdir().expect("tempdir");
    let what = match std::env::var_os("BOSUN_BENCH_REPO") {
        Some(repo) => {
            harness::run(
                Command::new("git")
                    .args(["clone", "-q", "--bare", "--no-local"])
                    .arg(&repo)
                    .arg(ws.join("bench.git")),
            );
            Path::new(&repo).display().to_string()
        }
        None => {
            let files = env_num("BOSUN_BENCH_FILES", 1000);
            let commits = env_num("BOSUN_BENCH_COMMITS", 3000);
            harness::run(
                Command::new("bash")
                    .arg(harness::repo_root().join("benches/gen-repo.sh"))
                    .arg(data.path())
                    .arg(files.to_string())
                    .arg(commits.to_string()),
            );
            for repo in ["bench.git", "lib.git"] {
                harness::run(
                    Command::new("cp")
                        .arg("-a")
                        .arg(data.path().join(repo))
                        .arg(&ws),
                );
            }
            format!("generated: {files} files, {commits} commits, a submodule")
        }
    };
    let bare = ws.join("bench.git");
    // A branch `main` at HEAD, whatever the repository calls its default branch.
    let has_main = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["rev-parse", "-q", "--verify", "refs/heads/main"])
        .status()
        .expect("git")
        .success();
    if !has_main {
        harness::run(
            Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["branch", "main", "HEAD"]),
        );
    }
    harness::run(Command::new("chmod").args(["-R", "a+rwX"]).arg(&ws));
    let commits = harness::run(
        Command::new("git")
            .arg("--git-dir")
            .arg(&bare)
            .args(["rev-list", "--count", "main"]),
    );
    let config = s.join("config.yml");
    std::fs::write(
        &config,
        format!("version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        user: circleci\n    steps: [checkout, {{run: 'true'}}]\n"),
    )
    .expect("config");
    let bench = Bench {
        key: rig.user_key(&["acme"]),
        rig: &rig,
        img: img.clone(),
        config,
    };
    println!("repository: {what}; main has {} commits", commits.trim());

    // (b) cold: an empty cache each time, against clone + run.
    let cold_runs = if parts.contains('b') { runs } else { 0 };
    if cold_runs > 0 {
        measure(&mut bench.git_clone(&s.join("prime")));
    }
    let (mut ratios, mut hand_ms, mut cold_ms, mut rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..cold_runs {
        mark("b", i);
        let cold = || {
            measure(&mut bench.job(
                &s.join(format!("cold-cache-{i}")),
                &s.join(format!("cold-store-{i}")),
            ))
        };
        let hand = || {
            let dest = s.join(format!("clone-{i}"));
            let c = measure(&mut bench.git_clone(&dest));
            let r = measure(&mut bench.docker_run(&dest));
            c.wall + r.wall
        };
        let (h, b) = if i % 2 == 0 {
            let h = hand();
            (h, cold())
        } else {
            let b = cold();
            (hand(), b)
        };
        ratios.push(b.wall.as_secs_f64() / h.as_secs_f64());
        hand_ms.push(ms(h));
        cold_ms.push(ms(b.wall));
        rss.push(b.max_rss_kib as f64 / 1024.0);
    }
    let cold_median = (cold_runs > 0).then(|| stats(cold_ms.clone()).0);
    if cold_runs > 0 {
        println!("(b) cold job (checkout + true), {runs} runs:");
        line("git clone + docker run --rm", hand_ms, "ms");
        line("bosun execute, empty cache", cold_ms, "ms");
        line("ratio bosun/by hand (target <= 1.0)", ratios, "");
        line("peak RSS of bosun execute", rss, "MiB");
    }
    if parts.contains('d') {
        agent_cold(&rig, &bare, s, runs, &img, parts.contains('e'));
    }
    if !parts.contains('c') {
        return;
    }

    // (c) warm: one cache and one clone kept; 5 new commits before each run.
    let cache = s.join("warm-cache");
    let store = s.join("warm-store");
    let kept = s.join("kept-clone");
    mark("c prime", 0);
    measure(&mut bench.job(&cache, &store));
    measure(&mut bench.git_clone(&kept));
    let work = s.join("work");
    harness::run(
        rig.git(None)
            .args(["clone", "-q", "--branch", "main"])
            .arg(&bare)
            .arg(&work),
    );
    let (mut vs_cold, mut vs_hand, mut warm_ms, mut fetch_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let push_five = |tag: &str| {
        for c in 0..5 {
            std::fs::write(
                work.join(format!("new-{tag}-{c}.txt")),
                format!("{tag} {c}\n"),
            )
            .expect("write");
            harness::run(rig.git(None).arg("-C").arg(&work).args(["add", "-A"]));
            harness::run(rig.git(None).arg("-C").arg(&work).args([
                "commit",
                "-q",
                "-m",
                &format!("new {tag}.{c}"),
            ]));
        }
        harness::run(rig.git(None).arg("-C").arg(&work).args([
            "push",
            "-q",
            "origin",
            "HEAD:main",
        ]));
    };
    // BOSUN_BENCH_BASELINE_BIN: another `bosun` (an earlier build) whose warm job runs in
    // the same rounds, alternating with this one, each after 5 new commits of its own.
    let baseline_bin = std::env::var_os("BOSUN_BENCH_BASELINE_BIN").map(PathBuf::from);
    let (mut base_ms, mut vs_base) = (Vec::new(), Vec::new());
    let baseline = |i: usize| -> Option<f64> {
        let bin = baseline_bin.as_ref()?;
        push_five(&format!("{i}b"));
        mark("c baseline", i);
        let args: Vec<_> = bench
            .job(&cache, &store)
            .get_args()
            .map(|a| a.to_owned())
            .collect();
        let b = measure(Command::new(bin).args(args));
        mark("c end", i);
        Some(ms(b.wall))
    };
    for i in 0..runs {
        if i % 2 == 1 {
            base_ms.extend(baseline(i));
        }
        push_five(&i.to_string());
        mark("c", i);
        let w = measure(&mut bench.job(&cache, &store));
        mark("c end", i);
        if i % 2 == 0 {
            base_ms.extend(baseline(i));
        }
        if let Some(b) = base_ms.last() {
            vs_base.push(ms(w.wall) / b);
        }
        let f = measure(&mut bench.git_fetch(&kept));
        let r = measure(&mut bench.docker_run(&kept));
        let hand = f.wall + r.wall;
        if let Some(cold) = cold_median {
            vs_cold.push(ms(w.wall) / cold);
        }
        vs_hand.push(w.wall.as_secs_f64() / hand.as_secs_f64());
        warm_ms.push(ms(w.wall));
        fetch_ms.push(ms(hand));
    }
    println!("(c) warm job after 5 new commits, {runs} runs:");
    line("bosun execute, warm cache", warm_ms, "ms");
    line("git pull (kept clone) + docker run --rm", fetch_ms, "ms");
    if !vs_cold.is_empty() {
        line("warm / cold median (target <= 0.35)", vs_cold, "");
    }
    line("warm / (git pull + docker run)", vs_hand, "");
    if !base_ms.is_empty() {
        line("baseline build's warm job", base_ms, "ms");
        line("this / baseline build", vs_base, "");
    }
}

/// (d): a coordinator with the repository as project `acme/bench` and, each run, a fresh agent
/// (its own cache directory: the checkout is cold) that runs the job `build` from the
/// repository's own config; the agent's VmRSS idle before the job and its VmHWM after it.
fn agent_cold(rig: &Rig, bare: &Path, s: &Path, runs: usize, img: &str, pool_part: bool) {
    use bosun::coordinator::store::{parse_job_id, Store};
    // The job's config committed to `main` (the coordinator reads it at the commit).
    let work = s.join("agent-config-clone");
    harness::run(
        rig.git(None)
            .args(["clone", "-q", "--branch", "main"])
            .arg(bare)
            .arg(&work),
    );
    std::fs::create_dir_all(work.join(".circleci")).expect("mkdir");
    std::fs::write(
        work.join(".circleci/config.yml"),
        format!("version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        user: circleci\n    steps: [checkout, {{run: 'true'}}]\n"),
    )
    .expect("config");
    for args in [
        &["add", "-A"][..],
        &["commit", "-q", "-m", "bench: the job's config"],
        &["push", "-q", "origin", "HEAD:main"],
    ] {
        harness::run(rig.git(None).arg("-C").arg(&work).args(args));
    }
    let data = s.join("agent-coordinator");
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &[]);
    let _coordinator = harness::KillOnDrop(child);
    let token = harness::add_stand_in_project(&data, rig, "acme/bench", &[]);
    let store = Store::open(&data).expect("store");
    let (mut idle, mut peak, mut wall) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        mark("d", i);
        let root = s.join(format!("agent-{i}"));
        std::fs::create_dir_all(&root).expect("agent dir");
        let token_file = root.join("registration-token");
        std::fs::write(&token_file, format!("{token}\n")).expect("token");
        let mut toml =
            harness::agent_toml(&format!("http://{addr}"), &token_file, "bench", &root, rig);
        toml.push_str(&format!(
            "cache_dir = {:?}\nready_containers = 0\nssh_gateway_listen = \"off\"\n",
            root.join("cache")
        ));
        let config = root.join("agent.toml");
        std::fs::write(&config, toml).expect("agent config");
        let log = match std::env::var_os("BOSUN_BENCH_STDERR") {
            Some(f) => PathBuf::from(f),
            None => root.join("agent.log"),
        };
        let agent = harness::KillOnDrop(harness::spawn_agent(&config, &log, &[]));
        let pid = agent.0.id();
        // Registered and idle (its first claim waiting).
        std::thread::sleep(std::time::Duration::from_secs(3));
        idle.push(proc_status_kib(pid, "VmRSS") as f64 / 1024.0);
        let t = std::time::Instant::now();
        let id = parse_job_id(&harness::coordinator_cli(
            &data,
            &[
                "enqueue",
                "--project",
                "acme/bench",
                "--ref",
                "main",
                "--job",
                "build",
            ],
        ))
        .expect("job id");
        loop {
            let row = store.job(id).expect("job").expect("row");
            if row.is_final() {
                assert_eq!(
                    row.status.to_string(),
                    "success",
                    "job {id}: {}",
                    String::from_utf8_lossy(&store.log_from(id, 0).expect("log"))
                );
                break;
            }
            assert!(
                t.elapsed() < std::time::Duration::from_secs(600),
                "job {id} never ended"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        wall.push(ms(t.elapsed()));
        peak.push(proc_status_kib(pid, "VmHWM") as f64 / 1024.0);
        drop(agent);
        harness::cleanup_killed_agent(
            &serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(root.join("state/agent.json")).unwrap_or_default(),
            )
            .ok()
            .and_then(|v| v["agent_id"].as_str().map(str::to_owned))
            .unwrap_or_default(),
        );
    }
    println!(
        "(d) bosun agent, a cold job (checkout + true) from the repository's config, {runs} runs:"
    );
    line("enqueue → job final", wall, "ms");
    line("agent VmRSS idle before the job", idle, "MiB");
    line("agent peak RSS (VmHWM) after the job", peak, "MiB");
    if !pool_part {
        return;
    }
    // (e) a one-file repository beside this one.
    rig.create_repo("acme/small");
    let small = rig.work_repo("acme/small");
    small.write(
        ".circleci/config.yml",
        &format!("version: 2.1\njobs:\n  build:\n    docker:\n      - image: {img}\n        user: circleci\n    steps: [checkout, {{run: 'true'}}]\n"),
    );
    small.commit("config");
    small.push("HEAD:refs/heads/main");
    let small_token = harness::add_stand_in_project(&data, rig, "acme/small", &[]);
    let tcp_port = tcp_engine_front();
    println!("(e) ready container + mount (local) against fresh container + mount (local) and ready container + tar upload (engine over TCP), warm cache, {runs} jobs a block, 2 blocks each:");
    for (slug, token) in [("acme/bench", &token), ("acme/small", &small_token)] {
        let (mut ready_ms, mut local_ms, mut pool_ms) = (Vec::new(), Vec::new(), Vec::new());
        for block in 0..6 {
            let remote = block % 3 == 2;
            let fresh = block % 3 == 1;
            let root = s.join(format!("pool-{}-{block}", slug.replace('/', "-")));
            std::fs::create_dir_all(&root).expect("agent dir");
            let token_file = root.join("registration-token");
            std::fs::write(&token_file, format!("{token}\n")).expect("token");
            let mut toml =
                harness::agent_toml(&format!("http://{addr}"), &token_file, "bench", &root, rig);
            toml.push_str(&format!(
                "cache_dir = {:?}\nready_containers = {}\nssh_gateway_listen = \"off\"\n",
                s.join(format!("pool-cache-{}-{remote}", slug.replace('/', "-"))),
                u8::from(!fresh),
            ));
            if remote {
                toml.push_str(&format!("docker_host = \"tcp://127.0.0.1:{tcp_port}\"\n"));
            }
            let config = root.join("agent.toml");
            std::fs::write(&config, toml).expect("agent config");
            // The lifecycle's debug lines say whether each job took a ready container.
            let agent = harness::KillOnDrop(harness::spawn_agent(
                &config,
                &root.join("agent.log"),
                &[("BOSUN_LOG", "info,bosun_core::job::lifecycle=debug")],
            ));
            // The first job of a block warms the cache (and is not counted).
            for i in 0..=runs {
                std::thread::sleep(std::time::Duration::from_secs(3)); // the pool refills
                let t = std::time::Instant::now();
                let id = parse_job_id(&harness::coordinator_cli(
                    &data,
                    &[
                        "enqueue",
                        "--project",
                        slug,
                        "--ref",
                        "main",
                        "--job",
                        "build",
                    ],
                ))
                .expect("job id");
                loop {
                    let row = store.job(id).expect("job").expect("row");
                    if row.is_final() {
                        assert_eq!(row.status.to_string(), "success", "job {id}");
                        break;
                    }
                    assert!(t.elapsed() < std::time::Duration::from_secs(600));
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if i > 0 {
                    let log =
                        String::from_utf8_lossy(&store.log_from(id, 0).expect("log")).into_owned();
                    let mounted = log.contains(": in place (");
                    assert_eq!(mounted, !remote, "job {id} of block {block}:\n{log}");
                    if remote {
                        pool_ms.push(ms(t.elapsed()));
                    } else if fresh {
                        local_ms.push(ms(t.elapsed()));
                    } else {
                        ready_ms.push(ms(t.elapsed()));
                    }
                }
            }
            drop(agent);
            let took = std::fs::read_to_string(root.join("agent.log"))
                .unwrap_or_default()
                .matches("took a ready container")
                .count();
            // Every counted job of a pooled block took one (the first, warming, could not).
            assert!(
                fresh || took >= runs,
                "block {block}: {took} of {runs} jobs took a ready container"
            );
            assert!(
                !fresh || took == 0,
                "block {block}: no pool, yet {took} taken"
            );
            harness::cleanup_killed_agent(
                &serde_json::from_str::<serde_json::Value>(
                    &std::fs::read_to_string(root.join("state/agent.json")).unwrap_or_default(),
                )
                .ok()
                .and_then(|v| v["agent_id"].as_str().map(str::to_owned))
                .unwrap_or_default(),
            );
        }
        println!("  {slug}:");
        let median = |v: &Vec<f64>| stats(v.clone()).0;
        let (to_fresh, to_tar) = (
            median(&ready_ms) / median(&local_ms),
            median(&ready_ms) / median(&pool_ms),
        );
        line("ready container + mounted checkout (local)", ready_ms, "ms");
        line("fresh container + mounted checkout (local)", local_ms, "ms");
        line("ready container + tar upload (TCP)", pool_ms, "ms");
        line("median ratio ready+mount / fresh+mount", vec![to_fresh], "");
        line("median ratio ready+mount / ready+tar", vec![to_tar], "");
    }
}

/// A TCP front for the engine's unix socket (a "remote" engine to the agent); its port.
fn tcp_engine_front() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { break };
            let Ok(unix) = std::os::unix::net::UnixStream::connect("/var/run/docker.sock") else {
                continue;
            };
            let (Ok(mut tcp_r), Ok(mut unix_r)) = (tcp.try_clone(), unix.try_clone()) else {
                continue;
            };
            let (mut tcp_w, mut unix_w) = (tcp, unix);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}
