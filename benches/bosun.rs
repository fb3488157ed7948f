//! `cargo bench --bench bosun`: Bosun against the baselines it must beat, in one run, on the
//! same image and machine.
//!
//! (a) job overhead: `bosun execute` of a one-step `true` job (no checkout) against
//!     `docker run --rm IMAGE true`; target ratio ≤ 1.3.
//! (b) checkout: `bosun checkout` (git2, submodules, host-key checks) of a generated
//!     repository (≈5,000 files, ≈1,000 commits, one submodule) from the Bitbucket stand-in,
//!     against `git clone --recurse-submodules` over the same server; target ratio ≤ 1.5.
//! (c) peak RSS of the bosun process during both (from wait4's rusage).
//! (d) the checkout tree into the container (tar stream) against `docker cp`.
//! (e) a restored 200 MB cache against `docker cp` of the same tree.
//! (f) a four-job workflow against the sum of its jobs run one by one.
//!
//! Environment: BOSUN_BENCH_RUNS (default 7), BOSUN_BENCH_FILES (5000),
//! BOSUN_BENCH_COMMITS (1000).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, measure, median};

use harness::{ensure_images, image, Project, Rig};
use std::process::Command;
use std::time::Duration;

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) skips the run.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_num("BOSUN_BENCH_RUNS", 7).max(1);
    ensure_images();
    let img = image("base");
    let bosun = harness::bosun_bin();

    // (a) job overhead
    let project = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps: [{{run: 'true'}}]\n"
    ));
    // Warm both paths once (first container start on an image is slower).
    measure(Command::new("docker").args(["run", "--rm", &img, "true"]));
    measure(&mut project.command(&[]));
    let (mut docker_t, mut bosun_t, mut exec_rss) = (Vec::new(), Vec::new(), 0);
    for _ in 0..runs {
        docker_t.push(measure(Command::new("docker").args(["run", "--rm", &img, "true"])).wall);
        let s = measure(&mut project.command(&[]));
        bosun_t.push(s.wall);
        exec_rss = exec_rss.max(s.max_rss_kib);
    }
    let (d, b) = (median(docker_t), median(bosun_t));
    println!("(a) job overhead, median of {runs}:");
    println!(
        "    docker run --rm {img} true   {:>8.0} ms",
        d.as_secs_f64() * 1e3
    );
    println!(
        "    bosun execute (1 step: true)  {:>8.0} ms",
        b.as_secs_f64() * 1e3
    );
    println!(
        "    ratio bosun/docker            {:>8.2}   (target <= 1.3)",
        b.as_secs_f64() / d.as_secs_f64()
    );

    // (b) checkout
    let files = env_num("BOSUN_BENCH_FILES", 5000);
    let commits = env_num("BOSUN_BENCH_COMMITS", 1000);
    let rig = Rig::start();
    let data = tempfile::tempdir().expect("tempdir");
    harness::run(
        Command::new("bash")
            .arg(harness::repo_root().join("benches/gen-repo.sh"))
            .arg(data.path())
            .arg(files.to_string())
            .arg(commits.to_string()),
    );
    let ws = rig.srv_dir().join("repos/acme");
    std::fs::create_dir_all(&ws).expect("mkdir");
    harness::run(
        Command::new("cp")
            .arg("-a")
            .arg(data.path().join("bench.git"))
            .arg(&ws),
    );
    harness::run(
        Command::new("cp")
            .arg("-a")
            .arg(data.path().join("lib.git"))
            .arg(&ws),
    );
    harness::run(Command::new("chmod").args(["-R", "a+rwX"]).arg(&ws));
    let key = rig.user_key(&["acme"]);
    let url = "git@bitbucket.org:acme/bench.git";
    let (mut git_t, mut git2_t, mut co_rss) = (Vec::new(), Vec::new(), 0);
    for i in 0..runs.min(5) {
        let out = tempfile::tempdir().expect("tempdir");
        let mut git = rig.git(Some(&key));
        git.args([
            "clone",
            "-q",
            "--recurse-submodules",
            &rig.ssh_url("acme/bench"),
        ])
        .arg(out.path().join(format!("git-{i}")));
        git_t.push(measure(&mut git).wall);
        let mut c = Command::new(&bosun);
        c.args(["checkout", url])
            .arg(out.path().join(format!("bosun-{i}")))
            // A cold mirror each run: the first job of a repository on an agent.
            .arg("--cache-dir")
            .arg(out.path().join("cache"))
            .arg("--user-key")
            .arg(&key.private_path)
            .arg("--known-hosts")
            .arg(rig.known_hosts_file());
        for m in rig.vcs_host_mapping() {
            c.args(["--vcs-host", &m]);
        }
        let s = measure(&mut c);
        git2_t.push(s.wall);
        co_rss = co_rss.max(s.max_rss_kib);
    }
    let n = git_t.len();
    let (g, g2) = (median(git_t), median(git2_t));
    println!("(b) checkout of {files} files / {commits} commits + submodule, median of {n}:");
    println!(
        "    git clone --recurse-submodules {:>8.0} ms",
        g.as_secs_f64() * 1e3
    );
    println!(
        "    bosun checkout (git2)          {:>8.0} ms",
        g2.as_secs_f64() * 1e3
    );
    println!(
        "    ratio bosun/git                {:>8.2}   (target <= 1.5)",
        g2.as_secs_f64() / g.as_secs_f64()
    );

    // (d) the checkout's way into the container: bosun's tar stream through the Engine API
    // (works against a remote engine) against `docker cp` of the same tree.
    let cfg = data.path().join("checkout-only.yml");
    std::fs::write(
        &cfg,
        format!("version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps: [checkout]\n"),
    )
    .expect("write config");
    let scratch = Project::new("");
    let mut c = scratch.command(&["--json", "--repo", url, "--config"]);
    c.arg(&cfg)
        .arg("--user-key")
        .arg(&key.private_path)
        .arg("--known-hosts")
        .arg(rig.known_hosts_file())
        .args(["--network", &rig.network]);
    for m in rig.vcs_host_mapping() {
        c.args(["--vcs-host", &m]);
    }
    let out = c.output().expect("bosun execute");
    let text = String::from_utf8_lossy(&out.stdout);
    let upload_s: f64 = text
        .lines()
        .find_map(|l| l.split("uploaded to the container in ").nth(1))
        .map(|t| t.trim_end_matches(|c: char| !c.is_ascii_digit()).to_owned())
        .and_then(|t| t.parse().ok())
        .unwrap_or(f64::NAN);
    let tree = tempfile::tempdir().expect("tempdir");
    let tree_path = tree.path().join("project");
    let mut co = Command::new(&bosun);
    co.args(["checkout", url, "--no-mirror"])
        .arg(&tree_path)
        .arg("--user-key")
        .arg(&key.private_path)
        .arg("--known-hosts")
        .arg(rig.known_hosts_file());
    for m in rig.vcs_host_mapping() {
        co.args(["--vcs-host", &m]);
    }
    measure(&mut co);
    let target = harness::docker(&[
        "run",
        "-d",
        "--label",
        "bosun.test=bench",
        &img,
        "sleep",
        "600",
    ]);
    let cp = measure(
        Command::new("docker")
            .arg("cp")
            .arg(&tree_path)
            .arg(format!("{target}:/root/project")),
    )
    .wall;
    harness::docker(&["rm", "-f", &target]);
    println!("(d) checkout into the container (tree incl. .git):");
    println!(
        "    docker cp DIR C:/root/project  {:>8.0} ms",
        cp.as_secs_f64() * 1e3
    );
    println!(
        "    bosun tar stream (API upload)  {:>8.0} ms",
        upload_s * 1e3
    );
    println!(
        "    ratio bosun/docker cp          {:>8.2}",
        upload_s / cp.as_secs_f64()
    );

    // (e) a restored 200 MB cache against `docker cp` of the same tree.
    let mb = env_num("BOSUN_BENCH_CACHE_MB", 200);
    let cache_project = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {img}}}]\n    steps:\n      - restore_cache: {{keys: [big-v1]}}\n      - run: test -d /root/big || (mkdir -p /root/big && for i in $(seq {mb}); do head -c 1048576 /dev/urandom > /root/big/f$i; done)\n      - save_cache: {{key: big-v1, paths: [/root/big]}}\n"
    ));
    let _ = cache_project
        .command(&["--json"])
        .output()
        .expect("fill the cache");
    let out = cache_project
        .command(&["--json"])
        .output()
        .expect("restore");
    let restore_ms = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "step_finished" && e["step"] == 0)
        .and_then(|e| e["duration_ms"].as_u64())
        .unwrap_or(0);
    let blob = std::fs::read_dir(cache_project.store.path().join("blobs/sha256"))
        .expect("blobs")
        .filter_map(Result::ok)
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob")
        .path();
    let tree = tempfile::tempdir().expect("tempdir");
    harness::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&blob)
            .arg("-C")
            .arg(tree.path()),
    );
    let target = harness::docker(&[
        "run",
        "-d",
        "--label",
        "bosun.test=bench",
        &img,
        "sleep",
        "600",
    ]);
    let cp = measure(
        Command::new("docker")
            .arg("cp")
            .arg(tree.path().join("root/big"))
            .arg(format!("{target}:/root/big")),
    )
    .wall;
    harness::docker(&["rm", "-f", &target]);
    println!("(e) restore a {mb} MB cache into a fresh container:");
    println!(
        "    docker cp of the same tree     {:>8.0} ms",
        cp.as_secs_f64() * 1e3
    );
    println!("    bosun restore_cache            {:>8} ms", restore_ms);
    println!(
        "    ratio bosun/docker cp          {:>8.2}",
        restore_ms as f64 / (cp.as_secs_f64() * 1e3)
    );

    // (f) a four-job workflow against the sum of its jobs run one by one.
    let wf = Project::new(&format!(
        "version: 2.1\nexecutors:\n  d: {{docker: [{{image: {img}}}]}}\njobs:\n  build: {{executor: d, steps: [{{run: 'sleep 1'}}]}}\n  unit: {{executor: d, steps: [{{run: 'sleep 1'}}]}}\n  lint: {{executor: d, steps: [{{run: 'sleep 1'}}]}}\n  package: {{executor: d, steps: [{{run: 'sleep 1'}}]}}\nworkflows:\n  main:\n    jobs: [build, {{unit: {{requires: [build]}}}}, {{lint: {{requires: [build]}}}}, {{package: {{requires: [unit, lint]}}}}]\n"
    ));
    let whole = measure(&mut wf.command(&["--workflow", "main", "--jobs", "4"])).wall;
    let mut sum = Duration::ZERO;
    for job in ["build", "unit", "lint", "package"] {
        sum += measure(&mut wf.command(&["--job", job])).wall;
    }
    println!("(f) four-job workflow (build → unit, lint → package; 1 s each):");
    println!(
        "    jobs one by one (sum)          {:>8.0} ms",
        sum.as_secs_f64() * 1e3
    );
    println!(
        "    bosun execute --workflow       {:>8.0} ms",
        whole.as_secs_f64() * 1e3
    );
    println!(
        "    ratio workflow/sum             {:>8.2}",
        whole.as_secs_f64() / sum.as_secs_f64()
    );
    println!(
        "(c) peak RSS of bosun: execute {:.1} MiB, checkout {:.1} MiB",
        exec_rss as f64 / 1024.0,
        co_rss as f64 / 1024.0
    );
}
