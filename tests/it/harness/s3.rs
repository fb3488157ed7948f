//! A real S3-compatible server for the object-storage tests: s3s-fs (crates.io, installed by
//! `scripts/test.sh --setup`) on loopback, over a temporary directory of its own, with its own
//! access key and secret. Objects are files under `<dir>/<bucket>/`, so a test can see what
//! the coordinator stored. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const S3_KEY_ID: &str = "bosun-it-key";
pub const S3_SECRET: &str = "bosun-it-secret-9876543210";

/// The s3s-fs binary: `BOSUN_S3S_FS`, `s3s-fs` on PATH, or where test.sh installs it.
pub fn s3s_fs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BOSUN_S3S_FS") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cache/bosun/s3s-fs/bin/s3s-fs");
    assert!(
        p.is_file(),
        "s3s-fs is not installed: run scripts/test.sh --setup (or set BOSUN_S3S_FS)"
    );
    p
}

pub struct S3Server {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl S3Server {
    /// A server with the buckets `buckets` (directories in its root).
    pub fn start(buckets: &[&str]) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("bosun-s3-")
            .tempdir()
            .expect("tempdir");
        for b in buckets {
            std::fs::create_dir(dir.path().join(b)).expect("bucket directory");
        }
        let port = super::free_port();
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY_ID, "--secret-key", S3_SECRET])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        S3Server {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The server's directory (a bucket is a directory in it).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A credentials file (mode 0600) in `dir` with the server's key id and `secret`.
    pub fn credentials_file(&self, dir: &Path, secret: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let f = dir.join(format!("s3-{}.credentials", secret.len()));
        std::fs::write(
            &f,
            format!(
                "[default]\naws_access_key_id = {S3_KEY_ID}\naws_secret_access_key = {secret}\n"
            ),
        )
        .expect("credentials file");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        f
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
