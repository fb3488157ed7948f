//! `cargo bench --bench gateway`: the SSH gateway against `docker exec` into the same job
//! container, in one run, with the real OpenSSH client and the release `bosun execute --ssh`.
//!
//! 1. `ssh -p PORT JOB@127.0.0.1 true` ×20 against `docker exec CONTAINER true` ×20: the ratio
//!    of the times (target ≤ 1.5);
//! 2. `ssh … 'cat /tmp/big' > /dev/null` against `docker exec CONTAINER cat /tmp/big` for a
//!    100 MB file: the ratio of the throughputs (target ≥ 0.8);
//!
//! 3. `scp -s JOB@127.0.0.1:/tmp/big LOCAL` (SFTP, served by the in-job executable) against
//!    the same bytes through `ssh … 'cat /tmp/big' > LOCAL`, and `scp -s LOCAL JOB@…:` against
//!    `ssh … 'cat > FILE' < LOCAL`: what SFTP costs over the gateway's own channel, both ways
//!    (throughput ratios);
//!
//! alternating, for BOSUN_BENCH_ROUNDS rounds (default 5): each ratio's median and range
//! (BOSUN_BENCH_SSH_CIPHER picks the client's cipher).
//! Then the gateway process's RSS (VmRSS of `bosun execute`, which also runs the job: an
//! upper bound) idle and with 10 sessions open.

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use harness::{ensure_images, image, Project};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIG: u64 = 100_000_000;

fn rounds() -> usize {
    std::env::var("BOSUN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn ssh(port: u16, key: &Path, job: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-p",
        &port.to_string(),
        "-i",
    ])
    .arg(key)
    .arg(format!("{job}@127.0.0.1"))
    .stdin(Stdio::null());
    // BOSUN_BENCH_SSH_CIPHER=aes128-gcm@openssh.com: compare ciphers (the client's default
    // is chacha20-poly1305).
    if let Ok(cipher) = std::env::var("BOSUN_BENCH_SSH_CIPHER") {
        c.args(["-c", &cipher]);
    }
    c
}

/// `scp -s` (SFTP) from `from` to `to`.
fn scp(port: u16, key: &Path, from: &str, to: &str) -> Command {
    let mut c = Command::new("scp");
    c.args([
        "-s",
        "-q",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-P",
        &port.to_string(),
        "-i",
    ])
    .arg(key)
    .args([from, to])
    .stdin(Stdio::null());
    c
}

fn timed(mut c: Command) -> Duration {
    let t = Instant::now();
    let out = c.stdout(Stdio::null()).output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// [`timed`], the command's output going to `path`.
fn timed_into(mut c: Command, path: &Path) -> Duration {
    let file = std::fs::File::create(path).expect("create the output file");
    let t = Instant::now();
    let out = c.stdout(file).output().expect("run");
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn docker_exec(container: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(["exec", "-u", "circleci", container])
        .args(cmd)
        .stdin(Stdio::null());
    c
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn summary(name: &str, ratios: &mut [f64]) {
    ratios.sort_by(f64::total_cmp);
    println!(
        "{name}: ratio median {:.3} (range {:.3}–{:.3}) over {} rounds: [{}]",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1],
        ratios.len(),
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn main() {
    // `cargo test --all-targets` runs benches too: measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    ensure_images();
    let p = Project::new(&format!(
        "version: 2.1\njobs:\n  build:\n    docker:\n      - image: {}\n        user: circleci\n    steps:\n      - run: sleep 3600\n",
        image("base")
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("id_bench");
    harness::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let pubkey = format!("{}.pub", key.display());
    let host_key = dir.path().join("host_key");
    let run = p.spawn(&[
        "--ssh",
        "--ssh-authorized-key",
        &pubkey,
        "--ssh-host-key",
        host_key.to_str().expect("utf-8"),
    ]);
    run.wait_for_output("(ED25519)", Duration::from_secs(120));
    let out = run.stdout_so_far();
    let port: u16 = out
        .lines()
        .find(|l| l.contains("SSH: ssh -p"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .expect("port");
    let job = p.job_id.clone();
    let container = p.containers().into_iter().next().expect("job container");
    let made = harness::output(&mut docker_exec(
        &container,
        &[
            "sh",
            "-c",
            &format!("head -c {BIG} /dev/urandom > /tmp/big"),
        ],
    ));
    assert!(made.status.success());
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(run.pid());

    let local_big = dir.path().join("big");
    let local_copy = dir.path().join("copy");
    let remote = |path: &str| format!("{job}@127.0.0.1:{path}");
    let (mut startup, mut throughput) = (Vec::new(), Vec::new());
    let (mut sftp_down, mut sftp_up) = (Vec::new(), Vec::new());
    for _ in 0..rounds() {
        let t = Instant::now();
        for _ in 0..20 {
            timed(docker_exec(&container, &["true"]));
        }
        let direct = t.elapsed();
        let t = Instant::now();
        for _ in 0..20 {
            let mut c = ssh(port, &key, &job);
            c.arg("true");
            timed(c);
        }
        let gw = t.elapsed();
        println!(
            "true ×20: docker exec {:.2} s, ssh {:.2} s",
            direct.as_secs_f64(),
            gw.as_secs_f64()
        );
        startup.push(gw.as_secs_f64() / direct.as_secs_f64());

        let direct = timed(docker_exec(&container, &["cat", "/tmp/big"]));
        let mut c = ssh(port, &key, &job);
        c.arg("cat /tmp/big");
        let gw = timed(c);
        let mb = |d: Duration| BIG as f64 / 1e6 / d.as_secs_f64();
        println!(
            "cat 100 MB: docker exec {:.0} MB/s, ssh {:.0} MB/s",
            mb(direct),
            mb(gw)
        );
        throughput.push(direct.as_secs_f64() / gw.as_secs_f64());

        // SFTP against the gateway's plain channel, the same bytes to and from files.
        let mut c = ssh(port, &key, &job);
        c.arg("cat /tmp/big");
        let channel = timed_into(c, &local_big);
        let sftp = timed(scp(
            port,
            &key,
            &remote("/tmp/big"),
            local_copy.to_str().expect("utf-8"),
        ));
        println!(
            "download 100 MB: ssh cat {:.0} MB/s, scp (SFTP) {:.0} MB/s",
            mb(channel),
            mb(sftp)
        );
        sftp_down.push(channel.as_secs_f64() / sftp.as_secs_f64());
        let mut c = ssh(port, &key, &job);
        c.arg("cat > /tmp/up-channel")
            .stdin(std::fs::File::open(&local_big).expect("open the local copy"));
        let channel = timed(c);
        let sftp = timed(scp(
            port,
            &key,
            local_big.to_str().expect("utf-8"),
            &remote("/tmp/up-sftp"),
        ));
        println!(
            "upload 100 MB: ssh cat {:.0} MB/s, scp (SFTP) {:.0} MB/s",
            mb(channel),
            mb(sftp)
        );
        sftp_up.push(channel.as_secs_f64() / sftp.as_secs_f64());
    }

    let mut sessions: Vec<std::process::Child> = (0..10)
        .map(|_| {
            let mut c = ssh(port, &key, &job);
            c.arg("sleep 60")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ssh")
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let busy = rss_kib(run.pid());
    for s in &mut sessions {
        let _ = s.kill();
        let _ = s.wait();
    }

    println!("---");
    summary(
        "ssh true ×20 / docker exec true ×20 (target ≤ 1.5)",
        &mut startup,
    );
    summary(
        "ssh cat 100 MB throughput / docker exec's (target ≥ 0.8)",
        &mut throughput,
    );
    summary("scp (SFTP) download throughput / ssh cat's", &mut sftp_down);
    summary("scp (SFTP) upload throughput / ssh cat's", &mut sftp_up);
    println!(
        "bosun execute --ssh RSS: idle {:.1} MiB, with 10 sessions {:.1} MiB",
        idle as f64 / 1024.0,
        busy as f64 / 1024.0
    );
    run.signal("INT");
    let _ = run.finish(Duration::from_secs(60));
}
