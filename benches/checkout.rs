//! `cargo bench --bench checkout`: issue 17 (a), `bosun checkout` through the mirror cache
//! against git, in one run, over the same Bitbucket stand-in (OpenSSH in Docker).
//!
//! - cold: an empty cache against `git clone --recurse-submodules` (time ratio, peak RSS);
//!   target ratio ≤ 1.0 at ≤ git's peak RSS;
//! - warm: after 5 new commits, a warm cache against a fresh `git clone` (target ≥ 10×
//!   faster) and against `git fetch` in an existing clone (reported).
//!
//! The repository is made by benches/gen-repo.sh. Environment: BOSUN_BENCH_RUNS (default
//! 5), BOSUN_BENCH_FILES (1000), BOSUN_BENCH_COMMITS (4000).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, measure, ms, stats};

use harness::Rig;
use std::path::Path;
use std::process::Command;

struct Bench<'a> {
    rig: &'a Rig,
    key: harness::Key,
}

impl Bench<'_> {
    fn bosun(&self, dest: &Path, cache: &Path) -> Command {
        let mut c = Command::new(harness::bosun_bin());
        c.args(["checkout", "git@bitbucket.org:acme/bench.git"])
            .arg(dest)
            .arg("--cache-dir")
            .arg(cache)
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
            "--recurse-submodules",
            &self.rig.ssh_url("acme/bench"),
        ])
        .arg(dest);
        c
    }

    /// `git fetch` in an existing clone (objects and refs only: no working tree, which
    /// the warm checkout writes in full).
    fn git_fetch(&self, clone: &Path) -> Command {
        let mut c = self.rig.git(Some(&self.key));
        c.arg("-C").arg(clone).args(["fetch", "-q", "origin"]);
        c
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_num("BOSUN_BENCH_RUNS", 5).max(1);
    let files = env_num("BOSUN_BENCH_FILES", 1000);
    let commits = env_num("BOSUN_BENCH_COMMITS", 4000);
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
    for repo in ["bench.git", "lib.git"] {
        harness::run(
            Command::new("cp")
                .arg("-a")
                .arg(data.path().join(repo))
                .arg(&ws),
        );
    }
    harness::run(Command::new("chmod").args(["-R", "a+rwX"]).arg(&ws));
    let bench = Bench {
        key: rig.user_key(&["acme"]),
        rig: &rig,
    };
    let scratch = tempfile::tempdir().expect("tempdir");
    let s = scratch.path();

    // Cold, alternating who goes first. The server's page cache is warm for both after
    // the first (unmeasured) clone.
    measure(&mut bench.git_clone(&s.join("prime")));
    let (mut ratios, mut git_ms, mut bosun_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut git_rss, mut bosun_rss) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let run_git = |bench: &Bench| measure(&mut bench.git_clone(&s.join(format!("git-{i}"))));
        let run_bosun = |bench: &Bench| {
            measure(&mut bench.bosun(&s.join(format!("bosun-{i}")), &s.join(format!("cache-{i}"))))
        };
        let (g, b) = if i % 2 == 0 {
            let g = run_git(&bench);
            (g, run_bosun(&bench))
        } else {
            let b = run_bosun(&bench);
            (run_git(&bench), b)
        };
        ratios.push(b.wall.as_secs_f64() / g.wall.as_secs_f64());
        git_ms.push(ms(g.wall));
        bosun_ms.push(ms(b.wall));
        git_rss.push(g.max_rss_kib as f64 / 1024.0);
        bosun_rss.push(b.max_rss_kib as f64 / 1024.0);
        // Nothing is removed between runs (the scratch directory goes at the end): on ext4
        // without a journal (this machine's root) the inode allocator skips inodes freed in
        // the last 5 s, one inode-table read each, so writing 1,000 files right after
        // removing 1,000 takes many times the CPU. Measured that way, whoever ran second
        // after a removal paid for it.
    }
    println!("(a) checkout of {files} files / {commits} commits + submodule, {runs} runs (median, min–max):");
    let line = |name: &str, v: Vec<f64>, unit: &str| {
        let (m, lo, hi) = stats(v);
        println!("    {name:<34} {m:>8.2} {unit}  ({lo:.2}–{hi:.2})");
    };
    line("cold git clone", git_ms, "ms");
    line("cold bosun checkout (empty cache)", bosun_ms, "ms");
    line("cold ratio bosun/git (target <= 1.0)", ratios, "");
    line("peak RSS git clone (+index-pack)", git_rss, "MiB");
    line("peak RSS bosun checkout", bosun_rss, "MiB");

    // Warm: one cache and one clone kept; before each run 5 new commits reach the server.
    let warm_cache = s.join("warm-cache");
    let clone = s.join("kept-clone");
    measure(&mut bench.bosun(&s.join("warm-prime"), &warm_cache));
    measure(&mut bench.git_clone(&clone));
    let work = s.join("work");
    harness::run(
        rig.git(None)
            .args(["clone", "-q"])
            .arg(rig.repo_path("acme/bench"))
            .arg(&work),
    );
    let (mut vs_clone, mut vs_fetch) = (Vec::new(), Vec::new());
    let (mut warm_ms, mut clone_ms, mut fetch_ms, mut warm_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        for c in 0..5 {
            std::fs::write(work.join(format!("new-{i}-{c}.txt")), format!("{i} {c}\n")).unwrap();
            harness::run(rig.git(None).arg("-C").arg(&work).args(["add", "-A"]));
            harness::run(rig.git(None).arg("-C").arg(&work).args([
                "commit",
                "-q",
                "-m",
                &format!("new {i}.{c}"),
            ]));
        }
        harness::run(rig.git(None).arg("-C").arg(&work).args([
            "push",
            "-q",
            "origin",
            "HEAD:main",
        ]));
        let w = measure(&mut bench.bosun(&s.join(format!("warm-{i}")), &warm_cache));
        let f = measure(&mut bench.git_fetch(&clone));
        let g = measure(&mut bench.git_clone(&s.join(format!("clone-{i}"))));
        vs_clone.push(g.wall.as_secs_f64() / w.wall.as_secs_f64());
        vs_fetch.push(w.wall.as_secs_f64() / f.wall.as_secs_f64());
        warm_ms.push(ms(w.wall));
        clone_ms.push(ms(g.wall));
        fetch_ms.push(ms(f.wall));
        warm_rss.push(w.max_rss_kib as f64 / 1024.0);
        // Kept until the end, as above.
    }
    println!("    after 5 new commits:");
    line("warm bosun checkout", warm_ms, "ms");
    line("git clone", clone_ms, "ms");
    line("git fetch in an existing clone", fetch_ms, "ms");
    line("git clone / warm bosun (target >= 10)", vs_clone, "x");
    line("warm bosun / git fetch", vs_fetch, "");
    line("peak RSS warm bosun checkout", warm_rss, "MiB");
}
