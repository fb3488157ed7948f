//! `cargo bench --bench engine_proxy`: the job engine proxy against the engine itself, in one
//! run, with the host's docker CLI (classic builder, DOCKER_BUILDKIT=0) and `bosun/base`.
//!
//! 1. `docker build --no-cache` of a 20-layer Dockerfile (20 RUN steps) FROM bosun/base;
//! 2. `docker run --rm bosun/base true` ×20;
//!
//! each straight at the engine and through a proxy served by this process, alternating, for
//! BOSUN_BENCH_ROUNDS rounds (default 3). Prints each ratio (proxy / direct) as the median and
//! the range over rounds (target ≤ 1.1), and this process's peak RSS (VmHWM): the proxy plus
//! a bench harness, an upper bound for the proxy.

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use bosun::engine_proxy::{JobEngine, Limits, Scope, Upstream};
use harness::{ensure_images, image};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn docker_at(host: &str, args: &[&str]) -> Duration {
    let t = Instant::now();
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", host)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?} at {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn summary(name: &str, direct: &[Duration], proxied: &[Duration]) {
    let mut ratios: Vec<f64> = direct
        .iter()
        .zip(proxied)
        .map(|(d, p)| p.as_secs_f64() / d.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let secs = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{name}: direct [{}] s, proxy [{}] s; ratio median {:.3} (range {:.3}–{:.3})",
        secs(direct),
        secs(proxied),
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

fn build(host: &str, ctx: &Path, tag: &str) -> Duration {
    docker_at(
        host,
        &[
            "build",
            "-q",
            "--no-cache",
            "-t",
            tag,
            &ctx.display().to_string(),
        ],
    )
}

fn runs(host: &str, base: &str) -> Duration {
    let t = Instant::now();
    for _ in 0..20 {
        docker_at(host, &["run", "--rm", base, "true"]);
    }
    t.elapsed()
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --all-targets`) skips
    // the run, which builds 20-layer images for minutes.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    ensure_images();
    let base = image("base");
    let rounds: usize = std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().expect("tmp");
    let ctx = dir.path().join("ctx");
    std::fs::create_dir(&ctx).expect("mkdir");
    let mut dockerfile = format!("FROM {base}\n");
    for i in 0..20 {
        dockerfile.push_str(&format!("RUN echo layer {i} > /layer-{i}\n"));
    }
    std::fs::write(ctx.join("Dockerfile"), dockerfile).expect("write");

    let job = format!("bench-{}", std::process::id());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sock = dir.path().join("docker.sock");
    let stop = rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        JobEngine::serve_on(
            listener,
            Upstream::from_docker_host(std::env::var("DOCKER_HOST").ok().as_deref())
                .expect("upstream"),
            Scope {
                job: job.clone(),
                agent: "bench".into(),
                limits: Limits::default(),
            },
        )
    });
    let direct_host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
    let proxy_host = format!("unix://{}", sock.display());

    // Warm both paths once (first run of an image is slower).
    runs(&direct_host, &base);
    docker_at(&proxy_host, &["run", "--rm", &base, "true"]);

    let (mut bd, mut bp, mut rd, mut rp) = (vec![], vec![], vec![], vec![]);
    for r in 0..rounds {
        // Alternate which goes first, so drift in the machine's load falls on both.
        let order = if r % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for proxied in order {
            let host = if proxied { &proxy_host } else { &direct_host };
            let b = build(host, &ctx, &format!("{job}-{}", u8::from(proxied)));
            let n = runs(host, &base);
            if proxied {
                bp.push(b);
                rp.push(n);
            } else {
                bd.push(b);
                rd.push(n);
            }
        }
    }
    summary("docker build (20 layers, --no-cache)", &bd, &bp);
    summary("docker run --rm true x20", &rd, &rp);
    println!(
        "peak RSS of the bench process (proxy + harness): {:.1} MiB",
        vm_hwm_kib() as f64 / 1024.0
    );
    stop.cancel();
    for t in [format!("{job}-0"), format!("{job}-1")] {
        let _ = Command::new("docker").args(["rmi", "-f", &t]).output();
    }
}
