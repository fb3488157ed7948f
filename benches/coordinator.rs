//! `cargo bench --bench coordinator`: the coordinator's memory with many live-page followers
//! (issue 12: "100 clients following a 200 MiB log, target ≤ 100 MB"), in one run.
//!
//! Each round: a job is claimed by an agent (this bench, over HTTP), `BOSUN_BENCH_FOLLOWERS`
//! browsers (default 100) open its live stream from offset 0, and the agent appends a
//! `BOSUN_BENCH_LOG_MB` (200) MiB log in 2 MiB chunks (the real agent's size) as fast as the
//! coordinator acknowledges, then finishes. Every follower reads everything it is sent until
//! the stream's `end`. Reported per round: the coordinator's peak RSS (VmHWM, reset with
//! `/proc/PID/clear_refs` before the round), the append time of the log alone (no followers)
//! against with followers (ratio), and the time until the last follower has the whole log.
//! Environment: BOSUN_BENCH_FOLLOWERS, BOSUN_BENCH_LOG_MB, BOSUN_BENCH_ROUNDS (default 3).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, proc_status_kib, reset_peak};
use harness::KillOnDrop;

use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

struct AgentApi {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AgentApi {
    async fn post(&self, path: &str, body: reqwest::Body) -> reqwest::Response {
        self.http
            .post(format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    async fn claim(&self) -> String {
        let r = self
            .post(
                "/jobs/claim?wait=5",
                json!({"resource_class": "docker", "labels": [], "capacity": 1})
                    .to_string()
                    .into(),
            )
            .await;
        assert_eq!(r.status(), 200, "claim");
        let v: serde_json::Value = r.json().await.expect("claim json");
        v["job"]["id"].as_str().expect("job id").to_owned()
    }

    /// Append `total` bytes of log in 2 MiB chunks, then finish; the time of the appends.
    async fn upload(&self, id: &str, total: u64) -> Duration {
        const CHUNK: usize = 2 << 20;
        let line =
            b"0123456789 bosun bench log line abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRS\n";
        let chunk: Vec<u8> = line.iter().copied().cycle().take(CHUNK).collect();
        let mut sha = Sha256::new();
        let mut offset = 0u64;
        let t0 = Instant::now();
        while offset < total {
            let n = (total - offset).min(CHUNK as u64) as usize;
            let r = self
                .post(
                    &format!("/jobs/{id}/log?offset={offset}"),
                    chunk[..n].to_vec().into(),
                )
                .await;
            assert_eq!(r.status(), 200, "append at {offset}");
            sha.update(&chunk[..n]);
            offset += n as u64;
        }
        let took = t0.elapsed();
        let digest: String = sha.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let r = self
            .post(
                &format!("/jobs/{id}/finish"),
                json!({"status": "success", "log_bytes": total, "log_sha256": digest})
                    .to_string()
                    .into(),
            )
            .await;
        assert_eq!(r.status(), 200, "finish");
        took
    }
}

/// One follower: reads the stream until `event: end`; the bytes it got.
async fn follow(base: String, id: String) -> u64 {
    let mut r = reqwest::Client::new()
        .get(format!("{base}/jobs/{id}/stream?offset=0&seq=0"))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 200);
    let mut got = 0u64;
    let mut tail = Vec::new();
    while let Ok(Some(c)) = r.chunk().await {
        got += c.len() as u64;
        tail.extend_from_slice(&c[c.len().saturating_sub(64)..]);
        if tail.windows(10).any(|w| w == b"event: end") {
            break;
        }
        let keep = tail.len().saturating_sub(64);
        tail.drain(..keep);
    }
    got
}

fn enqueue(data: &Path) -> String {
    harness::enqueue_job(data, "build", &[])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let followers = env_num("BOSUN_BENCH_FOLLOWERS", 100);
    let log_mib = env_num("BOSUN_BENCH_LOG_MB", 200);
    let rounds = env_num("BOSUN_BENCH_ROUNDS", 3).max(1);
    let total = (log_mib as u64) << 20;

    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
    let key = dir.path().join("deploy_key");
    std::fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nBENCH\n").expect("key");
    harness::coordinator_cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
            "--deploy-key",
            key.to_str().expect("utf8"),
        ],
    );
    let token = harness::coordinator_cli(&data, &["token"]);
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &[]);
    let coordinator = KillOnDrop(child);
    let pid = coordinator.0.id();
    let base = format!("http://{addr}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let reg: serde_json::Value = http
            .post(format!("{base}/api/v1/agents/register"))
            .json(&json!({"registration_token": token, "name": "bench",
                "resource_class": "docker", "labels": [], "version": "bench"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("register json");
        let agent = AgentApi {
            http,
            base: base.clone(),
            token: reg["agent_token"].as_str().expect("token").to_owned(),
        };

        // The same upload with nobody following, for the ratio.
        enqueue(&data);
        let id = agent.claim().await;
        let alone = agent.upload(&id, total).await;
        let idle_rss = proc_status_kib(pid, "VmRSS");
        println!(
            "coordinator, {log_mib} MiB log in 2 MiB appends, {followers} live followers from offset 0:"
        );
        println!(
            "    no followers: appends {:.2} s ({:.0} MiB/s); RSS after {:.1} MiB",
            alone.as_secs_f64(),
            log_mib as f64 / alone.as_secs_f64(),
            idle_rss as f64 / 1024.0
        );
        let mut peaks = Vec::new();
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            enqueue(&data);
            let id = agent.claim().await;
            reset_peak(pid);
            let before = proc_status_kib(pid, "VmRSS");
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..followers)
                .map(|_| tokio::spawn(follow(base.clone(), id.clone())))
                .collect();
            // Let them connect before the log starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let appends = agent.upload(&id, total).await;
            let mut least = u64::MAX;
            for t in tasks {
                least = least.min(t.await.expect("follower"));
            }
            let delivered = t0.elapsed();
            let peak = proc_status_kib(pid, "VmHWM");
            peaks.push(peak);
            ratios.push(appends.as_secs_f64() / alone.as_secs_f64());
            assert!(least >= total, "a follower got {least} of {total} bytes");
            println!(
                "    round {round}: peak RSS {:.1} MiB (from {:.1}); appends {:.2} s ({:.2}x alone); \
                 every follower had the whole log after {:.1} s",
                peak as f64 / 1024.0,
                before as f64 / 1024.0,
                appends.as_secs_f64(),
                appends.as_secs_f64() / alone.as_secs_f64(),
                delivered.as_secs_f64()
            );
        }
        let mib = |k: u64| k as f64 / 1024.0;
        let (lo, hi) = (
            peaks.iter().copied().min().unwrap_or(0),
            peaks.iter().copied().max().unwrap_or(0),
        );
        let (rlo, rhi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        println!(
            "    peak RSS {:.1}–{:.1} MiB over {rounds} rounds (target <= 100 MB = {:.1} MiB); \
             appends with followers {rlo:.2}–{rhi:.2}x the time alone",
            mib(lo),
            mib(hi),
            100e6 / 1048576.0
        );
    });
    drop(coordinator);
}
