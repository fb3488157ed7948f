//! `cargo bench --bench blobs`: the store over the protocol with a 200 MiB workspace.
//!
//! A workspace directory of incompressible files (`BOSUN_BENCH_WS_MB`, default 200 MiB, in
//! 4 MiB files) is made once and archived (`tar -cf`, the layer a `persist_to_workspace`
//! makes). Each round, with a fresh blob (other bytes), the agent's own blob client
//! (`bosun::agent::blobs::JobStore`, the code `bosun agent` runs) uploads the layer to a real
//! `bosun coordinator serve` on loopback and downloads it again (what a job on another agent
//! does), against, in the same round, `cp -r` of the directory and `tar -cf | tar -xf` of it
//! (the local copy the store stands in for). Reported: times, ratios to both baselines, and
//! the peak RSS (VmHWM, reset before the transfer) of the coordinator and of the client's
//! process, also for a blob a quarter of the size: flat means the peak does not grow with
//! the blob. Environment: BOSUN_BENCH_WS_MB, BOSUN_BENCH_ROUNDS (default 3).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, proc_status_kib, reset_peak};
use harness::KillOnDrop;

use bosun::agent::blobs::JobStore;
use bosun::agent::client::Client;
use bosun::store::remote::Remote;
use bosun::store::BlobId;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `mib` MiB of incompressible files under `dir` (4 MiB each), written piece by piece.
fn make_workspace(dir: &Path, mib: usize, seed: u64) {
    std::fs::create_dir_all(dir).expect("workspace dir");
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; 1 << 20];
    for f in 0..mib.div_ceil(4) {
        let mut out = std::fs::File::create(dir.join(format!("part-{f:03}.bin"))).expect("file");
        for _ in 0..4.min(mib - f * 4) {
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
            out.write_all(&buf).expect("write");
        }
    }
}

fn timed(cmd: &mut Command) -> Duration {
    let t0 = Instant::now();
    let st = cmd.status().expect("baseline command");
    assert!(st.success(), "{cmd:?}");
    t0.elapsed()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mib = env_num("BOSUN_BENCH_WS_MB", 200);
    let rounds = env_num("BOSUN_BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("coordinator");
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
    let (child, addr) =
        harness::spawn_coordinator(&data, "127.0.0.1:0", &["--blob-quota", "100GiB"]);
    let coordinator = KillOnDrop(child);
    let cpid = coordinator.0.id();
    let base = format!("http://{addr}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
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
    let claim = || -> (String, u32) {
        harness::enqueue_job(&data, "build", &[]);
        rt.block_on(async {
            let v: serde_json::Value = http
                .post(format!("{base}/api/v1/jobs/claim?wait=5"))
                .bearer_auth(&agent_token)
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
    };
    let client = Client::new(&base, Vec::new(), "")
        .expect("client")
        .with_token(&agent_token);
    let me = std::process::id();

    // One transfer: (upload, download, coordinator peak KiB, client peak KiB).
    let transfer = |layer: &Path| -> (Duration, Duration, u64, u64) {
        let (blob, size) = bosun::store::remote::hash_file(layer).expect("hash");
        let (job, attempt) = claim();
        let store = JobStore::new(client.clone(), &job, attempt, true);
        let part = layer.with_extension("download");
        let _ = std::fs::remove_file(&part);
        reset_peak(cpid);
        reset_peak(me);
        let (up, down) = rt.block_on(async {
            let t0 = Instant::now();
            let u = store.upload(layer, &blob, size).await.expect("upload");
            assert_eq!(u.sent, size);
            let up = t0.elapsed();
            let t1 = Instant::now();
            store
                .download(&BlobId(blob.0.clone()), size, &part)
                .await
                .expect("download");
            (up, t1.elapsed())
        });
        let peaks = (proc_status_kib(cpid, "VmHWM"), proc_status_kib(me, "VmHWM"));
        let (got, got_size) = bosun::store::remote::hash_file(&part).expect("hash back");
        assert_eq!((got, got_size), (blob, size), "the download differs");
        let _ = std::fs::remove_file(&part);
        (up, down, peaks.0, peaks.1)
    };
    let archive = |ws: &Path, out: &Path| {
        let st = Command::new("tar")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(ws)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success());
    };
    // The data stays in the page cache for every side alike (the baselines read it too).

    // A quarter-size blob first: the peaks to compare with.
    let small_ws = dir.path().join("ws-small");
    make_workspace(&small_ws, mib / 4, 99);
    let small_layer = dir.path().join("small.tar");
    archive(&small_ws, &small_layer);
    let (_, _, c_small, a_small) = transfer(&small_layer);
    std::fs::remove_dir_all(&small_ws).expect("rm");
    std::fs::remove_file(&small_layer).expect("rm");

    println!(
        "blobs: a {mib} MiB workspace (4 MiB incompressible files), upload + download through \
         a coordinator on loopback, against local copies of the same data:"
    );
    let mut ratios_cp = Vec::new();
    let mut ratios_tar = Vec::new();
    let mut cpeaks = Vec::new();
    let mut apeaks = Vec::new();
    for round in 1..=rounds {
        let ws = dir.path().join(format!("ws-{round}"));
        make_workspace(&ws, mib, round as u64);
        let layer = dir.path().join(format!("layer-{round}.tar"));
        archive(&ws, &layer);
        let (up, down, cpeak, apeak) = transfer(&layer);
        let copy = dir.path().join("copy");
        let cp = timed(Command::new("cp").arg("-r").arg(&ws).arg(&copy));
        std::fs::remove_dir_all(&copy).expect("rm");
        std::fs::create_dir_all(&copy).expect("mkdir");
        let tar = timed(Command::new("sh").arg("-c").arg(format!(
            "tar -cf - -C '{}' . | tar -xf - -C '{}'",
            ws.display(),
            copy.display()
        )));
        std::fs::remove_dir_all(&copy).expect("rm");
        std::fs::remove_dir_all(&ws).expect("rm");
        std::fs::remove_file(&layer).expect("rm");
        let both = (up + down).as_secs_f64();
        ratios_cp.push(both / cp.as_secs_f64());
        ratios_tar.push(both / tar.as_secs_f64());
        cpeaks.push(cpeak);
        apeaks.push(apeak);
        println!(
            "    round {round}: upload {:.2} s ({:.0} MiB/s), download {:.2} s ({:.0} MiB/s); \
             cp -r {:.2} s, tar|tar {:.2} s; ratio {:.2}x cp, {:.2}x tar; peak RSS coordinator \
             {:.1} MiB, client {:.1} MiB",
            up.as_secs_f64(),
            mib as f64 / up.as_secs_f64(),
            down.as_secs_f64(),
            mib as f64 / down.as_secs_f64(),
            cp.as_secs_f64(),
            tar.as_secs_f64(),
            both / cp.as_secs_f64(),
            both / tar.as_secs_f64(),
            cpeak as f64 / 1024.0,
            apeak as f64 / 1024.0,
        );
    }
    let range = |v: &[f64]| {
        v.iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)))
    };
    let mibs = |v: &[u64]| {
        let (a, b) = (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        );
        format!("{:.1}–{:.1} MiB", a as f64 / 1024.0, b as f64 / 1024.0)
    };
    let (clo, chi) = range(&ratios_cp);
    let (tlo, thi) = range(&ratios_tar);
    println!(
        "    upload+download against cp -r: {clo:.2}–{chi:.2}x, against tar|tar: {tlo:.2}–{thi:.2}x, \
         over {rounds} rounds"
    );
    println!(
        "    peak RSS, {mib} MiB blob: coordinator {}, client {}; {} MiB blob: coordinator \
         {:.1} MiB, client {:.1} MiB (flat: the peak does not follow the blob's size)",
        mibs(&cpeaks),
        mibs(&apeaks),
        mib / 4,
        c_small as f64 / 1024.0,
        a_small as f64 / 1024.0
    );
}
