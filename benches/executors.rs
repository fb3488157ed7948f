//! `cargo bench --bench executors`: the job core's many-resource jobs against what the same
//! containers cost by hand, in one run, on the same images.
//!
//! (a) a job with a primary and two services (PostgreSQL, Redis) and one `true` step, against
//!     `docker run -d` of the three containers (services in the primary's network namespace)
//!     and `docker rm -f` of them; target ratio ≤ 1.2.
//! (b) a `machine` job with one `true` step, against `docker run -d` of the same image, until
//!     `systemctl is-system-running --wait` answers, and `docker rm -f`; target ratio ≤ 1.2.
//! (c) the one-step job overhead against `docker run --rm IMAGE true`; target ≤ 1.1 (issue 17;
//!     was 1.24–1.25 at issue 11).
//!
//! Each pair runs alternately, BOSUN_BENCH_RUNS times (default 7); medians and ranges of the
//! per-run ratios are printed.

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use harness::{ensure_images, image, Project};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn docker(args: &[&str]) -> String {
    ok(Command::new("docker").args(args))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn report(what: &str, base: &str, runs: &[(Duration, Duration)], target: f64) {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let ratios: Vec<f64> = runs
        .iter()
        .map(|(b, d)| b.as_secs_f64() / d.as_secs_f64())
        .collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(0.0, f64::max);
    println!("{what}, {} runs:", runs.len());
    println!(
        "    {base:<44} median {:>6.0} ms",
        median(runs.iter().map(|(_, d)| ms(d)).collect())
    );
    println!(
        "    {:<44} median {:>6.0} ms",
        "bosun execute",
        median(runs.iter().map(|(b, _)| ms(b)).collect())
    );
    println!(
        "    ratio bosun/baseline: median {:.2}, range {lo:.2}–{hi:.2}   (target <= {target})",
        median(ratios.clone())
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("BOSUN_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
        .max(1);
    ensure_images();
    let (base, pg, redis, machine) = (
        image("base"),
        image("postgres"),
        image("redis"),
        image("machine"),
    );
    let label = format!("bosun.test={}", harness::new_run_id());

    // (a) primary + two services.
    let services = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {base}\n      - image: {pg}\n      - image: {redis}\n        name: cache\n    steps: [{{run: 'true'}}]\n"
    ));
    let by_hand = || {
        let primary = docker(&[
            "run", "-d", "--init", "--label", &label, &base, "sleep", "3600",
        ]);
        let ns = format!("container:{primary}");
        let a = docker(&["run", "-d", "--label", &label, "--network", &ns, &pg]);
        let b = docker(&["run", "-d", "--label", &label, "--network", &ns, &redis]);
        docker(&["exec", &primary, "true"]);
        docker(&["rm", "-f", &b, &a, &primary]);
    };
    by_hand();
    ok(&mut services.command(&[]));
    let mut a_runs = Vec::new();
    for _ in 0..runs {
        let d = timed(by_hand);
        let b = timed(|| {
            ok(&mut services.command(&[]));
        });
        a_runs.push((b, d));
    }
    report(
        "(a) primary + 2 services, one `true` step",
        "docker run -d ×3 + exec true + rm -f",
        &a_runs,
        1.2,
    );

    // (b) machine job to its first step (and its end), against booting the same image.
    let machine_job = Project::new(
        "version: 2.1\njobs:\n  build:\n    machine: true\n    steps: [{run: 'true'}]\n",
    );
    let mapping = format!("default={machine}");
    let boot_by_hand = || {
        let c = docker(&[
            "run",
            "-d",
            "--label",
            &label,
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--stop-signal",
            "SIGRTMIN+3",
            &machine,
        ]);
        // systemd's bus is not there for its first moments: ask again until it answers.
        loop {
            let out = Command::new("docker")
                .args(["exec", &c, "systemctl", "is-system-running", "--wait"])
                .stdin(Stdio::null())
                .output()
                .expect("docker exec");
            let text = String::from_utf8_lossy(&out.stdout);
            if text.contains("running") || text.contains("degraded") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        docker(&["exec", "-u", "circleci", &c, "true"]);
        docker(&["rm", "-f", &c]);
    };
    boot_by_hand();
    ok(&mut machine_job.command(&["--machine-image", &mapping]));
    let mut b_runs = Vec::new();
    for _ in 0..runs {
        let d = timed(boot_by_hand);
        let b = timed(|| {
            ok(&mut machine_job.command(&["--machine-image", &mapping]));
        });
        b_runs.push((b, d));
    }
    report(
        "(b) machine job, one `true` step",
        "docker run -d + is-system-running + rm -f",
        &b_runs,
        1.2,
    );

    // (c) the one-step overhead.
    let one = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker: [{{image: {base}}}]\n    steps: [{{run: 'true'}}]\n"
    ));
    docker(&["run", "--rm", &base, "true"]);
    ok(&mut one.command(&[]));
    let mut c_runs = Vec::new();
    for _ in 0..runs {
        let d = timed(|| {
            docker(&["run", "--rm", &base, "true"]);
        });
        let b = timed(|| {
            ok(&mut one.command(&[]));
        });
        c_runs.push((b, d));
    }
    report(
        "(c) one-step job overhead",
        "docker run --rm IMAGE true",
        &c_runs,
        1.1,
    );
    harness::cleanup_label("bosun.test", label.trim_start_matches("bosun.test="));
}
