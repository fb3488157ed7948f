//! `cargo bench --bench restore`: issue 32, "workspaces and caches restored the same way
//! where it pays". Does extracting a cache or a workspace layer on the host, into the job's
//! working directory the engine bind-mounts (`job::work_tree`), beat the engine's archive API
//! (`Executor::upload_tar`, what `restore_cache` and `attach_workspace` use today)? And does
//! reading the mounted directory on the host beat `Executor::download_tar` for `save_cache`
//! and `persist_to_workspace`?
//!
//! A container of the test image runs with a host directory bind-mounted at
//! `/home/circleci/project`, as a job with a mounted checkout has it. Two trees, each stored
//! as the store keeps a cache (entries named from `/`, owned by uid/gid 3434):
//! - `node_modules`: BOSUN_BENCH_FILES (20,000) small files in ~1,000 packages (sizes from
//!   0.3 to 60 KB, ~100 MB) and a `.bin` of symbolic links;
//! - `large`: BOSUN_BENCH_LARGE (4) files of 64 MiB.
//!
//! Each run, alternating which goes first, each into a directory of its own under the mount
//! (a directory just removed slows the files made next on this disk several-fold for a
//! while, whoever makes them), after a `sync` (not timed):
//! - restore through the archive API: the blob's entries streamed under the destination
//!   (`store::archive::under_prefix`, as `upload_blob` does for `attach_workspace`) into
//!   `upload_tar(container, "/")`;
//! - restore in place: `job::in_place::extract` (what `upload_blob` does now when the
//!   destination is inside the mounted working directory) of the same blob;
//! - save through the archive API: `download_tar` of the tree into a file (what `download`
//!   does before re-rooting);
//! - save on the host: a tar of the mounted tree written by the `tar` crate into a file (not
//!   built: an estimate of what reading in place would give; it follows no links and checks
//!   nothing, as a careful reader would have to).
//!
//! Reported: medians (min–max) and the ratio host / archive API per run. BOSUN_BENCH_RUNS
//! (default 5); BOSUN_BENCH_SETTLE (default 60): seconds to wait before the first run, for
//! the disk to get over an earlier run's removal of its scratch directory (file creation is
//! several times slower for 30–60 s after a large removal, which hides the difference).

mod common;

// The integration tests' harness; a bench uses a few of its helpers.
#[allow(dead_code, unused_imports)]
#[path = "../tests/it/harness/mod.rs"]
mod harness;

use common::{env_num, line, ms};

use bosun::executor::docker::DockerExecutor;
use bosun::executor::Executor;
use bytes::Bytes;
use futures_util::StreamExt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WORKDIR: &str = "/home/circleci/project";
const UID: u64 = 3434;

/// A xorshift generator: the trees are the same in every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            chunk.copy_from_slice(&x[..chunk.len()]);
        }
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(UID);
    h.set_gid(UID);
    h.set_mtime(1_700_000_000);
    h
}

/// The blob of a `node_modules`-like cache of `files` files: its path and its size.
fn node_modules_blob(dir: &Path, files: usize) -> (PathBuf, u64) {
    let path = dir.join("node_modules.tar");
    let mut b = tar::Builder::new(std::io::BufWriter::new(
        std::fs::File::create(&path).expect("blob"),
    ));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let root = "node_modules";
    let dir_entry = |b: &mut tar::Builder<_>, name: &str| {
        b.append_data(
            &mut header(tar::EntryType::Directory, 0o755, 0),
            name,
            std::io::empty(),
        )
        .expect("dir");
    };
    dir_entry(&mut b, root);
    dir_entry(&mut b, &format!("{root}/.bin"));
    let packages = files.div_ceil(20);
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0;
    for p in 0..packages {
        let pkg = format!("{root}/pkg-{p:04}");
        dir_entry(&mut b, &pkg);
        for sub in ["lib", "dist", "lib/util"] {
            dir_entry(&mut b, &format!("{pkg}/{sub}"));
        }
        for f in 0..20 {
            if written == files {
                break;
            }
            written += 1;
            // Mostly small files, some larger: ~5 KB on average.
            let size = match rng.next() % 10 {
                0..=5 => 300 + rng.next() % 1_700,
                6..=8 => 2_000 + rng.next() % 8_000,
                _ => 10_000 + rng.next() % 50_000,
            } as usize;
            rng.fill(&mut buf[..size]);
            let name = match f {
                0 => format!("{pkg}/package.json"),
                1..=6 => format!("{pkg}/lib/m{f}.js"),
                7..=12 => format!("{pkg}/dist/m{f}.js"),
                _ => format!("{pkg}/lib/util/m{f}.js"),
            };
            let mode = if f == 1 { 0o755 } else { 0o644 };
            b.append_data(
                &mut header(tar::EntryType::Regular, mode, size as u64),
                &name,
                &buf[..size],
            )
            .expect("file");
        }
        if p % 10 == 0 {
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 0),
                format!("{root}/.bin/cmd-{p:04}"),
                format!("../pkg-{p:04}/lib/m1.js"),
            )
            .expect("symlink");
        }
    }
    b.into_inner().expect("finish").flush().expect("flush");
    let size = std::fs::metadata(&path).expect("size").len();
    (path, size)
}

/// The blob of `n` 64 MiB files.
fn large_blob(dir: &Path, n: usize) -> (PathBuf, u64) {
    let path = dir.join("large.tar");
    let mut b = tar::Builder::new(std::io::BufWriter::new(
        std::fs::File::create(&path).expect("blob"),
    ));
    let root = "large";
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        root,
        std::io::empty(),
    )
    .expect("dir");
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let size = 64usize << 20;
    let mut data = vec![0u8; size];
    for i in 0..n {
        rng.fill(&mut data);
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, size as u64),
            format!("{root}/part-{i}.bin"),
            &data[..],
        )
        .expect("file");
    }
    b.into_inner().expect("finish").flush().expect("flush");
    let size = std::fs::metadata(&path).expect("size").len();
    (path, size)
}

/// The blob's entries under `prefix` as `upload_blob` streams them, in 256 KiB pieces made
/// on a thread.
fn blob_stream(
    blob: PathBuf,
    prefix: String,
) -> (bosun::executor::TarStream, std::thread::JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    struct Chunks(tokio::sync::mpsc::Sender<Bytes>, Vec<u8>);
    impl Write for Chunks {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.1.extend_from_slice(data);
            if self.1.len() >= 256 * 1024 {
                self.flush()?;
            }
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            if !self.1.is_empty() {
                let chunk = Bytes::from(std::mem::take(&mut self.1));
                self.0
                    .blocking_send(chunk)
                    .map_err(|_| std::io::Error::other("upload ended"))?;
            }
            Ok(())
        }
    }
    let producer = std::thread::spawn(move || {
        let mut b = tar::Builder::new(Chunks(tx, Vec::new()));
        bosun::store::archive::under_prefix(&mut b, &blob, &prefix).expect("under_prefix");
        b.into_inner().expect("finish").flush().expect("flush");
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed();
    (stream, producer)
}

fn run(cmd: &mut Command) {
    let st = cmd.status().expect("spawn");
    assert!(st.success(), "{cmd:?}");
}

/// `docker rm -f` on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_num("BOSUN_BENCH_RUNS", 5).max(1);
    let files = env_num("BOSUN_BENCH_FILES", 20_000);
    let large = env_num("BOSUN_BENCH_LARGE", 4);
    harness::ensure_images();
    let img = harness::image("base");
    let scratch = tempfile::tempdir().expect("tempdir");
    let s = scratch.path();
    let mount = s.join("work");
    std::fs::create_dir(&mount).expect("mount dir");
    std::os::unix::fs::chown(&mount, Some(UID as u32), Some(UID as u32)).expect("chown");
    let blobs = [
        ("node_modules", node_modules_blob(s, files)),
        ("large", large_blob(s, large)),
    ];
    let name = format!("bosun-bench-restore-{}", std::process::id());
    run(Command::new("docker")
        .args([
            "run", "-d", "--name", &name, "-u", "circleci", "-w", WORKDIR,
        ])
        .arg("-v")
        .arg(format!("{}:{WORKDIR}", mount.display()))
        .args([&img, "sleep", "infinity"])
        .stdout(std::process::Stdio::null()));
    let container = Container(name);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let docker = rt.block_on(DockerExecutor::connect()).expect("engine");
    let tmp = s.join("tmp");
    std::fs::create_dir(&tmp).expect("tmp");
    // A large removal just before (an earlier run's scratch) makes every file created on
    // this disk several times slower, whoever creates it, for 30–60 s: let it pass.
    std::thread::sleep(Duration::from_secs(env_num("BOSUN_BENCH_SETTLE", 60) as u64));

    // Each restore goes to a directory of its own (`<dest>/<tree>`): a directory just removed
    // makes the next files made on this disk several times slower for a while, whoever makes
    // them, which would swamp the difference measured.
    let archive_restore = |blob: &Path, dest: &str| -> Duration {
        run(&mut Command::new("sync"));
        let t = Instant::now();
        let prefix = format!("{WORKDIR}/{dest}");
        let (stream, producer) = blob_stream(blob.to_owned(), prefix);
        rt.block_on(docker.upload_tar(&container.0, "/", stream))
            .expect("upload_tar");
        producer.join().expect("producer");
        t.elapsed()
    };
    let mounted = bosun::job::in_place::Mounted {
        host: mount.clone(),
        workdir: WORKDIR.to_owned(),
        uid: UID as u32,
        gid: UID as u32,
    };
    let host_restore = |blob: &Path, dest: &str| -> Duration {
        run(&mut Command::new("sync"));
        let t = Instant::now();
        bosun::job::in_place::extract(&mounted, blob, &format!("{WORKDIR}/{dest}"))
            .expect("in place");
        t.elapsed()
    };
    let archive_save = |path: &str| -> Duration {
        let t = Instant::now();
        let mut out = tempfile::NamedTempFile::new_in(&tmp).expect("tmp");
        rt.block_on(async {
            let mut stream = docker
                .download_tar(&container.0, &format!("{WORKDIR}/{path}"))
                .await
                .expect("download_tar")
                .expect("the tree");
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk.expect("chunk")).expect("write");
            }
        });
        out.flush().expect("flush");
        t.elapsed()
    };
    let host_save = |path: &str| -> Duration {
        let t = Instant::now();
        let out = tempfile::NamedTempFile::new_in(&tmp).expect("tmp");
        let mut b = tar::Builder::new(std::io::BufWriter::new(out.reopen().expect("reopen")));
        b.follow_symlinks(false);
        let base = Path::new(path).file_name().expect("base name");
        b.append_dir_all(base, mount.join(path)).expect("tar");
        b.into_inner().expect("finish").flush().expect("flush");
        t.elapsed()
    };
    // What the container sees of a restored tree: files, bytes and owners.
    let seen = |path: &str| {
        let out = Command::new("docker")
            .args(["exec", &container.0, "sh", "-c"])
            .arg(format!(
                "cd {WORKDIR}/{path} && find . -type f | wc -l && find . -type l | wc -l && \
                 find . -type f -exec cat {{}} + | md5sum && find . ! -user 3434 | wc -l"
            ))
            .output()
            .expect("exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    for (tree, (blob, size)) in &blobs {
        println!(
            "{tree}: {:.1} MB blob, {runs} runs, alternating (median, min–max):",
            *size as f64 / 1e6
        );
        archive_restore(blob, "check-archive");
        host_restore(blob, "check-host");
        assert_eq!(
            seen(&format!("check-archive/{tree}")),
            seen(&format!("check-host/{tree}")),
            "the two restores differ"
        );
        let (mut ar, mut hr, mut rr) = (Vec::new(), Vec::new(), Vec::new());
        let (mut asv, mut hsv, mut rs) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let (a_dest, h_dest) = (format!("{tree}-{i}-archive"), format!("{tree}-{i}-host"));
            let (a, h) = if i % 2 == 0 {
                let a = archive_restore(blob, &a_dest);
                (a, host_restore(blob, &h_dest))
            } else {
                let h = host_restore(blob, &h_dest);
                (archive_restore(blob, &a_dest), h)
            };
            ar.push(ms(a));
            hr.push(ms(h));
            rr.push(h.as_secs_f64() / a.as_secs_f64());
            run(&mut Command::new("sync"));
            let path = format!("{a_dest}/{tree}");
            let (a, h) = if i % 2 == 0 {
                let a = archive_save(&path);
                (a, host_save(&path))
            } else {
                let h = host_save(&path);
                (archive_save(&path), h)
            };
            asv.push(ms(a));
            hsv.push(ms(h));
            rs.push(h.as_secs_f64() / a.as_secs_f64());
        }
        line("restore: archive API (upload_tar)", ar, "ms");
        line("restore: in place (job::in_place)", hr, "ms");
        line("ratio host / archive API", rr, "");
        line("save: archive API (download_tar)", asv, "ms");
        line("save: tar of the mounted tree on the host", hsv, "ms");
        line("ratio host / archive API", rs, "");
    }
}
