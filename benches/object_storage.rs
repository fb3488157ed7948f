//! `cargo bench --bench object_storage`: blobs and finished logs through an S3-compatible
//! server against the data directory, same run.
//!
//! Two `bosun coordinator serve` on loopback: one with the default store (the data
//! directory), one with `--blob-store s3://…` on a real S3 server (s3s-fs, installed by
//! `scripts/test.sh --setup`, on loopback over a temporary directory). Each round, on each,
//! with a fresh blob of `BOSUN_BENCH_BLOB_MB` (default 100) incompressible MiB: the agent's
//! own blob client (`JobStore`) uploads it and downloads it again; and a job's log of
//! `BOSUN_BENCH_LOG_MB` (default 32) MiB is appended, finished, and read whole through the
//! page's download (`/jobs/{id}/log.txt`) once it is final (on S3: once it moved into the
//! bucket). Reported: times per side and the S3 / local ratios, and the S3 coordinator's peak
//! RSS during a transfer (the blob streams, so it stays flat). BOSUN_BENCH_ROUNDS (default 3).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, proc_status_kib, reset_peak};
use harness::KillOnDrop;

use bosun::agent::blobs::JobStore;
use bosun::agent::client::Client;
use bosun::protocol::{FinalStatus, FinishRequest};
use bosun::store::remote::Remote;
use bosun::store::BlobId;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn noise_file(path: &Path, mib: usize, seed: u64) {
    let mut out = std::fs::File::create(path).expect("file");
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        out.write_all(&buf).expect("write");
    }
}

/// One coordinator with a registered agent.
struct Side {
    name: &'static str,
    data: PathBuf,
    base: String,
    pid: u32,
    agent_token: String,
    _child: KillOnDrop,
}

fn side(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    name: &'static str,
    dir: &Path,
    extra: &[&str],
) -> Side {
    let data = dir.join(name);
    harness::coordinator_cli(
        &data,
        &[
            "project",
            "add",
            "--slug",
            "acme/widget",
            "--clone-url",
            "git@bitbucket.org:acme/widget.git",
        ],
    );
    let token = harness::coordinator_cli(&data, &["token"]);
    let mut args = vec!["--blob-quota", "100GiB"];
    args.extend_from_slice(extra);
    let (child, addr) = harness::spawn_coordinator(&data, "127.0.0.1:0", &args);
    let base = format!("http://{addr}");
    let agent_token = rt.block_on(async {
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
        reg["agent_token"].as_str().expect("token").to_owned()
    });
    Side {
        name,
        data,
        base,
        pid: child.id(),
        agent_token,
        _child: KillOnDrop(child),
    }
}

impl Side {
    fn claim(&self, rt: &tokio::runtime::Runtime, http: &reqwest::Client) -> (String, u32) {
        harness::enqueue_job(&self.data, "build", &[]);
        rt.block_on(async {
            let v: serde_json::Value = http
                .post(format!("{}/api/v1/jobs/claim?wait=5", self.base))
                .bearer_auth(&self.agent_token)
                .json(&json!({"resource_class": "docker", "capacity": 1}))
                .send()
                .await
                .expect("claim")
                .json()
                .await
                .expect("claim json");
            (
                v["job"]["id"].as_str().expect("id").to_owned(),
                v["job"]["attempt"].as_u64().expect("attempt") as u32,
            )
        })
    }

    /// Upload then download `blob`: (upload, download, peak RSS KiB of the coordinator).
    fn transfer(
        &self,
        rt: &tokio::runtime::Runtime,
        http: &reqwest::Client,
        blob: &Path,
    ) -> (Duration, Duration, u64) {
        let (id, size) = bosun::store::remote::hash_file(blob).expect("hash");
        let (job, attempt) = self.claim(rt, http);
        let client = Client::new(&self.base, Vec::new(), "")
            .expect("client")
            .with_token(&self.agent_token);
        let store = JobStore::new(client, &job, attempt, true);
        let back = blob.with_extension("back");
        reset_peak(self.pid);
        let (up, down) = rt.block_on(async {
            let t0 = Instant::now();
            let u = store.upload(blob, &id, size).await.expect("upload");
            assert_eq!(u.sent, size);
            let up = t0.elapsed();
            let t1 = Instant::now();
            store
                .download(&BlobId(id.0.clone()), size, &back)
                .await
                .expect("download");
            (up, t1.elapsed())
        });
        let peak = proc_status_kib(self.pid, "VmHWM");
        let (got, got_size) = bosun::store::remote::hash_file(&back).expect("hash back");
        assert_eq!(
            (got, got_size),
            (id, size),
            "{}: the download differs",
            self.name
        );
        let _ = std::fs::remove_file(&back);
        (up, down, peak)
    }

    /// A finished job with `log` as its log, read whole once final: the read's time.
    fn log_read(
        &self,
        rt: &tokio::runtime::Runtime,
        http: &reqwest::Client,
        log: &[u8],
    ) -> Duration {
        let (job, _) = self.claim(rt, http);
        let api = format!("{}/api/v1", self.base);
        rt.block_on(async {
            let mut off = 0usize;
            for piece in log.chunks(512 * 1024) {
                let r = http
                    .post(format!("{api}/jobs/{job}/log?offset={off}"))
                    .bearer_auth(&self.agent_token)
                    .body(piece.to_vec())
                    .send()
                    .await
                    .expect("log");
                assert!(r.status().is_success(), "log append: {}", r.status());
                off += piece.len();
            }
            let req = FinishRequest {
                status: FinalStatus::Success,
                log_bytes: log.len() as u64,
                log_sha256: harness::sha256(log),
                error: None,
            };
            let r = http
                .post(format!("{api}/jobs/{job}/finish"))
                .bearer_auth(&self.agent_token)
                .json(&req)
                .send()
                .await
                .expect("finish");
            assert!(r.status().is_success(), "finish: {}", r.status());
        });
        // On S3, the read is of the object: wait for the file to leave the data directory.
        let local = self.data.join("logs").join(format!("{job}.log"));
        if self.name == "s3" {
            let t0 = Instant::now();
            while local.exists() {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "the log did not move"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        rt.block_on(async {
            let t0 = Instant::now();
            let body = http
                .get(format!("{}/jobs/{job}/log.txt", self.base))
                .send()
                .await
                .expect("log.txt")
                .bytes()
                .await
                .expect("log body");
            let took = t0.elapsed();
            assert!(
                body.as_ref() == log,
                "{}: the log read back differs",
                self.name
            );
            took
        })
    }
}

fn range(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let blob_mib = env_num("BOSUN_BENCH_BLOB_MB", 100);
    let log_mib = env_num("BOSUN_BENCH_LOG_MB", 32);
    let rounds = env_num("BOSUN_BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let server = harness::S3Server::start(&["bench"]);
    let creds = server.credentials_file(dir.path(), harness::S3_SECRET);
    let creds = creds.to_string_lossy().into_owned();
    let local = side(&rt, &http, "local", dir.path(), &[]);
    let s3 = side(
        &rt,
        &http,
        "s3",
        dir.path(),
        &[
            "--blob-store",
            "s3://bench/ci",
            "--s3-endpoint",
            &server.endpoint,
            "--s3-credentials-file",
            &creds,
        ],
    );
    // Log text: lines, as a job prints them.
    let mut log = Vec::with_capacity(log_mib << 20);
    let mut n = 0u64;
    while log.len() < log_mib << 20 {
        n += 1;
        log.extend_from_slice(
            format!("line {n}: the quick brown fox jumps over the lazy dog\n").as_bytes(),
        );
    }

    println!(
        "object_storage: a {blob_mib} MiB blob up and down, and a finished {log_mib} MiB log read \
         whole, through S3 (s3s-fs on loopback) against the data directory:"
    );
    let (mut r_up, mut r_down, mut r_log, mut peaks) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        let blob = dir.path().join(format!("blob-{round}.bin"));
        noise_file(&blob, blob_mib, round as u64);
        // Same bytes on both sides (each coordinator has its own store).
        let (lu, ld, _) = local.transfer(&rt, &http, &blob);
        let (su, sd, speak) = s3.transfer(&rt, &http, &blob);
        std::fs::remove_file(&blob).expect("rm");
        let ll = local.log_read(&rt, &http, &log);
        let sl = s3.log_read(&rt, &http, &log);
        r_up.push(su.as_secs_f64() / lu.as_secs_f64());
        r_down.push(sd.as_secs_f64() / ld.as_secs_f64());
        r_log.push(sl.as_secs_f64() / ll.as_secs_f64());
        peaks.push(speak);
        println!(
            "    round {round}: upload local {:.2} s, s3 {:.2} s ({:.2}x); download local {:.2} s, \
             s3 {:.2} s ({:.2}x); log read local {:.0} ms, s3 {:.0} ms ({:.2}x); s3 coordinator \
             peak RSS {:.1} MiB",
            lu.as_secs_f64(),
            su.as_secs_f64(),
            su.as_secs_f64() / lu.as_secs_f64(),
            ld.as_secs_f64(),
            sd.as_secs_f64(),
            sd.as_secs_f64() / ld.as_secs_f64(),
            ll.as_secs_f64() * 1e3,
            sl.as_secs_f64() * 1e3,
            sl.as_secs_f64() / ll.as_secs_f64(),
            speak as f64 / 1024.0,
        );
    }
    let (a, b) = range(&r_up);
    let (c, d) = range(&r_down);
    let (e, f) = range(&r_log);
    let pk: Vec<f64> = peaks.iter().map(|k| *k as f64 / 1024.0).collect();
    let (g, h) = range(&pk);
    println!(
        "    s3 / local over {rounds} rounds: upload {a:.2}–{b:.2}x, download {c:.2}–{d:.2}x, \
         finished log read {e:.2}–{f:.2}x; s3 coordinator peak RSS {g:.1}–{h:.1} MiB"
    );
}
